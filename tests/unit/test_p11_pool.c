/*
 * test_p11_pool.c - the session pool (pkcs11/p11_pool.c) on its own, with
 * real SoftHSMv2 sessions of the test run's eu-west token, and through the
 * token (p11_session_take/give, p11_token_pool_stats).
 *
 * The pool under test is given operations that open and close real
 * sessions of the token (already logged in by the testenv, so each new
 * session is a user session) and count what they were asked to do: the
 * tests assert on those counts, never on timing.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_pool.h"
#include "testenv.h"

static struct testenv env;

static void setup(void)
{
    testenv_open(&env);
}

static void teardown(void)
{
    testenv_close(&env);
}

/* What the pool asked of its owner. */
struct spy {
    struct p11_token *tok;
    atomic_int opens, closes, alive_calls;
    atomic_int fail_next_open;
};

static kms_err spy_open(void *ctx, CK_SESSION_HANDLE *out)
{
    struct spy *sp = ctx;
    if (atomic_exchange(&sp->fail_next_open, 0))
        return kms_err_set(KMS_ERR_HSM, "spy: open refused");
    CK_RV rv = sp->tok->fl->C_OpenSession(sp->tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
                                          NULL, NULL, out);
    if (rv != CKR_OK)
        return kms_err_set(KMS_ERR_HSM, "spy: C_OpenSession 0x%lx", (unsigned long)rv);
    atomic_fetch_add(&sp->opens, 1);
    return KMS_OK;
}

static void spy_close(void *ctx, CK_SESSION_HANDLE s)
{
    struct spy *sp = ctx;
    sp->tok->fl->C_CloseSession(s);
    atomic_fetch_add(&sp->closes, 1);
}

static bool spy_alive(void *ctx, CK_SESSION_HANDLE s, bool *out_exists)
{
    struct spy *sp = ctx;
    atomic_fetch_add(&sp->alive_calls, 1);
    CK_SESSION_INFO si;
    CK_RV rv = sp->tok->fl->C_GetSessionInfo(s, &si);
    *out_exists = rv == CKR_OK;
    return rv == CKR_OK && si.state == CKS_RW_USER_FUNCTIONS;
}

static const struct p11_pool_ops spy_ops = {spy_open, spy_close, spy_alive};

static struct p11_pool *spy_pool(struct spy *sp, size_t cap)
{
    memset(sp, 0, sizeof(*sp));
    sp->tok = env.eu;
    struct p11_pool *p = NULL;
    ck_assert_int_eq(p11_pool_new(cap, &spy_ops, sp, "spy", &p), KMS_OK);
    return p;
}

static void counts(struct p11_pool *p, size_t open, size_t idle, unsigned long replaced)
{
    struct p11_pool_counts c;
    p11_pool_counts(p, &c);
    ck_assert_uint_eq(c.open, open);
    ck_assert_uint_eq(c.idle, idle);
    ck_assert_uint_eq(c.replaced, replaced);
}

/* Does the handle name a logged-in session of the token right now? */
static bool usable(CK_SESSION_HANDLE s)
{
    CK_SESSION_INFO si;
    return env.eu->fl->C_GetSessionInfo(s, &si) == CKR_OK && si.state == CKS_RW_USER_FUNCTIONS;
}

START_TEST(new_refuses_zero_cap)
{
    struct spy sp;
    memset(&sp, 0, sizeof(sp));
    struct p11_pool *p = (void *)1;
    ck_assert_int_eq(p11_pool_new(0, &spy_ops, &sp, "spy", &p), KMS_ERR_USAGE);
    ck_assert_ptr_null(p);
    p11_pool_free(NULL); /* a no-op */
}
END_TEST

