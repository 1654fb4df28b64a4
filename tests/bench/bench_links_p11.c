/*
 * bench_links_p11.c - the raw HSM HMAC rate behind link tokens
 * (docs/link-tokens.md): C_Sign(CKM_SHA256_HMAC) over a 166-byte input (the
 * size of a MAC input with short fields) with a token generic-secret key,
 * as a bare PKCS#11 loop (one session per thread, the handle resolved once)
 * and through the pkcs11/ layer (p11_hmac_sha256: pool, handle cache), at 1
 * and 2 threads. bench_links.py puts MintLinkToken and RedeemLinkToken over
 * HTTP beside these in the same run; each of those makes two HMACs.
 *
 *   bench_links_p11 [seconds-per-run] [runs]      (defaults 2 and 5)
 *
 * Needs SOFTHSM2_CONF and CUSTOS_BENCH_HSM_DIR (made by run-bench.sh).
 * Prints "hmac <path> <threads> <median op/s> <min>-<max> <ratio>".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_key.h"

#define INPUT_LEN 166

static struct p11_token *tok;
static struct p11_key_id kid;
static double run_seconds = 2.0;

struct thread_arg {
    bool raw;
    long ops, errors;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker(void *varg)
{
    struct thread_arg *a = varg;
    uint8_t in[INPUT_LEN], mac[32];
    memset(in, 0x5a, sizeof(in));
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
    if (a->raw &&
        (tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) !=
             CKR_OK ||
         p11_key_handle(tok, s, &kid, CKO_SECRET_KEY, CKK_GENERIC_SECRET, &h) != KMS_OK)) {
        a->errors++;
        return NULL;
    }
    double end = now() + run_seconds;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            memcpy(in, &a->ops, sizeof(a->ops));
            if (a->raw) {
                CK_ULONG n = sizeof(mac);
                if (tok->fl->C_SignInit(s, &m, h) != CKR_OK ||
                    tok->fl->C_Sign(s, in, sizeof(in), mac, &n) != CKR_OK)
                    a->errors++;
            } else if (p11_hmac_sha256(tok, &kid, in, sizeof(in), mac) != KMS_OK) {
                a->errors++;
            }
            a->ops++;
        }
    }
    if (a->raw)
        tok->fl->C_CloseSession(s);
    return NULL;
}

static double one_run(bool raw, int threads, long *errors)
{
    pthread_t th[2];
    struct thread_arg args[2];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){raw, 0, 0};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    long ops = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ops += args[i].ops;
        *errors += args[i].errors;
    }
    return (double)ops / (now() - t0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        run_seconds = atof(argv[1]);
    int runs = argc > 2 ? atoi(argv[2]) : 5;
    if (run_seconds <= 0 || runs < 1 || runs > 50) {
        fprintf(stderr, "usage: bench_links_p11 [seconds-per-run] [runs<=50]\n");
        return 2;
    }
    const char *dir = getenv("CUSTOS_BENCH_HSM_DIR");
    if (!dir) {
        fprintf(stderr, "bench_links_p11: CUSTOS_BENCH_HSM_DIR not set (use make bench)\n");
        return 2;
    }
    char pin[600];
    snprintf(pin, sizeof(pin), "file:%s/pins/eu-west.pin", dir);
    struct p11_module *mod;
    if (p11_module_load("/usr/lib/softhsm/libsofthsm2.so", &mod) != KMS_OK) {
        fprintf(stderr, "bench_links_p11: %s\n", kms_err_detail());
        return 1;
    }
    struct p11_token_config cfg = {"eu-west", "custos-eu-west", pin, 0};
    if (p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK || p11_key_id_new(tok, &kid) != KMS_OK ||
        p11_key_generate(tok, P11_KEY_HMAC_SHA256, 0, &kid, "custos:bench-links") != KMS_OK) {
        fprintf(stderr, "bench_links_p11: %s\n", kms_err_detail());
        return 1;
    }
    printf("C_Sign(CKM_SHA256_HMAC) of %d bytes, token generic secret, SoftHSMv2; "
           "%d runs x %.1f s each\n",
           INPUT_LEN, runs, run_seconds);
    printf("%-4s %-6s %-8s %12s %20s %8s\n", "", "path", "threads", "median op/s", "min-max",
           "ratio");
    long errors = 0;
    for (int threads = 1; threads <= 2; threads++) {
        double raw_med = 0;
        for (int layer = 0; layer <= 1; layer++) {
            double r[50];
            for (int i = 0; i < runs; i++)
                r[i] = one_run(!layer, threads, &errors);
            qsort(r, (size_t)runs, sizeof(double), cmp_double);
            double med = r[runs / 2];
            if (!layer)
                raw_med = med;
            char range[64];
            snprintf(range, sizeof(range), "%.0f-%.0f", r[0], r[runs - 1]);
            printf("hmac %-6s %-8d %12.0f %20s %8.2f\n", layer ? "layer" : "raw", threads, med,
                   range, med / raw_med);
        }
    }
    printf("errors: %ld\n", errors);
    p11_key_destroy(tok, &kid);
    p11_token_free(tok);
    p11_module_free(mod);
    return errors == 0 ? 0 : 1;
}
