/*
 * kms_store_sql.c - the store's SQL: statement texts, connection leases,
 * binding and stepping, transactions, and decoding rows.
 *
 * The SQL is kept to what PostgreSQL also accepts (row values, partial
 * indexes, USING joins, ON CONFLICT, CASE rather than two-argument max()),
 * so both backends run the same text: ?N becomes $N for PostgreSQL. Only
 * the transaction statements differ, and they are chosen in store_tx_*.
 */
#include "kms_store_internal.h"

#include <inttypes.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>
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
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(c->stmt[i]);
        free(c->pgsql[i]);
    }
    memset(c->stmt, 0, sizeof(c->stmt));
    memset(c->pgsql, 0, sizeof(c->pgsql));
    sqlite3_close(c->db);
    c->db = NULL;
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = NULL;
    if (c->mu_ready)
        pthread_mutex_destroy(&c->mu);
    c->mu_ready = false;
}

/* ---- statements --------------------------------------------------------- */

static bool is_pg(const struct store_conn *c)
{
    return c->owner != NULL && c->owner->pg;
}

static void bind_init(struct store_bind *b, struct store_conn *c)
{
    memset(b, 0, sizeof(*b));
    b->c = c;
    b->row = -1;
}

kms_err store_stmt(struct store_conn *c, enum store_stmt_id id, const char *op,
                   struct store_bind *out)
{
    bind_init(out, c);
    if (is_pg(c)) {
        if (c->pgsql[id] == NULL) {
            c->pgsql[id] = store_pg_sql(stmt_sql[id], &c->pgn[id]);
            KMS_ENSURE(c->pgsql[id] != NULL, KMS_ERR_NOMEM, "store: %s: out of memory", op);
        }
        out->sql = c->pgsql[id];
        out->nparams = c->pgn[id];
        return KMS_OK;
    }
    if (c->stmt[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &c->stmt[id], NULL);
        if (rc != SQLITE_OK)
            return store_sql_err(c->db, rc, op);
    }
    out->st = c->stmt[id];
    return KMS_OK;
}

int store_param_count(const struct store_bind *b)
{
    return is_pg(b->c) ? b->nparams : sqlite3_bind_parameter_count(b->st);
}

int64_t store_changes(const struct store_conn *c)
{
    return is_pg(c) ? c->pg_changes : sqlite3_changes(c->db);
}

/* A PostgreSQL parameter slot, or NULL (and b->rc set) when i is not one
 * the statement names: SQLite refuses those too. */
static int pg_slot(struct store_bind *b, int i)
{
    if (b->rc != 0)
        return -1;
    if (i < 1 || i > b->nparams || i > STORE_MAX_PARAMS) {
        b->rc = SQLITE_RANGE;
        return -1;
    }
    return i - 1;
}

/* Type oids of PostgreSQL's catalog (pg_type.dat); stable since 7.x. */
#define PG_OID_BOOL 16
#define PG_OID_BYTEA 17
#define PG_OID_INT8 20
#define PG_OID_INT2 21
#define PG_OID_INT4 23
#define PG_OID_TEXT 25

void store_bind_text(struct store_bind *b, int i, const char *v)
{
    if (is_pg(b->c)) {
        int k = pg_slot(b, i);
        if (k >= 0) {
            b->vals[k] = v;
            b->lens[k] = 0;
            b->fmts[k] = 0;
            b->types[k] = PG_OID_TEXT;
        }
        return;
    }
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_text(b->st, i, v, -1, SQLITE_STATIC);
}

void store_bind_text_copy(struct store_bind *b, int i, const char *v)
{
    if (is_pg(b->c)) {
        int k = pg_slot(b, i);
        if (k < 0)
            return;
        free(b->copies[k]);
        b->copies[k] = strdup(v);
        if (b->copies[k] == NULL) {
            b->rc = SQLITE_NOMEM;
            return;
        }
        store_bind_text(b, i, b->copies[k]);
        return;
    }
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_text(b->st, i, v, -1, SQLITE_TRANSIENT);
}

void store_bind_int(struct store_bind *b, int i, int64_t v)
{
    if (is_pg(b->c)) {
        int k = pg_slot(b, i);
        if (k >= 0) {
            snprintf(b->nums[k], sizeof(b->nums[k]), "%" PRId64, v);
            b->vals[k] = b->nums[k];
            b->lens[k] = 0;
            b->fmts[k] = 0;
            b->types[k] = PG_OID_INT8;
        }
        return;
    }
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->st, i, v);
}

