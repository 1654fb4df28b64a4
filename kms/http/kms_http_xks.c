/*
 * kms_http_xks.c - the XKS proxy API front (kms_http_xks.h).
 *
 * Every answer, success or refusal, is one audit event first (actor
 * "xks:<tenant>:<access key id>" once the signature verified, else
 * "xks:unauthenticated"; the kmsRequestId as its correlation id and the
 * whole requestMetadata in the event's `xks` field, once the signature
 * verified; the refusal's reason in its detail). In the epoll pool the
 * connection is suspended while the event waits for its group commit;
 * thread-per-connection writes it synchronously (answer()).
 */
#include "kms_http_xks.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "audit_event.h"
#include "kms_buf.h"
#include "kms_http_secret.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_service.h"
#include "xks_api.h"
#include "xks_config.h"
#include "xks_ops.h"
#include "xks_sigv4.h"

enum xks_audit { XKS_AUDIT_NONE, XKS_AUDIT_WAITING, XKS_AUDIT_DURABLE, XKS_AUDIT_LOST };

struct kms_http_xks {
    struct xks_path path;
    char prefix[XKS_PATH_MAX + 1];
    char url[XKS_PATH_MAX + 1];
    struct kms_buf in;
    bool too_large;
    bool answered; /* refused at the first call, or answer() ran */
    bool close;    /* framing refused: Connection: close */
    char actor[200];
    char tenant[129]; /* the endpoint's, once the signature verified */
    struct kms_xks_metadata md; /* call->xks: borrows the request's strings */
    /* /metrics: custos_requests_total{op="Xks...", outcome=...} and its
     * latency, counted when the answer is queued */
    int mop;
    uint64_t t0;
    kms_err outcome;
    /* the answer held while its audit event is committed */
    atomic_int audit; /* enum xks_audit */
    struct kms_http *http;
    struct MHD_Connection *conn;
    unsigned status;
    char *body;
    size_t len;
    bool secret;
};

static const char *const op_names[] = {
    [XKS_OP_NONE] = "XksInvalidPath", [XKS_OP_METADATA] = "XksGetKeyMetadata",
    [XKS_OP_ENCRYPT] = "XksEncrypt",  [XKS_OP_DECRYPT] = "XksDecrypt",
    [XKS_OP_HEALTH] = "XksGetHealthStatus",
};

bool kms_http_xks_claims(const char *url)
{
    struct xks_path p;
    return xks_path_parse(url, &p);
}

/* The kms_err an XKS error is audited as. */
static kms_err audit_code(enum xks_error e)
{
    switch (e) {
    case XKS_E_AUTH_FAILED:
        return KMS_ERR_UNAUTHENTICATED;
    case XKS_E_ACCESS_DENIED:
    case XKS_E_INVALID_KEY_USAGE:
        return KMS_ERR_PERMISSION_DENIED;
    case XKS_E_KEY_NOT_FOUND:
        return KMS_ERR_NOT_FOUND;
    case XKS_E_INVALID_URI_PATH:
        return KMS_ERR_BAD_ROUTE;
    case XKS_E_INVALID_STATE:
        return KMS_ERR_FAILED_PRECONDITION;
    case XKS_E_INVALID_CIPHERTEXT:
        return KMS_ERR_BAD_CIPHERTEXT;
    case XKS_E_THROTTLING:
        return KMS_ERR_RESOURCE_EXHAUSTED;
    case XKS_E_UNSUPPORTED:
        return KMS_ERR_TOO_LARGE;
    case XKS_E_DEPENDENCY_TIMEOUT:
        return KMS_ERR_HSM_UNAVAILABLE;
    case XKS_E_INTERNAL:
        return KMS_ERR_INTERNAL;
    default:
        return KMS_ERR_INVALID_ARGUMENT;
    }
}

