/*
 * kms_store_import.c - BYOK in the store: import tokens (issue, claim,
 * release, commit) and key check values; kms_store_import_sweep.c retires,
 * closes and purges them.
 *
 * The contract is in kms_store.h. Statements here are prepared per call
 * rather than cached with the store's hot statements: imports are rare (a
 * few per key per year) and the HSM work around each one costs milliseconds
 * to seconds, next to which a prepare is noise.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

const char *kms_import_state_name(enum kms_import_state state)
{
    switch (state) {
    case KMS_IMPORT_CREATING:
        return "CREATING";
    case KMS_IMPORT_ISSUED:
        return "ISSUED";
    case KMS_IMPORT_CLAIMED:
        return "CLAIMED";
    case KMS_IMPORT_SPENT:
        return "SPENT";
    case KMS_IMPORT_CLOSED:
        return "CLOSED";
    }
    return "UNKNOWN";
}

static kms_err check_token_id(const uint8_t *token_id, const char *op)
{
    KMS_ENSURE(token_id != NULL, KMS_ERR_USAGE, "store: %s: token id is NULL", op);
    return KMS_OK;
}

/* ---- rows ---------------------------------------------------------------------- */

kms_err store_import_read_token(const struct store_row *st, void *elem, const char *op)
{
    struct kms_import_token_record *t = elem;
    int state = 0, end = 0;
    memset(t, 0, sizeof(*t));
    const uint8_t *id = NULL;
    size_t id_len = 0;
    store_col_blob(st, 0, &id, &id_len);
    KMS_ENSURE(id != NULL && id_len == KMS_IMPORT_TOKEN_ID_LEN,
               KMS_ERR_INTERNAL, "store: %s: stored token id has the wrong length", op);
    memcpy(t->token_id, id, KMS_IMPORT_TOKEN_ID_LEN);
    KMS_GUARD(store_col_text(st, 1, t->key_id, sizeof(t->key_id), op));
    KMS_GUARD(store_col_text(st, 2, t->token, sizeof(t->token), op));
    KMS_GUARD(store_col_hsm_id(st, 3, t->hsm_id, op));
    KMS_GUARD(store_col_enum(st, 4, KMS_IMPORT_CREATING, KMS_IMPORT_CLOSED, &state, op));
    KMS_GUARD(store_col_enum(st, 5, KMS_IMPORT_END_NONE, KMS_IMPORT_END_ABANDONED, &end, op));
    KMS_GUARD(store_col_u32(st, 6, &t->failures, op));
    t->created_at = store_col_int64(st, 7);
    t->expires_at = store_col_int64(st, 8);
    t->state = (enum kms_import_state)state;
    t->end = (enum kms_import_end)end;
    return KMS_OK;
}

static void bind_token_id(struct store_bind *b, const void *arg)
{
    store_bind_blob(b, 1, arg, KMS_IMPORT_TOKEN_ID_LEN);
}

/* The token row as the current transaction sees it. */
static kms_err token_row_get(struct store_conn *c, const uint8_t *token_id,
                             struct kms_import_token_record *out, const char *op)
{
    struct store_bind b;
    bool row = false;
    KMS_GUARD(store_prep(c, "SELECT " STORE_IMPORT_TOKEN_COLS " FROM import_tokens WHERE token_id = ?1", op, &b));
    bind_token_id(&b, token_id);
    kms_err rc = store_step(&b, op, &row);
    if (rc == KMS_OK && !row)
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: no such import token", op);
    if (rc == KMS_OK)
        rc = store_import_read_token(store_row_of(&b), out, op);
    store_fin(&b);
    return rc;
}

struct set_state_arg {
    const uint8_t *token_id;
    int to, from, end, failures;
};

static void bind_set_state(struct store_bind *b, const void *varg)
{
    const struct set_state_arg *a = varg;
    store_bind_blob(b, 1, a->token_id, KMS_IMPORT_TOKEN_ID_LEN);
    store_bind_int(b, 2, a->to);
    store_bind_int(b, 3, a->from);
    store_bind_int(b, 4, a->end);
    store_bind_int(b, 5, a->failures);
}

/* Compare-and-set of a token's state; end_reason and failures are written
 * too. FAILED_PRECONDITION if the state is not `from`. */
