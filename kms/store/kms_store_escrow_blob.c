/*
 * kms_store_escrow_blob.c - escrow blobs in the store: each key version's
 * wrapped copies, written at key birth (the contract is in kms_store.h).
 * Rare operations: statements are prepared per call.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

#define ESCROW_COLS "key_id, version, part, token, escrow_hsm_id, blob, created_at"

static void bind_escrow(struct store_bind *b, const void *varg)
{
    const struct kms_escrow_record *r = varg;
    store_bind_text(b, 1, r->key_id);
    store_bind_int(b, 2, r->version);
    store_bind_int(b, 3, r->part);
    store_bind_text(b, 4, r->token);
    store_bind_blob(b, 5, r->escrow_hsm_id, KMS_HSM_ID_LEN);
    store_bind_blob(b, 6, r->blob, (int)r->blob_len);
    store_bind_int(b, 7, r->created_at);
}

struct escrow_insert_arg {
    const char *key_id;
    uint32_t version;
    const char *sql;
    store_binder bind;
    const void *row;
};

static kms_err escrow_insert_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct escrow_insert_arg *a = varg;
    enum kms_version_state vs = KMS_VERSION_ACTIVE;
    KMS_GUARD(store_version_state_get(c, a->key_id, a->version, &vs, op));
    KMS_ENSURE(vs == KMS_VERSION_CREATING, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s version %" PRIu32 " is not being created", op, a->key_id,
               a->version);
    return store_exec_one(c, a->sql, op, a->bind, a->row, NULL);
}

kms_err store_escrow_insert(struct kms_store *store, const char *key_id, uint32_t version,
                            const char *sql, store_binder bind, const void *row, const char *op)
{
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct escrow_insert_arg a = {key_id, version, sql, bind, row};
    return store_tx_run(db, true, escrow_insert_tx, &a, op);
}

kms_err kms_store_escrow_put(struct kms_store *store, const struct kms_escrow_record *r)
{
    static const char op[] = "store escrow blob";
    KMS_ENSURE(store != NULL && r != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(r->key_id, op));
    KMS_ENSURE(r->blob_len >= 1 && r->blob_len <= KMS_ESCROW_BLOB_MAX && (r->part == 0 || r->part == 1),
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad blob length or part", op);
    return store_escrow_insert(store, r->key_id, r->version,
                               "INSERT INTO escrow_blobs (" ESCROW_COLS ") VALUES (?1, ?2, ?3, "
                               "?4, ?5, ?6, ?7)",
                               bind_escrow, r, op);
}

static kms_err read_escrow(const struct store_row *st, void *elem, const char *op)
{
    struct kms_escrow_record *r = elem;
    int part = 0;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &r->version, op));
    KMS_GUARD(store_col_enum(st, 2, 0, 1, &part, op));
    r->part = part;
    KMS_GUARD(store_col_text(st, 3, r->token, sizeof(r->token), op));
    KMS_GUARD(store_col_hsm_id(st, 4, r->escrow_hsm_id, op));
    const uint8_t *blob = NULL;
    size_t len = 0;
    store_col_blob(st, 5, &blob, &len);
    KMS_ENSURE(blob != NULL && len >= 1 && len <= KMS_ESCROW_BLOB_MAX, KMS_ERR_INTERNAL,
               "store: %s: stored escrow blob has a bad length", op);
    memcpy(r->blob, blob, len);
    r->blob_len = len;
    r->created_at = store_col_int64(st, 6);
    return KMS_OK;
}

kms_err kms_store_escrow_list(struct kms_store *store, const char *key_id,
                              struct kms_escrow_record **out, size_t *out_n)
{
    static const char op[] = "list escrow blobs";
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK; /* no key, no escrow copies (as one database answers) */
    KMS_GUARD(rc);
    void *arr = NULL;
    rc = store_list_query(db,
                                  "SELECT " ESCROW_COLS " FROM escrow_blobs WHERE key_id = ?1 "
                                  "ORDER BY version, part",
                                  op, store_bind_text1, key_id, sizeof(struct kms_escrow_record),
                                  KMS_ESCROW_LIST_MAX, read_escrow, &arr, out_n);
    *out = arr;
    return rc;
}

