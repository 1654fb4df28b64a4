/*
 * kms_http.c - libmicrohttpd front end.
 *
 * A request goes through three calls of the access handler: the first sees
 * only the headers, and everything that can be refused without the body is
 * refused there (method, route, content type, declared length, credentials),
 * so an oversized or unauthenticated upload is never read; the middle calls
 * append body bytes up to the limit; the last dispatches to the handler.
 *
 * Every answer to a routed request waits for its audit event to be durable.
 * With a thread per connection the thread waits; in the epoll pool the
 * connection is suspended while the event waits for its group commit and
 * resumed by the audit writer, so two workers keep many requests in flight
 * and the writer wakes each worker once per batch, not each request.
 */
#include "kms_http.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "audit_event.h"
#include "kms_buf.h"
#include "kms_health.h"
#include "kms_http_auth.h"
#include "kms_http_frame.h"
#include "kms_http_ops.h"
#include "kms_http_secret.h"
#include "kms_http_xks.h"
#include "kms_http_internal.h"
#include "kms_httpreq.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_pjson.h"
#include "kms_restore.h"
#include "kms_secret.h"
#include "kms_tls_key.h"
#include "kms_twirp.h"
#include "pol_doc.h"

enum audit_wait { AUDIT_NONE, AUDIT_WAITING, AUDIT_DURABLE, AUDIT_LOST };

/* What a request will answer once its audit event is durable. */
struct answer {
    kms_err err;           /* KMS_OK: reply */
    struct kms_reply reply;
    char msg[512];         /* for the client when err != KMS_OK */
};

struct req_state {
    struct kms_call call;
    const struct kms_route *route;
    const char *method;
    const uint8_t *body; /* what the handler decodes: in's bytes once complete */
    size_t len;
    struct kms_buf in; /* the body as received (JSON: converted), wiped on free */
    bool too_large;
    bool close;  /* framing refused: nothing after this request is read */
    int op;      /* kms_metrics operation index */
    uint64_t t0; /* monotonic ns at the first call */
    struct kms_http *http;
    struct MHD_Connection *conn;
    atomic_int audit;      /* enum audit_wait */
    struct answer ans;
    char correlation_id[KMS_HTTP_CORRELATION_MAX + 1];
    bool json; /* application/json: the body is converted, the reply rendered */
    const ProtobufCMessageDescriptor *request, *response;
    struct kms_http_xks *xks; /* the XKS proxy API's request (kms_http_xks.h) */
};

/* ---- responses ----------------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *c, struct req_state *st, unsigned status,
                            struct MHD_Response *r, const char *content_type)
{
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", content_type);
    MHD_add_response_header(r, "X-Request-Id", st->call.request_id);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (atomic_load_explicit(&st->http->draining, memory_order_relaxed) || st->close)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, struct req_state *st, kms_err err,
                                  const char *msg)
{
    kms_metrics_request(st->op, err, kms_metrics_now_ns() - st->t0);
    char *body = kms_twirp_error_body(err, msg);
    if (body == NULL)
        return MHD_NO;
    kms_log_info("http", "request %s %s: %s: %s", st->call.request_id,
                 st->method ? st->method : "-", kms_err_twirp_code(err), msg);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    return respond(c, st, (unsigned)kms_twirp_http_status(err), r, "application/json");
}

static void drop_reply(struct kms_reply *reply)
{
    if (reply->data && reply->secret)
        OPENSSL_cleanse(reply->data, reply->len);
    free(reply->data);
    reply->data = NULL;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, struct req_state *st,
                                  struct kms_reply *reply);

static enum MHD_Result send_answer(struct MHD_Connection *c, struct req_state *st)
{
    if (st->ans.err == KMS_OK)
        return send_reply(c, st, &st->ans.reply);
    return send_error(c, st, st->ans.err, st->ans.msg);
}

/* The client-safe message of a 503: a region refused at start (its audit
 * log failed the start-up scan) is not a passing outage, and the caller's
 * operators must know that retrying will not help. */
