/*
 * bench_fields_p11.c - one EncryptFields message of 8 fields (16-byte
 * values, a 2-pair context) through kms_field_seal and the pkcs11/ layer,
 * against a bare PKCS#11 loop making the same HSM calls (8 x C_Encrypt
 * for randomized fields; 8 x (C_Sign HMAC + C_Encrypt) for deterministic
 * ones) on its own session with handles looked up once, in the same
 * process, on the same token and key, at 1 and 2 threads.
 *
 *   bench_fields_p11 [seconds-per-run] [runs]      (defaults 2 and 3)
 *
 * Needs SOFTHSM2_CONF and CUSTOS_BENCH_HSM_DIR (made by bench_fields.sh).
 * Prints messages/s (8 fields each) as median with min-max, and the ratio
 * layer/raw. The layer column includes the encodings (IV input, AAD)
 * kms_field_seal builds around the HSM calls; the raw loop MACs and
 * encrypts inputs of the same sizes.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_blob.h"
#include "kms_error.h"
#include "kms_fields.h"
#include "p11_crypto.h"
#include "p11_internal.h"

#define FIELDS 8

static struct p11_token *tok;
static struct kms_field_key fkey;
static double run_seconds = 2.0;
static uint8_t ctx[KMS_CTX_ENCODED_MAX];
static size_t ctx_len;

struct thread_arg {
    bool raw, det;
    long msgs, errors;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *names[FIELDS] = {"to",     "from",   "rcs.session_id", "sent_at",
                                    "device", "thread", "subject",        "x"};

static void *worker(void *varg)
{
    struct thread_arg *a = varg;
    uint8_t value[16], blob[16 + KMS_FIELD_OVERHEAD], iv[12] = {0}, mac[32];
    uint8_t ivin[96], aad[96];
    memset(value, 0x41, sizeof(value));
    memset(ivin, 0x42, sizeof(ivin));
    memset(aad, 0x43, sizeof(aad));
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE ha = CK_INVALID_HANDLE, hm = CK_INVALID_HANDLE;
    if (a->raw &&
        (tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) !=
             CKR_OK ||
         p11_key_handle(tok, s, &fkey.hsm_id, CKO_SECRET_KEY, CKK_AES, &ha) != KMS_OK ||
         p11_key_handle(tok, s, &fkey.hsm_id, CKO_SECRET_KEY, CKK_GENERIC_SECRET, &hm) != KMS_OK)) {
        a->errors++;
        return NULL;
    }
    double end = now() + run_seconds;
    while (now() < end) {
        for (int rep = 0; rep < 8; rep++) {
            for (int f = 0; f < FIELDS; f++) {
                memcpy(value, &a->msgs, sizeof(a->msgs));
                value[15] = (uint8_t)f;
                if (a->raw) {
                    /* Sizes as kms_field_seal's: the IV input of a 16-byte
                     * value with a short name and this context is ~70
                     * bytes, the AAD ~50. */
                    if (a->det) {
                        CK_MECHANISM mm = {CKM_SHA256_HMAC, NULL, 0};
                        CK_ULONG ml = sizeof(mac);
                        if (tok->fl->C_SignInit(s, &mm, hm) != CKR_OK ||
                            tok->fl->C_Sign(s, ivin, 70, mac, &ml) != CKR_OK)
                            a->errors++;
                        memcpy(iv, mac, 12);
                    } else {
                        memcpy(iv, &a->msgs, sizeof(a->msgs));
                        iv[11] = (uint8_t)f;
                    }
                    CK_GCM_PARAMS p = {iv, 12, 96, aad, 50, 128};
                    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
                    CK_ULONG out = sizeof(blob);
                    if (tok->fl->C_EncryptInit(s, &m, ha) != CKR_OK ||
                        tok->fl->C_Encrypt(s, value, sizeof(value), blob, &out) != CKR_OK)
                        a->errors++;
                } else {
                    size_t out;
                    if (kms_field_seal(&fkey, a->det ? KMS_FIELD_DETERMINISTIC : KMS_FIELD_RANDOMIZED,
                                       names[f], strlen(names[f]), ctx, ctx_len, value,
                                       sizeof(value), blob, sizeof(blob), &out) != KMS_OK)
                        a->errors++;
                }
            }
            a->msgs++;
        }
    }
    if (a->raw)
        tok->fl->C_CloseSession(s);
    return NULL;
}

