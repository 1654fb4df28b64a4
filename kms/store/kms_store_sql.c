/*
 * kms_store_sql.c - running one statement on either backend (SQLite,
 * PostgreSQL): connection leases, cached and per-call statements, binding,
 * stepping, collecting rows, and decoding columns.
 *
 * The SQL is kept to what PostgreSQL also accepts (row values, partial
 * indexes, USING joins, ON CONFLICT, CASE rather than two-argument max()),
 * so both backends run the same text: ?N becomes $N for PostgreSQL. The
 * texts of the cached statements are in kms_store_stmts.c; transactions
 * and the one-call queries built on statements in kms_store_tx.c.
 */
#include "kms_store_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- connections -------------------------------------------------------- */

struct store_conn *store_writer_take(struct store_db *s)
{
    pthread_mutex_lock(&s->writer.mu);
    return &s->writer;
}

/* Any idle reader; else wait on one picked round-robin, so waiters spread. */
struct store_conn *store_reader_take(struct store_db *s)
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
    if (store_conn_is_pg(c)) {
        if (c->pgsql[id] == NULL) {
            c->pgsql[id] = store_pg_sql(store_stmt_text(id), &c->pgn[id]);
            KMS_ENSURE(c->pgsql[id] != NULL, KMS_ERR_NOMEM, "store: %s: out of memory", op);
        }
        out->sql = c->pgsql[id];
        out->nparams = c->pgn[id];
        return KMS_OK;
    }
    if (c->stmt[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, store_stmt_text(id), -1, SQLITE_PREPARE_PERSISTENT,
                                    &c->stmt[id], NULL);
        if (rc != SQLITE_OK)
            return store_sql_err(c->db, rc, op);
    }
    out->st = c->stmt[id];
    return KMS_OK;
}

int store_param_count(const struct store_bind *b)
{
    return store_conn_is_pg(b->c) ? b->nparams : sqlite3_bind_parameter_count(b->st);
}

int64_t store_changes(const struct store_conn *c)
{
    return store_conn_is_pg(c) ? c->pg_changes : sqlite3_changes(c->db);
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c))
        return pg_int(b, col);
    return sqlite3_column_int64(b->st, col);
}

void store_col_blob(const struct store_row *r, int col, const uint8_t **out, size_t *out_len)
{
    const struct store_bind *b = bind_of(r);
    *out = NULL;
    *out_len = 0;
    if (store_conn_is_pg(b->c)) {
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
    if (store_conn_is_pg(b->c)) {
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

/* ---- statements prepared per call (rare operations) ------------------------ */

kms_err store_prep(struct store_conn *c, const char *sql, const char *op, struct store_bind *out)
{
    bind_init(out, c);
    if (store_conn_is_pg(c)) {
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
    if (store_conn_is_pg(b->c)) {
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