static const char *unavailable_msg(const struct req_state *st, const char *dflt, char *buf,
                                   size_t n)
{
    /* The region the request's event belongs to, not only a key's: a
     * request without a key is refused for its caller's home region. */
    const char *region = kms_audit_region(&st->call);
    if (region == NULL || kms_service_region_check(st->call.svc, region) == KMS_OK)
        return dflt;
    snprintf(buf, n,
             "region %s is not served: its audit log failed the start-up check; an operator "
             "must act, retrying will not help",
             region);
    return buf;
}

/* Runs on the audit writer thread once per suspended request. */
static void audit_done(void *arg, bool durable)
{
    struct req_state *st = arg;
    struct kms_http *h = st->http;
    struct MHD_Connection *c = st->conn;
    atomic_store(&st->audit, durable ? AUDIT_DURABLE : AUDIT_LOST);
    MHD_resume_connection(c);
    /* Last: kms_http_stop waits for this count before stopping MHD. */
    atomic_fetch_sub(&h->audit_waits, 1);
}

/* The event of a routed request goes first; st->ans is answered only once
 * it is durable, else the answer is "unavailable" (fail closed). */
static enum MHD_Result audited_answer(struct MHD_Connection *c, struct req_state *st,
                                      kms_err outcome, const char *audit_detail)
{
    if (!kms_http_may_suspend(st->http)) {
        if (kms_audit_request(&st->call, st->method, outcome, audit_detail, st->correlation_id) !=
            KMS_OK) {
            drop_reply(&st->ans.reply);
            char m[200];
            return send_error(c, st, KMS_ERR_IO,
                              unavailable_msg(st, "the audit log is unavailable; retry", m,
                                              sizeof(m)));
        }
        return send_answer(c, st);
    }
    /* Suspended before the event is queued: the writer may resume the
     * connection as soon as it is. */
    atomic_store(&st->audit, AUDIT_WAITING);
    atomic_fetch_add(&st->http->audit_waits, 1);
    MHD_suspend_connection(c);
    bool queued;
    kms_err rc = kms_audit_request_submit(&st->call, st->method, outcome, audit_detail,
                                          st->correlation_id, audit_done, st, &queued);
    if (!queued)
        audit_done(st, rc == KMS_OK);
    return MHD_YES;
}

/* The call after a resume: answer what waited, or fail closed. */
static enum MHD_Result resumed(struct MHD_Connection *c, struct req_state *st)
{
    if (atomic_load(&st->audit) == AUDIT_DURABLE)
        return send_answer(c, st);
    drop_reply(&st->ans.reply);
    char m[200];
    return send_error(c, st, KMS_ERR_IO,
                      unavailable_msg(st, "the audit log is unavailable; retry", m, sizeof(m)));
}

/* Refuse a request that reached a route: the refusal is an audit event
 * first. If even that cannot be recorded, the answer is "unavailable". */
static enum MHD_Result refuse(struct MHD_Connection *c, struct req_state *st, kms_err err,
                              const char *msg)
{
    st->ans.err = err;
    snprintf(st->ans.msg, sizeof(st->ans.msg), "%s", msg);
    return audited_answer(c, st, err, msg);
}

static enum MHD_Result send_reply(struct MHD_Connection *c, struct req_state *st,
                                  struct kms_reply *reply)
{
    kms_metrics_request(st->op, KMS_OK, kms_metrics_now_ns() - st->t0);
    struct MHD_Response *r;
    if (reply->secret) {
        /* Plaintext or a data key: wiped when MHD is done with it. */
        kms_err rc = kms_http_secret_response(reply->data, reply->len, &r);
        reply->data = NULL;
        if (rc != KMS_OK)
            return send_error(c, st, rc, "out of memory");
    } else {
        r = MHD_create_response_from_buffer(reply->len, reply->data, MHD_RESPMEM_MUST_FREE);
        if (r == NULL)
            free(reply->data);
    }
    reply->data = NULL;
    return respond(c, st, MHD_HTTP_OK, r, st->json ? "application/json" : "application/protobuf");
}

