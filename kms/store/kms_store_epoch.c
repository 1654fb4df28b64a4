/*
 * kms_store_epoch.c - audit watermarks, raw state lookups and confirmed
 * unknown objects for restore detection (kms_store_epoch.h).
 *
 * These run at start-up and in the sweeper, never on the request path, so
 * each prepares its statement on the spot instead of adding to the cached
 * statement table.
 */
#include "kms_store_epoch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

static void hex16(const uint8_t id[KMS_HSM_ID_LEN], char out[2 * KMS_HSM_ID_LEN + 1])
{
    for (size_t i = 0; i < KMS_HSM_ID_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", id[i]);
}

struct text_out {
    char *out;
    size_t size;
};

static kms_err read_text0(const struct store_row *st, void *elem, const char *op)
{
    struct text_out *t = elem;
    return store_col_text(st, 0, t->out, t->size, op);
}

static void bind_hsm_id_blob(struct store_bind *b, const void *arg)
{
    store_bind_blob(b, 1, arg, KMS_HSM_ID_LEN);
}

kms_err store_meta_get(struct store_db *store, const char *name, char *out, size_t size,
                       bool *found)
{
    struct text_out t = {out, size};
    return store_query_row(store, "SELECT value FROM meta WHERE name = ?1", "read meta",
                           store_bind_text1, name, read_text0, &t, found);
}

/* A region's watermark (what names it) stored as decimal text under name;
 * *out stays 0 and *found false when absent. */
static kms_err meta_get_u64(struct store_db *store, const char *name, const char *what,
                            const char *region, uint64_t *out, bool *found)
{
    char v[32];
    KMS_GUARD(store_meta_get(store, name, v, sizeof(v), found));
    if (!*found)
        return KMS_OK;
    char *end = NULL;
    unsigned long long n = strtoull(v, &end, 10);
    KMS_ENSURE(end != v && *end == '\0', KMS_ERR_INTERNAL, "store: %s of region %s is not a number",
               what, region);
    *out = (uint64_t)n;
    return KMS_OK;
}

struct write_one_arg {
    const char *sql, *t1, *t2;
    int64_t i3;
};

static kms_err write_one_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct write_one_arg *a = varg;
    struct store_bind b;
    KMS_GUARD(store_prep(c, a->sql, op, &b));
    store_bind_text(&b, 1, a->t1);
    if (a->t2)
        store_bind_text(&b, 2, a->t2);
    store_bind_int(&b, 3, a->i3);
    kms_err rc = store_run(&b, op);
    store_fin(&b);
    return rc;
}

kms_err store_write_one(struct store_db *store, const char *sql, const char *t1, const char *t2,
                        int64_t i3, const char *op)
{
    struct write_one_arg a = {sql, t1, t2, i3};
    return store_tx_run(store, true, write_one_tx, &a, op);
}

static kms_err mark_name(const char *region, char out[KMS_STORE_META_MAX])
{
    KMS_ENSURE(region != NULL && strlen(region) <= KMS_REGION_MAX, KMS_ERR_USAGE,
               "store: audit watermark: bad region");
    snprintf(out, KMS_STORE_META_MAX, "audit_mark:%s", region);
    return KMS_OK;
}

kms_err kms_store_audit_mark_get(struct kms_store *store, const char *region, uint64_t *out,
                                 bool *out_found)
{
    char name[KMS_STORE_META_MAX];
    *out = 0;
    KMS_GUARD(mark_name(region, name));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_region(store, region, &db, "read audit watermark"));
    return meta_get_u64(db, name, "audit watermark", region, out, out_found);
}

/* Write a region's audit watermark with sql (?1 the name, ?3 the size). */
static kms_err audit_mark_write(struct kms_store *store, const char *region, uint64_t size,
                                const char *sql, const char *op)
{
    char name[KMS_STORE_META_MAX];
    KMS_GUARD(mark_name(region, name));
    KMS_ENSURE(size <= INT64_MAX, KMS_ERR_USAGE, "store: audit watermark out of range");
    struct store_db *db = NULL;
    KMS_GUARD(store_route_region(store, region, &db, op));
    return store_write_one(db, sql, name, NULL, (int64_t)size, op);
}

kms_err kms_store_audit_mark_set(struct kms_store *store, const char *region, uint64_t size)
{
    /* Text compare would order "9" after "10": compare as integers. */
    return audit_mark_write(store, region, size,
                            "INSERT INTO meta (name, value) VALUES (?1, CAST(?3 AS TEXT)) "
                            "ON CONFLICT (name) DO UPDATE SET value = CAST(?3 AS TEXT) "
                            "WHERE CAST(meta.value AS BIGINT) < ?3",
                            "record audit watermark");
}