static kms_err token_cas(struct store_conn *c, const uint8_t *token_id, enum kms_import_state from,
                         enum kms_import_state to, enum kms_import_end end, uint32_t failures,
                         const char *op)
{
    struct set_state_arg a = {token_id, to, from, end, (int)failures};
    int changed = 0;
    KMS_GUARD(store_exec_one(c,
                       "UPDATE import_tokens SET state = ?2, end_reason = ?4, failures = ?5 "
                       "WHERE token_id = ?1 AND state = ?3",
                       op, bind_set_state, &a, &changed));
    KMS_ENSURE(changed == 1, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: import token is not %s", op, kms_import_state_name(from));
    return KMS_OK;
}

/* ---- issue ------------------------------------------------------------------------ */

static void bind_insert(struct store_bind *b, const void *varg)
{
    const struct kms_import_token_record *t = varg;
    store_bind_blob(b, 1, t->token_id, KMS_IMPORT_TOKEN_ID_LEN);
    store_bind_text(b, 2, t->key_id);
    store_bind_text(b, 3, t->token);
    store_bind_hsm_id(b, 4, t->hsm_id);
    store_bind_int(b, 5, t->created_at);
    store_bind_int(b, 6, t->expires_at);
}

struct token_insert_arg {
    const struct kms_import_token_record *t;
    size_t max_live;
    int64_t now;
};

static kms_err token_insert_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct token_insert_arg *a = varg;
    const struct kms_import_token_record *t = a->t;
    struct store_key_row row = {0};
    int64_t origin = 0, live = 0;
    bool found = false;

    KMS_GUARD(store_key_row_get(c, t->key_id, false, &row, op));
    KMS_GUARD(store_query_int(c, "SELECT origin FROM keys WHERE key_id = ?1", op,
                              store_bind_text1, t->key_id, &origin, &found));
    KMS_ENSURE(origin == KMS_KEY_ORIGIN_EXTERNAL, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s does not take imported material", op, t->key_id);
    KMS_ENSURE(row.state == KMS_KEY_PENDING_IMPORT || row.state == KMS_KEY_ENABLED ||
                   row.state == KMS_KEY_DISABLED,
               KMS_ERR_FAILED_PRECONDITION, "store: %s: key %s is %s", op, t->key_id,
               kms_key_state_name(row.state));
    struct store_text_int la = {t->key_id, a->now};
    KMS_GUARD(store_query_int(c,
                              "SELECT count(*) FROM import_tokens WHERE key_id = ?1 "
                              "AND state IN (0, 1, 2) AND expires_at > ?2",
                              op, store_bind_text_int, &la, &live, NULL));
    KMS_ENSURE((uint64_t)live < (uint64_t)a->max_live, KMS_ERR_RESOURCE_EXHAUSTED,
               "store: %s: key %s already has %" PRId64 " unexpired import tokens", op,
               t->key_id, live);
    return store_exec_one(c,
                          "INSERT INTO import_tokens (" STORE_IMPORT_TOKEN_COLS ") "
                          "VALUES (?1, ?2, ?3, ?4, 0, 0, 0, ?5, ?6)",
                          op, bind_insert, t, NULL);
}

kms_err kms_store_import_token_insert(struct kms_store *store,
                                      const struct kms_import_token_record *t, size_t max_live,
                                      int64_t now)
{
    static const char op[] = "insert import token";

    KMS_ENSURE(store != NULL && t != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(t->key_id, op));
    KMS_GUARD(store_check_token(t->token, sizeof(t->token), op));
    KMS_ENSURE(t->state == KMS_IMPORT_CREATING && t->end == KMS_IMPORT_END_NONE &&
                   t->failures == 0,
               KMS_ERR_INVALID_ARGUMENT, "store: %s: a new import token starts CREATING", op);
    KMS_ENSURE(t->created_at > 0 && t->expires_at > t->created_at, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: expires_at must follow created_at", op);
    KMS_ENSURE(max_live >= 1, KMS_ERR_USAGE, "store: %s: max_live must be positive", op);

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, t->key_id, &db, op));
    struct token_insert_arg a = {t, max_live, now};
    return store_tx_run(db, true, token_insert_tx, &a, op);
}

/* A token's move from one state to the next, decided from its row by a
 * token_decide function (which may refuse it). */
struct token_move {
    enum kms_import_state from, to;
    enum kms_import_end end;
    uint32_t failures;
};
typedef kms_err (*token_decide)(const struct kms_import_token_record *t, void *arg,
                                struct token_move *out, const char *op);

struct token_step_arg {
    const uint8_t *token_id;
    token_decide decide;
    void *arg;
};

