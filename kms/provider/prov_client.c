/*
 * prov_client.c - Twirp over libcurl for the custos provider (prov_client.h).
 */
#include "prov_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "kms_error.h"
#include "kms_secret.h"

#define KEY_SERVICE "custos.v1.KeyService"
/* The largest reply is a GetPublicKey of an RSA-4096 key (~600 bytes);
 * anything near this bound is not kmsd. */
#define MAX_REPLY ((size_t)256 << 10)
/* Idle connections kept per provider instance; more concurrent callers get
 * a handle each and the surplus is closed when they finish. */
#define POOL_MAX 16
/* kmsd's error messages are short; longer text is cut, not trusted. */
#define MAX_MSG 300

struct stale {
    CURL *curl;
    struct stale *next;
};

struct prov_client {
    char *addr, *api_key_file, *cacert, *cert, *key;
    long connect_ms, total_ms;

    pthread_mutex_t lock; /* guards everything below */
    pid_t pid;            /* process that made the handles in idle[] */
    CURL *idle[POOL_MAX];
    size_t n_idle;
    /* Handles inherited across fork(): the parent still uses their
     * connections, so they are neither reused nor cleaned up here. Kept on a
     * list (still reachable) rather than leaked outright. */
    struct stale *stale;
    struct curl_slist *headers; /* built at first use; may hold the bearer */
    int headers_ready;
};

