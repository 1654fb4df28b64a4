/*
 * kms_store_escrow.c - recovery requests in the store (escrow blobs:
 * kms_store_escrow_blob.c).
 *
 * The contract is in kms_store.h. Like imports, these are rare operations:
 * statements are prepared per call.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

#define RECOVERY_COLS                                                                            \
    "recovery_id, tenant, key_id, region, versions, mode, justification, justification_text, " \
    "case_reference, restore_state, recipient, recipient_sha256, requester, state, "          \
    "approvals_required, time_lock_s, created_at, expires_at, quorum_at, executable_at, "       \
    "executed_at, cancelled_by, cancel_reason"

const char *kms_recovery_state_name(enum kms_recovery_state state)
{
    switch (state) {
    case KMS_RECOVERY_PENDING:
        return "PENDING_APPROVAL";
    case KMS_RECOVERY_APPROVED:
        return "APPROVED";
    case KMS_RECOVERY_EXECUTED:
        return "EXECUTED";
    case KMS_RECOVERY_CANCELLED:
        return "CANCELLED";
    case KMS_RECOVERY_EXPIRED:
        return "EXPIRED";
    }
    return "UNKNOWN";
}

/* ---- recoveries ------------------------------------------------------------------ */

static void versions_text(const struct kms_recovery_record *r, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < r->n_versions && off < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%" PRIu32, i ? "," : "", r->versions[i]);
}