kms_err kms_store_audit_mark_reset(struct kms_store *store, const char *region, uint64_t size)
{
    return audit_mark_write(store, region, size,
                            "INSERT INTO meta (name, value) VALUES (?1, CAST(?3 AS TEXT)) "
                            "ON CONFLICT (name) DO UPDATE SET value = CAST(?3 AS TEXT)",
                            "reset audit watermark");
}

static kms_err read_key_raw(const struct store_row *st, void *elem, const char *op)
{
    struct kms_store_key_raw *out = elem;
    int state = 0, spec = 0, origin = 0;
    kms_err rc = store_col_enum(st, 0, KMS_KEY_CREATING, KMS_KEY_DESTROYED, &state, op);
    if (rc == KMS_OK)
        rc = store_col_enum(st, 1, KMS_KEY_SPEC_AES_256, KMS_KEY_SPEC_LAST, &spec, op);
    if (rc == KMS_OK)
        rc = store_col_enum(st, 2, KMS_KEY_ORIGIN_HSM, KMS_KEY_ORIGIN_EXTERNAL, &origin, op);
    if (rc == KMS_OK)
        rc = store_col_u32(st, 3, &out->last_version, op);
    if (rc == KMS_OK)
        rc = store_col_u32(st, 4, &out->current_version, op);
    out->state = (enum kms_key_state)state;
    out->spec = (enum kms_key_spec)spec;
    out->origin = (enum kms_key_origin)origin;
    out->escrow_required = store_col_int64(st, 5) != 0;
    return rc;
}

kms_err kms_store_key_state_any(struct kms_store *store, const char *key_id,
                                struct kms_store_key_raw *out, bool *out_found)
{
    memset(out, 0, sizeof(*out));
    *out_found = false;
    struct store_db *db = NULL;
    KMS_ENSURE(key_id != NULL, KMS_ERR_USAGE, "store: read key state: NULL key id");
    KMS_GUARD(store_route_key_any(store, key_id, &db, "read key state"));
    return store_query_row(db,
                           "SELECT state, spec, origin, last_version, current_version, "
                           "escrow_required FROM keys WHERE key_id = ?1",
                           "read key state", store_bind_text1, key_id, read_key_raw, out,
                           out_found);
}

static kms_err read_version_state(const struct store_row *st, void *elem, const char *op)
{
    int state = 0;
    kms_err rc = store_col_enum(st, 0, KMS_VERSION_CREATING, KMS_VERSION_DESTROYED, &state, op);
    *(enum kms_version_state *)elem = (enum kms_version_state)state;
    return rc;
}

kms_err kms_store_version_state_any(struct kms_store *store, const char *key_id,
                                    uint32_t version, enum kms_version_state *out_state,
                                    bool *out_found)
{
    struct store_text_int a = {key_id, version};
    struct store_db *db = NULL;
    *out_found = false;
    KMS_ENSURE(key_id != NULL, KMS_ERR_USAGE, "store: read version state: NULL key id");
    KMS_GUARD(store_route_key_any(store, key_id, &db, "read version state"));
    return store_query_row(
        db, "SELECT state FROM key_versions WHERE key_id = ?1 AND version = ?2",
        "read version state", store_bind_text_int, &a, read_version_state, out_state, out_found);
}

static kms_err read_nothing(const struct store_row *st, void *elem, const char *op)
{
    (void)st, (void)elem, (void)op;
    return KMS_OK;
}

/* A row found by hsm_id in any database: each asked until one has it. */
struct hsm_find {
    const char *sql;
    store_row_reader read;
    void *elem;
    const uint8_t *hsm_id_arg;
};

static kms_err hsm_find_db(struct store_db *db, void *varg, const char *op)
{
    const struct hsm_find *f = varg;
    bool found = false;
    KMS_GUARD(store_query_row(db, f->sql, op, bind_hsm_id_blob, f->hsm_id_arg, f->read, f->elem,
                              &found));
    return found ? KMS_OK : kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: not found", op);
}

