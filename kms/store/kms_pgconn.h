/*
 * kms_pgconn.h - connecting to PostgreSQL the one Custos way, for every
 * part that keeps state there (the store, the audit log, kmsctl).
 *
 * A target is a libpq connection string (keywords "host=... dbname=..." or
 * a "postgresql://" URL) plus a password source (kms_secret.h: "file:..."
 * or "env:..."). The password is never part of the connection string: one
 * written there is refused, so that it cannot reach argv, a config listing
 * or an error message. The password is passed to libpq as its own keyword
 * and wiped after connecting.
 *
 * Errors: KMS_ERR_CONFIG for a target that is not valid (an unparseable
 * string, a password inside it, an unreadable password source); KMS_ERR_IO
 * when the server cannot be reached or refuses the login (the caller
 * answers "unavailable" and tries again later). Details name the target's
 * host and database, never the password, and carry libpq's first line.
 */
#ifndef KMS_PGCONN_H
#define KMS_PGCONN_H

#include <stdbool.h>

#include <libpq-fe.h>

#include "kms_error.h"

/* Longest connection string accepted (it is configuration, not data). */
#define KMS_PG_CONNINFO_MAX 1024

struct kms_pg_target {
    const char *conninfo;        /* keywords or URL, no password */
    const char *password_source; /* "file:/path" or "env:NAME"; NULL: none */
};

/* Check a target without connecting (kmsd's config load, kmsctl). */
kms_err kms_pg_target_check(const struct kms_pg_target *t);

/*
 * Open a blocking connection to t. application_name is set to app (shown
 * in pg_stat_activity: "kmsd", "kmsctl"). The session runs in UTC with
 * client_encoding UTF8. On error *out is NULL.
 */
kms_err kms_pg_connect(const struct kms_pg_target *t, const char *app, PGconn **out);

/*
 * Turn a failed result (res may be NULL: then the connection's error) into
 * a kms_err with the detail "<op>: <SQLSTATE> <first line>":
 *   23505 unique violation                       KMS_ERR_ALREADY_EXISTS
 *   40001 serialization, 40P01 deadlock          KMS_ERR_IO, retryable
 *   53100 disk full                              KMS_ERR_NOSPC
 *   08xxx connection, 57Pxx shutdown, no result  KMS_ERR_IO
 *   anything else                                KMS_ERR_INTERNAL
 */
kms_err kms_pg_result_err(PGconn *c, const PGresult *res, const char *op);

/* Whether two connection strings name the same database: host (and
 * hostaddr), port and dbname as PQconninfoParse reads them. KMS_ERR_CONFIG
 * when either does not parse. */
kms_err kms_pg_same_database(const char *a, const char *b, bool *out_same);

/* True when res failed in a way a repeated transaction may cure
 * (serialization failure or deadlock). */
bool kms_pg_retryable(const PGresult *res);

/* True when c is no longer usable (the server went away): the owner
 * closes it and reconnects before its next use. */
bool kms_pg_broken(PGconn *c);

#endif