static double one_run(bool raw, bool det, int threads, long *errors)
{
    pthread_t th[8];
    struct thread_arg args[8];
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){raw, det, 0, 0};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    long msgs = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        msgs += args[i].msgs;
        *errors += args[i].errors;
    }
    return (double)msgs / (now() - t0);
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
    int runs = argc > 2 ? atoi(argv[2]) : 3;
    if (run_seconds <= 0 || runs < 1 || runs > 50) {
        fprintf(stderr, "usage: bench_fields_p11 [seconds-per-run] [runs<=50]\n");
        return 2;
    }
    const char *dir = getenv("CUSTOS_BENCH_HSM_DIR");
    if (!dir) {
        fprintf(stderr, "bench_fields_p11: CUSTOS_BENCH_HSM_DIR not set (use bench_fields.sh)\n");
        return 2;
    }
    char pin[600];
    snprintf(pin, sizeof(pin), "file:%s/pins/eu-west.pin", dir);
    struct p11_module *mod;
    if (p11_module_load("/usr/lib/softhsm/libsofthsm2.so", &mod) != KMS_OK) {
        fprintf(stderr, "bench_fields_p11: %s\n", kms_err_detail());
        return 1;
    }
    struct p11_token_config cfg = {"eu-west", "custos-eu-west", pin, 0};
    struct kms_ctx_pair pairs[] = {{"tenant", "demo"}, {"conversation", "c-1"}};
    if (p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK ||
        p11_key_id_new(tok, &fkey.hsm_id) != KMS_OK ||
        p11_key_generate(tok, P11_KEY_AES_ENCRYPT, 0, &fkey.hsm_id, "custos:bench") != KMS_OK ||
        p11_key_generate(tok, P11_KEY_HMAC_SHA256, 0, &fkey.hsm_id, "custos:bench") != KMS_OK ||
        kms_ctx_encode(pairs, 2, ctx, &ctx_len) != KMS_OK) {
        fprintf(stderr, "bench_fields_p11: %s\n", kms_err_detail());
        return 1;
    }
    fkey.tok = tok;
    fkey.version = 1;

    printf("EncryptFields core, 8 fields x 16 B per message, token keys, SoftHSMv2; "
           "%d runs x %.1f s each\n", runs, run_seconds);
    printf("%-14s %-6s %-8s %12s %20s %8s\n", "mode", "path", "threads", "median msg/s",
           "min-max", "ratio");
    long errors = 0;
    for (int det = 0; det <= 1; det++) {
        for (int threads = 1; threads <= 2; threads++) {
            double med[2];
            for (int raw = 1; raw >= 0; raw--) {
                double r[50];
                for (int i = 0; i < runs; i++)
                    r[i] = one_run(raw, det, threads, &errors);
                qsort(r, (size_t)runs, sizeof(double), cmp_double);
                med[raw] = r[runs / 2];
                char range[64];
                snprintf(range, sizeof(range), "%.0f-%.0f", r[0], r[runs - 1]);
                printf("%-14s %-6s %-8d %12.0f %20s %8.2f\n",
                       det ? "deterministic" : "randomized", raw ? "raw" : "layer", threads,
                       med[raw], range, raw ? 1.0 : med[0] / med[1]);
            }
        }
    }
    printf("errors: %ld\n", errors);
    p11_key_destroy(tok, &fkey.hsm_id);
    p11_token_free(tok);
    p11_module_free(mod);
    return errors == 0 ? 0 : 1;
}