static kms_err parse_versions(const char *s, struct kms_recovery_record *r, const char *op)
{
    r->n_versions = 0;
    while (*s) {
        char *end = NULL;
        unsigned long v = strtoul(s, &end, 10);
        KMS_ENSURE(end != s && v >= 1 && v <= UINT32_MAX && r->n_versions < KMS_RECOVERY_MAX_VERSIONS &&
                       (*end == ',' || *end == '\0'),
                   KMS_ERR_INTERNAL, "store: %s: stored version list is malformed", op);
        r->versions[r->n_versions++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    return KMS_OK;
}

static void bind_recovery(struct store_bind *b, const void *varg)
{
    const struct kms_recovery_record *r = varg;
    char versions[KMS_RECOVERY_MAX_VERSIONS * 11 + 1];
    versions_text(r, versions, sizeof(versions));
    store_bind_text(b, 1, r->recovery_id);
    store_bind_text(b, 2, r->tenant);
    store_bind_text(b, 3, r->key_id);
    store_bind_text(b, 4, r->region);
    /* A static binding would keep a pointer to this stack buffer. */
    store_bind_text_copy(b, 5, versions);
    store_bind_int(b, 6, r->mode);
    store_bind_int(b, 7, r->justification);
    store_bind_text(b, 8, r->justification_text);
    store_bind_text(b, 9, r->case_reference);
    store_bind_int(b, 10, r->restore_state);
    store_bind_text(b, 11, r->recipient);
    store_bind_text(b, 12, r->recipient_sha256);
    store_bind_text(b, 13, r->requester);
    store_bind_int(b, 14, r->state);
    store_bind_int(b, 15, r->approvals_required);
    store_bind_int(b, 16, r->time_lock_s);
    store_bind_int(b, 17, r->created_at);
    store_bind_int(b, 18, r->expires_at);
    store_bind_int(b, 19, r->quorum_at);
    store_bind_int(b, 20, r->executable_at);
    store_bind_int(b, 21, r->executed_at);
    store_bind_text(b, 22, r->cancelled_by);
    store_bind_text(b, 23, r->cancel_reason);
}

struct recovery_insert_arg {
    const struct kms_recovery_record *r;
    size_t max_open;
    size_t *out_open;
};

static kms_err recovery_insert_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct recovery_insert_arg *ia = varg;
    const struct kms_recovery_record *r = ia->r;
    /* The count and the insert in one write transaction: two requests that
     * both counted 7 cannot both insert the 8th and the 9th. */
    struct store_text_int a = {r->key_id, r->created_at};
    int64_t open = 0;
    KMS_GUARD(store_query_int(c,
                              "SELECT count(*) FROM recoveries WHERE key_id = ?1 "
                              "AND state IN (1, 2) AND expires_at > ?2",
                              op, store_bind_text_int, &a, &open, NULL));
    *ia->out_open = (size_t)open;
    KMS_ENSURE((uint64_t)open < (uint64_t)ia->max_open, KMS_ERR_RESOURCE_EXHAUSTED,
               "key already has %" PRId64 " open recoveries (at most %zu): cancel one first",
               open, ia->max_open);
    return store_exec_one(c,
                          "INSERT INTO recoveries (" RECOVERY_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, "
                          "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
                          "?20, ?21, ?22, ?23)",
                          op, bind_recovery, r, NULL);
}

kms_err kms_store_recovery_insert(struct kms_store *store, const struct kms_recovery_record *r,
                                  size_t max_open, size_t *out_open)
{
    static const char op[] = "insert recovery";
    KMS_ENSURE(store != NULL && r != NULL && out_open != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out_open = 0;
    KMS_ENSURE(max_open >= 1, KMS_ERR_USAGE, "store: %s: max_open must be positive", op);
    KMS_ENSURE(strlen(r->recovery_id) == KMS_RECOVERY_ID_LEN && r->n_versions >= 1 &&
                   r->n_versions <= KMS_RECOVERY_MAX_VERSIONS && r->state == KMS_RECOVERY_PENDING &&
                   r->approvals_required >= 1 && r->expires_at > r->created_at,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: malformed recovery", op);
    KMS_GUARD(store_check_key_id(r->key_id, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, r->key_id, &db, op));
    struct recovery_insert_arg a = {r, max_open, out_open};
    return store_tx_run(db, true, recovery_insert_tx, &a, op);
}

static kms_err read_recovery(const struct store_row *st, void *elem, const char *op)
{
    struct kms_recovery_record *r = elem;
    int state = 0;
    char versions[KMS_RECOVERY_MAX_VERSIONS * 11 + 1];
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->recovery_id, sizeof(r->recovery_id), op));
    KMS_GUARD(store_col_text(st, 1, r->tenant, sizeof(r->tenant), op));
    KMS_GUARD(store_col_text(st, 2, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(store_col_text(st, 3, r->region, sizeof(r->region), op));
    KMS_GUARD(store_col_text(st, 4, versions, sizeof(versions), op));
    KMS_GUARD(parse_versions(versions, r, op));
    r->mode = (int)store_col_int64(st, 5);
    r->justification = (int)store_col_int64(st, 6);
    KMS_GUARD(store_col_text(st, 7, r->justification_text, sizeof(r->justification_text), op));
    KMS_GUARD(store_col_text(st, 8, r->case_reference, sizeof(r->case_reference), op));
    r->restore_state = (int)store_col_int64(st, 9);
    KMS_GUARD(store_col_text(st, 10, r->recipient, sizeof(r->recipient), op));
    KMS_GUARD(store_col_text(st, 11, r->recipient_sha256, sizeof(r->recipient_sha256), op));
    KMS_GUARD(store_col_text(st, 12, r->requester, sizeof(r->requester), op));
    KMS_GUARD(store_col_enum(st, 13, KMS_RECOVERY_PENDING, KMS_RECOVERY_EXPIRED, &state, op));
    r->state = (enum kms_recovery_state)state;
    KMS_GUARD(store_col_u32(st, 14, &r->approvals_required, op));
    KMS_GUARD(store_col_u32(st, 15, &r->time_lock_s, op));
    r->created_at = store_col_int64(st, 16);
    r->expires_at = store_col_int64(st, 17);
    r->quorum_at = store_col_int64(st, 18);
    r->executable_at = store_col_int64(st, 19);
    r->executed_at = store_col_int64(st, 20);
    KMS_GUARD(store_col_text(st, 21, r->cancelled_by, sizeof(r->cancelled_by), op));
    KMS_GUARD(store_col_text(st, 22, r->cancel_reason, sizeof(r->cancel_reason), op));
    return KMS_OK;
}

static kms_err recovery_row_get(struct store_conn *c, const char *id,
                                struct kms_recovery_record *out, const char *op)
{
    struct store_bind b;
    bool row = false;
    KMS_GUARD(store_prep(c, "SELECT " RECOVERY_COLS " FROM recoveries WHERE recovery_id = ?1", op,
                         &b));
    store_bind_text(&b, 1, id);
    kms_err rc = store_step(&b, op, &row);
    if (rc == KMS_OK && !row)
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "recovery not found");
    if (rc == KMS_OK)
        rc = read_recovery(store_row_of(&b), out, op);
    store_fin(&b);
    return rc;
}

static kms_err read_approval(const struct store_row *st, void *elem, const char *op)
{
    struct kms_recovery_approval *a = elem;
    memset(a, 0, sizeof(*a));
    KMS_GUARD(store_col_text(st, 0, a->officer, sizeof(a->officer), op));
    a->approved_at = store_col_int64(st, 1);
    return KMS_OK;
}

struct recovery_get_arg {
    const char *recovery_id;
    struct kms_recovery_record *out;
    struct kms_recovery_approval **out_appr;
    size_t *out_n_appr;
};

static kms_err recovery_get_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct recovery_get_arg *a = varg;
    KMS_GUARD(recovery_row_get(c, a->recovery_id, a->out, op));
    if (a->out_appr == NULL)
        return KMS_OK;
    void *arr = NULL;
    kms_err rc = store_prep_collect(c,
                                    "SELECT officer, approved_at FROM recovery_approvals "
                                    "WHERE recovery_id = ?1 ORDER BY approved_at, officer",
                                    op, store_bind_text1, a->recovery_id,
                                    sizeof(struct kms_recovery_approval), 1024, read_approval,
                                    &arr, a->out_n_appr);
    *a->out_appr = arr;
    return rc;
}

/* The database holding a recovery (the one of its key). */
static kms_err recovery_route(struct kms_store *store, const char *recovery_id,
                              struct store_db **out, const char *op)
{
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    kms_err rc = store_route_row(store, "SELECT 1 FROM recoveries WHERE recovery_id = ?1",
                                 store_bind_text1, recovery_id, out, op);
    if (rc == KMS_ERR_NOT_FOUND)
        rc = kms_err_set(rc, "recovery not found");
    return rc;
}

kms_err kms_store_recovery_get(struct kms_store *store, const char *recovery_id,
                               struct kms_recovery_record *out,
                               struct kms_recovery_approval **out_appr, size_t *out_n_appr)
{
    static const char op[] = "get recovery";
    if (out_appr) {
        *out_appr = NULL;
        *out_n_appr = 0;
    }
    KMS_ENSURE(recovery_id != NULL && strlen(recovery_id) == KMS_RECOVERY_ID_LEN &&
                   strspn(recovery_id, "0123456789abcdef") == KMS_RECOVERY_ID_LEN,
               KMS_ERR_NOT_FOUND, "recovery not found");
    struct store_db *db = NULL;
    KMS_GUARD(recovery_route(store, recovery_id, &db, op));
    struct recovery_get_arg a = {recovery_id, out, out_appr, out_n_appr};
    return store_tx_run(db, false, recovery_get_tx, &a, op);
}

struct list_arg {
    const char *tenant, *key_id;
    bool open_only;
};

static void bind_list(struct store_bind *b, const void *varg)
{
    const struct list_arg *a = varg;
    store_bind_text(b, 1, a->tenant);
    store_bind_text(b, 2, a->key_id);
    store_bind_int(b, 3, a->open_only ? 1 : 0);
}

/* The list's order: newest first, then by id. */
static int recovery_list_cmp(const void *pa, const void *pb)
{
    const struct kms_recovery_record *a = pa, *b = pb;
    if (a->created_at != b->created_at)
        return a->created_at > b->created_at ? -1 : 1;
    return strcmp(a->recovery_id, b->recovery_id);
}

kms_err kms_store_recovery_list(struct kms_store *store, const char *tenant, const char *key_id,
                                bool open_only, struct kms_recovery_record **out, size_t *out_n)
{
    static const char op[] = "list recoveries";
    static const char sql[] = "SELECT " RECOVERY_COLS " FROM recoveries WHERE tenant = ?1 "
                              "AND (?2 = '' OR key_id = ?2) AND (?3 = 0 OR state IN (1, 2)) "
                              "ORDER BY created_at DESC, recovery_id LIMIT 100";
    struct list_arg a = {tenant, key_id ? key_id : "", open_only};
    void *arr = NULL;
    size_t n = 0;
    kms_err rc;
    *out = NULL;
    *out_n = 0;
    if (key_id != NULL && key_id[0] != '\0' && store->n > 1) {
        /* One key's recoveries are in its region's database; a key that
         * is nowhere has none. */
        struct store_db *db = NULL;
        rc = store_check_key_id(key_id, op);
        if (rc == KMS_OK)
            rc = store_route_key(store, key_id, &db, op);
        if (rc == KMS_ERR_NOT_FOUND || rc == KMS_ERR_INVALID_ARGUMENT)
            return KMS_OK;
        KMS_GUARD(rc);
        rc = store_list_query(db, sql, op, bind_list, &a, sizeof(struct kms_recovery_record),
                              KMS_RECOVERY_LIST_MAX, read_recovery, &arr, &n);
    } else {
        rc = store_list_all(store, true, sql, op, bind_list, &a,
                            sizeof(struct kms_recovery_record), KMS_RECOVERY_LIST_MAX,
                            read_recovery, &arr, &n);
        if (rc == KMS_OK && store->n > 1 && n > 1)
            qsort(arr, n, sizeof(struct kms_recovery_record), recovery_list_cmp);
    }
    if (rc != KMS_OK) {
        free(arr);
        return rc;
    }
    *out = arr;
    *out_n = n < KMS_RECOVERY_LIST_MAX ? n : KMS_RECOVERY_LIST_MAX;
    return KMS_OK;
}

struct approve_arg {
    const char *id, *officer;
    const uint8_t *sig;
    size_t sig_len;
    int64_t now;
};

static void bind_approve(struct store_bind *b, const void *varg)
{
    const struct approve_arg *a = varg;
    store_bind_text(b, 1, a->id);
    store_bind_text(b, 2, a->officer);
    store_bind_blob(b, 3, a->sig, (int)a->sig_len);
    store_bind_int(b, 4, a->now);
}

struct recovery_approve_arg {
    struct approve_arg row;
    bool *out_counted;
};

static kms_err recovery_approve_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct recovery_approve_arg *ra = varg;
    const char *recovery_id = ra->row.id;
    int64_t now = ra->row.now;
    struct kms_recovery_record r;
    KMS_GUARD(recovery_row_get(c, recovery_id, &r, op));
    KMS_ENSURE(r.state == KMS_RECOVERY_PENDING && now < r.expires_at,
               KMS_ERR_FAILED_PRECONDITION, "recovery is %s; approvals are taken only while "
               "it is PENDING_APPROVAL and not expired",
               now >= r.expires_at && r.state == KMS_RECOVERY_PENDING
                   ? "expired"
                   : kms_recovery_state_name(r.state));
    int changed = 0;
    KMS_GUARD(store_exec_one(c,
                             "INSERT INTO recovery_approvals (recovery_id, officer, "
                             "signature, approved_at) VALUES (?1, ?2, ?3, ?4) "
                             "ON CONFLICT DO NOTHING",
                             op, bind_approve, &ra->row, &changed));
    *ra->out_counted = changed == 1;
    int64_t count = 0;
    KMS_GUARD(store_query_int(c, "SELECT count(*) FROM recovery_approvals WHERE recovery_id = ?1",
                              op, store_bind_text1, recovery_id, &count, NULL));
    struct store_text_int quorum = {recovery_id, now};
    if (count < (int64_t)r.approvals_required)
        return KMS_OK;
    return store_exec_one(c,
                          "UPDATE recoveries SET state = 2, quorum_at = ?2, "
                          "executable_at = ?2 + time_lock_s WHERE recovery_id = ?1 "
                          "AND state = 1",
                          op, store_bind_text_int, &quorum, NULL);
}

