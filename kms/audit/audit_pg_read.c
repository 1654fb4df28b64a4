/*
 * audit_pg_read.c - the read side of an audit log in PostgreSQL
 * (audit_log_pg.h): the schema, exports and keys, for kmsd and kmsctl.
 */
#include "audit_log_pg.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_merkle.h"
#include "audit_pg_internal.h"
#include "kms_log.h"

#define EXPORT_MAX 10000

kms_err audit_pg_exec(PGconn *c, const char *op, const char *sql, int n, const char *const *vals,
                      const int *lens, const int *fmts, int bin, PGresult **out)
{
    *out = NULL;
    PGresult *r = c != NULL ? PQexecParams(c, sql, n, NULL, vals, lens, fmts, bin) : NULL;
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        kms_err rc = kms_pg_result_err(c, r, op);
        PQclear(r);
        return rc;
    }
    *out = r;
    return KMS_OK;
}

kms_err audit_pg_cmd(PGconn *c, const char *op, const char *sql)
{
    /* PQexec: the schema is several statements in one string. */
    PGresult *r = c != NULL ? PQexec(c, sql) : NULL;
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    kms_err rc = KMS_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = kms_pg_result_err(c, r, op);
    PQclear(r);
    return rc;
}

int64_t audit_pg_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return 0;
    const uint8_t *p = (const uint8_t *)PQgetvalue(r, row, col);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

