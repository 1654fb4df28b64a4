/*
 * audit_log_pg.c - the PostgreSQL backend of the audit log (audit_log_pg.h):
 * the group-committing writer, the sequencer (election, fencing, leaf
 * assignment, heads, key rotation) and the follower that keeps this node's
 * copy of the tree and newest head for readers.
 *
 * Threads and connections (each connection has one user):
 *   writer     wconn  inserts queued events, one transaction per batch
 *   sequencer  lconn  the dedicated session holding the advisory lock
 *              sconn  sequencing transactions, following the tree
 *   readers    rconn  audit_log_read / audit_log_keys, under rlock
 */
#include "audit_log_internal.h"

#include <inttypes.h>

#include "audit_log_pg.h"
#include "audit_pg_internal.h"

/* Events ordered per sequencing round, and per INSERT statement. */
#define SEQ_BATCH 1000
#define INSERT_CHUNK 1000
/* Leaves followed per query. */
#define FOLLOW_BATCH 10000

struct audit_pg {
    char conninfo[KMS_PG_CONNINFO_MAX + 1];
    char *password_source;
    unsigned poll_ms;

    PGconn *wconn; /* writer thread only */
    PGconn *lconn; /* sequencer thread only (or a test while paused) */
    PGconn *sconn; /* sequencer thread only (or a test while paused) */
    pthread_mutex_t rlock;
    PGconn *rconn; /* guarded by rlock */

    pthread_t seq_thread;
    bool seq_running;

    /* Sequencer state: its thread's (or a test's while it is paused). */
    bool holder;
    int64_t epoch;
    struct audit_tree *stree; /* every sequenced leaf, as this holder made them */
    bool have_head;
    uint64_t s_head_size;
    int64_t s_head_time;
    int64_t next_conn_warn_ms;

    /* Guarded by log->lock. */
    pthread_cond_t wake;
    bool kick;
    bool stop; /* set once the writer has stopped: a last round, then exit */
    bool pause, paused;
    bool is_seq;
    int lock_pid;
};

static struct kms_pg_target target(const struct audit_pg *pg)
{
    return (struct kms_pg_target){pg->conninfo, pg->password_source};
}

/* A connection for the log: durable commits whatever the server's default
 * (an acknowledged event must survive a crash of PostgreSQL). */
static kms_err connect_pg(struct audit_pg *pg, PGconn **c)
{
    if (*c != NULL && !kms_pg_broken(*c))
        return KMS_OK;
    PQfinish(*c);
    *c = NULL;
    struct kms_pg_target t = target(pg);
    KMS_GUARD(kms_pg_connect(&t, "kmsd-audit", c));
    kms_err rc = audit_pg_cmd(*c, "audit session", "SET synchronous_commit = on");
    if (rc != KMS_OK) {
        PQfinish(*c);
        *c = NULL;
    }
    return rc;
}

