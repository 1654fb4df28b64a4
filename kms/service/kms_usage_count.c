/*
 * kms_usage_count.c - GCM encryption counts per key version (kms_usage_count.h).
 */
#include "kms_usage_count.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_store.h"

#define USAGE_STRIPES 64
#define USAGE_BUCKETS 256 /* per stripe */

struct entry {
    struct entry *next;
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    uint64_t used;     /* counted; starts at the store's value on first touch */
    uint64_t reserved; /* the store's value as this process last raised it */
    uint64_t mine;     /* part of `reserved` this process reserved itself */
    bool rotation_asked;
};

struct stripe {
    pthread_mutex_t lock;
    struct entry *buckets[USAGE_BUCKETS];
};

struct kms_usage {
    struct kms_store *store;
    struct kms_usage_config cfg;
    struct stripe stripes[USAGE_STRIPES];
    atomic_uint_fast64_t encryptions, reservations, refused, max_count;
};

/* Automatic rotations by reason (usage, period): process-wide counters. */
static atomic_uint_fast64_t auto_rotations[2];

static uint32_t hash(const char *key_id, uint32_t version)
{
    uint32_t h = 2166136261u;
    for (const char *p = key_id; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ version) * 16777619u;
    return h;
}

kms_err kms_usage_new(struct kms_store *store, const struct kms_usage_config *cfg,
                      struct kms_usage **out)
{
    *out = NULL;
    KMS_ENSURE(store != NULL && cfg != NULL, KMS_ERR_USAGE, "usage: NULL argument");
    KMS_ENSURE(cfg->block >= 1 && cfg->limit >= 1 && cfg->rotate_at >= 1 &&
                   cfg->rotate_at <= cfg->limit,
               KMS_ERR_INVALID_ARGUMENT, "usage: need 1 <= rotate_at <= limit and block >= 1");
    struct kms_usage *u = calloc(1, sizeof(*u));
    KMS_ENSURE(u != NULL, KMS_ERR_NOMEM, "out of memory");
    u->store = store;
    u->cfg = *cfg;
    for (size_t i = 0; i < USAGE_STRIPES; i++)
        pthread_mutex_init(&u->stripes[i].lock, NULL);
    *out = u;
    return KMS_OK;
}

static void release_all(struct kms_usage *u, bool give_back)
{
    for (size_t i = 0; i < USAGE_STRIPES; i++) {
        struct stripe *s = &u->stripes[i];
        for (size_t b = 0; b < USAGE_BUCKETS; b++) {
            struct entry *e = s->buckets[b];
            while (e) {
                struct entry *next = e->next;
                /* Only what this process reserved and did not use: another
                 * node's reservations are not ours to give back. */
                uint64_t unused = e->reserved - e->used;
                if (unused > e->mine)
                    unused = e->mine;
                if (give_back && unused > 0 &&
                    kms_store_usage_release(u->store, e->key_id, e->version, unused) != KMS_OK)
                    kms_log_warn("usage", "key %s v%u: %llu unused encryptions not given back "
                                 "(the count stays over): %s", e->key_id, e->version,
                                 (unsigned long long)unused, kms_err_detail());
                free(e);
                e = next;
            }
            s->buckets[b] = NULL;
        }
        pthread_mutex_destroy(&s->lock);
    }
    free(u);
}

void kms_usage_free(struct kms_usage *u)
{
    if (u != NULL)
        release_all(u, true);
}

void kms_usage_abandon(struct kms_usage *u)
{
    if (u != NULL)
        release_all(u, false);
}

/* The entry of (key_id, version), loaded from the store on first use.
 * Stripe lock held. */
