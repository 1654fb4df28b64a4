/*
 * test_kms_usage.c - GCM encryption counting (kms/keys/kms_usage.c) and the
 * store's usage and rotation-period queries, against real SQLite files in a
 * temporary directory (under $CUSTOS_TEST_WORK when set), one per test.
 *
 * The property that matters: the durable count is never below the
 * encryptions counted, whatever instant the process dies at (a crash is a
 * child killed with SIGKILL, or the usage table dropped without giving its
 * reservations back), and the limit is never passed.
 */
#include <check.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_store.h"
#include "kms_usage.h"
#include "testpg.h"

static char workroot[4096];
static char tmpdir[4200];
static char dbpath[4300];
static struct kms_store *store;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
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

/* PostgreSQL cases ("pg/..."): the database of this test. */
static bool pg_mode;
static char pg_conninfo[1400];
static char pg_db[64];

static kms_err open_any(struct kms_store **out)
{
    return pg_mode ? kms_store_open_pg(pg_conninfo, testpg_password_source(), out)
                   : kms_store_open(dbpath, out);
}

static void open_store(void)
{
    ck_ok(open_any(&store));
}

static void reopen_store(void)
{
    kms_store_free(store);
    store = NULL;
    open_store();
}

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/t.XXXXXX", workroot);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dbpath, sizeof(dbpath), "%s/custos.db", tmpdir);
    kms_log_set_level(KMS_LOG_ERROR);
    store = NULL;
    open_store();
}

static void teardown(void)
{
    kms_store_free(store);
    store = NULL;
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup_pg(void)
{
    pg_mode = true;
    testpg_create(pg_conninfo, sizeof(pg_conninfo), pg_db, sizeof(pg_db));
    setup();
}

static void teardown_pg(void)
{
    teardown();
    testpg_drop(pg_db);
}

/* An ENABLED key n with versions 1..versions, the current one created at
 * created_at (earlier ones a day before each). */
static void make_key(char key_id[KMS_KEY_ID_SIZE], unsigned n, uint32_t versions,
                     int64_t created_at, enum kms_key_origin origin)
{
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    snprintf(k.key_id, sizeof(k.key_id), "%08x%024x", 0xfeedu, n);
    snprintf(k.tenant, sizeof(k.tenant), "acme");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos-eu-west");
    snprintf(k.description, sizeof(k.description), "usage %u", n);
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = origin;
    k.state = KMS_KEY_CREATING;
    k.created_at = created_at - 86400 * (int64_t)(versions - 1);
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = k.created_at;
    memset(v.hsm_id, 0x11, sizeof(v.hsm_id));
    memcpy(v.hsm_id, &n, sizeof(n));
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));
    for (uint32_t i = 2; i <= versions; i++) {
        uint8_t hid[KMS_HSM_ID_LEN];
        uint32_t got = 0;
        memset(hid, 0x22, sizeof(hid));
        memcpy(hid, &n, sizeof(n));
        memcpy(hid + 4, &i, sizeof(i));
        ck_ok(kms_store_version_add(store, k.key_id, hid,
                                    created_at - 86400 * (int64_t)(versions - i), &got));
        ck_assert_uint_eq(got, i);
        ck_ok(kms_store_version_activate(store, k.key_id, i));
    }
    memcpy(key_id, k.key_id, KMS_KEY_ID_SIZE);
}

static uint64_t stored(const char *key_id, uint32_t version)
{
    uint64_t v = 0;
    ck_ok(kms_store_usage_get(store, key_id, version, &v));
    return v;
}

static struct kms_usage *usage_new(uint64_t rotate_at, uint64_t limit, uint32_t block)
{
    struct kms_usage *u = NULL;
    struct kms_usage_config cfg = {rotate_at, limit, block};
    ck_ok(kms_usage_new(store, &cfg, &u));
    return u;
}

