/*
 * test_kms_store_pg.c - what only the PostgreSQL store has: connecting
 * (kms_pgconn), several processes on one database (two store handles are
 * two connection pools, as two kmsd nodes are), serialization failures
 * retried, migrations when nodes start together, connections replaced
 * when the server drops them. Needs the scratch cluster tests/run-tests.sh
 * starts ($CUSTOS_TEST_PG_DIR); without it every case is skipped with a
 * passing placeholder that says so.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_pgconn.h"
#include "kms_store.h"
#include "kms_store_epoch.h"
#include "testpg.h"

static char conninfo[1400];
static char db[64];

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

static void setup(void)
{
    kms_log_set_level(KMS_LOG_ERROR);
    testpg_create(conninfo, sizeof(conninfo), db, sizeof(db));
}

static void teardown(void)
{
    testpg_drop(db);
}

static struct kms_store *open_node(void)
{
    struct kms_store *s = NULL;
    ck_ok(kms_store_open_pg(conninfo, testpg_password_source(), &s));
    return s;
}

static void key_id_of(char out[KMS_KEY_ID_SIZE], unsigned n)
{
    snprintf(out, KMS_KEY_ID_SIZE, "%08x%08x%016x", 0x9au, 0xc0ffeeu, n);
}

/* An ENABLED AES key n with version 1 (hsm id from n). */
static void create_enabled(struct kms_store *s, unsigned n, char id[KMS_KEY_ID_SIZE])
{
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    key_id_of(k.key_id, n);
    snprintf(k.tenant, sizeof(k.tenant), "acme");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos eu-west");
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    snprintf(k.description, sizeof(k.description), "key %u", n);
    k.created_at = 1000;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = 1000;
    memset(v.hsm_id, 0x5a, sizeof(v.hsm_id));
    memcpy(v.hsm_id, &n, sizeof(n));
    ck_ok(kms_store_key_insert(s, &k, &v));
    ck_ok(kms_store_version_activate(s, k.key_id, 1));
    memcpy(id, k.key_id, KMS_KEY_ID_SIZE);
}

/* ---- kms_pgconn ----------------------------------------------------------- */

START_TEST(test_pgconn_password_in_string_refused)
{
    PGconn *c = NULL;
    char s[1500];
    snprintf(s, sizeof(s), "%s password=hunter2", conninfo);
    struct kms_pg_target t = {s, testpg_password_source()};
    ck_err(kms_pg_target_check(&t), KMS_ERR_CONFIG);
    ck_err(kms_pg_connect(&t, "test", &c), KMS_ERR_CONFIG);
    ck_assert_ptr_null(c);
    ck_assert_ptr_null(strstr(kms_err_detail(), "hunter2"));
    /* The same in a URL. */
    struct kms_pg_target u = {"postgresql://custos:hunter2@localhost/x", NULL};
    ck_err(kms_pg_target_check(&u), KMS_ERR_CONFIG);
    ck_assert_ptr_null(strstr(kms_err_detail(), "hunter2"));
    /* And the store refuses it at open, before connecting. */
    struct kms_store *st = NULL;
    ck_err(kms_store_open_pg(s, testpg_password_source(), &st), KMS_ERR_CONFIG);
    ck_assert_ptr_null(st);
}
END_TEST

START_TEST(test_pgconn_connect_and_wrong_password)
{
    PGconn *c = NULL;
    struct kms_pg_target t = {conninfo, testpg_password_source()};
    ck_ok(kms_pg_connect(&t, "test", &c));
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PQfinish(c);

    /* A wrong password: unavailable (KMS_ERR_IO), and never in the detail. */
    char path[] = "/tmp/custos-pgpw.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char wrong[] = "0123456789wrongpassword";
    ck_assert_int_eq(write(fd, wrong, sizeof(wrong) - 1), (ssize_t)(sizeof(wrong) - 1));
    close(fd);
    char src[64];
    snprintf(src, sizeof(src), "file:%s", path);
    struct kms_pg_target w = {conninfo, src};
    c = NULL;
    kms_err rc = kms_pg_connect(&w, "test", &c);
    unlink(path);
    ck_assert_int_eq(rc, KMS_ERR_IO);
    ck_assert_ptr_null(c);
    ck_assert_ptr_null(strstr(kms_err_detail(), wrong));
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "password"));
    /* No password at all: refused the same way. */
    struct kms_pg_target none = {conninfo, NULL};
    ck_err(kms_pg_connect(&none, "test", &c), KMS_ERR_IO);
}
END_TEST