/* ---- authentication -------------------------------------------------------- */

static kms_err authenticate(struct kms_http *h, struct MHD_Connection *c, struct req_state *st)
{
    return kms_http_authenticate(h->cfg, c, st->call.policy, &st->call.who);
}

/* ---- the JSON encoding ---------------------------------------------------------- */

/* A JSON body becomes the protobuf wire bytes of the route's request, and
 * from there on the request is a protobuf one: the same bounded decoder,
 * handler and validation. The JSON text is wiped like any body. */
static kms_err json_body(struct req_state *st, size_t max_body)
{
    uint8_t *wire;
    size_t n;
    KMS_GUARD(kms_pjson_to_wire(st->request, st->in.data ? st->in.data : (const uint8_t *)"",
                                st->in.len, max_body, &wire, &n));
    kms_buf_adopt(&st->in, wire, n);
    return KMS_OK;
}

/* The answer (500 internal) when a handler succeeded and its reply could not
 * be rendered (out of memory): the change is made and audited ok, so the
 * client must look before it retries (docs/api.md, JSON). */
static const char json_reply_lost_msg[] =
    "the operation was applied, but its reply could not be rendered as JSON; do not retry "
    "blindly: check its effect first (e.g. DescribeKey), a retry would apply it again";

/* The handler's packed reply, rendered as JSON in its place; a secret
 * reply's JSON is secret too (wiped after sending, send_reply). */
static kms_err json_reply(struct req_state *st, struct kms_reply *reply)
{
    char *text;
    size_t n;
    KMS_GUARD(kms_pjson_from_wire(st->response, reply->data ? reply->data : (const uint8_t *)"",
                                  reply->len, &text, &n));
    bool secret = reply->secret;
    drop_reply(reply);
    reply->data = (uint8_t *)text;
    reply->len = n;
    reply->secret = secret;
    return KMS_OK;
}

/* ---- operational endpoints ------------------------------------------------- */

/* A static text reply, with one extra header when `header` is not NULL. */
static enum MHD_Result send_text_h(struct MHD_Connection *c, struct req_state *st,
                                   unsigned status, const char *text, const char *header,
                                   const char *value)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (r && header)
        MHD_add_response_header(r, header, value);
    return respond(c, st, status, r, "text/plain; charset=utf-8");
}

static enum MHD_Result send_text(struct MHD_Connection *c, struct req_state *st, unsigned status,
                                 const char *text)
{
    return send_text_h(c, st, status, text, NULL, NULL);
}

/* /metrics: only for an operator (bearer key or client certificate of a
 * principal whose role is operator): the figures say how busy each region
 * is, which is nobody else's business. */