/* The store holds a block before the block is used. */
START_TEST(test_reserve_before_use)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 1, 1, 1000, KMS_KEY_ORIGIN_HSM);
    ck_assert_uint_eq(stored(id, 1), 0);
    struct kms_usage *u = usage_new(1000, 1000, 10);
    bool rot = true;
    ck_ok(kms_usage_take(u, id, 1, 1, &rot));
    ck_assert(!rot);
    ck_assert_uint_eq(stored(id, 1), 10);
    for (int i = 0; i < 9; i++)
        ck_ok(kms_usage_take(u, id, 1, 1, &rot));
    ck_assert_uint_eq(stored(id, 1), 10); /* still inside the block: no commit */
    ck_ok(kms_usage_take(u, id, 1, 1, &rot));
    ck_assert_uint_eq(stored(id, 1), 20);
    /* A take larger than a block reserves all of it at once. */
    ck_ok(kms_usage_take(u, id, 1, 35, &rot));
    ck_assert_uint_ge(stored(id, 1), 46);
    uint64_t c = 0;
    ck_ok(kms_usage_count(u, id, 1, &c));
    ck_assert_uint_eq(c, 46);
    struct kms_usage_stats st;
    kms_usage_stats(u, &st);
    ck_assert_uint_eq(st.encryptions, 46);
    ck_assert_uint_eq(st.reservations, 3);
    /* A clean shutdown gives the unused part back: exact afterwards. */
    kms_usage_free(u);
    ck_assert_uint_eq(stored(id, 1), 46);
}
END_TEST

/* A crash at any point: the count read back is never below what was
 * counted (and over by less than a block). The child counts in uneven
 * steps, reports each acknowledged total through a pipe, and is killed. */
START_TEST(test_crash_never_undercounts)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 2, 2, 1000000, KMS_KEY_ORIGIN_HSM);
    kms_store_free(store);
    store = NULL;
    for (int round = 0; round < 5; round++) {
        int fd[2];
        ck_assert_int_eq(pipe(fd), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fd[0]);
            if (open_any(&store) != KMS_OK)
                _exit(1);
            struct kms_usage *u = NULL;
            struct kms_usage_config cfg = {1u << 30, 1u << 30, 16};
            if (kms_usage_new(store, &cfg, &u) != KMS_OK)
                _exit(1);
            uint64_t total = 0;
            for (unsigned i = 0; i < 40 + 7 * (unsigned)round; i++) {
                bool rot;
                uint64_t n = 1 + (i * 7) % 5;
                if (kms_usage_take(u, id, 2, n, &rot) != KMS_OK)
                    _exit(1);
                total += n;
                /* Acknowledged: from here the encryption may have happened. */
                if (write(fd[1], &total, sizeof(total)) != sizeof(total))
                    _exit(1);
            }
            raise(SIGKILL);
            _exit(2);
        }
        close(fd[1]);
        uint64_t acked = 0, t;
        while (read(fd[0], &t, sizeof(t)) == sizeof(t))
            acked = t;
        close(fd[0]);
        int status = 0;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                      "child did not die as planned (status %d)", status);
        open_store();
        uint64_t before = 0;
        ck_ok(kms_store_usage_get(store, id, 2, &before));
        /* This round counted `acked` on top of what the store held before. */
        static uint64_t floor_total;
        floor_total += acked;
        ck_assert_msg(before >= floor_total, "round %d: store says %llu, counted %llu", round,
                      (unsigned long long)before, (unsigned long long)floor_total);
        /* Over by at most one block per crash. */
        ck_assert_uint_le(before, floor_total + 16 * (uint64_t)(round + 1));
        /* The next process starts from the over-estimate, never from less. */
        floor_total = before;
        ck_assert_uint_eq(stored(id, 1), 0); /* the other version is untouched */
        kms_store_free(store);
        store = NULL;
    }
    open_store();
}
END_TEST

/* Dropping the table without giving back (as a crash does, in-process):
 * the reopened store's count covers every take; a new table continues
 * from there. */
START_TEST(test_abandon_then_continue)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 3, 1, 1000, KMS_KEY_ORIGIN_HSM);
    struct kms_usage *u = usage_new(1000, 1000, 64);
    bool rot;
    for (int i = 0; i < 70; i++)
        ck_ok(kms_usage_take(u, id, 1, 1, &rot));
    kms_usage_abandon(u);
    reopen_store();
    ck_assert_uint_eq(stored(id, 1), 128); /* two blocks reserved, 70 used */
    u = usage_new(1000, 1000, 64);
    uint64_t c = 0;
    ck_ok(kms_usage_count(u, id, 1, &c));
    ck_assert_uint_eq(c, 128); /* unknown use counts as used */
    ck_ok(kms_usage_take(u, id, 1, 1, &rot));
    ck_ok(kms_usage_count(u, id, 1, &c));
    ck_assert_uint_eq(c, 129);
    kms_usage_free(u);
    ck_assert_uint_eq(stored(id, 1), 129);
}
END_TEST

/* The limit is never passed, a refused take counts nothing, and the
 * rotation is asked for exactly once, by the take that reaches rotate_at. */
