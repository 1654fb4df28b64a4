/*
 * audit_pg_sequencer.c - the sequencer thread of an audit log in
 * PostgreSQL. At every poll: a holder checks its lock session; a node that
 * is not the holder tries the advisory lock (one sequencer per region) and,
 * winning it, takes over (a new fencing epoch, the tree rebuilt and checked
 * against the stored root); the holder runs rounds (audit_pg_round.c); and
 * every node follows the tree (audit_pg_follow.c).
 */
#include "audit_log_pg_internal.h"

static void set_seq(struct audit_log *log, bool is_seq, int pid)
{
    pthread_mutex_lock(&log->lock);
    log->pg->is_seq = is_seq;
    log->pg->lock_pid = pid;
    pthread_mutex_unlock(&log->lock);
}

/* Give up the role: drop the tree made as holder and end the lock session,
 * which frees the lock for whoever polls next (this node included, which
 * then starts again from what the database says). */
void audit_pg_drop_leadership(struct audit_log *log, const char *why)
{
    struct audit_pg *pg = log->pg;
    if (pg->holder)
        kms_log_warn("audit", "region %s: no longer the audit sequencer: %s", log->region, why);
    pg->holder = false;
    audit_tree_free(pg->stree);
    pg->stree = NULL;
    PQfinish(pg->lconn);
    pg->lconn = NULL;
    set_seq(log, false, 0);
}

/* Won the lock: fence out every earlier holder (epoch + 1), then rebuild
 * the tree from the database and check it against the stored root. */
static kms_err become_sequencer(struct audit_log *log, int pid)
{
    struct audit_pg *pg = log->pg;
    char holder[64];
    snprintf(holder, sizeof(holder), "pid %d", pid);
    const char *v[2] = {log->region, holder};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->sconn, "audit takeover",
                            "UPDATE custos_audit_tree SET epoch = epoch + 1, holder = $2"
                            " WHERE region = $1 RETURNING epoch, size, root",
                            2, v, NULL, NULL, 1, &r));
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(PQntuples(r) == 1, done, KMS_ERR_IO, "region %s: no audit tree row",
                    log->region);
    pg->epoch = audit_pg_i64(r, 0, 0);
    uint64_t size = (uint64_t)audit_pg_i64(r, 0, 1);
    audit_hash stored;
    bool have_root = !PQgetisnull(r, 0, 2) && PQgetlength(r, 0, 2) == 32;
    if (have_root)
        memcpy(stored, PQgetvalue(r, 0, 2), 32);
    PQclear(r);
    r = NULL;
    audit_tree_free(pg->stree);
    pg->stree = NULL;
    KMS_GUARD_GOTO(audit_tree_new(&pg->stree), done);
    bool more = true;
    while (more && audit_tree_size(pg->stree) < size)
        KMS_GUARD_GOTO(audit_pg_read_leaves(log, pg->sconn, pg->stree, &more), done);
    KMS_ENSURE_GOTO(audit_tree_size(pg->stree) == size, done, KMS_ERR_IO,
                    "region %s: the tree has %" PRIu64
                    " sequenced events, the tree row says %" PRIu64 ": the database was altered",
                    log->region, audit_tree_size(pg->stree), size);
    if (size > 0) {
        audit_hash root;
        KMS_GUARD_GOTO(audit_tree_root(pg->stree, size, root), done);
        KMS_ENSURE_GOTO(have_root && memcmp(root, stored, 32) == 0, done, KMS_ERR_IO,
                        "region %s: the sequenced events do not give the stored root: the "
                        "database was altered",
                        log->region);
    }
    const char *v1[1] = {log->region};
    KMS_GUARD_GOTO(audit_pg_exec(pg->sconn, "audit takeover",
                                 "SELECT tree_size, timestamp_ms FROM custos_audit_heads"
                                 " WHERE region = $1 ORDER BY tree_size DESC LIMIT 1",
                                 1, v1, NULL, NULL, 1, &r),
                   done);
    pg->have_head = PQntuples(r) == 1;
    pg->s_head_size = pg->have_head ? (uint64_t)audit_pg_i64(r, 0, 0) : 0;
    pg->s_head_time = pg->have_head ? audit_pg_i64(r, 0, 1) : 0;
    KMS_GUARD_GOTO(audit_pg_load_sign_key(log, pg->sconn), done);
    pg->holder = true;
    set_seq(log, true, pid);
    kms_log_info("audit",
                 "region %s: this node is the audit sequencer (epoch %" PRId64
                 ", tree size %" PRIu64 ")",
                 log->region, pg->epoch, size);
done:
    PQclear(r);
    return rc;
}

static kms_err try_elect(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    KMS_GUARD(audit_pg_connect(pg, &pg->lconn));
    char key[80];
    snprintf(key, sizeof(key), "audit:%s", log->region);
    const char *v[1] = {key};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->lconn, "audit election",
                            "SELECT pg_try_advisory_lock(1129529685, hashtext($1)),"
                            " pg_backend_pid()",
                            1, v, NULL, NULL, 0, &r));
    bool won = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    int pid = PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 1)) : 0;
    PQclear(r);
    if (!won)
        return KMS_OK;
    kms_err rc = become_sequencer(log, pid);
    if (rc != KMS_OK)
        audit_pg_drop_leadership(log, kms_err_detail());
    return rc;
}