/* ---- two nodes ------------------------------------------------------------- */

struct race {
    pthread_barrier_t *go;
    kms_err (*fn)(struct race *);
    struct kms_store *store;
    const char *key_id;
    const uint8_t *token_id;
    kms_err rc;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->go);
    r->rc = r->fn(r);
    return NULL;
}

/* Run fn on both nodes at once; the two outcomes in a[0..1]. */
static void race2(struct race *a, struct race *b)
{
    pthread_barrier_t go;
    pthread_t ta, tb;
    pthread_barrier_init(&go, NULL, 2);
    a->go = b->go = &go;
    ck_assert_int_eq(pthread_create(&ta, NULL, racer, a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, racer, b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&go);
}

static kms_err claim(struct race *r)
{
    return kms_store_import_token_claim(r->store, r->token_id, r->key_id, 2000);
}

START_TEST(test_import_token_used_once_across_nodes)
{
    struct kms_store *a = open_node(), *b = open_node();
    struct kms_key_record k;
    memset(&k, 0, sizeof(k));
    key_id_of(k.key_id, 7);
    snprintf(k.tenant, sizeof(k.tenant), "acme");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos eu-west");
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_EXTERNAL;
    k.state = KMS_KEY_PENDING_IMPORT;
    k.created_at = 1000;
    ck_ok(kms_store_key_insert(a, &k, NULL));

    struct kms_import_token_record t;
    memset(&t, 0, sizeof(t));
    memset(t.token_id, 0x3c, sizeof(t.token_id));
    memcpy(t.key_id, k.key_id, sizeof(t.key_id));
    snprintf(t.token, sizeof(t.token), "custos eu-west");
    memset(t.hsm_id, 0x1a, sizeof(t.hsm_id));
    t.state = KMS_IMPORT_CREATING;
    t.created_at = 1500;
    t.expires_at = 1500 + 86400;
    ck_ok(kms_store_import_token_insert(a, &t, 3, 1500));
    /* Issued on one node, seen on the other at once. */
    ck_ok(kms_store_import_token_issue(a, t.token_id));
    struct kms_import_token_record got;
    ck_ok(kms_store_import_token_get(b, t.token_id, &got));
    ck_assert_int_eq(got.state, KMS_IMPORT_ISSUED);

    /* Many rounds, so that the two claims really overlap in some: each
     * round exactly one node wins, the other is refused, never both. */
    for (int round = 0; round < 40; round++) {
        struct race ra = {.fn = claim, .store = a, .key_id = k.key_id, .token_id = t.token_id};
        struct race rb = {.fn = claim, .store = b, .key_id = k.key_id, .token_id = t.token_id};
        race2(&ra, &rb);
        int wins = (ra.rc == KMS_OK) + (rb.rc == KMS_OK);
        ck_assert_msg(wins == 1, "round %d: %d claims won (%s, %s)", round, wins,
                      kms_strerror(ra.rc), kms_strerror(rb.rc));
        kms_err loser = ra.rc == KMS_OK ? rb.rc : ra.rc;
        ck_assert_msg(loser == KMS_ERR_FAILED_PRECONDITION, "round %d: loser got %s", round,
                      kms_strerror(loser));
        ck_ok(kms_store_import_token_release(ra.rc == KMS_OK ? b : a, t.token_id, false, 5,
                                             NULL));
    }
    kms_store_free(a);
    kms_store_free(b);
}
END_TEST

static kms_err disable(struct race *r)
{
    return kms_store_key_set_state(r->store, r->key_id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0);
}

START_TEST(test_state_cas_across_nodes)
{
    struct kms_store *a = open_node(), *b = open_node();
    char id[KMS_KEY_ID_SIZE];
    create_enabled(a, 1, id);
    for (int round = 0; round < 40; round++) {
        struct race ra = {.fn = disable, .store = a, .key_id = id};
        struct race rb = {.fn = disable, .store = b, .key_id = id};
        race2(&ra, &rb);
        int wins = (ra.rc == KMS_OK) + (rb.rc == KMS_OK);
        ck_assert_msg(wins == 1, "round %d: %d compare-and-sets won (%s, %s)", round, wins,
                      kms_strerror(ra.rc), kms_strerror(rb.rc));
        ck_assert_int_eq(ra.rc == KMS_OK ? rb.rc : ra.rc, KMS_ERR_FAILED_PRECONDITION);
        /* The change made through one node is what the other reads. */
        struct kms_key_record k;
        ck_ok(kms_store_key_get(ra.rc == KMS_OK ? b : a, id, &k));
        ck_assert_int_eq(k.state, KMS_KEY_DISABLED);
        ck_ok(kms_store_key_set_state(b, id, KMS_KEY_DISABLED, KMS_KEY_ENABLED, 0));
    }
    kms_store_free(a);
    kms_store_free(b);
}
END_TEST

struct reserve_arg {
    struct kms_store *s;
    const char *key_id;
    uint64_t total;
    kms_err rc;
};

static void *reserve_thread(void *varg)
{
    struct reserve_arg *a = varg;
    a->rc = kms_store_usage_reserve(a->s, a->key_id, 1, 100, &a->total);
    return NULL;
}

/* Whether a backend of this database waits for a lock (the store's UPDATE
 * behind the row lock the test holds). */
static bool someone_waits(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND wait_event_type = 'Lock'");
    bool yes = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    return yes;
}

START_TEST(test_serialization_failure_retried)
{
    struct kms_store *a = open_node();
    char id[KMS_KEY_ID_SIZE];
    create_enabled(a, 1, id);

    /* Another node's transaction updates the row first and holds it... */
    PGconn *other = testpg_connect(db);
    testpg_exec(other, "BEGIN ISOLATION LEVEL SERIALIZABLE");
    testpg_exec(other, "UPDATE key_versions SET encryptions = encryptions + 1");
    /* ...while this node's reservation waits behind it... */
    struct reserve_arg ra = {a, id, 0, KMS_ERR_INTERNAL};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, reserve_thread, &ra), 0);
    /* Bounded: a reservation that never waits has failed some other way. */
    for (int i = 0; !someone_waits(other); i++) {
        ck_assert_msg(i < 6000, "the reservation never waited for the row lock");
        usleep(10000);
    }
    /* ...and fails with 40001 when it commits: the store runs it again. */
    testpg_exec(other, "COMMIT");
    pthread_join(t, NULL);
    ck_assert_msg(ra.rc == KMS_OK, "reserve: %s: %s", kms_strerror(ra.rc), kms_err_detail());
    ck_assert_uint_eq(ra.total, 101);
    PQfinish(other);

    /* Two nodes reserving blocks of one version at once: none fails, none
     * is lost. */
    struct kms_store *b = open_node();
    enum { ROUNDS = 30 };
    for (int i = 0; i < ROUNDS; i++) {
        struct reserve_arg x = {a, id, 0, KMS_ERR_INTERNAL}, y = {b, id, 0, KMS_ERR_INTERNAL};
        pthread_t tx, ty;
        pthread_create(&tx, NULL, reserve_thread, &x);
        pthread_create(&ty, NULL, reserve_thread, &y);
        pthread_join(tx, NULL);
        pthread_join(ty, NULL);
        ck_assert_msg(x.rc == KMS_OK && y.rc == KMS_OK, "round %d: %s / %s", i,
                      kms_strerror(x.rc), kms_strerror(y.rc));
        ck_assert_uint_ne(x.total, y.total);
    }
    uint64_t total = 0;
    ck_ok(kms_store_usage_get(b, id, 1, &total));
    ck_assert_uint_eq(total, 101 + 2 * ROUNDS * 100);
    kms_store_free(a);
    kms_store_free(b);
}
END_TEST