static enum MHD_Result serve_metrics(struct kms_http *h, struct MHD_Connection *c,
                                     struct req_state *st)
{
    st->call.policy = kms_service_policy(h->svc);
    if (authenticate(h, c, st) != KMS_OK) {
        kms_log_info("http", "request %s /metrics: unauthenticated: %s", st->call.request_id,
                     kms_err_detail());
        return send_text_h(c, st, MHD_HTTP_UNAUTHORIZED, "unauthenticated\n",
                           MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    }
    if (pol_principal_role(st->call.who) != POL_ROLE_OPERATOR) {
        kms_log_info("http", "request %s /metrics: refused to %s (role %s, not operator)",
                     st->call.request_id, pol_principal_id(st->call.who),
                     pol_role_name(pol_principal_role(st->call.who)));
        return send_text(c, st, MHD_HTTP_FORBIDDEN, "permission denied\n");
    }
    char *buf = NULL;
    size_t len = 0;
    if (kms_http_ops_metrics(h->svc, atomic_load(&h->inflight), &buf, &len) != KMS_OK)
        return send_text(c, st, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (r == NULL)
        free(buf);
    return respond(c, st, MHD_HTTP_OK, r, "text/plain; version=0.0.4; charset=utf-8");
}

/* /readyz, /readyz/R: kms_http_ops_readyz (unauthenticated). */
static enum MHD_Result serve_readyz(struct kms_http *h, struct MHD_Connection *c,
                                    struct req_state *st, const char *region)
{
    char body[2048];
    unsigned status = kms_http_ops_readyz(h->health, h->svc, region, atomic_load(&h->draining),
                                          body, sizeof(body));
    return send_text(c, st, status, body);
}

/* /livez, /readyz, /metrics answer GET (and HEAD); everything else is Twirp.
 * Returns false when url is none of them. */
static bool ops_endpoint(struct kms_http *h, struct MHD_Connection *c, struct req_state *st,
                         const char *url, const char *method, enum MHD_Result *out)
{
    const char *region = NULL;
    enum kms_http_op op = kms_http_ops_route(url, &region);
    if (op == KMS_HTTP_OP_NONE)
        return false;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        *out = send_text_h(c, st, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET\n", MHD_HTTP_HEADER_ALLOW,
                           "GET, HEAD");
        return true;
    }
    if (op == KMS_HTTP_OP_LIVEZ) {
        /* The process answers: that is all liveness means. The HSM, store
         * or audit log being away is readiness, and restarting kmsd would
         * not bring them back. */
        *out = send_text(c, st, MHD_HTTP_OK, "ok\n");
    } else if (op == KMS_HTTP_OP_READYZ) {
        *out = serve_readyz(h, c, st, region);
    } else {
        *out = serve_metrics(h, c, st);
    }
    return true;
}

static enum MHD_Result first_call(struct kms_http *h, struct MHD_Connection *c,
                                  struct req_state *st, const char *url, const char *method)
{
    enum MHD_Result ops;
    if (ops_endpoint(h, c, st, url, method, &ops))
        return ops;
    struct kms_httpreq_head head = {
        .method = method,
        .url = url,
        .content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"),
        .content_length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length"),
        .correlation_id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Correlation-Id"),
        .max_body = h->cfg->max_body_bytes,
    };
    struct kms_httpreq req;
    kms_err_clear();
    kms_err rc = kms_httpreq_check_head(&head, &req);
    st->route = req.route;
    st->method = req.method;
    st->op = kms_metrics_op(st->method);
    memcpy(st->correlation_id, req.correlation_id, sizeof(st->correlation_id));
    st->json = req.json;
    st->request = req.request;
    st->response = req.response;
    if (rc != KMS_OK) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s", kms_err_detail());
        return req.routed ? refuse(c, st, rc, msg) : send_error(c, st, rc, msg);
    }
    st->call.policy = kms_service_policy(h->svc);
    if (authenticate(h, c, st) != KMS_OK)
        return refuse(c, st, KMS_ERR_UNAUTHENTICATED, kms_err_detail());
    return MHD_YES;
}

/* ---- framing and header hygiene ---------------------------------------------- */

/* Before anything else reads a header: is the request what was sent, with
 * one reading of where it ends (kms_httpreq_check_framing)? If not, one
 * 400 (audited when it names a Twirp route) with Connection: close, so
 * nothing the client sent after these headers is ever parsed as a request:
 * libmicrohttpd would otherwise frame such a body by its own reading and
 * serve what follows. Returns true when the request was refused. */
