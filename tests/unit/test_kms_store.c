/*
 * test_kms_store.c - the metadata store against real SQLite files in a
 * temporary directory (under $CUSTOS_TEST_WORK when set), one per test;
 * and, when tests/run-tests.sh started a scratch PostgreSQL cluster
 * ($CUSTOS_TEST_PG_DIR), every backend-neutral case again on PostgreSQL
 * (TCases "pg/..."), one fresh database per test.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_store.h"
#include "testpg.h"

/* main() makes workroot and removes it after the run, so a failing test
 * (whose teardown check skips) leaves nothing behind either. */
static char workroot[4096];
static char tmpdir[4200];
static char dbpath[4300];
static struct kms_store *store;
/* PostgreSQL cases: the database of this test. */
static bool pg_mode;
static char pg_conninfo[1400];
static char pg_db[64];
/* One database per region (kms_store_open_pg_regions): the test's keys are
 * in eu-west (pg_db); us-east has a database of its own (pg_db2), listed
 * first, so that every lookup by id first misses there. */
static bool regions_mode;
static char pg_conninfo2[1400];
static char pg_db2[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/t.XXXXXX", workroot);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dbpath, sizeof(dbpath), "%s/custos.db", tmpdir);
    kms_log_set_level(KMS_LOG_ERROR);
    store = NULL;
}

static void teardown(void)
{
    kms_store_free(store);
    store = NULL;
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup_pg(void)
{
    setup();
    pg_mode = true;
    testpg_create(pg_conninfo, sizeof(pg_conninfo), pg_db, sizeof(pg_db));
}

static void teardown_pg(void)
{
    teardown();
    testpg_drop(pg_db);
}

static void setup_regions(void)
{
    setup_pg();
    regions_mode = true;
    testpg_create(pg_conninfo2, sizeof(pg_conninfo2), pg_db2, sizeof(pg_db2));
}

static void teardown_regions(void)
{
    teardown_pg();
    testpg_drop(pg_db2);
}

static kms_err open_pg_store(struct kms_store **out)
{
    if (!regions_mode)
        return kms_store_open_pg(pg_conninfo, testpg_password_source(), out);
    struct kms_store_pg_region r[2] = {
        {"us-east", pg_conninfo2, testpg_password_source()},
        {"eu-west", pg_conninfo, testpg_password_source()},
    };
    return kms_store_open_pg_regions(r, 2, out);
}

static void open_store(void)
{
    kms_err rc = pg_mode ? open_pg_store(&store) : kms_store_open(dbpath, &store);
    ck_assert_msg(rc == KMS_OK, "open: %s: %s", kms_strerror(rc), kms_err_detail());
}

#define ck_ok(expr)                                                                            \
    do {                                                                                       \
        kms_err ck_rc_ = (expr);                                                               \
        ck_assert_msg(ck_rc_ == KMS_OK, "%s: %s: %s", #expr, kms_strerror(ck_rc_),              \
                      kms_err_detail());                                                       \
    } while (0)

#define ck_err(expr, want)                                                                     \
    do {                                                                                       \
        kms_err ck_rc_ = (expr);                                                               \
        ck_assert_msg(ck_rc_ == (want), "%s: got %s, want %s (%s)", #expr,                     \
                      kms_strerror(ck_rc_), kms_strerror(want), kms_err_detail());             \
    } while (0)

/* Deterministic ids: key n of "family" f, and an hsm_id unique per (n, v). */
static void key_id_of(char out[KMS_KEY_ID_SIZE], unsigned f, unsigned n)
{
    snprintf(out, KMS_KEY_ID_SIZE, "%08x%08x%016x", f, 0xc0ffeeu, n);
}

static void hsm_id_of(uint8_t out[KMS_HSM_ID_LEN], unsigned f, unsigned n, unsigned v)
{
    memset(out, 0xa5, KMS_HSM_ID_LEN);
    memcpy(out, &f, sizeof(f));
    memcpy(out + 4, &n, sizeof(n));
    memcpy(out + 8, &v, sizeof(v));
}

static void make_key(struct kms_key_record *k, struct kms_version_record *v, const char *tenant,
                     unsigned f, unsigned n, int64_t created_at)
{
    memset(k, 0, sizeof(*k));
    key_id_of(k->key_id, f, n);
    snprintf(k->tenant, sizeof(k->tenant), "%s", tenant);
    snprintf(k->region, sizeof(k->region), "eu-west");
    snprintf(k->token, sizeof(k->token), "custos eu-west");
    k->spec = KMS_KEY_SPEC_AES_256;
    k->usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k->origin = KMS_KEY_ORIGIN_HSM;
    k->state = KMS_KEY_CREATING;
    snprintf(k->description, sizeof(k->description), "key %u", n);
    k->created_at = created_at;
    k->escrow_required = (n % 2) == 1;
    if (v != NULL) {
        memset(v, 0, sizeof(*v));
        v->version = 1;
        v->state = KMS_VERSION_CREATING;
        v->created_at = created_at;
        hsm_id_of(v->hsm_id, f, n, 1);
    }
}

/* A key through the whole create protocol: CREATING row, then activated. */
static void create_enabled(const char *tenant, unsigned f, unsigned n, int64_t created_at)
{
    struct kms_key_record k;
    struct kms_version_record v;
    make_key(&k, &v, tenant, f, n, created_at);
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));
}

static void create_pending_import(const char *tenant, unsigned f, unsigned n, int64_t created_at)
{
    struct kms_key_record k;
    make_key(&k, NULL, tenant, f, n, created_at);
    k.origin = KMS_KEY_ORIGIN_EXTERNAL;
    k.state = KMS_KEY_PENDING_IMPORT;
    ck_ok(kms_store_key_insert(store, &k, NULL));
}

static enum kms_key_state state_of(const char *key_id)
{
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, key_id, &k));
    return k.state;
}

static size_t count_tenant(const char *tenant)
{
    char tok[KMS_PAGE_TOKEN_SIZE] = "";
    size_t total = 0;
    do {
        struct kms_key_record *page = NULL;
        size_t n = 0;
        char next[KMS_PAGE_TOKEN_SIZE];
        ck_ok(kms_store_keys_list(store, tenant, tok, KMS_PAGE_SIZE_MAX, &page, &n, next));
        total += n;
        free(page);
        memcpy(tok, next, sizeof(tok));
    } while (tok[0] != '\0');
    return total;
}

static sqlite3 *raw_open(void)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
    return db;
}

static int raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* ---- open, schema, settings --------------------------------------------- */

START_TEST(test_open_creates_and_reopen_keeps)
{
    struct kms_store_info info;
    char first_id[sizeof(info.store_id)];
    struct kms_key_record k;

    open_store();
    ck_ok(kms_store_info(store, &info));
    ck_assert_int_eq(info.schema_version, KMS_STORE_SCHEMA_VERSION);
    ck_assert_uint_eq(strlen(info.store_id), 32);
    memcpy(first_id, info.store_id, sizeof(first_id));
    create_enabled("acme", 1, 1, 1000);

    kms_store_free(store);
    store = NULL;
    open_store();
    ck_ok(kms_store_info(store, &info));
    ck_assert_str_eq(info.store_id, first_id);
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, 1, 1);
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_int_eq(k.state, KMS_KEY_ENABLED);
    ck_assert_uint_eq(k.current_version, 1);

    if (pg_mode)
        return;
    struct stat sb;
    ck_assert_int_eq(stat(dbpath, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
}
END_TEST

START_TEST(test_pragmas)
{
    struct kms_store_info info;
    open_store();
    ck_ok(kms_store_info(store, &info));
    ck_assert_str_eq(info.journal_mode, "wal");
    ck_assert_int_eq(info.synchronous, 2);
    ck_assert_int_eq(info.foreign_keys, 1);
    ck_assert_int_gt(info.busy_timeout_ms, 0);
    kms_store_free(store);
    store = NULL;

    /* WAL mode and the identity are in the file, not just the connection. */
    sqlite3 *db = raw_open();
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), KMS_STORE_SCHEMA_VERSION);
    ck_assert_int_ne(raw_int(db, "PRAGMA application_id"), 0);
    sqlite3_close(db);
}
END_TEST

START_TEST(test_open_refusals)
{
    struct kms_store *other = (struct kms_store *)&other;

    /* Newer schema than this build knows. */
    open_store();
    kms_store_free(store);
    store = NULL;
    sqlite3 *db = raw_open();
    ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    ck_err(kms_store_open(dbpath, &other), KMS_ERR_CONFIG);
    ck_assert_ptr_null(other);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "newer"));
    db = raw_open();
    ck_assert_int_eq(raw_int(db, "PRAGMA user_version"), 99); /* left untouched */
    sqlite3_close(db);

    /* Another application's database. */
    char path[4400];
    snprintf(path, sizeof(path), "%s/foreign.db", tmpdir);
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "CREATE TABLE t (x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    ck_err(kms_store_open(path, &other), KMS_ERR_CONFIG);

    /* Not a database at all. */
    snprintf(path, sizeof(path), "%s/garbage.db", tmpdir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not an sqlite database ", f);
    fclose(f);
    ck_err(kms_store_open(path, &other), KMS_ERR_CONFIG);

    /* No such directory; no file name. */
    snprintf(path, sizeof(path), "%s/missing/custos.db", tmpdir);
    ck_err(kms_store_open(path, &other), KMS_ERR_IO);
    ck_err(kms_store_open(":memory:", &other), KMS_ERR_CONFIG);
    ck_err(kms_store_open("", &other), KMS_ERR_CONFIG);
    ck_assert_ptr_null(other);
}
END_TEST

START_TEST(test_one_process_per_database)
{
    struct kms_store *second = NULL;
    open_store();
    ck_err(kms_store_open(dbpath, &second), KMS_ERR_CONFIG);
    ck_assert_ptr_null(second);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "in use"));
    kms_store_free(store);
    store = NULL;
    ck_ok(kms_store_open(dbpath, &second));
    kms_store_free(second);
}
END_TEST

/* ---- insert and get ----------------------------------------------------- */