static kms_err token_step_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct token_step_arg *a = varg;
    struct kms_import_token_record t;
    KMS_GUARD(token_row_get(c, a->token_id, &t, op));
    struct token_move m = {t.state, t.state, t.end, t.failures};
    KMS_GUARD(a->decide(&t, a->arg, &m, op));
    return token_cas(c, a->token_id, m.from, m.to, m.end, m.failures, op);
}

/* Read a token's row, decide its move and make it (a compare-and-set), in
 * one write transaction. */
static kms_err token_step(struct store_db *store, const uint8_t *token_id, token_decide decide,
                          void *arg, const char *op)
{
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    struct token_step_arg a = {token_id, decide, arg};
    return store_tx_run(store, true, token_step_tx, &a, op);
}

struct cas_arg {
    enum kms_import_state from, to;
    enum kms_import_end end_reason;
    bool keep_end;
};

static kms_err decide_cas(const struct kms_import_token_record *t, void *varg,
                          struct token_move *out, const char *op)
{
    const struct cas_arg *a = varg;
    (void)op;
    *out = (struct token_move){a->from, a->to, a->keep_end ? t->end : a->end_reason, t->failures};
    return KMS_OK;
}

/* One compare-and-set in its own transaction. */
kms_err store_import_cas_tx(struct store_db *store, const uint8_t *token_id,
                            enum kms_import_state from, enum kms_import_state to,
                            enum kms_import_end end_reason, bool keep_end, const char *op)
{
    struct cas_arg a = {from, to, end_reason, keep_end};
    return token_step(store, token_id, decide_cas, &a, op);
}

kms_err store_import_route(struct kms_store *store, const uint8_t *token_id,
                           struct store_db **out, const char *op)
{
    *out = NULL;
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_token_id(token_id, op));
    kms_err rc = store_route_row(store, "SELECT 1 FROM import_tokens WHERE token_id = ?1",
                                 bind_token_id, token_id, out, op);
    if (rc == KMS_ERR_NOT_FOUND)
        rc = kms_err_set(rc, "store: %s: import token not found", op);
    return rc;
}

kms_err kms_store_import_token_issue(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN])
{
    static const char op[] = "issue import token";
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    return store_import_cas_tx(db, token_id, KMS_IMPORT_CREATING, KMS_IMPORT_ISSUED, KMS_IMPORT_END_NONE,
                  false, "issue import token");
}

static kms_err token_discard_tx(struct store_conn *c, void *token_id, const char *op)
{
    int changed = 0;
    KMS_GUARD(store_exec_one(c, "DELETE FROM import_tokens WHERE token_id = ?1 AND state = 0",
                             op, bind_token_id, token_id, &changed));
    KMS_ENSURE(changed == 1, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: import token is not CREATING", op);
    return KMS_OK;
}

kms_err kms_store_import_token_discard(struct kms_store *store,
                                       const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN])
{
    static const char op[] = "discard import token";
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    return store_tx_run(db, true, token_discard_tx, (void *)token_id, op);
}

kms_err kms_store_import_token_get(struct kms_store *store,
                                   const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                   struct kms_import_token_record *out)
{
    static const char op[] = "get import token";
    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    struct store_conn *c = store_reader_take(db);
    kms_err rc = token_row_get(c, token_id, out, op);
    store_conn_give(c);
    return rc;
}

/* ---- use ------------------------------------------------------------------------------ */

struct claim_arg {
    const char *key_id;
    int64_t now;
};

