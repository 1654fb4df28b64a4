/*
 * kms_store_usage.c - GCM encryption counts per key version (reserved ahead
 * of use, so a crash over-counts and never under-counts) and keys' rotation
 * periods, with the sweeper's queries over both. Statements are prepared
 * per call: a reservation covers thousands of encryptions.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

/* SQLite integers are signed 64-bit: counts and periods stay far below. */
#define USAGE_MAX ((uint64_t)INT64_MAX / 2)

struct kv_arg {
    const char *key_id;
    uint32_t version;
    int64_t n;
};

/* Binders by the parameters a statement has: sqlite refuses to bind one
 * past the last. */
static void bind_kvn(struct store_bind *b, const void *varg)
{
    const struct kv_arg *a = varg;
    store_bind_text(b, 1, a->key_id);
    store_bind_int(b, 2, a->version);
    store_bind_int(b, 3, a->n);
}

static void bind_kv(struct store_bind *b, const void *varg)
{
    const struct kv_arg *a = varg;
    store_bind_text(b, 1, a->key_id);
    store_bind_int(b, 2, a->version);
}

static void bind_kn(struct store_bind *b, const void *varg)
{
    const struct kv_arg *a = varg;
    store_bind_text(b, 1, a->key_id);
    store_bind_int(b, 2, a->n);
}

static void bind_k(struct store_bind *b, const void *varg)
{
    const struct kv_arg *a = varg;
    store_bind_text(b, 1, a->key_id);
}

/* A count or period (never negative; 0 if it were) from a one-row query on
 * a reader; *out_row false when there is no row. */
