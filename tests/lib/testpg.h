/*
 * testpg.h - the throw-away PostgreSQL cluster tests/run-tests.sh starts
 * with deploy/pg-scratch.sh ($CUSTOS_TEST_PG_DIR): one fresh database per
 * test case, dropped after it.
 */
#ifndef TESTPG_H
#define TESTPG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

/* True when $CUSTOS_TEST_PG_DIR names a started scratch cluster. */
bool testpg_available(void);

/* "file:<dir>/password": the role custos's password source. */
const char *testpg_password_source(void);

/* Create a new, empty database (a unique name into dbname) and write a
 * connection string for it (no password) into conninfo; ck_assert on
 * failure. */
void testpg_create(char *conninfo, size_t size, char *dbname, size_t dbsize);

/* Drop a database made by testpg_create (connections to it are ended). */
void testpg_drop(const char *dbname);

/* A libpq connection to dbname as custos, for a test that looks inside;
 * ck_assert on failure. */
PGconn *testpg_connect(const char *dbname);

/* Run sql (no result wanted) on c; ck_assert that it succeeds. */
void testpg_exec(PGconn *c, const char *sql);

#endif
