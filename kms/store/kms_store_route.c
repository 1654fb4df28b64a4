/*
 * kms_store_route.c - which database a store call runs on. A store has one
 * database (SQLite, or PostgreSQL for every region) or one PostgreSQL
 * database per region (kms_store_open_pg_regions): each region's rows live
 * in its own database and only there. With one database every route is
 * that database and nothing here costs anything.
 *
 * Calls that name a region go to it; calls that name a key id go where the
 * key is, found through a small cache (a key never changes region, so an
 * entry is never stale; a key that is gone is simply not found where the
 * entry points) and on a miss by asking each database; calls by another
 * unique id ask each database until one has the row; store-wide calls run
 * on every database.
 */
#include "kms_store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_log.h"

_Static_assert((STORE_KEYMAP_SLOTS & (STORE_KEYMAP_SLOTS - 1)) == 0,
               "STORE_KEYMAP_SLOTS must be a power of two");

kms_err store_db_ready(struct store_db *db, const char *op)
{
    if (atomic_load(&db->ready))
        return KMS_OK;
    struct store_conn *c = store_writer_take(db);
    kms_err rc = KMS_OK;
    if (!atomic_load(&db->ready)) {
        rc = store_db_pg_open(db);
        if (rc != KMS_OK) {
            char detail[512];
            snprintf(detail, sizeof(detail), "%s", kms_err_detail());
            /* A half-open connection is dropped; the next call tries again. */
            if (c->pg != NULL)
                PQfinish(c->pg);
            c->pg = NULL;
            c->pg_in_tx = false;
            kms_err_set(rc, "store: %s: region %s: %s", op, db->region, detail);
        }
    }
    store_conn_give(c);
    return rc;
}

kms_err store_route_region(struct kms_store *s, const char *region, struct store_db **out,
                           const char *op)
{
    *out = NULL;
    if (s->n == 1) {
        *out = s->db[0];
        return KMS_OK;
    }
    KMS_ENSURE(region != NULL, KMS_ERR_USAGE, "store: %s: NULL region", op);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->db[i]->region, region) == 0) {
            KMS_GUARD(store_db_ready(s->db[i], op));
            *out = s->db[i];
            return KMS_OK;
        }
    }
    /* Not echoed in full: the caller's region is bounded by kms_store.h
     * only for records the store has checked. */
    return kms_err_set(KMS_ERR_FAILED_PRECONDITION, "store: %s: no database holds region %.64s",
                       op, region);
}

/* Key ids are random hex: their first eight digits spread evenly. */
static size_t map_slot(const char *key_id)
{
    size_t h = 0;
    for (int i = 0; i < 8 && key_id[i] != '\0'; i++)
        h = h * 16 + (size_t)(key_id[i] <= '9' ? key_id[i] - '0' : key_id[i] - 'a' + 10);
    /* Mix in the tail too: tests (and nothing else) make ids that share
     * their first digits. */
    for (size_t i = 8; key_id[i] != '\0'; i++)
        h = h * 31 + (unsigned char)key_id[i];
    return h & (STORE_KEYMAP_SLOTS - 1);
}

void store_route_remember(struct kms_store *s, const char *key_id, const struct store_db *db)
{
    if (s->map == NULL)
        return;
    for (unsigned i = 0; i < s->n; i++) {
        if (s->db[i] != db)
            continue;
        pthread_mutex_lock(&s->map_mu);
        struct store_keymap_slot *slot = &s->map[map_slot(key_id)];
        snprintf(slot->key_id, sizeof(slot->key_id), "%s", key_id);
        slot->db = i;
        pthread_mutex_unlock(&s->map_mu);
        return;
    }
}

static bool map_lookup(struct kms_store *s, const char *key_id, unsigned *out)
{
    pthread_mutex_lock(&s->map_mu);
    const struct store_keymap_slot *slot = &s->map[map_slot(key_id)];
    bool hit = strcmp(slot->key_id, key_id) == 0;
    if (hit)
        *out = slot->db;
    pthread_mutex_unlock(&s->map_mu);
    return hit;
}

