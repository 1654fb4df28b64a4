/*
 * bench_sign_p11.c - the raw C_Sign rate for the signing keys of issue 16:
 * ECDSA P-256 over a SHA-256 digest (CKM_ECDSA) and RSA-3072 PSS
 * (CKM_RSA_PKCS_PSS, SHA-256, salt 32), as a bare PKCS#11 loop (one session
 * per thread, the handle resolved once) and through the pkcs11/ layer
 * (p11_asym_sign_digest: pool, handle cache, key-type check, DER encoding),
 * on a token key pair made here, at 1 and 2 threads. bench_sign.py puts
 * Sign over HTTP beside these, in the same run.
 *
 *   bench_sign_p11 [seconds-per-run] [runs]      (defaults 2 and 5)
 *
 * Needs SOFTHSM2_CONF and CUSTOS_BENCH_HSM_DIR (made by run-bench.sh).
 * Prints "sign <kind> <path> <threads> <median op/s> <min>-<max> <ratio>".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_error.h"
#include "p11_asym.h"
#include "p11_internal.h"

static struct p11_token *tok;
static double run_seconds = 2.0;

struct kind {
    const char *name;
    enum p11_asym_kind kind;
    enum p11_sig_alg alg;
    struct p11_key_id id;
};

static struct kind kinds[] = {
    {"ecdsa-p256", P11_ASYM_EC_P256, P11_SIG_ECDSA_SHA256, {{0}}},
    {"rsa3072-pss", P11_ASYM_RSA_3072, P11_SIG_RSA_PSS_SHA256, {{0}}},
};

struct thread_arg {
    const struct kind *k;
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
    uint8_t digest[32], sig[P11_ASYM_SIG_MAX];
    memset(digest, 0x5a, sizeof(digest));
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    if (a->k->alg == P11_SIG_RSA_PSS_SHA256)
        m = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    if (a->raw &&
        (tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) !=
             CKR_OK ||
         p11_key_handle(tok, s, &a->k->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h) != KMS_OK)) {
        a->errors++;
        return NULL;
    }
    double end = now() + run_seconds;
    while (now() < end) {
        for (int i = 0; i < 16; i++) {
            memcpy(digest, &a->ops, sizeof(a->ops));
            if (a->raw) {
                CK_ULONG n = sizeof(sig);
                if (tok->fl->C_SignInit(s, &m, h) != CKR_OK ||
                    tok->fl->C_Sign(s, digest, sizeof(digest), sig, &n) != CKR_OK)
                    a->errors++;
            } else {
                size_t n = sizeof(sig);
                if (p11_asym_sign_digest(tok, &a->k->id, a->k->alg, digest, sizeof(digest), sig,
                                         &n) != KMS_OK)
                    a->errors++;
            }
            a->ops++;
        }
    }
    if (a->raw)
        tok->fl->C_CloseSession(s);
    return NULL;
}

static double one_run(const struct kind *k, bool raw, int threads, long *errors)
{
    pthread_t th[8];
    struct thread_arg args[8];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){k, raw, 0, 0};
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
        fprintf(stderr, "usage: bench_sign_p11 [seconds-per-run] [runs<=50]\n");
        return 2;
    }
    const char *dir = getenv("CUSTOS_BENCH_HSM_DIR");
    if (!dir) {
        fprintf(stderr, "bench_sign_p11: CUSTOS_BENCH_HSM_DIR not set (use make bench)\n");
        return 2;
    }
    char pin[600];
    snprintf(pin, sizeof(pin), "file:%s/pins/eu-west.pin", dir);
    struct p11_module *mod;
    if (p11_module_load("/usr/lib/softhsm/libsofthsm2.so", &mod) != KMS_OK) {
        fprintf(stderr, "bench_sign_p11: %s\n", kms_err_detail());
        return 1;
    }
    struct p11_token_config cfg = {"eu-west", "custos-eu-west", pin, 0};
    if (p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK) {
        fprintf(stderr, "bench_sign_p11: %s\n", kms_err_detail());
        return 1;
    }
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (p11_key_id_new(tok, &kinds[i].id) != KMS_OK ||
            p11_asym_generate(tok, kinds[i].kind, &kinds[i].id, "custos:bench-sign", false) !=
                KMS_OK) {
            fprintf(stderr, "bench_sign_p11: %s\n", kms_err_detail());
            return 1;
        }
    printf("C_Sign of a SHA-256 digest, token key pair, SoftHSMv2; %d runs x %.1f s each\n",
           runs, run_seconds);
    printf("%-4s %-12s %-6s %-8s %12s %20s %8s\n", "", "key", "path", "threads", "median op/s",
           "min-max", "ratio");
    long errors = 0;
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        for (int threads = 1; threads <= 2; threads++) {
            double raw_med = 0;
            for (int layer = 0; layer <= 1; layer++) {
                double r[50];
                for (int i = 0; i < runs; i++)
                    r[i] = one_run(&kinds[k], !layer, threads, &errors);
                qsort(r, (size_t)runs, sizeof(double), cmp_double);
                double med = r[runs / 2];
                if (!layer)
                    raw_med = med;
                char range[64];
                snprintf(range, sizeof(range), "%.0f-%.0f", r[0], r[runs - 1]);
                printf("sign %-12s %-6s %-8d %12.0f %20s %8.2f\n", kinds[k].name,
                       layer ? "layer" : "raw", threads, med, range, med / raw_med);
            }
        }
    }
    printf("errors: %ld\n", errors);
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        p11_key_destroy(tok, &kinds[i].id);
    p11_token_free(tok);
    p11_module_free(mod);
    return errors == 0 ? 0 : 1;
}
