/*
 * audit_pg_key.c - the region's signing key in PostgreSQL: every node signs
 * with the newest key of custos_audit_keys, whose private half is in the
 * token all nodes share; the first node of a region makes it, and the
 * sequencer inserts a rotated one inside its round's transaction.
 */
#include "audit_log_pg_internal.h"

/* The region's newest key must be in the token: the key every node signs
 * with is the one custos_audit_keys names last. */
kms_err audit_pg_load_sign_key(struct audit_log *log, PGconn *c)
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

kms_err audit_pg_insert_key(struct audit_log *log, PGconn *c, const char *op,
                            struct p11_key_id *out_id, int64_t *out_t)
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
    kms_err rc = audit_pg_exec(c, op,
                               "INSERT INTO custos_audit_keys (region, key_id, not_before_ms,"
                               " record) VALUES ($1, $2, $3::bigint, $4)",
                               4, v, lens, fmts, 0, &r);
    PQclear(r);
    free(rec);
    if (rc != KMS_OK) {
        p11_key_destroy(log->tok, &id);
        return rc;
    }
    *out_id = id;
    *out_t = t;
    return KMS_OK;
}

/* Serialised per region by a transaction lock, so that nodes starting
 * together make one key. */
kms_err audit_pg_ensure_key(struct audit_log *log, PGconn *c)
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
        rc = audit_pg_insert_key(log, c, "audit key", &id, &t);
        if (rc == KMS_OK) {
            rc = audit_pg_cmd(c, "audit key", "COMMIT");
            if (rc != KMS_OK) {
                p11_key_destroy(log->tok, &id); /* its row did not commit */
            } else {
                char hex[33];
                p11_key_id_hex(&id, hex);
                kms_log_info("audit", "region %s: new audit signing key %s", log->region, hex);
            }
        }
    } else if (rc == KMS_OK) {
        rc = audit_pg_cmd(c, "audit key", "COMMIT");
    }
    PQclear(r);
    if (rc != KMS_OK)
        audit_pg_rollback(c);
    if (rc == KMS_OK)
        rc = audit_pg_load_sign_key(log, c);
    return rc;
}
