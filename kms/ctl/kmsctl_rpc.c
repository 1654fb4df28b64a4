/*
 * kmsctl_rpc.c - Twirp over libcurl for kmsctl, and the request plumbing the
 * commands share (map<string, string> fields, K=V pairs).
 *
 * One CURL easy handle per process, reused so that `key list --all` keeps
 * its connection. Request and reply bodies may hold plaintext or data keys,
 * so every buffer this file owns is wiped before it is freed (growth copies
 * included), and the Authorization header is wiped in curl's header list too.
 */
#include "kmsctl_rpc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "kms_buf.h"
#include "kms_error.h"
#include "kms_secret.h"
#include "kmsctl_print.h"

#define KEY_SERVICE "custos.v1.KeyService"
#define CONNECT_TIMEOUT_S 5L
#define TOTAL_TIMEOUT_S 30L
/* A reply larger than this is not from a sane kmsd (the biggest is a
 * 1000-key ListKeys page); refusing it bounds memory. */
#define MAX_REPLY ((size_t)16 << 20)
#define MAX_CORRELATION_ID 128

struct kmsctl_rpc {
    CURL *curl;
    struct curl_slist *headers; /* may hold "Authorization: Bearer ..." */
    char *url_base;             /* addr without trailing '/' */
    char errbuf[CURL_ERROR_SIZE];
    int global_init;
    char last_code[40]; /* Twirp code of the last error reply, "" if none */
};

/* The reply as it arrives: grown by copy-and-wipe, capped at MAX_REPLY. */
struct reply {
    struct kms_buf buf;
    int too_big;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct reply *r = userdata;
    size_t n = size * nmemb; /* curl guarantees size == 1 */
    kms_err rc = kms_buf_append(&r->buf, ptr, n);
    if (rc == KMS_ERR_TOO_LARGE)
        r->too_big = 1;
    return rc == KMS_OK ? n : 0; /* 0 aborts the transfer with CURLE_WRITE_ERROR */
}

/* Visible ASCII only (0x21-0x7e, as kmsd requires): a correlation id goes
 * into a header, where spaces at either end are not part of the value, and a log. */
static int correlation_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_CORRELATION_ID)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return 1;
}

/* A private key, like the API key file, must not be open to group or
 * others (ssh refuses such keys for the same reason). */
static int file_usable(const char *what, const char *path, int secret)
{
    struct stat st;
    if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
        fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
        return 0;
    }
    if (secret && (st.st_mode & 077)) {
        fprintf(stderr, "kmsctl: %s %s: mode %04o is too open (want 0600 or 0400)\n", what, path,
                (unsigned)(st.st_mode & 07777));
        return 0;
    }
    return 1;
}

/* Append a copy of line to rpc->headers; 0 when out of memory. */
static int add_header(struct kmsctl_rpc *rpc, const char *line)
{
    struct curl_slist *h = curl_slist_append(rpc->headers, line);
    if (h == NULL)
        return 0;
    rpc->headers = h;
    return 1;
}

/* Build "Authorization: Bearer <key>" into rpc->headers. curl copies the
 * string, so our copy is wiped here and curl's in kmsctl_rpc_free. */