static kms_err hsm_find(struct kms_store *store, const char *sql, const uint8_t *hsm_id,
                        store_row_reader read, void *elem, bool *out_found, const char *op)
{
    struct hsm_find f = {sql, read, elem, hsm_id};
    *out_found = false;
    kms_err rc = store_each_find(store, hsm_find_db, &f, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK;
    KMS_GUARD(rc);
    *out_found = true;
    return KMS_OK;
}

kms_err kms_store_hsm_id_known(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                               bool *out_known)
{
    return hsm_find(store, "SELECT 1 FROM key_versions WHERE hsm_id = ?1", hsm_id, read_nothing,
                    NULL, out_known, "look up hsm_id");
}

kms_err kms_store_key_version_floor(struct kms_store *store, const char *key_id,
                                    uint32_t version)
{
    KMS_ENSURE(key_id != NULL && strlen(key_id) == KMS_KEY_ID_LEN, KMS_ERR_USAGE,
               "store: version floor: bad key id");
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, key_id, &db, "raise last_version"));
    return store_write_one(db,
                     "UPDATE keys SET last_version = ?3 WHERE key_id = ?1 AND last_version < ?3",
                     key_id, NULL, (int64_t)version, "raise last_version");
}

/* An operator's confirmation about one HSM object: the meta row
 * "<prefix>:<hex hsm_id>", set once (at now) and never changed. */
static void hsm_mark_name(const char *prefix, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                          char name[KMS_STORE_META_MAX])
{
    char hex[2 * KMS_HSM_ID_LEN + 1];
    hex16(hsm_id, hex);
    snprintf(name, KMS_STORE_META_MAX, "%s:%s", prefix, hex);
}

struct hsm_mark_arg {
    const char *name;
    int64_t now;
};

static kms_err hsm_mark_set_db(struct store_db *db, void *varg, const char *op)
{
    const struct hsm_mark_arg *a = varg;
    return store_write_one(db,
                     "INSERT INTO meta (name, value) VALUES (?1, CAST(?3 AS TEXT)) "
                     "ON CONFLICT (name) DO NOTHING",
                     a->name, NULL, a->now, op);
}

/* The confirmation goes where the version of that hsm_id is; an object no
 * database knows (an unknown one) has no region: every database gets it. */
