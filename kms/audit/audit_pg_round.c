/*
 * audit_pg_round.c - one sequencing round of an audit log in PostgreSQL, as
 * the holder of the region's advisory lock: committed unsequenced events
 * get their seq and become leaves, and a head is signed when one is due,
 * all in one transaction whose first statement is the compare-and-set on
 * the tree row's (size, epoch) that fences out a deposed holder.
 */
#include "audit_log_pg_internal.h"

struct seq_row {
    int64_t id;
    uint8_t *leaf;
    size_t len;
};

/* What a round has taken and made; round_end frees it. */
struct round {
    uint64_t old, size; /* the tree size before and after the round */
    int64_t now;
    bool head_due;
    struct seq_row *rows;
    int nrows;
    audit_hash root;
    uint8_t *head;
    size_t head_len;
    /* A key rotated in the round: the old one is destroyed once the round
     * commits, the new one (and kept_*, restored) if it does not. */
    bool rotated;
    struct p11_key_id old_key, new_key, kept_key;
    int64_t kept_since;
};

/* Row i of r as a leaf: the event as made, with its seq, fixed from here
 * on; its hash is appended to pg->stree, which then runs ahead of the
 * database (any failure of the round drops it with the leadership). */
static kms_err make_leaf(struct audit_log *log, const PGresult *r, int i, struct round *rd)
{
    struct seq_row *row = &rd->rows[i];
    row->id = audit_pg_i64(r, i, 0);
    Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(
        NULL, (size_t)PQgetlength(r, i, 1), (const uint8_t *)PQgetvalue(r, i, 1));
    KMS_ENSURE(ev != NULL, KMS_ERR_IO, "region %s: appended event id %" PRId64 " does not decode",
               log->region, row->id);
    ev->seq = rd->old + (uint64_t)i;
    row->len = custos__v1__audit_event__get_packed_size(ev);
    row->leaf = malloc(row->len ? row->len : 1);
    if (row->leaf != NULL)
        custos__v1__audit_event__pack(ev, row->leaf);
    custos__v1__audit_event__free_unpacked(ev, NULL);
    KMS_ENSURE(row->leaf != NULL, KMS_ERR_NOMEM, "out of memory");
    audit_hash h;
    audit_leaf_hash(row->leaf, row->len, h);
    return audit_tree_append(log->pg->stree, h);
}

/* Read up to AUDIT_PG_SEQ_BATCH committed unsequenced events after the
 * current tree and make their leaves; decide whether a head is due. With
 * nothing to order and no head due, rd->rows stays NULL: nothing to do. */
static kms_err take_events(struct audit_log *log, bool stopping, struct round *rd)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = KMS_OK;
    char lim[16];
    snprintf(lim, sizeof(lim), "%d", AUDIT_PG_SEQ_BATCH);
    const char *v[2] = {log->region, lim};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->sconn, "audit sequencer",
                            "SELECT id, event FROM custos_audit_events WHERE region = $1"
                            " AND seq IS NULL ORDER BY id LIMIT $2::int",
                            2, v, NULL, NULL, 1, &r));
    int n = PQntuples(r);
    rd->size = rd->old + (uint64_t)n;
    rd->now = now_ms();
    rd->head_due = !pg->have_head ||
                   (rd->size > pg->s_head_size &&
                    (rd->size - pg->s_head_size >= log->cfg.head_every_events ||
                     rd->now >= pg->s_head_time + (int64_t)log->cfg.head_every_ms || stopping));
    if (n == 0 && !rd->head_due)
        goto done;
    rd->rows = calloc(n ? (size_t)n : 1, sizeof(*rd->rows));
    KMS_ENSURE_GOTO(rd->rows != NULL, done, KMS_ERR_NOMEM, "out of memory");
    rd->nrows = n;
    for (int i = 0; i < n; i++)
        KMS_GUARD_GOTO(make_leaf(log, r, i, rd), done);