static kms_err decide_claim(const struct kms_import_token_record *t, void *varg,
                            struct token_move *out, const char *op)
{
    const struct claim_arg *a = varg;
    KMS_ENSURE(strcmp(t->key_id, a->key_id) == 0, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: import token belongs to another key", op);
    KMS_ENSURE(t->expires_at > a->now, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: import token expired", op);
    out->from = KMS_IMPORT_ISSUED;
    out->to = KMS_IMPORT_CLAIMED;
    return KMS_OK;
}

kms_err kms_store_import_token_claim(struct kms_store *store,
                                     const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                     const char *key_id, int64_t now)
{
    static const char op[] = "claim import token";
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_token_id(token_id, op));
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    struct claim_arg a = {key_id, now};
    return token_step(db, token_id, decide_claim, &a, op);
}

struct release_arg {
    bool failed;
    uint32_t max_failures;
    bool burnt; /* out */
};

/* Back to ISSUED, one failure more if failed; SPENT once failures reach
 * max_failures. */
static kms_err decide_release(const struct kms_import_token_record *t, void *varg,
                              struct token_move *out, const char *op)
{
    struct release_arg *a = varg;
    (void)op;
    out->failures = t->failures + (a->failed && t->failures < UINT32_MAX ? 1 : 0);
    a->burnt = out->failures >= a->max_failures;
    out->from = KMS_IMPORT_CLAIMED;
    out->to = a->burnt ? KMS_IMPORT_SPENT : KMS_IMPORT_ISSUED;
    out->end = a->burnt ? KMS_IMPORT_END_FAILURES : t->end;
    return KMS_OK;
}

kms_err kms_store_import_token_release(struct kms_store *store,
                                       const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                       bool failed, uint32_t max_failures, bool *out_burnt)
{
    static const char op[] = "release import token";
    if (out_burnt)
        *out_burnt = false;
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_token_id(token_id, op));
    KMS_ENSURE(max_failures >= 1, KMS_ERR_USAGE, "store: %s: max_failures must be positive", op);
    struct store_db *db = NULL;
    KMS_GUARD(store_import_route(store, token_id, &db, op));
    struct release_arg a = {failed, max_failures, false};
    kms_err rc = token_step(db, token_id, decide_release, &a, op);
    if (rc == KMS_OK && out_burnt)
        *out_burnt = a.burnt;
    return rc;
}

struct kcv_arg {
    const char *key_id;
    uint32_t version;
    const uint8_t *kcv;
};

static void bind_kcv(struct store_bind *b, const void *varg)
{
    const struct kcv_arg *a = varg;
    store_bind_text(b, 1, a->key_id);
    store_bind_int(b, 2, a->version);
    if (a->kcv)
        store_bind_blob(b, 3, a->kcv, KMS_KCV_LEN);
}

/* Record the KCV of ka's version, or check the one recorded: the same
 * version never takes other material. In the caller's write transaction. */
static kms_err record_kcv(struct store_conn *c, const struct kcv_arg *ka, const char *op)
{
    struct store_bind b;
    bool have = false;
    KMS_GUARD(store_prep(c, "SELECT kcv FROM key_check_values WHERE key_id = ?1 AND version = ?2",
                         op, &b));
    bind_kcv(&b, &(struct kcv_arg){ka->key_id, ka->version, NULL});
    kms_err rc = store_step(&b, op, &have);
    const uint8_t *old = NULL;
    size_t old_len = 0;
    if (rc == KMS_OK && have)
        store_col_blob(store_row_of(&b), 0, &old, &old_len);
    if (rc == KMS_OK && have &&
        (old == NULL || old_len != KMS_KCV_LEN || memcmp(old, ka->kcv, KMS_KCV_LEN) != 0))
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                         "store: %s: key %s version %" PRIu32 " holds other material", op,
                         ka->key_id, ka->version);
    store_fin(&b);
    if (rc != KMS_OK || have)
        return rc;
    return store_exec_one(c,
                          "INSERT INTO key_check_values (key_id, version, kcv) "
                          "VALUES (?1, ?2, ?3)",
                          op, bind_kcv, ka, NULL);
}

struct import_commit_arg {
    const uint8_t *token_id;
    const char *key_id;
    uint32_t version;
    const uint8_t *kcv;
    bool first;
};