kms_err kms_store_recovery_approve(struct kms_store *store, const char *recovery_id,
                                   const char *officer, const uint8_t *sig, size_t sig_len,
                                   int64_t now, bool *out_counted)
{
    static const char op[] = "approve recovery";
    *out_counted = false;
    KMS_ENSURE(sig_len >= 1 && sig_len <= KMS_RECOVERY_SIG_MAX, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: signature length", op);
    struct store_db *db = NULL;
    KMS_GUARD(recovery_route(store, recovery_id, &db, op));
    struct recovery_approve_arg a = {{recovery_id, officer, sig, sig_len, now}, out_counted};
    kms_err rc = store_tx_run(db, true, recovery_approve_tx, &a, op);
    if (rc != KMS_OK)
        *out_counted = false;
    return rc;
}

struct finish_arg {
    const char *id;
    int expected, to;
    int64_t now;
    const char *by, *reason;
};

static void bind_finish(struct store_bind *b, const void *varg)
{
    const struct finish_arg *a = varg;
    store_bind_text(b, 1, a->id);
    store_bind_int(b, 2, a->expected);
    store_bind_int(b, 3, a->to);
    store_bind_int(b, 4, a->now);
    store_bind_text(b, 5, a->by ? a->by : "");
    store_bind_text(b, 6, a->reason ? a->reason : "");
}

static kms_err recovery_finish_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct finish_arg *a = varg;
    int changed = 0;
    KMS_GUARD(store_exec_one(c,
                             "UPDATE recoveries SET state = ?3, "
                             "executed_at = CASE WHEN ?3 = 3 THEN ?4 ELSE executed_at END, "
                             "cancelled_by = ?5, cancel_reason = ?6 "
                             "WHERE recovery_id = ?1 AND state = ?2",
                             op, bind_finish, a, &changed));
    KMS_ENSURE(changed == 1, KMS_ERR_FAILED_PRECONDITION, "recovery is no longer %s",
               kms_recovery_state_name((enum kms_recovery_state)a->expected));
    return KMS_OK;
}

