/*
 * bench_mkkeys.c - bulk-create keys for the scale benchmark, the way
 * CreateKey does (store row in CREATING, HSM object, activation), without
 * HTTP, from several threads.
 *
 *   bench_mkkeys STORE.db PIN_SOURCE TOKEN_LABEL COUNT THREADS OUT_IDS
 *
 * Keys belong to tenant "demo" in region eu-west; their ids are appended to
 * OUT_IDS, one per line. SOFTHSM2_CONF must name the installation's tokens.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kms_blob.h"
#include "kms_error.h"
#include "kms_store.h"
#include "p11_crypto.h"
#include "p11_key.h"
#include "p11_module.h"
#include "p11_token.h"

static struct kms_store *store;
static struct p11_token *tok;
static atomic_long remaining;
static atomic_long failures;
static atomic_long retries_left;
static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg)
{
    (void)arg;
    while (atomic_fetch_sub(&remaining, 1) > 0) {
        struct kms_key_record k;
        struct kms_version_record v;
        memset(&k, 0, sizeof(k));
        memset(&v, 0, sizeof(v));
        uint8_t raw[16];
        RAND_bytes(raw, sizeof(raw));
        kms_key_id_format(raw, k.key_id);
        strcpy(k.tenant, "demo");
        strcpy(k.region, "eu-west");
        snprintf(k.token, sizeof(k.token), "%s", p11_token_label(tok));
        strcpy(k.description, "bench");
        k.spec = KMS_KEY_SPEC_AES_256;
        k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
        k.origin = KMS_KEY_ORIGIN_HSM;
        k.state = KMS_KEY_CREATING;
        k.created_at = (int64_t)time(NULL);
        struct p11_key_id hid;
        char label[80];
        if (p11_key_id_new(tok, &hid) != KMS_OK)
            goto fail;
        memcpy(v.hsm_id, hid.b, 16);
        v.version = 1;
        v.state = KMS_VERSION_CREATING;
        v.created_at = k.created_at;
        snprintf(label, sizeof(label), "custos:key:%s:v1", k.key_id);
        if (kms_store_key_insert(store, &k, &v) != KMS_OK)
            goto fail;
        /* SoftHSMv2's file store now and then fails one of two concurrent
         * object creations with CKR_GENERAL_ERROR; p11_key_generate retries
         * that itself (docs/pkcs11.md). Should it still fail: drop the row
         * and make the key again under fresh ids, within a budget. */
        if (p11_key_generate(tok, P11_KEY_AES_ENCRYPT, 0, &hid, label) != KMS_OK) {
            kms_store_creating_discard(store, k.key_id, 1);
            if (atomic_fetch_sub(&retries_left, 1) <= 0)
                goto fail;
            atomic_fetch_add(&remaining, 1);
            continue;
        }
        if (kms_store_version_activate(store, k.key_id, 1) != KMS_OK)
            goto fail;
        pthread_mutex_lock(&out_lock);
        fprintf(out, "%s\n", k.key_id);
        pthread_mutex_unlock(&out_lock);
        continue;
    fail:
        fprintf(stderr, "bench_mkkeys: %s\n", kms_err_detail());
        atomic_fetch_add(&failures, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: bench_mkkeys STORE PIN_SOURCE TOKEN COUNT THREADS OUT_IDS\n");
        return 2;
    }
    long count = atol(argv[4]);
    int threads = atoi(argv[5]);
    if (count < 1 || threads < 1 || threads > 16)
        return 2;
    struct p11_module *mod = NULL;
    struct p11_token_config cfg = {"eu-west", argv[3], argv[2], (size_t)threads + 1};
    if (p11_module_load("/usr/lib/softhsm/libsofthsm2.so", &mod) != KMS_OK ||
        p11_tokens_open(mod, &cfg, 1, &tok) != KMS_OK || kms_store_open(argv[1], &store) != KMS_OK) {
        fprintf(stderr, "bench_mkkeys: %s\n", kms_err_detail());
        return 1;
    }
    out = fopen(argv[6], "a");
    if (out == NULL)
        return 1;
    atomic_store(&remaining, count);
    atomic_store(&retries_left, count / 50 + 16);
    pthread_t th[16];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    fclose(out);
    kms_store_free(store);
    p11_token_free(tok);
    p11_module_free(mod);
    return atomic_load(&failures) == 0 ? 0 : 1;
}
