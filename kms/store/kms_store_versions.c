/*
 * kms_store_versions.c - key versions: the create protocol's first and last
 * steps (add in CREATING, activate), reads, and the reconcile queries that
 * clean up after a crash between those steps.
 */
#include "kms_store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_store_internal.h"

static kms_err check_version(uint32_t version, const char *op)
{
    KMS_ENSURE(version >= 1, KMS_ERR_INVALID_ARGUMENT, "store: %s: versions start at 1", op);
    return KMS_OK;
}

/* The state of one version, CREATING included, or KMS_ERR_NOT_FOUND. */
kms_err store_version_state_get(struct store_conn *c, const char *key_id, uint32_t version,
                                enum kms_version_state *out, const char *op)
{
    struct store_bind b;
    bool row = false;
    int state = 0;
    kms_err rc = KMS_OK;

    KMS_GUARD(store_stmt(c, ST_VERSION_STATE, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, version);
    KMS_GUARD(store_step(&b, op, &row));
    KMS_ENSURE_GOTO(row, done, KMS_ERR_NOT_FOUND,
                    "store: %s: key %s has no version %" PRIu32, op, key_id, version);
    KMS_GUARD_GOTO(store_col_enum(store_row_of(&b), 0, KMS_VERSION_CREATING, KMS_VERSION_DESTROYED, &state,
                                  op),
                   done);
    *out = (enum kms_version_state)state;
done:
    store_done(&b);
    return rc;
}

static kms_err version_get_row(struct store_conn *c, const char *key_id, uint32_t version,
                               struct kms_version_record *out, const char *op)
{
    struct store_bind b;
    bool row = false;

    KMS_GUARD(store_stmt(c, ST_VERSION_GET, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, version);
    KMS_GUARD(store_step(&b, op, &row));
    kms_err rc = row ? store_read_version(store_row_of(&b), out, op)
                     : kms_err_set(KMS_ERR_NOT_FOUND, "store: %s: key %s has no version %" PRIu32,
                                   op, key_id, version);
    store_done(&b);
    return rc;
}

kms_err kms_store_version_get(struct kms_store *store, const char *key_id, uint32_t version,
                              struct kms_version_record *out)
{
    static const char op[] = "get key version";