static enum MHD_Result send_json(struct MHD_Connection *c, struct kms_call *call,
                                 unsigned status, char *body, size_t len, bool secret,
                                 const char *allow, bool close)
{
    struct MHD_Response *r = NULL;
    if (body == NULL)
        return MHD_NO;
    if (secret) {
        /* the decrypted plaintext: wiped when MHD is done with it; the
         * block passes to the response either way */
        if (kms_http_secret_response((uint8_t *)body, len, &r) != KMS_OK)
            return MHD_NO;
    } else {
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (r == NULL) {
            free(body);
            return MHD_NO;
        }
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "X-Request-Id", call->request_id);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (allow != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (close) /* framing in doubt: nothing after this request is read */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The answer that waits for its audit event. */
static void hold(struct kms_http_xks *x, unsigned status, char *body, size_t len, bool secret)
{
    x->status = status;
    x->body = body;
    x->len = len;
    x->secret = secret;
}

static void drop_held(struct kms_http_xks *x)
{
    if (x->body != NULL && x->secret)
        OPENSSL_cleanse(x->body, x->len);
    free(x->body);
    x->body = NULL;
}

/* One finished XKS call in /metrics: the operation and the outcome its
 * audit event names (the Twirp code of audit_code(), docs/xks.md). */
static void count(struct kms_http_xks *x, kms_err outcome)
{
    if (x->mop < 0)
        x->mop = kms_metrics_op(op_names[x->path.op]);
    kms_metrics_request(x->mop, outcome, kms_metrics_now_ns() - x->t0);
}

static enum MHD_Result send_held(struct MHD_Connection *c, struct kms_call *call,
                                 struct kms_http_xks *x)
{
    count(x, x->outcome);
    char *body = x->body;
    x->body = NULL;
    return send_json(c, call, x->status, body, x->len, x->secret, NULL, false);
}

/* The event could not be made durable: nothing is answered but 503. */
static enum MHD_Result send_audit_lost(struct MHD_Connection *c, struct kms_call *call,
                                       struct kms_http_xks *x)
{
    kms_log_error("xks", "request %s %s: audit log unavailable", call->request_id,
                  op_names[x->path.op]);
    count(x, KMS_ERR_HSM_UNAVAILABLE);
    drop_held(x);
    char *body = xks_error_body(XKS_E_DEPENDENCY_TIMEOUT, "the audit log is unavailable; retry");
    return send_json(c, call, 503, body, body ? strlen(body) : 0, false, NULL, false);
}

/* Runs on the audit writer thread once per suspended request. */
static void audit_done(void *arg, bool durable)
{
    struct kms_http_xks *x = arg;
    struct kms_http *h = x->http;
    atomic_store(&x->audit, durable ? XKS_AUDIT_DURABLE : XKS_AUDIT_LOST);
    MHD_resume_connection(x->conn);
    atomic_fetch_sub(&h->audit_waits, 1); /* last: kms_http_stop waits for it */
}

/* The audit event, then the answer; the event failing fails the request.
 * In the epoll pool the connection is suspended while the event waits for
 * its group commit (as kms_http.c does for Twirp), so a worker is never
 * blocked on fdatasync. */
static enum MHD_Result answer(struct kms_http *h, struct MHD_Connection *c,
                              struct kms_call *call, struct kms_http_xks *x,
                              const struct xks_request *req, bool ok, enum xks_error e,
                              const char *msg, struct xks_reply *reply)
{
    /* The requestMetadata goes whole into the event's own field (once the
     * signature verified: req is NULL before); the detail keeps the
     * refusal's reason. */
    const char *detail = ok ? NULL : msg;
    if (req != NULL) {
        x->md = (struct kms_xks_metadata){req->kms_request_id, req->kms_operation,
                                          req->principal_arn,  req->key_arn,
                                          req->via_service,    req->source_vpc,
                                          req->source_vpce};
        call->xks = &x->md;
    }
    call->actor = x->actor;
    call->tenant = x->tenant[0] ? x->tenant : NULL;
    const char *op = op_names[x->path.op];
    kms_err outcome = ok ? KMS_OK : audit_code(e);
    x->outcome = outcome;
    if (ok) {
        hold(x, 200, reply->body, reply->len, reply->secret);
        reply->body = NULL;
    } else {
        kms_log_info("xks", "request %s %s: %s: %s", call->request_id, op, xks_error_name(e),
                     msg);
        char *body = xks_error_body(e, msg);
        if (body == NULL)
            return MHD_NO;
        hold(x, (unsigned)xks_error_status(e), body, strlen(body), false);
    }
    const char *corr = req ? req->kms_request_id : "";
    if (!kms_http_may_suspend(h)) {
        kms_err arc = kms_audit_request(call, op, outcome, detail, corr);
        call->xks = NULL; /* borrowed from req, which ends with complete() */
        if (arc != KMS_OK)
            return send_audit_lost(c, call, x);
        return send_held(c, call, x);
    }
    x->http = h;
    x->conn = c;
    atomic_store(&x->audit, XKS_AUDIT_WAITING);
    atomic_fetch_add(&h->audit_waits, 1);
    MHD_suspend_connection(c);
    bool queued;
    kms_err rc = kms_audit_request_submit(call, op, outcome, detail, corr, audit_done, x, &queued);
    call->xks = NULL; /* packed into the queued event; req ends with complete() */
    if (!queued)
        audit_done(x, rc == KMS_OK);
    return MHD_YES;
}

static enum MHD_Result refuse_early(struct MHD_Connection *c, struct kms_call *call,
                                    struct kms_http_xks *x, unsigned status, enum xks_error e,
                                    const char *msg, const char *allow)
{
    x->answered = true;
    call->actor = x->actor;
    if (kms_audit_request(call, op_names[x->path.op], audit_code(e), msg, "") != KMS_OK)
        return MHD_NO;
    count(x, audit_code(e));
    char *body = xks_error_body(e, msg);
    return send_json(c, call, status, body, body ? strlen(body) : 0, false, allow, x->close);
}

enum MHD_Result kms_http_xks_refuse_framing(struct MHD_Connection *c, struct kms_call *call,
                                            const char *url, const char *msg,
                                            struct kms_http_xks **out)
{
    struct kms_http_xks *x = calloc(1, sizeof(*x));
    if ((*out = x) == NULL)
        return MHD_NO;
    kms_buf_init(&x->in, KMS_HTTP_XKS_BODY_MAX);
    x->mop = -1;
    x->t0 = kms_metrics_now_ns();
    snprintf(x->actor, sizeof(x->actor), "xks:unauthenticated");
    xks_path_parse(url, &x->path);
    x->close = true;
    return refuse_early(c, call, x, 400, XKS_E_VALIDATION, msg, NULL);
}

enum MHD_Result kms_http_xks_first(struct kms_http *h, struct MHD_Connection *c,
                                   struct kms_call *call, const char *url, const char *method,
                                   struct kms_http_xks **out)
{
    (void)h;
    struct kms_http_xks *x = calloc(1, sizeof(*x));
    if ((*out = x) == NULL)
        return MHD_NO;
    kms_buf_init(&x->in, KMS_HTTP_XKS_BODY_MAX);
    x->mop = -1;
    x->t0 = kms_metrics_now_ns();
    snprintf(x->actor, sizeof(x->actor), "xks:unauthenticated");
    xks_path_parse(url, &x->path);
    if (strcmp(method, "POST") != 0)
        return refuse_early(c, call, x, 405, XKS_E_VALIDATION, "use POST", "POST");
    if (x->path.op == XKS_OP_NONE || strlen(url) > XKS_PATH_MAX)
        return refuse_early(c, call, x, 404, XKS_E_INVALID_URI_PATH, "no such XKS path", NULL);
    snprintf(x->url, sizeof(x->url), "%s", url);
    snprintf(x->prefix, sizeof(x->prefix), "%.*s", (int)x->path.prefix_len, url);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl != NULL && strtoull(cl, NULL, 10) > KMS_HTTP_XKS_BODY_MAX)
        return refuse_early(c, call, x, 501, XKS_E_UNSUPPORTED, "request body too large", NULL);
    return MHD_YES;
}

/* ---- SigV4 ---- */

struct hdr_find {
    const char *name;
    const char *value;
    int count;
};

static enum MHD_Result hdr_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    struct hdr_find *f = cls;
    if (strcasecmp(key, f->name) == 0) {
        f->count++;
        f->value = value;
    }
    return MHD_YES;
}

