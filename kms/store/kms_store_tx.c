/*
 * kms_store_tx.c - store transactions (begin, commit or roll back, and on
 * PostgreSQL the re-run of a write that lost a serialization race) and the
 * one-call queries built on statements (prepare, bind, run or collect,
 * finalize). Only the transaction statements differ between the backends,
 * and they are chosen here.
 */
#include "kms_store_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

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
    if (!store_conn_is_pg(c))
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
    if (store_conn_is_pg(c))
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

kms_err store_tx_run(struct store_db *s, bool write, store_tx_body body, void *arg, const char *op)
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
        if (rc == KMS_OK || !write || !store_conn_is_pg(c) || !c->pg_retryable ||
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

kms_err store_list_query(struct store_db *s, const char *sql, const char *op, store_binder bind,
                         const void *arg, size_t elem, size_t max, store_row_reader read,
                         void **out, size_t *out_n)
{
    struct store_conn *c = store_reader_take(s);
    kms_err rc = store_prep_collect(c, sql, op, bind, arg, elem, max, read, out, out_n);
    store_conn_give(c);
    return rc;
}

kms_err store_query_row(struct store_db *s, const char *sql, const char *op, store_binder bind,
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