START_TEST(test_limit_and_rotate_once)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 4, 1, 1000, KMS_KEY_ORIGIN_HSM);
    struct kms_usage *u = usage_new(20, 30, 8);
    int asked = 0;
    uint64_t at = 0;
    for (uint64_t i = 1; i <= 30; i++) {
        bool rot = false;
        ck_ok(kms_usage_take(u, id, 1, 1, &rot));
        if (rot) {
            asked++;
            at = i;
        }
    }
    ck_assert_int_eq(asked, 1);
    ck_assert_uint_eq(at, 20);
    bool rot = true;
    ck_err(kms_usage_take(u, id, 1, 1, &rot), KMS_ERR_FAILED_PRECONDITION);
    ck_assert(!rot);
    ck_assert_msg(strstr(kms_err_detail(), "limit of 30") != NULL, "%s", kms_err_detail());
    /* A request larger than any version's limit is told so, not told to
     * rotate (rotating would not help). */
    ck_err(kms_usage_take(u, id, 1, 31, &rot), KMS_ERR_FAILED_PRECONDITION);
    ck_assert_msg(strstr(kms_err_detail(), "more than a key version's limit of 30") != NULL,
                  "%s", kms_err_detail());
    ck_assert_uint_le(stored(id, 1), 30);
    uint64_t c = 0;
    ck_ok(kms_usage_count(u, id, 1, &c));
    ck_assert_uint_eq(c, 30);
    struct kms_usage_stats st;
    kms_usage_stats(u, &st);
    ck_assert_uint_eq(st.refused, 1 + 31);
    ck_assert_uint_eq(st.max_count, 30);
    kms_usage_free(u);

    /* A batch that would cross the limit is refused whole. */
    char id2[KMS_KEY_ID_SIZE];
    make_key(id2, 5, 1, 1000, KMS_KEY_ORIGIN_HSM);
    u = usage_new(20, 30, 8);
    ck_ok(kms_usage_take(u, id2, 1, 25, &rot));
    ck_assert(rot);
    ck_err(kms_usage_take(u, id2, 1, 6, &rot), KMS_ERR_FAILED_PRECONDITION);
    ck_ok(kms_usage_count(u, id2, 1, &c));
    ck_assert_uint_eq(c, 25);
    ck_ok(kms_usage_take(u, id2, 1, 5, &rot));
    ck_assert(!rot); /* asked once already */
    kms_usage_free(u);
    ck_assert_uint_eq(stored(id2, 1), 30);

    /* After a restart at or past rotate_at, the first take asks again (the
     * earlier process may have died before rotating). */
    u = usage_new(20, 40, 8);
    ck_ok(kms_usage_take(u, id2, 1, 1, &rot));
    ck_assert(rot);
    kms_usage_free(u);
}
END_TEST

/* Destroyed, missing and never-activated versions are not counted: the
 * encryption fails closed. */
START_TEST(test_unknown_version_fails_closed)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 6, 1, 1000, KMS_KEY_ORIGIN_HSM);
    struct kms_usage *u = usage_new(100, 100, 4);
    bool rot;
    ck_err(kms_usage_take(u, id, 2, 1, &rot), KMS_ERR_NOT_FOUND);
    uint8_t hid[KMS_HSM_ID_LEN];
    memset(hid, 0x77, sizeof(hid));
    uint32_t v = 0;
    ck_ok(kms_store_version_add(store, id, hid, 2000, &v)); /* CREATING */
    ck_err(kms_usage_take(u, id, v, 1, &rot), KMS_ERR_NOT_FOUND);
    ck_err(kms_store_usage_reserve(store, id, v, 4, &(uint64_t){0}), KMS_ERR_NOT_FOUND);
    kms_usage_free(u);
}
END_TEST

struct racer {
    struct kms_usage *u;
    const char *id;
    int asked;
    int failed;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    for (int i = 0; i < 500; i++) {
        bool rot = false;
        if (kms_usage_take(r->u, r->id, 1, 1, &rot) != KMS_OK)
            r->failed++;
        r->asked += rot;
    }
    return NULL;
}

/* Eight threads on one version: every take counted once, one rotation
 * asked, the durable count covers them all. */