static void rollback(PGconn *c)
{
    if (c != NULL && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
}

/* ---- the writer: group commit into PostgreSQL --------------------------------------------- */

/* One transaction for the batch: committed means every event of it is in
 * the database (synchronous_commit on), so its waiters may be released. */
static kms_err insert_batch(struct audit_log *log, const struct pending *w)
{
    struct audit_pg *pg = log->pg;
    KMS_GUARD(connect_pg(pg, &pg->wconn));
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
        rollback(pg->wconn);
    free(vals);
    free(lens);
    free(fmts);
    free(sql);
    return rc;
}

static void *pg_writer_main(void *arg)
{
    struct audit_log *log = arg;
    struct audit_pg *pg = log->pg;
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
            if (now_ms() < log->next_recovery_ms)
                continue;
            /* Back when a fresh connection answers; nothing was lost that
             * was acknowledged, so there is nothing to cut or re-read. */
            pthread_mutex_unlock(&log->lock);
            kms_err rc = connect_pg(pg, &pg->wconn);
            if (rc == KMS_OK)
                rc = audit_pg_cmd(pg->wconn, "audit probe", "SELECT 1");
            pthread_mutex_lock(&log->lock);
            if (rc == KMS_OK) {
                log->failed = false;
                kms_log_warn("audit", "region %s: audit log writable again (PostgreSQL)",
                             log->region);
            } else {
                log->next_recovery_ms = now_ms() + 1000;
            }
            continue;
        }
        if (log->queue.n == 0) {
            if (log->stopping)
                break;
            continue;
        }
        if (log->cfg.commit_delay_us > 0 && log->last_batch > 1 && !log->stopping) {
            struct timespec d = {0, (long)log->cfg.commit_delay_us * 1000};
            pthread_mutex_unlock(&log->lock);
            nanosleep(&d, NULL);
            pthread_mutex_lock(&log->lock);
        }
        struct pending w = log->queue;
        log->queue = log->writing;
        log->queue.len = log->queue.n = 0;
        log->writing = w;
        uint64_t end = log->next_seq;
        pthread_mutex_unlock(&log->lock);

        uint64_t t0 = kms_metrics_now_ns();
        kms_err rc = insert_batch(log, &w);
        if (rc == KMS_OK)
            kms_metrics_audit_batch(log->metrics_id, w.n, kms_metrics_now_ns() - t0);
        pthread_mutex_lock(&log->lock);
        log->writing = w;
        if (rc == KMS_OK) {
            log->durable_seq = end;
            log->stats.events += w.n;
            log->stats.batches++;
            log->last_batch = w.n;
            if (w.n > log->stats.max_batch)
                log->stats.max_batch = w.n;
            pthread_cond_broadcast(&log->done);
            /* This node's sequencer (if it is one) orders them now rather
             * than at its next poll. */
            pg->kick = true;
            pthread_cond_signal(&pg->wake);
            pthread_mutex_unlock(&log->lock);
            audit_pending_notify(&w, true);
            pthread_mutex_lock(&log->lock);
        } else {
            /* Not committed (or not known to be): every waiter of the batch
             * is refused. An event whose COMMIT reached the server but whose
             * answer was lost may still be in the log: a refused request
             * with an event, never an acknowledged one without. */
            audit_pending_notify(&w, false);
            audit_log_fail_batch(log);
        }
    }
    pthread_mutex_unlock(&log->lock);
    return NULL;
}

/* ---- the sequencer ------------------------------------------------------------------------ */

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
static void drop_leadership(struct audit_log *log, const char *why)
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

/* The region's newest key must be in the token: the key every node signs
 * with is the one custos_audit_keys names last. */
static kms_err load_sign_key(struct audit_log *log, PGconn *c)
{
    PGresult *r = NULL;
    const char *v[1] = {log->region};
    KMS_GUARD(audit_pg_exec(c, "audit key",
                            "SELECT key_id, not_before_ms FROM custos_audit_keys WHERE region = $1"
                            " ORDER BY not_before_ms DESC, key_id DESC LIMIT 1",
                            1, v, NULL, NULL, 1, &r));
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(PQntuples(r) == 1, done, KMS_ERR_IO, "region %s has no audit key", log->region);
    const char *hex = PQgetvalue(r, 0, 0);
    struct p11_key_id id;
    bool ok = strlen(hex) == 32;
    for (int i = 0; ok && i < 16; i++) {
        unsigned b;
        ok = sscanf(hex + 2 * i, "%2x", &b) == 1;
        id.b[i] = (uint8_t)b;
    }
    KMS_ENSURE_GOTO(ok, done, KMS_ERR_IO, "region %s: audit key id %.40s is malformed", log->region,
                    hex);
    bool exists = false;
    KMS_GUARD_GOTO(p11_key_exists(log->tok, &id, &exists), done);
    KMS_ENSURE_GOTO(exists, done, KMS_ERR_CONFIG,
                    "region %s: audit signing key %s (custos_audit_keys) is missing from token "
                    "'%s': every node must see the same token",
                    log->region, hex, p11_token_label(log->tok));
    log->sign_key = id;
    log->sign_key_since_ms = audit_pg_i64(r, 0, 1);
done:
    PQclear(r);
    return rc;
}

/* Read the sequenced leaves [from, ...) (at most FOLLOW_BATCH) and append
 * their hashes to t, checking that seqs run on without a gap. */
