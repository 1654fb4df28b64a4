/*
 * kms_store_escrow_pair.c - escrow rows of signing key pairs (schema 5;
 * the contract is in kms_store.h). Rare operations: statements are
 * prepared per call, as for escrow_blobs.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

#define PAIR_COLS "key_id, version, token, escrow_hsm_id, blob, public_key, created_at"

static void bind_pair(struct store_bind *b, const void *varg)
{
    const struct kms_escrow_pair_record *r = varg;
    store_bind_text(b, 1, r->key_id);
    store_bind_int(b, 2, r->version);
    store_bind_text(b, 3, r->token);
    store_bind_blob(b, 4, r->escrow_hsm_id, KMS_HSM_ID_LEN);
    store_bind_blob(b, 5, r->blob, (int)r->blob_len);
    store_bind_blob(b, 6, r->public_key, (int)r->public_key_len);
    store_bind_int(b, 7, r->created_at);
}

kms_err kms_store_escrow_pair_put(struct kms_store *store, const struct kms_escrow_pair_record *r)
{
    static const char op[] = "store escrow of a key pair";
    KMS_ENSURE(store != NULL && r != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(r->key_id, op));
    KMS_ENSURE(r->blob_len >= 16 && r->blob_len <= KMS_ESCROW_PAIR_BLOB_MAX &&
                   r->public_key_len >= 1 && r->public_key_len <= KMS_ESCROW_PAIR_SPKI_MAX,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: bad blob or public key length", op);
    return store_escrow_insert(store, r->key_id, r->version,
                               "INSERT INTO escrow_pairs (" PAIR_COLS ") VALUES (?1, ?2, ?3, ?4, "
                               "?5, ?6, ?7)",
                               bind_pair, r, op);
}

static kms_err col_blob(const struct store_row *st, int col, uint8_t *dst, size_t min,
                        size_t max, size_t *out_len, const char *op)
{
    const uint8_t *v = NULL;
    size_t len = 0;
    store_col_blob(st, col, &v, &len);
    KMS_ENSURE(v != NULL && len >= min && len <= max, KMS_ERR_INTERNAL,
               "store: %s: stored escrow of a key pair has a bad length", op);
    if (dst)
        memcpy(dst, v, len);
    *out_len = len;
    return KMS_OK;
}

static kms_err read_pair(const struct store_row *st, void *elem, const char *op)
{
    struct kms_escrow_pair_record *out = elem;
    KMS_GUARD(store_col_text(st, 0, out->key_id, sizeof(out->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &out->version, op));
    KMS_GUARD(store_col_text(st, 2, out->token, sizeof(out->token), op));
    KMS_GUARD(store_col_hsm_id(st, 3, out->escrow_hsm_id, op));
    KMS_GUARD(col_blob(st, 4, out->blob, 16, KMS_ESCROW_PAIR_BLOB_MAX, &out->blob_len, op));
    KMS_GUARD(col_blob(st, 5, out->public_key, 1, KMS_ESCROW_PAIR_SPKI_MAX,
                       &out->public_key_len, op));
    out->created_at = store_col_int64(st, 6);
    return KMS_OK;
}

kms_err kms_store_escrow_pair_get(struct kms_store *store, const char *key_id, uint32_t version,
                                  struct kms_escrow_pair_record *out)
{
    static const char op[] = "get escrow of a key pair";
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    memset(out, 0, sizeof(*out));
    struct store_text_int a = {key_id, version};
    bool found = false;
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    KMS_ENSURE(rc != KMS_ERR_NOT_FOUND, KMS_ERR_NOT_FOUND,
               "key %s version %" PRIu32 " has no escrow", key_id, version);
    KMS_GUARD(rc);
    KMS_GUARD(store_query_row(db,
                              "SELECT " PAIR_COLS " FROM escrow_pairs WHERE key_id = ?1 AND "
                              "version = ?2",
                              op, store_bind_text_int, &a, read_pair, out, &found));
    KMS_ENSURE(found, KMS_ERR_NOT_FOUND, "key %s version %" PRIu32 " has no escrow", key_id,
               version);
    return KMS_OK;
}

static kms_err read_pair_entry(const struct store_row *st, void *elem, const char *op)
{
    struct kms_escrow_record *r = elem;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &r->version, op));
    KMS_GUARD(store_col_text(st, 2, r->token, sizeof(r->token), op));
    KMS_GUARD(store_col_hsm_id(st, 3, r->escrow_hsm_id, op));
    r->part = KMS_ESCROW_PART_PAIR;
    r->blob_len = 0;
    r->created_at = store_col_int64(st, 4);
    return KMS_OK;
}

kms_err kms_store_escrow_pair_list(struct kms_store *store, const char *key_id,
                                   struct kms_escrow_record **out, size_t *out_n)
{
    static const char op[] = "list escrow of a key pair";
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    kms_err rc = store_route_key(store, key_id, &db, op);
    if (rc == KMS_ERR_NOT_FOUND)
        return KMS_OK; /* no key, no escrow (as one database answers) */
    KMS_GUARD(rc);
    void *arr = NULL;
    rc = store_list_query(db,
                                  "SELECT key_id, version, token, escrow_hsm_id, created_at FROM "
                                  "escrow_pairs WHERE key_id = ?1 ORDER BY version",
                                  op, store_bind_text1, key_id, sizeof(struct kms_escrow_record),
                                  KMS_ESCROW_LIST_MAX, read_pair_entry, &arr, out_n);
    *out = arr;
    return rc;
}
