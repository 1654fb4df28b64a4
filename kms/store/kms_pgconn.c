/*
 * kms_pgconn.c - PostgreSQL connections from a target (kms_pgconn.h).
 */
#include "kms_pgconn.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_log.h"
#include "kms_secret.h"

/* libpq's messages are several lines (ERROR, DETAIL, HINT); a detail
 * carries only the first, cut to fit. */
static void first_line(const char *msg, char *dst, size_t size)
{
    size_t n = 0;
    if (msg != NULL) {
        while (msg[n] != '\0' && msg[n] != '\n' && n + 1 < size)
            n++;
        memcpy(dst, msg, n);
    }
    dst[n] = '\0';
}

kms_err kms_pg_target_check(const struct kms_pg_target *t)
{
    if (t == NULL || t->conninfo == NULL || t->conninfo[0] == '\0')
        return kms_err_set(KMS_ERR_CONFIG, "postgresql: empty connection string");
    if (strlen(t->conninfo) > KMS_PG_CONNINFO_MAX)
        return kms_err_set(KMS_ERR_CONFIG, "postgresql: connection string over %d bytes",
                           KMS_PG_CONNINFO_MAX);
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(t->conninfo, &errmsg);
    if (opts == NULL) {
        char line[160];
        first_line(errmsg, line, sizeof line);
        PQfreemem(errmsg);
        return kms_err_set(KMS_ERR_CONFIG, "postgresql: connection string: %s",
                           line[0] != '\0' ? line : "out of memory");
    }
    kms_err err = KMS_OK;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        /* The password comes from its source only; in the string it would
         * show wherever the configuration is shown. */
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL) {
            err = kms_err_set(KMS_ERR_CONFIG, "postgresql: the connection string holds a "
                                              "password; give it as a password source "
                                              "(file:/path) instead");
            break;
        }
    }
    /* PQconninfoFree does not wipe; a refused password is cleared here. */
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
            OPENSSL_cleanse(o->val, strlen(o->val));
    PQconninfoFree(opts);
    return err;
}

/* The value of keyword in opts ("" when unset). */
static const char *opt_val(const PQconninfoOption *opts, const char *keyword)
{
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++)
        if (strcmp(o->keyword, keyword) == 0)
            return o->val != NULL ? o->val : "";
    return "";
}

kms_err kms_pg_same_database(const char *a, const char *b, bool *out_same)
{
    PQconninfoOption *oa = PQconninfoParse(a, NULL);
    PQconninfoOption *ob = b != NULL ? PQconninfoParse(b, NULL) : NULL;
    *out_same = false;
    if (oa == NULL || ob == NULL) {
        PQconninfoFree(oa);
        PQconninfoFree(ob);
        return kms_err_set(KMS_ERR_CONFIG, "postgresql: connection string does not parse");
    }
    /* Unset values are compared as libpq fills them in: port 5432, the
     * database named after the user. The host is compared as written:
     * "localhost" and "127.0.0.1" are told apart (the operator names one
     * server one way). */
    const char *pa = opt_val(oa, "port"), *pb = opt_val(ob, "port");
    const char *da = opt_val(oa, "dbname"), *db = opt_val(ob, "dbname");
    if (da[0] == '\0')
        da = opt_val(oa, "user");
    if (db[0] == '\0')
        db = opt_val(ob, "user");
    *out_same = strcmp(opt_val(oa, "host"), opt_val(ob, "host")) == 0 &&
                strcmp(opt_val(oa, "hostaddr"), opt_val(ob, "hostaddr")) == 0 &&
                strcmp(pa[0] ? pa : "5432", pb[0] ? pb : "5432") == 0 && strcmp(da, db) == 0;
    /* Neither may hold a password (kms_pg_target_check refuses that), but
     * parsed option arrays are wiped like any other. */
    for (PQconninfoOption *o = oa; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
            OPENSSL_cleanse(o->val, strlen(o->val));
    for (PQconninfoOption *o = ob; o->keyword != NULL; o++)
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
            OPENSSL_cleanse(o->val, strlen(o->val));
    PQconninfoFree(oa);
    PQconninfoFree(ob);
    return KMS_OK;
}

kms_err kms_pg_connect(const struct kms_pg_target *t, const char *app, PGconn **out)
{
    *out = NULL;
    KMS_GUARD(kms_pg_target_check(t));

    struct kms_secret pw = {0};
    char *pwz = NULL;
    PGconn *c = NULL;
    kms_err err = KMS_OK;
    if (t->password_source != NULL) {
        err = kms_secret_read_source(t->password_source, &pw);
        if (err != KMS_OK)
            goto out;
        if (memchr(pw.data, '\0', pw.len) != NULL) {
            err = kms_err_set(KMS_ERR_CONFIG, "postgresql: password source %s holds a NUL byte",
                              t->password_source);
            goto out;
        }
        pwz = kms_secret_alloc(pw.len + 1);
        if (pwz == NULL) {
            err = kms_err_set(KMS_ERR_NOMEM, "postgresql: out of memory");
            goto out;
        }
        memcpy(pwz, pw.data, pw.len);
        pwz[pw.len] = '\0';
    }

    /* Later keywords override earlier ones: connect_timeout comes before
     * the string so the operator's value wins; the session settings come
     * after so that they always hold. */
    const char *keys[] = {"connect_timeout", "dbname", "application_name", "client_encoding",
                          "options", pwz != NULL ? "password" : NULL, NULL};
    const char *vals[] = {"5", t->conninfo, app, "UTF8", "-c TimeZone=UTC", pwz, NULL};
    c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL) {
        err = kms_err_set(KMS_ERR_NOMEM, "postgresql: out of memory");
        goto out;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char line[200];
        first_line(PQerrorMessage(c), line, sizeof line);
        err = kms_err_set(KMS_ERR_IO, "postgresql: connect to database %s: %s",
                          PQdb(c) != NULL ? PQdb(c) : "?", line);
        PQfinish(c);
        c = NULL;
        goto out;
    }
    *out = c;
out:
    kms_secret_free(pwz);
    kms_secret_wipe(&pw);
    return err;
}

bool kms_pg_retryable(const PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state != NULL && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0);
}

bool kms_pg_broken(PGconn *c)
{
    return c == NULL || PQstatus(c) != CONNECTION_OK;
}

kms_err kms_pg_result_err(PGconn *c, const PGresult *res, const char *op)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res != NULL ? PQresultErrorMessage(res) : NULL;
    if (msg == NULL || msg[0] == '\0')
        msg = c != NULL ? PQerrorMessage(c) : "no connection";
    char line[200];
    first_line(msg, line, sizeof line);

    kms_err err = KMS_ERR_INTERNAL;
    if (state == NULL || strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
        kms_pg_retryable(res))
        err = KMS_ERR_IO;
    else if (strcmp(state, "23505") == 0)
        err = KMS_ERR_ALREADY_EXISTS;
    else if (strcmp(state, "53100") == 0)
        err = KMS_ERR_NOSPC;
    if (err == KMS_ERR_INTERNAL)
        kms_log(KMS_LOG_ERROR, "postgresql", "%s: %s %s", op, state, line);
    return kms_err_set(err, "%s: %s %s", op, state != NULL ? state : "-", line);
}