/* ---- migrations -------------------------------------------------------------- */

struct open_arg {
    pthread_barrier_t *go;
    struct kms_store *s;
    kms_err rc;
};

static void *open_thread(void *varg)
{
    struct open_arg *a = varg;
    pthread_barrier_wait(a->go);
    a->rc = kms_store_open_pg(conninfo, testpg_password_source(), &a->s);
    return NULL;
}

START_TEST(test_nodes_migrate_together)
{
    enum { NODES = 3 };
    struct open_arg a[NODES];
    pthread_t t[NODES];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, NODES);
    for (int i = 0; i < NODES; i++) {
        a[i] = (struct open_arg){&go, NULL, KMS_ERR_INTERNAL};
        ck_assert_int_eq(pthread_create(&t[i], NULL, open_thread, &a[i]), 0);
    }
    for (int i = 0; i < NODES; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
    struct kms_store_info info[NODES];
    for (int i = 0; i < NODES; i++) {
        ck_assert_msg(a[i].rc == KMS_OK, "node %d: %s", i, kms_strerror(a[i].rc));
        ck_ok(kms_store_info(a[i].s, &info[i]));
        ck_assert_int_eq(info[i].schema_version, KMS_STORE_SCHEMA_VERSION);
        ck_assert_str_eq(info[i].journal_mode, "postgresql");
        ck_assert_int_eq(info[i].synchronous, 2);
        ck_assert_str_eq(info[i].store_id, info[0].store_id);
        kms_store_free(a[i].s);
    }
    /* One schema, one version row: nobody migrated twice. */
    PGconn *c = testpg_connect(db);
    PGresult *r = PQexec(c, "SELECT count(*), max(version) FROM custos_schema");
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    ck_assert_str_eq(PQgetvalue(r, 0, 0), "1");
    ck_assert_int_eq(atoi(PQgetvalue(r, 0, 1)), KMS_STORE_SCHEMA_VERSION);
    PQclear(r);
    PQfinish(c);
}
END_TEST

