/*
 * kms_store_stmts.c - what the store's cached statements say: their SQL
 * text (by enum store_stmt_id), and the readers that decode the rows of
 * the key and version queries in the column order those texts select.
 */
#include "kms_store_internal.h"

#include <string.h>

#define KEY_COLS                                                                               \
    "k.key_id, k.tenant, k.region, k.token, k.spec, k.usage, k.origin, k.state, "              \
    "k.description, k.created_at, k.deletion_at, k.current_version, k.escrow_required"
#define VERSION_COLS "v.key_id, v.version, v.hsm_id, v.state, v.created_at"

/* State numbers in the SQL are those of enum kms_key_state (CREATING 0,
 * ENABLED 1, PENDING_IMPORT 3, PENDING_DELETION 4, DESTROYED 5) and enum
 * kms_version_state (CREATING 0, ACTIVE 1, DESTROYED 2). */
static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN",
    [ST_BEGIN_IMMEDIATE] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",

    [ST_KEY_INSERT] =
        "INSERT INTO keys (key_id, tenant, region, token, spec, usage, origin, state, "
        "description, created_at, deletion_at, current_version, last_version, escrow_required) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, 0, ?11, ?12)",
    [ST_KEY_STATE] = "SELECT state, current_version, last_version, deletion_at FROM keys "
                     "WHERE key_id = ?1",
    [ST_KEY_GET] = "SELECT " KEY_COLS " FROM keys k WHERE k.key_id = ?1 AND k.state <> 0",
    [ST_KEY_SET_STATE] = "UPDATE keys SET state = ?2, deletion_at = ?3 "
                         "WHERE key_id = ?1 AND state = ?4",
    [ST_KEY_SET_LAST_VERSION] = "UPDATE keys SET last_version = ?2 WHERE key_id = ?1",
    /* A CREATING or PENDING_IMPORT key becomes ENABLED; a disabled or
     * pending-deletion key keeps its state through a rotation. */
    [ST_KEY_ACTIVATE] = "UPDATE keys SET current_version = "
                        "CASE WHEN current_version > ?2 THEN current_version ELSE ?2 END, "
                        "state = CASE WHEN state IN (0, 3) THEN 1 ELSE state END "
                        "WHERE key_id = ?1",
    [ST_KEY_SET_DESTROYED] = "UPDATE keys SET state = 5 "
                             "WHERE key_id = ?1 AND state = 4 AND deletion_at <= ?2",
    [ST_KEY_DELETE_CREATING] = "DELETE FROM keys WHERE key_id = ?1 AND state = 0 "
                               "AND NOT EXISTS (SELECT 1 FROM key_versions WHERE key_id = ?1)",
    [ST_KEYS_LIST] = "SELECT " KEY_COLS " FROM keys k "
                     "WHERE k.tenant = ?1 AND (k.created_at, k.key_id) > (?2, ?3) "
                     "AND k.state <> 0 ORDER BY k.created_at, k.key_id LIMIT ?4",
    [ST_KEYS_DUE] = "SELECT " KEY_COLS " FROM keys k WHERE k.state = 4 AND k.deletion_at <= ?1 "
                    "ORDER BY k.deletion_at, k.key_id LIMIT ?2",

    [ST_VERSION_INSERT] = "INSERT INTO key_versions (key_id, version, hsm_id, state, created_at) "
                          "VALUES (?1, ?2, ?3, 0, ?4)",
    [ST_VERSION_STATE] = "SELECT state FROM key_versions WHERE key_id = ?1 AND version = ?2",
    [ST_VERSION_GET] = "SELECT " VERSION_COLS " FROM key_versions v JOIN keys k USING (key_id) "
                       "WHERE v.key_id = ?1 AND v.version = ?2 AND v.state <> 0 "
                       "AND k.state <> 0",
    [ST_VERSION_SET_ACTIVE] = "UPDATE key_versions SET state = 1 "
                              "WHERE key_id = ?1 AND version = ?2 AND state = 0",
    [ST_VERSION_DELETE_CREATING] = "DELETE FROM key_versions "
                                   "WHERE key_id = ?1 AND version = ?2 AND state = 0",
    [ST_VERSIONS_LIST] = "SELECT " VERSION_COLS " FROM key_versions v "
                         "WHERE v.key_id = ?1 AND v.state <> 0 ORDER BY v.version",
    [ST_VERSIONS_SET_DESTROYED] = "UPDATE key_versions SET state = 2 WHERE key_id = ?1",
    [ST_KEY_HSM_IDS] = "SELECT hsm_id FROM key_versions WHERE key_id = ?1 ORDER BY version",
    [ST_CREATING_LIST] = "SELECT v.key_id, k.token, v.version, v.hsm_id, k.state "
                         "FROM key_versions v JOIN keys k USING (key_id) "
                         "WHERE v.state = 0 ORDER BY v.key_id, v.version",
    [ST_HSM_IDS_FOR_TOKEN] = "SELECT v.hsm_id FROM keys k JOIN key_versions v USING (key_id) "
                             "WHERE k.token = ?1 AND v.state IN (0, 1) ORDER BY v.hsm_id",
};