void store_bind_blob(struct store_bind *b, int i, const uint8_t *v, int len)
{
    if (is_pg(b->c)) {
        int k = pg_slot(b, i);
        if (k >= 0) {
            /* A zero-length blob still needs a non-NULL pointer: NULL is SQL NULL. */
            b->vals[k] = len > 0 ? (const char *)v : "";
            b->lens[k] = len;
            b->fmts[k] = 1;
            b->types[k] = PG_OID_BYTEA;
        }
        return;
    }
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_blob(b->st, i, v, len, SQLITE_STATIC);
}

void store_bind_hsm_id(struct store_bind *b, int i, const uint8_t v[KMS_HSM_ID_LEN])
{
    store_bind_blob(b, i, v, KMS_HSM_ID_LEN);
}

void store_done(struct store_bind *b)
{
    if (is_pg(b->c)) {
        PQclear(b->res);
        b->res = NULL;
        b->row = -1;
        b->nrows = 0;
        for (int k = 0; k < STORE_MAX_PARAMS; k++) {
            free(b->copies[k]);
            b->copies[k] = NULL;
            b->vals[k] = NULL;
        }
        return;
    }
    if (b->st != NULL) {
        sqlite3_reset(b->st);
        sqlite3_clear_bindings(b->st);
    }
}

/* Run b's statement on PostgreSQL (binary results). A reader's statement,
 * or any outside a transaction that found its connection gone before it
 * could run, is sent once more on a new connection: a server restart
 * between two requests costs nothing. A write outside a transaction is not
 * (it may have committed before the connection broke). */
static kms_err pg_run(struct store_bind *b, const char *op)
{
    struct store_conn *c = b->c;
    /* A parameter the text skips (?1 and ?3 only) still needs a type:
     * PostgreSQL cannot infer one for $2. Unbound ones are NULL, as in SQLite. */
    for (int k = 0; k < b->nparams; k++)
        if (b->types[k] == 0)
            b->types[k] = PG_OID_TEXT;
    for (int attempt = 0;; attempt++) {
        if (!c->pg_in_tx)
            KMS_GUARD(store_pg_ensure(c, op));
        PGresult *res = PQexecParams(c->pg, b->sql, b->nparams, b->types, b->vals, b->lens,
                                     b->fmts, 1);
        ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
            const char *n = PQcmdTuples(res);
            c->pg_changes = n != NULL && n[0] != '\0' ? strtoll(n, NULL, 10) : 0;
            b->res = res;
            b->nrows = st == PGRES_TUPLES_OK ? PQntuples(res) : 0;
            b->row = -1;
            return KMS_OK;
        }
        bool again = attempt == 0 && !c->pg_in_tx && !c->writable && kms_pg_broken(c->pg);
        if (!again) {
            kms_err err = store_pg_err(c, res, op);
            PQclear(res);
            return err;
        }
        PQclear(res);
    }
}

