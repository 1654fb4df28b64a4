/*
 * kms_store_schema.c - the store's SQLite connections: settings, schema
 * migrations, and the mapping of SQLite errors to kms_err.
 */
#include "kms_store_internal.h"

#include <stdio.h>
#include <string.h>

#include "kms_log.h"

/* PRAGMA application_id of a Custos store ("Cust"): tells our database apart
 * from any other SQLite file an operator might point kmsd at. */
#define STORE_APPLICATION_ID 0x43757374

/* After a checkpoint the WAL is truncated to this size, so one burst of writes
 * does not leave a large file behind for ever. */
#define STORE_JOURNAL_SIZE_LIMIT (64 * 1024 * 1024)

/*
 * Schema migrations. Each brings the schema from version - 1 to version and
 * runs, with every other pending one, in the single transaction that opens
 * the store, so a crash or an error leaves the previous schema intact.
 *
 * To add one:
 *   1. append {N, "what it adds", "SQL ..."} below, N = previous + 1; never
 *      edit or reorder a migration that has shipped: databases in the field
 *      have already run it;
 *   2. set KMS_STORE_SCHEMA_VERSION in kms_store.h to N (the static assertion
 *      below keeps the two in step);
 *   3. describe it in docs/state.md.
 * Migration 2 (the import tokens of BYOK) is an example.
 *
 * Enumerations (spec, usage, origin, state) are deliberately not CHECKed in
 * SQL: SQLite cannot alter a CHECK without rebuilding the table, so a new key
 * spec would cost a table copy. The C code validates them on the way in and
 * on the way out. CHECKs guard only shapes that will never change.
 */
struct migration {
    int version;
    const char *name;
    const char *sql;
};