START_TEST(test_open_refusals)
{
    struct kms_store *s = NULL;
    /* A database of some other application. */
    PGconn *c = testpg_connect(db);
    testpg_exec(c, "CREATE TABLE orders (id INTEGER)");
    ck_err(kms_store_open_pg(conninfo, testpg_password_source(), &s), KMS_ERR_CONFIG);
    ck_assert_ptr_null(s);
    testpg_exec(c, "DROP TABLE orders");
    /* A store written by a newer Custos. */
    s = open_node();
    kms_store_free(s);
    s = NULL;
    testpg_exec(c, "UPDATE custos_schema SET version = 99");
    ck_err(kms_store_open_pg(conninfo, testpg_password_source(), &s), KMS_ERR_CONFIG);
    ck_assert_ptr_null(strstr(kms_err_detail(), testpg_password_source()));
    PQfinish(c);
    /* No such server: unavailable, not a hang. */
    ck_err(kms_store_open_pg("host=/nonexistent dbname=x user=custos", NULL, &s), KMS_ERR_IO);
}
END_TEST

/* ---- connections replaced -------------------------------------------------- */

START_TEST(test_broken_connections_replaced)
{
    struct kms_store *a = open_node();
    char id[KMS_KEY_ID_SIZE];
    struct kms_key_record k;
    create_enabled(a, 1, id);
    ck_ok(kms_store_key_get(a, id, &k));

    /* What a server restart does to every connection the node holds. */
    PGconn *c = testpg_connect(db);
    testpg_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                   "datname = current_database() AND application_name = 'kmsd'");
    PQfinish(c);

    /* Reads and transactions go on, on new connections, without an error. */
    for (int i = 0; i < 8; i++)
        ck_ok(kms_store_key_get(a, id, &k));
    ck_ok(kms_store_key_set_state(a, id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_key_get(a, id, &k));
    ck_assert_int_eq(k.state, KMS_KEY_DISABLED);
    kms_store_free(a);
}
END_TEST

/* A create in flight on another node is not a crash's leftover. */
START_TEST(test_reconcile_spares_young_creates)
{
    struct kms_store *a = open_node();
    struct kms_key_record k;
    struct kms_version_record v;
    for (unsigned n = 1; n <= 2; n++) {
        memset(&k, 0, sizeof(k));
        memset(&v, 0, sizeof(v));
        key_id_of(k.key_id, 100 + n);
        snprintf(k.tenant, sizeof(k.tenant), "acme");
        snprintf(k.region, sizeof(k.region), "eu-west");
        snprintf(k.token, sizeof(k.token), "custos eu-west");
        k.spec = KMS_KEY_SPEC_AES_256;
        k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
        k.origin = KMS_KEY_ORIGIN_HSM;
        k.state = KMS_KEY_CREATING;
        /* Key 1 began just now (another node is creating it); key 2 an
         * hour ago (its node crashed). */
        k.created_at = n == 1 ? (int64_t)time(NULL) : (int64_t)time(NULL) - 3600;
        v.version = 1;
        v.state = KMS_VERSION_CREATING;
        v.created_at = k.created_at;
        memset(v.hsm_id, 0x6b, sizeof(v.hsm_id));
        v.hsm_id[0] = (uint8_t)n;
        ck_ok(kms_store_key_insert(a, &k, &v));
    }
    struct kms_store_creating *rows = NULL;
    size_t nrows = 0;
    ck_ok(kms_store_creating_list(a, &rows, &nrows));
    ck_assert_uint_eq(nrows, 1);
    char old[KMS_KEY_ID_SIZE];
    key_id_of(old, 102);
    ck_assert_str_eq(rows[0].key_id, old);
    free(rows);
    kms_store_free(a);
}
END_TEST