kms_err store_step(struct store_bind *b, const char *op, bool *out_row)
{
    if (is_pg(b->c)) {
        kms_err err = KMS_OK;
        if (b->rc != 0) {
            err = kms_err_set(b->rc == SQLITE_NOMEM ? KMS_ERR_NOMEM : KMS_ERR_INTERNAL,
                              "store: %s: bad statement parameter", op);
        } else if (b->res == NULL) {
            err = pg_run(b, op);
        }
        if (err != KMS_OK) {
            store_done(b);
            return err;
        }
        b->row++;
        *out_row = b->row < b->nrows;
        return KMS_OK;
    }
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
        KMS_GUARD_GOTO(read(store_row_of(b), (char *)arr + n * elem, op), done);
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

/*
 * SQLite: writes use BEGIN IMMEDIATE: the write lock is taken before
 * anything is read, so what a transaction checks is still true when it
 * writes. PostgreSQL: writes are SERIALIZABLE, which gives the same
 * guarantee across nodes by failing (40001) whichever of two overlapping
 * transactions would break it (store_tx_run runs it again); reads are one
 * REPEATABLE READ snapshot, which never fails that way.
 */
static kms_err store_tx_begin(struct store_conn *c, bool write, const char *op)
{
    if (!is_pg(c))
        return run_stmt(c, write ? ST_BEGIN_IMMEDIATE : ST_BEGIN, op);
    /* A connection that broke while idle is replaced here, and BEGIN is
     * sent once more on the new one. */
    for (int attempt = 0;; attempt++) {
        KMS_GUARD(store_pg_ensure(c, op));
        PGresult *res = PQexec(c->pg, write ? "BEGIN ISOLATION LEVEL SERIALIZABLE"
                                            : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
            PQclear(res);
            c->pg_in_tx = true;
            return KMS_OK;
        }
        if (attempt == 0 && kms_pg_broken(c->pg)) {
            PQclear(res);
            continue;
        }
        kms_err err = store_pg_err(c, res, op);
        PQclear(res);
        return err;
    }
}

static kms_err pg_tx_end(struct store_conn *c, kms_err rc, const char *op)
{
    if (rc == KMS_OK) {
        PGresult *res = PQexec(c->pg, "COMMIT");
        /* COMMIT of a transaction that failed answers ROLLBACK, not an error. */
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK ||
            strcmp(PQcmdStatus(res), "COMMIT") != 0)
            rc = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK
                     ? kms_err_set(KMS_ERR_INTERNAL, "store: %s: transaction rolled back", op)
                     : store_pg_err(c, res, op);
        PQclear(res);
    }
    if (c->pg != NULL && PQtransactionStatus(c->pg) != PQTRANS_IDLE &&
        PQtransactionStatus(c->pg) != PQTRANS_UNKNOWN) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        PQclear(PQexec(c->pg, "ROLLBACK"));
        kms_err_set(rc, "%s", detail);
    }
    c->pg_in_tx = false;
    return rc;
}

/* Commit if rc is KMS_OK, else (or if the commit fails) roll back. */
static kms_err store_tx_end(struct store_conn *c, kms_err rc, const char *op)
{
    if (is_pg(c))
        return pg_tx_end(c, rc, op);
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

static const struct store_bind *bind_of(const struct store_row *r)
{
    return (const struct store_bind *)r;
}

/* PostgreSQL binary integers are big-endian, 2, 4 or 8 bytes by type. */
static int64_t pg_int(const struct store_bind *b, int col)
{
    if (b->res == NULL || col >= PQnfields(b->res) || PQgetisnull(b->res, b->row, col))
        return 0;
    const unsigned char *p = (const unsigned char *)PQgetvalue(b->res, b->row, col);
    int len = PQgetlength(b->res, b->row, col);
    if (len != 1 && len != 2 && len != 4 && len != 8)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < len; i++)
        v = (v << 8) | p[i];
    /* Sign-extend the shorter widths. */
    if (len < 8 && (p[0] & 0x80) && PQftype(b->res, col) != PG_OID_BOOL)
        v |= ~(uint64_t)0 << (8 * len);
    return (int64_t)v;
}

int64_t store_col_int64(const struct store_row *r, int col)
{
    const struct store_bind *b = bind_of(r);
    if (is_pg(b->c))
        return pg_int(b, col);
    return sqlite3_column_int64(b->st, col);
}

void store_col_blob(const struct store_row *r, int col, const uint8_t **out, size_t *out_len)
{
    const struct store_bind *b = bind_of(r);
    *out = NULL;
    *out_len = 0;
    if (is_pg(b->c)) {
        if (b->res == NULL || col >= PQnfields(b->res) || PQgetisnull(b->res, b->row, col))
            return;
        *out = (const uint8_t *)PQgetvalue(b->res, b->row, col);
        *out_len = (size_t)PQgetlength(b->res, b->row, col);
        return;
    }
    const void *v = sqlite3_column_blob(b->st, col);
    int n = sqlite3_column_bytes(b->st, col);
    if (v != NULL && n >= 0) {
        *out = v;
        *out_len = (size_t)n;
    }
}