static kms_err read_count(struct kms_store *store, const char *sql, store_binder bind,
                          const struct kv_arg *a, uint64_t *out, bool *out_row, const char *op)
{
    int64_t v = 0;
    struct store_db *db = NULL;
    *out_row = false;
    kms_err rc = store_route_key(store, a->key_id, &db, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK; /* no row, as one database answers */
    KMS_GUARD(rc);
    struct store_conn *c = store_reader_take(db);
    rc = store_query_int(c, sql, op, bind, a, &v, out_row);
    store_conn_give(c);
    if (rc == KMS_OK && *out_row)
        *out = v > 0 ? (uint64_t)v : 0;
    return rc;
}

struct reserve_arg {
    struct kv_arg kv;
    int64_t total;
};

static kms_err usage_reserve_tx(struct store_conn *c, void *varg, const char *op)
{
    struct reserve_arg *ra = varg;
    const struct kv_arg *a = &ra->kv;
    int changes = 0;
    bool row = false;
    /* Only a live version of a visible key counts: a destroyed one never
     * encrypts again. */
    KMS_GUARD(store_exec_one(c,
                             "UPDATE key_versions SET encryptions = encryptions + ?3 "
                             "WHERE key_id = ?1 AND version = ?2 AND state = 1 "
                             "AND encryptions <= 4611686018427387903 - ?3",
                             op, bind_kvn, a, &changes));
    KMS_ENSURE(changes == 1, KMS_ERR_NOT_FOUND,
               "store: %s: key %s has no active version %" PRIu32, op, a->key_id, a->version);
    KMS_GUARD(store_query_int(c,
                              "SELECT encryptions FROM key_versions "
                              "WHERE key_id = ?1 AND version = ?2",
                              op, bind_kv, a, &ra->total, &row));
    KMS_ENSURE(row && ra->total >= 0, KMS_ERR_INTERNAL, "store: %s: row vanished", op);
    return KMS_OK;
}

kms_err kms_store_usage_reserve(struct kms_store *store, const char *key_id, uint32_t version,
                                uint64_t n, uint64_t *out_total)
{
    static const char op[] = "reserve encryptions";
    KMS_ENSURE(store != NULL && out_total != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_ENSURE(version >= 1 && n >= 1 && n <= USAGE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: bad version or count", op);
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    KMS_ENSURE(rc != KMS_ERR_NOT_FOUND, KMS_ERR_NOT_FOUND,
               "store: %s: key %s has no active version %" PRIu32, op, key_id, version);
    KMS_GUARD(rc);
    struct reserve_arg a = {{key_id, version, (int64_t)n}, 0};
    rc = store_tx_run(db, true, usage_reserve_tx, &a, op);
    if (rc == KMS_OK)
        *out_total = (uint64_t)a.total;
    return rc;
}

kms_err kms_store_usage_release(struct kms_store *store, const char *key_id, uint32_t version,
                                uint64_t n)
{
    static const char op[] = "release encryptions";
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    if (n == 0)
        return KMS_OK;
    KMS_ENSURE(n <= USAGE_MAX, KMS_ERR_INVALID_ARGUMENT, "store: %s: bad count", op);
    struct kv_arg a = {key_id, version, (int64_t)n};
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK; /* nothing to release */
    KMS_GUARD(rc);
    struct store_conn *c = store_writer_take(db);
    rc = store_exec_one(c,
                                "UPDATE key_versions SET encryptions = CASE WHEN encryptions > ?3 "
                                "THEN encryptions - ?3 ELSE 0 END "
                                "WHERE key_id = ?1 AND version = ?2",
                                op, bind_kvn, &a, NULL);
    store_conn_give(c);
    return rc;
}

kms_err kms_store_usage_get(struct kms_store *store, const char *key_id, uint32_t version,
                            uint64_t *out)
{
    static const char op[] = "read encryptions";
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    struct kv_arg a = {key_id, version, 0};
    bool row = false;
    KMS_GUARD(read_count(store,
                         "SELECT encryptions FROM key_versions WHERE key_id = ?1 AND version = ?2",
                         bind_kv, &a, out, &row, op));
    KMS_ENSURE(row, KMS_ERR_NOT_FOUND, "store: %s: key %s has no version %" PRIu32, op, key_id,
               version);
    return KMS_OK;
}

static kms_err read_usage_row(const struct store_row *st, void *elem, const char *op)
{
    struct kms_store_usage_row *r = elem;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &r->version, op));
    int64_t e = store_col_int64(st, 2);
    r->encryptions = e > 0 ? (uint64_t)e : 0;
    return KMS_OK;
}

/* ?1 and ?2 of the sweeper's queries: a threshold and LIMIT. */
static void bind_p1_max(struct store_bind *b, const void *varg)
{
    const int64_t *a = varg;
    store_bind_int(b, 1, a[0]);
    store_bind_int(b, 2, a[1]);
}

static int usage_row_cmp(const void *pa, const void *pb)
{
    const struct kms_store_usage_row *a = pa, *b = pb;
    return strcmp(a->key_id, b->key_id);
}

/* Sweeper work: a region whose database is away is skipped. */
static kms_err query_rows(struct kms_store *store, const char *sql, int64_t p1, size_t max,
                          struct kms_store_usage_row **out, size_t *out_n, const char *op)
{
    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    const int64_t a[2] = {p1, (int64_t)max};
    void *arr = NULL;
    size_t n = 0;
    KMS_GUARD(store_list_all(store, false, sql, op, bind_p1_max, a,
                             sizeof(struct kms_store_usage_row), max, read_usage_row, &arr, &n));
    if (store->n > 1 && n > 1)
        qsort(arr, n, sizeof(struct kms_store_usage_row), usage_row_cmp);
    *out = arr;
    *out_n = n < max ? n : max;
    return KMS_OK;
}

kms_err kms_store_usage_over(struct kms_store *store, uint64_t at, size_t max,
                             struct kms_store_usage_row **out, size_t *out_n)
{
    KMS_ENSURE(at <= USAGE_MAX, KMS_ERR_INVALID_ARGUMENT, "store: usage over: bad threshold");
    return query_rows(store,
                      "SELECT k.key_id, k.current_version, v.encryptions FROM keys k "
                      "JOIN key_versions v ON v.key_id = k.key_id "
                      "AND v.version = k.current_version "
                      "WHERE k.state = 1 AND k.origin = 1 AND v.encryptions >= ?1 "
                      "ORDER BY k.key_id LIMIT ?2",
                      (int64_t)at, max, out, out_n, "list versions over the usage threshold");
}

kms_err kms_store_rotation_due(struct kms_store *store, int64_t now, size_t max,
                               struct kms_store_usage_row **out, size_t *out_n)
{
    return query_rows(store,
                      "SELECT k.key_id, k.current_version, v.encryptions FROM keys k "
                      "JOIN key_versions v ON v.key_id = k.key_id "
                      "AND v.version = k.current_version "
                      "WHERE k.rotation_period_s > 0 AND k.state = 1 AND k.origin = 1 "
                      "AND v.created_at <= ?1 - k.rotation_period_s "
                      "ORDER BY k.key_id LIMIT ?2",
                      now, max, out, out_n, "list keys due for rotation");
}

kms_err kms_store_rotation_period_set(struct kms_store *store, const char *key_id,
                                      uint64_t period_s)
{
    static const char op[] = "set rotation period";
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_ENSURE(period_s <= USAGE_MAX, KMS_ERR_INVALID_ARGUMENT, "store: %s: bad period", op);
    struct kv_arg a = {key_id, 0, (int64_t)period_s};
    int changes = 0;
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    KMS_GUARD(rc);
    struct store_conn *c = store_writer_take(db);
    rc = store_exec_one(c,
                                "UPDATE keys SET rotation_period_s = ?2 "
                                "WHERE key_id = ?1 AND state <> 5",
                                op, bind_kn, &a, &changes);
    store_conn_give(c);
    KMS_GUARD(rc);
    KMS_ENSURE(changes == 1, KMS_ERR_NOT_FOUND, "store: %s: key %s not found", op, key_id);
    return KMS_OK;
}

kms_err kms_store_rotation_period_get(struct kms_store *store, const char *key_id,
                                      uint64_t *out)
{
    static const char op[] = "read rotation period";
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    struct kv_arg a = {key_id, 0, 0};
    bool row = false;
    KMS_GUARD(read_count(store,
                         "SELECT rotation_period_s FROM keys WHERE key_id = ?1 AND state <> 0",
                         bind_k, &a, out, &row, op));
    KMS_ENSURE(row, KMS_ERR_NOT_FOUND, "store: %s: key %s not found", op, key_id);
    return KMS_OK;
}