static const struct migration migrations[] = {
    {1, "meta, keys, key_versions",
     "CREATE TABLE meta ("
     "  name  TEXT NOT NULL PRIMARY KEY,"
     "  value TEXT NOT NULL"
     ") STRICT, WITHOUT ROWID;"
     "INSERT INTO meta (name, value) VALUES"
     "  ('store_id', lower(hex(randomblob(16)))),"
     "  ('created_at', strftime('%s', 'now'));"

     "CREATE TABLE keys ("
     "  key_id          TEXT    NOT NULL PRIMARY KEY"
     "                  CHECK (length(key_id) = 32 AND key_id NOT GLOB '*[^0-9a-f]*'),"
     "  tenant          TEXT    NOT NULL,"
     "  region          TEXT    NOT NULL,"
     "  token           TEXT    NOT NULL,"
     "  spec            INTEGER NOT NULL,"
     "  usage           INTEGER NOT NULL,"
     "  origin          INTEGER NOT NULL,"
     "  state           INTEGER NOT NULL,"
     "  description     TEXT    NOT NULL,"
     "  created_at      INTEGER NOT NULL,"
     "  deletion_at     INTEGER NOT NULL,"
     "  current_version INTEGER NOT NULL,"
     /* Highest version number ever allocated, discarded ones included, so
      * a number is never given to two different HSM objects. */
     "  last_version    INTEGER NOT NULL,"
     "  escrow_required INTEGER NOT NULL CHECK (escrow_required IN (0, 1)),"
     "  CHECK (current_version BETWEEN 0 AND last_version),"
     "  CHECK (last_version BETWEEN 0 AND 4294967295)"
     ") STRICT, WITHOUT ROWID;"
     /* ListKeys pages by (created_at, key_id) within a tenant. */
     "CREATE INDEX keys_by_tenant ON keys (tenant, created_at, key_id);"
     /* The deletion sweeper reads only keys pending deletion. */
     "CREATE INDEX keys_pending_deletion ON keys (deletion_at, key_id) WHERE state = 4;"
     "CREATE INDEX keys_by_token ON keys (token);"

     "CREATE TABLE key_versions ("
     "  key_id     TEXT    NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,"
     "  version    INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),"
     "  hsm_id     BLOB    NOT NULL UNIQUE CHECK (length(hsm_id) = 16),"
     "  state      INTEGER NOT NULL,"
     "  created_at INTEGER NOT NULL,"
     "  PRIMARY KEY (key_id, version)"
     ") STRICT, WITHOUT ROWID;"
     /* Reconcile at start reads only CREATING versions. */
     "CREATE INDEX key_versions_creating ON key_versions (key_id, version) WHERE state = 0;"},

    {2, "import_tokens, key_check_values (BYOK)",
     /* token_id is the SHA-256 of the secret the tenant holds; states and
      * end reasons are enum kms_import_state / kms_import_end. */
     "CREATE TABLE import_tokens ("
     "  token_id   BLOB    NOT NULL PRIMARY KEY CHECK (length(token_id) = 32),"
     "  key_id     TEXT    NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,"
     "  token      TEXT    NOT NULL,"
     "  hsm_id     BLOB    NOT NULL UNIQUE CHECK (length(hsm_id) = 16),"
     "  state      INTEGER NOT NULL,"
     "  end_reason INTEGER NOT NULL,"
     "  failures   INTEGER NOT NULL CHECK (failures >= 0),"
     "  created_at INTEGER NOT NULL,"
     "  expires_at INTEGER NOT NULL,"
     "  CHECK (expires_at > created_at)"
     ") STRICT, WITHOUT ROWID;"
     /* Live tokens of a key (the cap), and the sweeper's work list. */
     "CREATE INDEX import_tokens_by_key ON import_tokens (key_id, state);"
     "CREATE INDEX import_tokens_open ON import_tokens (expires_at) WHERE state <> 4;"
     /* One key check value per version of an EXTERNAL key. */
     "CREATE TABLE key_check_values ("
     "  key_id     TEXT    NOT NULL,"
     "  version    INTEGER NOT NULL,"
     "  kcv        BLOB    NOT NULL CHECK (length(kcv) = 32),"
     "  PRIMARY KEY (key_id, version),"
     "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
     "    ON DELETE CASCADE"
     ") STRICT, WITHOUT ROWID;"},

    {3, "escrow_blobs, recoveries, recovery_approvals (escrow and recovery)",
     /* One blob per HSM object of a version (part 0: the AES key, 1: the
      * HMAC key of a METADATA version), wrapped under the region's escrow
      * key (escrow_hsm_id) in `token`. Blobs outlive the key's destruction:
      * that is what they are for. */
     "CREATE TABLE escrow_blobs ("
     "  key_id        TEXT    NOT NULL,"
     "  version       INTEGER NOT NULL,"
     "  part          INTEGER NOT NULL CHECK (part IN (0, 1)),"
     "  token         TEXT    NOT NULL,"
     "  escrow_hsm_id BLOB    NOT NULL CHECK (length(escrow_hsm_id) = 16),"
     "  blob          BLOB    NOT NULL CHECK (length(blob) BETWEEN 1 AND 64),"
     "  created_at    INTEGER NOT NULL,"
     "  PRIMARY KEY (key_id, version, part),"
     "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
     "    ON DELETE CASCADE"
     ") STRICT, WITHOUT ROWID;"
     /* States and modes are enum kms_recovery_state / the proto's enums. */
     "CREATE TABLE recoveries ("
     "  recovery_id        TEXT    NOT NULL PRIMARY KEY CHECK (length(recovery_id) = 32),"
     "  tenant             TEXT    NOT NULL,"
     "  key_id             TEXT    NOT NULL REFERENCES keys (key_id),"
     "  region             TEXT    NOT NULL,"
     "  versions           TEXT    NOT NULL,"
     "  mode               INTEGER NOT NULL,"
     "  justification      INTEGER NOT NULL,"
     "  justification_text TEXT    NOT NULL,"
     "  case_reference     TEXT    NOT NULL,"
     "  restore_state      INTEGER NOT NULL,"
     "  recipient          TEXT    NOT NULL,"
     "  recipient_sha256   TEXT    NOT NULL,"
     "  requester          TEXT    NOT NULL,"
     "  state              INTEGER NOT NULL,"
     "  approvals_required INTEGER NOT NULL CHECK (approvals_required >= 1),"
     "  time_lock_s        INTEGER NOT NULL CHECK (time_lock_s >= 0),"
     "  created_at         INTEGER NOT NULL,"
     "  expires_at         INTEGER NOT NULL,"
     "  quorum_at          INTEGER NOT NULL,"
     "  executable_at      INTEGER NOT NULL,"
     "  executed_at        INTEGER NOT NULL,"
     "  cancelled_by       TEXT    NOT NULL,"
     "  cancel_reason      TEXT    NOT NULL,"
     "  CHECK (expires_at > created_at)"
     ") STRICT, WITHOUT ROWID;"
     "CREATE INDEX recoveries_by_tenant ON recoveries (tenant, created_at);"
     /* The signature is the evidence: kept, so an auditor can re-verify it. */
     "CREATE TABLE recovery_approvals ("
     "  recovery_id TEXT    NOT NULL REFERENCES recoveries (recovery_id) ON DELETE CASCADE,"
     "  officer     TEXT    NOT NULL,"
     "  signature   BLOB    NOT NULL,"
     "  approved_at INTEGER NOT NULL,"
     "  PRIMARY KEY (recovery_id, officer)"
     ") STRICT, WITHOUT ROWID;"},

    {4, "key_versions.encryptions, keys.rotation_period_s (GCM usage, automatic rotation)",
     /* encryptions is an upper bound of the GCM encryptions made under the
      * version: kmsd reserves a block here before it uses it (kms_usage.h),
      * so after a crash the count is over, never under. */
     "ALTER TABLE key_versions ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0"
     "  CHECK (encryptions >= 0);"
     /* 0: no periodic rotation; else seconds between automatic rotations. */
     "ALTER TABLE keys ADD COLUMN rotation_period_s INTEGER NOT NULL DEFAULT 0"
     "  CHECK (rotation_period_s >= 0);"
     /* The sweeper's question: which keys have a period at all. */
     "CREATE INDEX keys_rotating ON keys (key_id) WHERE rotation_period_s > 0;"},

    {5, "escrow_pairs (escrow of signing key pairs)",
     /* One row per escrowed version of a signing key (EC_P256, RSA_*): the
      * private key's PKCS#8 wrapped under the region's escrow key (RFC 5649,
      * up to ~2.4 KB for RSA-4096) and the version's public key (SPKI DER),
      * which a restore needs to make the public half again. A table of its
      * own: escrow_blobs' CHECKs fit 32-byte secret keys, and SQLite cannot
      * change a CHECK without a table copy. Blobs outlive the key's
      * destruction, as in escrow_blobs. */
     "CREATE TABLE escrow_pairs ("
     "  key_id        TEXT    NOT NULL,"
     "  version       INTEGER NOT NULL,"
     "  token         TEXT    NOT NULL,"
     "  escrow_hsm_id BLOB    NOT NULL CHECK (length(escrow_hsm_id) = 16),"
     "  blob          BLOB    NOT NULL CHECK (length(blob) BETWEEN 16 AND 4096),"
     "  public_key    BLOB    NOT NULL CHECK (length(public_key) BETWEEN 1 AND 1024),"
     "  created_at    INTEGER NOT NULL,"
     "  PRIMARY KEY (key_id, version),"
     "  FOREIGN KEY (key_id, version) REFERENCES key_versions (key_id, version)"
     "    ON DELETE CASCADE"
     ") STRICT, WITHOUT ROWID;"},

    {6, "link_tokens, link_recipients (SMS-fallback link tokens)",
     /* One row per minted link token (docs/link-tokens.md). Nothing personal:
      * the recipient is a truncated HMAC made in the HSM (a blind index),
      * the token itself only as SHA-256. Redemption is a compare-and-set on
      * state (0 live, 1 used, 2 revoked, 3 void: attempts exhausted).
      * Rows are swept some time after they expire. */
     "CREATE TABLE link_tokens ("
     "  key_id      TEXT    NOT NULL,"
     "  token_id    BLOB    NOT NULL CHECK (length(token_id) = 12),"
     "  version     INTEGER NOT NULL CHECK (version >= 1),"
     "  region      TEXT    NOT NULL,"
     "  tenant      TEXT    NOT NULL,"
     "  expires_at  INTEGER NOT NULL,"
     "  created_at  INTEGER NOT NULL,"
     "  state       INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3),"
     "  attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),"
     "  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),"
     "  recipient   BLOB    NOT NULL CHECK (length(recipient) = 16),"
     "  token_hash  BLOB    NOT NULL CHECK (length(token_hash) = 32),"
     "  purpose     TEXT    NOT NULL,"
     "  message_ref TEXT    NOT NULL DEFAULT '',"
     "  PRIMARY KEY (key_id, token_id),"
     "  FOREIGN KEY (key_id) REFERENCES keys (key_id) ON DELETE CASCADE"
     ") STRICT, WITHOUT ROWID;"
     "CREATE INDEX link_tokens_expiry ON link_tokens (expires_at);"
     "CREATE INDEX link_tokens_ref ON link_tokens (key_id, message_ref) WHERE message_ref <> '';"
     /* Redemption attempts per recipient (blind index) in a fixed window. */
     "CREATE TABLE link_recipients ("
     "  key_id       TEXT    NOT NULL,"
     "  recipient    BLOB    NOT NULL CHECK (length(recipient) = 16),"
     "  window_start INTEGER NOT NULL,"
     "  attempts     INTEGER NOT NULL CHECK (attempts >= 0),"
     "  PRIMARY KEY (key_id, recipient)"
     ") STRICT, WITHOUT ROWID;"},
};