static kms_err hsm_mark_set(struct kms_store *store, const char *prefix,
                            const uint8_t hsm_id[KMS_HSM_ID_LEN], int64_t now, const char *op)
{
    char name[KMS_STORE_META_MAX];
    hsm_mark_name(prefix, hsm_id, name);
    struct hsm_mark_arg a = {name, now};
    if (store->n == 1)
        return hsm_mark_set_db(store->db[0], &a, op);
    struct store_db *db = NULL;
    kms_err rc = store_route_row(store, "SELECT 1 FROM key_versions WHERE hsm_id = ?1",
                                 bind_hsm_id_blob, hsm_id, &db, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return store_each_db(store, true, hsm_mark_set_db, &a, op);
    KMS_GUARD(rc);
    return hsm_mark_set_db(db, &a, op);
}

static kms_err read_any(const struct store_row *st, void *elem, const char *op)
{
    (void)st, (void)elem, (void)op;
    return KMS_OK;
}

static void bind_name(struct store_bind *b, const void *arg)
{
    store_bind_text(b, 1, arg);
}

static kms_err hsm_mark_get_db(struct store_db *db, void *varg, const char *op)
{
    bool found = false;
    KMS_GUARD(store_query_row(db, "SELECT 1 FROM meta WHERE name = ?1", op, bind_name, varg,
                              read_any, NULL, &found));
    return found ? KMS_OK : kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: not found", op);
}

/* Confirmed when any database holds the confirmation. */
static kms_err hsm_mark_get(struct kms_store *store, const char *prefix,
                            const uint8_t hsm_id[KMS_HSM_ID_LEN], bool *out_set)
{
    char name[KMS_STORE_META_MAX];
    hsm_mark_name(prefix, hsm_id, name);
    *out_set = false;
    kms_err rc = store_each_find(store, hsm_mark_get_db, name, "read confirmation");
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK;
    KMS_GUARD(rc);
    *out_set = true;
    return KMS_OK;
}

kms_err kms_store_unknown_confirm(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                  int64_t now)
{
    return hsm_mark_set(store, "unknown_ok", hsm_id, now, "confirm unknown HSM object");
}

kms_err kms_store_unknown_confirmed(struct kms_store *store,
                                    const uint8_t hsm_id[KMS_HSM_ID_LEN], bool *out_confirmed)
{
    return hsm_mark_get(store, "unknown_ok", hsm_id, out_confirmed);
}

/* One statement inside the caller's transaction: ?1 text, ?2 and ?3
 * integers, ?4 a 16-byte blob (each bound only when the SQL names it). */
static kms_err step_in_tx(struct store_conn *c, const char *sql, const char *key_id, int64_t a,
                          int64_t b, const uint8_t *blob, int *out_changes, const char *op)
{
    struct store_bind st;
    KMS_GUARD(store_prep(c, sql, op, &st));
    int n = store_param_count(&st);
    store_bind_text(&st, 1, key_id);
    if (n >= 2)
        store_bind_int(&st, 2, a);
    if (n >= 3)
        store_bind_int(&st, 3, b);
    if (blob && n >= 4)
        store_bind_hsm_id(&st, 4, blob);
    kms_err rc = store_run(&st, op);
    store_fin(&st);
    if (out_changes)
        *out_changes = (int)store_changes(c);
    return rc;
}

/* The encryption-count watermark of a region (see kms_store_epoch.h). */
kms_err kms_store_enc_mark_get(struct kms_store *store, const char *region, uint64_t *out)
{
    char name[KMS_STORE_META_MAX];
    bool found = false;
    *out = 0;
    KMS_ENSURE(region != NULL && strlen(region) <= KMS_REGION_MAX, KMS_ERR_USAGE,
               "store: encryption-count watermark: bad region");
    snprintf(name, sizeof(name), "enc_mark:%s", region);
    struct store_db *db = NULL;
    KMS_GUARD(store_route_region(store, region, &db, "read encryption-count watermark"));
    return meta_get_u64(db, name, "encryption-count watermark", region, out, &found);
}

kms_err kms_store_enc_mark_set(struct kms_store *store, const char *region, uint64_t size)
{
    char name[KMS_STORE_META_MAX];
    KMS_ENSURE(region != NULL && strlen(region) <= KMS_REGION_MAX, KMS_ERR_USAGE,
               "store: encryption-count watermark: bad region");
    KMS_ENSURE(size <= INT64_MAX, KMS_ERR_USAGE, "store: encryption-count watermark out of range");
    snprintf(name, sizeof(name), "enc_mark:%s", region);
    /* Set, not raised: an audit log restored older than it is the one
     * counted from now on (its events were counted, if ever, before). */
    struct store_db *db = NULL;
    KMS_GUARD(store_route_region(store, region, &db, "record encryption-count watermark"));
    return store_write_one(db,
                     "INSERT INTO meta (name, value) VALUES (?1, CAST(?3 AS TEXT)) "
                     "ON CONFLICT (name) DO UPDATE SET value = CAST(?3 AS TEXT)",
                     name, NULL, (int64_t)size, "record encryption-count watermark");
}

struct usage_bound_arg {
    const char *key_id;
    uint32_t version;
    int64_t n;
    bool add;
};

static kms_err usage_bound_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct usage_bound_arg *a = varg;
    /* Saturating: a count never wraps below what it was. */
    return step_in_tx(c,
                      a->add ? "UPDATE key_versions SET encryptions = CASE WHEN encryptions > "
                               "9223372036854775807 - ?3 THEN 9223372036854775807 ELSE "
                               "encryptions + ?3 END WHERE key_id = ?1 AND version = ?2"
                             : "UPDATE key_versions SET encryptions = CASE WHEN encryptions "
                               "> ?3 THEN encryptions ELSE ?3 END "
                               "WHERE key_id = ?1 AND version = ?2",
                      a->key_id, a->version, a->n, NULL, NULL, op);
}

kms_err kms_store_usage_bound(struct kms_store *store, const char *key_id, uint32_t version,
                              uint64_t n, bool add)
{
    static const char op[] = "raise encryptions";
    KMS_ENSURE(key_id != NULL && strlen(key_id) == KMS_KEY_ID_LEN && version > 0, KMS_ERR_USAGE,
               "store: %s: bad key id or version", op);
    int64_t v = n > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)n;
    struct usage_bound_arg a = {key_id, version, v, add};
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, key_id, &db, op));
    return store_tx_run(db, true, usage_bound_tx, &a, op);
}

struct force_state_arg {
    const char *key_id;
    enum kms_key_state state;
    const struct kms_hsm_id *present;
    size_t n_present;
};

static kms_err force_state_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct force_state_arg *a = varg;
    struct store_key_row row;
    KMS_GUARD(store_key_row_get(c, a->key_id, false, &row, op));
    /* Only versions whose objects a token still holds come back: a
     * destroyed version with no object would be an ACTIVE row that can
     * neither decrypt nor be told apart from a lost token. */
    for (size_t i = 0; row.state == KMS_KEY_DESTROYED && a->state != KMS_KEY_PENDING_DELETION &&
                       i < a->n_present;
         i++)
        KMS_GUARD(step_in_tx(c,
                             "UPDATE key_versions SET state = 1 "
                             "WHERE key_id = ?1 AND state = 2 AND hsm_id = ?4",
                             a->key_id, 0, 0, a->present[i].bytes, NULL, op));
    /* ENABLED/DISABLED need a current version: the highest active one. */
    return step_in_tx(c,
                      "UPDATE keys SET state = ?2, "
                      "deletion_at = CASE WHEN ?2 = 4 THEN deletion_at ELSE 0 END, "
                      "current_version = coalesce((SELECT max(version) FROM key_versions "
                      "WHERE key_id = ?1 AND state = 1), current_version) "
                      "WHERE key_id = ?1",
                      a->key_id, (int64_t)a->state, 0, NULL, NULL, op);
}

