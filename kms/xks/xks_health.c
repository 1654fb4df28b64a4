/*
 * xks_health.c - the XKS deep health check (xks_health.h).
 */
#include "xks_health.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#include <openssl/crypto.h>

#include "kms_log.h"
#include "p11_crypto.h"
#include "p11_key.h"
#include "p11_token.h"

struct xks_health {
    struct kms_service *svc;
    pthread_mutex_t mu;   /* guards last, when, have */
    pthread_mutex_t run;  /* held by the one caller running a check */
    struct xks_health_result last;
    uint64_t when_ns; /* CLOCK_MONOTONIC of the last check */
    uint64_t max_age_ns;
    bool have;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

kms_err xks_health_new(struct kms_service *svc, unsigned max_age_ms, struct xks_health **out)
{
    struct xks_health *h = calloc(1, sizeof(*h));
    KMS_ENSURE(h != NULL, KMS_ERR_NOMEM, "out of memory");
    h->svc = svc;
    if (max_age_ms > XKS_HEALTH_MAX_AGE_MS)
        max_age_ms = XKS_HEALTH_MAX_AGE_MS;
    h->max_age_ns = (uint64_t)max_age_ms * 1000000u;
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->run, NULL);
    *out = h;
    return KMS_OK;
}

void xks_health_free(struct xks_health *h)
{
    if (h == NULL)
        return;
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->run);
    free(h);
}

kms_err xks_health_check_token(struct p11_token *tok)
{
    static const uint8_t aad[] = "custos xks health check";
    uint8_t pt[32], iv[12], ct[48], back[48];
    size_t ct_len = 0, back_len = 0;
    struct p11_key_id id;
    KMS_GUARD(p11_random(tok, pt, sizeof(pt)));
    KMS_GUARD(p11_random(tok, iv, sizeof(iv)));
    KMS_GUARD(p11_key_id_new(tok, &id));
    /* A session object with no tenant and no store row: never a key of
     * anyone's, and gone with its session even if kmsd dies here. */
    KMS_GUARD(p11_key_generate(tok, P11_KEY_AES_ENCRYPT, P11_KEY_EPHEMERAL, &id,
                                "custos xks health test key"));
    kms_err rc = p11_gcm_encrypt(tok, &id, iv, sizeof(iv), aad, sizeof(aad), pt, sizeof(pt), ct,
                                 sizeof(ct), &ct_len);
    if (rc == KMS_OK)
        rc = p11_gcm_decrypt(tok, &id, iv, sizeof(iv), aad, sizeof(aad), ct, ct_len, back,
                             sizeof(back), &back_len);
    if (rc == KMS_OK && (back_len != sizeof(pt) || CRYPTO_memcmp(back, pt, sizeof(pt)) != 0))
        rc = kms_err_set(KMS_ERR_HSM, "the test key's round trip gave other bytes");
    p11_key_destroy(tok, &id);
    OPENSSL_cleanse(pt, sizeof(pt));
    OPENSSL_cleanse(back, sizeof(back));
    return rc;
}

const char *xks_token_health_name(enum xks_token_health s)
{
    return s == XKS_TOKEN_ACTIVE ? "ACTIVE" : s == XKS_TOKEN_DEGRADED ? "DEGRADED" : "UNAVAILABLE";
}

static void run_check(struct xks_health *h, struct xks_health_result *r)
{
    memset(r, 0, sizeof(*r));
    size_t n = kms_service_n_tokens(h->svc);
    for (size_t i = 0; i < n && r->n < XKS_HEALTH_MAX_TOKENS; i++) {
        struct p11_token *t = kms_service_token_at(h->svc, i);
        size_t k = r->n++;
        snprintf(r->id[k], sizeof(r->id[k]), "%s/%s", p11_token_region(t), p11_token_label(t));
        snprintf(r->model[k], sizeof(r->model[k]), "PKCS#11 token, serial %s",
                 p11_token_serial(t));
        uint64_t t0 = now_ns();
        kms_err rc = p11_token_available(t) ? xks_health_check_token(t)
                                            : kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "unavailable");
        uint64_t ms = (now_ns() - t0) / 1000000u;
        if (rc != KMS_OK) {
            r->status[k] = XKS_TOKEN_UNAVAILABLE;
            kms_log_warn("xks", "health: token %s failed its test key round trip: %s",
                         r->id[k], kms_err_detail());
        } else if (ms >= XKS_HEALTH_SLOW_MS) {
            r->status[k] = XKS_TOKEN_DEGRADED;
            r->active++;
            r->degraded++;
            kms_log_warn("xks", "health: token %s is slow: its test key round trip took %llu ms",
                         r->id[k], (unsigned long long)ms);
        } else {
            r->status[k] = XKS_TOKEN_ACTIVE;
            r->active++;
        }
    }
}

void xks_health_get(struct xks_health *h, struct xks_health_result *out)
{
    uint64_t now = now_ns();
    pthread_mutex_lock(&h->mu);
    bool fresh = h->have && now - h->when_ns < h->max_age_ns;
    bool have = h->have;
    if (fresh || have)
        *out = h->last;
    pthread_mutex_unlock(&h->mu);
    if (fresh)
        return;
    /* Stale: one caller refreshes; the others answer the previous result
     * (at most max_age plus one check old), or wait for the
     * first result there is. */
    if (have && pthread_mutex_trylock(&h->run) != 0)
        return;
    if (!have)
        pthread_mutex_lock(&h->run);
    pthread_mutex_lock(&h->mu);
    bool done = h->have && now_ns() - h->when_ns < h->max_age_ns;
    if (done)
        *out = h->last;
    pthread_mutex_unlock(&h->mu);
    if (!done) {
        struct xks_health_result r;
        run_check(h, &r);
        pthread_mutex_lock(&h->mu);
        h->last = r;
        h->when_ns = now_ns();
        h->have = true;
        *out = r;
        pthread_mutex_unlock(&h->mu);
    }
    pthread_mutex_unlock(&h->run);
}