const char *store_stmt_text(enum store_stmt_id id)
{
    return stmt_sql[id];
}

kms_err store_read_key(const struct store_row *st, void *elem, const char *op)
{
    struct kms_key_record *k = elem;
    int spec = 0, usage = 0, origin = 0, state = 0;

    memset(k, 0, sizeof(*k));
    KMS_GUARD(store_col_text(st, 0, k->key_id, sizeof(k->key_id), op));
    KMS_GUARD(store_col_text(st, 1, k->tenant, sizeof(k->tenant), op));
    KMS_GUARD(store_col_text(st, 2, k->region, sizeof(k->region), op));
    KMS_GUARD(store_col_text(st, 3, k->token, sizeof(k->token), op));
    KMS_GUARD(store_col_enum(st, 4, KMS_KEY_SPEC_AES_256, KMS_KEY_SPEC_LAST, &spec, op));
    KMS_GUARD(store_col_enum(st, 5, KMS_KEY_USAGE_ENCRYPT_DECRYPT, KMS_KEY_USAGE_LAST,
                             &usage, op));
    KMS_GUARD(store_col_enum(st, 6, KMS_KEY_ORIGIN_HSM, KMS_KEY_ORIGIN_EXTERNAL, &origin, op));
    KMS_GUARD(store_col_enum(st, 7, KMS_KEY_CREATING, KMS_KEY_DESTROYED, &state, op));
    KMS_GUARD(store_col_text(st, 8, k->description, sizeof(k->description), op));
    k->created_at = store_col_int64(st, 9);
    k->deletion_at = store_col_int64(st, 10);
    KMS_GUARD(store_col_u32(st, 11, &k->current_version, op));
    k->escrow_required = store_col_int64(st, 12) != 0;
    k->spec = (enum kms_key_spec)spec;
    k->usage = (enum kms_key_usage)usage;
    k->origin = (enum kms_key_origin)origin;
    k->state = (enum kms_key_state)state;
    return KMS_OK;
}

kms_err store_read_version(const struct store_row *st, void *elem, const char *op)
{
    struct kms_version_record *v = elem;
    int state = 0;

    memset(v, 0, sizeof(*v));
    KMS_GUARD(store_col_text(st, 0, v->key_id, sizeof(v->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &v->version, op));
    KMS_GUARD(store_col_hsm_id(st, 2, v->hsm_id, op));
    KMS_GUARD(store_col_enum(st, 3, KMS_VERSION_CREATING, KMS_VERSION_DESTROYED, &state, op));
    v->created_at = store_col_int64(st, 4);
    v->state = (enum kms_version_state)state;
    return KMS_OK;
}

kms_err store_read_hsm_id(const struct store_row *st, void *elem, const char *op)
{
    return store_col_hsm_id(st, 0, ((struct kms_hsm_id *)elem)->bytes, op);
}

kms_err store_key_row_get(struct store_conn *c, const char *key_id, bool creating_ok,
                          struct store_key_row *out, const char *op)
{
    struct store_bind b;
    bool row = false;
    int state = 0;
    kms_err rc = KMS_OK;

    KMS_GUARD(store_stmt(c, ST_KEY_STATE, op, &b));
    store_bind_text(&b, 1, key_id);
    KMS_GUARD(store_step(&b, op, &row));
    KMS_ENSURE_GOTO(row, done, KMS_ERR_NOT_FOUND, "store: %s: key %s not found", op, key_id);
    KMS_GUARD_GOTO(store_col_enum(store_row_of(&b), 0, KMS_KEY_CREATING, KMS_KEY_DESTROYED, &state, op),
                   done);
    KMS_GUARD_GOTO(store_col_u32(store_row_of(&b), 1, &out->current_version, op), done);
    KMS_GUARD_GOTO(store_col_u32(store_row_of(&b), 2, &out->last_version, op), done);
    out->deletion_at = store_col_int64(store_row_of(&b), 3);
    out->state = (enum kms_key_state)state;
    KMS_ENSURE_GOTO(out->state != KMS_KEY_CREATING || creating_ok, done, KMS_ERR_NOT_FOUND,
                    "store: %s: key %s not found", op, key_id);
done:
    store_done(&b);
    return rc;
}