/* One round; a holder whose round failed gives up the role (the error,
 * kept, says why). */
static kms_err round_or_step_down(struct audit_log *log, bool stopping)
{
    kms_err rc = audit_pg_sequence_round(log, stopping);
    if (rc != KMS_OK) {
        char why[300];
        snprintf(why, sizeof(why), "%s", kms_err_detail());
        audit_pg_drop_leadership(log, why);
        kms_err_set(rc, "%s", why);
    }
    return rc;
}

/* Elect, sequence, follow: one poll. */
static void poll_once(struct audit_log *log, bool stopping)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = audit_pg_connect(pg, &pg->sconn);
    /* A holder whose lock session is gone steps down before it orders
     * anything (the fence would refuse it anyway once another node took
     * over; this makes it notice when none has yet). */
    if (rc == KMS_OK && pg->holder &&
        audit_pg_cmd(pg->lconn, "audit lock session", "SELECT 1") != KMS_OK)
        audit_pg_drop_leadership(log, "its lock session ended");
    if (rc == KMS_OK && !pg->holder && !stopping)
        rc = try_elect(log);
    /* Drain what is committed: a full round asks for another at once. */
    for (int i = 0; rc == KMS_OK && pg->holder && i < 100; i++) {
        uint64_t before = audit_tree_size(pg->stree);
        rc = round_or_step_down(log, stopping);
        if (rc == KMS_OK && audit_tree_size(pg->stree) - before < AUDIT_PG_SEQ_BATCH)
            break;
    }
    kms_err frc = KMS_ERR_IO;
    if (pg->sconn != NULL && !kms_pg_broken(pg->sconn)) {
        frc = audit_pg_follow(log);
        if (rc == KMS_OK)
            rc = frc;
    }
    /* Readiness sees an unreachable database within a poll, before an
     * append has to fail on it. */
    pthread_mutex_lock(&log->lock);
    log->pg_unreachable = frc != KMS_OK && (pg->sconn == NULL || kms_pg_broken(pg->sconn));
    pthread_mutex_unlock(&log->lock);
    if (rc != KMS_OK) {
        if (pg->sconn != NULL && kms_pg_broken(pg->sconn) && pg->holder)
            audit_pg_drop_leadership(log, "connection lost");
        if (now_ms() >= pg->next_conn_warn_ms) {
            kms_log_warn("audit", "region %s: audit sequencer/follower: %s", log->region,
                         kms_err_detail());
            pg->next_conn_warn_ms = now_ms() + 10000;
        }
    }
}

void *audit_pg_sequencer_main(void *arg)
{
    struct audit_log *log = arg;
    struct audit_pg *pg = log->pg;
    pthread_mutex_lock(&log->lock);
    for (;;) {
        int64_t due = now_ms() + pg->poll_ms;
        struct timespec until = {(time_t)(due / 1000), (long)(due % 1000) * 1000000};
        while (!pg->kick && !pg->stop && !pg->pause && now_ms() < due)
            if (pthread_cond_timedwait(&pg->wake, &log->lock, &until) == ETIMEDOUT)
                break;
        while (pg->pause && !pg->stop) {
            pg->paused = true;
            pthread_cond_broadcast(&pg->wake);
            pthread_cond_wait(&pg->wake, &log->lock);
        }
        pg->paused = false;
        pg->kick = false;
        /* pg->stop comes after the writer stopped: its last batch is then
         * ordered and signed by a final head, as the files backend does at
         * shutdown. */
        bool stop = pg->stop;
        pthread_mutex_unlock(&log->lock);
        poll_once(log, stop);
        pthread_mutex_lock(&log->lock);
        if (stop)
            break;
    }
    pthread_mutex_unlock(&log->lock);
    return NULL;
}

/* ---- what this node knows of the role, and the tests' hooks ---- */

bool audit_log_is_sequencer(struct audit_log *log)
{
    if (log->pg == NULL)
        return true; /* a files log is its own sequencer */
    pthread_mutex_lock(&log->lock);
    bool s = log->pg->is_seq;
    pthread_mutex_unlock(&log->lock);
    return s;
}

int audit_log_pg_lock_pid(struct audit_log *log)
{
    if (log->pg == NULL)
        return 0;
    pthread_mutex_lock(&log->lock);
    int pid = log->pg->lock_pid;
    pthread_mutex_unlock(&log->lock);
    return pid;
}

void audit_log_pg_pause(struct audit_log *log, bool pause)
{
    struct audit_pg *pg = log->pg;
    if (pg == NULL)
        return;
    pthread_mutex_lock(&log->lock);
    pg->pause = pause;
    pthread_cond_broadcast(&pg->wake);
    while (pause && !pg->paused && pg->seq_running)
        pthread_cond_wait(&pg->wake, &log->lock);
    pthread_mutex_unlock(&log->lock);
}

kms_err audit_log_pg_round(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    KMS_ENSURE(pg != NULL && pg->holder, KMS_ERR_FAILED_PRECONDITION,
               "not the sequencer (as far as this node knows)");
    return round_or_step_down(log, false);
}