done:
    PQclear(r);
    return rc;
}

/* The fence, first in the transaction, so that it also locks the tree row
 * until COMMIT: a holder deposed by a newer epoch, or behind the stored
 * size, changes nothing. */
static kms_err fence(struct audit_log *log, const struct round *rd)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = KMS_OK;
    char sz[24], osz[24], ep[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, rd->size);
    snprintf(osz, sizeof(osz), "%" PRIu64, rd->old);
    snprintf(ep, sizeof(ep), "%" PRId64, pg->epoch);
    const char *cv[5] = {log->region, sz, (const char *)rd->root, osz, ep};
    int cl[5] = {0, 0, 32, 0, 0}, cf[5] = {0, 0, 1, 0, 0};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->sconn, "audit sequencer: fence",
                            "UPDATE custos_audit_tree SET size = $2::bigint, root = $3"
                            " WHERE region = $1 AND size = $4::bigint"
                            " AND epoch = $5::bigint",
                            5, cv, cl, cf, 0, &r));
    KMS_ENSURE_GOTO(strcmp(PQcmdTuples(r), "1") == 0, done, KMS_ERR_FAILED_PRECONDITION,
                    "region %s: the tree moved on or another node took over (tree size "
                    "%" PRIu64 ", epoch %" PRId64 " no longer current): deposed",
                    log->region, rd->old, pg->epoch);
done:
    PQclear(r);
    return rc;
}

/* Each event its seq and leaf bytes: exactly one unsequenced row each. */
static kms_err assign_seqs(struct audit_log *log, const struct round *rd)
{
    for (int i = 0; i < rd->nrows; i++) {
        const struct seq_row *row = &rd->rows[i];
        char id[24], seq[24];
        snprintf(id, sizeof(id), "%" PRId64, row->id);
        snprintf(seq, sizeof(seq), "%" PRIu64, rd->old + (uint64_t)i);
        const char *uv[4] = {log->region, id, seq, (const char *)row->leaf};
        int ul[4] = {0, 0, 0, (int)row->len}, uf[4] = {0, 0, 0, 1};
        PGresult *r = NULL;
        KMS_GUARD(audit_pg_exec(log->pg->sconn, "audit sequencer: leaf",
                                "UPDATE custos_audit_events SET seq = $3::bigint, event = $4"
                                " WHERE region = $1 AND id = $2::bigint AND seq IS NULL",
                                4, uv, ul, uf, 0, &r));
        bool one = strcmp(PQcmdTuples(r), "1") == 0;
        PQclear(r);
        KMS_ENSURE(one, KMS_ERR_FAILED_PRECONDITION,
                   "region %s: event id %" PRId64 " was sequenced by another node: deposed",
                   log->region, row->id);
    }
    return KMS_OK;
}

/* Rotate the signing key by age, inside the round's transaction: the new
 * key's row is fenced like the head it signs. */
static kms_err rotate_in_tx(struct audit_log *log, struct round *rd)
{
    struct p11_key_id id;
    int64_t t = 0;
    KMS_GUARD(audit_pg_insert_key(log, log->pg->sconn, "audit key rotation", &id, &t));
    rd->old_key = log->sign_key;
    rd->new_key = id;
    rd->rotated = true;
    log->sign_key = id;
    log->sign_key_since_ms = t;
    return KMS_OK;
}

/* Sign the head of the new size (rotating the key first when it is too
 * old) and insert it: one head per size at most (primary key). */