#define MIGRATION_COUNT (sizeof(migrations) / sizeof(migrations[0]))

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == KMS_STORE_SCHEMA_VERSION,
               "KMS_STORE_SCHEMA_VERSION must be the number of the last migration");

kms_err store_sql_err(sqlite3 *db, int rc, const char *op)
{
    const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    kms_err err;

    switch (rc & 0xff) {
    case SQLITE_FULL:
        err = KMS_ERR_NOSPC;
        break;
    case SQLITE_IOERR:
    case SQLITE_CORRUPT:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_PROTOCOL:
    /* Busy past the timeout means another process (an operator's sqlite3
     * shell, a backup) holds the database: unavailable, not our bug. */
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        err = KMS_ERR_IO;
        break;
    case SQLITE_NOTADB:
        err = KMS_ERR_CONFIG;
        break;
    case SQLITE_CONSTRAINT:
        /* Only uniqueness can be violated by valid input; a CHECK, NOT NULL or
         * foreign key failure means the store's own validation let something
         * through, which "already exists" would misreport. */
        err = (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
                  ? KMS_ERR_ALREADY_EXISTS
                  : KMS_ERR_INTERNAL;
        break;
    case SQLITE_NOMEM:
        err = KMS_ERR_NOMEM;
        break;
    default:
        err = KMS_ERR_INTERNAL;
        break;
    }
    /* Input and configuration errors are the caller's to report; these are
     * the ones an operator must see even if the caller swallows them. */
    if (err == KMS_ERR_IO || err == KMS_ERR_NOSPC || err == KMS_ERR_NOMEM ||
        err == KMS_ERR_INTERNAL)
        kms_log_error("store", "%s: %s (sqlite %d)", op, msg, rc);
    /* Details can reach API clients: say what collided, not SQLite's text
     * with its table names. */
    if (err == KMS_ERR_ALREADY_EXISTS)
        return kms_err_set(err, "store: %s: %s", op,
                           strstr(msg, "hsm_id") ? "hsm id already in use"
                                                 : "key id or version already exists");
    return kms_err_set(err, "store: %s: %s", op, msg);
}

static kms_err exec(sqlite3 *db, const char *sql, const char *op)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? KMS_OK : store_sql_err(db, rc, op);
}

