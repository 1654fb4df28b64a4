/*
 * kms_store_sql.c - the store's SQL: statement texts, connection leases,
 * binding and stepping, transactions, and decoding rows.
 *
 * The SQL is kept to what PostgreSQL also accepts (row values, partial
 * indexes, USING joins), apart from max() of two values (GREATEST there), so
 * that a second backend can reuse it nearly verbatim.
 */
#include "kms_store_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
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
    [ST_KEY_ACTIVATE] = "UPDATE keys SET current_version = max(current_version, ?2), "
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

/* ---- connections -------------------------------------------------------- */

struct store_conn *store_writer_take(struct kms_store *s)
{
    pthread_mutex_lock(&s->writer.mu);
    return &s->writer;
}

/* Any idle reader; else wait on one picked round-robin, so waiters spread. */
struct store_conn *store_reader_take(struct kms_store *s)
{
    unsigned start = atomic_fetch_add_explicit(&s->next_reader, 1, memory_order_relaxed);
    for (unsigned i = 0; i < STORE_READERS; i++) {
        struct store_conn *c = &s->readers[(start + i) % STORE_READERS];
        if (pthread_mutex_trylock(&c->mu) == 0)
            return c;
    }
    struct store_conn *c = &s->readers[start % STORE_READERS];
    pthread_mutex_lock(&c->mu);
    return c;
}

void store_conn_give(struct store_conn *c)
{
    pthread_mutex_unlock(&c->mu);
}

void store_conn_close(struct store_conn *c)
{
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->stmt[i]);
    memset(c->stmt, 0, sizeof(c->stmt));
    sqlite3_close(c->db);
    c->db = NULL;
    if (c->mu_ready)
        pthread_mutex_destroy(&c->mu);
    c->mu_ready = false;
}

/* ---- statements --------------------------------------------------------- */

kms_err store_stmt(struct store_conn *c, enum store_stmt_id id, const char *op,
                   struct store_bind *out)
{
    *out = (struct store_bind){c, NULL, SQLITE_OK};
    if (c->stmt[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &c->stmt[id], NULL);
        if (rc != SQLITE_OK)
            return store_sql_err(c->db, rc, op);
    }
    out->st = c->stmt[id];
    return KMS_OK;
}

void store_bind_text(struct store_bind *b, int i, const char *v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_text(b->st, i, v, -1, SQLITE_STATIC);
}

void store_bind_int(struct store_bind *b, int i, int64_t v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->st, i, v);
}

void store_bind_hsm_id(struct store_bind *b, int i, const uint8_t v[KMS_HSM_ID_LEN])
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_blob(b->st, i, v, KMS_HSM_ID_LEN, SQLITE_STATIC);
}

void store_done(struct store_bind *b)
{
    if (b->st != NULL) {
        sqlite3_reset(b->st);
        sqlite3_clear_bindings(b->st);
    }
}

kms_err store_step(struct store_bind *b, const char *op, bool *out_row)
{
    int rc = b->rc;
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(b->st);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
            *out_row = rc == SQLITE_ROW;
            return KMS_OK;
        }
    }
    kms_err err = store_sql_err(b->c->db, rc, op);
    store_done(b);
    return err;
}

kms_err store_run(struct store_bind *b, const char *op)
{
    bool row = false;
    kms_err rc = store_step(b, op, &row);
    while (rc == KMS_OK && row)
        rc = store_step(b, op, &row);
    if (rc == KMS_OK)
        store_done(b);
    return rc;
}

/* Make room for element n of an array that grows by doubling. */
static kms_err grow(void **arr, size_t *cap, size_t n, size_t elem, const char *op)
{
    if (n < *cap)
        return KMS_OK;
    size_t ncap, bytes;
    if (__builtin_mul_overflow(*cap ? *cap : 8, 2, &ncap) ||
        __builtin_mul_overflow(ncap, elem, &bytes))
        return kms_err_set(KMS_ERR_NOMEM, "store: %s: result too large", op);
    void *p = realloc(*arr, bytes);
    KMS_ENSURE(p != NULL, KMS_ERR_NOMEM, "store: %s: out of memory", op);
    *arr = p;
    *cap = ncap;
    return KMS_OK;
}