static kms_err read_leaves(struct audit_log *log, PGconn *c, struct audit_tree *t, bool *out_more)
{
    uint64_t from = audit_tree_size(t);
    char f[24], lim[24];
    snprintf(f, sizeof(f), "%" PRIu64, from);
    snprintf(lim, sizeof(lim), "%d", FOLLOW_BATCH);
    const char *v[3] = {log->region, f, lim};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(c, "audit follow",
                            "SELECT seq, event FROM custos_audit_events WHERE region = $1"
                            " AND seq >= $2::bigint ORDER BY seq LIMIT $3::int",
                            3, v, NULL, NULL, 1, &r));
    kms_err rc = KMS_OK;
    int rows = PQntuples(r);
    for (int i = 0; i < rows; i++) {
        KMS_ENSURE_GOTO((uint64_t)audit_pg_i64(r, i, 0) == from + (uint64_t)i, done, KMS_ERR_IO,
                        "region %s: sequenced event %" PRIu64 " is missing: the database was "
                        "altered",
                        log->region, from + (uint64_t)i);
        audit_hash h;
        audit_leaf_hash((const uint8_t *)PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1), h);
        KMS_GUARD_GOTO(audit_tree_append(t, h), done);
    }
    *out_more = rows == FOLLOW_BATCH;
done:
    PQclear(r);
    return rc;
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
        KMS_GUARD_GOTO(read_leaves(log, pg->sconn, pg->stree, &more), done);
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
    KMS_GUARD_GOTO(load_sign_key(log, pg->sconn), done);
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
    KMS_GUARD(connect_pg(pg, &pg->lconn));
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
        drop_leadership(log, kms_err_detail());
    return rc;
}

/* Rotate the signing key by age, inside the round's transaction: the new
 * key's row is fenced like the head it signs. *out_old: the key to destroy
 * once that commits (rotated set true). */
static kms_err rotate_in_tx(struct audit_log *log, struct p11_key_id *out_old, bool *rotated,
                            struct p11_key_id *out_new)
{
    struct p11_key_id id;
    int64_t t = 0;
    uint8_t *rec = NULL;
    size_t len = 0;
    KMS_GUARD(audit_log_gen_key(log, &id, &t, &rec, &len));
    char hex[33], nb[24];
    p11_key_id_hex(&id, hex);
    snprintf(nb, sizeof(nb), "%" PRId64, t);
    const char *v[4] = {log->region, hex, nb, (const char *)rec};
    int lens[4] = {0, 0, 0, (int)len}, fmts[4] = {0, 0, 0, 1};
    PGresult *r = NULL;
    kms_err rc = audit_pg_exec(log->pg->sconn, "audit key rotation",
                               "INSERT INTO custos_audit_keys (region, key_id, not_before_ms,"
                               " record) VALUES ($1, $2, $3::bigint, $4)",
                               4, v, lens, fmts, 0, &r);
    PQclear(r);
    free(rec);
    if (rc != KMS_OK) {
        p11_key_destroy(log->tok, &id);
        return rc;
    }
    *out_old = log->sign_key;
    *out_new = id;
    *rotated = true;
    log->sign_key = id;
    log->sign_key_since_ms = t;
    return KMS_OK;
}

struct seq_row {
    int64_t id;
    uint8_t *leaf;
    size_t len;
};

/* One round as holder: order up to SEQ_BATCH committed unsequenced events
 * after the current tree, and sign a head when one is due, all in one
 * transaction fenced by the compare-and-set on (size, epoch). Any failure
 * leaves the tree in the database untouched and this node not the holder. */