struct reply {
    uint8_t *data;
    size_t len, cap;
    int too_big;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ok;

/* curl_global_init once per process and never cleaned up: the application
 * may use libcurl itself, and its global state must outlive us. */
static void curl_init_once(void)
{
    curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

static char *dup_opt(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

struct prov_client *prov_client_new(const struct prov_client_cfg *cfg)
{
    struct prov_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->addr = dup_opt(cfg->addr);
    c->api_key_file = dup_opt(cfg->api_key_file);
    c->cacert = dup_opt(cfg->cacert);
    c->cert = dup_opt(cfg->cert);
    c->key = dup_opt(cfg->key);
    c->connect_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms
                                                : PROV_CONNECT_TIMEOUT_MS_DEFAULT;
    c->total_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : PROV_TIMEOUT_MS_DEFAULT;
    c->pid = getpid();
    pthread_mutex_init(&c->lock, NULL);
    if ((cfg->addr && *cfg->addr && c->addr == NULL) ||
        (cfg->api_key_file && *cfg->api_key_file && c->api_key_file == NULL) ||
        (cfg->cacert && *cfg->cacert && c->cacert == NULL) ||
        (cfg->cert && *cfg->cert && c->cert == NULL) || (cfg->key && *cfg->key && c->key == NULL)) {
        prov_client_free(c);
        return NULL;
    }
    /* A trailing '/' would double in the URL. */
    if (c->addr) {
        size_t n = strlen(c->addr);
        while (n > 0 && c->addr[n - 1] == '/')
            c->addr[--n] = '\0';
    }
    return c;
}

static void wipe_headers(struct curl_slist *h)
{
    for (struct curl_slist *p = h; p; p = p->next)
        OPENSSL_cleanse(p->data, strlen(p->data));
    curl_slist_free_all(h);
}

void prov_client_free(struct prov_client *c)
{
    if (c == NULL)
        return;
    /* Handles made by another process (we are a forked child being torn
     * down) are left alone, as on every other path. */
    if (c->pid == getpid())
        for (size_t i = 0; i < c->n_idle; i++)
            curl_easy_cleanup(c->idle[i]);
    while (c->stale) {
        struct stale *s = c->stale;
        c->stale = s->next;
        free(s);
    }
    wipe_headers(c->headers);
    pthread_mutex_destroy(&c->lock);
    free(c->addr);
    free(c->api_key_file);
    free(c->cacert);
    free(c->cert);
    free(c->key);
    free(c);
}

/* ---- configuration checks at first use -------------------------------- */

static int file_ok(struct prov_ctx *ctx, const char *what, const char *path, int secret)
{
    struct stat st;
    if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
        PROV_RAISE(ctx, PROV_R_CONFIG, "%s %s: cannot read it", what, path);
        return 0;
    }
    if (secret && (st.st_mode & 077)) {
        PROV_RAISE(ctx, PROV_R_CONFIG, "%s %s: mode %04o is too open (want 0600 or 0400)", what,
                   path, (unsigned)(st.st_mode & 07777));
        return 0;
    }
    return 1;
}

/* Build the header list once, under c->lock. The API key is read here, at
 * first use, so that a provider loaded by an application that never signs
 * with a custos: key needs no credentials. */
static int build_headers(struct prov_ctx *ctx, struct prov_client *c)
{
    static const char prefix[] = "Authorization: Bearer ";
    struct curl_slist *h = NULL, *t;
    struct kms_secret key = {0};
    char *src = NULL, *hdr = NULL;
    size_t hdr_len = 0;
    int ok = 0;

    if (c->addr == NULL) {
        PROV_RAISE(ctx, PROV_R_CONFIG,
                   "no kmsd address: set CUSTOS_ADDR or the provider's custos-addr parameter");
        return 0;
    }
    if (strncmp(c->addr, "http://", 7) != 0 && strncmp(c->addr, "https://", 8) != 0) {
        PROV_RAISE(ctx, PROV_R_CONFIG, "kmsd address must be an http:// or https:// URL");
        return 0;
    }
    if ((c->cert != NULL) != (c->key != NULL)) {
        PROV_RAISE(ctx, PROV_R_CONFIG, "client certificate and client key go together");
        return 0;
    }
    if ((c->cacert && !file_ok(ctx, "CA file", c->cacert, 0)) ||
        (c->cert && !file_ok(ctx, "client certificate", c->cert, 0)) ||
        (c->key && !file_ok(ctx, "client key", c->key, 1)))
        return 0;

    h = curl_slist_append(NULL, "Content-Type: application/protobuf");
    if (h == NULL || (t = curl_slist_append(h, "Accept: application/protobuf")) == NULL ||
        (t = curl_slist_append(h, "Expect:")) == NULL)
        goto oom;
    if (c->api_key_file) {
        if (asprintf(&src, "file:%s", c->api_key_file) < 0) {
            src = NULL;
            goto oom;
        }
        if (kms_secret_read_source(src, &key) != KMS_OK) {
            PROV_RAISE(ctx, PROV_R_CONFIG, "api key: %s", kms_err_detail());
            goto done;
        }
        for (size_t i = 0; i < key.len; i++) {
            if (key.data[i] < 0x21 || key.data[i] > 0x7e) {
                PROV_RAISE(ctx, PROV_R_CONFIG, "api key file %s: not printable ASCII",
                           c->api_key_file);
                goto done;
            }
        }
        hdr_len = sizeof(prefix) - 1 + key.len + 1;
        hdr = malloc(hdr_len);
        if (hdr == NULL)
            goto oom;
        memcpy(hdr, prefix, sizeof(prefix) - 1);
        memcpy(hdr + sizeof(prefix) - 1, key.data, key.len);
        hdr[hdr_len - 1] = '\0';
        if (curl_slist_append(h, hdr) == NULL)
            goto oom;
    }
    c->headers = h;
    h = NULL;
    c->headers_ready = 1;
    ok = 1;
    goto done;
oom:
    PROV_RAISE(ctx, PROV_R_INTERNAL, "out of memory");
done:
    if (hdr) {
        OPENSSL_cleanse(hdr, hdr_len);
        free(hdr);
    }
    kms_secret_wipe(&key);
    free(src);
    wipe_headers(h);
    return ok;
}

static CURL *handle_new(struct prov_client *c)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->total_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "custos-openssl-provider");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    /* The bearer key goes to the configured address only. */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->cacert)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cacert);
    if (c->cert) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert);
        curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(e, CURLOPT_SSLKEY, c->key);
        curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    }
    return e;
}