kms_err store_collect(struct store_bind *b, size_t elem, size_t max, store_row_reader read,
                      void **out, size_t *out_n, const char *op)
{
    void *arr = NULL;
    size_t n = 0, cap = 0;
    bool row = true;
    kms_err rc = KMS_OK;

    *out = NULL;
    *out_n = 0;
    while (n < max) {
        KMS_GUARD_GOTO(store_step(b, op, &row), fail);
        if (!row)
            break;
        KMS_GUARD_GOTO(grow(&arr, &cap, n, elem, op), done);
        KMS_GUARD_GOTO(read(b->st, (char *)arr + n * elem, op), done);
        n++;
    }
done:
    store_done(b);
    if (rc != KMS_OK)
        goto fail;
    *out = arr;
    *out_n = n;
    return KMS_OK;
fail:
    free(arr);
    return rc;
}

/* ---- transactions ------------------------------------------------------- */

static kms_err run_stmt(struct store_conn *c, enum store_stmt_id id, const char *op)
{
    struct store_bind b;
    KMS_GUARD(store_stmt(c, id, op, &b));
    return store_run(&b, op);
}

/* Writes use BEGIN IMMEDIATE: the write lock is taken before anything is
 * read, so what a transaction checks is still true when it writes. */
static kms_err store_tx_begin(struct store_conn *c, bool write, const char *op)
{
    return run_stmt(c, write ? ST_BEGIN_IMMEDIATE : ST_BEGIN, op);
}

/* Commit if rc is KMS_OK, else (or if the commit fails) roll back. */
static kms_err store_tx_end(struct store_conn *c, kms_err rc, const char *op)
{
    if (rc == KMS_OK)
        rc = run_stmt(c, ST_COMMIT, op);
    /* A failed COMMIT may or may not have ended the transaction. */
    if (rc != KMS_OK && !sqlite3_get_autocommit(c->db)) {
        char detail[512];
        /* Keep the detail of the failure, not of the rollback. */
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        run_stmt(c, ST_ROLLBACK, "roll back");
        kms_err_set(rc, "%s", detail);
    }
    return rc;
}

/* ---- rows --------------------------------------------------------------- */

kms_err store_col_text(sqlite3_stmt *st, int col, char *dst, size_t size, const char *op)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    KMS_ENSURE(t != NULL && n >= 0 && (size_t)n < size, KMS_ERR_INTERNAL,
               "store: %s: stored text in column %d out of bounds", op, col);
    memcpy(dst, t, (size_t)n);
    dst[n] = '\0';
    return KMS_OK;
}

kms_err store_col_hsm_id(sqlite3_stmt *st, int col, uint8_t dst[KMS_HSM_ID_LEN], const char *op)
{
    const void *v = sqlite3_column_blob(st, col);
    KMS_ENSURE(v != NULL && sqlite3_column_bytes(st, col) == KMS_HSM_ID_LEN, KMS_ERR_INTERNAL,
               "store: %s: stored hsm id has the wrong length", op);
    memcpy(dst, v, KMS_HSM_ID_LEN);
    return KMS_OK;
}

kms_err store_col_u32(sqlite3_stmt *st, int col, uint32_t *out, const char *op)
{
    int64_t v = sqlite3_column_int64(st, col);
    KMS_ENSURE(v >= 0 && v <= UINT32_MAX, KMS_ERR_INTERNAL,
               "store: %s: stored version out of range", op);
    *out = (uint32_t)v;
    return KMS_OK;
}

/* Enumerations are range-checked on the way out too, so a row this build
 * does not understand is an error rather than a value no switch handles. */