static bool framing_refused(struct MHD_Connection *c, struct req_state *st, const char *url,
                            const char *method, const char *version, enum MHD_Result *out)
{
    kms_err_clear();
    kms_err rc = kms_http_check_framing(c, url, method, version);
    if (rc == KMS_OK)
        return false;
    char msg[160];
    snprintf(msg, sizeof(msg), "%s", kms_err_detail());
    st->close = true;
    if (kms_http_xks_claims(url)) { /* the XKS API's error shape, audited */
        *out = kms_http_xks_refuse_framing(c, &st->call, url, msg, &st->xks);
        return true;
    }
    const char *name = NULL;
    const struct kms_route *route =
        strcmp(method, "POST") == 0 ? kms_twirp_route(url, &name) : NULL;
    if (route == NULL) {
        *out = send_error(c, st, rc, msg);
        return true;
    }
    /* A route: the refusal is an audit event, without the correlation id
     * (the headers are what is in doubt). */
    st->route = route;
    st->method = name;
    st->op = kms_metrics_op(name);
    *out = refuse(c, st, rc, msg);
    return true;
}

/* A request's state at its first call: a random request id, the body
 * buffer within the configured limit, counted in flight until completed. */
static struct req_state *new_request(struct kms_http *h, struct MHD_Connection *c)
{
    struct req_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->call.svc = h->svc;
    st->http = h;
    st->conn = c;
    st->t0 = kms_metrics_now_ns();
    st->op = -1;
    kms_buf_init(&st->in, h->cfg->max_body_bytes);
    atomic_fetch_add(&h->inflight, 1);
    uint8_t rid[16];
    RAND_bytes(rid, sizeof(rid));
    for (size_t i = 0; i < sizeof(rid); i++)
        snprintf(st->call.request_id + 2 * i, 3, "%02x", rid[i]);
    return st;
}

/* Body bytes of a middle call, kept up to the limit. */
static enum MHD_Result take_upload(struct req_state *st, const char *data, size_t *upload_size)
{
    size_t n = *upload_size;
    *upload_size = 0;
    if (st->too_large)
        return MHD_YES;
    kms_err rc = kms_buf_append(&st->in, data, n);
    if (rc == KMS_ERR_TOO_LARGE) {
        /* Chunked bodies have no length up front: stop storing at the
         * limit and refuse at the end. */
        st->too_large = true;
        return MHD_YES;
    }
    return rc == KMS_OK ? MHD_YES : MHD_NO;
}

/* The handler has committed its change (a new key version, a created key)
 * but its reply could not be rendered as JSON: the event says so, or a
 * restore would not see it, and the client is told to look before it
 * retries, which would change state again. Stored data cannot fail the
 * rendering (an ill-formed string becomes U+FFFD); memory can. */
static enum MHD_Result json_reply_lost(struct MHD_Connection *c, struct req_state *st,
                                       struct kms_reply *reply)
{
    char audit_detail[700];
    snprintf(audit_detail, sizeof(audit_detail), "%s%sreply could not be rendered as JSON: %s",
             st->call.audit.detail, st->call.audit.detail[0] ? ": " : "", kms_err_detail());
    kms_log_error("http", "request %s %s by %s: applied, but %s", st->call.request_id,
                  st->method, pol_principal_id(st->call.who), audit_detail);
    drop_reply(reply);
    st->ans.err = KMS_ERR_INTERNAL;
    snprintf(st->ans.msg, sizeof(st->ans.msg), "%s", json_reply_lost_msg);
    return audited_answer(c, st, KMS_OK, audit_detail);
}

