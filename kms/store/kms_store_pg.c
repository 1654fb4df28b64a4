/*
 * kms_store_pg.c - the store on PostgreSQL: connections (made on first use,
 * replaced when they break), session settings, schema migrations under an
 * advisory lock, and PostgreSQL errors as kms_err.
 *
 * Several kmsd processes share one database; nothing here assumes it is
 * alone. What SQLite gets from its one writer and the file lock, PostgreSQL
 * gets from SERIALIZABLE write transactions (kms_store_tx.c) and, for the
 * migrations at open, from a transaction-scoped advisory lock.
 */
#include "kms_store_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_log.h"

/* The advisory lock key of migrations: "Cust" as in the SQLite
 * application_id, so it names this application in pg_locks. */
#define STORE_PG_MIGRATION_LOCK 0x43757374

/*
 * Schema migrations, the PostgreSQL text of kms_store_schema.c's list:
 * same numbers, same tables, columns and indexes, in PostgreSQL's types
 * (BIGINT for INTEGER, BYTEA for BLOB, octet_length for length). Adding one
 * means adding it to both lists (the static assertion below keeps the count
 * in step with KMS_STORE_SCHEMA_VERSION). Text keys are COLLATE "C" so
 * that ORDER BY and the (created_at, key_id) page cursor compare bytes, as
 * SQLite does, whatever the database's default collation.
 */
struct pg_migration {
    int version;
    const char *sql;
};