/* ---- one database per region ------------------------------------------------ */

static char conninfo2[1400];
static char db2[64];

static void setup_regions(void)
{
    setup();
    testpg_create(conninfo2, sizeof(conninfo2), db2, sizeof(db2));
}

static void teardown_regions(void)
{
    teardown();
    testpg_drop(db2);
}

static kms_err open_regions(struct kms_store **out)
{
    struct kms_store_pg_region r[2] = {
        {"eu-west", conninfo, testpg_password_source()},
        {"us-east", conninfo2, testpg_password_source()},
    };
    return kms_store_open_pg_regions(r, 2, out);
}

/* An ENABLED AES key n in region (version 1) created at created_at. */
static void create_in(struct kms_store *s, const char *region, unsigned n, int64_t created_at,
                      char id[KMS_KEY_ID_SIZE])
{
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    key_id_of(k.key_id, n);
    snprintf(k.tenant, sizeof(k.tenant), "acme");
    snprintf(k.region, sizeof(k.region), "%s", region);
    snprintf(k.token, sizeof(k.token), "custos %s", region);
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = created_at;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = created_at;
    memset(v.hsm_id, 0x3c, sizeof(v.hsm_id));
    memcpy(v.hsm_id, &n, sizeof(n));
    ck_ok(kms_store_key_insert(s, &k, &v));
    ck_ok(kms_store_version_activate(s, k.key_id, 1));
    memcpy(id, k.key_id, KMS_KEY_ID_SIZE);
}

/* One integer a query returns in dbname, read directly (as psql would). */
static long count_in(const char *dbname, const char *fmt, const char *arg)
{
    char sql[512];
    snprintf(sql, sizeof(sql), fmt, arg);
    PGconn *c = testpg_connect(dbname);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    long n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return n;
}

/* Make a database refuse connections and end the ones it has (a region's
 * database going away while kmsd runs), or take them again. */
static void db_reachable(const char *dbname, bool yes)
{
    char sql[256];
    PGconn *c = testpg_connect("postgres");
    snprintf(sql, sizeof(sql), "ALTER DATABASE %s ALLOW_CONNECTIONS %s", dbname,
             yes ? "true" : "false");
    testpg_exec(c, sql);
    if (!yes) {
        snprintf(sql, sizeof(sql),
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'",
                 dbname);
        testpg_exec(c, sql);
    }
    PQfinish(c);
}