START_TEST(take_and_give_reuse_idle_sessions)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 3);
    counts(p, 0, 0, 0);
    CK_SESSION_HANDLE a, b;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    ck_assert(usable(a));
    counts(p, 1, 0, 0);
    p11_pool_give(p, a, false);
    counts(p, 1, 1, 0);
    /* The idle session is lent again; nothing new is opened. */
    ck_assert_int_eq(p11_pool_take(p, &b), KMS_OK);
    ck_assert_uint_eq(b, a);
    ck_assert_int_eq(atomic_load(&sp.opens), 1);
    p11_pool_give(p, b, false);
    /* Free closes what is idle. */
    p11_pool_free(p);
    ck_assert_int_eq(atomic_load(&sp.closes), 1);
    ck_assert(!usable(a));
}
END_TEST

START_TEST(grows_to_cap_then_fails_after_waiting)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 3);
    CK_SESSION_HANDLE s[3], extra = CK_INVALID_HANDLE;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(p11_pool_take(p, &s[i]), KMS_OK);
        for (int j = 0; j < i; j++)
            ck_assert_uint_ne(s[i], s[j]);
    }
    counts(p, 3, 0, 0);
    ck_assert_int_eq(atomic_load(&sp.opens), 3);
    bool busy = false;
    ck_assert_int_eq(p11_pool_take_idle(p, &extra, &busy), KMS_ERR_NOT_FOUND);
    ck_assert(busy);
    /* Full: the fourth lease waits its bound, then fails; nothing more was
     * opened. */
    ck_assert_int_eq(p11_pool_take(p, &extra), KMS_ERR_RESOURCE_EXHAUSTED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "all 3 sessions busy"));
    ck_assert_int_eq(atomic_load(&sp.opens), 3);
    counts(p, 3, 0, 0);
    for (int i = 0; i < 3; i++)
        p11_pool_give(p, s[i], false);
    counts(p, 3, 3, 0);
    p11_pool_free(p);
}
END_TEST

struct taker {
    struct p11_pool *p;
    CK_SESSION_HANDLE s;
    kms_err rc;
    atomic_bool done;
};

static void *take_thread(void *arg)
{
    struct taker *t = arg;
    t->rc = p11_pool_take(t->p, &t->s);
    atomic_store(&t->done, true);
    return NULL;
}

START_TEST(full_pool_blocks_until_a_return)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 1);
    CK_SESSION_HANDLE a;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    struct taker t = {p, CK_INVALID_HANDLE, KMS_ERR_INTERNAL, false};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, take_thread, &t), 0);
    /* While the only session is lent, the taker cannot have finished. */
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    ck_assert(!atomic_load(&t.done));
    p11_pool_give(p, a, false);
    pthread_join(th, NULL);
    ck_assert_int_eq(t.rc, KMS_OK);
    ck_assert_uint_eq(t.s, a); /* the returned session, not a new one */
    ck_assert_int_eq(atomic_load(&sp.opens), 1);
    p11_pool_give(p, t.s, false);
    p11_pool_free(p);
}
END_TEST

START_TEST(failed_open_does_not_count)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 1);
    atomic_store(&sp.fail_next_open, 1);
    CK_SESSION_HANDLE a;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_ERR_HSM);
    counts(p, 0, 0, 0);
    /* The slot it would have taken is free again. */
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    counts(p, 1, 0, 0);
    p11_pool_give(p, a, false);
    p11_pool_free(p);
}
END_TEST

START_TEST(broken_session_is_closed_not_reused)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 2);
    CK_SESSION_HANDLE a, b;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    p11_pool_give(p, a, true);
    /* Closed at once and counted; the pool holds nothing. */
    ck_assert_int_eq(atomic_load(&sp.closes), 1);
    ck_assert(!usable(a));
    counts(p, 0, 0, 1);
    /* The next lease is a session opened for it (the module may reuse the
     * handle number, so the count is what tells). */
    ck_assert_int_eq(p11_pool_take(p, &b), KMS_OK);
    ck_assert_int_eq(atomic_load(&sp.opens), 2);
    ck_assert(usable(b));
    p11_pool_give(p, b, false);
    p11_pool_free(p);
}
END_TEST