static const struct pg_migration pg_migrations[] = {
    {1, "CREATE TABLE meta ("
        "  name  TEXT COLLATE \"C\" NOT NULL PRIMARY KEY,"
        "  value TEXT NOT NULL);"
        "INSERT INTO meta (name, value) VALUES"
        "  ('store_id', replace(CAST(gen_random_uuid() AS TEXT), '-', '')),"
        "  ('created_at', CAST(CAST(extract(epoch FROM now()) AS BIGINT) AS TEXT));"
        "CREATE TABLE keys ("
        "  key_id          TEXT COLLATE \"C\" NOT NULL PRIMARY KEY"
        "                  CHECK (key_id ~ '^[0-9a-f]{32}$'),"
        "  tenant          TEXT COLLATE \"C\" NOT NULL,"
        "  region          TEXT    NOT NULL,"
        "  token           TEXT    NOT NULL,"
        "  spec            BIGINT  NOT NULL,"
        "  usage           BIGINT  NOT NULL,"
        "  origin          BIGINT  NOT NULL,"
        "  state           BIGINT  NOT NULL,"
        "  description     TEXT    NOT NULL,"
        "  created_at      BIGINT  NOT NULL,"
        "  deletion_at     BIGINT  NOT NULL,"
        "  current_version BIGINT  NOT NULL,"
        "  last_version    BIGINT  NOT NULL,"
        "  escrow_required BIGINT  NOT NULL CHECK (escrow_required IN (0, 1)),"
        "  CHECK (current_version BETWEEN 0 AND last_version),"
        "  CHECK (last_version BETWEEN 0 AND 4294967295));"
        "CREATE INDEX keys_by_tenant ON keys (tenant, created_at, key_id);"
        "CREATE INDEX keys_pending_deletion ON keys (deletion_at, key_id) WHERE state = 4;"
        "CREATE INDEX keys_by_token ON keys (token);"
        "CREATE TABLE key_versions ("
        "  key_id     TEXT COLLATE \"C\" NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,"
        "  version    BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),"
        "  hsm_id     BYTEA  NOT NULL UNIQUE CHECK (octet_length(hsm_id) = 16),"
        "  state      BIGINT NOT NULL,"
        "  created_at BIGINT NOT NULL,"
        "  PRIMARY KEY (key_id, version));"
        "CREATE INDEX key_versions_creating ON key_versions (key_id, version) WHERE state = 0;"},
    {2, "CREATE TABLE import_tokens ("
        "  token_id   BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(token_id) = 32),"
        "  key_id     TEXT COLLATE \"C\" NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,"
        "  token      TEXT   NOT NULL,"
        "  hsm_id     BYTEA  NOT NULL UNIQUE CHECK (octet_length(hsm_id) = 16),"
        "  state      BIGINT NOT NULL,"
        "  end_reason BIGINT NOT NULL,"
        "  failures   BIGINT NOT NULL CHECK (failures >= 0),"
        "  created_at BIGINT NOT NULL,"
        "  expires_at BIGINT NOT NULL,"
        "  CHECK (expires_at > created_at));"
        "CREATE INDEX import_tokens_by_key ON import_tokens (key_id, state);"
        "CREATE INDEX import_tokens_open ON import_tokens (expires_at) WHERE state <> 4;"
        "CREATE TABLE key_check_values ("
        "  key_id  TEXT COLLATE \"C\" NOT NULL,"
        "  version BIGINT NOT NULL,"
        "  kcv     BYTEA  NOT NULL CHECK (octet_length(kcv) = 32),"
        "  PRIMARY KEY (key_id, version),"
        "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
        "    ON DELETE CASCADE);"},
    {3, "CREATE TABLE escrow_blobs ("
        "  key_id        TEXT COLLATE \"C\" NOT NULL,"
        "  version       BIGINT NOT NULL,"
        "  part          BIGINT NOT NULL CHECK (part IN (0, 1)),"
        "  token         TEXT   NOT NULL,"
        "  escrow_hsm_id BYTEA  NOT NULL CHECK (octet_length(escrow_hsm_id) = 16),"
        "  blob          BYTEA  NOT NULL CHECK (octet_length(blob) BETWEEN 1 AND 64),"
        "  created_at    BIGINT NOT NULL,"
        "  PRIMARY KEY (key_id, version, part),"
        "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
        "    ON DELETE CASCADE);"
        "CREATE TABLE recoveries ("
        "  recovery_id        TEXT COLLATE \"C\" NOT NULL PRIMARY KEY"
        "                     CHECK (length(recovery_id) = 32),"
        "  tenant             TEXT COLLATE \"C\" NOT NULL,"
        "  key_id             TEXT COLLATE \"C\" NOT NULL REFERENCES keys (key_id),"
        "  region             TEXT   NOT NULL,"
        "  versions           TEXT   NOT NULL,"
        "  mode               BIGINT NOT NULL,"
        "  justification      BIGINT NOT NULL,"
        "  justification_text TEXT   NOT NULL,"
        "  case_reference     TEXT   NOT NULL,"
        "  restore_state      BIGINT NOT NULL,"
        "  recipient          TEXT   NOT NULL,"
        "  recipient_sha256   TEXT   NOT NULL,"
        "  requester          TEXT   NOT NULL,"
        "  state              BIGINT NOT NULL,"
        "  approvals_required BIGINT NOT NULL CHECK (approvals_required >= 1),"
        "  time_lock_s        BIGINT NOT NULL CHECK (time_lock_s >= 0),"
        "  created_at         BIGINT NOT NULL,"
        "  expires_at         BIGINT NOT NULL,"
        "  quorum_at          BIGINT NOT NULL,"
        "  executable_at      BIGINT NOT NULL,"
        "  executed_at        BIGINT NOT NULL,"
        "  cancelled_by       TEXT   NOT NULL,"
        "  cancel_reason      TEXT   NOT NULL,"
        "  CHECK (expires_at > created_at));"
        "CREATE INDEX recoveries_by_tenant ON recoveries (tenant, created_at);"
        "CREATE TABLE recovery_approvals ("
        "  recovery_id TEXT COLLATE \"C\" NOT NULL"
        "              REFERENCES recoveries (recovery_id) ON DELETE CASCADE,"
        "  officer     TEXT COLLATE \"C\" NOT NULL,"
        "  signature   BYTEA  NOT NULL,"
        "  approved_at BIGINT NOT NULL,"
        "  PRIMARY KEY (recovery_id, officer));"},
    {4, "ALTER TABLE key_versions ADD COLUMN encryptions BIGINT NOT NULL DEFAULT 0"
        "  CHECK (encryptions >= 0);"
        "ALTER TABLE keys ADD COLUMN rotation_period_s BIGINT NOT NULL DEFAULT 0"
        "  CHECK (rotation_period_s >= 0);"
        "CREATE INDEX keys_rotating ON keys (key_id) WHERE rotation_period_s > 0;"},
    {5, "CREATE TABLE escrow_pairs ("
        "  key_id        TEXT COLLATE \"C\" NOT NULL,"
        "  version       BIGINT NOT NULL,"
        "  token         TEXT   NOT NULL,"
        "  escrow_hsm_id BYTEA  NOT NULL CHECK (octet_length(escrow_hsm_id) = 16),"
        "  blob          BYTEA  NOT NULL CHECK (octet_length(blob) BETWEEN 16 AND 4096),"
        "  public_key    BYTEA  NOT NULL CHECK (octet_length(public_key) BETWEEN 1 AND 1024),"
        "  created_at    BIGINT NOT NULL,"
        "  PRIMARY KEY (key_id, version),"
        "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
        "    ON DELETE CASCADE);"},
    /* link tokens (docs/link-tokens.md): the same rows as SQLite's migration
     * 6, nothing personal (a blind recipient index, the token as SHA-256). */
    {6, "CREATE TABLE link_tokens ("
        "  key_id       TEXT COLLATE \"C\" NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,"
        "  token_id     BYTEA   NOT NULL CHECK (octet_length(token_id) = 12),"
        "  version      BIGINT  NOT NULL CHECK (version >= 1),"
        "  region       TEXT COLLATE \"C\" NOT NULL,"
        "  tenant       TEXT COLLATE \"C\" NOT NULL,"
        "  expires_at   BIGINT  NOT NULL,"
        "  created_at   BIGINT  NOT NULL,"
        "  state        BIGINT  NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3),"
        "  attempts     BIGINT  NOT NULL DEFAULT 0 CHECK (attempts >= 0),"
        "  max_attempts BIGINT  NOT NULL CHECK (max_attempts >= 1),"
        "  recipient    BYTEA   NOT NULL CHECK (octet_length(recipient) = 16),"
        "  token_hash   BYTEA   NOT NULL CHECK (octet_length(token_hash) = 32),"
        "  purpose      TEXT COLLATE \"C\" NOT NULL,"
        "  message_ref  TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
        "  PRIMARY KEY (key_id, token_id));"
        "CREATE INDEX link_tokens_expiry ON link_tokens (expires_at);"
        "CREATE INDEX link_tokens_ref ON link_tokens (key_id, message_ref) WHERE message_ref <> '';"
        "CREATE TABLE link_recipients ("
        "  key_id       TEXT COLLATE \"C\" NOT NULL,"
        "  recipient    BYTEA   NOT NULL CHECK (octet_length(recipient) = 16),"
        "  window_start BIGINT  NOT NULL,"
        "  attempts     BIGINT  NOT NULL CHECK (attempts >= 0),"
        "  PRIMARY KEY (key_id, recipient));"},
};