static int add_bearer(struct kmsctl_rpc *rpc, const char *path)
{
    static const char prefix[] = "Authorization: Bearer ";
    struct kms_secret key = {0};
    char *src = NULL, *hdr = NULL;
    int ret = KMSCTL_EXIT_LOCAL;

    if (asprintf(&src, "file:%s", path) < 0) {
        src = NULL;
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    if (kms_secret_read_source(src, &key) != KMS_OK) {
        fprintf(stderr, "kmsctl: api key: %s\n", kms_err_detail());
        goto done;
    }
    /* A CR or LF would split the header; anything outside the token68
     * alphabet's printable range is not a key. */
    for (size_t i = 0; i < key.len; i++) {
        if (key.data[i] < 0x21 || key.data[i] > 0x7e) {
            fprintf(stderr, "kmsctl: api key file %s: not printable ASCII\n", path);
            goto done;
        }
    }
    size_t n = sizeof(prefix) - 1 + key.len + 1;
    hdr = malloc(n);
    if (hdr == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    memcpy(hdr, prefix, sizeof(prefix) - 1);
    memcpy(hdr + sizeof(prefix) - 1, key.data, key.len);
    hdr[n - 1] = '\0';
    if (!add_header(rpc, hdr)) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    ret = KMSCTL_EXIT_OK;
done:
    if (hdr) {
        OPENSSL_cleanse(hdr, n);
        free(hdr);
    }
    kms_secret_wipe(&key);
    free(src);
    return ret;
}

int kmsctl_rpc_open(const struct kmsctl_conn *c, struct kmsctl_rpc **out)
{
    *out = NULL;
    if (strncmp(c->addr, "http://", 7) != 0 && strncmp(c->addr, "https://", 8) != 0) {
        fprintf(stderr, "kmsctl: --addr must be an http:// or https:// URL\n");
        return KMSCTL_EXIT_USAGE;
    }
    if (c->correlation_id && !correlation_id_ok(c->correlation_id)) {
        fprintf(stderr, "kmsctl: --correlation-id must be 1..%d visible ASCII characters (no space)\n",
                MAX_CORRELATION_ID);
        return KMSCTL_EXIT_USAGE;
    }
    if ((c->cert && *c->cert) != (c->key && *c->key)) {
        fprintf(stderr, "kmsctl: --cert and --key go together\n");
        return KMSCTL_EXIT_USAGE;
    }
    /* Missing TLS files are a local error (4), found before any traffic. */
    if ((c->cacert && *c->cacert && !file_usable("CA file", c->cacert, 0)) ||
        (c->cert && *c->cert && !file_usable("client certificate", c->cert, 0)) ||
        (c->key && *c->key && !file_usable("client key", c->key, 1)))
        return KMSCTL_EXIT_LOCAL;
    /* From here the process holds the API key and soon plaintext or data
     * keys: no core file may keep them. */
    const struct rlimit no_core = {0, 0};
    (void)setrlimit(RLIMIT_CORE, &no_core);

    struct kmsctl_rpc *rpc = calloc(1, sizeof(*rpc));
    int ret = KMSCTL_EXIT_LOCAL;
    if (rpc == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return ret;
    }
    if (c->api_key_file && *c->api_key_file &&
        (ret = add_bearer(rpc, c->api_key_file)) != KMSCTL_EXIT_OK)
        goto fail;
    ret = KMSCTL_EXIT_TRANSPORT;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "kmsctl: cannot initialise libcurl\n");
        goto fail;
    }
    rpc->global_init = 1;
    rpc->curl = curl_easy_init();
    rpc->url_base = strdup(c->addr);
    if (rpc->curl == NULL || rpc->url_base == NULL) {
        fprintf(stderr, "kmsctl: cannot initialise libcurl\n");
        goto fail;
    }
    size_t n = strlen(rpc->url_base);
    while (n > 0 && rpc->url_base[n - 1] == '/')
        rpc->url_base[--n] = '\0';

    /* No "Expect: 100-continue" round trip: bodies are small. */
    char *corr = NULL;
    if (c->correlation_id && asprintf(&corr, "X-Correlation-Id: %s", c->correlation_id) < 0)
        corr = NULL;
    int ok = add_header(rpc, "Content-Type: application/protobuf") &&
             add_header(rpc, "Accept: application/protobuf, application/json") &&
             add_header(rpc, "Expect:") && (!c->correlation_id || (corr && add_header(rpc, corr)));
    free(corr);
    if (!ok) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto fail;
    }

    CURL *e = rpc->curl;
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rpc->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, TOTAL_TIMEOUT_S);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "kmsctl");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, rpc->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    /* Never follow redirects (the bearer key must not travel elsewhere) and
     * never speak anything but HTTP(S). */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->cacert && *c->cacert)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cacert);
    if (c->cert && *c->cert) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert);
        curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(e, CURLOPT_SSLKEY, c->key);
        curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    *out = rpc;
    return KMSCTL_EXIT_OK;
fail:
    kmsctl_rpc_free(rpc);
    return ret;
}