START_TEST(broken_return_purges_dead_idle_sessions)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 3);
    CK_SESSION_HANDLE a, b, c;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    ck_assert_int_eq(p11_pool_take(p, &b), KMS_OK);
    ck_assert_int_eq(p11_pool_take(p, &c), KMS_OK);
    p11_pool_give(p, b, false);
    p11_pool_give(p, c, false);
    /* b dies under the pool (as in a token reset); c stays alive. */
    ck_assert_uint_eq(env.eu->fl->C_CloseSession(b), CKR_OK);
    p11_pool_give(p, a, true);
    /* a was closed; b was found dead and dropped without a second close
     * (its handle number may already name another session); c is kept. */
    ck_assert_int_eq(atomic_load(&sp.closes), 1);
    ck_assert_int_ge(atomic_load(&sp.alive_calls), 2);
    counts(p, 1, 1, 2);
    CK_SESSION_HANDLE d;
    ck_assert_int_eq(p11_pool_take(p, &d), KMS_OK);
    ck_assert_uint_eq(d, c);
    p11_pool_give(p, d, false);
    p11_pool_free(p);
}
END_TEST

START_TEST(frozen_pool_lends_nothing)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 2);
    CK_SESSION_HANDLE a, b;
    ck_assert_int_eq(p11_pool_take(p, &a), KMS_OK);
    p11_pool_freeze(p);
    bool busy;
    ck_assert_int_eq(p11_pool_take_idle(p, &b, &busy), KMS_ERR_HSM_UNAVAILABLE);
    ck_assert(!p11_pool_probe_begin(p));
    /* A lease is out: not drained by a deadline already past. */
    struct timespec past;
    clock_gettime(CLOCK_REALTIME, &past);
    ck_assert(!p11_pool_wait_drained(p, &past));
    p11_pool_give(p, a, false);
    ck_assert(p11_pool_wait_drained(p, &past));
    /* forget drops the idle sessions without closing them. */
    p11_pool_forget(p);
    ck_assert_int_eq(atomic_load(&sp.closes), 0);
    counts(p, 0, 0, 0);
    p11_pool_thaw(p);
    ck_assert(p11_pool_probe_begin(p));
    ck_assert(!p11_pool_wait_drained(p, &past)); /* a probe runs */
    p11_pool_probe_end(p);
    ck_assert_int_eq(p11_pool_take(p, &b), KMS_OK);
    ck_assert_int_eq(atomic_load(&sp.opens), 2);
    p11_pool_give(p, b, false);
    p11_pool_free(p);
    /* The forgotten session was never closed by the pool: close it here. */
    env.eu->fl->C_CloseSession(a);
}
END_TEST

/* ---- several threads borrowing at once ----------------------------------- */

#define BORROWERS 8
#define ROUNDS 300

static pthread_mutex_t held_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_SESSION_HANDLE held[BORROWERS];
static atomic_int doubles, failures;

struct borrower {
    struct p11_pool *p;
    int idx;
};

static void *borrow_loop(void *arg)
{
    struct borrower *b = arg;
    for (int i = 0; i < ROUNDS; i++) {
        CK_SESSION_HANDLE s;
        if (p11_pool_take(b->p, &s) != KMS_OK) {
            atomic_fetch_add(&failures, 1);
            continue;
        }
        pthread_mutex_lock(&held_lock);
        for (int j = 0; j < BORROWERS; j++)
            if (held[j] == s)
                atomic_fetch_add(&doubles, 1); /* lent to two threads at once */
        held[b->idx] = s;
        pthread_mutex_unlock(&held_lock);
        CK_SESSION_INFO si;
        if (env.eu->fl->C_GetSessionInfo(s, &si) != CKR_OK)
            atomic_fetch_add(&failures, 1);
        pthread_mutex_lock(&held_lock);
        held[b->idx] = CK_INVALID_HANDLE;
        pthread_mutex_unlock(&held_lock);
        p11_pool_give(b->p, s, false);
    }
    return NULL;
}