/* A header's value, NULL when absent or sent more than once. */
static const char *header_once(void *ctx, const char *name)
{
    struct hdr_find f = {name, NULL, 0};
    MHD_get_connection_values(ctx, MHD_HEADER_KIND, hdr_iter, &f);
    return f.count == 1 ? f.value : NULL;
}

/* A Decrypt's signature is recorded once (xks_replay.h): the same signed
 * request again within its validity is refused. */
static kms_err check_replay(struct kms_http *h, const struct xks_sigv4_auth *auth,
                            const xks_sigv4_req *req, time_t now)
{
    uint8_t sig[32];
    for (size_t i = 0; i < sizeof(sig); i++) {
        unsigned v;
        if (sscanf(auth->signature + 2 * i, "%2x", &v) != 1)
            return kms_err_set(KMS_ERR_UNAUTHENTICATED, "signature: malformed");
        sig[i] = (uint8_t)v;
    }
    /* Signed before this kmsd started: its cache cannot know it. */
    KMS_GUARD(xks_replay_check_time(h->xks_replay, xks_sigv4_request_time(req)));
    /* Valid until 5 minutes after its own time: later the time check
     * refuses it anyway. */
    time_t expires = xks_sigv4_request_time(req) + XKS_SIGV4_MAX_SKEW_SECONDS + 1;
    return xks_replay_check(h->xks_replay, sig, expires, now);
}

