/*
 * test_kms_store_lease.c - leases shared by the nodes of one store
 * (kms_store_lease_take / _release, kms/store/kms_store_lease.c) on both
 * backends: SQLite (a file in a temp directory) and PostgreSQL (two store
 * handles on one database, as two kmsd nodes are; the scratch cluster of
 * tests/run-tests.sh, $CUSTOS_TEST_PG_DIR, else those cases are skipped).
 * One holder at a time; renewal by the holder; expiry hands it over; a
 * release by someone else changes nothing; bad arguments are refused; and
 * eight threads on two PostgreSQL handles racing for one free lease: exactly
 * one wins.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_store.h"
#include "testpg.h"

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

static char dir[] = "/tmp/custos-lease.XXXXXX";
static char path[128];
static char conninfo[1400];
static char db[64];
static bool on_pg;

static void setup_sqlite(void)
{
    kms_log_set_level(KMS_LOG_ERROR);
    snprintf(dir, sizeof(dir), "/tmp/custos-lease.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/kms.db", dir);
    on_pg = false;
}

static void teardown_sqlite(void)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void setup_pg(void)
{
    kms_log_set_level(KMS_LOG_ERROR);
    testpg_create(conninfo, sizeof(conninfo), db, sizeof(db));
    on_pg = true;
}

static void teardown_pg(void)
{
    testpg_drop(db);
}

static struct kms_store *open_store(void)
{
    struct kms_store *s = NULL;
    if (on_pg)
        ck_ok(kms_store_open_pg(conninfo, testpg_password_source(), &s));
    else
        ck_ok(kms_store_open(path, &s));
    return s;
}

/* The rules, on one handle (SQLite allows one process per file; on
 * PostgreSQL two handles are checked below). */
START_TEST(test_lease_rules)
{
    struct kms_store *s = open_store();
    bool won = false;
    ck_ok(kms_store_lease_take(s, "sweeper", "node-a", 1000, 30, &won));
    ck_assert(won);
    /* Held: another holder loses until it expires (at 1030). */
    ck_ok(kms_store_lease_take(s, "sweeper", "node-b", 1029, 30, &won));
    ck_assert(!won);
    /* Another name is another lease. */
    ck_ok(kms_store_lease_take(s, "key:0123", "node-b", 1029, 30, &won));
    ck_assert(won);
    /* The holder renews (to 1059): node-b still loses at 1040. */
    ck_ok(kms_store_lease_take(s, "sweeper", "node-a", 1029, 30, &won));
    ck_assert(won);
    ck_ok(kms_store_lease_take(s, "sweeper", "node-b", 1040, 30, &won));
    ck_assert(!won);
    /* Expired: handed over. */
    ck_ok(kms_store_lease_take(s, "sweeper", "node-b", 1059, 30, &won));
    ck_assert(won);
    ck_ok(kms_store_lease_take(s, "sweeper", "node-a", 1060, 30, &won));
    ck_assert(!won);
    /* A release by someone who does not hold it changes nothing. */
    ck_ok(kms_store_lease_release(s, "sweeper", "node-a"));
    ck_ok(kms_store_lease_take(s, "sweeper", "node-a", 1061, 30, &won));
    ck_assert(!won);
    /* The holder's release frees it at once. */
    ck_ok(kms_store_lease_release(s, "sweeper", "node-b"));
    ck_ok(kms_store_lease_take(s, "sweeper", "node-a", 1061, 30, &won));
    ck_assert(won);
    /* Releasing a lease nobody holds is not an error. */
    ck_ok(kms_store_lease_release(s, "nothing", "node-a"));
    kms_store_free(s);
}
END_TEST

