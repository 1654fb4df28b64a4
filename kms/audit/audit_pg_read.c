/*
 * audit_pg_read.c - the read side of an audit log in PostgreSQL
 * (audit_log_pg.h): exports and keys, straight from the database, for
 * kmsctl (and kmsd's readers of keys).
 */
#include "audit_log_pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_merkle.h"
#include "audit_proof_pb.h"
#include "audit_pg_internal.h"
#include "kms_log.h"

#define EXPORT_MAX 10000

/* The newest signed head of region, decoded and checked as its own, and
 * the refusals that depend on it alone: the rollback alarm (known beyond
 * it) and a start beyond it. *out: caller frees. */
static kms_err read_newest_head(PGconn *c, const char *region, uint64_t start, uint64_t known,
                                Custos__V1__SignedTreeHead **out)
{
    kms_err rc = KMS_OK;
    PGresult *hr = NULL;
    Custos__V1__SignedTreeHead *sth = NULL;
    const char *v1[1] = {region};
    KMS_GUARD(audit_pg_exec(c, "audit export: head",
                            "SELECT head FROM custos_audit_heads WHERE region = $1"
                            " ORDER BY tree_size DESC LIMIT 1",
                            1, v1, NULL, NULL, 1, &hr));
    KMS_ENSURE_GOTO(PQntuples(hr) == 1, done, KMS_ERR_NOT_FOUND, "region %s has no signed head yet",
                    region);
    /* protobuf-c copies the bytes it unpacks: sth outlives hr. */
    sth = custos__v1__signed_tree_head__unpack(NULL, (size_t)PQgetlength(hr, 0, 0),
                                               (const uint8_t *)PQgetvalue(hr, 0, 0));
    KMS_ENSURE_GOTO(sth != NULL && sth->root_hash.len == 32 && sth->region != NULL &&
                        strcmp(sth->region, region) == 0,
                    done, KMS_ERR_IO, "region %s: the newest stored head does not decode", region);
    uint64_t size = sth->tree_size;
    KMS_ENSURE_GOTO(known <= size, done, KMS_ERR_FAILED_PRECONDITION,
                    "the log of region %s is shorter than a head you already hold: its newest "
                    "signed head has tree_size %" PRIu64 ", yours %" PRIu64
                    " (known_tree_size): it was rolled back or forked",
                    region, size, known);
    KMS_ENSURE_GOTO(start <= size, done, KMS_ERR_INVALID_ARGUMENT,
                    "start %" PRIu64 " is beyond the signed tree size %" PRIu64, start, size);
    *out = sth;
    sth = NULL;
done:
    if (sth)
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    PQclear(hr);
    return rc;
}

/* Every leaf below the head's size (*out_lr: the rows, which the entries
 * point into) as a tree (*out_tree), whose root must be the head's: a
 * changed, missing or extra row is refused. The caller frees both, also
 * on error. */