/* A handle for one call: an idle one of this process, else a new one. */
static CURL *handle_take(struct prov_ctx *ctx, struct prov_client *c)
{
    CURL *e = NULL;
    pthread_once(&curl_once, curl_init_once);
    if (!curl_ok) {
        PROV_RAISE(ctx, PROV_R_TRANSPORT, "cannot initialise libcurl");
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    pid_t me = getpid();
    if (c->pid != me) {
        /* First call in a forked child: the idle handles' connections are
         * the parent's. Keep them off the pool without touching them. */
        for (size_t i = 0; i < c->n_idle; i++) {
            struct stale *s = malloc(sizeof(*s));
            if (s) {
                s->curl = c->idle[i];
                s->next = c->stale;
                c->stale = s;
            }
        }
        c->n_idle = 0;
        c->pid = me;
    }
    int ready = c->headers_ready || build_headers(ctx, c);
    if (ready && c->n_idle > 0)
        e = c->idle[--c->n_idle];
    pthread_mutex_unlock(&c->lock);
    if (!ready)
        return NULL;
    if (e == NULL && (e = handle_new(c)) == NULL)
        PROV_RAISE(ctx, PROV_R_TRANSPORT, "cannot initialise libcurl");
    return e;
}

static void handle_give(struct prov_client *c, CURL *e)
{
    pthread_mutex_lock(&c->lock);
    /* A handle taken before a fork and given back after it (another thread
     * of the parent) is the parent's; pid decides. */
    if (c->pid == getpid() && c->n_idle < POOL_MAX) {
        c->idle[c->n_idle++] = e;
        e = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (e)
        curl_easy_cleanup(e);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct reply *r = userdata;
    size_t n = size * nmemb; /* size is 1 */
    if (n > MAX_REPLY - r->len) {
        r->too_big = 1;
        return 0;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n)
            cap *= 2;
        uint8_t *p = malloc(cap);
        if (p == NULL)
            return 0;
        if (r->data) {
            memcpy(p, r->data, r->len);
            OPENSSL_cleanse(r->data, r->cap);
            free(r->data);
        }
        r->data = p;
        r->cap = cap;
    }
    memcpy(r->data + r->len, ptr, n);
    r->len += n;
    return n;
}

/* Copy s into out as printable ASCII (anything else becomes '?'), cut. */
static void safe_copy(char *out, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < cap; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[i] = '\0';
}

static void raise_twirp_error(struct prov_ctx *ctx, CURL *e, const char *method, long status,
                              const struct reply *r)
{
    json_error_t jerr;
    json_t *root = r->len ? json_loadb((const char *)r->data, r->len, 0, &jerr) : NULL;
    const char *code = json_string_value(json_object_get(root, "code"));
    const char *msg = json_string_value(json_object_get(root, "msg"));
    struct curl_header *h = NULL;
    char rid[80] = "none", m[MAX_MSG + 1];

    if (curl_easy_header(e, "X-Request-Id", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h->value)
        safe_copy(rid, sizeof(rid), h->value);
    safe_copy(m, sizeof(m), msg ? msg : "");
    int i = kms_twirp_code_index(code);
    if (i >= 0)
        PROV_RAISE(ctx, PROV_R_TWIRP_FIRST + i, "kmsd refused %s: %s: %s (request id %s)",
                   method, kms_twirp_codes[i], m, rid);
    else
        PROV_RAISE(ctx, PROV_R_BAD_REPLY,
                   "kmsd %s: HTTP %ld reply that is not a Twirp error (request id %s)", method,
                   status, rid);
    json_decref(root);
}

int prov_client_call(struct prov_ctx *ctx, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **out)
{
    struct prov_client *c = ctx->client;
    struct reply r = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    uint8_t *body = NULL;
    char *url = NULL;
    int ok = 0;
    CURL *e;

    *out = NULL;
    if ((e = handle_take(ctx, c)) == NULL)
        return 0;
    size_t n = protobuf_c_message_get_packed_size(req);
    body = malloc(n ? n : 1);
    if (body == NULL || asprintf(&url, "%s/twirp/%s/%s", c->addr, KEY_SERVICE, method) < 0) {
        url = NULL;
        PROV_RAISE(ctx, PROV_R_INTERNAL, "out of memory");
        goto done;
    }
    protobuf_c_message_pack(req, body);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    CURLcode cc = curl_easy_perform(e);
    if (cc != CURLE_OK) {
        if (r.too_big)
            PROV_RAISE(ctx, PROV_R_BAD_REPLY, "kmsd %s: reply larger than %zu bytes", method,
                       MAX_REPLY);
        else
            PROV_RAISE(ctx, PROV_R_TRANSPORT, "cannot reach kmsd at %s (%s): %s", c->addr, method,
                       errbuf[0] ? errbuf : curl_easy_strerror(cc));
        goto done;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        raise_twirp_error(ctx, e, method, status, &r);
        goto done;
    }
    const char *ctype = NULL;
    curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ctype);
    if (ctype == NULL || strncmp(ctype, "application/protobuf", 20) != 0) {
        PROV_RAISE(ctx, PROV_R_BAD_REPLY, "kmsd %s: reply is not application/protobuf", method);
        goto done;
    }
    *out = protobuf_c_message_unpack(resp_desc, NULL, r.len, r.data);
    if (*out == NULL) {
        PROV_RAISE(ctx, PROV_R_BAD_REPLY, "kmsd %s: malformed reply", method);
        goto done;
    }
    ok = 1;
done:
    /* curl keeps pointers to the body and the error buffer: drop them before
     * they go, so the pooled handle holds nothing of this call. */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    handle_give(c, e);
    if (body) {
        OPENSSL_cleanse(body, n);
        free(body);
    }
    if (r.data) {
        OPENSSL_cleanse(r.data, r.cap);
        free(r.data);
    }
    free(url);
    return ok;
}
