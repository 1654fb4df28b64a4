/*
 * audit_pg_writer.c - the writer thread of an audit log in PostgreSQL: it
 * takes every queued event and inserts them in one transaction (group
 * commit), releasing their waiters only once it has committed; a failed
 * batch fails the log until a fresh connection answers.
 */
#include "audit_log_pg_internal.h"

/* Events per INSERT statement. */
#define INSERT_CHUNK 1000

/* One transaction for the batch: committed means every event of it is in
 * the database (synchronous_commit on), so its waiters may be released. */
static kms_err insert_batch(struct audit_log *log, const struct pending *w)
{
    struct audit_pg *pg = log->pg;
    KMS_GUARD(audit_pg_connect(pg, &pg->wconn));
    size_t total = w->n;
    bool tx = total > INSERT_CHUNK;
    kms_err rc = KMS_OK;
    const char **vals = calloc(INSERT_CHUNK + 1, sizeof(*vals));
    int *lens = calloc(INSERT_CHUNK + 1, sizeof(*lens));
    int *fmts = calloc(INSERT_CHUNK + 1, sizeof(*fmts));
    char *sql = malloc(64 + (size_t)INSERT_CHUNK * 16);
    KMS_ENSURE_GOTO(vals && lens && fmts && sql, done, KMS_ERR_NOMEM, "out of memory");
    if (tx)
        KMS_GUARD_GOTO(audit_pg_cmd(pg->wconn, "audit append", "BEGIN"), done);
    size_t pos = 0, i = 0;
    while (i < total) {
        size_t k = total - i < INSERT_CHUNK ? total - i : INSERT_CHUNK;
        int o = snprintf(sql, 64, "INSERT INTO custos_audit_events (region, event) VALUES ");
        vals[0] = log->region;
        lens[0] = 0;
        fmts[0] = 0;
        for (size_t j = 0; j < k; j++) {
            size_t len = (size_t)get_be(w->buf + pos, 4);
            vals[j + 1] = (const char *)w->buf + pos + FRAME_HEAD;
            lens[j + 1] = (int)len;
            fmts[j + 1] = 1;
            pos += FRAME_HEAD + len;
            o += sprintf(sql + o, "%s($1,$%zu)", j ? "," : "", j + 2);
        }
        PGresult *r = NULL;
        KMS_GUARD_GOTO(
            audit_pg_exec(pg->wconn, "audit append", sql, (int)k + 1, vals, lens, fmts, 0, &r),
            done);
        PQclear(r);
        i += k;
    }
    if (tx)
        KMS_GUARD_GOTO(audit_pg_cmd(pg->wconn, "audit append", "COMMIT"), done);
done:
    if (rc != KMS_OK)
        audit_pg_rollback(pg->wconn);
    free(vals);
    free(lens);
    free(fmts);
    free(sql);
    return rc;
}

/* The log failed: back when a fresh connection answers. Nothing that was
 * acknowledged was lost, so there is nothing to cut or re-read. Called
 * with log->lock held (dropped while it connects). */
static void try_recover(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    pthread_mutex_unlock(&log->lock);
    kms_err rc = audit_pg_connect(pg, &pg->wconn);
    if (rc == KMS_OK)
        rc = audit_pg_cmd(pg->wconn, "audit probe", "SELECT 1");
    pthread_mutex_lock(&log->lock);
    if (rc == KMS_OK) {
        log->failed = false;
        kms_log_warn("audit", "region %s: audit log writable again (PostgreSQL)", log->region);
    } else {
        log->next_recovery_ms = now_ms() + 1000;
    }
}

/* Insert one batch; called with log->lock held (dropped while it writes). */
static void write_batch(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    audit_log_group_wait(log);
    uint64_t end = 0;
    struct pending w = audit_log_take_queue(log, &end);
    pthread_mutex_unlock(&log->lock);

    uint64_t t0 = kms_metrics_now_ns();
    kms_err rc = insert_batch(log, &w);
    if (rc == KMS_OK)
        kms_metrics_audit_batch(log->metrics_id, w.n, kms_metrics_now_ns() - t0);
    pthread_mutex_lock(&log->lock);
    log->writing = w;
    if (rc == KMS_OK) {
        /* This node's sequencer (if it is one) orders them now rather
         * than at its next poll. */
        pg->kick = true;
        pthread_cond_signal(&pg->wake);
        audit_log_batch_durable(log, &w, end);
    } else {
        /* Not committed (or not known to be): every waiter of the batch
         * is refused. An event whose COMMIT reached the server but whose
         * answer was lost may still be in the log: a refused request
         * with an event, never an acknowledged one without. */
        audit_pending_notify(&w, false);
        audit_log_fail_batch(log);
    }
}

void *audit_pg_writer_main(void *arg)
{
    struct audit_log *log = arg;
    pthread_mutex_lock(&log->lock);
    for (;;) {
        int64_t due = log->failed ? log->next_recovery_ms : now_ms() + 1000;
        struct timespec until = {(time_t)(due / 1000), (long)(due % 1000) * 1000000};
        while (log->queue.n == 0 && !log->stopping && now_ms() < due)
            if (pthread_cond_timedwait(&log->work, &log->lock, &until) == ETIMEDOUT)
                break;
        if (log->failed) {
            if (log->stopping)
                break;
            if (now_ms() >= log->next_recovery_ms)
                try_recover(log);
            continue;
        }
        if (log->queue.n == 0) {
            if (log->stopping)
                break;
            continue;
        }
        write_batch(log);
    }
    pthread_mutex_unlock(&log->lock);
    return NULL;
}