kms_err kms_store_recovery_finish(struct kms_store *store, const char *recovery_id,
                                  enum kms_recovery_state expected,
                                  enum kms_recovery_state new_state, int64_t now, const char *by,
                                  const char *reason)
{
    static const char op[] = "finish recovery";
    KMS_ENSURE(new_state == KMS_RECOVERY_CANCELLED || new_state == KMS_RECOVERY_EXPIRED ||
                   new_state == KMS_RECOVERY_EXECUTED,
               KMS_ERR_USAGE, "store: %s: bad target state", op);
    struct store_db *db = NULL;
    KMS_GUARD(recovery_route(store, recovery_id, &db, op));
    struct finish_arg a = {recovery_id, expected, new_state, now, by, reason};
    return store_tx_run(db, true, recovery_finish_tx, &a, op);
}

struct recovery_restore_arg {
    const char *recovery_id;
    int64_t now;
    enum kms_key_state key_state;
};

static kms_err recovery_restore_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct recovery_restore_arg *a = varg;
    struct kms_recovery_record r;
    struct store_key_row row = {0};
    kms_err rc;
    KMS_GUARD(recovery_row_get(c, a->recovery_id, &r, op));
    KMS_ENSURE(r.state == KMS_RECOVERY_APPROVED, KMS_ERR_FAILED_PRECONDITION,
               "recovery is %s, not APPROVED", kms_recovery_state_name(r.state));
    KMS_GUARD(store_key_row_get(c, r.key_id, false, &row, op));
    KMS_ENSURE(row.state == KMS_KEY_DESTROYED, KMS_ERR_FAILED_PRECONDITION,
               "key is %s; RESTORE brings back a DESTROYED key", kms_key_state_name(row.state));
    uint32_t highest = 0;
    for (size_t i = 0; i < r.n_versions; i++) {
        struct store_bind b;
        KMS_GUARD(store_prep(c,
                             "UPDATE key_versions SET state = 1 WHERE key_id = ?1 AND "
                             "version = ?2 AND state = 2",
                             op, &b));
        store_bind_text(&b, 1, r.key_id);
        store_bind_int(&b, 2, r.versions[i]);
        rc = store_run(&b, op);
        int changed = (int)store_changes(c);
        store_fin(&b);
        KMS_GUARD(rc);
        KMS_ENSURE(changed == 1, KMS_ERR_FAILED_PRECONDITION,
                   "key version %" PRIu32 " is not DESTROYED", r.versions[i]);
        if (r.versions[i] > highest)
            highest = r.versions[i];
    }
    struct store_bind b;
    KMS_GUARD(store_prep(c,
                         "UPDATE keys SET state = ?2, deletion_at = 0, current_version = ?3 "
                         "WHERE key_id = ?1 AND state = 5",
                         op, &b));
    store_bind_text(&b, 1, r.key_id);
    store_bind_int(&b, 2, a->key_state);
    store_bind_int(&b, 3, highest);
    rc = store_run(&b, op);
    store_fin(&b);
    KMS_GUARD(rc);
    struct store_text_int done = {a->recovery_id, a->now};
    return store_exec_one(c,
                          "UPDATE recoveries SET state = 3, executed_at = ?2 "
                          "WHERE recovery_id = ?1 AND state = 2",
                          op, store_bind_text_int, &done, NULL);
}

kms_err kms_store_recovery_restore(struct kms_store *store, const char *recovery_id, int64_t now,
                                   enum kms_key_state key_state)
{
    static const char op[] = "restore key";
    KMS_ENSURE(key_state == KMS_KEY_ENABLED || key_state == KMS_KEY_DISABLED, KMS_ERR_USAGE,
               "store: %s: bad key state", op);
    struct store_db *db = NULL;
    KMS_GUARD(recovery_route(store, recovery_id, &db, op));
    struct recovery_restore_arg a = {recovery_id, now, key_state};
    return store_tx_run(db, true, recovery_restore_tx, &a, op);
}