kms_err store_col_enum(sqlite3_stmt *st, int col, int lo, int hi, int *out, const char *op)
{
    int64_t v = sqlite3_column_int64(st, col);
    KMS_ENSURE(v >= lo && v <= hi, KMS_ERR_INTERNAL,
               "store: %s: stored value %" PRId64 " in column %d is unknown", op, v, col);
    *out = (int)v;
    return KMS_OK;
}

kms_err store_read_key(sqlite3_stmt *st, void *elem, const char *op)
{
    struct kms_key_record *k = elem;
    int spec = 0, usage = 0, origin = 0, state = 0;

    memset(k, 0, sizeof(*k));
    KMS_GUARD(store_col_text(st, 0, k->key_id, sizeof(k->key_id), op));
    KMS_GUARD(store_col_text(st, 1, k->tenant, sizeof(k->tenant), op));
    KMS_GUARD(store_col_text(st, 2, k->region, sizeof(k->region), op));
    KMS_GUARD(store_col_text(st, 3, k->token, sizeof(k->token), op));
    KMS_GUARD(store_col_enum(st, 4, KMS_KEY_SPEC_AES_256, KMS_KEY_SPEC_LAST, &spec, op));
    KMS_GUARD(store_col_enum(st, 5, KMS_KEY_USAGE_ENCRYPT_DECRYPT, KMS_KEY_USAGE_METADATA,
                             &usage, op));
    KMS_GUARD(store_col_enum(st, 6, KMS_KEY_ORIGIN_HSM, KMS_KEY_ORIGIN_EXTERNAL, &origin, op));
    KMS_GUARD(store_col_enum(st, 7, KMS_KEY_CREATING, KMS_KEY_DESTROYED, &state, op));
    KMS_GUARD(store_col_text(st, 8, k->description, sizeof(k->description), op));
    k->created_at = sqlite3_column_int64(st, 9);
    k->deletion_at = sqlite3_column_int64(st, 10);
    KMS_GUARD(store_col_u32(st, 11, &k->current_version, op));
    k->escrow_required = sqlite3_column_int(st, 12) != 0;
    k->spec = (enum kms_key_spec)spec;
    k->usage = (enum kms_key_usage)usage;
    k->origin = (enum kms_key_origin)origin;
    k->state = (enum kms_key_state)state;
    return KMS_OK;
}

kms_err store_read_version(sqlite3_stmt *st, void *elem, const char *op)
{
    struct kms_version_record *v = elem;
    int state = 0;

    memset(v, 0, sizeof(*v));
    KMS_GUARD(store_col_text(st, 0, v->key_id, sizeof(v->key_id), op));
    KMS_GUARD(store_col_u32(st, 1, &v->version, op));
    KMS_GUARD(store_col_hsm_id(st, 2, v->hsm_id, op));
    KMS_GUARD(store_col_enum(st, 3, KMS_VERSION_CREATING, KMS_VERSION_DESTROYED, &state, op));
    v->created_at = sqlite3_column_int64(st, 4);
    v->state = (enum kms_version_state)state;
    return KMS_OK;
}

kms_err store_read_hsm_id(sqlite3_stmt *st, void *elem, const char *op)
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
    KMS_GUARD_GOTO(store_col_enum(b.st, 0, KMS_KEY_CREATING, KMS_KEY_DESTROYED, &state, op),
                   done);
    KMS_GUARD_GOTO(store_col_u32(b.st, 1, &out->current_version, op), done);
    KMS_GUARD_GOTO(store_col_u32(b.st, 2, &out->last_version, op), done);
    out->deletion_at = sqlite3_column_int64(b.st, 3);
    out->state = (enum kms_key_state)state;
    KMS_ENSURE_GOTO(out->state != KMS_KEY_CREATING || creating_ok, done, KMS_ERR_NOT_FOUND,
                    "store: %s: key %s not found", op, key_id);
done:
    store_done(&b);
    return rc;
}

/* ---- statements prepared per call (rare operations) ------------------------ */