/* Whether db holds key_id in any state (CREATING included). */
static kms_err key_probe(struct store_db *db, const char *key_id, bool *out, const char *op)
{
    int64_t one = 0;
    *out = false;
    KMS_GUARD(store_db_ready(db, op));
    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_query_int(c, "SELECT 1 FROM keys WHERE key_id = ?1", op,
                                 store_bind_text1, key_id, &one, out);
    store_conn_give(c);
    return rc;
}

kms_err store_route_key(struct kms_store *s, const char *key_id, struct store_db **out,
                        const char *op)
{
    *out = NULL;
    if (s->n == 1) {
        *out = s->db[0];
        return KMS_OK;
    }
    unsigned hit = 0;
    if (map_lookup(s, key_id, &hit)) {
        KMS_GUARD(store_db_ready(s->db[hit], op));
        *out = s->db[hit];
        return KMS_OK;
    }
    kms_err first = KMS_OK;
    char detail[512] = "";
    for (size_t i = 0; i < s->n; i++) {
        bool found = false;
        kms_err rc = key_probe(s->db[i], key_id, &found, op);
        if (rc == KMS_OK && found) {
            store_route_remember(s, key_id, s->db[i]);
            *out = s->db[i];
            return KMS_OK;
        }
        if (rc != KMS_OK && first == KMS_OK) {
            first = rc;
            snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        }
    }
    /* A database that could not be asked may hold the key: unavailable,
     * not "no such key". */
    if (first != KMS_OK)
        return kms_err_set(first, "%s", detail);
    return kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: key %s not found", op, key_id);
}

kms_err store_each_find(struct kms_store *s, store_db_fn fn, void *arg, const char *op)
{
    kms_err first_io = KMS_OK;
    char io_detail[512] = "", nf_detail[512] = "";
    for (size_t i = 0; i < s->n; i++) {
        kms_err rc = store_db_ready(s->db[i], op);
        if (rc == KMS_OK)
            rc = fn(s->db[i], arg, op);
        if (rc != KMS_ERR_NOT_FOUND && rc != KMS_ERR_IO)
            return rc;
        if (rc == KMS_ERR_IO && first_io == KMS_OK) {
            first_io = rc;
            snprintf(io_detail, sizeof(io_detail), "%s", kms_err_detail());
        }
        if (rc == KMS_ERR_NOT_FOUND && nf_detail[0] == '\0')
            snprintf(nf_detail, sizeof(nf_detail), "%s", kms_err_detail());
    }
    if (first_io != KMS_OK)
        return kms_err_set(first_io, "%s", io_detail);
    return kms_err_set(KMS_ERR_NOT_FOUND, "%s", nf_detail);
}

kms_err store_each_db(struct kms_store *s, bool all, store_db_fn fn, void *arg, const char *op)
{
    kms_err first = KMS_OK;
    char detail[512] = "";
    size_t failed = 0;
    for (size_t i = 0; i < s->n; i++) {
        kms_err rc = store_db_ready(s->db[i], op);
        if (rc == KMS_OK)
            rc = fn(s->db[i], arg, op);
        if (rc == KMS_OK)
            continue;
        if (all)
            return rc;
        if (first == KMS_OK) {
            first = rc;
            snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        }
        failed++;
        kms_log_warn("store", "%s: region %s skipped: %s", op, s->db[i]->region,
                     kms_err_detail());
    }
    if (failed == s->n && first != KMS_OK)
        return kms_err_set(first, "%s", detail);
    return KMS_OK;
}