kms_err kms_store_key_force_state(struct kms_store *store, const char *key_id,
                                  enum kms_key_state state, const struct kms_hsm_id *present,
                                  size_t n_present)
{
    static const char op[] = "rebuild key state";
    KMS_ENSURE(key_id != NULL && strlen(key_id) == KMS_KEY_ID_LEN, KMS_ERR_USAGE,
               "store: %s: bad key id", op);
    KMS_ENSURE(state == KMS_KEY_ENABLED || state == KMS_KEY_DISABLED ||
                   state == KMS_KEY_PENDING_DELETION,
               KMS_ERR_USAGE, "store: %s: state %s cannot be forced", op,
               kms_key_state_name(state));
    struct force_state_arg a = {key_id, state, present, n_present};
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, key_id, &db, op));
    return store_tx_run(db, true, force_state_tx, &a, op);
}

struct reattach_arg {
    const char *key_id;
    uint32_t version;
    const uint8_t *hsm_id;
    int64_t now;
};

static kms_err reattach_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct reattach_arg *a = varg;
    struct store_key_row row;
    KMS_GUARD(store_key_row_get(c, a->key_id, false, &row, op));
    KMS_ENSURE(row.state != KMS_KEY_DESTROYED && row.state != KMS_KEY_PENDING_IMPORT,
               KMS_ERR_FAILED_PRECONDITION, "store: %s: key %s is %s", op, a->key_id,
               kms_key_state_name(row.state));
    KMS_GUARD(step_in_tx(c,
                         "INSERT INTO key_versions (key_id, version, hsm_id, state, "
                         "created_at) VALUES (?1, ?2, ?4, 1, ?3)",
                         a->key_id, a->version, a->now, a->hsm_id, NULL, op));
    return step_in_tx(c,
                      "UPDATE keys SET last_version = CASE WHEN last_version > ?2 "
                      "THEN last_version ELSE ?2 END, current_version = CASE WHEN "
                      "current_version > ?2 THEN current_version ELSE ?2 END "
                      "WHERE key_id = ?1",
                      a->key_id, a->version, 0, NULL, NULL, op);
}

kms_err kms_store_version_reattach(struct kms_store *store, const char *key_id, uint32_t version,
                                   const uint8_t hsm_id[KMS_HSM_ID_LEN], int64_t now)
{
    static const char op[] = "reattach version";
    KMS_ENSURE(key_id != NULL && strlen(key_id) == KMS_KEY_ID_LEN && version > 0, KMS_ERR_USAGE,
               "store: %s: bad key id or version", op);
    struct reattach_arg a = {key_id, version, hsm_id, now};
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key_any(store, key_id, &db, op));
    return store_tx_run(db, true, reattach_tx, &a, op);
}

struct key_id_version_out {
    char *key_id;
    uint32_t *version;
};

static kms_err read_key_id_version(const struct store_row *st, void *elem, const char *op)
{
    const struct key_id_version_out *o = elem;
    KMS_GUARD(store_col_text(st, 0, o->key_id, KMS_KEY_ID_SIZE, op));
    return store_col_u32(st, 1, o->version, op);
}

kms_err kms_store_version_by_hsm_id(struct kms_store *store,
                                    const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                    char out_key_id[KMS_KEY_ID_SIZE], uint32_t *out_version,
                                    bool *out_found)
{
    struct key_id_version_out o = {out_key_id, out_version};
    return hsm_find(store, "SELECT key_id, version FROM key_versions WHERE hsm_id = ?1", hsm_id,
                    read_key_id_version, &o, out_found, "find version by hsm_id");
}

kms_err kms_store_lost_confirm(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                               int64_t now)
{
    return hsm_mark_set(store, "lost_ok", hsm_id, now, "confirm lost HSM object");
}

kms_err kms_store_lost_confirmed(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                 bool *out_confirmed)
{
    return hsm_mark_get(store, "lost_ok", hsm_id, out_confirmed);
}