static kms_err sequence_round(struct audit_log *log, bool stopping)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = KMS_OK;
    PGresult *r = NULL;
    struct seq_row *rows = NULL;
    int nrows = 0;
    uint8_t *head = NULL;
    size_t head_len = 0;
    bool rotated = false;
    struct p11_key_id old_key, new_key;
    struct p11_key_id kept_key = log->sign_key;
    int64_t kept_since = log->sign_key_since_ms;
    uint64_t old = audit_tree_size(pg->stree);

    char lim[16];
    snprintf(lim, sizeof(lim), "%d", SEQ_BATCH);
    const char *v[2] = {log->region, lim};
    KMS_GUARD_GOTO(audit_pg_exec(pg->sconn, "audit sequencer",
                                 "SELECT id, event FROM custos_audit_events WHERE region = $1"
                                 " AND seq IS NULL ORDER BY id LIMIT $2::int",
                                 2, v, NULL, NULL, 1, &r),
                   done);
    nrows = PQntuples(r);
    uint64_t size = old + (uint64_t)nrows;
    int64_t now = now_ms();
    bool head_due =
        !pg->have_head || (size > pg->s_head_size &&
                           (size - pg->s_head_size >= log->cfg.head_every_events ||
                            now >= pg->s_head_time + (int64_t)log->cfg.head_every_ms || stopping));
    if (nrows == 0 && !head_due)
        goto done;
    rows = calloc(nrows ? (size_t)nrows : 1, sizeof(*rows));
    KMS_ENSURE_GOTO(rows != NULL, done, KMS_ERR_NOMEM, "out of memory");
    /* The leaf is the event as made, with its seq: fixed from here on. */
    for (int i = 0; i < nrows; i++) {
        rows[i].id = audit_pg_i64(r, i, 0);
        Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(
            NULL, (size_t)PQgetlength(r, i, 1), (const uint8_t *)PQgetvalue(r, i, 1));
        KMS_ENSURE_GOTO(ev != NULL, done, KMS_ERR_IO,
                        "region %s: appended event id %" PRId64 " does not decode", log->region,
                        rows[i].id);
        ev->seq = old + (uint64_t)i;
        rows[i].len = custos__v1__audit_event__get_packed_size(ev);
        rows[i].leaf = malloc(rows[i].len ? rows[i].len : 1);
        if (rows[i].leaf != NULL)
            custos__v1__audit_event__pack(ev, rows[i].leaf);
        custos__v1__audit_event__free_unpacked(ev, NULL);
        KMS_ENSURE_GOTO(rows[i].leaf != NULL, done, KMS_ERR_NOMEM, "out of memory");
        audit_hash h;
        audit_leaf_hash(rows[i].leaf, rows[i].len, h);
        /* stree now runs ahead of the database: any failure below drops it. */
        KMS_GUARD_GOTO(audit_tree_append(pg->stree, h), done);
    }
    PQclear(r);
    r = NULL;
    audit_hash root;
    KMS_GUARD_GOTO(audit_tree_root(pg->stree, size, root), done);

    KMS_GUARD_GOTO(audit_pg_cmd(pg->sconn, "audit sequencer", "BEGIN"), done);
    /* The fence, first, so that it also locks the row until COMMIT: a
     * holder deposed by a newer epoch, or behind the stored size, changes
     * nothing. */
    char sz[24], osz[24], ep[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    snprintf(osz, sizeof(osz), "%" PRIu64, old);
    snprintf(ep, sizeof(ep), "%" PRId64, pg->epoch);
    {
        const char *cv[5] = {log->region, sz, (const char *)root, osz, ep};
        int cl[5] = {0, 0, 32, 0, 0}, cf[5] = {0, 0, 1, 0, 0};
        KMS_GUARD_GOTO(audit_pg_exec(pg->sconn, "audit sequencer: fence",
                                     "UPDATE custos_audit_tree SET size = $2::bigint, root = $3"
                                     " WHERE region = $1 AND size = $4::bigint"
                                     " AND epoch = $5::bigint",
                                     5, cv, cl, cf, 0, &r),
                       done);
        KMS_ENSURE_GOTO(strcmp(PQcmdTuples(r), "1") == 0, done, KMS_ERR_FAILED_PRECONDITION,
                        "region %s: the tree moved on or another node took over (tree size "
                        "%" PRIu64 ", epoch %" PRId64 " no longer current): deposed",
                        log->region, old, pg->epoch);
        PQclear(r);
        r = NULL;
    }
    for (int i = 0; i < nrows; i++) {
        char id[24], seq[24];
        snprintf(id, sizeof(id), "%" PRId64, rows[i].id);
        snprintf(seq, sizeof(seq), "%" PRIu64, old + (uint64_t)i);
        const char *uv[4] = {log->region, id, seq, (const char *)rows[i].leaf};
        int ul[4] = {0, 0, 0, (int)rows[i].len}, uf[4] = {0, 0, 0, 1};
        KMS_GUARD_GOTO(audit_pg_exec(pg->sconn, "audit sequencer: leaf",
                                     "UPDATE custos_audit_events SET seq = $3::bigint, event = $4"
                                     " WHERE region = $1 AND id = $2::bigint AND seq IS NULL",
                                     4, uv, ul, uf, 0, &r),
                       done);
        KMS_ENSURE_GOTO(strcmp(PQcmdTuples(r), "1") == 0, done, KMS_ERR_FAILED_PRECONDITION,
                        "region %s: event id %" PRId64 " was sequenced by another node: deposed",
                        log->region, rows[i].id);
        PQclear(r);
        r = NULL;
    }
    if (head_due) {
        int64_t t = now;
        if (pg->have_head && t <= pg->s_head_time)
            t = pg->s_head_time + 1; /* timestamps never go backwards */
        if (log->cfg.key_max_age_s > 0 &&
            t - log->sign_key_since_ms > log->cfg.key_max_age_s * 1000)
            KMS_GUARD_GOTO(rotate_in_tx(log, &old_key, &rotated, &new_key), done);
        if (t < log->sign_key_since_ms)
            t = log->sign_key_since_ms; /* never before the key that signs it */
        KMS_GUARD_GOTO(audit_log_sign_head(log, size, root, t, &head, &head_len), done);
        char ts[24];
        snprintf(ts, sizeof(ts), "%" PRId64, t);
        const char *hv[4] = {log->region, sz, ts, (const char *)head};
        int hl[4] = {0, 0, 0, (int)head_len}, hf[4] = {0, 0, 0, 1};
        KMS_GUARD_GOTO(audit_pg_exec(pg->sconn, "audit sequencer: head",
                                     "INSERT INTO custos_audit_heads (region, tree_size,"
                                     " timestamp_ms, head) VALUES ($1, $2::bigint, $3::bigint, $4)",
                                     4, hv, hl, hf, 0, &r),
                       done);
        PQclear(r);
        r = NULL;
        pg->s_head_time = t; /* restored below if the commit fails */
    }
    KMS_GUARD_GOTO(audit_pg_cmd(pg->sconn, "audit sequencer: commit", "COMMIT"), done);
    if (head_due) {
        pg->have_head = true;
        pg->s_head_size = size;
        pthread_mutex_lock(&log->lock);
        log->stats.heads++;
        pthread_mutex_unlock(&log->lock);
    }
    if (rotated) {
        char hex[33];
        p11_key_id_hex(&new_key, hex);
        kms_log_info("audit", "region %s: new audit signing key %s", log->region, hex);
        if (p11_key_destroy(log->tok, &old_key) != KMS_OK)
            kms_log_warn("audit", "region %s: old audit key not destroyed: %s", log->region,
                         kms_err_detail());
    }
done:
    PQclear(r);
    if (rc != KMS_OK) {
        rollback(pg->sconn);
        if (rotated) {
            p11_key_destroy(log->tok, &new_key);
            log->sign_key = kept_key;
            log->sign_key_since_ms = kept_since;
        }
    }
    for (int i = 0; rows && i < nrows; i++)
        free(rows[i].leaf);
    free(rows);
    free(head);
    return rc;
}