kms_err store_concat(void **acc, size_t *acc_n, void *part, size_t n, size_t elem,
                     const char *op)
{
    if (n == 0) {
        free(part);
        return KMS_OK;
    }
    if (*acc == NULL) {
        *acc = part;
        *acc_n = n;
        return KMS_OK;
    }
    size_t total, bytes;
    if (__builtin_add_overflow(*acc_n, n, &total) ||
        __builtin_mul_overflow(total, elem, &bytes)) {
        free(part);
        return kms_err_set(KMS_ERR_NOMEM, "store: %s: result too large", op);
    }
    void *p = realloc(*acc, bytes);
    if (p == NULL) {
        free(part);
        return kms_err_set(KMS_ERR_NOMEM, "store: %s: out of memory", op);
    }
    memcpy((char *)p + *acc_n * elem, part, n * elem);
    free(part);
    *acc = p;
    *acc_n = total;
    return KMS_OK;
}

kms_err store_route_key_unique(struct kms_store *s, const char *key_id,
                               const struct store_db *db, const char *op)
{
    for (size_t i = 0; s->n > 1 && i < s->n; i++) {
        if (s->db[i] == db)
            continue;
        bool found = false;
        kms_err rc = key_probe(s->db[i], key_id, &found, op);
        if (rc != KMS_OK) {
            kms_log_warn("store", "%s: region %s not asked whether key %s exists there: %s", op,
                         s->db[i]->region, key_id, kms_err_detail());
            continue;
        }
        KMS_ENSURE(!found, KMS_ERR_ALREADY_EXISTS, "store: %s: key %s exists in region %s", op,
                   key_id, s->db[i]->region);
    }
    return KMS_OK;
}

struct row_probe {
    const char *sql;
    store_binder bind;
    const void *arg;
    struct store_db *found; /* out */
};

static kms_err row_probe_db(struct store_db *db, void *varg, const char *op)
{
    struct row_probe *p = varg;
    int64_t one = 0;
    bool found = false;
    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_query_int(c, p->sql, op, p->bind, p->arg, &one, &found);
    store_conn_give(c);
    if (rc == KMS_OK && !found)
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: not found", op);
    if (rc == KMS_OK)
        p->found = db;
    return rc;
}

kms_err store_route_row(struct kms_store *s, const char *sql, store_binder bind, const void *arg,
                        struct store_db **out, const char *op)
{
    *out = NULL;
    if (s->n == 1) {
        *out = s->db[0];
        return KMS_OK;
    }
    struct row_probe p = {sql, bind, arg, NULL};
    KMS_GUARD(store_each_find(s, row_probe_db, &p, op));
    *out = p.found;
    return KMS_OK;
}

struct list_all {
    const char *sql;
    store_binder bind;
    const void *arg;
    size_t elem, max;
    store_row_reader read;
    void *arr;
    size_t n;
};

static kms_err list_all_db(struct store_db *db, void *varg, const char *op)
{
    struct list_all *a = varg;
    void *part = NULL;
    size_t n = 0;
    KMS_GUARD(store_list_query(db, a->sql, op, a->bind, a->arg, a->elem, a->max, a->read, &part,
                               &n));
    return store_concat(&a->arr, &a->n, part, n, a->elem, op);
}

kms_err store_list_all(struct kms_store *s, bool all, const char *sql, const char *op,
                       store_binder bind, const void *arg, size_t elem, size_t max,
                       store_row_reader read, void **out, size_t *out_n)
{
    struct list_all a = {sql, bind, arg, elem, max, read, NULL, 0};
    *out = NULL;
    *out_n = 0;
    kms_err rc = store_each_db(s, all, list_all_db, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    *out = a.arr;
    *out_n = a.n;
    return KMS_OK;
}

kms_err store_route_key_any(struct kms_store *s, const char *key_id, struct store_db **out,
                            const char *op)
{
    kms_err rc = store_route_key(s, key_id, out, op);
    if (rc != KMS_ERR_NOT_FOUND)
        return rc;
    for (size_t i = 0; i < s->n; i++) {
        if (store_db_ready(s->db[i], op) == KMS_OK) {
            *out = s->db[i];
            return KMS_OK;
        }
    }
    return kms_err_set(KMS_ERR_IO, "store: %s: no region's database is reachable", op);
}