START_TEST(test_regions_rows_stay_in_their_database)
{
    struct kms_store *s = NULL;
    char eu[KMS_KEY_ID_SIZE], us[KMS_KEY_ID_SIZE];
    ck_ok(open_regions(&s));
    create_in(s, "eu-west", 1, 1000, eu);
    create_in(s, "us-east", 2, 1001, us);
    uint8_t hsm2[KMS_HSM_ID_LEN];
    memset(hsm2, 0x77, sizeof(hsm2));
    uint32_t v = 0;
    ck_ok(kms_store_version_add(s, us, hsm2, 1002, &v));
    ck_ok(kms_store_version_activate(s, us, v));
    uint64_t total = 0;
    ck_ok(kms_store_usage_reserve(s, eu, 1, 5, &total));
    ck_ok(kms_store_key_set_state(s, eu, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_audit_mark_set(s, "eu-west", 11));
    ck_ok(kms_store_audit_mark_set(s, "us-east", 22));

    /* Each key's rows, and each region's watermark, in its database only. */
    const char *keyq = "SELECT count(*) FROM keys WHERE key_id = '%s'";
    const char *verq = "SELECT count(*) FROM key_versions WHERE key_id = '%s'";
    const char *metaq = "SELECT count(*) FROM meta WHERE name = '%s'";
    ck_assert_int_eq(count_in(db, keyq, eu), 1);
    ck_assert_int_eq(count_in(db2, keyq, eu), 0);
    ck_assert_int_eq(count_in(db, verq, eu), 1);
    ck_assert_int_eq(count_in(db2, verq, eu), 0);
    ck_assert_int_eq(count_in(db2, keyq, us), 1);
    ck_assert_int_eq(count_in(db, keyq, us), 0);
    ck_assert_int_eq(count_in(db2, verq, us), 2);
    ck_assert_int_eq(count_in(db, verq, us), 0);
    ck_assert_int_eq(count_in(db, metaq, "audit_mark:eu-west"), 1);
    ck_assert_int_eq(count_in(db2, metaq, "audit_mark:eu-west"), 0);
    ck_assert_int_eq(count_in(db2, metaq, "audit_mark:us-east"), 1);
    ck_assert_int_eq(count_in(db, metaq, "audit_mark:us-east"), 0);
    ck_assert_int_eq(count_in(db, "SELECT count(*) FROM key_versions WHERE encryptions = %s", "5"),
                     1);
    kms_store_free(s);

    /* A node that has never seen the keys (a restart: no key map) finds
     * each by asking the databases, and reads what the other wrote. */
    ck_ok(open_regions(&s));
    struct kms_key_record k;
    ck_ok(kms_store_key_get(s, us, &k));
    ck_assert_str_eq(k.region, "us-east");
    ck_assert_uint_eq(k.current_version, 2);
    ck_ok(kms_store_key_get(s, eu, &k));
    ck_assert_int_eq(k.state, KMS_KEY_DISABLED);
    uint64_t mark = 0;
    bool found = false;
    ck_ok(kms_store_audit_mark_get(s, "us-east", &mark, &found));
    ck_assert(found);
    ck_assert_uint_eq(mark, 22);
    char missing[KMS_KEY_ID_SIZE];
    key_id_of(missing, 99);
    ck_err(kms_store_key_get(s, missing, &k), KMS_ERR_NOT_FOUND);
    /* A key id names one key across regions: us-east cannot take eu's. */
    struct kms_key_record dup;
    memset(&dup, 0, sizeof(dup));
    memcpy(dup.key_id, eu, KMS_KEY_ID_SIZE);
    snprintf(dup.tenant, sizeof(dup.tenant), "acme");
    snprintf(dup.region, sizeof(dup.region), "us-east");
    snprintf(dup.token, sizeof(dup.token), "custos us-east");
    dup.spec = KMS_KEY_SPEC_AES_256;
    dup.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    dup.origin = KMS_KEY_ORIGIN_EXTERNAL;
    dup.state = KMS_KEY_PENDING_IMPORT;
    dup.created_at = 5000;
    ck_err(kms_store_key_insert(s, &dup, NULL), KMS_ERR_ALREADY_EXISTS);
    ck_assert_int_eq(count_in(db2, keyq, eu), 0);
    /* A region no database holds is refused, not put somewhere. */
    snprintf(dup.region, sizeof(dup.region), "ap-south");
    key_id_of(dup.key_id, 98);
    ck_err(kms_store_key_insert(s, &dup, NULL), KMS_ERR_FAILED_PRECONDITION);
    kms_store_free(s);
}
END_TEST

START_TEST(test_regions_list_pages_across_databases)
{
    struct kms_store *s = NULL;
    ck_ok(open_regions(&s));
    /* Nine keys, regions interleaved, created_at with ties across regions:
     * the listing order is (created_at, key_id) whatever the region. */
    enum { N = 9 };
    char ids[N][KMS_KEY_ID_SIZE];
    for (unsigned i = 0; i < N; i++)
        create_in(s, i % 3 == 0 ? "us-east" : "eu-west", 100 + i, 2000 + (int64_t)(i / 2),
                  ids[i]);
    for (size_t page = 1; page <= 4; page++) {
        char tok[KMS_PAGE_TOKEN_SIZE] = "";
        size_t seen = 0;
        int64_t last_at = 0;
        char last_id[KMS_KEY_ID_SIZE] = "";
        for (int rounds = 0; rounds < N + 2; rounds++) {
            struct kms_key_record *keys = NULL;
            size_t n = 0;
            char next[KMS_PAGE_TOKEN_SIZE];
            ck_ok(kms_store_keys_list(s, "acme", tok, page, &keys, &n, next));
            ck_assert_uint_le(n, page);
            for (size_t j = 0; j < n; j++) {
                /* Strictly increasing: nothing repeats, the order holds. */
                ck_assert(keys[j].created_at > last_at ||
                          (keys[j].created_at == last_at &&
                           strcmp(keys[j].key_id, last_id) > 0));
                last_at = keys[j].created_at;
                snprintf(last_id, sizeof(last_id), "%s", keys[j].key_id);
                seen++;
            }
            free(keys);
            if (next[0] == '\0')
                break;
            snprintf(tok, sizeof(tok), "%s", next);
        }
        /* Nothing skipped: every key of both regions came, once. */
        ck_assert_uint_eq(seen, N);
    }
    kms_store_free(s);
}
END_TEST

START_TEST(test_regions_one_unreachable)
{
    struct kms_store *s = NULL;
    char eu[KMS_KEY_ID_SIZE], us[KMS_KEY_ID_SIZE], eu2[KMS_KEY_ID_SIZE], missing[KMS_KEY_ID_SIZE];
    struct kms_key_record k;
    ck_ok(open_regions(&s));
    create_in(s, "eu-west", 1, 1000, eu);
    create_in(s, "us-east", 2, 1000, us);

    db_reachable(db2, false);
    /* eu-west serves on, a new key included (its uniqueness check skips
     * the region it cannot ask); us-east's requests are unavailable. */
    ck_ok(kms_store_key_get(s, eu, &k));
    ck_ok(kms_store_key_set_state(s, eu, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    create_in(s, "eu-west", 3, 1001, eu2);
    ck_err(kms_store_key_get(s, us, &k), KMS_ERR_IO);
    ck_err(kms_store_key_set_state(s, us, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0), KMS_ERR_IO);
    ck_err(kms_store_audit_mark_set(s, "us-east", 5), KMS_ERR_IO);
    ck_ok(kms_store_audit_mark_set(s, "eu-west", 5));
    /* A key no reachable database holds may be in the one away. */
    key_id_of(missing, 77);
    ck_err(kms_store_key_get(s, missing, &k), KMS_ERR_IO);
    /* A complete listing needs every region; the sweeper's work does not. */
    struct kms_key_record *keys = NULL;
    size_t n = 0;
    char next[KMS_PAGE_TOKEN_SIZE];
    ck_err(kms_store_keys_list(s, "acme", NULL, 10, &keys, &n, next), KMS_ERR_IO);
    ck_ok(kms_store_keys_due_for_deletion(s, 5000, 10, &keys, &n));
    free(keys);
    struct kms_store_info info;
    ck_err(kms_store_info(s, &info), KMS_ERR_IO);

    /* Back: the same handle reconnects and serves us-east again. */
    db_reachable(db2, true);
    ck_ok(kms_store_key_get(s, us, &k));
    ck_ok(kms_store_key_set_state(s, us, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    ck_err(kms_store_key_get(s, missing, &k), KMS_ERR_NOT_FOUND);
    ck_ok(kms_store_keys_list(s, "acme", NULL, 10, &keys, &n, next));
    ck_assert_uint_eq(n, 3);
    free(keys);
    ck_ok(kms_store_info(s, &info));
    kms_store_free(s);
}
END_TEST

START_TEST(test_regions_unreachable_at_open)
{
    struct kms_store *s = NULL;
    char eu[KMS_KEY_ID_SIZE], us[KMS_KEY_ID_SIZE];
    struct kms_key_record k;
    db_reachable(db2, false);
    /* kmsd starts and serves eu-west; us-east's database, never opened
     * yet, is migrated when it first answers. */
    ck_ok(open_regions(&s));
    create_in(s, "eu-west", 1, 1000, eu);
    struct kms_key_record nk;
    memset(&nk, 0, sizeof(nk));
    key_id_of(nk.key_id, 2);
    snprintf(nk.tenant, sizeof(nk.tenant), "acme");
    snprintf(nk.region, sizeof(nk.region), "us-east");
    snprintf(nk.token, sizeof(nk.token), "custos us-east");
    nk.spec = KMS_KEY_SPEC_AES_256;
    nk.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    nk.origin = KMS_KEY_ORIGIN_EXTERNAL;
    nk.state = KMS_KEY_PENDING_IMPORT;
    nk.created_at = 1000;
    ck_err(kms_store_key_insert(s, &nk, NULL), KMS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "us-east"));
    db_reachable(db2, true);
    create_in(s, "us-east", 3, 1000, us);
    ck_ok(kms_store_key_get(s, us, &k));
    ck_assert_int_eq(count_in(db2, "SELECT count(*) FROM keys WHERE key_id = '%s'", us), 1);
    ck_assert_int_eq(count_in(db2, "SELECT max(version) FROM custos_schema%s", ""),
                     KMS_STORE_SCHEMA_VERSION);
    kms_store_free(s);

    /* Nothing reachable at all: kmsd cannot start. */
    db_reachable(db, false);
    db_reachable(db2, false);
    ck_err(open_regions(&s), KMS_ERR_IO);
    ck_assert_ptr_null(s);
    db_reachable(db, true);
    db_reachable(db2, true);
}
END_TEST

START_TEST(test_regions_open_refusals)
{
    struct kms_store *s = NULL;
    /* Two regions in one database would mix their rows. */
    struct kms_store_pg_region same[2] = {
        {"eu-west", conninfo, testpg_password_source()},
        {"us-east", conninfo, testpg_password_source()},
    };
    ck_err(kms_store_open_pg_regions(same, 2, &s), KMS_ERR_CONFIG);
    ck_assert_ptr_null(s);
    struct kms_store_pg_region twice[2] = {
        {"eu-west", conninfo, testpg_password_source()},
        {"eu-west", "host=/nonexistent dbname=other", testpg_password_source()},
    };
    ck_err(kms_store_open_pg_regions(twice, 2, &s), KMS_ERR_CONFIG);
    ck_err(kms_store_open_pg_regions(twice, 0, &s), KMS_ERR_CONFIG);

    /* The same database however it is spelled; another one is another. */
    bool yes = false;
    ck_ok(kms_pg_same_database("host=/run/pg dbname=custos_eu",
                               "dbname=custos_eu port=5432 host=/run/pg", &yes));
    ck_assert(yes);
    ck_ok(kms_pg_same_database("postgresql://db.internal/custos_eu",
                               "host=db.internal dbname=custos_eu", &yes));
    ck_assert(yes);
    ck_ok(kms_pg_same_database("host=db.internal dbname=custos_eu",
                               "host=db.internal dbname=custos_us", &yes));
    ck_assert(!yes);
    ck_ok(kms_pg_same_database("host=db.internal port=5433 dbname=custos_eu",
                               "host=db.internal dbname=custos_eu", &yes));
    ck_assert(!yes);
    ck_err(kms_pg_same_database("host=", "dbname='unterminated", &yes), KMS_ERR_CONFIG);
}
END_TEST

START_TEST(test_no_cluster)
{
    /* Placeholder when PostgreSQL is not installed: says so in the log. */
    fprintf(stderr, "test_kms_store_pg: no CUSTOS_TEST_PG_DIR, PostgreSQL cases skipped\n");
}
END_TEST

static Suite *pg_suite(void)
{
    Suite *s = suite_create("kms_store_pg");
    if (!testpg_available()) {
        TCase *tc = tcase_create("no_cluster");
        tcase_add_test(tc, test_no_cluster);
        suite_add_tcase(s, tc);
        return s;
    }
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"pgconn_password_in_string_refused", test_pgconn_password_in_string_refused},
        {"pgconn_connect_and_wrong_password", test_pgconn_connect_and_wrong_password},
        {"import_token_used_once_across_nodes", test_import_token_used_once_across_nodes},
        {"state_cas_across_nodes", test_state_cas_across_nodes},
        {"serialization_failure_retried", test_serialization_failure_retried},
        {"nodes_migrate_together", test_nodes_migrate_together},
        {"open_refusals", test_open_refusals},
        {"broken_connections_replaced", test_broken_connections_replaced},
        {"reconcile_spares_young_creates", test_reconcile_spares_young_creates},
        {"regions_open_refusals", test_regions_open_refusals},
    };
    struct {
        const char *name;
        const TTest *test;
    } region_cases[] = {
        {"regions_rows_stay_in_their_database", test_regions_rows_stay_in_their_database},
        {"regions_list_pages_across_databases", test_regions_list_pages_across_databases},
        {"regions_one_unreachable", test_regions_one_unreachable},
        {"regions_unreachable_at_open", test_regions_unreachable_at_open},
    };
    for (size_t i = 0; i < sizeof(region_cases) / sizeof(region_cases[0]); i++) {
        TCase *tc = tcase_create(region_cases[i].name);
        tcase_add_checked_fixture(tc, setup_regions, teardown_regions);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, region_cases[i].test);
        suite_add_tcase(s, tc);
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pg_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