/* Bring this node's copy of the tree (what readers are served) up to what
 * the database holds, then its newest head at or below that size, checked
 * against the tree. Sequencer thread only: the only writer of log->tree. */
static kms_err follow(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    bool more = true;
    while (more)
        KMS_GUARD(read_leaves(log, pg->sconn, log->tree, &more));
    uint64_t size = audit_tree_size(log->tree);
    pthread_mutex_lock(&log->lock);
    uint64_t have = log->head != NULL ? log->head_size + 1 : 0;
    pthread_mutex_unlock(&log->lock);
    char sz[24], hv[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    snprintf(hv, sizeof(hv), "%" PRIu64, have);
    const char *v[3] = {log->region, sz, hv};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->sconn, "audit follow: head",
                            "SELECT head FROM custos_audit_heads WHERE region = $1"
                            " AND tree_size <= $2::bigint AND tree_size >= $3::bigint"
                            " ORDER BY tree_size DESC LIMIT 1",
                            3, v, NULL, NULL, 1, &r));
    kms_err rc = KMS_OK;
    if (PQntuples(r) == 1) {
        size_t len = (size_t)PQgetlength(r, 0, 0);
        const uint8_t *p = (const uint8_t *)PQgetvalue(r, 0, 0);
        Custos__V1__SignedTreeHead *sth = custos__v1__signed_tree_head__unpack(NULL, len, p);
        audit_hash root;
        KMS_ENSURE_GOTO(sth != NULL && sth->root_hash.len == 32 && sth->tree_size <= size &&
                            sth->region != NULL && strcmp(sth->region, log->region) == 0,
                        done, KMS_ERR_IO, "region %s: a stored head does not decode as its own",
                        log->region);
        KMS_GUARD_GOTO(audit_tree_root(log->tree, sth->tree_size, root), done);
        KMS_ENSURE_GOTO(memcmp(root, sth->root_hash.data, 32) == 0, done, KMS_ERR_IO,
                        "region %s: the head of tree size %" PRIu64 " does not match the events: "
                        "the database was altered",
                        log->region, sth->tree_size);
        uint8_t *copy = malloc(len ? len : 1);
        KMS_ENSURE_GOTO(copy != NULL, done, KMS_ERR_NOMEM, "out of memory");
        memcpy(copy, p, len);
        pthread_mutex_lock(&log->lock);
        free(log->head);
        log->head = copy;
        log->head_len = len;
        log->head_size = sth->tree_size;
        log->head_time_ms = sth->timestamp_ms;
        pthread_mutex_unlock(&log->lock);
    done:
        if (sth)
            custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    }
    PQclear(r);
    return rc;
}