START_TEST(concurrent_borrowers_never_share_a_session)
{
    struct spy sp;
    struct p11_pool *p = spy_pool(&sp, 3);
    pthread_t th[BORROWERS];
    struct borrower bs[BORROWERS];
    for (int i = 0; i < BORROWERS; i++)
        held[i] = CK_INVALID_HANDLE; /* before any borrower reads it */
    for (int i = 0; i < BORROWERS; i++) {
        bs[i] = (struct borrower){p, i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, borrow_loop, &bs[i]), 0);
    }
    for (int i = 0; i < BORROWERS; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(atomic_load(&doubles), 0);
    ck_assert_int_eq(atomic_load(&failures), 0);
    /* Never more than cap sessions, all back and idle, none replaced. */
    ck_assert_int_le(atomic_load(&sp.opens), 3);
    struct p11_pool_counts c;
    p11_pool_counts(p, &c);
    ck_assert_uint_le(c.open, 3);
    ck_assert_uint_eq(c.idle, c.open);
    ck_assert_uint_eq(c.replaced, 0);
    ck_assert_uint_eq(c.open, (size_t)atomic_load(&sp.opens));
    p11_pool_free(p);
}
END_TEST

/* ---- through the token ------------------------------------------------- */

START_TEST(token_give_broken_clears_cache_and_counts)
{
    struct p11_pool_stats before, after;
    p11_token_pool_stats(env.eu, &before);
    uint8_t id[P11_KEY_ID_LEN] = {1, 2, 3};
    p11_cache_put(&env.eu->cache, id, CKO_SECRET_KEY, CKK_AES, 42);
    CK_SESSION_HANDLE s;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    p11_session_give(env.eu, s, true);
    CK_OBJECT_HANDLE h;
    ck_assert(!p11_cache_get(&env.eu->cache, id, CKO_SECRET_KEY, CKK_AES, &h));
    p11_token_pool_stats(env.eu, &after);
    ck_assert_uint_eq(after.replaced, before.replaced + 1);
    ck_assert_uint_eq(after.open, before.open - 1);
    /* The token still serves: a new session is opened and logged in. */
    uint8_t buf[8];
    ck_assert_int_eq(p11_random(env.eu, buf, sizeof(buf)), KMS_OK);
}
END_TEST

START_TEST(token_check_uses_an_idle_session)
{
    struct p11_pool_stats st;
    p11_token_pool_stats(env.eu, &st);
    ck_assert_uint_ge(st.idle, 1);
    ck_assert_int_eq(p11_token_check(env.eu), KMS_OK);
    struct p11_pool_stats after;
    p11_token_pool_stats(env.eu, &after);
    ck_assert_uint_eq(after.open, st.open);
    ck_assert_uint_eq(after.idle, st.idle);
    /* A session that is not logged in is replaced, and the check says so:
     * C_Logout logs the whole application out of the token. */
    CK_SESSION_HANDLE s;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    ck_assert_uint_eq(env.eu->fl->C_Logout(s), CKR_OK);
    p11_session_give(env.eu, s, false);
    ck_assert_int_eq(p11_token_check(env.eu), KMS_ERR_HSM_SESSION);
    p11_token_pool_stats(env.eu, &after);
    ck_assert_uint_gt(after.replaced, st.replaced);
    /* The next lease logs in again. */
    ck_assert_int_eq(p11_token_check(env.eu), KMS_OK);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_pool");
    TCase *tc = tcase_create("pool");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, new_refuses_zero_cap);
    tcase_add_test(tc, take_and_give_reuse_idle_sessions);
    tcase_add_test(tc, grows_to_cap_then_fails_after_waiting);
    tcase_add_test(tc, full_pool_blocks_until_a_return);
    tcase_add_test(tc, failed_open_does_not_count);
    tcase_add_test(tc, broken_session_is_closed_not_reused);
    tcase_add_test(tc, broken_return_purges_dead_idle_sessions);
    tcase_add_test(tc, frozen_pool_lends_nothing);
    tcase_add_test(tc, concurrent_borrowers_never_share_a_session);
    suite_add_tcase(s, tc);
    TCase *tt = tcase_create("token");
    tcase_add_checked_fixture(tt, setup, teardown);
    tcase_add_test(tt, token_give_broken_clears_cache_and_counts);
    tcase_add_test(tt, token_check_uses_an_idle_session);
    suite_add_tcase(s, tt);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
