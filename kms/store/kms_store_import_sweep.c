/*
 * kms_store_import_sweep.c - import tokens at the end of their life: which
 * are due (expired, or spent and past their grace), retiring and closing
 * them, purging closed ones, and the HSM ids of a token's key pairs (the
 * contract is in kms_store.h; statements are prepared per call, as in
 * kms_store_import.c).
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

struct due_arg {
    int64_t now, grace;
    size_t limit;
};

static void bind_due(struct store_bind *b, const void *varg)
{
    const struct due_arg *a = varg;
    store_bind_int(b, 1, a->now);
    store_bind_int(b, 2, a->grace);
    store_bind_int(b, 3, (int64_t)a->limit);
}

static int token_due_cmp(const void *pa, const void *pb)
{
    const struct kms_import_token_record *a = pa, *b = pb;
    if (a->expires_at != b->expires_at)
        return a->expires_at < b->expires_at ? -1 : 1;
    return memcmp(a->token_id, b->token_id, KMS_IMPORT_TOKEN_ID_LEN);
}

/* A region whose database is away is skipped (the others' tokens are
 * still retired on time). */
kms_err kms_store_import_tokens_due(struct kms_store *store, int64_t now, int64_t grace_s,
                                    size_t limit, struct kms_import_token_record **out,
                                    size_t *out_n)
{
    static const char op[] = "list import tokens due";
    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_ENSURE(limit >= 1 && limit <= KMS_PAGE_SIZE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: limit must be 1..%d", op, KMS_PAGE_SIZE_MAX);
    KMS_ENSURE(grace_s >= 0, KMS_ERR_INVALID_ARGUMENT, "store: %s: negative grace", op);
    void *arr = NULL;
    size_t n = 0;
    KMS_GUARD(store_list_all(
        store, false,
        "SELECT " STORE_IMPORT_TOKEN_COLS " FROM import_tokens WHERE state <> 4 AND ("
        "  state = 3"
        "  OR (state = 1 AND expires_at <= ?1)"
        "  OR (state = 2 AND expires_at + ?2 <= ?1)"
        "  OR (state = 0 AND created_at + ?2 <= ?1))"
        " ORDER BY expires_at, token_id LIMIT ?3",
        op, bind_due, &(struct due_arg){now, grace_s, limit},
        sizeof(struct kms_import_token_record), limit, store_import_read_token, &arr, &n));
    if (store->n > 1 && n > 1)
        qsort(arr, n, sizeof(struct kms_import_token_record), token_due_cmp);
    *out = arr;
    *out_n = n < limit ? n : limit;
    return KMS_OK;
}

kms_err kms_store_import_token_retire(struct kms_store *store,
                                      const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                      enum kms_import_state expected, enum kms_import_end end)
{
    static const char op[] = "retire import token";
    KMS_ENSURE(expected == KMS_IMPORT_CREATING || expected == KMS_IMPORT_ISSUED ||
                   expected == KMS_IMPORT_CLAIMED,
               KMS_ERR_USAGE, "store: %s: only a live token can be retired", op);
    KMS_ENSURE(end != KMS_IMPORT_END_NONE && end != KMS_IMPORT_END_USED, KMS_ERR_USAGE,
               "store: %s: retiring needs a reason other than use", op);
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    return store_import_cas_tx(db, token_id, expected, KMS_IMPORT_SPENT, end, false, op);
}

kms_err kms_store_import_token_close(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN])
{
    static const char op[] = "close import token";
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    return store_import_cas_tx(db, token_id, KMS_IMPORT_SPENT, KMS_IMPORT_CLOSED,
                               KMS_IMPORT_END_NONE, true, op);
}

static void bind_before(struct store_bind *b, const void *arg)
{
    store_bind_int(b, 1, *(const int64_t *)arg);
}

struct purge_arg {
    int64_t before;
    int changed;
};

static kms_err purge_tx(struct store_conn *c, void *varg, const char *op)
{
    struct purge_arg *a = varg;
    return store_exec_one(c, "DELETE FROM import_tokens WHERE state = 4 AND expires_at < ?1", op,
                          bind_before, &a->before, &a->changed);
}

static kms_err purge_db(struct store_db *db, void *varg, const char *op)
{
    struct purge_arg *a = varg;
    struct purge_arg one = {a->before, 0};
    KMS_GUARD(store_tx_run(db, true, purge_tx, &one, op));
    a->changed += one.changed;
    return KMS_OK;
}

kms_err kms_store_import_tokens_purge(struct kms_store *store, int64_t before, size_t *out_n)
{
    static const char op[] = "purge import tokens";
    if (out_n)
        *out_n = 0;
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    struct purge_arg a = {before, 0};
    kms_err rc = store_each_db(store, false, purge_db, &a, op);
    if (rc == KMS_OK && out_n)
        *out_n = (size_t)a.changed;
    return rc;
}

static int hsm_id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct kms_hsm_id));
}

/* Every database must answer (orphan detection, as for key versions). */
kms_err kms_store_import_hsm_ids_for_token(struct kms_store *store, const char *token,
                                           struct kms_hsm_id **out, size_t *out_n)
{
    static const char op[] = "list wrapping key ids of token";
    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_token(token, KMS_TOKEN_LABEL_MAX + 1, op));
    void *arr = NULL;
    size_t n = 0;
    KMS_GUARD(store_list_all(store, true,
                             "SELECT hsm_id FROM import_tokens WHERE token = ?1 AND "
                             "state <> 4 ORDER BY hsm_id",
                             op, store_bind_text1, token, sizeof(struct kms_hsm_id), SIZE_MAX,
                             store_read_hsm_id, &arr, &n));
    if (store->n > 1 && n > 1)
        qsort(arr, n, sizeof(struct kms_hsm_id), hsm_id_cmp);
    *out = arr;
    *out_n = n;
    return KMS_OK;
}