/* Run a one-row, one-column query (a PRAGMA) and return its value. */
static kms_err query_int(sqlite3 *db, const char *sql, const char *op, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        kms_err err = rc == SQLITE_DONE
                          ? kms_err_set(KMS_ERR_INTERNAL, "store: %s: no result", op)
                          : store_sql_err(db, rc, op);
        sqlite3_finalize(st);
        return err;
    }
    *out = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return KMS_OK;
}

static kms_err query_text(sqlite3 *db, const char *sql, const char *op, char *out,
                          size_t size)
{
    sqlite3_stmt *st = NULL;
    kms_err err = KMS_OK;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        err = rc == SQLITE_DONE ? kms_err_set(KMS_ERR_INTERNAL, "store: %s: no result", op)
                                : store_sql_err(db, rc, op);
    } else {
        const unsigned char *t = sqlite3_column_text(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        if (t == NULL || n < 0 || (size_t)n >= size)
            err = kms_err_set(KMS_ERR_INTERNAL, "store: %s: unexpected value", op);
        else
            memcpy(out, t, (size_t)n + 1);
    }
    sqlite3_finalize(st);
    return err;
}

/*
 * Refuse what we must not touch before changing anything in the file: a
 * database of another application, and one whose schema is newer than this
 * code (an older binary after a rollback would otherwise write rows the
 * newer schema's invariants do not expect).
 */