START_TEST(test_lease_bad_arguments)
{
    struct kms_store *s = open_store();
    bool won = true;
    char long_name[100], long_holder[KMS_STORE_LEASE_HOLDER_MAX + 2];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    memset(long_holder, 'h', sizeof(long_holder) - 1);
    long_holder[sizeof(long_holder) - 1] = '\0';
    ck_err(kms_store_lease_take(s, "", "a", 1, 1, &won), KMS_ERR_USAGE);
    ck_assert(!won);
    ck_err(kms_store_lease_take(s, long_name, "a", 1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", "", 1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", "two words", 1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", long_holder, 1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", "a", 1, 0, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", "a", 1, KMS_STORE_LEASE_TTL_MAX + 1, &won),
           KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, "x", "a", -1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_take(s, NULL, "a", 1, 1, &won), KMS_ERR_USAGE);
    ck_err(kms_store_lease_release(s, "x", NULL), KMS_ERR_USAGE);
    /* Nothing was written: a fresh holder takes "x" at once. */
    ck_ok(kms_store_lease_take(s, "x", "b", 1, 1, &won));
    ck_assert(won);
    kms_store_free(s);
}
END_TEST

/* ---- PostgreSQL: two nodes ------------------------------------------------ */

START_TEST(test_lease_two_nodes)
{
    struct kms_store *a = open_store(), *b = open_store();
    bool won = false;
    ck_ok(kms_store_lease_take(a, "key:k1", "node-a", 1000, 120, &won));
    ck_assert(won);
    ck_ok(kms_store_lease_take(b, "key:k1", "node-b", 1001, 120, &won));
    ck_assert(!won);
    ck_ok(kms_store_lease_release(a, "key:k1", "node-a"));
    ck_ok(kms_store_lease_take(b, "key:k1", "node-b", 1002, 120, &won));
    ck_assert(won);
    kms_store_free(a);
    kms_store_free(b);
}
END_TEST

struct racer {
    struct kms_store *store;
    char holder[32];
    pthread_barrier_t *start;
    atomic_int *winners;
    kms_err rc;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    bool won = false;
    pthread_barrier_wait(r->start);
    r->rc = kms_store_lease_take(r->store, "sweeper", r->holder, 5000, 60, &won);
    if (r->rc == KMS_OK && won)
        atomic_fetch_add(r->winners, 1);
    return NULL;
}

START_TEST(test_lease_race_one_winner)
{
    enum { RACERS = 8 };
    struct kms_store *nodes[2] = {open_store(), open_store()};
    for (int round = 0; round < 5; round++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, RACERS);
        atomic_int winners = 0;
        struct racer rs[RACERS];
        pthread_t th[RACERS];
        for (int i = 0; i < RACERS; i++) {
            rs[i] = (struct racer){.store = nodes[i % 2], .start = &start, .winners = &winners};
            snprintf(rs[i].holder, sizeof(rs[i].holder), "n%d-r%d", i, round);
            ck_assert_int_eq(pthread_create(&th[i], NULL, race, &rs[i]), 0);
        }
        for (int i = 0; i < RACERS; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < RACERS; i++)
            ck_assert_msg(rs[i].rc == KMS_OK, "racer %d: %s", i, kms_strerror(rs[i].rc));
        ck_assert_int_eq(atomic_load(&winners), 1);
        /* Free it for the next round: the winner releases. */
        for (int i = 0; i < RACERS; i++)
            ck_ok(kms_store_lease_release(nodes[i % 2], "sweeper", rs[i].holder));
    }
    kms_store_free(nodes[0]);
    kms_store_free(nodes[1]);
}
END_TEST

/* ---- one database per region (kms_store_open_pg_regions) ---- */

static char conninfo2[1400];
static char db2[64];

static void setup_regions(void)
{
    setup_pg();
    testpg_create(conninfo2, sizeof(conninfo2), db2, sizeof(db2));
}

static void teardown_regions(void)
{
    teardown_pg();
    testpg_drop(db2);
}

/* A node serving both regions, or (one_region) only us-east. */
static struct kms_store *open_node(bool one_region)
{
    struct kms_store_pg_region r[2] = {
        {"eu-west", conninfo, testpg_password_source()},
        {"us-east", conninfo2, testpg_password_source()},
    };
    struct kms_store *s = NULL;
    if (one_region)
        ck_ok(kms_store_open_pg_regions(&r[1], 1, &s));
    else
        ck_ok(kms_store_open_pg_regions(r, 2, &s));
    return s;
}

/* Whether a plain handle on one database finds name held by someone else
 * (it takes and gives back the lease when free). */
static bool held_in(const char *ci, const char *name)
{
    struct kms_store *s = NULL;
    bool won = false;
    ck_ok(kms_store_open_pg(ci, testpg_password_source(), &s));
    ck_ok(kms_store_lease_take(s, name, "probe", 2000, 60, &won));
    if (won)
        ck_ok(kms_store_lease_release(s, name, "probe"));
    kms_store_free(s);
    return !won;
}

