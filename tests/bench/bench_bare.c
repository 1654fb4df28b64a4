/*
 * bench_bare.c - the HTTP ceiling for make bench: a libmicrohttpd server
 * with kmsd's thread model whose every POST does only the HSM call that
 * Encrypt wraps (C_EncryptInit + C_Encrypt, AES-256-GCM, 256 bytes, token
 * key, one session per worker thread) and answers the ciphertext. No
 * protobuf, policy, store, metrics or audit: what is left between it and
 * the raw PKCS#11 loop is HTTP and the load generator on the same cores.
 *
 *   bench_bare PORT THREADS      (SOFTHSM2_CONF, CUSTOS_BENCH_HSM_DIR set)
 *
 * Prints "ready" when listening; stops on SIGTERM or SIGINT.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <microhttpd.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"

static struct p11_token *tok;
static struct p11_key_id key;
static volatile sig_atomic_t stop;

/* One session per MHD worker, opened on its first request. */
static _Thread_local CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
static _Thread_local CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
static _Thread_local unsigned long counter;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const void *data,
                             size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/octet-stream");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload;
    if (*con_cls == NULL) {
        *con_cls = (void *)1;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        *upload_size = 0; /* the body is read and ignored */
        return MHD_YES;
    }
    if (session == CK_INVALID_HANDLE) {
        if (tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                   &session) != CKR_OK ||
            p11_key_handle(tok, session, &key, CKO_SECRET_KEY, CKK_AES, &handle) != KMS_OK)
            return reply(c, 503, "no session\n", 11);
    }
    uint8_t iv[12] = {0}, pt[256], ct[272];
    memset(pt, 0x6d, sizeof(pt));
    counter++;
    memcpy(iv, &counter, sizeof(counter));
    CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_ULONG out = sizeof(ct);
    if (tok->fl->C_EncryptInit(session, &m, handle) != CKR_OK ||
        tok->fl->C_Encrypt(session, pt, sizeof(pt), ct, &out) != CKR_OK)
        return reply(c, 500, "encrypt failed\n", 15);
    return reply(c, 200, ct, out);
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_bare PORT THREADS\n");
        return 2;
    }
    int port = atoi(argv[1]), threads = atoi(argv[2]);
    const char *dir = getenv("CUSTOS_BENCH_HSM_DIR");
    if (dir == NULL || port <= 0 || port > 65535 || threads < 1 || threads > 64) {
        fprintf(stderr, "bench_bare: bad arguments or CUSTOS_BENCH_HSM_DIR not set\n");
        return 2;
    }
    char pin[600];
    snprintf(pin, sizeof(pin), "file:%s/pins/eu-west.pin", dir);
    struct p11_module *mod;
    struct p11_token_config cfg = {"eu-west", "custos-eu-west", pin, 0};
    if (p11_module_load("/usr/lib/softhsm/libsofthsm2.so", &mod) != KMS_OK ||
        p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK || p11_key_id_new(tok, &key) != KMS_OK ||
        p11_key_generate(tok, P11_KEY_AES_ENCRYPT, 0, &key, "custos:bench-bare") != KMS_OK) {
        fprintf(stderr, "bench_bare: %s\n", kms_err_detail());
        return 1;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC, (uint16_t)port, NULL, NULL, handler, NULL,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_CONNECTION_LIMIT, 1024u,
        MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "bench_bare: cannot listen on port %d\n", port);
        return 1;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready\n");
    fflush(stdout);
    while (!stop)
        pause();
    MHD_stop_daemon(d);
    p11_key_destroy(tok, &key);
    p11_token_free(tok);
    p11_module_free(mod);
    return 0;
}