#define PG_MIGRATION_COUNT (sizeof(pg_migrations) / sizeof(pg_migrations[0]))

_Static_assert(sizeof(pg_migrations) / sizeof(pg_migrations[0]) == KMS_STORE_SCHEMA_VERSION,
               "the PostgreSQL migrations must keep step with KMS_STORE_SCHEMA_VERSION");

kms_err store_pg_err(struct store_conn *c, const PGresult *res, const char *op)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char label[160];
    snprintf(label, sizeof(label), "store: %s", op);
    if (kms_pg_retryable(res))
        c->pg_retryable = true;
    kms_err err = kms_pg_result_err(c->pg, res, label);
    if (state == NULL) {
        /* No SQLSTATE: the connection failed under the statement. */
        kms_log_error("store", "%s", kms_err_detail());
        return err;
    }
    /* Details can reach API clients: say what collided, not the server's
     * text with its constraint names and values. */
    if (err == KMS_ERR_ALREADY_EXISTS) {
        const char *cons = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        return kms_err_set(err, "store: %s: %s", op,
                           cons != NULL && strstr(cons, "hsm_id") ? "hsm id already in use"
                                                                  : "key id or version already exists");
    }
    /* A statement or lock timeout, a server out of resources, an admin
     * cancelling: the database is unavailable, not the request wrong. */
    if (strcmp(state, "57014") == 0 || strcmp(state, "55P03") == 0 ||
        (strncmp(state, "53", 2) == 0 && strcmp(state, "53100") != 0) ||
        strcmp(state, "25P03") == 0) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        return kms_err_set(KMS_ERR_IO, "%s", detail);
    }
    return err;
}

kms_err store_pg_exec(struct store_conn *c, const char *sql, const char *op)
{
    PGresult *res = PQexec(c->pg, sql);
    kms_err err = KMS_OK;
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
        err = store_pg_err(c, res, op);
    PQclear(res);
    return err;
}

