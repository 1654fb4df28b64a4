/*
 * kms_health.c - cached readiness.
 */
#include "kms_health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_log.h"
#include "kms_config.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "p11_token.h"

struct kms_health {
    struct kms_service *svc;
    uint64_t cache_ns;
    pthread_mutex_t check_lock; /* held while a deep check runs */
    atomic_bool ready;
    atomic_ulong checked_ns; /* monotonic time of the last check; 0: never */
};

kms_err kms_health_new(struct kms_service *svc, unsigned cache_ms, struct kms_health **out)
{
    struct kms_health *h = calloc(1, sizeof(*h));
    KMS_ENSURE(h != NULL, KMS_ERR_NOMEM, "out of memory");
    h->svc = svc;
    h->cache_ns = (uint64_t)cache_ms * 1000000u;
    pthread_mutex_init(&h->check_lock, NULL);
    *out = h;
    return KMS_OK;
}

void kms_health_free(struct kms_health *h)
{
    if (h == NULL)
        return;
    pthread_mutex_destroy(&h->check_lock);
    free(h);
}

bool kms_health_ready(struct kms_health *h)
{
    uint64_t now = kms_metrics_now_ns();
    uint64_t last = atomic_load(&h->checked_ns);
    if (last != 0 && now - last < h->cache_ns)
        return atomic_load(&h->ready);
    /* The first check ever is waited for; later ones are run by whoever
     * gets the lock while the rest take the previous answer. */
    if (last == 0)
        pthread_mutex_lock(&h->check_lock);
    else if (pthread_mutex_trylock(&h->check_lock) != 0)
        return atomic_load(&h->ready);
    if (atomic_load(&h->checked_ns) != last) { /* someone checked meanwhile */
        pthread_mutex_unlock(&h->check_lock);
        return atomic_load(&h->ready);
    }
    kms_err rc = kms_service_check(h->svc);
    bool ready = rc == KMS_OK;
    bool was = atomic_exchange(&h->ready, ready);
    if (ready != was || last == 0) {
        /* Not "ready ...": tests/e2e/lib.sh waits for kmsd's start-up line
         * by that prefix. */
        if (ready)
            kms_log_info("health", "readiness: ready");
        else
            kms_log_warn("health", "readiness: NOT ready: %s", kms_err_detail());
    }
    uint64_t done = kms_metrics_now_ns();
    atomic_store(&h->checked_ns, done ? done : 1);
    pthread_mutex_unlock(&h->check_lock);
    return ready;
}

int kms_health_region(struct kms_health *h, const char *region, char *why, size_t n)
{
    struct p11_token *tok = kms_service_token(h->svc, region);
    if (tok == NULL)
        return -1;
    const struct kms_config *cfg = kms_service_config(h->svc);
    if (kms_service_region_check(h->svc, region) != KMS_OK) {
        snprintf(why, n, "region %s: not served: its audit log failed the start-up check "
                 "(see the kmsd log)", region);
        return 0;
    }
    struct audit_log *log = kms_service_audit_log(h->svc, region);
    if (cfg->audit_enabled && log != NULL) {
        struct audit_log_stats st;
        audit_log_stats(log, &st);
        if (st.failed) {
            snprintf(why, n, "region %s: its audit log cannot be written", region);
            return 0;
        }
    }
    if (!p11_token_available(tok)) {
        snprintf(why, n, "region %s: its HSM token '%s' is unavailable", region,
                 p11_token_label(tok));
        return 0;
    }
    /* Capability detection: a token that cannot do AES-GCM serves nothing
     * (kmsctl hsm check prints the whole matrix row). */
    const char *lacks = p11_token_missing_core(tok);
    if (lacks != NULL) {
        snprintf(why, n, "region %s: its HSM token '%s' lacks %s", region, p11_token_label(tok),
                 lacks);
        return 0;
    }
    size_t missing = kms_service_missing_objects(h->svc, region);
    if (missing > 0) {
        snprintf(why, n, "region %s: %zu live key version(s) have no object in HSM token '%s' "
                 "(see the kmsd log)", region, missing, p11_token_label(tok));
        return 0;
    }
    return 1;
}

void kms_health_refused_regions(struct kms_health *h, char *buf, size_t n)
{
    const struct kms_config *cfg = kms_service_config(h->svc);
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < cfg->n_tokens && used < n; i++) {
        const char *region = cfg->tokens[i].region;
        struct p11_token *tok = kms_service_token(h->svc, region);
        int w;
        if (kms_service_region_check(h->svc, region) != KMS_OK)
            w = snprintf(buf + used, n - used,
                         "region %s: not served: its audit log failed the start-up check (see "
                         "the kmsd log)\n",
                         region);
        else if (tok != NULL && !p11_token_available(tok))
            /* The label is what the operator looks for in the HSM; it is in
             * the configuration, not a secret. */
            w = snprintf(buf + used, n - used,
                         "region %s: its HSM token '%s' is unavailable (re-probed on every "
                         "check; served again when it answers)\n",
                         region, p11_token_label(tok));
        else if (tok != NULL && p11_token_missing_core(tok) != NULL)
            w = snprintf(buf + used, n - used,
                         "region %s: its HSM token '%s' lacks %s (see kmsctl hsm check)\n", region,
                         p11_token_label(tok), p11_token_missing_core(tok));
        else if (tok != NULL && kms_service_missing_objects(h->svc, region) > 0)
            /* A count, never key ids: this answer is unauthenticated. */
            w = snprintf(buf + used, n - used,
                         "region %s: %zu live key version(s) have no object in HSM token '%s' "
                         "(see the kmsd log)\n",
                         region, kms_service_missing_objects(h->svc, region),
                         p11_token_label(tok));
        else
            continue;
        if (w < 0 || (size_t)w >= n - used) {
            buf[used] = '\0'; /* no half line */
            break;
        }
        used += (size_t)w;
    }
}