START_TEST(test_concurrent_takes)
{
    char id[KMS_KEY_ID_SIZE];
    make_key(id, 7, 1, 1000, KMS_KEY_ORIGIN_HSM);
    struct kms_usage *u = usage_new(1000, 100000, 32);
    struct racer r[8];
    pthread_t t[8];
    for (int i = 0; i < 8; i++) {
        r[i] = (struct racer){u, id, 0, 0};
        ck_assert_int_eq(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    int asked = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(r[i].failed, 0);
        asked += r[i].asked;
    }
    ck_assert_int_eq(asked, 1);
    uint64_t c = 0;
    ck_ok(kms_usage_count(u, id, 1, &c));
    ck_assert_uint_eq(c, 4000);
    ck_assert_uint_ge(stored(id, 1), 4000);
    kms_usage_abandon(u);
    ck_assert_uint_ge(stored(id, 1), 4000);
}
END_TEST

/* The sweeper's queries: versions over the threshold, keys whose period
 * elapsed; periods set and read; only ENABLED keys of origin HSM. */
START_TEST(test_store_queries)
{
    char a[KMS_KEY_ID_SIZE], b[KMS_KEY_ID_SIZE], c[KMS_KEY_ID_SIZE];
    make_key(a, 10, 3, 1000000, KMS_KEY_ORIGIN_HSM);
    make_key(b, 11, 1, 2000000, KMS_KEY_ORIGIN_HSM);
    make_key(c, 12, 1, 1000000, KMS_KEY_ORIGIN_HSM);
    uint64_t total = 0;
    ck_ok(kms_store_usage_reserve(store, a, 1, 500, &total)); /* not current */
    ck_ok(kms_store_usage_reserve(store, a, 3, 99, &total));
    ck_ok(kms_store_usage_reserve(store, b, 1, 100, &total));
    ck_assert_uint_eq(total, 100);
    struct kms_store_usage_row *rows = NULL;
    size_t n = 0;
    ck_ok(kms_store_usage_over(store, 100, 10, &rows, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(rows[0].key_id, b);
    ck_assert_uint_eq(rows[0].version, 1);
    ck_assert_uint_eq(rows[0].encryptions, 100);
    free(rows);
    /* Released, never below zero. */
    ck_ok(kms_store_usage_release(store, b, 1, 1000));
    ck_assert_uint_eq(stored(b, 1), 0);

    uint64_t p = 1;
    ck_ok(kms_store_rotation_period_get(store, a, &p));
    ck_assert_uint_eq(p, 0);
    ck_ok(kms_store_rotation_period_set(store, a, 3600));
    ck_ok(kms_store_rotation_period_set(store, b, 3600));
    ck_ok(kms_store_rotation_period_get(store, a, &p));
    ck_assert_uint_eq(p, 3600);
    /* a's current version (3) was made at 1000000, b's at 2000000; c has
     * no period. */
    ck_ok(kms_store_rotation_due(store, 1003599, 10, &rows, &n));
    ck_assert_uint_eq(n, 0);
    free(rows);
    ck_ok(kms_store_rotation_due(store, 1003600, 10, &rows, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(rows[0].key_id, a);
    ck_assert_uint_eq(rows[0].version, 3);
    free(rows);
    /* A disabled key is not rotated; nor is one without a period. */
    ck_ok(kms_store_key_set_state(store, a, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
    ck_ok(kms_store_rotation_due(store, 3000000, 10, &rows, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(rows[0].key_id, b);
    free(rows);
    ck_err(kms_store_rotation_period_set(store, "0123456789abcdef0123456789abcdef", 60),
           KMS_ERR_NOT_FOUND);
    ck_err(kms_store_rotation_period_get(store, "not-a-key-id", &p), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

static Suite *usage_suite(void)
{
    Suite *s = suite_create("kms_usage");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"reserve_before_use", test_reserve_before_use},
        {"crash_never_undercounts", test_crash_never_undercounts},
        {"abandon_then_continue", test_abandon_then_continue},
        {"limit_and_rotate_once", test_limit_and_rotate_once},
        {"unknown_version_fails_closed", test_unknown_version_fails_closed},
        {"concurrent_takes", test_concurrent_takes},
        {"store_queries", test_store_queries},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    if (!testpg_available())
        return s;
    static char names[16][64];
    _Static_assert(sizeof(cases) / sizeof(cases[0]) <= 16, "names[] holds every case");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(names[i], sizeof(names[i]), "pg/%s", cases[i].name);
        TCase *tc = tcase_create(names[i]);
        tcase_add_checked_fixture(tc, setup_pg, teardown_pg);
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    const char *base = getenv("CUSTOS_TEST_WORK");
    snprintf(workroot, sizeof(workroot), "%s/test_kms_usage.XXXXXX",
             base && *base ? base : "/tmp");
    if (mkdtemp(workroot) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(usage_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(workroot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