void kmsctl_rpc_free(struct kmsctl_rpc *rpc)
{
    if (rpc == NULL)
        return;
    if (rpc->curl)
        curl_easy_cleanup(rpc->curl);
    for (struct curl_slist *h = rpc->headers; h; h = h->next)
        OPENSSL_cleanse(h->data, strlen(h->data));
    curl_slist_free_all(rpc->headers);
    free(rpc->url_base);
    if (rpc->global_init)
        curl_global_cleanup();
    free(rpc);
}

ProtobufCMessage **kmsctl_rpc_map_new(char *const *keys, char *const *values, size_t n,
                                      const ProtobufCMessageDescriptor *entry_desc)
{
    const ProtobufCFieldDescriptor *fk =
        protobuf_c_message_descriptor_get_field_by_name(entry_desc, "key");
    const ProtobufCFieldDescriptor *fv =
        protobuf_c_message_descriptor_get_field_by_name(entry_desc, "value");
    ProtobufCMessage **v = calloc(n ? n : 1, sizeof(*v));
    if (v == NULL || fk == NULL || fv == NULL) {
        free(v);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        v[i] = calloc(1, entry_desc->sizeof_message);
        if (v[i] == NULL) {
            kmsctl_rpc_map_free(v, i);
            return NULL;
        }
        protobuf_c_message_init(entry_desc, v[i]);
        *(char **)((char *)v[i] + fk->offset) = keys[i];
        *(char **)((char *)v[i] + fv->offset) = values[i];
    }
    return v;
}

void kmsctl_rpc_map_free(ProtobufCMessage **entries, size_t n)
{
    if (entries == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(entries[i]);
    free(entries);
}

int kmsctl_kv_add(struct kmsctl_kv *kv, const char *opt, char *arg)
{
    char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg) {
        fprintf(stderr, "kmsctl: %s wants KEY=VALUE with a non-empty KEY\n", opt);
        return 0;
    }
    if (kv->n == KMSCTL_KV_MAX) {
        fprintf(stderr, "kmsctl: at most %d %s pairs\n", KMSCTL_KV_MAX, opt);
        return 0;
    }
    size_t klen = (size_t)(eq - arg);
    /* A map cannot hold a key twice; refusing beats silently keeping one. */
    for (size_t i = 0; i < kv->n; i++) {
        if (strlen(kv->key[i]) == klen && memcmp(kv->key[i], arg, klen) == 0) {
            fprintf(stderr, "kmsctl: %s key '%.*s' given twice\n", opt, (int)klen, arg);
            return 0;
        }
    }
    kv->key[kv->n] = strndup(arg, klen);
    if (kv->key[kv->n] == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return 0;
    }
    kv->value[kv->n++] = eq + 1;
    return 1;
}

ProtobufCMessage **kmsctl_kv_map(const struct kmsctl_kv *kv,
                                 const ProtobufCMessageDescriptor *entry_desc)
{
    ProtobufCMessage **v = kmsctl_rpc_map_new(kv->key, kv->value, kv->n, entry_desc);
    if (v == NULL)
        fprintf(stderr, "kmsctl: out of memory\n");
    return v;
}

void kmsctl_kv_cleanup(struct kmsctl_kv *kv)
{
    for (size_t i = 0; i < kv->n; i++)
        free(kv->key[i]);
    kv->n = 0;
}

/* The X-Request-Id of the last reply, or NULL. */
static const char *request_id(CURL *e)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(e, "X-Request-Id", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return NULL;
    return h->value;
}

/* Print the error of a non-200 reply. Returns 1 for a Twirp error, 3 when the
 * body is not one (a proxy's HTML page, say). */
static int report_error(struct kmsctl_rpc *rpc, CURL *e, long status, const struct reply *r)
{
    json_error_t jerr;
    json_t *root = r->buf.len ? json_loadb((const char *)r->buf.data, r->buf.len, 0, &jerr) : NULL;
    const char *code = json_string_value(json_object_get(root, "code"));
    const char *msg = json_string_value(json_object_get(root, "msg"));
    const char *rid = request_id(e);
    int ret;

    if (code && *code) {
        snprintf(rpc->last_code, sizeof(rpc->last_code), "%s", code);
        fputs("kmsctl: ", stderr);
        kmsctl_print_safe(stderr, code);
        fputs(": ", stderr);
        kmsctl_print_safe(stderr, msg ? msg : "");
        ret = KMSCTL_EXIT_REFUSED;
    } else {
        fprintf(stderr, "kmsctl: HTTP %ld reply that is not a Twirp error", status);
        ret = KMSCTL_EXIT_TRANSPORT;
    }
    if (rid) {
        fputs(" (request id ", stderr);
        kmsctl_print_safe(stderr, rid);
        fputc(')', stderr);
    }
    fputc('\n', stderr);
    json_decref(root);
    return ret;
}