kms_err store_prep(struct store_conn *c, const char *sql, const char *op, struct store_bind *out)
{
    *out = (struct store_bind){c, NULL, SQLITE_OK};
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &out->st, NULL);
    if (rc != SQLITE_OK) {
        kms_err err = store_sql_err(c->db, rc, op);
        sqlite3_finalize(out->st);
        out->st = NULL;
        return err;
    }
    return KMS_OK;
}

void store_fin(struct store_bind *b)
{
    sqlite3_finalize(b->st);
    b->st = NULL;
}

void store_bind_blob(struct store_bind *b, int i, const uint8_t *v, int len)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_blob(b->st, i, v, len, SQLITE_STATIC);
}

void store_bind_text1(struct store_bind *b, const void *arg)
{
    store_bind_text(b, 1, arg);
}

void store_bind_text_int(struct store_bind *b, const void *arg)
{
    const struct store_text_int *a = arg;
    store_bind_text(b, 1, a->text);
    store_bind_int(b, 2, a->i);
}

/* Prepare, bind through `bind`, run to completion; *out_changes (may be
 * NULL) gets the rows changed. */

kms_err store_exec_one(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                        const void *arg, int *out_changes)
{
    struct store_bind b;
    KMS_GUARD(store_prep(c, sql, op, &b));
    bind(&b, arg);
    kms_err rc = store_run(&b, op);
    if (rc == KMS_OK && out_changes)
        *out_changes = sqlite3_changes(c->db);
    store_fin(&b);
    return rc;
}

/* A one-row, one-integer query; *out_row false when there is no row. */
kms_err store_query_int(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                         const void *arg, int64_t *out, bool *out_row)
{
    struct store_bind b;
    bool row = false;
    KMS_GUARD(store_prep(c, sql, op, &b));
    bind(&b, arg);
    kms_err rc = store_step(&b, op, &row);
    if (rc == KMS_OK && row)
        *out = sqlite3_column_int64(b.st, 0);
    if (out_row)
        *out_row = row;
    store_fin(&b);
    return rc;
}

kms_err store_tx_run(struct kms_store *s, bool write, store_tx_body body, void *arg, const char *op)
{
    struct store_conn *c = write ? store_writer_take(s) : store_reader_take(s);
    kms_err rc = store_tx_begin(c, write, op);
    if (rc == KMS_OK)
        rc = store_tx_end(c, body(c, arg, op), op);
    store_conn_give(c);
    return rc;
}

kms_err store_prep_collect(struct store_conn *c, const char *sql, const char *op, store_binder bind,
                           const void *arg, size_t elem, size_t max, store_row_reader read,
                           void **out, size_t *out_n)
{
    struct store_bind b;
    *out = NULL;
    *out_n = 0;
    KMS_GUARD(store_prep(c, sql, op, &b));
    if (bind != NULL)
        bind(&b, arg);
    kms_err rc = store_collect(&b, elem, max, read, out, out_n, op);
    store_fin(&b);
    return rc;
}

kms_err store_list_query(struct kms_store *s, const char *sql, const char *op, store_binder bind,
                         const void *arg, size_t elem, size_t max, store_row_reader read,
                         void **out, size_t *out_n)
{
    struct store_conn *c = store_reader_take(s);
    kms_err rc = store_prep_collect(c, sql, op, bind, arg, elem, max, read, out, out_n);
    store_conn_give(c);
    return rc;
}

kms_err store_query_row(struct kms_store *s, const char *sql, const char *op, store_binder bind,
                        const void *arg, store_row_reader read, void *elem, bool *out_found)
{
    struct store_bind b;
    bool row = false;
    *out_found = false;
    struct store_conn *c = store_reader_take(s);
    kms_err rc = store_prep(c, sql, op, &b);
    if (rc == KMS_OK) {
        bind(&b, arg);
        rc = store_step(&b, op, &row);
        if (rc == KMS_OK && row) {
            rc = read(b.st, elem, op);
            *out_found = rc == KMS_OK;
        }
        store_fin(&b);
    }
    store_conn_give(c);
    return rc;
}
