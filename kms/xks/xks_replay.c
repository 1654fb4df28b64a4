/*
 * xks_replay.c - the seen-signature cache (xks_replay.h): per shard an
 * open-addressing table probed linearly over at most XKS_REPLAY_PROBE slots
 * from the signature's home slot. Signatures are HMAC-SHA256 outputs, so
 * their bytes are already uniform: the first 8 pick shard and slot, and 16
 * are kept (a false match between two live signatures is a 2^-128 event).
 */
#include "xks_replay.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    uint8_t sig[16];
    int64_t expires; /* 0: never used */
};

struct shard {
    pthread_mutex_t mu;
    struct entry *slots;
};

struct xks_replay {
    struct shard shards[XKS_REPLAY_SHARDS];
    unsigned per_shard; /* a power of two */
    time_t started;     /* when this kmsd's cache began: it knows nothing older */
};

kms_err xks_replay_new(unsigned slots, struct xks_replay **out)
{
    *out = NULL;
    KMS_ENSURE(slots >= XKS_REPLAY_SHARDS * XKS_REPLAY_PROBE && (slots & (slots - 1)) == 0,
               KMS_ERR_INTERNAL, "replay cache: %u slots (want a power of two >= %d)", slots,
               XKS_REPLAY_SHARDS * XKS_REPLAY_PROBE);
    struct xks_replay *r = calloc(1, sizeof(*r));
    KMS_ENSURE(r != NULL, KMS_ERR_NOMEM, "out of memory");
    r->per_shard = slots / XKS_REPLAY_SHARDS;
    r->started = time(NULL);
    for (size_t i = 0; i < XKS_REPLAY_SHARDS; i++) {
        pthread_mutex_init(&r->shards[i].mu, NULL);
        r->shards[i].slots = calloc(r->per_shard, sizeof(struct entry));
        if (r->shards[i].slots == NULL) {
            xks_replay_free(r);
            return kms_err_set(KMS_ERR_NOMEM, "out of memory");
        }
    }
    *out = r;
    return KMS_OK;
}

kms_err xks_replay_check_time(const struct xks_replay *r, time_t signed_at)
{
    /* Strictly before: the kmsd before this one had stopped before this one
     * began, so what it served in this cache's first second it served
     * before the second began only if restarted within one second; refusing
     * that second too would refuse every fresh Decrypt of it. */
    if (signed_at < r->started)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED,
                           "signature: dated before this kmsd started (a replay cannot be ruled "
                           "out)");
    return KMS_OK;
}

time_t xks_replay_started(const struct xks_replay *r)
{
    return r->started;
}

void xks_replay_free(struct xks_replay *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < XKS_REPLAY_SHARDS; i++) {
        pthread_mutex_destroy(&r->shards[i].mu);
        free(r->shards[i].slots);
    }
    free(r);
}

kms_err xks_replay_check(struct xks_replay *r, const uint8_t sig[32], time_t expires,
                         time_t now)
{
    uint64_t h;
    memcpy(&h, sig, sizeof(h));
    struct shard *s = &r->shards[h % XKS_REPLAY_SHARDS];
    unsigned home = (unsigned)(h / XKS_REPLAY_SHARDS) & (r->per_shard - 1);
    struct entry *free_slot = NULL;
    kms_err rc = KMS_OK;
    pthread_mutex_lock(&s->mu);
    /* The whole window: a live copy may sit past a reusable slot. */
    for (unsigned i = 0; i < XKS_REPLAY_PROBE; i++) {
        struct entry *e = &s->slots[(home + i) & (r->per_shard - 1)];
        bool live = e->expires > (int64_t)now;
        if (live && memcmp(e->sig, sig + 8, sizeof(e->sig)) == 0) {
            rc = kms_err_set(KMS_ERR_UNAUTHENTICATED,
                             "signature: this signed request was already served (replay)");
            goto out;
        }
        if (!live && free_slot == NULL)
            free_slot = e;
    }
    if (free_slot == NULL) {
        rc = kms_err_set(KMS_ERR_RESOURCE_EXHAUSTED,
                         "too many decrypt requests to check for replays; retry");
        goto out;
    }
    memcpy(free_slot->sig, sig + 8, sizeof(free_slot->sig));
    free_slot->expires = (int64_t)expires;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}
