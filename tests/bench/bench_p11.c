/*
 * bench_p11.c - AES-256-GCM encrypt of 256 bytes with a token key: through
 * the pkcs11/ layer (session pool, handle cache, retry wrapper) against a
 * bare PKCS#11 loop (one session per thread, handle resolved once), in the
 * same process, on the same token and key, at 1 and 2 threads. A third
 * row, for reference only, runs the bare loop on a session-object AES key
 * (CKA_TOKEN false, generated in the thread's session): what SoftHSMv2
 * charges for a token object on every C_EncryptInit (it re-checks the
 * object's file). Custos keys are non-copyable token objects, so kmsd
 * cannot take that path; the row shows what the token costs.
 *
 *   bench_p11 [seconds-per-run] [runs]      (defaults 2 and 5)
 *
 * Needs SOFTHSM2_CONF and CUSTOS_BENCH_HSM_DIR (made by run-bench.sh).
 * Prints ops/s as median with min-max over the runs, and the ratio.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"

static struct p11_token *tok;
static struct p11_key_id key;
static double run_seconds = 2.0;

enum path { LAYER, RAW, RAW_SESSION_KEY };

struct thread_arg {
    enum path path;
    long ops;
    long errors;
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
    uint8_t iv[12] = {0}, pt[256], ct[272];
    memset(pt, 0x42, sizeof(pt));
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    bool raw = a->path != LAYER;
    if (raw) {
        /* The bare baseline: its own session, the handle looked up once. */
        if (tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                   &s) != CKR_OK ||
            p11_key_handle(tok, s, &key, CKO_SECRET_KEY, CKK_AES, &h) != KMS_OK) {
            a->errors++;
            return NULL;
        }
        if (a->path == RAW_SESSION_KEY) {
            CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
            CK_ULONG len = 32;
            CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
            CK_ATTRIBUTE t[] = {{CKA_TOKEN, &no, sizeof(no)},
                                {CKA_SENSITIVE, &yes, sizeof(yes)},
                                {CKA_EXTRACTABLE, &no, sizeof(no)},
                                {CKA_ENCRYPT, &yes, sizeof(yes)},
                                {CKA_VALUE_LEN, &len, sizeof(len)}};
            if (tok->fl->C_GenerateKey(s, &gen, t, 5, &h) != CKR_OK) {
                a->errors++;
                tok->fl->C_CloseSession(s);
                return NULL;
            }
        }
    }
    double end = now() + run_seconds;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            memcpy(iv, &a->ops, sizeof(a->ops));
            if (raw) {
                CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
                CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
                CK_ULONG out = sizeof(ct);
                if (tok->fl->C_EncryptInit(s, &m, h) != CKR_OK ||
                    tok->fl->C_Encrypt(s, pt, sizeof(pt), ct, &out) != CKR_OK)
                    a->errors++;
            } else {
                size_t out;
                if (p11_gcm_encrypt(tok, &key, iv, 12, NULL, 0, pt, sizeof(pt), ct, sizeof(ct),
                                    &out) != KMS_OK)
                    a->errors++;
            }
            a->ops++;
        }
    }
    if (raw)
        tok->fl->C_CloseSession(s);
    return NULL;
}

static double one_run(enum path path, int threads, long *errors)
{
    pthread_t th[8];
    struct thread_arg args[8];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){path, 0, 0};
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
        fprintf(stderr, "usage: bench_p11 [seconds-per-run] [runs<=50]\n");
        return 2;
    }
    const char *dir = getenv("CUSTOS_BENCH_HSM_DIR");
    if (!dir) {
        fprintf(stderr, "bench_p11: CUSTOS_BENCH_HSM_DIR not set (use make bench)\n");
        return 2;
    }
    char pin[600];
    snprintf(pin, sizeof(pin), "file:%s/pins/eu-west.pin", dir);
    /* SoftHSMv2 unless make bench names another module (the NSS softoken
     * rows: CUSTOS_BENCH_MODULE and its initialisation string). */
    const char *module = getenv("CUSTOS_BENCH_MODULE");
    const char *module_args = getenv("CUSTOS_BENCH_MODULE_ARGS");
    if (module == NULL || *module == '\0')
        module = "/usr/lib/softhsm/libsofthsm2.so";
    if (module_args != NULL && *module_args == '\0')
        module_args = NULL;
    struct p11_module *mod;
    if (p11_module_load_args(module, module_args, &mod) != KMS_OK) {
        fprintf(stderr, "bench_p11: %s\n", kms_err_detail());
        return 1;
    }
    struct p11_token_config cfg = {"eu-west", "custos-eu-west", pin, 0};
    if (p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK ||
        p11_key_id_new(tok, &key) != KMS_OK ||
        p11_key_generate(tok, P11_KEY_AES_ENCRYPT, 0, &key, "custos:bench") != KMS_OK) {
        fprintf(stderr, "bench_p11: %s\n", kms_err_detail());
        return 1;
    }

    printf("AES-256-GCM encrypt, 256 B, token key, %s; %d runs x %.1f s each\n",
           strstr(module, "softokn") != NULL ? "NSS softoken" : "SoftHSMv2", runs, run_seconds);
    printf("%-10s %-8s %12s %24s %8s\n", "path", "threads", "median op/s", "min-max", "ratio");
    long errors = 0;
    for (int threads = 1; threads <= 2; threads++) {
        static const enum path order[] = {RAW, LAYER, RAW_SESSION_KEY};
        static const char *const names[] = {"layer", "raw", "raw-sesobj"};
        double raw_med = 0;
        for (size_t k = 0; k < 3; k++) {
            enum path path = order[k];
            double r[50];
            /* Interleave is not needed: runs of one kind back to back keep
             * the token's caches in the same state for each. */
            for (int i = 0; i < runs; i++)
                r[i] = one_run(path, threads, &errors);
            qsort(r, (size_t)runs, sizeof(double), cmp_double);
            double med = r[runs / 2];
            if (path == RAW)
                raw_med = med;
            char range[64];
            snprintf(range, sizeof(range), "%.0f-%.0f", r[0], r[runs - 1]);
            printf("%-10s %-8d %12.0f %24s %8.2f\n", names[path], threads, med, range,
                   med / raw_med);
        }
    }
    printf("errors: %ld\n", errors);
    p11_key_destroy(tok, &key);
    p11_token_free(tok);
    p11_module_free(mod);
    return errors == 0 ? 0 : 1;
}