static kms_err entry_get(struct kms_usage *u, struct stripe *s, uint32_t h, const char *key_id,
                         uint32_t version, struct entry **out)
{
    struct entry **head = &s->buckets[(h / USAGE_STRIPES) % USAGE_BUCKETS];
    for (struct entry *e = *head; e; e = e->next)
        if (e->version == version && strcmp(e->key_id, key_id) == 0) {
            *out = e;
            return KMS_OK;
        }
    uint64_t stored = 0;
    KMS_GUARD(kms_store_usage_get(u->store, key_id, version, &stored));
    struct entry *e = calloc(1, sizeof(*e));
    KMS_ENSURE(e != NULL, KMS_ERR_NOMEM, "out of memory");
    snprintf(e->key_id, sizeof(e->key_id), "%s", key_id);
    e->version = version;
    /* Whatever was reserved before (an earlier run, another node) may have
     * been used: count it all. */
    e->used = e->reserved = stored;
    e->next = *head;
    *head = e;
    *out = e;
    return KMS_OK;
}

static void stat_max(atomic_uint_fast64_t *m, uint64_t v)
{
    uint_fast64_t cur = atomic_load_explicit(m, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(m, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed))
        ;
}

kms_err kms_usage_take(struct kms_usage *u, const char *key_id, uint32_t version, uint64_t n,
                       bool *out_rotate)
{
    *out_rotate = false;
    KMS_ENSURE(u != NULL && key_id != NULL, KMS_ERR_USAGE, "usage: NULL argument");
    if (n == 0)
        return KMS_OK;
    uint32_t h = hash(key_id, version);
    struct stripe *s = &u->stripes[h % USAGE_STRIPES];
    kms_err rc = KMS_OK;
    pthread_mutex_lock(&s->lock);
    struct entry *e = NULL;
    KMS_GUARD_GOTO(entry_get(u, s, h, key_id, version, &e), done);
    if (n > u->cfg.limit) {
        /* No version could ever take this request: rotating would not help. */
        atomic_fetch_add_explicit(&u->refused, n, memory_order_relaxed);
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                         "this request needs %llu AES-GCM encryptions, more than a key "
                         "version's limit of %llu; send fewer fields per request",
                         (unsigned long long)n, (unsigned long long)u->cfg.limit);
        goto done;
    }
    if (e->used > u->cfg.limit - n) {
        atomic_fetch_add_explicit(&u->refused, n, memory_order_relaxed);
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                         "key version %u has reached its limit of %llu AES-GCM encryptions "
                         "(random IVs; %llu left, this request needs %llu); rotate the key "
                         "(RotateKey) and encrypt again",
                         version, (unsigned long long)u->cfg.limit,
                         (unsigned long long)(u->cfg.limit - e->used), (unsigned long long)n);
        goto done;
    }
    if (e->used + n > e->reserved) {
        /* Reserve before use: the store's count always covers what was
         * encrypted. At least a block, never past the limit. */
        uint64_t want = e->used + n - e->reserved;
        if (want < u->cfg.block)
            want = u->cfg.block;
        if (want > u->cfg.limit - e->reserved && e->reserved < u->cfg.limit)
            want = u->cfg.limit - e->reserved;
        uint64_t total = 0;
        KMS_GUARD_GOTO(kms_store_usage_reserve(u->store, key_id, version, want, &total), done);
        atomic_fetch_add_explicit(&u->reservations, 1, memory_order_relaxed);
        /* Another node may have reserved meanwhile: its share counts as
         * used too, for this process cannot know otherwise. */
        if (total - want > e->reserved)
            e->used += total - want - e->reserved;
        e->reserved = total;
        e->mine += want;
        if (e->used > u->cfg.limit - n || e->used + n > e->reserved) {
            atomic_fetch_add_explicit(&u->refused, n, memory_order_relaxed);
            rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                             "key version %u has reached its limit of %llu AES-GCM encryptions "
                             "(random IVs); rotate the key (RotateKey) and encrypt again",
                             version, (unsigned long long)u->cfg.limit);
            goto done;
        }
    }
    e->used += n;
    atomic_fetch_add_explicit(&u->encryptions, n, memory_order_relaxed);
    stat_max(&u->max_count, e->used);
    if (e->used >= u->cfg.rotate_at && !e->rotation_asked) {
        e->rotation_asked = true;
        *out_rotate = true;
    }
done:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