static kms_err store_head(struct audit_log *log, struct round *rd)
{
    struct audit_pg *pg = log->pg;
    int64_t t = rd->now;
    if (pg->have_head && t <= pg->s_head_time)
        t = pg->s_head_time + 1; /* timestamps never go backwards */
    if (log->cfg.key_max_age_s > 0 && t - log->sign_key_since_ms > log->cfg.key_max_age_s * 1000)
        KMS_GUARD(rotate_in_tx(log, rd));
    if (t < log->sign_key_since_ms)
        t = log->sign_key_since_ms; /* never before the key that signs it */
    KMS_GUARD(audit_log_sign_head(log, rd->size, rd->root, t, &rd->head, &rd->head_len));
    char sz[24], ts[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, rd->size);
    snprintf(ts, sizeof(ts), "%" PRId64, t);
    const char *hv[4] = {log->region, sz, ts, (const char *)rd->head};
    int hl[4] = {0, 0, 0, (int)rd->head_len}, hf[4] = {0, 0, 0, 1};
    PGresult *r = NULL;
    KMS_GUARD(audit_pg_exec(pg->sconn, "audit sequencer: head",
                            "INSERT INTO custos_audit_heads (region, tree_size,"
                            " timestamp_ms, head) VALUES ($1, $2::bigint, $3::bigint, $4)",
                            4, hv, hl, hf, 0, &r));
    PQclear(r);
    /* If the commit fails, the holder steps down; the next one reads the
     * newest head's time from the database. */
    pg->s_head_time = t;
    return KMS_OK;
}

/* The round committed: what it stored is now this holder's state. */
static void round_committed(struct audit_log *log, const struct round *rd)
{
    struct audit_pg *pg = log->pg;
    if (rd->head_due) {
        pg->have_head = true;
        pg->s_head_size = rd->size;
        pthread_mutex_lock(&log->lock);
        log->stats.heads++;
        pthread_mutex_unlock(&log->lock);
    }
    if (rd->rotated) {
        char hex[33];
        p11_key_id_hex(&rd->new_key, hex);
        kms_log_info("audit", "region %s: new audit signing key %s", log->region, hex);
        if (p11_key_destroy(log->tok, &rd->old_key) != KMS_OK)
            kms_log_warn("audit", "region %s: old audit key not destroyed: %s", log->region,
                         kms_err_detail());
    }
}

/* A failed round leaves the database as it was (rolled back) and the key
 * the holder had; either way the round's buffers are freed. */
static void round_end(struct audit_log *log, struct round *rd, kms_err rc)
{
    if (rc != KMS_OK) {
        audit_pg_rollback(log->pg->sconn);
        if (rd->rotated) {
            p11_key_destroy(log->tok, &rd->new_key);
            log->sign_key = rd->kept_key;
            log->sign_key_since_ms = rd->kept_since;
        }
    }
    for (int i = 0; rd->rows && i < rd->nrows; i++)
        free(rd->rows[i].leaf);
    free(rd->rows);
    free(rd->head);
}

/* Any failure leaves the tree in the database untouched; the caller then
 * gives up the role. */
kms_err audit_pg_sequence_round(struct audit_log *log, bool stopping)
{
    struct audit_pg *pg = log->pg;
    kms_err rc = KMS_OK;
    struct round rd = {.old = audit_tree_size(pg->stree),
                       .kept_key = log->sign_key,
                       .kept_since = log->sign_key_since_ms};
    KMS_GUARD_GOTO(take_events(log, stopping, &rd), done);
    if (rd.rows == NULL)
        goto done; /* nothing to order, no head due */
    KMS_GUARD_GOTO(audit_tree_root(pg->stree, rd.size, rd.root), done);
    KMS_GUARD_GOTO(audit_pg_cmd(pg->sconn, "audit sequencer", "BEGIN"), done);
    KMS_GUARD_GOTO(fence(log, &rd), done);
    KMS_GUARD_GOTO(assign_seqs(log, &rd), done);
    if (rd.head_due)
        KMS_GUARD_GOTO(store_head(log, &rd), done);
    KMS_GUARD_GOTO(audit_pg_cmd(pg->sconn, "audit sequencer: commit", "COMMIT"), done);
    round_committed(log, &rd);
done:
    round_end(log, &rd, rc);
    return rc;
}