/* Elect, sequence, follow: one poll. */
static void poll_once(struct audit_log *log, bool stopping)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = connect_pg(pg, &pg->sconn);
    /* A holder whose lock session is gone steps down before it orders
     * anything (the fence would refuse it anyway once another node took
     * over; this makes it notice when none has yet). */
    if (rc == KMS_OK && pg->holder &&
        audit_pg_cmd(pg->lconn, "audit lock session", "SELECT 1") != KMS_OK)
        drop_leadership(log, "its lock session ended");
    if (rc == KMS_OK && !pg->holder && !stopping)
        rc = try_elect(log);
    /* Drain what is committed: a full round asks for another at once. */
    for (int i = 0; rc == KMS_OK && pg->holder && i < 100; i++) {
        uint64_t before = audit_tree_size(pg->stree);
        rc = sequence_round(log, stopping);
        if (rc != KMS_OK) {
            char why[300];
            snprintf(why, sizeof(why), "%s", kms_err_detail());
            drop_leadership(log, why);
            kms_err_set(rc, "%s", why);
        } else if (audit_tree_size(pg->stree) - before < SEQ_BATCH) {
            break;
        }
    }
    kms_err frc = KMS_ERR_IO;
    if (pg->sconn != NULL && !kms_pg_broken(pg->sconn)) {
        frc = follow(log);
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
            drop_leadership(log, "connection lost");
        if (now_ms() >= pg->next_conn_warn_ms) {
            kms_log_warn("audit", "region %s: audit sequencer/follower: %s", log->region,
                         kms_err_detail());
            pg->next_conn_warn_ms = now_ms() + 10000;
        }
    }
}

static void *pg_sequencer_main(void *arg)
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

/* ---- open / close / readers ----------------------------------------------------------------- */

/* The first node of a region makes its signing key; the others find it in
 * the shared token. Serialised per region by a transaction lock. */
static kms_err ensure_key(struct audit_log *log, PGconn *c)
{
    char key[80];
    snprintf(key, sizeof(key), "audit-key:%s", log->region);
    const char *v[1] = {key};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_cmd(c, "audit key", "BEGIN"));
    kms_err rc =
        audit_pg_exec(c, "audit key", "SELECT pg_advisory_xact_lock(1129529685, hashtext($1))", 1,
                      v, NULL, NULL, 0, &r);
    PQclear(r);
    r = NULL;
    const char *rv[1] = {log->region};
    if (rc == KMS_OK)
        rc = audit_pg_exec(c, "audit key",
                           "SELECT count(*) FROM custos_audit_keys WHERE region = $1", 1, rv, NULL,
                           NULL, 0, &r);
    if (rc == KMS_OK && atoll(PQgetvalue(r, 0, 0)) == 0) {
        struct p11_key_id id;
        int64_t t = 0;
        uint8_t *rec = NULL;
        size_t len = 0;
        rc = audit_log_gen_key(log, &id, &t, &rec, &len);
        if (rc == KMS_OK) {
            char hex[33], nb[24];
            p11_key_id_hex(&id, hex);
            snprintf(nb, sizeof(nb), "%" PRId64, t);
            const char *iv[4] = {log->region, hex, nb, (const char *)rec};
            int il[4] = {0, 0, 0, (int)len}, ifm[4] = {0, 0, 0, 1};
            PGresult *ir = NULL;
            rc = audit_pg_exec(c, "audit key",
                               "INSERT INTO custos_audit_keys (region, key_id, not_before_ms,"
                               " record) VALUES ($1, $2, $3::bigint, $4)",
                               4, iv, il, ifm, 0, &ir);
            PQclear(ir);
            if (rc == KMS_OK)
                rc = audit_pg_cmd(c, "audit key", "COMMIT");
            if (rc != KMS_OK)
                p11_key_destroy(log->tok, &id);
            else
                kms_log_info("audit", "region %s: new audit signing key %s", log->region, hex);
            free(rec);
        }
    } else if (rc == KMS_OK) {
        rc = audit_pg_cmd(c, "audit key", "COMMIT");
    }
    PQclear(r);
    if (rc != KMS_OK)
        rollback(c);
    if (rc == KMS_OK)
        rc = load_sign_key(log, c);
    return rc;
}

