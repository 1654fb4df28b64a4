/*
 * kms_http_server.c - the libmicrohttpd daemon of the front: starting it
 * (threads, TLS material, limits, the request callbacks of kms_http.c),
 * draining it on SIGTERM and stopping it (kms_http.h).
 */
#include "kms_http.h"

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>

#include "kms_health.h"
#include "kms_http_internal.h"
#include "kms_tls_key.h"
#include "kms_log.h"
#include "kms_metrics.h"

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    kms_log_warn("mhd", "%s", msg);
}

/* URLs are routed as they arrived, never percent-decoded: Twirp paths are
 * [A-Za-z0-9./] only, and decoding let "/Encrypt%00" (a NUL that ends the C
 * string) or "%45ncrypt" reach a route under another spelling. Anything
 * encoded is simply no route (404 bad_route). We read no query arguments. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static char *read_pem(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        kms_err_set(KMS_ERR_CONFIG, "%s: cannot open", path);
        return NULL;
    }
    char *buf = calloc(1, 65537);
    size_t n = buf ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    if (buf == NULL || n == 0 || n == 65536) {
        free(buf);
        kms_err_set(KMS_ERR_CONFIG, "%s: empty or larger than 64 KiB", path);
        return NULL;
    }
    return buf;
}

/* libmicrohttpd's panic ends the process; say why in kmsd's own log first
 * (its default prints to stderr without context). */
static void mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
    (void)cls;
    kms_log_error("http", "libmicrohttpd gave up at %s:%u: %s", file ? file : "?", line,
                  reason ? reason : "?");
    abort();
}

kms_err kms_http_start(struct kms_service *svc, struct kms_http **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    struct kms_http *h = calloc(1, sizeof(*h));
    KMS_ENSURE(h != NULL, KMS_ERR_NOMEM, "out of memory");
    h->svc = svc;
    h->cfg = kms_service_config(svc);
    const struct kms_config *cfg = h->cfg;
    KMS_GUARD_GOTO(kms_health_new(svc, cfg->health_cache_ms, &h->health), fail);
    if (cfg->xks_config_path != NULL) {
        KMS_GUARD_GOTO(xks_config_holder_open(cfg->xks_config_path, &h->xks), fail);
        KMS_GUARD_GOTO(xks_health_new(svc, cfg->health_cache_ms, &h->xks_health), fail);
        KMS_GUARD_GOTO(xks_replay_new(XKS_REPLAY_SLOTS, &h->xks_replay), fail);
    }

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->listen_port);
    inet_pton(AF_INET, cfg->listen_address, &addr.sin_addr);

    unsigned threads = cfg->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    /* Per-connection threads let requests that wait for the audit group
     * commit block without holding up other connections, so batches grow
     * with concurrency; the pool model multiplexes connections on few
     * threads. make bench measures both. */
    MHD_set_panic_func(mhd_panic, NULL);
    /* ITC lets MHD_quiesce_daemon stop the listening thread on SIGTERM. */
    unsigned flags = MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (cfg->thread_per_connection)
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    else
        flags |= MHD_USE_EPOLL_INTERNAL_THREAD;
    h->suspend = !cfg->thread_per_connection && kms_service_audit_default(svc) != NULL;
    if (h->suspend)
        flags |= MHD_ALLOW_SUSPEND_RESUME;
    struct MHD_OptionItem opts[6];
    size_t nt = 0;
    if (!cfg->thread_per_connection)
        opts[nt++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, threads, NULL};
    if (cfg->tls_cert) {
        KMS_ENSURE_GOTO(MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES, fail, KMS_ERR_CONFIG,
                        "this libmicrohttpd has no TLS support");
        h->tls_cert = read_pem(cfg->tls_cert);
        KMS_ENSURE_GOTO(h->tls_cert, fail, KMS_ERR_CONFIG, "%s", kms_err_detail());
        flags |= MHD_USE_TLS;
        if (cfg->tls_key_uri) {
            KMS_GUARD_GOTO(kms_tls_key_open(h->svc, h->tls_cert, cfg->tls_key_uri,
                                            &h->tls_hsm_key),
                           fail);
            opts[nt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
                                                 (void *)kms_tls_key_retrieve};
        } else {
            h->tls_key = read_pem(cfg->tls_key);
            KMS_ENSURE_GOTO(h->tls_key, fail, KMS_ERR_CONFIG, "%s", kms_err_detail());
            opts[nt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
            opts[nt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
        }
        if (cfg->tls_client_ca) {
            h->tls_ca = read_pem(cfg->tls_client_ca);
            KMS_ENSURE_GOTO(h->tls_ca, fail, KMS_ERR_CONFIG, "%s", kms_err_detail());
            /* Makes the server request a client certificate in the
             * handshake; whether one is required is decided per request. */
            opts[nt++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, h->tls_ca};
        }
    }
    opts[nt] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    h->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->listen_port, NULL, NULL, kms_http_access, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, cfg->connection_timeout_s,
        /* Bounds the header block of one request (and MHD's read buffer). */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32 * 1024,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_ip,
        MHD_OPTION_STRICT_FOR_CLIENT, 1,
        MHD_OPTION_NOTIFY_COMPLETED, kms_http_completed, h,
        MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, NULL,
        MHD_OPTION_ARRAY, opts,
        MHD_OPTION_END);
    KMS_ENSURE_GOTO(h->daemon != NULL, fail, KMS_ERR_CONFIG, "cannot listen on %s:%u",
                    cfg->listen_address, cfg->listen_port);
    kms_log_info("http", "listening on %s://%s:%u with %s%s", cfg->tls_cert ? "https" : "http",
                 cfg->listen_address, cfg->listen_port,
                 cfg->thread_per_connection ? "a thread per connection" : "an epoll thread pool",
                 cfg->tls_client_ca ? (cfg->tls_require_client_cert ? ", client certificates required"
                                                                     : ", client certificates accepted")
                                    : "");
    *out = h;
    return KMS_OK;
fail:
    kms_http_stop(h);
    return rc;
}