/* Sequenced rows are the leaves of the tree: never changed, never deleted.
 * Heads and keys are append-only. The triggers keep a mistaken UPDATE or
 * DELETE (a maintenance script, say) from rewriting signed history; they
 * do not stop a superuser, which is what auditors' exports are for. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS custos_audit_events ("
    " region text NOT NULL,"
    " id bigint GENERATED ALWAYS AS IDENTITY,"
    " seq bigint,"
    " event bytea NOT NULL,"
    " PRIMARY KEY (region, id),"
    " UNIQUE (region, seq));"
    "CREATE INDEX IF NOT EXISTS custos_audit_events_unsequenced"
    " ON custos_audit_events (region, id) WHERE seq IS NULL;"
    "CREATE TABLE IF NOT EXISTS custos_audit_tree ("
    " region text PRIMARY KEY,"
    " size bigint NOT NULL DEFAULT 0,"
    " root bytea,"
    " epoch bigint NOT NULL DEFAULT 0,"
    " holder text);"
    "CREATE TABLE IF NOT EXISTS custos_audit_heads ("
    " region text NOT NULL,"
    " tree_size bigint NOT NULL,"
    " timestamp_ms bigint NOT NULL,"
    " head bytea NOT NULL,"
    " PRIMARY KEY (region, tree_size));"
    "CREATE TABLE IF NOT EXISTS custos_audit_keys ("
    " region text NOT NULL,"
    " key_id text NOT NULL,"
    " not_before_ms bigint NOT NULL,"
    " record bytea NOT NULL,"
    " PRIMARY KEY (region, key_id));"
    "CREATE OR REPLACE FUNCTION custos_audit_frozen() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF TG_TABLE_NAME <> 'custos_audit_events' OR TG_OP = 'DELETE' OR OLD.seq IS NOT NULL THEN"
    "   RAISE EXCEPTION 'custos: audit history is append-only (% on %)', TG_OP, TG_TABLE_NAME"
    "    USING ERRCODE = '55000';"
    "  END IF;"
    "  RETURN NEW;"
    " END $$;"
    "CREATE OR REPLACE TRIGGER custos_audit_events_frozen BEFORE UPDATE OR DELETE"
    " ON custos_audit_events FOR EACH ROW EXECUTE FUNCTION custos_audit_frozen();"
    "CREATE OR REPLACE TRIGGER custos_audit_heads_frozen BEFORE UPDATE OR DELETE"
    " ON custos_audit_heads FOR EACH ROW EXECUTE FUNCTION custos_audit_frozen();"
    "CREATE OR REPLACE TRIGGER custos_audit_keys_frozen BEFORE UPDATE OR DELETE"
    " ON custos_audit_keys FOR EACH ROW EXECUTE FUNCTION custos_audit_frozen();";

kms_err audit_pg_schema(PGconn *c)
{
    KMS_GUARD(audit_pg_cmd(c, "audit schema", "BEGIN"));
    kms_err rc = audit_pg_cmd(c, "audit schema", "SELECT pg_advisory_xact_lock(1129529685, 0)");
    if (rc == KMS_OK)
        rc = audit_pg_cmd(c, "audit schema", schema_sql);
    if (rc == KMS_OK)
        return audit_pg_cmd(c, "audit schema", "COMMIT");
    PQclear(PQexec(c, "ROLLBACK"));
    return rc;
}

static kms_err proof_field(const audit_hash *p, size_t n, size_t *out_n, ProtobufCBinaryData **out)
{
    *out = calloc(n ? n : 1, sizeof(**out));
    KMS_ENSURE(*out != NULL, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        (*out)[i].data = malloc(AUDIT_HASH_LEN);
        KMS_ENSURE((*out)[i].data != NULL, KMS_ERR_NOMEM, "out of memory");
        memcpy((*out)[i].data, p[i], AUDIT_HASH_LEN);
        (*out)[i].len = AUDIT_HASH_LEN;
    }
    *out_n = n;
    return KMS_OK;
}

static void proof_free(ProtobufCBinaryData *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++)
        free(p[i].data);
    free(p);
}

kms_err audit_pg_export(PGconn *c, const char *region, uint64_t start, uint64_t count, bool proofs,
                        uint64_t known, uint8_t **out, size_t *out_len)
{
    kms_err rc = KMS_OK;
    PGresult *hr = NULL, *lr = NULL;
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
    const char *v1[1] = {region};
    KMS_GUARD_GOTO(audit_pg_exec(c, "audit export: head",
                                 "SELECT head FROM custos_audit_heads WHERE region = $1"
                                 " ORDER BY tree_size DESC LIMIT 1",
                                 1, v1, NULL, NULL, 1, &hr),
                   done);
    KMS_ENSURE_GOTO(PQntuples(hr) == 1, done, KMS_ERR_NOT_FOUND, "region %s has no signed head yet",
                    region);
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
    char sz[24];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    const char *v2[2] = {region, sz};
    KMS_GUARD_GOTO(audit_pg_exec(c, "audit export: leaves",
                                 "SELECT seq, event FROM custos_audit_events WHERE region = $1"
                                 " AND seq IS NOT NULL AND seq < $2::bigint ORDER BY seq",
                                 2, v2, NULL, NULL, 1, &lr),
                   done);
    KMS_ENSURE_GOTO((uint64_t)PQntuples(lr) == size, done, KMS_ERR_IO,
                    "region %s: %d sequenced events below the head's tree size %" PRIu64
                    ": the database was altered",
                    region, PQntuples(lr), size);
    KMS_GUARD_GOTO(audit_tree_new(&tree), done);
    for (uint64_t i = 0; i < size; i++) {
        KMS_ENSURE_GOTO((uint64_t)audit_pg_i64(lr, (int)i, 0) == i, done, KMS_ERR_IO,
                        "region %s: event seq %" PRIu64 " is missing: the database was altered",
                        region, i);
        audit_hash h;
        audit_leaf_hash((const uint8_t *)PQgetvalue(lr, (int)i, 1),
                        (size_t)PQgetlength(lr, (int)i, 1), h);
        KMS_GUARD_GOTO(audit_tree_append(tree, h), done);
    }
    audit_hash root;
    KMS_GUARD_GOTO(audit_tree_root(tree, size, root), done);
    KMS_ENSURE_GOTO(memcmp(root, sth->root_hash.data, 32) == 0, done, KMS_ERR_IO,
                    "region %s: the events do not give the root of the newest head (tree_size "
                    "%" PRIu64 "): the database was altered",
                    region, size);
    n = (size_t)(size - start < count ? size - start : count);
    entries = calloc(n ? n : 1, sizeof(*entries));
    ep = calloc(n ? n : 1, sizeof(*ep));
    KMS_ENSURE_GOTO(entries && ep, done, KMS_ERR_NOMEM, "out of memory");
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
            KMS_GUARD_GOTO(audit_tree_inclusion(tree, seq, size, p, &np), done);
            KMS_GUARD_GOTO(
                proof_field(p, np, &entries[i].n_inclusion_proof, &entries[i].inclusion_proof),
                done);
        }
    }
    if (known > 0 && known < size) {
        audit_hash p[AUDIT_PROOF_MAX];
        size_t np = 0;
        KMS_GUARD_GOTO(audit_tree_consistency(tree, known, size, p, &np), done);
        KMS_GUARD_GOTO(proof_field(p, np, &resp.n_consistency_proof, &resp.consistency_proof),
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
        proof_free(entries[i].inclusion_proof, entries[i].n_inclusion_proof);
    proof_free(resp.consistency_proof, resp.n_consistency_proof);
    free(entries);
    free(ep);
    audit_tree_free(tree);
    if (sth)
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    PQclear(hr);
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