kms_err store_pg_ensure(struct store_conn *c, const char *op)
{
    if (!kms_pg_broken(c->pg))
        return KMS_OK;
    if (c->pg != NULL) {
        kms_log_warn("store", "%s: the PostgreSQL connection broke; reconnecting", op);
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->pg_in_tx = false;
    struct kms_pg_target t = {c->owner->conninfo, c->owner->password};
    PGconn *pg = NULL;
    kms_err err = kms_pg_connect(&t, "kmsd", &pg);
    if (err != KMS_OK) {
        /* The operator's first clue in an outage; the detail names the
         * host and database, never the password. */
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        kms_err_set(err, "store: %s: %s", op, detail);
        kms_log_error("store", "%s", kms_err_detail());
        return err;
    }
    c->pg = pg;
    /* Bounded waits (a stuck server or a lock another node holds fails the
     * call instead of hanging it), and a transaction a node abandoned
     * mid-way never holds its locks for long. Readers cannot write. */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SET statement_timeout = %d; SET lock_timeout = %d; "
             "SET idle_in_transaction_session_timeout = %d; SET bytea_output = 'hex'%s",
             STORE_PG_STATEMENT_TIMEOUT_MS, STORE_PG_STATEMENT_TIMEOUT_MS,
             6 * STORE_PG_STATEMENT_TIMEOUT_MS,
             c->writable ? "" : "; SET default_transaction_read_only = on");
    err = store_pg_exec(c, sql, "configure connection");
    if (err != KMS_OK) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    return err;
}

char *store_pg_sql(const char *sql, int *out_nparams)
{
    size_t n = strlen(sql);
    char *out = malloc(n + 1);
    int max = 0;
    char quote = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i <= n; i++) {
        char ch = sql[i];
        out[i] = ch;
        if (quote != 0) {
            if (ch == quote)
                quote = 0;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            quote = ch;
        } else if (ch == '?' && sql[i + 1] >= '0' && sql[i + 1] <= '9') {
            int v = 0;
            for (size_t j = i + 1; sql[j] >= '0' && sql[j] <= '9' && v < 1000; j++)
                v = v * 10 + (sql[j] - '0');
            if (v > max)
                max = v;
            out[i] = '$';
        }
    }
    *out_nparams = max;
    return out;
}

/* A one-row, one-column query without parameters, as text. */
static kms_err pg_query_text(struct store_conn *c, const char *sql, char *out, size_t size,
                             bool *out_row, const char *op)
{
    PGresult *res = PQexec(c->pg, sql);
    kms_err err = KMS_OK;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        err = store_pg_err(c, res, op);
    } else if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
        if (out_row != NULL)
            *out_row = false;
        else
            err = kms_err_set(KMS_ERR_INTERNAL, "store: %s: no result", op);
    } else {
        const char *v = PQgetvalue(res, 0, 0);
        if (strlen(v) >= size) {
            err = kms_err_set(KMS_ERR_INTERNAL, "store: %s: unexpected value", op);
        } else {
            memcpy(out, v, strlen(v) + 1);
            if (out_row != NULL)
                *out_row = true;
        }
    }
    PQclear(res);
    return err;
}

static kms_err pg_query_int(struct store_conn *c, const char *sql, int64_t *out, const char *op)
{
    char v[32];
    KMS_GUARD(pg_query_text(c, sql, v, sizeof(v), NULL, op));
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    KMS_ENSURE(end != v && *end == '\0', KMS_ERR_INTERNAL, "store: %s: not a number", op);
    *out = n;
    return KMS_OK;
}

/*
 * Under the advisory lock, inside one transaction: whether this is an empty
 * database (then create the version table), a Custos store at a version
 * this build knows, or something else (refused); then every pending
 * migration. READ COMMITTED (the default) on purpose: after waiting for the
 * lock, the next statement sees what the node that held it committed.
 */