static kms_err read_tree(PGconn *c, const char *region, const Custos__V1__SignedTreeHead *sth,
                         PGresult **out_lr, struct audit_tree **out_tree)
{
    uint64_t size = sth->tree_size;
    char sz[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    const char *v2[2] = {region, sz};
    KMS_GUARD(audit_pg_exec(c, "audit export: leaves",
                            "SELECT seq, event FROM custos_audit_events WHERE region = $1"
                            " AND seq IS NOT NULL AND seq < $2::bigint ORDER BY seq",
                            2, v2, NULL, NULL, 1, out_lr));
    const PGresult *lr = *out_lr;
    KMS_ENSURE((uint64_t)PQntuples(lr) == size, KMS_ERR_IO,
               "region %s: %d sequenced events below the head's tree size %" PRIu64
               ": the database was altered",
               region, PQntuples(lr), size);
    KMS_GUARD(audit_tree_new(out_tree));
    for (uint64_t i = 0; i < size; i++) {
        KMS_ENSURE((uint64_t)audit_pg_i64(lr, (int)i, 0) == i, KMS_ERR_IO,
                   "region %s: event seq %" PRIu64 " is missing: the database was altered", region,
                   i);
        audit_hash h;
        audit_leaf_hash((const uint8_t *)PQgetvalue(lr, (int)i, 1),
                        (size_t)PQgetlength(lr, (int)i, 1), h);
        KMS_GUARD(audit_tree_append(*out_tree, h));
    }
    audit_hash root;
    KMS_GUARD(audit_tree_root(*out_tree, size, root));
    KMS_ENSURE(memcmp(root, sth->root_hash.data, 32) == 0, KMS_ERR_IO,
               "region %s: the events do not give the root of the newest head (tree_size "
               "%" PRIu64 "): the database was altered",
               region, size);
    return KMS_OK;
}

/* entries[0, n) := leaves [start, start + n) of lr (pointing into its
 * rows), with inclusion proofs in the tree of size when asked; ep[i] points
 * at entries[i]. Proofs made before a failure are the caller's to free. */
static kms_err fill_entries(const PGresult *lr, struct audit_tree *tree, uint64_t size,
                            uint64_t start, size_t n, bool proofs, Custos__V1__AuditEntry *entries,
                            Custos__V1__AuditEntry **ep)
{
    for (size_t i = 0; i < n; i++) {
        custos__v1__audit_entry__init(&entries[i]);
        ep[i] = &entries[i];
        uint64_t seq = start + i;
        entries[i].seq = seq;
        entries[i].event.data = (uint8_t *)PQgetvalue(lr, (int)seq, 1);
        entries[i].event.len = (size_t)PQgetlength(lr, (int)seq, 1);
        if (proofs) {
            audit_hash p[AUDIT_PROOF_MAX];
            size_t np = 0;
            KMS_GUARD(audit_tree_inclusion(tree, seq, size, p, &np));
            KMS_GUARD(
                audit_proof_pb(p, np, &entries[i].n_inclusion_proof, &entries[i].inclusion_proof));
        }
    }
    return KMS_OK;
}

kms_err audit_pg_export(PGconn *c, const char *region, uint64_t start, uint64_t count, bool proofs,
                        uint64_t known, uint8_t **out, size_t *out_len)
{
    kms_err rc = KMS_OK;
    PGresult *lr = NULL;
    Custos__V1__SignedTreeHead *sth = NULL;
    struct audit_tree *tree = NULL;
    Custos__V1__AuditEntry *entries = NULL;
    Custos__V1__AuditEntry **ep = NULL;
    Custos__V1__ExportAuditLogResponse resp = CUSTOS__V1__EXPORT_AUDIT_LOG_RESPONSE__INIT;
    size_t n = 0;
    bool in_tx = false;
    *out = NULL;
    KMS_ENSURE(count >= 1 && count <= EXPORT_MAX, KMS_ERR_INVALID_ARGUMENT, "count must be 1..%d",
               EXPORT_MAX);
    /* One snapshot: the head and the leaves it covers are read together. */
    KMS_GUARD_GOTO(
        audit_pg_cmd(c, "audit export", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"), done);
    in_tx = true;
    KMS_GUARD_GOTO(read_newest_head(c, region, start, known, &sth), done);
    uint64_t size = sth->tree_size;
    KMS_GUARD_GOTO(read_tree(c, region, sth, &lr, &tree), done);
    n = (size_t)(size - start < count ? size - start : count);
    entries = calloc(n ? n : 1, sizeof(*entries));
    ep = calloc(n ? n : 1, sizeof(*ep));
    KMS_ENSURE_GOTO(entries && ep, done, KMS_ERR_NOMEM, "out of memory");
    KMS_GUARD_GOTO(fill_entries(lr, tree, size, start, n, proofs, entries, ep), done);
    if (known > 0 && known < size) {
        audit_hash p[AUDIT_PROOF_MAX];
        size_t np = 0;
        KMS_GUARD_GOTO(audit_tree_consistency(tree, known, size, p, &np), done);
        KMS_GUARD_GOTO(audit_proof_pb(p, np, &resp.n_consistency_proof, &resp.consistency_proof),
                       done);
    }
    resp.head = sth;
    resp.n_entries = n;
    resp.entries = ep;
    resp.known_tree_size = known;
    *out_len = custos__v1__export_audit_log_response__get_packed_size(&resp);
    *out = malloc(*out_len ? *out_len : 1);
    KMS_ENSURE_GOTO(*out != NULL, done, KMS_ERR_NOMEM, "out of memory");
    custos__v1__export_audit_log_response__pack(&resp, *out);
done:
    if (in_tx)
        PQclear(PQexec(c, "COMMIT"));
    for (size_t i = 0; entries && i < n; i++)
        audit_proof_pb_free(entries[i].inclusion_proof, entries[i].n_inclusion_proof);
    audit_proof_pb_free(resp.consistency_proof, resp.n_consistency_proof);
    free(entries);
    free(ep);
    audit_tree_free(tree);
    if (sth)
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    PQclear(lr);
    return rc;
}

kms_err audit_pg_keys(PGconn *c, const char *region, Custos__V1__AuditKey ***out, size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    PGresult *r = NULL;
    const char *v1[1] = {region != NULL ? region : ""};
    KMS_GUARD(audit_pg_exec(c, "audit keys",
                            "SELECT record FROM custos_audit_keys WHERE $1 = '' OR region = $1"
                            " ORDER BY region, not_before_ms, key_id",
                            1, v1, NULL, NULL, 1, &r));
    int rows = PQntuples(r);
    kms_err rc = KMS_OK;
    Custos__V1__AuditKey **keys = calloc(rows ? (size_t)rows : 1, sizeof(*keys));
    size_t k = 0;
    KMS_ENSURE_GOTO(keys != NULL, done, KMS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < rows; i++) {
        keys[k] = custos__v1__audit_key__unpack(NULL, (size_t)PQgetlength(r, i, 0),
                                                (const uint8_t *)PQgetvalue(r, i, 0));
        KMS_ENSURE_GOTO(keys[k] != NULL && keys[k]->region != NULL, done, KMS_ERR_IO,
                        "audit key record %d does not decode", i);
        /* A key is valid until its region's next key begins. */
        if (k > 0 && strcmp(keys[k - 1]->region, keys[k]->region) == 0)
            keys[k - 1]->not_after_ms = keys[k]->not_before_ms;
        k++;
    }
done:
    PQclear(r);
    if (rc != KMS_OK) {
        audit_log_keys_free(keys, k);
        return rc;
    }
    *out = keys;
    *out_n = k;
    return KMS_OK;
}