kms_err audit_log_open_pg(const struct kms_pg_target *t, const char *region, struct p11_token *tok,
                          const struct audit_log_config *cfg, unsigned poll_ms,
                          struct audit_log **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    KMS_ENSURE(strlen(region) < 64, KMS_ERR_CONFIG, "region name too long");
    KMS_ENSURE(poll_ms >= AUDIT_PG_POLL_MS_MIN && poll_ms <= AUDIT_PG_POLL_MS_MAX, KMS_ERR_CONFIG,
               "audit sequencer poll interval must be %d..%d ms", AUDIT_PG_POLL_MS_MIN,
               AUDIT_PG_POLL_MS_MAX);
    KMS_GUARD(kms_pg_target_check(t));
    struct audit_log *log = calloc(1, sizeof(*log));
    struct audit_pg *pg = calloc(1, sizeof(*pg));
    if (log == NULL || pg == NULL) {
        free(log);
        free(pg);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    snprintf(log->region, sizeof(log->region), "%s", region);
    log->tok = tok;
    log->cfg = *cfg;
    log->metrics_id = kms_metrics_audit(region);
    log->events.fd = log->heads.fd = log->keys.fd = -1;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->work, NULL);
    pthread_cond_init(&log->done, NULL);
    log->pg = pg;
    snprintf(pg->conninfo, sizeof(pg->conninfo), "%s", t->conninfo);
    pg->poll_ms = poll_ms;
    pthread_mutex_init(&pg->rlock, NULL);
    pthread_cond_init(&pg->wake, NULL);
    if (t->password_source != NULL) {
        pg->password_source = strdup(t->password_source);
        KMS_ENSURE_GOTO(pg->password_source != NULL, fail, KMS_ERR_NOMEM, "out of memory");
    }
    KMS_GUARD_GOTO(audit_tree_new(&log->tree), fail);
    /* Start-up needs the database: a region whose log cannot be reached is
     * not served (the caller decides, as for a damaged files log). */
    KMS_GUARD_GOTO(connect_pg(pg, &pg->rconn), fail);
    KMS_GUARD_GOTO(audit_pg_schema(pg->rconn), fail);
    {
        const char *v[1] = {region};
        PGresult *r = NULL;
        KMS_GUARD_GOTO(audit_pg_exec(pg->rconn, "audit open",
                                     "INSERT INTO custos_audit_tree (region) VALUES ($1)"
                                     " ON CONFLICT DO NOTHING",
                                     1, v, NULL, NULL, 0, &r),
                       fail);
        PQclear(r);
    }
    KMS_GUARD_GOTO(ensure_key(log, pg->rconn), fail);
    /* Serve readers from the start: follow once before the threads run. */
    KMS_GUARD_GOTO(connect_pg(pg, &pg->sconn), fail);
    KMS_GUARD_GOTO(follow(log), fail);
    KMS_ENSURE_GOTO(pthread_create(&log->writer, NULL, pg_writer_main, log) == 0, fail,
                    KMS_ERR_INTERNAL, "cannot start the audit writer");
    log->writer_running = true;
    KMS_ENSURE_GOTO(pthread_create(&pg->seq_thread, NULL, pg_sequencer_main, log) == 0, fail,
                    KMS_ERR_INTERNAL, "cannot start the audit sequencer");
    pg->seq_running = true;
    kms_log_info("audit",
                 "region %s: audit log in PostgreSQL (database %s), %" PRIu64
                 " sequenced events, sequencer poll %u ms",
                 region, PQdb(pg->rconn) ? PQdb(pg->rconn) : "?", audit_tree_size(log->tree),
                 poll_ms);
    *out = log;
    return KMS_OK;
fail:
    audit_log_close(log);
    return rc;
}