START_TEST(test_insert_get)
{
    struct kms_key_record k, got;
    struct kms_version_record v, gv;

    open_store();
    make_key(&k, &v, "acme", 2, 7, 1234);
    k.spec = KMS_KEY_SPEC_EC_P256;
    k.usage = KMS_KEY_USAGE_SIGN_VERIFY;
    snprintf(k.description, sizeof(k.description), "signing key \xc3\xa9t\xc3\xa9");
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));

    ck_ok(kms_store_key_get(store, k.key_id, &got));
    ck_assert_str_eq(got.key_id, k.key_id);
    ck_assert_str_eq(got.tenant, "acme");
    ck_assert_str_eq(got.region, "eu-west");
    ck_assert_str_eq(got.token, "custos eu-west");
    ck_assert_int_eq(got.spec, KMS_KEY_SPEC_EC_P256);
    ck_assert_int_eq(got.usage, KMS_KEY_USAGE_SIGN_VERIFY);
    ck_assert_int_eq(got.origin, KMS_KEY_ORIGIN_HSM);
    ck_assert_int_eq(got.state, KMS_KEY_ENABLED);
    ck_assert_str_eq(got.description, k.description);
    ck_assert_int_eq(got.created_at, 1234);
    ck_assert_int_eq(got.deletion_at, 0);
    ck_assert_uint_eq(got.current_version, 1);
    ck_assert(got.escrow_required);

    ck_ok(kms_store_version_get(store, k.key_id, 1, &gv));
    ck_assert_str_eq(gv.key_id, k.key_id);
    ck_assert_uint_eq(gv.version, 1);
    ck_assert_int_eq(gv.state, KMS_VERSION_ACTIVE);
    ck_assert_int_eq(gv.created_at, 1234);
    ck_assert_mem_eq(gv.hsm_id, v.hsm_id, KMS_HSM_ID_LEN);

    /* Missing key, missing version, malformed id. */
    char missing[KMS_KEY_ID_SIZE];
    key_id_of(missing, 2, 8);
    ck_err(kms_store_key_get(store, missing, &got), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_version_get(store, k.key_id, 2, &gv), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_version_get(store, k.key_id, 0, &gv), KMS_ERR_INVALID_ARGUMENT);
    ck_err(kms_store_key_get(store, "not-a-key-id", &got), KMS_ERR_INVALID_ARGUMENT);

    /* PENDING_IMPORT: no version, visible, nothing to list yet. */
    create_pending_import("acme", 2, 9, 1300);
    char imp[KMS_KEY_ID_SIZE];
    key_id_of(imp, 2, 9);
    ck_ok(kms_store_key_get(store, imp, &got));
    ck_assert_int_eq(got.state, KMS_KEY_PENDING_IMPORT);
    ck_assert_int_eq(got.origin, KMS_KEY_ORIGIN_EXTERNAL);
    ck_assert_uint_eq(got.current_version, 0);
    struct kms_version_record *vs = (struct kms_version_record *)&vs;
    size_t n = 99;
    ck_ok(kms_store_versions_list(store, imp, &vs, &n));
    ck_assert_ptr_null(vs);
    ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(test_duplicates_change_nothing)
{
    struct kms_key_record k;
    struct kms_version_record v;

    open_store();
    make_key(&k, &v, "acme", 3, 1, 1000);
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_err(kms_store_key_insert(store, &k, &v), KMS_ERR_ALREADY_EXISTS);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "key id"));

    /* A new key reusing an hsm_id: refused, and the key row is rolled back
     * with the version row (one transaction). */
    struct kms_key_record k2;
    struct kms_version_record v2;
    make_key(&k2, &v2, "acme", 3, 2, 1000);
    memcpy(v2.hsm_id, v.hsm_id, KMS_HSM_ID_LEN);
    ck_err(kms_store_key_insert(store, &k2, &v2), KMS_ERR_ALREADY_EXISTS);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "hsm id already in use"));
    struct kms_store_creating *cr = NULL;
    size_t n = 0;
    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(cr[0].key_id, k.key_id);
    free(cr);
    hsm_id_of(v2.hsm_id, 3, 2, 1);
    ck_ok(kms_store_key_insert(store, &k2, &v2)); /* the id was not taken */

    /* An hsm_id already used by another key's version, via version_add. */
    ck_ok(kms_store_version_activate(store, k2.key_id, 1));
    uint32_t ver = 77;
    ck_err(kms_store_version_add(store, k2.key_id, v.hsm_id, 1001, &ver), KMS_ERR_ALREADY_EXISTS);
    ck_assert_uint_eq(ver, 0);
    uint8_t fresh[KMS_HSM_ID_LEN];
    hsm_id_of(fresh, 3, 2, 2);
    ck_ok(kms_store_version_add(store, k2.key_id, fresh, 1001, &ver));
    ck_assert_uint_eq(ver, 2); /* the refused attempt consumed no number */
}
END_TEST

START_TEST(test_creating_invisible)
{
    struct kms_key_record k, got;
    struct kms_version_record v, gv;
    struct kms_version_record *vs = NULL;
    struct kms_key_record *page = NULL;
    size_t n = 0;
    char next[KMS_PAGE_TOKEN_SIZE];

    open_store();
    make_key(&k, &v, "acme", 4, 1, 1000);
    ck_ok(kms_store_key_insert(store, &k, &v));

    ck_err(kms_store_key_get(store, k.key_id, &got), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_version_get(store, k.key_id, 1, &gv), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_versions_list(store, k.key_id, &vs, &n), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_key_set_state(store, k.key_id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0),
           KMS_ERR_NOT_FOUND);
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver;
    hsm_id_of(h, 4, 1, 2);
    ck_err(kms_store_version_add(store, k.key_id, h, 1000, &ver), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_keys_list(store, "acme", NULL, 10, &page, &n, next));
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(next, "");
    free(page);

    ck_ok(kms_store_version_activate(store, k.key_id, 1));
    ck_ok(kms_store_key_get(store, k.key_id, &got));
    ck_assert_int_eq(got.state, KMS_KEY_ENABLED);
    ck_assert_uint_eq(got.current_version, 1);
    ck_ok(kms_store_keys_list(store, "acme", NULL, 10, &page, &n, next));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(page[0].key_id, k.key_id);
    free(page);
}
END_TEST

/* ---- versions ----------------------------------------------------------- */

START_TEST(test_versions)
{
    struct kms_key_record got;
    struct kms_version_record gv;
    char id[KMS_KEY_ID_SIZE];
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver = 0;

    open_store();
    create_enabled("acme", 5, 1, 1000);
    key_id_of(id, 5, 1);

    hsm_id_of(h, 5, 1, 2);
    ck_ok(kms_store_version_add(store, id, h, 1100, &ver));
    ck_assert_uint_eq(ver, 2);
    hsm_id_of(h, 5, 1, 3);
    ck_ok(kms_store_version_add(store, id, h, 1200, &ver));
    ck_assert_uint_eq(ver, 3);
    /* Not yet usable, and the key still encrypts with version 1. */
    ck_err(kms_store_version_get(store, id, 2, &gv), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_key_get(store, id, &got));
    ck_assert_uint_eq(got.current_version, 1);

    /* Two rotations racing: the newer version wins whatever the order. */
    ck_ok(kms_store_version_activate(store, id, 3));
    ck_ok(kms_store_version_activate(store, id, 2));
    ck_ok(kms_store_key_get(store, id, &got));
    ck_assert_uint_eq(got.current_version, 3);
    ck_assert_int_eq(got.state, KMS_KEY_ENABLED);
    ck_ok(kms_store_version_activate(store, id, 3)); /* idempotent */

    struct kms_version_record *vs = NULL;
    size_t n = 0;
    ck_ok(kms_store_versions_list(store, id, &vs, &n));
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(vs[i].version, i + 1);
        ck_assert_int_eq(vs[i].state, KMS_VERSION_ACTIVE);
        hsm_id_of(h, 5, 1, (unsigned)i + 1);
        ck_assert_mem_eq(vs[i].hsm_id, h, KMS_HSM_ID_LEN);
    }
    free(vs);

    /* A discarded number is never handed out again. */
    hsm_id_of(h, 5, 1, 4);
    ck_ok(kms_store_version_add(store, id, h, 1300, &ver));
    ck_assert_uint_eq(ver, 4);
    ck_ok(kms_store_creating_discard(store, id, 4));
    hsm_id_of(h, 5, 1, 5);
    ck_ok(kms_store_version_add(store, id, h, 1400, &ver));
    ck_assert_uint_eq(ver, 5);
    ck_err(kms_store_version_activate(store, id, 4), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_version_activate(store, id, 0), KMS_ERR_INVALID_ARGUMENT);

    /* A disabled key may rotate and stays disabled. */
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_version_activate(store, id, 5));
    ck_assert_int_eq(state_of(id), KMS_KEY_DISABLED);

    /* Pending deletion: no new HSM objects. */
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_PENDING_DELETION, 9000));
    hsm_id_of(h, 5, 1, 6);
    ck_err(kms_store_version_add(store, id, h, 1500, &ver), KMS_ERR_FAILED_PRECONDITION);

    /* Import: the first version of a PENDING_IMPORT key enables it. */
    char imp[KMS_KEY_ID_SIZE];
    create_pending_import("acme", 5, 2, 1000);
    key_id_of(imp, 5, 2);
    hsm_id_of(h, 5, 2, 1);
    ck_ok(kms_store_version_add(store, imp, h, 1600, &ver));
    ck_assert_uint_eq(ver, 1);
    ck_assert_int_eq(state_of(imp), KMS_KEY_PENDING_IMPORT);
    ck_ok(kms_store_version_activate(store, imp, 1));
    ck_ok(kms_store_key_get(store, imp, &got));
    ck_assert_int_eq(got.state, KMS_KEY_ENABLED);
    ck_assert_uint_eq(got.current_version, 1);
}
END_TEST

/* ---- state changes ------------------------------------------------------ */

START_TEST(test_state_cas)
{
    struct kms_key_record got;
    char id[KMS_KEY_ID_SIZE];

    open_store();
    create_enabled("acme", 6, 1, 1000);
    key_id_of(id, 6, 1);

    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    /* A second Disable that read ENABLED earlier must not win. */
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 5000),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "DISABLED"));
    ck_ok(kms_store_key_get(store, id, &got));
    ck_assert_int_eq(got.state, KMS_KEY_DISABLED);
    ck_assert_int_eq(got.deletion_at, 0);

    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_PENDING_DELETION, 5000));
    ck_ok(kms_store_key_get(store, id, &got));
    ck_assert_int_eq(got.state, KMS_KEY_PENDING_DELETION);
    ck_assert_int_eq(got.deletion_at, 5000);
    /* Cancel clears the date. */
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_PENDING_DELETION, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_key_get(store, id, &got));
    ck_assert_int_eq(got.state, KMS_KEY_DISABLED);
    ck_assert_int_eq(got.deletion_at, 0);

    /* Arguments that break the state machine's contract. */
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_PENDING_DELETION, 0),
           KMS_ERR_INVALID_ARGUMENT);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_ENABLED, 5000),
           KMS_ERR_INVALID_ARGUMENT);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_DESTROYED, 0),
           KMS_ERR_USAGE);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_CREATING, KMS_KEY_ENABLED, 0),
           KMS_ERR_USAGE);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_DISABLED, KMS_KEY_PENDING_IMPORT, 0),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_int_eq(state_of(id), KMS_KEY_DISABLED);

    /* A key without material cannot be enabled. */
    char imp[KMS_KEY_ID_SIZE];
    create_pending_import("acme", 6, 2, 1000);
    key_id_of(imp, 6, 2);
    ck_err(kms_store_key_set_state(store, imp, KMS_KEY_PENDING_IMPORT, KMS_KEY_ENABLED, 0),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_key_set_state(store, imp, KMS_KEY_PENDING_IMPORT, KMS_KEY_PENDING_DELETION,
                                  7000));
    ck_ok(kms_store_key_set_state(store, imp, KMS_KEY_PENDING_DELETION, KMS_KEY_PENDING_IMPORT,
                                  0));

    char missing[KMS_KEY_ID_SIZE];
    key_id_of(missing, 6, 3);
    ck_err(kms_store_key_set_state(store, missing, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0),
           KMS_ERR_NOT_FOUND);
}
END_TEST