static kms_err pg_migrate_tx(struct store_conn *c, int *out_from)
{
    char have[8];
    int64_t version = 0, objects = 0;
    char sql[128];

    snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%d)", STORE_PG_MIGRATION_LOCK);
    KMS_GUARD(pg_query_text(c, sql, have, sizeof(have), NULL, "take the migration lock"));
    KMS_GUARD(pg_query_text(c, "SELECT to_regclass('custos_schema') IS NOT NULL", have,
                            sizeof(have), NULL, "read schema"));
    if (strcmp(have, "t") != 0) {
        KMS_GUARD(pg_query_int(c,
                               "SELECT count(*) FROM pg_class k JOIN pg_namespace n "
                               "ON n.oid = k.relnamespace WHERE n.nspname = current_schema() "
                               "AND k.relkind IN ('r', 'v', 'm', 'p', 'f')",
                               &objects, "read schema"));
        KMS_ENSURE(objects == 0, KMS_ERR_CONFIG,
                   "store: the database is not a Custos metadata store (it holds %" PRId64
                   " other tables)",
                   objects);
        /* One row: the schema version, as PRAGMA user_version is in SQLite. */
        KMS_GUARD(store_pg_exec(c,
                                "CREATE TABLE custos_schema ("
                                "  id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),"
                                "  version INTEGER NOT NULL);"
                                "INSERT INTO custos_schema (id, version) VALUES (1, 0)",
                                "create the schema version table"));
    }
    KMS_GUARD(pg_query_int(c, "SELECT version FROM custos_schema WHERE id = 1", &version,
                           "read schema version"));
    KMS_ENSURE(version >= 0 && version <= KMS_STORE_SCHEMA_VERSION, KMS_ERR_CONFIG,
               "store: database schema version %" PRId64 " is newer than this build knows (%d); "
               "run a Custos at least as new as the one that wrote it",
               version, KMS_STORE_SCHEMA_VERSION);
    *out_from = (int)version;
    for (size_t i = 0; i < PG_MIGRATION_COUNT; i++) {
        const struct pg_migration *m = &pg_migrations[i];
        if (m->version <= version)
            continue;
        KMS_GUARD(store_pg_exec(c, m->sql, "apply migration"));
        snprintf(sql, sizeof(sql), "UPDATE custos_schema SET version = %d WHERE id = 1",
                 m->version);
        KMS_GUARD(store_pg_exec(c, sql, "set schema version"));
    }
    return KMS_OK;
}

kms_err store_pg_open_writer(struct store_conn *c)
{
    int from = 0;
    KMS_GUARD(store_pg_ensure(c, "open"));
    KMS_GUARD(store_pg_exec(c, "BEGIN", "begin migration"));
    kms_err rc = pg_migrate_tx(c, &from);
    if (rc == KMS_OK)
        rc = store_pg_exec(c, "COMMIT", "commit migration");
    if (rc != KMS_OK) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        if (c->pg != NULL && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
            PQclear(PQexec(c->pg, "ROLLBACK"));
        return kms_err_set(rc, "%s", detail);
    }
    for (int v = from + 1; v <= KMS_STORE_SCHEMA_VERSION; v++)
        kms_log_info("store", "applied schema migration %d (PostgreSQL)", v);
    return KMS_OK;
}

static kms_err schema_info_once(struct store_conn *c, struct kms_store_info *out)
{
    int64_t v = 0;
    char sync[16];
    memset(out, 0, sizeof(*out));
    KMS_GUARD(store_pg_ensure(c, "read store info"));
    KMS_GUARD(pg_query_int(c, "SELECT version FROM custos_schema WHERE id = 1", &v,
                           "read schema version"));
    out->schema_version = (int)v;
    snprintf(out->journal_mode, sizeof(out->journal_mode), "postgresql");
    KMS_GUARD(pg_query_text(c, "SHOW synchronous_commit", sync, sizeof(sync), NULL,
                            "read synchronous_commit"));
    /* 2 is SQLite's FULL: a commit is durable when it returns. */
    out->synchronous = strcmp(sync, "off") == 0 ? 0 : strcmp(sync, "local") == 0 ? 1 : 2;
    out->foreign_keys = 1;
    out->busy_timeout_ms = STORE_PG_STATEMENT_TIMEOUT_MS;
    return pg_query_text(c, "SELECT value FROM meta WHERE name = 'store_id'", out->store_id,
                         sizeof(out->store_id), NULL, "read store id");
}

/* Read-only, so safe to send again on a new connection when the one it
 * went out on had broken (the readiness check after a server restart). */
kms_err store_pg_schema_info(struct store_conn *c, struct kms_store_info *out)
{
    kms_err rc = schema_info_once(c, out);
    if (rc != KMS_OK && !c->pg_in_tx && kms_pg_broken(c->pg))
        rc = schema_info_once(c, out);
    return rc;
}