enum MHD_Result kms_http_access(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_size, void **con_cls)
{
    struct kms_http *h = cls;
    struct req_state *st = *con_cls;
    if (st != NULL && atomic_load(&st->audit) != AUDIT_NONE) {
        *upload_size = 0; /* a refusal before the body: the rest is not read */
        return resumed(c, st);
    }
    if (st == NULL) {
        if ((st = *con_cls = new_request(h, c)) == NULL)
            return MHD_NO;
        enum MHD_Result framing;
        if (framing_refused(c, st, url, method, version, &framing))
            return framing;
        if (kms_http_xks_claims(url))
            return kms_http_xks_first(h, c, &st->call, url, method, &st->xks);
        return first_call(h, c, st, url, method);
    }
    if (st->xks != NULL)
        return kms_http_xks_next(h, c, &st->call, st->xks, upload_data, upload_size);
    if (*upload_size > 0)
        return take_upload(st, upload_data, upload_size);
    if (st->too_large) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", h->cfg->max_body_bytes);
        return refuse(c, st, KMS_ERR_TOO_LARGE, msg);
    }
    struct kms_reply *reply = &st->ans.reply;
    kms_err_clear();
    kms_err jrc = st->json ? json_body(st, h->cfg->max_body_bytes) : KMS_OK;
    if (jrc != KMS_OK) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", kms_err_detail());
        return refuse(c, st, jrc, msg);
    }
    st->body = st->in.data;
    st->len = st->in.len;
    kms_err rc = KMS_OK;
    const char *safe = NULL;
    /* Safe mode (a restored store, kms_restore.h): only decrypt and read
     * paths serve; the refusal is audited like any other. */
    if (kms_service_safe_mode(h->svc, &safe) && kms_restore_refused_op(st->method))
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION, "kmsd is in safe mode after a restore: "
                         "only decrypt and read operations are served until an operator "
                         "reconciles (docs/operations.md)");
    else
        rc = kms_twirp_dispatch(st->route, &st->call, st->body, st->len, reply);
    if (rc == KMS_OK && st->json && json_reply(st, reply) != KMS_OK) {
        return json_reply_lost(c, st, reply);
    }
    if (rc != KMS_OK) {
        drop_reply(reply);
        /* Internal details go to the log and the audit event only; the
         * client gets the code. */
        char detail[512], audit_detail[700], m503[200];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        /* A lower layer's own check (a "store: ..." detail) is logged,
         * never shown: it names kmsd's insides (kms_err_client_msg). */
        const char *msg = kms_err_client_msg(rc, detail);
        if (msg != detail && kms_twirp_http_status(rc) < 500)
            kms_log_info("http", "request %s %s refused: %s", st->call.request_id, st->method,
                         detail);
        /* What the handler noted (e.g. which recovery) comes first. */
        snprintf(audit_detail, sizeof(audit_detail), "%s%s%s", st->call.audit.detail,
                 st->call.audit.detail[0] ? ": " : "", detail);
        if (kms_twirp_http_status(rc) >= 500) {
            kms_log_error("http", "request %s %s failed: %s", st->call.request_id, st->method,
                          detail);
            /* A refused PIN is 503 like a removed token, but retrying will
             * not help (kmsd does not log in again until restarted), and
             * the caller's operators must know that. */
            msg = rc == KMS_ERR_HSM_PIN ? "the HSM refused kmsd's login (PIN); an operator "
                                          "must act, retrying will not help"
                  : kms_twirp_http_status(rc) == 503
                      ? unavailable_msg(st, "the HSM or store is unavailable; retry", m503,
                                        sizeof(m503))
                      : "internal error";
        }
        st->ans.err = rc;
        snprintf(st->ans.msg, sizeof(st->ans.msg), "%s", msg);
        return audited_answer(c, st, rc, audit_detail);
    }
    kms_log_debug("http", "request %s %s by %s: ok%s%s", st->call.request_id, st->method,
                  pol_principal_id(st->call.who), st->correlation_id[0] ? ", correlation " : "",
                  st->correlation_id);
    /* No success is acknowledged before its audit event is durable. */
    st->ans.err = KMS_OK;
    return audited_answer(c, st, KMS_OK, st->call.audit.detail[0] ? st->call.audit.detail : NULL);
}

void kms_http_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                        enum MHD_RequestTerminationCode toe)
{
    struct kms_http *h = cls;
    (void)c;
    (void)toe;
    struct req_state *st = *con_cls;
    if (st == NULL)
        return;
    atomic_fetch_sub(&h->inflight, 1);
    drop_reply(&st->ans.reply); /* a client gone before its answer was sent */
    kms_buf_wipe(&st->in);
    kms_http_xks_free(st->xks);
    pol_doc_unref(st->call.policy);
    free(st);
    *con_cls = NULL;
}