unsigned kms_http_drain(struct kms_http *h, unsigned timeout_s)
{
    if (h == NULL || h->daemon == NULL)
        return 0;
    atomic_store(&h->draining, true);
    /* Close the listening socket: new connections are refused at once (a
     * load balancer moves on), while accepted ones finish. */
    MHD_socket ls = MHD_quiesce_daemon(h->daemon);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    uint64_t deadline = kms_metrics_now_ns() + (uint64_t)timeout_s * 1000000000u;
    unsigned left;
    while ((left = atomic_load(&h->inflight)) > 0 && kms_metrics_now_ns() < deadline)
        usleep(10000);
    return left;
}

void kms_http_stop(struct kms_http *h)
{
    if (h == NULL)
        return;
    /* A suspended connection must be resumed before MHD frees it; the audit
     * writer resumes every one (durable or lost), so this ends. */
    while (atomic_load(&h->audit_waits) > 0)
        usleep(1000);
    if (h->daemon)
        MHD_stop_daemon(h->daemon);
    if (h->tls_key) {
        OPENSSL_cleanse(h->tls_key, strlen(h->tls_key));
        free(h->tls_key);
    }
    kms_tls_key_free(h->tls_hsm_key); /* after MHD_stop_daemon: no handshake is running */
    free(h->tls_cert);
    free(h->tls_ca);
    kms_health_free(h->health);
    xks_config_holder_free(h->xks);
    xks_health_free(h->xks_health);
    xks_replay_free(h->xks_replay);
    free(h);
}

void kms_http_reload(struct kms_http *h)
{
    if (h == NULL || h->xks == NULL)
        return;
    if (xks_config_holder_reload(h->xks) != KMS_OK)
        kms_log_error("kmsd", "XKS endpoints not reloaded, the previous ones stay: %s",
                      kms_err_detail());
    else
        kms_log_info("kmsd", "SIGHUP: XKS endpoints reloaded");
}