kms_err kms_usage_count(struct kms_usage *u, const char *key_id, uint32_t version,
                        uint64_t *out)
{
    KMS_ENSURE(u != NULL && key_id != NULL && out != NULL, KMS_ERR_USAGE,
               "usage: NULL argument");
    uint32_t h = hash(key_id, version);
    struct stripe *s = &u->stripes[h % USAGE_STRIPES];
    bool found = false;
    uint64_t reserved = 0;
    pthread_mutex_lock(&s->lock);
    for (struct entry *e = s->buckets[(h / USAGE_STRIPES) % USAGE_BUCKETS]; e; e = e->next)
        if (e->version == version && strcmp(e->key_id, key_id) == 0) {
            *out = e->used;
            reserved = e->reserved;
            found = true;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    if (found && !kms_store_is_pg(u->store))
        return KMS_OK;
    uint64_t stored = 0;
    KMS_GUARD(kms_store_usage_get(u->store, key_id, version, &stored));
    /* Several nodes (a shared store): what others reserved since this
     * process's last reservation counts as used, as kms_usage_take
     * counts it; otherwise a node would report only its own share. */
    if (!found)
        *out = stored;
    else if (stored > reserved)
        *out += stored - reserved;
    return KMS_OK;
}

void kms_usage_stats(struct kms_usage *u, struct kms_usage_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (u == NULL)
        return;
    out->encryptions = atomic_load_explicit(&u->encryptions, memory_order_relaxed);
    out->reservations = atomic_load_explicit(&u->reservations, memory_order_relaxed);
    out->refused = atomic_load_explicit(&u->refused, memory_order_relaxed);
    out->max_count = atomic_load_explicit(&u->max_count, memory_order_relaxed);
    out->rotate_at = u->cfg.rotate_at;
    out->limit = u->cfg.limit;
}

void kms_usage_metrics(struct kms_usage *u, FILE *f)
{
    struct kms_usage_stats st;
    kms_usage_stats(u, &st);
    kms_metrics_family(f, "custos_gcm_encryptions_total", "counter",
                       "AES-GCM encryptions counted against key versions' limits since start.");
    fprintf(f, "custos_gcm_encryptions_total %llu\n", (unsigned long long)st.encryptions);
    kms_metrics_family(f, "custos_gcm_reservations_total", "counter",
                       "Store commits reserving blocks of encryptions since start.");
    fprintf(f, "custos_gcm_reservations_total %llu\n", (unsigned long long)st.reservations);
    kms_metrics_family(f, "custos_gcm_limit_refused_total", "counter",
                       "Encryptions refused because their key version reached the limit.");
    fprintf(f, "custos_gcm_limit_refused_total %llu\n", (unsigned long long)st.refused);
    kms_metrics_family(f, "custos_key_version_encryptions_max", "gauge",
                       "Highest encryption count of any key version this process counted; "
                       "compare with custos_key_version_encryptions_limit.");
    fprintf(f, "custos_key_version_encryptions_max %llu\n", (unsigned long long)st.max_count);
    kms_metrics_family(f, "custos_key_version_encryptions_limit", "gauge",
                       "Configured encryptions per key version: automatic rotation and refusal.");
    fprintf(f, "custos_key_version_encryptions_limit{kind=\"rotate_at\"} %llu\n",
            (unsigned long long)st.rotate_at);
    fprintf(f, "custos_key_version_encryptions_limit{kind=\"limit\"} %llu\n",
            (unsigned long long)st.limit);
    kms_metrics_family(f, "custos_key_rotations_automatic_total", "counter",
                       "Rotations the system made on its own, by reason, since start.");
    fprintf(f, "custos_key_rotations_automatic_total{reason=\"usage\"} %llu\n",
            (unsigned long long)atomic_load(&auto_rotations[0]));
    fprintf(f, "custos_key_rotations_automatic_total{reason=\"period\"} %llu\n",
            (unsigned long long)atomic_load(&auto_rotations[1]));
}

void kms_usage_rotated(bool period)
{
    atomic_fetch_add(&auto_rotations[period ? 1 : 0], 1);
}