struct race {
    char key_id[KMS_KEY_ID_SIZE];
    enum kms_key_state to;
    kms_err rc;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    r->rc = kms_store_key_set_state(store, r->key_id, KMS_KEY_ENABLED, r->to,
                                    r->to == KMS_KEY_PENDING_DELETION ? 9000 : 0);
    return NULL;
}

START_TEST(test_state_cas_race)
{
    open_store();
    for (unsigned round = 0; round < 20; round++) {
        struct race r[4];
        pthread_t t[4];
        create_enabled("acme", 7, round, 1000);
        for (int i = 0; i < 4; i++) {
            key_id_of(r[i].key_id, 7, round);
            r[i].to = (i % 2) ? KMS_KEY_DISABLED : KMS_KEY_PENDING_DELETION;
            ck_assert_int_eq(pthread_create(&t[i], NULL, race_thread, &r[i]), 0);
        }
        int wins = 0;
        enum kms_key_state winner = KMS_KEY_ENABLED;
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
            if (r[i].rc == KMS_OK) {
                wins++;
                winner = r[i].to;
            } else {
                ck_assert_int_eq(r[i].rc, KMS_ERR_FAILED_PRECONDITION);
            }
        }
        ck_assert_int_eq(wins, 1);
        ck_assert_int_eq(state_of(r[0].key_id), winner);
    }
}
END_TEST

/* ---- listing ------------------------------------------------------------ */

#define PAGING_KEYS 2500

START_TEST(test_paging)
{
    static unsigned char seen[PAGING_KEYS];
    char tok[KMS_PAGE_TOKEN_SIZE] = "";
    int64_t last_created = 0;
    char last_id[KMS_KEY_ID_SIZE] = "";
    size_t total = 0, pages = 0;

    open_store();
    /* created_at is neither in key_id order nor in insertion order, and
     * about seven keys share each value, so both parts of the order count. */
    for (unsigned i = 0; i < PAGING_KEYS; i++) {
        unsigned n = (i * 7919u) % PAGING_KEYS;
        create_pending_import("big", 8, n, 1000 + (n * 31u) % 357u);
    }
    create_pending_import("other", 9, 1, 1000);
    struct kms_key_record hidden;
    struct kms_version_record hv;
    make_key(&hidden, &hv, "big", 9, 2, 1001);
    ck_ok(kms_store_key_insert(store, &hidden, &hv)); /* CREATING: not listed */

    do {
        struct kms_key_record *page = NULL;
        size_t n = 0;
        char next[KMS_PAGE_TOKEN_SIZE];
        ck_ok(kms_store_keys_list(store, "big", tok, 97, &page, &n, next));
        ck_assert_uint_le(n, 97);
        if (next[0] != '\0')
            ck_assert_uint_eq(n, 97);
        for (size_t i = 0; i < n; i++) {
            unsigned f, mid, idx;
            ck_assert_str_eq(page[i].tenant, "big");
            ck_assert_int_eq(sscanf(page[i].key_id, "%8x%8x%16x", &f, &mid, &idx), 3);
            ck_assert_uint_eq(f, 8);
            ck_assert_uint_lt(idx, PAGING_KEYS);
            ck_assert_uint_eq(seen[idx], 0);
            seen[idx] = 1;
            /* Strictly increasing (created_at, key_id). */
            ck_assert(page[i].created_at > last_created ||
                      (page[i].created_at == last_created &&
                       strcmp(page[i].key_id, last_id) > 0));
            last_created = page[i].created_at;
            memcpy(last_id, page[i].key_id, sizeof(last_id));
        }
        total += n;
        pages++;
        free(page);
        memcpy(tok, next, sizeof(tok));
    } while (tok[0] != '\0');
    ck_assert_uint_eq(total, PAGING_KEYS);
    ck_assert_uint_eq(pages, (PAGING_KEYS + 96) / 97);
    ck_assert_uint_eq(count_tenant("other"), 1);
    ck_assert_uint_eq(count_tenant("nobody"), 0);
}
END_TEST

START_TEST(test_paging_exact_and_bad_tokens)
{
    struct kms_key_record *page = (struct kms_key_record *)&page;
    size_t n = 99;
    char next[KMS_PAGE_TOKEN_SIZE];
    char good[KMS_PAGE_TOKEN_SIZE];

    open_store();
    for (unsigned i = 0; i < 10; i++)
        create_pending_import("t", 10, i, 1000 + i);
    /* Exactly two full pages: no empty third page is promised. */
    ck_ok(kms_store_keys_list(store, "t", NULL, 5, &page, &n, next));
    ck_assert_uint_eq(n, 5);
    ck_assert_str_ne(next, "");
    memcpy(good, next, sizeof(good));
    free(page);
    ck_ok(kms_store_keys_list(store, "t", good, 5, &page, &n, next));
    ck_assert_uint_eq(n, 5);
    ck_assert_str_eq(next, "");
    free(page);

    char bad[KMS_PAGE_TOKEN_SIZE];
    const char *bads[] = {
        "garbage",
        "k1",
        "k2" "00000000000003e8" "0000000a00c0ffee0000000000000004", /* unknown format */
        "k1" "00000000000003E8" "0000000a00c0ffee0000000000000004", /* uppercase */
        "k1" "0000000000000000" "0000000a00c0ffee0000000000000004", /* created_at 0 */
        "k1" "f000000000000000" "0000000a00c0ffee0000000000000004", /* > INT64_MAX */
        "k1" "00000000000003e8" "0000000a00c0ffee000000000000000Z", /* bad key id */
    };
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        page = (struct kms_key_record *)&page;
        ck_err(kms_store_keys_list(store, "t", bads[i], 5, &page, &n, next),
               KMS_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_null(page);
        ck_assert_uint_eq(n, 0);
    }
    size_t len = strlen(good);
    ck_assert_uint_lt(len + 1, sizeof(bad));
    memcpy(bad, good, len + 1);
    bad[len] = '0'; /* one byte too long, otherwise well-formed */
    bad[len + 1] = '\0';
    ck_err(kms_store_keys_list(store, "t", bad, 5, &page, &n, next), KMS_ERR_INVALID_ARGUMENT);

    ck_err(kms_store_keys_list(store, "t", NULL, 0, &page, &n, next), KMS_ERR_INVALID_ARGUMENT);
    ck_err(kms_store_keys_list(store, "t", NULL, KMS_PAGE_SIZE_MAX + 1, &page, &n, next),
           KMS_ERR_INVALID_ARGUMENT);
    ck_err(kms_store_keys_list(store, "", NULL, 5, &page, &n, next), KMS_ERR_INVALID_ARGUMENT);
    ck_ok(kms_store_keys_list(store, "t", NULL, KMS_PAGE_SIZE_MAX, &page, &n, next));
    ck_assert_uint_eq(n, 10);
    free(page);
}
END_TEST

/* ---- deletion ----------------------------------------------------------- */