/* A store-wide lease is held in every region's database: a node serving
 * only one of the regions cannot take it while a two-region node holds
 * it, and a node that loses one database gives back what it took. */
START_TEST(test_lease_regions_store_wide)
{
    struct kms_store *a = open_node(false), *b = open_node(false), *c = open_node(true);
    bool won = false;
    ck_ok(kms_store_lease_take(a, "sweeper", "node-a", 2000, 60, &won));
    ck_assert(won);
    ck_assert(held_in(conninfo, "sweeper"));
    ck_assert(held_in(conninfo2, "sweeper"));
    ck_ok(kms_store_lease_take(b, "sweeper", "node-b", 2001, 60, &won));
    ck_assert(!won);
    ck_ok(kms_store_lease_take(c, "sweeper", "node-c", 2001, 60, &won));
    ck_assert(!won);
    ck_ok(kms_store_lease_release(a, "sweeper", "node-a"));
    /* c (us-east only) takes it; b then wins eu-west but loses us-east,
     * and must not keep eu-west. */
    ck_ok(kms_store_lease_take(c, "sweeper", "node-c", 2002, 60, &won));
    ck_assert(won);
    ck_ok(kms_store_lease_take(b, "sweeper", "node-b", 2003, 60, &won));
    ck_assert(!won);
    ck_assert(!held_in(conninfo, "sweeper"));
    ck_assert(held_in(conninfo2, "sweeper"));
    kms_store_free(a);
    kms_store_free(b);
    kms_store_free(c);
}
END_TEST

/* A key's lease lives in the key's own region database. */
START_TEST(test_lease_regions_key)
{
    struct kms_store *a = open_node(false), *b = open_node(false);
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    snprintf(k.key_id, sizeof(k.key_id), "%032x", 0x1ea5e);
    snprintf(k.tenant, sizeof(k.tenant), "acme");
    snprintf(k.region, sizeof(k.region), "us-east");
    snprintf(k.token, sizeof(k.token), "custos us-east");
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = 100;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = 100;
    memset(v.hsm_id, 0x5a, sizeof(v.hsm_id));
    ck_ok(kms_store_key_insert(a, &k, &v));
    char name[64];
    snprintf(name, sizeof(name), "key:%s", k.key_id);
    bool won = false;
    ck_ok(kms_store_lease_take(a, name, "node-a", 3000, 60, &won));
    ck_assert(won);
    ck_assert(held_in(conninfo2, name));
    ck_assert(!held_in(conninfo, name));
    /* b has never seen the key: it finds it in us-east, and loses. */
    ck_ok(kms_store_lease_take(b, name, "node-b", 3001, 60, &won));
    ck_assert(!won);
    ck_ok(kms_store_lease_release(a, name, "node-a"));
    ck_ok(kms_store_lease_take(b, name, "node-b", 3002, 60, &won));
    ck_assert(won);
    kms_store_free(a);
    kms_store_free(b);
}
END_TEST

static Suite *lease_suite(void)
{
    Suite *s = suite_create("kms_store_lease");
    TCase *tc = tcase_create("sqlite");
    tcase_add_checked_fixture(tc, setup_sqlite, teardown_sqlite);
    tcase_add_test(tc, test_lease_rules);
    tcase_add_test(tc, test_lease_bad_arguments);
    suite_add_tcase(s, tc);
    if (!testpg_available()) {
        fprintf(stderr, "test_kms_store_lease: no CUSTOS_TEST_PG_DIR, PostgreSQL cases skipped\n");
        return s;
    }
    tc = tcase_create("postgresql");
    tcase_add_checked_fixture(tc, setup_pg, teardown_pg);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_lease_rules);
    tcase_add_test(tc, test_lease_bad_arguments);
    tcase_add_test(tc, test_lease_two_nodes);
    tcase_add_test(tc, test_lease_race_one_winner);
    suite_add_tcase(s, tc);
    tc = tcase_create("regions");
    tcase_add_checked_fixture(tc, setup_regions, teardown_regions);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_lease_regions_store_wide);
    tcase_add_test(tc, test_lease_regions_key);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lease_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
