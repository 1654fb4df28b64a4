/*
 * kms_keycache.c - see kms_keycache.h. Chained hash table keyed by key id;
 * when it holds max_entries it is emptied (keys are re-read on demand), which
 * keeps memory bounded without an eviction list on the hot path.
 */
#include "kms_keycache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUCKETS 16384
#define MAX_VERSIONS 64 /* more than this are read from the store each time */

struct entry {
    struct entry *next;
    int64_t loaded_ms;
    struct kms_key_record key;
    struct kms_version_record *versions;
    size_t n_versions;
};

struct kms_keycache {
    pthread_rwlock_t lock;
    struct entry *buckets[BUCKETS];
    size_t count, max;
    unsigned ttl_ms;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t bucket_of(const char *key_id)
{
    /* Key ids are random hex: the first 8 characters are a fine hash. */
    size_t h = 0;
    for (int i = 0; i < 8 && key_id[i]; i++)
        h = h * 16 + (size_t)(key_id[i] <= '9' ? key_id[i] - '0' : key_id[i] - 'a' + 10);
    return h % BUCKETS;
}

kms_err kms_keycache_new(size_t max_entries, unsigned ttl_ms, struct kms_keycache **out)
{
    struct kms_keycache *c = calloc(1, sizeof(*c));
    KMS_ENSURE(c != NULL, KMS_ERR_NOMEM, "out of memory");
    pthread_rwlock_init(&c->lock, NULL);
    c->max = max_entries ? max_entries : 100000;
    c->ttl_ms = ttl_ms;
    *out = c;
    return KMS_OK;
}

static void entry_free(struct entry *e)
{
    free(e->versions);
    free(e);
}

static void clear_locked(struct kms_keycache *c)
{
    for (size_t i = 0; i < BUCKETS; i++) {
        while (c->buckets[i]) {
            struct entry *e = c->buckets[i];
            c->buckets[i] = e->next;
            entry_free(e);
        }
    }
    c->count = 0;
}

void kms_keycache_free(struct kms_keycache *c)
{
    if (c == NULL)
        return;
    clear_locked(c);
    pthread_rwlock_destroy(&c->lock);
    free(c);
}

/* Caller holds the lock. */
static struct entry *find(struct kms_keycache *c, const char *key_id)
{
    for (struct entry *e = c->buckets[bucket_of(key_id)]; e; e = e->next)
        if (strcmp(e->key.key_id, key_id) == 0)
            return e;
    return NULL;
}

static void unlink_locked(struct kms_keycache *c, const char *key_id)
{
    struct entry **pp = &c->buckets[bucket_of(key_id)];
    while (*pp) {
        if (strcmp((*pp)->key.key_id, key_id) == 0) {
            struct entry *e = *pp;
            *pp = e->next;
            entry_free(e);
            c->count--;
            return;
        }
        pp = &(*pp)->next;
    }
}

void kms_keycache_invalidate(struct kms_keycache *c, const char *key_id)
{
    pthread_rwlock_wrlock(&c->lock);
    unlink_locked(c, key_id);
    pthread_rwlock_unlock(&c->lock);
}

/* Load key_id from the store into the cache (replacing any entry). */
static kms_err load(struct kms_keycache *c, struct kms_store *st, const char *key_id)
{
    struct entry *e = calloc(1, sizeof(*e));
    KMS_ENSURE(e != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = kms_store_key_get(st, key_id, &e->key);
    if (rc == KMS_OK)
        rc = kms_store_versions_list(st, key_id, &e->versions, &e->n_versions);
    if (rc != KMS_OK) {
        entry_free(e);
        return rc;
    }
    if (e->n_versions > MAX_VERSIONS) {
        /* Keep the newest ones; older versions are looked up directly. */
        memmove(e->versions, e->versions + (e->n_versions - MAX_VERSIONS),
                MAX_VERSIONS * sizeof(*e->versions));
        e->n_versions = MAX_VERSIONS;
    }
    e->loaded_ms = now_ms();
    pthread_rwlock_wrlock(&c->lock);
    unlink_locked(c, key_id);
    if (c->count >= c->max)
        clear_locked(c);
    size_t b = bucket_of(key_id);
    e->next = c->buckets[b];
    c->buckets[b] = e;
    c->count++;
    pthread_rwlock_unlock(&c->lock);
    return KMS_OK;
}

kms_err kms_keycache_key(struct kms_keycache *c, struct kms_store *st, const char *key_id,
                         struct kms_key_record *out)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_rwlock_rdlock(&c->lock);
        struct entry *e = find(c, key_id);
        bool fresh = e && now_ms() - e->loaded_ms < (int64_t)c->ttl_ms;
        if (fresh)
            *out = e->key;
        pthread_rwlock_unlock(&c->lock);
        if (fresh)
            return KMS_OK;
        if (attempt == 0)
            KMS_GUARD(load(c, st, key_id));
    }
    /* Loaded but already expired (ttl 0): answer from the store. */
    return kms_store_key_get(st, key_id, out);
}

kms_err kms_keycache_version(struct kms_keycache *c, struct kms_store *st, const char *key_id,
                             uint32_t version, struct kms_version_record *out)
{
    pthread_rwlock_rdlock(&c->lock);
    struct entry *e = find(c, key_id);
    bool found = false;
    if (e && now_ms() - e->loaded_ms < (int64_t)c->ttl_ms)
        for (size_t i = 0; i < e->n_versions && !found; i++)
            if (e->versions[i].version == version) {
                *out = e->versions[i];
                found = true;
            }
    pthread_rwlock_unlock(&c->lock);
    /* Unknown here (a new version, an old one past MAX_VERSIONS, or a
     * version that does not exist): the store decides. */
    return found ? KMS_OK : kms_store_version_get(st, key_id, version, out);
}
