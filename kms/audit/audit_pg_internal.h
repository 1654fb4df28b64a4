/*
 * audit_pg_internal.h - what the PostgreSQL files of the audit log share
 * (defined in audit_pg_db.c; used by audit_pg_read.c, which kmsctl links
 * without a log, and by the backend's files, audit_log_pg_internal.h):
 * running a statement, reading binary columns. Not for use outside
 * kms/audit (the contract is audit_log_pg.h).
 */
#ifndef AUDIT_PG_INTERNAL_H
#define AUDIT_PG_INTERNAL_H

#include <stdint.h>

#include <libpq-fe.h>

#include "kms_error.h"

/* Run sql with n parameters (vals/lens/fmts as PQexecParams; NULL fmts:
 * all text) and results in binary (bin) or text. A result other than
 * PGRES_COMMAND_OK / PGRES_TUPLES_OK is an error named after op
 * (kms_pg_result_err); *out (NULL on error) is the caller's to PQclear. */
kms_err audit_pg_exec(PGconn *c, const char *op, const char *sql, int n, const char *const *vals,
                      const int *lens, const int *fmts, int bin, PGresult **out);

/* Run statements without parameters (several allowed) and drop the result. */
kms_err audit_pg_cmd(PGconn *c, const char *op, const char *sql);

/* A binary int8 column (0 if NULL or not 8 bytes). */
int64_t audit_pg_i64(const PGresult *r, int row, int col);

#endif
