/*
 * testpg.c - per-test databases on the scratch cluster (testpg.h).
 */
#include "testpg.h"

#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[1024];
static char port[16];
static char pwsrc[1100];

/* Read PGPORT from <dir>/env (written by pg-scratch.sh start). */
static bool load(void)
{
    if (dir[0] != '\0')
        return true;
    const char *d = getenv("CUSTOS_TEST_PG_DIR");
    if (d == NULL || d[0] == '\0' || strlen(d) >= sizeof(dir))
        return false;
    char path[1100];
    snprintf(path, sizeof(path), "%s/env", d);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char line[256];
    snprintf(port, sizeof(port), "5432");
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "PGPORT=", 7) == 0)
            snprintf(port, sizeof(port), "%.*s", (int)strcspn(line + 7, "\n"), line + 7);
    fclose(f);
    snprintf(dir, sizeof(dir), "%s", d);
    snprintf(pwsrc, sizeof(pwsrc), "file:%s/password", dir);
    return true;
}

bool testpg_available(void)
{
    return load();
}

const char *testpg_password_source(void)
{
    ck_assert_msg(load(), "CUSTOS_TEST_PG_DIR is not set");
    return pwsrc;
}

static void read_password(char *out, size_t size)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/password", dir);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    ck_assert_ptr_nonnull(fgets(out, (int)size, f));
    out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

PGconn *testpg_connect(const char *dbname)
{
    char pw[128];
    char host[1100];
    ck_assert_msg(load(), "CUSTOS_TEST_PG_DIR is not set");
    read_password(pw, sizeof(pw));
    snprintf(host, sizeof(host), "%s/socket", dir);
    const char *keys[] = {"host", "port", "user", "dbname", "password", NULL};
    const char *vals[] = {host, port, "custos", dbname, pw, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 0);
    ck_assert_msg(c != NULL && PQstatus(c) == CONNECTION_OK, "connect to %s: %s", dbname,
                  c != NULL ? PQerrorMessage(c) : "out of memory");
    return c;
}

void testpg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
                  PQresultErrorMessage(r));
    PQclear(r);
}

void testpg_create(char *conninfo, size_t size, char *dbname, size_t dbsize)
{
    static atomic_uint seq;
    snprintf(dbname, dbsize, "t_%ld_%u", (long)getpid(), atomic_fetch_add(&seq, 1));
    PGconn *c = testpg_connect("postgres");
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
    testpg_exec(c, sql);
    PQfinish(c);
    snprintf(conninfo, size, "host=%s/socket port=%s user=custos dbname=%s", dir, port, dbname);
}

void testpg_drop(const char *dbname)
{
    if (dbname == NULL || dbname[0] == '\0' || !load())
        return;
    PGconn *c = testpg_connect("postgres");
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}
