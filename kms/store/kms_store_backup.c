/*
 * kms_store_backup.c - what a SQLite store knows of backups
 * (kms_store_epoch.h): the consistent snapshot kmsctl backup takes, and the
 * marks that say a store was restored from one and whether kmsd has
 * announced it yet (docs/operations.md "Backup and restore").
 */
#include "kms_store_epoch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_store_internal.h"

struct backup_arg {
    bool *pending;
    char *of, *at;
};

/* One database restored from a backup and not yet announced. */
static kms_err backup_pending_db(struct store_db *store, void *varg, const char *op)
{
    struct backup_arg *a = varg;
    bool of = false, at = false, seen = false;
    char v[32];
    (void)op;
    if (*a->pending)
        return KMS_OK; /* the first one found is reported */
    char *out_backup_of = a->of, *out_backup_at = a->at;
    bool *out_pending = a->pending;
    KMS_GUARD(store_meta_get(store, "backup_of", out_backup_of, KMS_STORE_META_MAX, &of));
    KMS_GUARD(store_meta_get(store, "backup_at", out_backup_at, KMS_STORE_META_MAX, &at));
    KMS_GUARD(store_meta_get(store, "restore_announced", v, sizeof(v), &seen));
    if (!at)
        snprintf(out_backup_at, KMS_STORE_META_MAX, "?");
    *out_pending = of && !seen;
    return KMS_OK;
}

kms_err kms_store_backup_pending(struct kms_store *store, bool *out_pending,
                                 char out_backup_of[KMS_STORE_META_MAX],
                                 char out_backup_at[KMS_STORE_META_MAX])
{
    *out_pending = false;
    struct backup_arg a = {out_pending, out_backup_of, out_backup_at};
    return store_each_db(store, true, backup_pending_db, &a, "read backup marks");
}

static kms_err backup_announced_db(struct store_db *db, void *varg, const char *op)
{
    return store_write_one(db,
                     "INSERT INTO meta (name, value) VALUES (?1, CAST(?3 AS TEXT)) "
                     "ON CONFLICT (name) DO NOTHING",
                     "restore_announced", NULL, *(const int64_t *)varg, op);
}

kms_err kms_store_backup_announced(struct kms_store *store, int64_t now)
{
    return store_each_db(store, true, backup_announced_db, &now, "record restore announced");
}

static kms_err exec_sql(sqlite3 *db, const char *sql, const char *op)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? KMS_OK : store_sql_err(db, rc, op);
}

static kms_err text_of(sqlite3 *db, const char *sql, char *out, size_t size, const char *op)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return store_sql_err(db, rc, op);
    kms_err r = KMS_OK;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        if (t == NULL || n < 0 || (size_t)n >= size)
            r = kms_err_set(KMS_ERR_INTERNAL, "store: %s: unexpected value", op);
        else
            memcpy(out, t, (size_t)n + 1);
    }
    else
        r = rc == SQLITE_DONE ? kms_err_set(KMS_ERR_CONFIG, "store: %s: no row", op)
                              : store_sql_err(db, rc, op);
    sqlite3_finalize(st);
    return r;
}

kms_err kms_store_snapshot(const char *src, const char *dst, int64_t now, char *out_store_id,
                           char *out_backup_of)
{
    static const char op[] = "snapshot";
    sqlite3 *in = NULL, *out = NULL;
    sqlite3_stmt *st = NULL;
    char id[33] = "", appid[32] = "", newid[33] = "";
    kms_err rc = KMS_OK;
    KMS_ENSURE(src && dst, KMS_ERR_USAGE, "store: %s: NULL path", op);
    int s = sqlite3_open_v2(src, &in, SQLITE_OPEN_READONLY, NULL);
    if (s != SQLITE_OK) {
        rc = kms_err_set(KMS_ERR_IO, "store: %s: cannot open %s: %s", op, src,
                         in ? sqlite3_errmsg(in) : sqlite3_errstr(s));
        goto done;
    }
    sqlite3_busy_timeout(in, STORE_BUSY_TIMEOUT_MS);
    KMS_GUARD_GOTO(text_of(in, "PRAGMA application_id", appid, sizeof(appid), op), done);
    KMS_ENSURE_GOTO(strcmp(appid, "1131770740") == 0, done, KMS_ERR_CONFIG,
                    "store: %s: %s is not a Custos metadata store", op, src);
    /* One read transaction: the copy is one instant of the store. */
    s = sqlite3_prepare_v2(in, "VACUUM INTO ?1", -1, &st, NULL);
    if (s != SQLITE_OK) {
        rc = store_sql_err(in, s, op);
        goto done;
    }
    sqlite3_bind_text(st, 1, dst, -1, SQLITE_STATIC);
    s = sqlite3_step(st);
    if (s != SQLITE_DONE) {
        rc = store_sql_err(in, s, op);
        goto done;
    }
    s = sqlite3_open_v2(dst, &out, SQLITE_OPEN_READWRITE, NULL);
    if (s != SQLITE_OK) {
        rc = kms_err_set(KMS_ERR_IO, "store: %s: cannot open the copy %s", op, dst);
        goto done;
    }
    KMS_GUARD_GOTO(text_of(out, "SELECT value FROM meta WHERE name = 'store_id'", id, sizeof(id),
                           op),
                   done);
    /* The id goes into SQL text below: it must be the hex the schema made. */
    for (const char *p = id; *p; p++)
        KMS_ENSURE_GOTO((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'), done,
                        KMS_ERR_CONFIG, "store: %s: store_id is not hex", op);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE;"
             "INSERT OR REPLACE INTO meta (name, value) VALUES ('backup_of', '%s');"
             "INSERT OR REPLACE INTO meta (name, value) VALUES ('backup_at', '%lld');"
             "DELETE FROM meta WHERE name = 'restore_announced';"
             "UPDATE meta SET value = lower(hex(randomblob(16))) WHERE name = 'store_id';"
             "COMMIT;",
             id, (long long)now);
    KMS_GUARD_GOTO(exec_sql(out, sql, op), done);
    KMS_GUARD_GOTO(text_of(out, "SELECT value FROM meta WHERE name = 'store_id'", newid,
                           sizeof(newid), op),
                   done);
    KMS_GUARD_GOTO(text_of(out, "PRAGMA integrity_check", appid, sizeof(appid), op), done);
    KMS_ENSURE_GOTO(strcmp(appid, "ok") == 0, done, KMS_ERR_IO,
                    "store: %s: the copy fails its integrity check", op);
    if (out_store_id)
        snprintf(out_store_id, 33, "%s", newid);
    if (out_backup_of)
        snprintf(out_backup_of, 33, "%s", id);
done:
    sqlite3_finalize(st);
    sqlite3_close(out);
    sqlite3_close(in);
    return rc;
}

