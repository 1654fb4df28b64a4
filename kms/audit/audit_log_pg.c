/*
 * audit_log_pg.c - the PostgreSQL backend of the audit log (audit_log_pg.h):
 * opening a region's log (tables, tree row, signing key, a first follow,
 * then the writer and sequencer threads), closing it, its connections, and
 * the readers (an event, the keys). The threads and what each connection
 * is for: audit_log_pg_internal.h.
 */
#include "audit_log_pg_internal.h"

static struct kms_pg_target target(const struct audit_pg *pg)
{
    return (struct kms_pg_target){pg->conninfo, pg->password_source};
}

/* Durable commits whatever the server's default (an acknowledged event
 * must survive a crash of PostgreSQL). */
kms_err audit_pg_connect(struct audit_pg *pg, PGconn **c)
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

void audit_pg_rollback(PGconn *c)
{
    if (c != NULL && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
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
    audit_log_init(log, region, tok, cfg);
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
    KMS_GUARD_GOTO(audit_pg_connect(pg, &pg->rconn), fail);
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
    KMS_GUARD_GOTO(audit_pg_ensure_key(log, pg->rconn), fail);
    /* Serve readers from the start: follow once before the threads run. */
    KMS_GUARD_GOTO(audit_pg_connect(pg, &pg->sconn), fail);
    KMS_GUARD_GOTO(audit_pg_follow(log), fail);
    KMS_ENSURE_GOTO(pthread_create(&log->writer, NULL, audit_pg_writer_main, log) == 0, fail,
                    KMS_ERR_INTERNAL, "cannot start the audit writer");
    log->writer_running = true;
    KMS_ENSURE_GOTO(pthread_create(&pg->seq_thread, NULL, audit_pg_sequencer_main, log) == 0, fail,
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
    audit_pg_drop_leadership(log, "closed");
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
    kms_err rc = audit_pg_connect(pg, &pg->rconn);
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
    kms_err rc = audit_pg_connect(pg, &pg->rconn);
    if (rc == KMS_OK)
        rc = audit_pg_keys(pg->rconn, log->region, out, out_n);
    pthread_mutex_unlock(&pg->rlock);
    return rc;
}