START_TEST(test_due_for_deletion)
{
    char ids[4][KMS_KEY_ID_SIZE];
    struct kms_key_record *due = NULL;
    size_t n = 0;

    open_store();
    const int64_t when[4] = {300, 100, 200, 0};
    for (unsigned i = 0; i < 4; i++) {
        create_enabled("acme", 11, i, 1000);
        key_id_of(ids[i], 11, i);
        if (when[i] > 0)
            ck_ok(kms_store_key_set_state(store, ids[i], KMS_KEY_ENABLED,
                                          KMS_KEY_PENDING_DELETION, when[i]));
    }
    ck_ok(kms_store_keys_due_for_deletion(store, 99, 10, &due, &n));
    ck_assert_uint_eq(n, 0);
    free(due);
    ck_ok(kms_store_keys_due_for_deletion(store, 250, 10, &due, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(due[0].key_id, ids[1]); /* oldest due first */
    ck_assert_str_eq(due[1].key_id, ids[2]);
    ck_assert_int_eq(due[0].state, KMS_KEY_PENDING_DELETION);
    free(due);
    ck_ok(kms_store_keys_due_for_deletion(store, 1000, 1, &due, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(due[0].key_id, ids[1]);
    free(due);
    /* A cancelled deletion is no longer due. */
    ck_ok(kms_store_key_set_state(store, ids[1], KMS_KEY_PENDING_DELETION, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_keys_due_for_deletion(store, 1000, 10, &due, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(due[0].key_id, ids[2]);
    ck_assert_str_eq(due[1].key_id, ids[0]);
    free(due);
    ck_err(kms_store_keys_due_for_deletion(store, 1000, 0, &due, &n), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_mark_destroyed)
{
    char id[KMS_KEY_ID_SIZE], live[KMS_KEY_ID_SIZE];
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver;
    struct kms_hsm_id *ids = NULL;
    size_t n = 0;

    open_store();
    create_enabled("acme", 12, 1, 1000);
    create_enabled("acme", 12, 2, 1000);
    key_id_of(id, 12, 1);
    key_id_of(live, 12, 2);
    hsm_id_of(h, 12, 1, 2);
    ck_ok(kms_store_version_add(store, id, h, 1100, &ver));
    ck_ok(kms_store_version_activate(store, id, ver));
    hsm_id_of(h, 12, 1, 3);
    ck_ok(kms_store_version_add(store, id, h, 1200, &ver)); /* left CREATING */

    /* Not pending deletion, or not yet due: refused, nothing changes. */
    ck_err(kms_store_key_mark_destroyed(store, id, 10000, &ids, &n),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_null(ids);
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 5000));
    ck_err(kms_store_key_mark_destroyed(store, id, 4999, &ids, &n),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_int_eq(state_of(id), KMS_KEY_PENDING_DELETION);

    ck_ok(kms_store_key_mark_destroyed(store, id, 5000, &ids, &n));
    ck_assert_uint_eq(n, 3); /* every version, the CREATING one included */
    for (unsigned v = 0; v < 3; v++) {
        hsm_id_of(h, 12, 1, v + 1);
        ck_assert_mem_eq(ids[v].bytes, h, KMS_HSM_ID_LEN);
    }
    free(ids);

    struct kms_key_record got;
    ck_ok(kms_store_key_get(store, id, &got)); /* tombstone stays visible */
    ck_assert_int_eq(got.state, KMS_KEY_DESTROYED);
    ck_assert_int_eq(got.deletion_at, 5000);
    struct kms_version_record *vs = NULL;
    ck_ok(kms_store_versions_list(store, id, &vs, &n));
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(vs[i].state, KMS_VERSION_DESTROYED);
    free(vs);

    /* The CREATING row is no longer a reconcile item, and the destroyed
     * key's objects are no longer kept: only the live key's remain. */
    struct kms_store_creating *cr = NULL;
    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, 0);
    free(cr);
    ck_ok(kms_store_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, 1);
    hsm_id_of(h, 12, 2, 1);
    ck_assert_mem_eq(ids[0].bytes, h, KMS_HSM_ID_LEN);
    free(ids);

    /* Nothing brings it back. */
    ck_err(kms_store_key_mark_destroyed(store, id, 9000, NULL, NULL),
           KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_DESTROYED, KMS_KEY_DISABLED, 0),
           KMS_ERR_USAGE);
    ck_err(kms_store_key_set_state(store, id, KMS_KEY_PENDING_DELETION, KMS_KEY_DISABLED, 0),
           KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_version_activate(store, id, 3), KMS_ERR_FAILED_PRECONDITION);
    hsm_id_of(h, 12, 1, 4);
    ck_err(kms_store_version_add(store, id, h, 9000, &ver), KMS_ERR_FAILED_PRECONDITION);
    struct kms_key_record *due = NULL;
    ck_ok(kms_store_keys_due_for_deletion(store, 99999, 10, &due, &n));
    ck_assert_uint_eq(n, 0);
    free(due);
    ck_assert_int_eq(state_of(live), KMS_KEY_ENABLED);
}
END_TEST

/* ---- reconcile ---------------------------------------------------------- */

static int hsm_cmp(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

START_TEST(test_reconcile)
{
    struct kms_key_record k;
    struct kms_version_record v;
    char a[KMS_KEY_ID_SIZE], b[KMS_KEY_ID_SIZE];
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver;
    struct kms_store_creating *cr = NULL;
    struct kms_hsm_id *ids = NULL;
    size_t n = 0;

    open_store();
    make_key(&k, &v, "acme", 13, 1, 1000); /* A: crashed mid-CreateKey */
    ck_ok(kms_store_key_insert(store, &k, &v));
    memcpy(a, k.key_id, sizeof(a));
    create_enabled("acme", 13, 2, 1000); /* B: crashed mid-RotateKey */
    key_id_of(b, 13, 2);
    hsm_id_of(h, 13, 2, 2);
    ck_ok(kms_store_version_add(store, b, h, 1100, &ver));
    make_key(&k, &v, "acme", 13, 3, 1000); /* C: other token */
    snprintf(k.token, sizeof(k.token), "custos us-east");
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));

    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(cr[0].key_id, a);
    ck_assert_uint_eq(cr[0].version, 1);
    ck_assert(cr[0].key_creating);
    ck_assert_str_eq(cr[0].token, "custos eu-west");
    hsm_id_of(h, 13, 1, 1);
    ck_assert_mem_eq(cr[0].hsm_id, h, KMS_HSM_ID_LEN);
    ck_assert_str_eq(cr[1].key_id, b);
    ck_assert_uint_eq(cr[1].version, 2);
    ck_assert(!cr[1].key_creating);
    hsm_id_of(h, 13, 2, 2);
    ck_assert_mem_eq(cr[1].hsm_id, h, KMS_HSM_ID_LEN);
    free(cr);

    /* Keep-set of eu-west: A1, B1, B2 (CREATING ones too), sorted; not C. */
    ck_ok(kms_store_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, 3);
    uint8_t want[3][KMS_HSM_ID_LEN];
    hsm_id_of(want[0], 13, 1, 1);
    hsm_id_of(want[1], 13, 2, 1);
    hsm_id_of(want[2], 13, 2, 2);
    qsort(want, 3, KMS_HSM_ID_LEN, hsm_cmp);
    for (size_t i = 0; i < 3; i++)
        ck_assert_mem_eq(ids[i].bytes, want[i], KMS_HSM_ID_LEN);
    hsm_id_of(h, 13, 3, 1);
    ck_assert_ptr_null(bsearch(h, ids, n, sizeof(ids[0]), hsm_cmp));
    free(ids);
    ck_ok(kms_store_hsm_ids_for_token(store, "custos us-east", &ids, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_mem_eq(ids[0].bytes, h, KMS_HSM_ID_LEN);
    free(ids);
    ck_err(kms_store_hsm_ids_for_token(store, " padded", &ids, &n), KMS_ERR_INVALID_ARGUMENT);

    /* Discard A: the key goes with its only version, so its id is free. */
    ck_ok(kms_store_creating_discard(store, a, 1));
    make_key(&k, &v, "acme", 13, 1, 1000);
    hsm_id_of(v.hsm_id, 13, 1, 9);
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_creating_discard(store, a, 1));
    /* Discard B2: B stays, with version 1 only. */
    ck_ok(kms_store_creating_discard(store, b, 2));
    ck_assert_int_eq(state_of(b), KMS_KEY_ENABLED);
    struct kms_version_record *vs = NULL;
    ck_ok(kms_store_versions_list(store, b, &vs, &n));
    ck_assert_uint_eq(n, 1);
    free(vs);
    /* Only CREATING rows can be discarded. */
    ck_err(kms_store_creating_discard(store, b, 1), KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_creating_discard(store, b, 2), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, 0);
    free(cr);
}
END_TEST

/* Step 1 of the protocol is durable when the call returns: a process that
 * dies right after it (no close, no checkpoint) leaves the row behind. */
START_TEST(test_creating_survives_crash)
{
    struct kms_key_record k;
    struct kms_version_record v;
    make_key(&k, &v, "acme", 14, 1, 1000);

    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct kms_store *s = NULL;
        if (kms_store_open(dbpath, &s) != KMS_OK || kms_store_key_insert(s, &k, &v) != KMS_OK)
            _exit(1);
        _exit(0);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    open_store();
    struct kms_store_creating *cr = NULL;
    size_t n = 0;
    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(cr[0].key_id, k.key_id);
    ck_assert_mem_eq(cr[0].hsm_id, v.hsm_id, KMS_HSM_ID_LEN);
    free(cr);
    /* Reconcile may complete it instead of discarding it. */
    ck_ok(kms_store_version_activate(store, k.key_id, 1));
    ck_assert_int_eq(state_of(k.key_id), KMS_KEY_ENABLED);
}
END_TEST

/* A full disk fails the write whole: every key the store acknowledged is
 * there afterwards, complete, and nothing else is. RLIMIT_FSIZE stands in
 * for the full disk, in a child so the limit does not outlive the test. */
START_TEST(test_disk_full)
{
    int pipefd[2];
    ck_assert_int_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {(rlim_t)1 << 20, (rlim_t)1 << 20};
        unsigned acked = 0;
        kms_err rc = KMS_OK;
        signal(SIGXFSZ, SIG_IGN);
        close(pipefd[0]);
        if (kms_store_open(dbpath, &store) != KMS_OK || setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(2);
        for (unsigned i = 0; i < 100000 && rc == KMS_OK; i++) {
            struct kms_key_record k;
            struct kms_version_record v;
            make_key(&k, &v, "full", 17, i, 1000);
            memset(k.description, 'x', KMS_DESCRIPTION_MAX);
            k.description[KMS_DESCRIPTION_MAX] = '\0';
            rc = kms_store_key_insert(store, &k, &v);
            if (rc == KMS_OK)
                acked++;
        }
        if (write(pipefd[1], &acked, sizeof(acked)) != sizeof(acked) ||
            write(pipefd[1], &rc, sizeof(rc)) != sizeof(rc))
            _exit(3);
        _exit(0); /* like a crash: no close, no checkpoint */
    }
    close(pipefd[1]);
    unsigned acked = 0;
    kms_err rc = KMS_OK;
    ck_assert_int_eq(read(pipefd[0], &acked, sizeof(acked)), sizeof(acked));
    ck_assert_int_eq(read(pipefd[0], &rc, sizeof(rc)), sizeof(rc));
    close(pipefd[0]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_msg(rc == KMS_ERR_NOSPC || rc == KMS_ERR_IO, "got %s", kms_strerror(rc));
    ck_assert_uint_gt(acked, 10);

    open_store();
    struct kms_store_creating *cr = NULL;
    size_t n = 0;
    ck_ok(kms_store_creating_list(store, &cr, &n));
    ck_assert_uint_eq(n, acked);
    for (size_t i = 0; i < n; i++) {
        char id[KMS_KEY_ID_SIZE];
        key_id_of(id, 17, (unsigned)i);
        ck_assert_str_eq(cr[i].key_id, id);
    }
    free(cr);
}
END_TEST

/* ---- bounds ------------------------------------------------------------- */

START_TEST(test_bounds)
{
    struct kms_key_record k;
    struct kms_version_record v;

#define REFUSED(mutate)                                                                        \
    do {                                                                                       \
        make_key(&k, &v, "acme", 15, 1, 1000);                                                 \
        mutate;                                                                                \
        ck_err(kms_store_key_insert(store, &k, &v), KMS_ERR_INVALID_ARGUMENT);                 \
    } while (0)

    open_store();
    REFUSED(memset(k.tenant, 'a', sizeof(k.tenant))); /* no terminator */
    REFUSED(k.tenant[0] = '\0');
    REFUSED(snprintf(k.tenant, sizeof(k.tenant), "a tenant"));
    REFUSED(snprintf(k.region, sizeof(k.region), "eu-w\xc3\xa9st"));
    REFUSED(memset(k.region, 'r', sizeof(k.region)));
    REFUSED(snprintf(k.token, sizeof(k.token), "custos eu-west "));
    REFUSED(snprintf(k.token, sizeof(k.token), " custos"));
    REFUSED(memset(k.token, 't', sizeof(k.token)));
    REFUSED(memset(k.description, 'd', sizeof(k.description)));
    REFUSED(snprintf(k.description, sizeof(k.description), "two\nlines"));
    REFUSED(snprintf(k.description, sizeof(k.description), "bad \xc3"));
    REFUSED(snprintf(k.description, sizeof(k.description), "overlong \xc0\xaf"));
    REFUSED(snprintf(k.description, sizeof(k.description), "surrogate \xed\xa0\x80"));
    REFUSED(snprintf(k.description, sizeof(k.description), "c1 \xc2\x9b"));
    REFUSED(k.key_id[0] = 'A');
    REFUSED(k.key_id[31] = '\0');
    REFUSED(k.spec = 0);
    REFUSED(k.spec = KMS_KEY_SPEC_LAST + 1);
    REFUSED(k.usage = KMS_KEY_USAGE_LAST + 1);
    REFUSED(k.origin = 3);
    REFUSED(k.state = KMS_KEY_ENABLED);
    REFUSED(k.state = KMS_KEY_PENDING_IMPORT); /* HSM origin, and v1 given */
    REFUSED(k.created_at = 0);
    REFUSED(k.current_version = 1);
    REFUSED(k.deletion_at = 5);
    REFUSED(v.version = 2);
    REFUSED(v.state = KMS_VERSION_ACTIVE);
    REFUSED(v.created_at = -1);
    REFUSED(snprintf(v.key_id, sizeof(v.key_id), "%032x", 1u));
    make_key(&k, &v, "acme", 15, 1, 1000);
    ck_err(kms_store_key_insert(store, &k, NULL), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(count_tenant("acme"), 0);

    /* The limits themselves are accepted. */
    make_key(&k, &v, "acme", 15, 1, 1000);
    memset(k.tenant, 't', KMS_TENANT_MAX);
    k.tenant[KMS_TENANT_MAX] = '\0';
    memset(k.region, 'r', KMS_REGION_MAX);
    k.region[KMS_REGION_MAX] = '\0';
    memset(k.token, 'k', KMS_TOKEN_LABEL_MAX);
    k.token[KMS_TOKEN_LABEL_MAX] = '\0';
    for (int i = 0; i < KMS_DESCRIPTION_MAX; i += 2)
        memcpy(k.description + i, "\xc3\xa9", 2);
    k.description[KMS_DESCRIPTION_MAX] = '\0';
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));
    struct kms_key_record got;
    ck_ok(kms_store_key_get(store, k.key_id, &got));
    ck_assert_uint_eq(strlen(got.tenant), KMS_TENANT_MAX);
    ck_assert_uint_eq(strlen(got.token), KMS_TOKEN_LABEL_MAX);
    ck_assert_str_eq(got.description, k.description);
    ck_assert_uint_eq(count_tenant(k.tenant), 1);
    char long_tenant[KMS_TENANT_MAX + 2];
    memset(long_tenant, 't', KMS_TENANT_MAX + 1);
    long_tenant[KMS_TENANT_MAX + 1] = '\0';
    struct kms_key_record *page = NULL;
    size_t n = 0;
    char next[KMS_PAGE_TOKEN_SIZE];
    ck_err(kms_store_keys_list(store, long_tenant, NULL, 10, &page, &n, next),
           KMS_ERR_INVALID_ARGUMENT);
#undef REFUSED
}
END_TEST

/* ---- threads ------------------------------------------------------------ */

#define THREADS 4u
#define PER_THREAD 150u

struct worker {
    unsigned index;
    int failures;
};

static void *insert_worker(void *arg)
{
    struct worker *w = arg;
    for (unsigned i = 0; i < PER_THREAD; i++) {
        struct kms_key_record k, got;
        struct kms_version_record v;
        make_key(&k, &v, "busy", 16 + w->index, i, 1000 + i);
        if (kms_store_key_insert(store, &k, &v) != KMS_OK ||
            kms_store_version_activate(store, k.key_id, 1) != KMS_OK ||
            kms_store_key_get(store, k.key_id, &got) != KMS_OK || got.state != KMS_KEY_ENABLED)
            w->failures++;
    }
    return NULL;
}

START_TEST(test_concurrent_inserts)
{
    pthread_t t[THREADS];
    struct worker w[THREADS];

    open_store();
    for (unsigned i = 0; i < THREADS; i++) {
        w[i] = (struct worker){i, 0};
        ck_assert_int_eq(pthread_create(&t[i], NULL, insert_worker, &w[i]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(w[i].failures, 0);
    }
    ck_assert_uint_eq(count_tenant("busy"), (size_t)THREADS * PER_THREAD);
    struct kms_hsm_id *ids = NULL;
    size_t n = 0;
    ck_ok(kms_store_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, (size_t)THREADS * PER_THREAD);
    for (size_t i = 1; i < n; i++)
        ck_assert_int_lt(memcmp(ids[i - 1].bytes, ids[i].bytes, KMS_HSM_ID_LEN), 0);
    free(ids);
}
END_TEST

/* ---- BYOK: import tokens and key check values ----------------------------- */

static void import_token_of(struct kms_import_token_record *t, const char *key_id, unsigned n,
                            int64_t created_at, int64_t expires_at)
{
    memset(t, 0, sizeof(*t));
    memset(t->token_id, 0x3c, sizeof(t->token_id));
    memcpy(t->token_id, &n, sizeof(n));
    snprintf(t->key_id, sizeof(t->key_id), "%s", key_id);
    snprintf(t->token, sizeof(t->token), "custos eu-west");
    hsm_id_of(t->hsm_id, 0x1a, n, 0);
    t->state = KMS_IMPORT_CREATING;
    t->created_at = created_at;
    t->expires_at = expires_at;
}

static struct kms_import_token_record token_get(const uint8_t *token_id)
{
    struct kms_import_token_record t;
    ck_ok(kms_store_import_token_get(store, token_id, &t));
    return t;
}

static void kcv_of(uint8_t out[KMS_KCV_LEN], unsigned material)
{
    memset(out, 0x77, KMS_KCV_LEN);
    memcpy(out, &material, sizeof(material));
}

START_TEST(test_import_token_lifecycle)
{
    char id[KMS_KEY_ID_SIZE], other[KMS_KEY_ID_SIZE];
    struct kms_import_token_record t, got;
    uint8_t h[KMS_HSM_ID_LEN], kcv[KMS_KCV_LEN];
    uint32_t ver = 0;

    open_store();
    create_pending_import("acme", 20, 1, 1000);
    create_pending_import("acme", 20, 2, 1000);
    key_id_of(id, 20, 1);
    key_id_of(other, 20, 2);

    import_token_of(&t, id, 1, 2000, 2000 + 86400);
    ck_ok(kms_store_import_token_insert(store, &t, 3, 2000));
    got = token_get(t.token_id);
    ck_assert_int_eq(got.state, KMS_IMPORT_CREATING);
    ck_assert_str_eq(got.key_id, id);
    ck_assert_str_eq(got.token, "custos eu-west");
    ck_assert_mem_eq(got.hsm_id, t.hsm_id, KMS_HSM_ID_LEN);
    ck_assert_int_eq(got.expires_at, 2000 + 86400);
    /* Not usable before it is issued. */
    ck_err(kms_store_import_token_claim(store, t.token_id, id, 2001), KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_import_token_issue(store, t.token_id));
    ck_err(kms_store_import_token_issue(store, t.token_id), KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_import_token_discard(store, t.token_id), KMS_ERR_FAILED_PRECONDITION);

    /* Bound to its key and its expiry. */
    ck_err(kms_store_import_token_claim(store, t.token_id, other, 2001),
           KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_import_token_claim(store, t.token_id, id, 2000 + 86400),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_int_eq(token_get(t.token_id).state, KMS_IMPORT_ISSUED);
    uint8_t forged[KMS_IMPORT_TOKEN_ID_LEN];
    memset(forged, 0x3c, sizeof(forged));
    ck_err(kms_store_import_token_claim(store, forged, id, 2001), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_import_token_get(store, forged, &got), KMS_ERR_NOT_FOUND);

    /* One claim at a time; a refused attempt is counted and gives it back. */
    ck_ok(kms_store_import_token_claim(store, t.token_id, id, 2001));
    ck_err(kms_store_import_token_claim(store, t.token_id, id, 2001), KMS_ERR_FAILED_PRECONDITION);
    bool burnt = true;
    ck_ok(kms_store_import_token_release(store, t.token_id, true, 5, &burnt));
    ck_assert(!burnt);
    got = token_get(t.token_id);
    ck_assert_int_eq(got.state, KMS_IMPORT_ISSUED);
    ck_assert_uint_eq(got.failures, 1);
    ck_err(kms_store_import_token_release(store, t.token_id, false, 5, NULL),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_import_token_claim(store, t.token_id, id, 2002));
    ck_ok(kms_store_import_token_release(store, t.token_id, false, 5, &burnt));
    ck_assert_uint_eq(token_get(t.token_id).failures, 1);

    /* Import: version in CREATING, then one commit activates it, records
     * the KCV and spends the token. */
    ck_ok(kms_store_import_token_claim(store, t.token_id, id, 2003));
    hsm_id_of(h, 20, 1, 1);
    ck_ok(kms_store_version_add(store, id, h, 2003, &ver));
    ck_assert_uint_eq(ver, 1);
    kcv_of(kcv, 1);
    ck_ok(kms_store_import_commit(store, t.token_id, id, 1, kcv, true));
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_int_eq(k.state, KMS_KEY_ENABLED);
    ck_assert_uint_eq(k.current_version, 1);
    got = token_get(t.token_id);
    ck_assert_int_eq(got.state, KMS_IMPORT_SPENT);
    ck_assert_int_eq(got.end, KMS_IMPORT_END_USED);
    struct kms_kcv_record *kcvs = NULL;
    size_t n = 0;
    ck_ok(kms_store_key_check_values(store, id, &kcvs, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(kcvs[0].version, 1);
    ck_assert_mem_eq(kcvs[0].kcv, kcv, KMS_KCV_LEN);
    free(kcvs);

    /* Used once: never again. */
    ck_err(kms_store_import_token_claim(store, t.token_id, id, 2004), KMS_ERR_FAILED_PRECONDITION);
    ck_err(kms_store_import_commit(store, t.token_id, id, 1, kcv, false),
           KMS_ERR_FAILED_PRECONDITION);

    /* The sweeper sees the spent token, destroys its wrapping key, closes it. */
    struct kms_import_token_record *due = NULL;
    ck_ok(kms_store_import_tokens_due(store, 2004, 600, 100, &due, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_mem_eq(due[0].token_id, t.token_id, KMS_IMPORT_TOKEN_ID_LEN);
    free(due);
    struct kms_hsm_id *ids = NULL;
    ck_ok(kms_store_import_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_mem_eq(ids[0].bytes, t.hsm_id, KMS_HSM_ID_LEN);
    free(ids);
    ck_ok(kms_store_import_token_close(store, t.token_id));
    got = token_get(t.token_id);
    ck_assert_int_eq(got.state, KMS_IMPORT_CLOSED);
    ck_assert_int_eq(got.end, KMS_IMPORT_END_USED); /* the reason survives closing */
    ck_ok(kms_store_import_tokens_due(store, 2004, 600, 100, &due, &n));
    ck_assert_uint_eq(n, 0);
    ck_ok(kms_store_import_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, 0);

    /* Closed rows go once long expired. */
    size_t purged = 9;
    ck_ok(kms_store_import_tokens_purge(store, 2000 + 86400, &purged));
    ck_assert_uint_eq(purged, 0);
    ck_ok(kms_store_import_tokens_purge(store, 2000 + 86401, &purged));
    ck_assert_uint_eq(purged, 1);
    ck_err(kms_store_import_token_get(store, t.token_id, &got), KMS_ERR_NOT_FOUND);
}
END_TEST

START_TEST(test_import_token_refusals)
{
    char id[KMS_KEY_ID_SIZE], hsm[KMS_KEY_ID_SIZE], missing[KMS_KEY_ID_SIZE];
    struct kms_import_token_record t;

    open_store();
    create_pending_import("acme", 21, 1, 1000);
    create_enabled("acme", 21, 2, 1000);
    key_id_of(id, 21, 1);
    key_id_of(hsm, 21, 2);
    key_id_of(missing, 21, 3);

    import_token_of(&t, hsm, 1, 2000, 3000);
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_FAILED_PRECONDITION);
    import_token_of(&t, missing, 1, 2000, 3000);
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_NOT_FOUND);
    import_token_of(&t, id, 1, 2000, 2000);
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_INVALID_ARGUMENT);
    import_token_of(&t, id, 1, 2000, 3000);
    t.state = KMS_IMPORT_ISSUED;
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_INVALID_ARGUMENT);
    import_token_of(&t, id, 1, 2000, 3000);
    snprintf(t.key_id, sizeof(t.key_id), "NOT-HEX");
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_INVALID_ARGUMENT);

    /* At most max_live unexpired tokens per key; expired ones do not count. */
    for (unsigned i = 1; i <= 3; i++) {
        import_token_of(&t, id, i, 2000, 3000);
        ck_ok(kms_store_import_token_insert(store, &t, 3, 2000));
    }
    import_token_of(&t, id, 4, 2000, 3000);
    ck_err(kms_store_import_token_insert(store, &t, 3, 2000), KMS_ERR_RESOURCE_EXHAUSTED);
    ck_ok(kms_store_import_token_insert(store, &t, 3, 3000));
    /* Same secret or same wrapping key twice. */
    import_token_of(&t, id, 4, 2000, 9000);
    ck_err(kms_store_import_token_insert(store, &t, 100, 2000), KMS_ERR_ALREADY_EXISTS);
    import_token_of(&t, id, 5, 2000, 9000);
    hsm_id_of(t.hsm_id, 0x1a, 1, 0);
    ck_err(kms_store_import_token_insert(store, &t, 100, 2000), KMS_ERR_ALREADY_EXISTS);

    /* A CREATING row whose wrapping key could not be made is discarded. */
    import_token_of(&t, id, 1, 2000, 3000);
    ck_ok(kms_store_import_token_discard(store, t.token_id));
    ck_err(kms_store_import_token_discard(store, t.token_id), KMS_ERR_FAILED_PRECONDITION);

    /* Keys going away take no new tokens. */
    ck_ok(kms_store_key_set_state(store, hsm, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 5000));
    create_pending_import("acme", 21, 4, 1000);
    char gone[KMS_KEY_ID_SIZE];
    key_id_of(gone, 21, 4);
    import_token_of(&t, gone, 9, 2000, 3000);
    ck_ok(kms_store_import_token_insert(store, &t, 3, 2000));
    ck_ok(kms_store_import_token_discard(store, t.token_id));
}
END_TEST

START_TEST(test_import_material_checks)
{
    char id[KMS_KEY_ID_SIZE];
    struct kms_import_token_record t;
    uint8_t h[KMS_HSM_ID_LEN], kcv1[KMS_KCV_LEN], kcv2[KMS_KCV_LEN];
    uint32_t ver = 0;
    struct kms_key_record k;

    open_store();
    create_pending_import("acme", 22, 1, 1000);
    key_id_of(id, 22, 1);
    kcv_of(kcv1, 1);
    kcv_of(kcv2, 2);

    /* Two first imports race: the second commit is refused. */
    struct kms_import_token_record a, b;
    import_token_of(&a, id, 1, 2000, 9000);
    import_token_of(&b, id, 2, 2000, 9000);
    ck_ok(kms_store_import_token_insert(store, &a, 3, 2000));
    ck_ok(kms_store_import_token_insert(store, &b, 3, 2000));
    ck_ok(kms_store_import_token_issue(store, a.token_id));
    ck_ok(kms_store_import_token_issue(store, b.token_id));
    ck_ok(kms_store_import_token_claim(store, a.token_id, id, 2001));
    ck_ok(kms_store_import_token_claim(store, b.token_id, id, 2001));
    hsm_id_of(h, 22, 1, 1);
    ck_ok(kms_store_version_add(store, id, h, 2001, &ver));
    ck_assert_uint_eq(ver, 1);
    hsm_id_of(h, 22, 1, 2);
    ck_ok(kms_store_version_add(store, id, h, 2001, &ver));
    ck_assert_uint_eq(ver, 2);
    ck_ok(kms_store_import_commit(store, a.token_id, id, 1, kcv1, true));
    ck_err(kms_store_import_commit(store, b.token_id, id, 2, kcv2, true),
           KMS_ERR_FAILED_PRECONDITION);
    /* ...and changed nothing: v2 still CREATING, b still CLAIMED. */
    struct kms_version_record gv;
    ck_err(kms_store_version_get(store, id, 2, &gv), KMS_ERR_NOT_FOUND);
    ck_assert_int_eq(token_get(b.token_id).state, KMS_IMPORT_CLAIMED);
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_uint_eq(k.current_version, 1);

    /* New material as a new version: fine. The same material twice: no. */
    ck_err(kms_store_import_commit(store, b.token_id, id, 2, kcv1, false),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_import_commit(store, b.token_id, id, 2, kcv2, false));
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_uint_eq(k.current_version, 2);

    /* Re-import into an ACTIVE version: its KCV must match. */
    import_token_of(&t, id, 3, 2000, 9000);
    ck_ok(kms_store_import_token_insert(store, &t, 3, 2000));
    ck_ok(kms_store_import_token_issue(store, t.token_id));
    ck_ok(kms_store_import_token_claim(store, t.token_id, id, 2002));
    ck_err(kms_store_import_commit(store, t.token_id, id, 1, kcv2, false),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_int_eq(token_get(t.token_id).state, KMS_IMPORT_CLAIMED);
    ck_err(kms_store_import_commit(store, t.token_id, id, 7, kcv1, false), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_import_commit(store, t.token_id, id, 1, kcv1, false));
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_uint_eq(k.current_version, 2); /* a re-import does not rotate */
    struct kms_kcv_record *kcvs = NULL;
    size_t n = 0;
    ck_ok(kms_store_key_check_values(store, id, &kcvs, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_mem_eq(kcvs[1].kcv, kcv2, KMS_KCV_LEN);
    free(kcvs);

    /* A token is bound to its key in the commit too. */
    char other[KMS_KEY_ID_SIZE];
    create_pending_import("acme", 22, 2, 1000);
    key_id_of(other, 22, 2);
    import_token_of(&t, id, 4, 2000, 9000);
    ck_ok(kms_store_import_token_insert(store, &t, 3, 2000));
    ck_ok(kms_store_import_token_issue(store, t.token_id));
    ck_ok(kms_store_import_token_claim(store, t.token_id, id, 2002));
    hsm_id_of(h, 22, 2, 1);
    ck_ok(kms_store_version_add(store, other, h, 2002, &ver));
    ck_err(kms_store_import_commit(store, t.token_id, other, ver, kcv1, true),
           KMS_ERR_FAILED_PRECONDITION);
    ck_assert_int_eq(state_of(other), KMS_KEY_PENDING_IMPORT);

    /* Keys pending deletion take no material. */
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 5000));
    ck_err(kms_store_import_commit(store, t.token_id, id, 1, kcv1, false),
           KMS_ERR_FAILED_PRECONDITION);
}
END_TEST

START_TEST(test_import_token_sweeping)
{
    char id[KMS_KEY_ID_SIZE];
    struct kms_import_token_record t[5], *due = NULL;
    size_t n = 0;
    bool burnt = false;

    open_store();
    create_pending_import("acme", 23, 1, 1000);
    key_id_of(id, 23, 1);
    for (unsigned i = 0; i < 5; i++) {
        import_token_of(&t[i], id, i + 1, 2000, 3000);
        ck_ok(kms_store_import_token_insert(store, &t[i], 10, 2000));
    }
    /* t0 stays CREATING (a crash while issuing); t1 ISSUED; t2 CLAIMED (a
     * crash while importing); t3 burnt by refused attempts; t4 ISSUED. */
    for (unsigned i = 1; i < 5; i++)
        ck_ok(kms_store_import_token_issue(store, t[i].token_id));
    ck_ok(kms_store_import_token_claim(store, t[2].token_id, id, 2001));
    for (unsigned i = 0; i < 3; i++) {
        ck_ok(kms_store_import_token_claim(store, t[3].token_id, id, 2001));
        ck_ok(kms_store_import_token_release(store, t[3].token_id, true, 3, &burnt));
    }
    ck_assert(burnt);
    ck_assert_int_eq(token_get(t[3].token_id).state, KMS_IMPORT_SPENT);
    ck_assert_int_eq(token_get(t[3].token_id).end, KMS_IMPORT_END_FAILURES);

    /* Before expiry and within the grace period only the burnt one is due. */
    ck_ok(kms_store_import_tokens_due(store, 2500, 600, 100, &due, &n));
    ck_assert_uint_eq(n, 1);
    free(due);
    /* At expiry the issued ones; CREATING rows once older than the grace. */
    ck_ok(kms_store_import_tokens_due(store, 3000, 600, 100, &due, &n));
    ck_assert_uint_eq(n, 4);
    free(due);
    /* Past expiry + grace, the claimed one too. */
    ck_ok(kms_store_import_tokens_due(store, 3600, 600, 100, &due, &n));
    ck_assert_uint_eq(n, 5);
    free(due);
    ck_ok(kms_store_import_tokens_due(store, 3600, 600, 2, &due, &n));
    ck_assert_uint_eq(n, 2);
    free(due);
    ck_err(kms_store_import_tokens_due(store, 3600, 600, 0, &due, &n), KMS_ERR_INVALID_ARGUMENT);

    /* Retire is a compare-and-set: a token claimed meanwhile is left. */
    ck_err(kms_store_import_token_retire(store, t[4].token_id, KMS_IMPORT_CLAIMED,
                                         KMS_IMPORT_END_EXPIRED),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_import_token_retire(store, t[4].token_id, KMS_IMPORT_ISSUED,
                                        KMS_IMPORT_END_EXPIRED));
    ck_ok(kms_store_import_token_retire(store, t[0].token_id, KMS_IMPORT_CREATING,
                                        KMS_IMPORT_END_ABANDONED));
    ck_err(kms_store_import_token_retire(store, t[1].token_id, KMS_IMPORT_ISSUED,
                                         KMS_IMPORT_END_USED),
           KMS_ERR_USAGE);
    ck_err(kms_store_import_token_close(store, t[1].token_id), KMS_ERR_FAILED_PRECONDITION);
    for (unsigned i = 0; i < 5; i++)
        if (i != 1 && i != 2)
            ck_ok(kms_store_import_token_close(store, t[i].token_id));
    ck_assert_int_eq(token_get(t[4].token_id).end, KMS_IMPORT_END_EXPIRED);
    ck_assert_int_eq(token_get(t[0].token_id).end, KMS_IMPORT_END_ABANDONED);
    struct kms_hsm_id *ids = NULL;
    ck_ok(kms_store_import_hsm_ids_for_token(store, "custos eu-west", &ids, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_int_lt(memcmp(ids[0].bytes, ids[1].bytes, KMS_HSM_ID_LEN), 0);
    free(ids);
}
END_TEST

/* A database written by schema 1 is migrated to the current schema at open,
 * keeping its keys. */
START_TEST(test_migration_1_to_2)
{
    char id[KMS_KEY_ID_SIZE];
    open_store();
    create_enabled("acme", 24, 1, 1000);
    key_id_of(id, 24, 1);
    kms_store_free(store);
    store = NULL;

    /* Turn the file back into a schema-1 store. */
    sqlite3 *db = raw_open();
    ck_assert_int_eq(sqlite3_exec(db,
                                  "DROP TABLE link_recipients; DROP TABLE link_tokens;"
                                  "DROP TABLE escrow_pairs;"
                                  "DROP TABLE recovery_approvals; DROP TABLE recoveries;"
                                  "DROP TABLE escrow_blobs;"
                                  "DROP TABLE key_check_values; DROP TABLE import_tokens;"
                                  "DROP INDEX keys_rotating;"
                                  "ALTER TABLE keys DROP COLUMN rotation_period_s;"
                                  "ALTER TABLE key_versions DROP COLUMN encryptions;"
                                  "PRAGMA user_version = 1;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name = 'import_tokens'"),
                     0);
    sqlite3_close(db);

    open_store();
    struct kms_store_info info;
    ck_ok(kms_store_info(store, &info));
    ck_assert_int_eq(info.schema_version, KMS_STORE_SCHEMA_VERSION);
    ck_assert_int_eq(state_of(id), KMS_KEY_ENABLED);
    db = raw_open();
    ck_assert_int_eq(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN "
                                 "('import_tokens', 'key_check_values', 'escrow_blobs', "
                                 "'recoveries', 'recovery_approvals', 'escrow_pairs')"),
                     6);
    /* Migration 4 on existing rows: counts and periods start at 0. */
    ck_assert_int_eq(raw_int(db, "SELECT encryptions FROM key_versions"), 0);
    ck_assert_int_eq(raw_int(db, "SELECT rotation_period_s FROM keys"), 0);
    sqlite3_close(db);
}
END_TEST

/* Escrow blobs go with CREATING versions only and survive destruction; a
 * recovery counts each officer once, reaches quorum at M, refuses late or
 * out-of-state approvals, and RESTORE brings the key and versions back in
 * one commit. */
static void recovery_of(struct kms_recovery_record *r, const char *id, const char *key_id,
                        int64_t now)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->recovery_id, sizeof(r->recovery_id), "%s", id);
    snprintf(r->tenant, sizeof(r->tenant), "acme");
    snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
    snprintf(r->region, sizeof(r->region), "eu-west");
    r->versions[0] = 1;
    r->versions[1] = 2;
    r->n_versions = 2;
    r->mode = 1;
    r->justification = 1;
    snprintf(r->justification_text, sizeof(r->justification_text), "oops");
    snprintf(r->case_reference, sizeof(r->case_reference), "C-1");
    r->restore_state = 2;
    snprintf(r->requester, sizeof(r->requester), "o1");
    r->state = KMS_RECOVERY_PENDING;
    r->approvals_required = 2;
    r->time_lock_s = 60;
    r->created_at = now;
    r->expires_at = now + 100;
}

/* Escrow of signing key pairs (schema 5): written only while the version is
 * CREATING, bounded, listed in escrow_blobs' shape (part
 * KMS_ESCROW_PART_PAIR, blob read separately), discarded with a CREATING
 * version, kept after destruction. */
START_TEST(test_escrow_pairs)
{
    char id[KMS_KEY_ID_SIZE];
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver = 0;
    open_store();
    create_enabled("acme", 31, 1, 1000);
    key_id_of(id, 31, 1);
    struct kms_escrow_pair_record *p = calloc(1, sizeof(*p)), *got = calloc(1, sizeof(*got));
    ck_assert(p && got);
    snprintf(p->key_id, sizeof(p->key_id), "%s", id);
    p->version = 1;
    snprintf(p->token, sizeof(p->token), "custos eu-west");
    memset(p->escrow_hsm_id, 3, sizeof(p->escrow_hsm_id));
    memset(p->blob, 7, 2400);
    p->blob_len = 2400;
    memset(p->public_key, 9, 550);
    p->public_key_len = 550;
    p->created_at = 1100;
    /* Version 1 is ACTIVE: too late for its escrow. */
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_FAILED_PRECONDITION);
    hsm_id_of(h, 31, 1, 2);
    ck_ok(kms_store_version_add(store, id, h, 1100, &ver));
    p->version = ver;
    size_t bl = p->blob_len, pl = p->public_key_len;
    p->blob_len = 15;
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_INVALID_ARGUMENT);
    p->blob_len = KMS_ESCROW_PAIR_BLOB_MAX + 1;
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_INVALID_ARGUMENT);
    p->blob_len = bl;
    p->public_key_len = 0;
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_INVALID_ARGUMENT);
    p->public_key_len = KMS_ESCROW_PAIR_SPKI_MAX + 1;
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_INVALID_ARGUMENT);
    p->public_key_len = pl;
    ck_err(kms_store_escrow_pair_get(store, id, ver, got), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_escrow_pair_put(store, p));
    ck_err(kms_store_escrow_pair_put(store, p), KMS_ERR_ALREADY_EXISTS);
    ck_ok(kms_store_escrow_pair_get(store, id, ver, got));
    ck_assert_uint_eq(got->blob_len, 2400);
    ck_assert_mem_eq(got->blob, p->blob, 2400);
    ck_assert_uint_eq(got->public_key_len, 550);
    ck_assert_mem_eq(got->public_key, p->public_key, 550);
    ck_assert_mem_eq(got->escrow_hsm_id, p->escrow_hsm_id, KMS_HSM_ID_LEN);
    ck_assert_str_eq(got->token, "custos eu-west");
    ck_ok(kms_store_version_activate(store, id, ver));

    /* A CREATING version discarded takes its escrow row with it. */
    uint32_t v3 = 0;
    hsm_id_of(h, 31, 1, 3);
    ck_ok(kms_store_version_add(store, id, h, 1200, &v3));
    p->version = v3;
    ck_ok(kms_store_escrow_pair_put(store, p));
    ck_ok(kms_store_creating_discard(store, id, v3));
    ck_err(kms_store_escrow_pair_get(store, id, v3, got), KMS_ERR_NOT_FOUND);

    struct kms_escrow_record *list = NULL;
    size_t n = 0;
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 2000));
    ck_ok(kms_store_key_mark_destroyed(store, id, 2000, NULL, NULL));
    ck_ok(kms_store_escrow_pair_list(store, id, &list, &n));
    ck_assert_uint_eq(n, 1); /* kept after destruction */
    ck_assert_uint_eq(list[0].version, ver);
    ck_assert_int_eq(list[0].part, KMS_ESCROW_PART_PAIR);
    ck_assert_uint_eq(list[0].blob_len, 0);
    ck_assert_mem_eq(list[0].escrow_hsm_id, p->escrow_hsm_id, KMS_HSM_ID_LEN);
    free(list);
    /* The AES escrow table knows nothing of it. */
    ck_ok(kms_store_escrow_list(store, id, &list, &n));
    ck_assert_uint_eq(n, 0);
    free(list);
    free(p);
    free(got);
}
END_TEST

START_TEST(test_escrow_and_recovery)
{
    char id[KMS_KEY_ID_SIZE];
    uint8_t h[KMS_HSM_ID_LEN];
    uint32_t ver = 0;
    open_store();
    create_enabled("acme", 30, 1, 1000);
    key_id_of(id, 30, 1);
    struct kms_escrow_record b = {0};
    snprintf(b.key_id, sizeof(b.key_id), "%s", id);
    b.version = 1;
    snprintf(b.token, sizeof(b.token), "custos eu-west");
    memset(b.blob, 7, 40);
    b.blob_len = 40;
    /* Version 1 is ACTIVE: too late for its blob. */
    ck_err(kms_store_escrow_put(store, &b), KMS_ERR_FAILED_PRECONDITION);
    hsm_id_of(h, 30, 1, 2);
    ck_ok(kms_store_version_add(store, id, h, 1100, &ver));
    b.version = ver;
    ck_ok(kms_store_escrow_put(store, &b));
    ck_err(kms_store_escrow_put(store, &b), KMS_ERR_ALREADY_EXISTS);
    ck_ok(kms_store_version_activate(store, id, ver));

    struct kms_escrow_record *bl = NULL;
    size_t n = 0;
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 2000));
    ck_ok(kms_store_key_mark_destroyed(store, id, 2000, NULL, NULL));
    ck_ok(kms_store_escrow_list(store, id, &bl, &n));
    ck_assert_uint_eq(n, 1); /* kept after destruction */
    ck_assert_uint_eq(bl[0].version, 2);
    ck_assert_mem_eq(bl[0].blob, b.blob, 40);
    free(bl);

    struct kms_recovery_record r, got;
    size_t open_n = 99;
    recovery_of(&r, "00000000000000000000000000000001", id, 3000);
    ck_ok(kms_store_recovery_insert(store, &r, 8, &open_n));
    ck_assert_uint_eq(open_n, 0);
    ck_err(kms_store_recovery_insert(store, &r, 8, &open_n), KMS_ERR_ALREADY_EXISTS);
    bool counted = false;
    ck_ok(kms_store_recovery_approve(store, r.recovery_id, "o2", (const uint8_t *)"sig2", 4, 3010,
                                     &counted));
    ck_assert(counted);
    ck_ok(kms_store_recovery_approve(store, r.recovery_id, "o2", (const uint8_t *)"sig2", 4, 3011,
                                     &counted));
    ck_assert(!counted);
    ck_ok(kms_store_recovery_get(store, r.recovery_id, &got, NULL, NULL));
    ck_assert_int_eq(got.state, KMS_RECOVERY_PENDING);
    /* Not APPROVED yet: RESTORE refused, the key stays DESTROYED. */
    ck_err(kms_store_recovery_restore(store, r.recovery_id, 3020, KMS_KEY_ENABLED),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_recovery_approve(store, r.recovery_id, "o3", (const uint8_t *)"sig3", 4, 3030,
                                     &counted));
    struct kms_recovery_approval *ap = NULL;
    size_t n_ap = 0;
    ck_ok(kms_store_recovery_get(store, r.recovery_id, &got, &ap, &n_ap));
    ck_assert_int_eq(got.state, KMS_RECOVERY_APPROVED);
    ck_assert_int_eq(got.quorum_at, 3030);
    ck_assert_int_eq(got.executable_at, 3090);
    ck_assert_uint_eq(n_ap, 2);
    ck_assert_uint_eq(got.n_versions, 2);
    free(ap);
    /* Approvals only while PENDING_APPROVAL. */
    ck_err(kms_store_recovery_approve(store, r.recovery_id, "o4", (const uint8_t *)"s", 1, 3040,
                                      &counted),
           KMS_ERR_FAILED_PRECONDITION);

    ck_ok(kms_store_recovery_restore(store, r.recovery_id, 3100, KMS_KEY_ENABLED));
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, id, &k));
    ck_assert_int_eq(k.state, KMS_KEY_ENABLED);
    ck_assert_int_eq(k.deletion_at, 0);
    ck_assert_uint_eq(k.current_version, 2);
    ck_ok(kms_store_recovery_get(store, r.recovery_id, &got, NULL, NULL));
    ck_assert_int_eq(got.state, KMS_RECOVERY_EXECUTED);
    ck_assert_int_eq(got.executed_at, 3100);
    ck_err(kms_store_recovery_restore(store, r.recovery_id, 3200, KMS_KEY_ENABLED),
           KMS_ERR_FAILED_PRECONDITION);

    /* Expiry: a late approval is refused; finish is a compare-and-set. */
    recovery_of(&r, "00000000000000000000000000000002", id, 4000);
    ck_ok(kms_store_recovery_insert(store, &r, 8, &open_n));
    ck_assert_uint_eq(open_n, 0); /* the executed one does not count */
    struct kms_recovery_record r3;
    recovery_of(&r3, "00000000000000000000000000000003", id, 4050);
    ck_err(kms_store_recovery_insert(store, &r3, 1, &open_n), KMS_ERR_RESOURCE_EXHAUSTED);
    ck_assert_uint_eq(open_n, 1);
    ck_err(kms_store_recovery_get(store, r3.recovery_id, &got, NULL, NULL), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_recovery_approve(store, r.recovery_id, "o2", (const uint8_t *)"s", 1, 4100,
                                      &counted),
           KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_store_recovery_finish(store, r.recovery_id, KMS_RECOVERY_PENDING,
                                    KMS_RECOVERY_EXPIRED, 4100, NULL, NULL));
    ck_err(kms_store_recovery_finish(store, r.recovery_id, KMS_RECOVERY_PENDING,
                                     KMS_RECOVERY_CANCELLED, 4101, "o1", "x"),
           KMS_ERR_FAILED_PRECONDITION);
    struct kms_recovery_record *list = NULL;
    ck_ok(kms_store_recovery_list(store, "acme", NULL, true, &list, &n));
    ck_assert_uint_eq(n, 0);
    free(list);
    ck_ok(kms_store_recovery_list(store, "acme", id, false, &list, &n));
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(list[0].recovery_id, "00000000000000000000000000000002"); /* newest first */
    free(list);
    ck_ok(kms_store_recovery_list(store, "other", NULL, false, &list, &n));
    ck_assert_uint_eq(n, 0);
    free(list);
    ck_err(kms_store_recovery_get(store, "../etc/passwd", &got, NULL, NULL), KMS_ERR_NOT_FOUND);
    /* Nor does an expired one, marked or not. */
    recovery_of(&r3, "00000000000000000000000000000003", id, 4100);
    ck_ok(kms_store_recovery_insert(store, &r3, 1, &open_n));
    ck_assert_uint_eq(open_n, 0);
    ck_err(kms_store_recovery_insert(store, &r3, 0, &open_n), KMS_ERR_USAGE);
}
END_TEST

