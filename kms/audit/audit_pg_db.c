/*
 * audit_pg_db.c - what every PostgreSQL file of the audit log stands on
 * (audit_pg_internal.h): running statements, reading binary columns, and
 * the schema (audit_log_pg.h), for kmsd and kmsctl alike.
 */
#include "audit_log_pg.h"

#include "audit_pg_internal.h"

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