    KMS_ENSURE(store != NULL && out != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_GUARD(check_version(version, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));

    struct store_conn *c = store_reader_take(db);
    kms_err rc = version_get_row(c, key_id, version, out, op);
    store_conn_give(c);
    return rc;
}

/* A key's versions read in one transaction with the key itself: the key
 * record (into key) or, with key NULL, only that the key is visible. */
struct versions_arg {
    const char *key_id;
    struct kms_key_record *key;
    void *arr;
    size_t n;
};

static kms_err versions_tx(struct store_conn *c, void *varg, const char *op)
{
    struct versions_arg *a = varg;
    struct store_key_row row = {0};
    struct store_bind b;

    if (a->key != NULL)
        KMS_GUARD(store_key_get_row(c, a->key_id, a->key, op));
    else
        KMS_GUARD(store_key_row_get(c, a->key_id, false, &row, op));
    KMS_GUARD(store_stmt(c, ST_VERSIONS_LIST, op, &b));
    store_bind_text(&b, 1, a->key_id);
    return store_collect(&b, sizeof(struct kms_version_record), SIZE_MAX, store_read_version,
                         &a->arr, &a->n, op);
}

static kms_err versions_read(struct kms_store *store, const char *key_id,
                             struct kms_key_record *out_key, struct kms_version_record **out,
                             size_t *out_n, const char *op)
{
    struct versions_arg a = {key_id, out_key, NULL, 0};

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_key_id(key_id, op));
    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    kms_err rc = store_tx_run(db, false, versions_tx, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    *out = a.arr;
    *out_n = a.n;
    return KMS_OK;
}

kms_err kms_store_versions_list(struct kms_store *store, const char *key_id,
                                struct kms_version_record **out, size_t *out_n)
{
    /* One read transaction, so that "the key is visible" and "these are its
     * versions" come from the same snapshot. */
    return versions_read(store, key_id, NULL, out, out_n, "list key versions");
}

kms_err kms_store_key_snapshot(struct kms_store *store, const char *key_id,
                               struct kms_key_record *out_key, struct kms_version_record **out,
                               size_t *out_n)
{
    static const char op[] = "read key and versions";
    KMS_ENSURE(out_key != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    /* One read transaction: the key's current_version and its version list
     * come from the same commit, so a reply never pairs one rotation's key
     * row with another's versions. */
    return versions_read(store, key_id, out_key, out, out_n, op);
}

struct version_add_arg {
    const char *key_id;
    const uint8_t *hsm_id;
    int64_t created_at;
    uint32_t version;
};

static kms_err version_add_tx(struct store_conn *c, void *varg, const char *op)
{
    struct version_add_arg *a = varg;
    const char *key_id = a->key_id;
    struct store_key_row row = {0};
    struct store_bind b;

    KMS_GUARD(store_key_row_get(c, key_id, false, &row, op));
    /* A key pending deletion or destroyed must not grow new HSM objects:
     * the sweeper would not know to destroy them. */
    KMS_ENSURE(row.state == KMS_KEY_ENABLED || row.state == KMS_KEY_DISABLED ||
                   row.state == KMS_KEY_PENDING_IMPORT,
               KMS_ERR_FAILED_PRECONDITION, "store: %s: key %s is %s; cannot add a version", op,
               key_id, kms_key_state_name(row.state));
    KMS_ENSURE(row.last_version < UINT32_MAX, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s has no version numbers left", op, key_id);
    a->version = row.last_version + 1;

    KMS_GUARD(store_stmt(c, ST_KEY_SET_LAST_VERSION, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, a->version);
    KMS_GUARD(store_run(&b, op));

    KMS_GUARD(store_stmt(c, ST_VERSION_INSERT, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, a->version);
    store_bind_hsm_id(&b, 3, a->hsm_id);
    store_bind_int(&b, 4, a->created_at);
    return store_run(&b, op);
}

kms_err kms_store_version_add(struct kms_store *store, const char *key_id,
                              const uint8_t hsm_id[KMS_HSM_ID_LEN], int64_t created_at,
                              uint32_t *out_version)
{
    static const char op[] = "add key version";

    KMS_ENSURE(store != NULL && hsm_id != NULL && out_version != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out_version = 0;
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_ENSURE(created_at > 0, KMS_ERR_INVALID_ARGUMENT,
               "store: %s: created_at must be positive", op);

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct version_add_arg a = {key_id, hsm_id, created_at, 0};
    kms_err rc = store_tx_run(db, true, version_add_tx, &a, op);
    if (rc == KMS_OK)
        *out_version = a.version;
    return rc;
}

kms_err store_version_make_active(struct store_conn *c, const char *key_id, uint32_t version,
                                  const char *op)
{
    struct store_bind b;
    KMS_GUARD(store_stmt(c, ST_VERSION_SET_ACTIVE, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, version);
    KMS_GUARD(store_run(&b, op));

    KMS_GUARD(store_stmt(c, ST_KEY_ACTIVATE, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, version);
    return store_run(&b, op);
}

static kms_err version_activate_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct store_text_int *a = varg;
    const char *key_id = a->text;
    uint32_t version = (uint32_t)a->i;
    struct store_key_row row = {0};
    enum kms_version_state vstate = KMS_VERSION_CREATING;

    KMS_GUARD(store_key_row_get(c, key_id, true, &row, op));
    KMS_ENSURE(row.state != KMS_KEY_DESTROYED, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s is DESTROYED", op, key_id);
    KMS_GUARD(store_version_state_get(c, key_id, version, &vstate, op));
    KMS_ENSURE(vstate != KMS_VERSION_DESTROYED, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s version %" PRIu32 " is DESTROYED", op, key_id, version);
    /* Already ACTIVE: the commit that made it so also updated the key. */
    if (vstate == KMS_VERSION_ACTIVE)
        return KMS_OK;
    return store_version_make_active(c, key_id, version, op);
}

/* Check the arguments of a write to one key version and run body on them
 * (a store_text_int) in one write transaction. */
static kms_err version_write(struct kms_store *store, const char *key_id, uint32_t version,
                             store_tx_body body, const char *op)
{
    KMS_ENSURE(store != NULL, KMS_ERR_USAGE, "store: %s: NULL argument", op);
    KMS_GUARD(store_check_key_id(key_id, op));
    KMS_GUARD(check_version(version, op));

    struct store_db *db = NULL;
    KMS_GUARD(store_route_key(store, key_id, &db, op));
    struct store_text_int a = {key_id, version};
    return store_tx_run(db, true, body, &a, op);
}

kms_err kms_store_version_activate(struct kms_store *store, const char *key_id,
                                   uint32_t version)
{
    return version_write(store, key_id, version, version_activate_tx, "activate key version");
}

/* ---- reconcile ---------------------------------------------------------- */

static kms_err read_creating(const struct store_row *st, void *elem, const char *op)
{
    struct kms_store_creating *r = elem;
    memset(r, 0, sizeof(*r));
    KMS_GUARD(store_col_text(st, 0, r->key_id, sizeof(r->key_id), op));
    KMS_GUARD(store_col_text(st, 1, r->token, sizeof(r->token), op));
    KMS_GUARD(store_col_u32(st, 2, &r->version, op));
    KMS_GUARD(store_col_hsm_id(st, 3, r->hsm_id, op));
    r->key_creating = store_col_int64(st, 4) == KMS_KEY_CREATING;
    return KMS_OK;
}

static void bind_before_s(struct store_bind *b, const void *arg)
{
    store_bind_int(b, 1, *(const int64_t *)arg);
}

struct creating_arg {
    void *arr;
    size_t n;
};

static kms_err creating_list_db(struct store_db *db, void *varg, const char *op)
{
    struct creating_arg *a = varg;
    void *part = NULL;
    size_t n = 0;
    kms_err rc;

    /* On PostgreSQL other nodes share the store: a CREATING row may be a
     * create another node is in the middle of, and reconciling it would
     * destroy a key being born. Only rows older than any create takes are
     * a crash's leftovers. On SQLite the file lock rules that out. */
    if (db->pg) {
        int64_t before = (int64_t)time(NULL) - STORE_PG_CREATING_GRACE_S;
        rc = store_list_query(
            db,
            "SELECT v.key_id, k.token, v.version, v.hsm_id, k.state "
            "FROM key_versions v JOIN keys k USING (key_id) "
            "WHERE v.state = 0 AND v.created_at <= ?1 ORDER BY v.key_id, v.version",
            op, bind_before_s, &before, sizeof(struct kms_store_creating), SIZE_MAX,
            read_creating, &part, &n);
    } else {
        struct store_bind b;
        struct store_conn *c = store_reader_take(db);
        rc = store_stmt(c, ST_CREATING_LIST, op, &b);
        if (rc == KMS_OK)
            rc = store_collect(&b, sizeof(struct kms_store_creating), SIZE_MAX, read_creating,
                               &part, &n, op);
        store_conn_give(c);
    }
    if (rc == KMS_OK)
        rc = store_concat(&a->arr, &a->n, part, n, sizeof(struct kms_store_creating), op);
    return rc;
}

static int creating_cmp(const void *pa, const void *pb)
{
    const struct kms_store_creating *a = pa, *b = pb;
    int c = strcmp(a->key_id, b->key_id);
    if (c != 0)
        return c;
    return a->version < b->version ? -1 : a->version > b->version;
}

/* A region whose database is away is left out: its rows wait for the next
 * reconcile, and nothing is destroyed for their absence. */
kms_err kms_store_creating_list(struct kms_store *store, struct kms_store_creating **out,
                                size_t *out_n)
{
    static const char op[] = "list creating versions";

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    struct creating_arg a = {NULL, 0};
    kms_err rc = store_each_db(store, false, creating_list_db, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    if (store->n > 1 && a.n > 1)
        qsort(a.arr, a.n, sizeof(struct kms_store_creating), creating_cmp);
    *out = a.arr;
    *out_n = a.n;
    return KMS_OK;
}

static kms_err creating_discard_tx(struct store_conn *c, void *varg, const char *op)
{
    const struct store_text_int *a = varg;
    const char *key_id = a->text;
    uint32_t version = (uint32_t)a->i;
    enum kms_version_state vstate = KMS_VERSION_CREATING;
    struct store_bind b;

    KMS_GUARD(store_version_state_get(c, key_id, version, &vstate, op));
    KMS_ENSURE(vstate == KMS_VERSION_CREATING, KMS_ERR_FAILED_PRECONDITION,
               "store: %s: key %s version %" PRIu32 " is %s, not CREATING", op, key_id, version,
               kms_version_state_name(vstate));

    KMS_GUARD(store_stmt(c, ST_VERSION_DELETE_CREATING, op, &b));
    store_bind_text(&b, 1, key_id);
    store_bind_int(&b, 2, version);
    KMS_GUARD(store_run(&b, op));

    /* Removes the key only if it is CREATING and this was its last version;
     * the version number stays spent either way (keys.last_version). */
    KMS_GUARD(store_stmt(c, ST_KEY_DELETE_CREATING, op, &b));
    store_bind_text(&b, 1, key_id);
    return store_run(&b, op);
}

kms_err kms_store_creating_discard(struct kms_store *store, const char *key_id,
                                   uint32_t version)
{
    return version_write(store, key_id, version, creating_discard_tx,
                         "discard creating version");
}

struct hsm_ids_arg {
    const char *token;
    void *arr;
    size_t n;
};

static kms_err hsm_ids_db(struct store_db *db, void *varg, const char *op)
{
    struct hsm_ids_arg *a = varg;
    struct store_bind b;
    void *part = NULL;
    size_t n = 0;

    struct store_conn *c = store_reader_take(db);
    kms_err rc = store_stmt(c, ST_HSM_IDS_FOR_TOKEN, op, &b);
    if (rc == KMS_OK) {
        store_bind_text(&b, 1, a->token);
        rc = store_collect(&b, sizeof(struct kms_hsm_id), SIZE_MAX, store_read_hsm_id, &part,
                           &n, op);
    }
    store_conn_give(c);
    if (rc == KMS_OK)
        rc = store_concat(&a->arr, &a->n, part, n, sizeof(struct kms_hsm_id), op);
    return rc;
}

static int hsm_id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct kms_hsm_id));
}

/* Every database must answer: an HSM object is an orphan only if no
 * region's database knows its CKA_ID, and one left unasked might. */
kms_err kms_store_hsm_ids_for_token(struct kms_store *store, const char *token,
                                    struct kms_hsm_id **out, size_t *out_n)
{
    static const char op[] = "list hsm ids of token";

    KMS_ENSURE(store != NULL && out != NULL && out_n != NULL, KMS_ERR_USAGE,
               "store: %s: NULL argument", op);
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_check_token(token, KMS_TOKEN_LABEL_MAX + 1, op));

    struct hsm_ids_arg a = {token, NULL, 0};
    kms_err rc = store_each_db(store, true, hsm_ids_db, &a, op);
    if (rc != KMS_OK) {
        free(a.arr);
        return rc;
    }
    if (store->n > 1 && a.n > 1)
        qsort(a.arr, a.n, sizeof(struct kms_hsm_id), hsm_id_cmp);
    *out = a.arr;
    *out_n = a.n;
    return KMS_OK;
}