/* At most max_open open recoveries per key, also when many threads insert
 * at once: the count and the insert are one write transaction (a count
 * read before the insert let every racer pass it). */
#define RECOVERY_RACERS 16u
#define RECOVERY_LIMIT 8u

struct recovery_racer {
    const char *key_id;
    unsigned index, round;
    pthread_barrier_t *start;
    kms_err rc;
    struct kms_store *node; /* the store handle this racer uses */
};

static void *recovery_racer(void *arg)
{
    struct recovery_racer *w = arg;
    struct kms_recovery_record r;
    char rid[KMS_RECOVERY_ID_LEN + 1];
    snprintf(rid, sizeof(rid), "%016x%016x", w->round + 1, w->index + 1);
    recovery_of(&r, rid, w->key_id, 5000 + w->round);
    size_t open_n = 0;
    pthread_barrier_wait(w->start);
    w->rc = kms_store_recovery_insert(w->node, &r, RECOVERY_LIMIT, &open_n);
    return NULL;
}

START_TEST(test_recovery_limit_race)
{
    char id[KMS_KEY_ID_SIZE];
    open_store();
    /* On PostgreSQL half the racers go through a second handle: a second
     * node, counting the open recoveries in its own transactions. */
    struct kms_store *second = store;
    if (pg_mode)
        ck_ok(open_pg_store(&second));
    for (unsigned round = 0; round < 4; round++) {
        create_enabled("acme", 40 + round, 1, 1000);
        key_id_of(id, 40 + round, 1);
        pthread_t t[RECOVERY_RACERS];
        struct recovery_racer w[RECOVERY_RACERS];
        pthread_barrier_t start;
        ck_assert_int_eq(pthread_barrier_init(&start, NULL, RECOVERY_RACERS), 0);
        for (unsigned i = 0; i < RECOVERY_RACERS; i++) {
            w[i] = (struct recovery_racer){id, i, round, &start, KMS_OK, i % 2 ? second : store};
            ck_assert_int_eq(pthread_create(&t[i], NULL, recovery_racer, &w[i]), 0);
        }
        unsigned ok = 0, exhausted = 0;
        for (unsigned i = 0; i < RECOVERY_RACERS; i++) {
            pthread_join(t[i], NULL);
            ok += w[i].rc == KMS_OK;
            exhausted += w[i].rc == KMS_ERR_RESOURCE_EXHAUSTED;
        }
        pthread_barrier_destroy(&start);
        ck_assert_uint_eq(ok, RECOVERY_LIMIT);
        ck_assert_uint_eq(exhausted, RECOVERY_RACERS - RECOVERY_LIMIT);
        struct kms_recovery_record *list = NULL;
        size_t n = 0;
        ck_ok(kms_store_recovery_list(store, "acme", id, true, &list, &n));
        ck_assert_uint_eq(n, RECOVERY_LIMIT);
        free(list);
    }
    if (second != store)
        kms_store_free(second);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("kms_store");
    /* sqlite_only: cases about the file (settings, lock, crash of the
     * process, a full disk, migrating an old file by hand). */
    struct {
        const char *name;
        const TTest *test;
        bool sqlite_only;
    } cases[] = {
        {"open_creates_and_reopen_keeps", test_open_creates_and_reopen_keeps, false},
        {"pragmas", test_pragmas, true},
        {"open_refusals", test_open_refusals, true},
        {"one_process_per_database", test_one_process_per_database, true},
        {"insert_get", test_insert_get, false},
        {"duplicates_change_nothing", test_duplicates_change_nothing, false},
        {"creating_invisible", test_creating_invisible, false},
        {"versions", test_versions, false},
        {"state_cas", test_state_cas, false},
        {"state_cas_race", test_state_cas_race, false},
        {"paging", test_paging, false},
        {"paging_exact_and_bad_tokens", test_paging_exact_and_bad_tokens, false},
        {"due_for_deletion", test_due_for_deletion, false},
        {"mark_destroyed", test_mark_destroyed, false},
        {"reconcile", test_reconcile, false},
        {"creating_survives_crash", test_creating_survives_crash, true},
        {"disk_full", test_disk_full, true},
        {"bounds", test_bounds, false},
        {"concurrent_inserts", test_concurrent_inserts, false},
        {"import_token_lifecycle", test_import_token_lifecycle, false},
        {"import_token_refusals", test_import_token_refusals, false},
        {"import_material_checks", test_import_material_checks, false},
        {"import_token_sweeping", test_import_token_sweeping, false},
        {"migration_1_to_2", test_migration_1_to_2, true},
        {"escrow_and_recovery", test_escrow_and_recovery, false},
        {"escrow_pairs", test_escrow_pairs, false},
        {"recovery_limit_race", test_recovery_limit_race, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        /* Every commit is an fsync (synchronous=FULL): the bulk tests take
         * seconds on a real disk, more under sanitizers. */
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    if (!testpg_available())
        return s;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (cases[i].sqlite_only)
            continue;
        /* check keeps the name pointer: one that outlives the suite. */
        static char names[64][96];
        _Static_assert(sizeof(cases) / sizeof(cases[0]) <= 64, "names[] holds every case");
        snprintf(names[i], sizeof(names[i]), "pg/%s", cases[i].name);
        TCase *tc = tcase_create(names[i]);
        tcase_add_checked_fixture(tc, setup_pg, teardown_pg);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    /* Through the per-region routing: the cases whose calls find rows by
     * an id other than a key's, or merge what each database returns. */
    static const char *const routed[] = {
        "versions", "paging", "reconcile", "import_token_lifecycle", "import_token_sweeping",
        "escrow_and_recovery", "escrow_pairs", "recovery_limit_race",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool pick = false;
        for (size_t j = 0; j < sizeof(routed) / sizeof(routed[0]); j++)
            pick |= strcmp(cases[i].name, routed[j]) == 0;
        if (!pick)
            continue;
        static char rnames[64][96];
        snprintf(rnames[i], sizeof(rnames[i]), "regions/%s", cases[i].name);
        TCase *tc = tcase_create(rnames[i]);
        tcase_add_checked_fixture(tc, setup_regions, teardown_regions);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    const char *base = getenv("CUSTOS_TEST_WORK");
    snprintf(workroot, sizeof(workroot), "%s/test_kms_store.XXXXXX",
             base && *base ? base : "/tmp");
    if (mkdtemp(workroot) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(store_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(workroot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
