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
