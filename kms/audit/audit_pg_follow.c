/*
 * audit_pg_follow.c - every node's copy of a PostgreSQL audit log: the
 * sequenced leaves (log->tree) and the newest signed head at or below
 * their size, read at each poll and checked against each other, so that
 * any node serves auditors (heads, exports, proofs).
 */
#include "audit_log_pg_internal.h"

/* Leaves followed per query. */
#define FOLLOW_BATCH 10000

/* Read the sequenced leaves [from, ...) (at most FOLLOW_BATCH) and append
 * their hashes to t, checking that seqs run on without a gap. */
kms_err audit_pg_read_leaves(struct audit_log *log, PGconn *c, struct audit_tree *t, bool *out_more)
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

/* Bring this node's copy of the tree (what readers are served) up to what
 * the database holds, then its newest head at or below that size, checked
 * against the tree. Sequencer thread only: the only writer of log->tree. */
kms_err audit_pg_follow(struct audit_log *log)
{
    struct audit_pg *pg = log->pg;
    bool more = true;
    while (more)
        KMS_GUARD(audit_pg_read_leaves(log, pg->sconn, log->tree, &more));
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