static kms_err import_commit_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct import_commit_arg *a = varg;
    const char *key_id = a->key_id;
    uint32_t version = a->version;
    struct kms_import_token_record t;
    struct store_key_row row = {0};
    struct kcv_arg ka = {key_id, version, a->kcv};
    int64_t vstate = 0, n = 0;
    bool found = false;

    KMS_GUARD(token_row_get(c, a->token_id, &t, op));
    KMS_ENSURE(strcmp(t.key_id, key_id) == 0, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: import token belongs to another key", op);
    KMS_GUARD(store_key_row_get(c, key_id, false, &row, op));
    KMS_ENSURE(row.state == KMS_KEY_PENDING_IMPORT || row.state == KMS_KEY_ENABLED ||
                   row.state == KMS_KEY_DISABLED,
               KMS_ERR_FAILED_PRECONDITION, "store: %s: key %s is %s", op, key_id,
               kms_key_state_name(row.state));
    KMS_GUARD(store_query_int(c,
                              "SELECT state FROM key_versions WHERE key_id = ?1 AND version = ?2",
                              op, bind_kcv, &(struct kcv_arg){key_id, version, NULL}, &vstate,
                              &found));
    KMS_ENSURE(found, KMS_ERR_NOT_FOUND, "store: %s: key %s has no version %" PRIu32, op,
               key_id, version);
    KMS_ENSURE(vstate == KMS_VERSION_CREATING || vstate == KMS_VERSION_ACTIVE,
               KMS_ERR_FAILED_PRECONDITION, "store: %s: key %s version %" PRIu32 " is %s", op,
               key_id, version, kms_version_state_name((enum kms_version_state)vstate));

    /* The same material must not become two versions, and two first
     * imports that raced must not both win. */
    KMS_GUARD(store_query_int(c,
                              "SELECT count(*) FROM key_check_values c JOIN key_versions v "
                              "USING (key_id, version) WHERE c.key_id = ?1 AND c.version <> ?2 "
                              "AND v.state = 1 AND c.kcv = ?3",
                              op, bind_kcv, &ka, &n, NULL));
    KMS_ENSURE(n == 0, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s already has this material as another version", op, key_id);
    if (a->first) {
        KMS_GUARD(store_query_int(c,
                                  "SELECT count(*) FROM key_versions WHERE key_id = ?1 "
                                  "AND version <> ?2 AND state = 1",
                                  op, bind_kcv, &(struct kcv_arg){key_id, version, NULL}, &n,
                                  NULL));
        KMS_ENSURE(n == 0, KMS_ERR_FAILED_PRECONDITION,
                   "store: %s: key %s received its material meanwhile", op, key_id);
    }
    KMS_GUARD(record_kcv(c, &ka, op));

    if (vstate == KMS_VERSION_CREATING)
        KMS_GUARD(store_version_make_active(c, key_id, version, op));
    return token_cas(c, a->token_id, KMS_IMPORT_CLAIMED, KMS_IMPORT_SPENT, KMS_IMPORT_END_USED,
                     t.failures, op);
}

kms_err kms_store_import_commit(struct kms_store *store,
                                const uint8_t token_id[KMS_IMPORT_TOKEN_ID_LEN],
                                const char *key_id, uint32_t version,
                                const uint8_t kcv[KMS_KCV_LEN], bool first)
{
    static const char op[] = "commit import";

    KMS_ENSURE(store != NULL && kcv != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(check_token_id(token_id, op));
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_ENSURE(version >= 1, KMS_ERR_INVALID_ARGUMENT, "store: %s: versions start at 1", op);

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct import_commit_arg a = {token_id, key_id, version, kcv, first};
    return store_tx_run(db, true, import_commit_tx, &a, op);
}

static kms_err read_kcv(const struct store_row *st, void *elem, const char *op)
{
    struct kms_kcv_record *r = elem;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_u32(st, 0, &r->version, op));
    const uint8_t *v = NULL;
    size_t len = 0;
    store_col_blob(st, 1, &v, &len);
    KMS_ENSURE(v != NULL && len == KMS_KCV_LEN, KMS_ERR_INTERNAL,
               "store: %s: stored key check value has the wrong length", op);
    memcpy(r->kcv, v, KMS_KCV_LEN);
    return KMS_OK;
}

struct kcvs_arg {
    const char *key_id;
    void *arr;
    size_t n;
};

/* The key must be visible in the same snapshot as its check values. */
static kms_err kcv_tx(struct store_conn *c, void *varg, const char *op)
{
    struct kcvs_arg *a = varg;
    struct store_key_row row = {0};
    KMS_GUARD(store_key_row_get(c, a->key_id, false, &row, op));
    return store_prep_collect(c,
                              "SELECT c.version, c.kcv FROM key_check_values c JOIN key_versions "
                              "v USING (key_id, version) WHERE c.key_id = ?1 AND v.state = 1 "
                              "ORDER BY c.version",
                              op, store_bind_text1, a->key_id, sizeof(struct kms_kcv_record),
                              SIZE_MAX, read_kcv, &a->arr, &a->n);
}

kms_err kms_store_key_check_values(struct kms_store *store, const char *key_id,
                                   struct kms_kcv_record **out, size_t *out_n)
{
    static const char op[] = "list key check values";
    struct kcvs_arg a = {key_id, NULL, 0};

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    kms_err rc = store_tx_run(db, false, kcv_tx, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    *out = a.arr;
    *out_n = a.n;
    return KMS_OK;
}