static kms_err check_identity(sqlite3 *db)
{
    int app_id = 0, version = 0, objects = 0;
    KMS_GUARD(query_int(db, "PRAGMA application_id", "read application id", &app_id));
    KMS_GUARD(query_int(db, "PRAGMA user_version", "read schema version", &version));
    KMS_GUARD(query_int(db, "SELECT count(*) FROM sqlite_master", "read schema", &objects));

    if (app_id == 0 && version == 0 && objects == 0)
        return KMS_OK; /* new, empty database */
    KMS_ENSURE(app_id == STORE_APPLICATION_ID, KMS_ERR_CONFIG,
               "store: the database is not a Custos metadata store (application_id %d)",
               app_id);
    KMS_ENSURE(version <= KMS_STORE_SCHEMA_VERSION, KMS_ERR_CONFIG,
               "store: database schema version %d is newer than this build knows (%d); "
               "run a Custos at least as new as the one that wrote it",
               version, KMS_STORE_SCHEMA_VERSION);
    return KMS_OK;
}

static kms_err migrate(sqlite3 *db)
{
    kms_err rc = KMS_OK;
    int version = 0;
    char sql[64];

    /* IMMEDIATE: take the write lock before reading the version, so what we
     * read is what we upgrade. */
    KMS_GUARD(exec(db, "BEGIN IMMEDIATE", "begin migration"));
    KMS_GUARD_GOTO(query_int(db, "PRAGMA user_version", "read schema version", &version),
                   fail);
    KMS_ENSURE_GOTO(version >= 0 && version <= KMS_STORE_SCHEMA_VERSION, fail, KMS_ERR_CONFIG,
                    "store: database schema version %d is not one this build knows (0..%d)",
                    version, KMS_STORE_SCHEMA_VERSION);
    if (version == KMS_STORE_SCHEMA_VERSION) {
        exec(db, "ROLLBACK", "end migration");
        return KMS_OK;
    }
    if (version == 0) {
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d", STORE_APPLICATION_ID);
        KMS_GUARD_GOTO(exec(db, sql, "set application id"), fail);
    }
    for (size_t i = 0; i < MIGRATION_COUNT; i++) {
        const struct migration *m = &migrations[i];
        if (m->version <= version)
            continue;
        KMS_GUARD_GOTO(exec(db, m->sql, "apply migration"), fail);
        /* user_version lives in the database header, which is written in the
         * same transaction as the tables. */
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", m->version);
        KMS_GUARD_GOTO(exec(db, sql, "set schema version"), fail);
    }
    KMS_GUARD_GOTO(exec(db, "COMMIT", "commit migration"), fail);
    for (size_t i = 0; i < MIGRATION_COUNT; i++)
        if (migrations[i].version > version)
            kms_log_info("store", "applied schema migration %d (%s)", migrations[i].version,
                         migrations[i].name);
    return KMS_OK;

fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/*
 * Settings of every connection. Defensive mode stops SQL from corrupting the
 * file (writable_schema and friends); untrusted schema stops functions with
 * side effects from running inside views or triggers someone slipped in.
 */
static kms_err configure_common(sqlite3 *db)
{
    int rc = sqlite3_extended_result_codes(db, 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK)
        return store_sql_err(db, rc, "configure connection");
    return exec(db, "PRAGMA foreign_keys = ON", "enable foreign keys");
}

static kms_err configure_writer(sqlite3 *db)
{
    char mode[16];
    char sql[64];

    KMS_GUARD(check_identity(db));
    /* WAL: readers never block the writer nor the writer readers, and a
     * commit is one append to the WAL. The mode is persistent in the file. */
    KMS_GUARD(query_text(db, "PRAGMA journal_mode = WAL", "set journal mode", mode,
                         sizeof(mode)));
    KMS_ENSURE(strcmp(mode, "wal") == 0, KMS_ERR_CONFIG,
               "store: the database could not be put in WAL mode (got %s); is it on a "
               "network filesystem?",
               mode);
    /* FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power
     * loss, and a key acknowledged to a tenant must survive that. */
    KMS_GUARD(exec(db, "PRAGMA synchronous = FULL", "set synchronous"));
    snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit = %d", STORE_JOURNAL_SIZE_LIMIT);
    KMS_GUARD(exec(db, sql, "set journal size limit"));
    return migrate(db);
}

kms_err store_conn_open(const char *path, bool writable, sqlite3 **out)
{
    sqlite3 *db = NULL;
    kms_err rc;
    int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE; /* we lock ourselves */
    flags |= writable ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;

    *out = NULL;
    int src = sqlite3_open_v2(path, &db, flags, NULL);
    if (src != SQLITE_OK) {
        rc = store_sql_err(db, src, "open database");
        sqlite3_close(db);
        return rc;
    }
    rc = configure_common(db);
    if (rc == KMS_OK && writable)
        rc = configure_writer(db);
    if (rc == KMS_OK && !writable)
        rc = exec(db, "PRAGMA query_only = ON", "set query only");
    if (rc != KMS_OK) {
        sqlite3_close(db);
        return rc;
    }
    *out = db;
    return KMS_OK;
}

kms_err store_schema_info(sqlite3 *db, struct kms_store_info *out)
{
    memset(out, 0, sizeof(*out));
    KMS_GUARD(query_int(db, "PRAGMA user_version", "read schema version",
                        &out->schema_version));
    KMS_GUARD(query_text(db, "PRAGMA journal_mode", "read journal mode", out->journal_mode,
                         sizeof(out->journal_mode)));
    KMS_GUARD(query_int(db, "PRAGMA synchronous", "read synchronous", &out->synchronous));
    KMS_GUARD(query_int(db, "PRAGMA foreign_keys", "read foreign keys", &out->foreign_keys));
    KMS_GUARD(query_int(db, "PRAGMA busy_timeout", "read busy timeout",
                        &out->busy_timeout_ms));
    return query_text(db, "SELECT value FROM meta WHERE name = 'store_id'", "read store id",
                      out->store_id, sizeof(out->store_id));
}