static kms_err authenticate(struct kms_http *h, struct MHD_Connection *c,
                            struct kms_http_xks *x, const struct xks_endpoint *ep,
                            enum xks_error *e)
{
    xks_sigv4_auth auth;
    *e = XKS_E_AUTH_FAILED;
    KMS_GUARD(xks_sigv4_parse(header_once(c, "authorization"), &auth));
    const uint8_t *secret;
    size_t secret_len;
    if (!xks_endpoint_secret(ep, auth.access_key, &secret, &secret_len))
        return kms_err_set(KMS_ERR_UNAUTHENTICATED, "signature: unknown access key id");
    xks_sigv4_req req = {"POST", x->url, "", header_once, c, x->in.data, x->in.len};
    time_t now = time(NULL);
    KMS_GUARD(xks_sigv4_verify(&req, &auth, "kms-xks-proxy", secret, secret_len, now));
    /* The credential belongs to one external key store, which lives in one
     * AWS region: a scope naming another is not this store's request. */
    const char *pin = xks_endpoint_aws_region(ep);
    if (pin != NULL && strcmp(auth.region, pin) != 0)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED,
                           "signature: the credential scope's region is not this endpoint's "
                           "AWS region");
    if (x->path.op == XKS_OP_DECRYPT && xks_endpoint_replay_check(ep)) {
        kms_err rc = check_replay(h, &auth, &req, now);
        if (rc == KMS_ERR_RESOURCE_EXHAUSTED)
            *e = XKS_E_THROTTLING;
        KMS_GUARD(rc);
    }
    snprintf(x->actor, sizeof(x->actor), "xks:%s:%s", xks_endpoint_tenant(ep), auth.access_key);
    snprintf(x->tenant, sizeof(x->tenant), "%s", xks_endpoint_tenant(ep));
    return KMS_OK;
}

/* ---- health ---- */