kms_err store_col_text(const struct store_row *r, int col, char *dst, size_t size,
                       const char *op)
{
    const struct store_bind *b = bind_of(r);
    const char *t = NULL;
    size_t n = 0;
    if (is_pg(b->c)) {
        if (b->res != NULL && col < PQnfields(b->res) && !PQgetisnull(b->res, b->row, col)) {
            t = PQgetvalue(b->res, b->row, col);
            n = (size_t)PQgetlength(b->res, b->row, col);
        }
    } else {
        t = (const char *)sqlite3_column_text(b->st, col);
        int len = sqlite3_column_bytes(b->st, col);
        n = len > 0 ? (size_t)len : 0;
    }
    KMS_ENSURE(t != NULL && n < size, KMS_ERR_INTERNAL,
               "store: %s: stored text in column %d out of bounds", op, col);
    memcpy(dst, t, n);
    dst[n] = '\0';
    return KMS_OK;
}

kms_err store_col_hsm_id(const struct store_row *r, int col, uint8_t dst[KMS_HSM_ID_LEN],
                         const char *op)
{
    const uint8_t *v = NULL;
    size_t n = 0;
    store_col_blob(r, col, &v, &n);
    KMS_ENSURE(v != NULL && n == KMS_HSM_ID_LEN, KMS_ERR_INTERNAL,
               "store: %s: stored hsm id has the wrong length", op);
    memcpy(dst, v, KMS_HSM_ID_LEN);
    return KMS_OK;
}

kms_err store_col_u32(const struct store_row *r, int col, uint32_t *out, const char *op)
{
    int64_t v = store_col_int64(r, col);
    KMS_ENSURE(v >= 0 && v <= UINT32_MAX, KMS_ERR_INTERNAL,
               "store: %s: stored version out of range", op);
    *out = (uint32_t)v;
    return KMS_OK;
}

/* Enumerations are range-checked on the way out too, so a row this build
 * does not understand is an error rather than a value no switch handles. */
kms_err store_col_enum(const struct store_row *r, int col, int lo, int hi, int *out,
                       const char *op)
{
    int64_t v = store_col_int64(r, col);
    KMS_ENSURE(v >= lo && v <= hi, KMS_ERR_INTERNAL,
               "store: %s: stored value %" PRId64 " in column %d is unknown", op, v, col);
    *out = (int)v;
    return KMS_OK;
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

/* ---- statements prepared per call (rare operations) ------------------------ */

kms_err store_prep(struct store_conn *c, const char *sql, const char *op, struct store_bind *out)
{
    bind_init(out, c);
    if (is_pg(c)) {
        out->sql = store_pg_sql(sql, &out->nparams);
        KMS_ENSURE(out->sql != NULL, KMS_ERR_NOMEM, "store: %s: out of memory", op);
        out->own_sql = true;
        return KMS_OK;
    }
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
    if (is_pg(b->c)) {
        store_done(b);
        if (b->own_sql)
            free(b->sql);
        b->sql = NULL;
        b->own_sql = false;
        return;
    }
    sqlite3_finalize(b->st);
    b->st = NULL;
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
        *out_changes = (int)store_changes(c);
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
        *out = store_col_int64(store_row_of(&b), 0);
    if (out_row)
        *out_row = row;
    store_fin(&b);
    return rc;
}

/* A pause of 1..2^attempt ms (at most 128), random so that two nodes that
 * collided do not collide again in step. */
static void retry_pause(int attempt)
{
    unsigned cap = 1u << (attempt < 7 ? attempt : 7);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    unsigned ms = 1 + (unsigned)((uint64_t)now.tv_nsec * 2654435761u % cap);
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

kms_err store_tx_run(struct kms_store *s, bool write, store_tx_body body, void *arg, const char *op)
{
    struct store_conn *c = write ? store_writer_take(s) : store_reader_take(s);
    kms_err rc = KMS_OK;
    for (int attempt = 0;; attempt++) {
        c->pg_retryable = false;
        rc = store_tx_begin(c, write, op);
        if (rc == KMS_OK)
            rc = store_tx_end(c, body(c, arg, op), op);
        /* Only PostgreSQL fails a transaction for another's sake, and only
         * a write one (a REPEATABLE READ READ ONLY snapshot never fails so);
         * the body runs again from its first read, on the new state. */
        if (rc == KMS_OK || !write || !is_pg(c) || !c->pg_retryable ||
            attempt + 1 >= STORE_PG_TX_ATTEMPTS)
            break;
        retry_pause(attempt);
    }
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
            rc = read(store_row_of(&b), elem, op);
            *out_found = rc == KMS_OK;
        }
        store_fin(&b);
    }
    store_conn_give(c);
    return rc;
}
