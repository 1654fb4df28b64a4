/*
 * p11_cache.c - CKA_ID x class x key type -> object handle, so that the
 * request path never calls C_FindObjects (which costs time linear in the
 * token's object count). Open addressing with linear probing and
 * backward-shift deletion; ids are random, so their first bytes are already
 * a good hash.
 *
 * The hash is of the id alone: the few objects that share an id (a pair's
 * halves, a metadata version's AES and HMAC keys) share a home slot, so all
 * of them lie in the probe run that starts there, and forgetting an id is a
 * scan of that run rather than a guess at which classes and types it had.
 */
#include <stdlib.h>
#include <string.h>

#include "p11_internal.h"

#define CACHE_INITIAL 256

static size_t slot_of(const struct p11_handle_cache *c, const uint8_t *id)
{
    uint64_t h;
    memcpy(&h, id, sizeof(h));
    return (size_t)(h * 0x9e3779b97f4a7c15ULL >> 32) & (c->cap - 1);
}

static bool same(const struct p11_handle_entry *e, const uint8_t *id, CK_OBJECT_CLASS cls,
                 CK_KEY_TYPE type)
{
    return e->cls == cls && e->type == type && memcmp(e->id, id, P11_KEY_ID_LEN) == 0;
}

kms_err p11_cache_init(struct p11_handle_cache *c)
{
    memset(c, 0, sizeof(*c));
    c->slots = calloc(CACHE_INITIAL, sizeof(*c->slots));
    KMS_ENSURE(c->slots != NULL, KMS_ERR_NOMEM, "out of memory");
    c->cap = CACHE_INITIAL;
    if (pthread_rwlock_init(&c->lock, NULL) != 0) {
        free(c->slots);
        c->slots = NULL;
        return kms_err_set(KMS_ERR_INTERNAL, "pthread_rwlock_init failed");
    }
    return KMS_OK;
}

void p11_cache_cleanup(struct p11_handle_cache *c)
{
    if (c->slots == NULL)
        return;
    pthread_rwlock_destroy(&c->lock);
    free(c->slots);
    c->slots = NULL;
}

/* Caller holds the lock. any_kind: match the id alone. */
static struct p11_handle_entry *find(const struct p11_handle_cache *c, const uint8_t *id,
                                     CK_OBJECT_CLASS cls, CK_KEY_TYPE type, bool any_kind)
{
    for (size_t i = slot_of(c, id);; i = (i + 1) & (c->cap - 1)) {
        struct p11_handle_entry *e = &c->slots[i];
        if (!e->used)
            return NULL;
        if (any_kind ? memcmp(e->id, id, P11_KEY_ID_LEN) == 0 : same(e, id, cls, type))
            return e;
    }
}

bool p11_cache_get(struct p11_handle_cache *c, const uint8_t *id, CK_OBJECT_CLASS cls,
                   CK_KEY_TYPE type, CK_OBJECT_HANDLE *out)
{
    pthread_rwlock_rdlock(&c->lock);
    const struct p11_handle_entry *e = find(c, id, cls, type, false);
    if (e)
        *out = e->handle;
    pthread_rwlock_unlock(&c->lock);
    return e != NULL;
}

/* Caller holds the write lock; the table has room. */
static void insert(struct p11_handle_cache *c, const uint8_t *id, CK_OBJECT_CLASS cls,
                   CK_KEY_TYPE type, CK_OBJECT_HANDLE h)
{
    size_t i = slot_of(c, id);
    while (c->slots[i].used) {
        if (same(&c->slots[i], id, cls, type)) {
            c->slots[i].handle = h;
            return;
        }
        i = (i + 1) & (c->cap - 1);
    }
    struct p11_handle_entry *e = &c->slots[i];
    memcpy(e->id, id, P11_KEY_ID_LEN);
    e->cls = cls;
    e->type = type;
    e->handle = h;
    e->used = true;
    c->count++;
}

static void grow(struct p11_handle_cache *c)
{
    size_t new_cap = c->cap * 2;
    struct p11_handle_entry *ns = calloc(new_cap, sizeof(*ns));
    if (ns == NULL)
        return; /* a full-ish table still works, only slower; and put() checks */
    struct p11_handle_entry *old = c->slots;
    size_t old_cap = c->cap;
    c->slots = ns;
    c->cap = new_cap;
    c->count = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used)
            insert(c, old[i].id, old[i].cls, old[i].type, old[i].handle);
    free(old);
}

void p11_cache_put(struct p11_handle_cache *c, const uint8_t *id, CK_OBJECT_CLASS cls,
                   CK_KEY_TYPE type, CK_OBJECT_HANDLE h)
{
    pthread_rwlock_wrlock(&c->lock);
    if ((c->count + 1) * 4 > c->cap * 3)
        grow(c);
    /* If growing failed and the table is nearly full, skip caching: a miss
     * costs a C_FindObjects, a full table would loop forever. */
    if (c->count + 1 < c->cap)
        insert(c, id, cls, type, h);
    pthread_rwlock_unlock(&c->lock);
}

/* Remove entry at i and shift the rest of its probe run back, so lookups
 * never stop early at a hole. */
static void remove_at(struct p11_handle_cache *c, size_t i)
{
    size_t mask = c->cap - 1;
    c->slots[i].used = false;
    c->count--;
    for (size_t j = (i + 1) & mask; c->slots[j].used; j = (j + 1) & mask) {
        size_t home = slot_of(c, c->slots[j].id);
        /* Move j into the hole at i if its home is not in (i, j]. */
        bool between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            c->slots[i] = c->slots[j];
            c->slots[j].used = false;
            i = j;
        }
    }
}

void p11_cache_forget(struct p11_handle_cache *c, const uint8_t *id)
{
    pthread_rwlock_wrlock(&c->lock);
    /* Every entry of the id sits in the run from its home slot; removing one
     * shifts the run back, so search again from the start each time. */
    struct p11_handle_entry *e;
    while ((e = find(c, id, 0, 0, true)) != NULL)
        remove_at(c, (size_t)(e - c->slots));
    pthread_rwlock_unlock(&c->lock);
}

void p11_cache_clear(struct p11_handle_cache *c)
{
    pthread_rwlock_wrlock(&c->lock);
    memset(c->slots, 0, c->cap * sizeof(*c->slots));
    c->count = 0;
    pthread_rwlock_unlock(&c->lock);
}