static kms_err health(struct kms_http *h, struct xks_reply *reply)
{
    struct xks_health_result r;
    xks_health_get(h->xks_health, &r); /* a real GCM round trip per token, cached */
    const char *ids[XKS_HEALTH_MAX_TOKENS], *models[XKS_HEALTH_MAX_TOKENS],
        *st[XKS_HEALTH_MAX_TOKENS];
    for (size_t i = 0; i < r.n; i++) {
        ids[i] = r.id[i];
        models[i] = r.model[i];
        st[i] = xks_token_health_name(r.status[i]);
    }
    if (r.active == 0) {
        reply->err = XKS_E_DEPENDENCY_TIMEOUT;
        return kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "no HSM token passed its health check");
    }
    reply->body = xks_health_body("Custos", "Custos kmsd XKS proxy", r.n, ids, models, st);
    if (reply->body == NULL) {
        reply->err = XKS_E_INTERNAL;
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    reply->len = strlen(reply->body);
    return KMS_OK;
}

/* The whole body is here: authenticate, parse, run, audit, answer. */
static enum MHD_Result complete(struct kms_http *h, struct MHD_Connection *c,
                                struct kms_call *call, struct kms_http_xks *x)
{
    struct xks_request req;
    struct xks_reply reply = {0};
    enum xks_error e = XKS_E_INTERNAL;
    bool parsed = false, ok = false;
    char msg[300] = "";
    const struct xks_config *cfg = h->xks ? xks_config_holder_acquire(h->xks) : NULL;
    const struct xks_endpoint *ep =
        cfg ? xks_config_endpoint(cfg, x->prefix, strlen(x->prefix)) : NULL;
    memset(&req, 0, sizeof(req));
    kms_err_clear();
    if (ep == NULL) {
        e = XKS_E_INVALID_URI_PATH;
        snprintf(msg, sizeof(msg), "no XKS endpoint at this path");
    } else if (x->too_large) {
        e = XKS_E_UNSUPPORTED;
        snprintf(msg, sizeof(msg), "request body too large");
    } else if (authenticate(h, c, x, ep, &e) != KMS_OK) {
        snprintf(msg, sizeof(msg), "%s", kms_err_detail());
    } else if (xks_request_parse(x->path.op, x->in.data, x->in.len, &req, &e) != KMS_OK) {
        snprintf(msg, sizeof(msg), "%s", kms_err_detail());
    } else {
        parsed = true;
        kms_err rc = x->path.op == XKS_OP_HEALTH
                         ? health(h, &reply)
                         : xks_ops_run(call, ep, x->path.key_id, &req, &reply);
        ok = rc == KMS_OK;
        e = reply.err;
        snprintf(msg, sizeof(msg), "%s", ok ? "" : kms_err_detail());
    }
    enum MHD_Result r = answer(h, c, call, x, parsed ? &req : NULL, ok, e, msg, &reply);
    xks_reply_free(&reply);
    xks_request_wipe(&req);
    if (cfg != NULL)
        xks_config_holder_release(h->xks, cfg);
    return r;
}

enum MHD_Result kms_http_xks_next(struct kms_http *h, struct MHD_Connection *c,
                                  struct kms_call *call, struct kms_http_xks *x,
                                  const char *upload_data, size_t *upload_size)
{
    int audit = atomic_load(&x->audit);
    if (audit == XKS_AUDIT_DURABLE || audit == XKS_AUDIT_LOST) {
        /* resumed by the audit writer */
        *upload_size = 0;
        atomic_store(&x->audit, XKS_AUDIT_NONE);
        return audit == XKS_AUDIT_DURABLE ? send_held(c, call, x) : send_audit_lost(c, call, x);
    }
    if (x->answered) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (!x->too_large && kms_buf_append(&x->in, upload_data, *upload_size) != KMS_OK)
            x->too_large = true;
        *upload_size = 0;
        return MHD_YES;
    }
    x->answered = true;
    return complete(h, c, call, x);
}

void kms_http_xks_free(struct kms_http_xks *x)
{
    if (x == NULL)
        return;
    kms_buf_wipe(&x->in);
    drop_held(x); /* a client gone before its answer was sent */
    free(x);
}