void audit_pg_close(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    if (log->writer_running) {
        pthread_mutex_lock(&log->lock);
        log->stopping = true;
        pthread_cond_signal(&log->work);
        pthread_mutex_unlock(&log->lock);
        pthread_join(log->writer, NULL);
        pthread_mutex_lock(&log->lock);
        log->writer_running = false;
        pthread_mutex_unlock(&log->lock);
    }
    if (pg->seq_running) {
        pthread_mutex_lock(&log->lock);
        pg->stop = true;
        pg->pause = false;
        pthread_cond_broadcast(&pg->wake);
        pthread_mutex_unlock(&log->lock);
        pthread_join(pg->seq_thread, NULL);
        pg->seq_running = false;
    }
    /* Ending the lock session frees the lock for the next node at once. */
    drop_leadership(log, "closed");
    PQfinish(pg->wconn);
    PQfinish(pg->sconn);
    PQfinish(pg->rconn);
    free(pg->password_source);
    pthread_mutex_destroy(&pg->rlock);
    pthread_cond_destroy(&pg->wake);
    free(pg);
    log->pg = NULL;
}

kms_err audit_pg_read(struct audit_log *log, uint64_t seq, uint8_t **out, size_t *out_len)
{
    struct audit_pg *pg = log->pg;
    *out = NULL;
    KMS_ENSURE(seq < audit_tree_size(log->tree), KMS_ERR_NOT_FOUND,
               "region %s: event %" PRIu64 " is not sequenced yet", log->region, seq);
    char s[24];
    snprintf(s, sizeof(s), "%" PRIu64, seq);
    const char *v[2] = {log->region, s};
    PGresult *r = NULL;
    pthread_mutex_lock(&pg->rlock);
    kms_err rc = connect_pg(pg, &pg->rconn);
    if (rc == KMS_OK)
        rc = audit_pg_exec(pg->rconn, "audit read",
                           "SELECT event FROM custos_audit_events WHERE region = $1"
                           " AND seq = $2::bigint",
                           2, v, NULL, NULL, 1, &r);
    pthread_mutex_unlock(&pg->rlock);
    KMS_GUARD(rc);
    if (PQntuples(r) != 1) {
        PQclear(r);
        return kms_err_set(KMS_ERR_IO, "region %s: event %" PRIu64 " is missing", log->region, seq);
    }
    size_t len = (size_t)PQgetlength(r, 0, 0);
    /* The bytes must still be the leaf the tree holds (the tree was built
     * from them; a changed row would otherwise be exported). */
    audit_hash h, proof[AUDIT_PROOF_MAX], root;
    size_t np = 0;
    uint64_t n = audit_tree_size(log->tree);
    audit_leaf_hash((const uint8_t *)PQgetvalue(r, 0, 0), len, h);
    rc = audit_tree_inclusion(log->tree, seq, n, proof, &np);
    if (rc == KMS_OK)
        rc = audit_tree_root(log->tree, n, root);
    if (rc == KMS_OK && !audit_verify_inclusion(seq, n, h, proof, np, root))
        rc = kms_err_set(KMS_ERR_IO,
                         "region %s: event %" PRIu64 " in the database is not the "
                         "leaf that was sequenced: the database was altered",
                         log->region, seq);
    if (rc == KMS_OK) {
        *out = malloc(len ? len : 1);
        if (*out == NULL)
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        else {
            memcpy(*out, PQgetvalue(r, 0, 0), len);
            *out_len = len;
        }
    }
    PQclear(r);
    return rc;
}

kms_err audit_pg_log_keys(struct audit_log *log, Custos__V1__AuditKey ***out, size_t *out_n)
{
    struct audit_pg *pg = log->pg;
    pthread_mutex_lock(&pg->rlock);
    kms_err rc = connect_pg(pg, &pg->rconn);
    if (rc == KMS_OK)
        rc = audit_pg_keys(pg->rconn, log->region, out, out_n);
    pthread_mutex_unlock(&pg->rlock);
    return rc;
}

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
    kms_err rc = sequence_round(log, false);
    if (rc != KMS_OK) {
        char why[300];
        snprintf(why, sizeof(why), "%s", kms_err_detail());
        drop_leadership(log, why);
        kms_err_set(rc, "%s", why);
    }
    return rc;
}