/* curl errors caused by local certificate files are local errors (4). */
static int transport_exit(CURLcode cc)
{
    return cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CACERT_BADFILE ||
                   cc == CURLE_SSL_CRL_BADFILE
               ? KMSCTL_EXIT_LOCAL
               : KMSCTL_EXIT_TRANSPORT;
}

const char *kmsctl_rpc_last_code(const struct kmsctl_rpc *rpc)
{
    return rpc->last_code;
}

int kmsctl_rpc_call(struct kmsctl_rpc *rpc, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **out_resp)
{
    return kmsctl_rpc_call_service(rpc, KEY_SERVICE, method, req, resp_desc, out_resp, NULL, NULL);
}

int kmsctl_rpc_call_service(struct kmsctl_rpc *rpc, const char *service, const char *method,
                            const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc,
                            ProtobufCMessage **out_resp, uint8_t **out_body, size_t *out_len)
{
    struct reply r = {.too_big = 0};
    uint8_t *body = NULL;
    char *url = NULL;
    int ret = KMSCTL_EXIT_TRANSPORT;
    CURL *e = rpc->curl;

    kms_buf_init(&r.buf, MAX_REPLY);
    *out_resp = NULL;
    if (out_body) {
        *out_body = NULL;
        *out_len = 0;
    }
    size_t n = protobuf_c_message_get_packed_size(req);
    body = malloc(n ? n : 1);
    if (body == NULL ||
        asprintf(&url, "%s/twirp/%s/%s", rpc->url_base, service, method) < 0) {
        url = NULL;
        fprintf(stderr, "kmsctl: out of memory\n");
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    protobuf_c_message_pack(req, body);

    rpc->errbuf[0] = '\0';
    rpc->last_code[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    CURLcode cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        if (r.too_big)
            fprintf(stderr, "kmsctl: %s: reply larger than %zu bytes\n", rpc->url_base, MAX_REPLY);
        else
            fprintf(stderr, "kmsctl: %s: %s\n", rpc->url_base,
                    rpc->errbuf[0] ? rpc->errbuf : curl_easy_strerror(cc));
        ret = transport_exit(cc);
        goto done;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        ret = report_error(rpc, e, status, &r);
        goto done;
    }
    /* A 200 that is not protobuf is an intermediary's page, not kmsd. */
    const char *ctype = NULL;
    curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ctype);
    if (ctype && strncmp(ctype, "application/protobuf", 20) != 0) {
        fprintf(stderr, "kmsctl: %s: reply is not application/protobuf\n", rpc->url_base);
        goto done;
    }
    *out_resp = protobuf_c_message_unpack(resp_desc, NULL, r.buf.len, r.buf.data);
    if (*out_resp == NULL) {
        fprintf(stderr, "kmsctl: %s: malformed %s reply\n", rpc->url_base, method);
        goto done;
    }
    if (out_body) {
        /* The caller keeps the bytes exactly as received (audit bundles). */
        *out_body = malloc(r.buf.len ? r.buf.len : 1);
        if (*out_body == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            protobuf_c_message_free_unpacked(*out_resp, NULL);
            *out_resp = NULL;
            ret = KMSCTL_EXIT_LOCAL;
            goto done;
        }
        memcpy(*out_body, r.buf.data, r.buf.len);
        *out_len = r.buf.len;
    }
    ret = KMSCTL_EXIT_OK;
done:
    /* curl keeps a pointer to the body; drop it before the body goes. */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    if (body) {
        OPENSSL_cleanse(body, n);
        free(body);
    }
    kms_buf_wipe(&r.buf);
    free(url);
    return ret;
}

