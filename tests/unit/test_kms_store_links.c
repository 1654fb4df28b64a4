/*
 * test_kms_store_links.c - link tokens in the store (kms_store_links.h):
 * the order in which a redemption is judged, attempts that void a token,
 * the per-recipient window, revocation, the sweep, and single use under
 * concurrency: 8 threads redeeming one token through the store's
 * compare-and-set, exactly one accepted.
 */
#include <check.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_log.h"
#include "kms_store.h"
#include "kms_store_links.h"

static char workroot[4096], tmpdir[4200], dbpath[4300];
static struct kms_store *store;
static const char KEY[] = "0000000100c0ffee0000000000000001";

#define ck_ok(expr)                                                                                \
    do {                                                                                           \
        kms_err ck_rc_ = (expr);                                                                   \
        ck_assert_msg(ck_rc_ == KMS_OK, "%s: %s: %s", #expr, kms_strerror(ck_rc_),                 \
                      kms_err_detail());                                                           \
    } while (0)

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
    ck_ok(kms_store_open(dbpath, &store));
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    snprintf(k.key_id, sizeof(k.key_id), "%s", KEY);
    snprintf(k.tenant, sizeof(k.tenant), "demo");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos-eu-west");
    k.spec = KMS_KEY_SPEC_HMAC_256;
    k.usage = KMS_KEY_USAGE_LINK_TOKEN;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = 1000;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = 1000;
    memset(v.hsm_id, 0x5a, sizeof(v.hsm_id));
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, KEY, 1));
}

static void teardown(void)
{
    kms_store_free(store);
    store = NULL;
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Token n: id n, recipient n, hash n, expiring at 2000, purpose "p". */
static struct kms_link_record token(uint8_t n)
{
    struct kms_link_record r;
    memset(&r, 0, sizeof(r));
    snprintf(r.key_id, sizeof(r.key_id), "%s", KEY);
    memset(r.token_id, n, sizeof(r.token_id));
    r.version = 1;
    snprintf(r.region, sizeof(r.region), "eu-west");
    snprintf(r.tenant, sizeof(r.tenant), "demo");
    r.expires_at = 2000;
    r.created_at = 1500;
    r.max_attempts = 3;
    memset(r.recipient, n, sizeof(r.recipient));
    memset(r.token_hash, n, sizeof(r.token_hash));
    snprintf(r.purpose, sizeof(r.purpose), "p");
    snprintf(r.message_ref, sizeof(r.message_ref), "ref-%u", n % 2);
    return r;
}

/* An attempt that matches token n in every respect. */
struct att {
    struct kms_link_attempt a;
    uint8_t id[KMS_LINK_ID_LEN], rec[KMS_LINK_RECIPIENT_LEN], hash[KMS_LINK_HASH_LEN];
};

static void attempt(struct att *x, uint8_t n)
{
    memset(x, 0, sizeof(*x));
    memset(x->id, n, sizeof(x->id));
    memset(x->rec, n, sizeof(x->rec));
    memset(x->hash, n, sizeof(x->hash));
    x->a = (struct kms_link_attempt){.key_id = KEY,
                                     .token_id = x->id,
                                     .version = 1,
                                     .expires_at = 2000,
                                     .token_hash = x->hash,
                                     .recipient = x->rec,
                                     .purpose = "p",
                                     .mac_ok = true,
                                     .now = 1600,
                                     .skew_s = 30,
                                     .rate_limit = 1000,
                                     .rate_window_s = 900};
}

static enum kms_link_verdict redeem(struct att *x)
{
    enum kms_link_verdict v = KMS_LINK_ACCEPTED;
    ck_ok(kms_store_link_redeem(store, &x->a, &v, NULL));
    return v;
}

static struct kms_link_record row(uint8_t n, bool *found)
{
    struct kms_link_record r;
    uint8_t id[KMS_LINK_ID_LEN];
    memset(id, n, sizeof(id));
    ck_ok(kms_store_link_get(store, KEY, id, &r, found));
    return r;
}

START_TEST(insert_and_get)
{
    struct kms_link_record t = token(1);
    ck_ok(kms_store_link_insert(store, &t));
    ck_assert_int_eq(kms_store_link_insert(store, &t), KMS_ERR_ALREADY_EXISTS);
    bool found = false;
    struct kms_link_record r = row(1, &found);
    ck_assert(found);
    ck_assert_int_eq(r.state, KMS_LINK_LIVE);
    ck_assert_uint_eq(r.attempts, 0);
    ck_assert_mem_eq(r.recipient, t.recipient, sizeof(t.recipient));
    ck_assert_str_eq(r.message_ref, "ref-1");
    row(9, &found);
    ck_assert(!found);
    /* A key the store does not know: nothing written. */
    struct kms_link_record other = token(2);
    snprintf(other.key_id, sizeof(other.key_id), "%s", "0000000100c0ffee0000000000000002");
    ck_assert_int_eq(kms_store_link_insert(store, &other), KMS_ERR_NOT_FOUND);
    /* Bounds: an empty purpose, no attempts, expiry before creation. */
    other = token(3);
    other.purpose[0] = '\0';
    ck_assert_int_eq(kms_store_link_insert(store, &other), KMS_ERR_INVALID_ARGUMENT);
    other = token(3);
    other.max_attempts = 0;
    ck_assert_int_eq(kms_store_link_insert(store, &other), KMS_ERR_INVALID_ARGUMENT);
    other = token(3);
    other.expires_at = other.created_at;
    ck_assert_int_eq(kms_store_link_insert(store, &other), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(verdicts_in_order)
{
    struct kms_link_record t = token(1);
    t.max_attempts = 100;
    ck_ok(kms_store_link_insert(store, &t));
    struct att x;
    attempt(&x, 2);
    ck_assert_int_eq(redeem(&x), KMS_LINK_UNKNOWN);
    /* Forged beats everything: hash, version or expiry not the minted. */
    attempt(&x, 1);
    x.hash[0] ^= 1;
    x.a.now = 9999;
    ck_assert_int_eq(redeem(&x), KMS_LINK_FORGED);
    attempt(&x, 1);
    x.a.expires_at = 2001;
    ck_assert_int_eq(redeem(&x), KMS_LINK_FORGED);
    attempt(&x, 1);
    x.a.version = 2;
    ck_assert_int_eq(redeem(&x), KMS_LINK_FORGED);
    /* Expiry with its skew, before the binding. */
    attempt(&x, 1);
    x.a.now = 2031;
    x.rec[0] ^= 1;
    ck_assert_int_eq(redeem(&x), KMS_LINK_EXPIRED);
    attempt(&x, 1);
    x.rec[0] ^= 1;
    x.a.purpose = "q";
    ck_assert_int_eq(redeem(&x), KMS_LINK_WRONG_RECIPIENT);
    attempt(&x, 1);
    x.a.purpose = "q";
    x.a.mac_ok = false;
    ck_assert_int_eq(redeem(&x), KMS_LINK_WRONG_PURPOSE);
    attempt(&x, 1);
    x.a.mac_ok = false;
    ck_assert_int_eq(redeem(&x), KMS_LINK_WRONG_DEVICE);
    bool found;
    ck_assert_uint_eq(row(1, &found).attempts, 7);
    attempt(&x, 1);
    x.a.now = 2030; /* the last second of the skew */
    ck_assert_int_eq(redeem(&x), KMS_LINK_ACCEPTED);
    ck_assert_int_eq(row(1, &found).state, KMS_LINK_USED);
    ck_assert_int_eq(redeem(&x), KMS_LINK_ALREADY_USED);
    ck_assert_uint_eq(row(1, &found).attempts, 8);
}
END_TEST

START_TEST(attempts_void_the_token)
{
    struct kms_link_record t = token(1); /* max_attempts 3 */
    ck_ok(kms_store_link_insert(store, &t));
    struct att x;
    for (int i = 0; i < 3; i++) {
        attempt(&x, 1);
        x.a.mac_ok = false;
        ck_assert_int_eq(redeem(&x), KMS_LINK_WRONG_DEVICE);
    }
    bool found;
    ck_assert_int_eq(row(1, &found).state, KMS_LINK_VOID);
    attempt(&x, 1);
    ck_assert_int_eq(redeem(&x), KMS_LINK_EXHAUSTED);
    ck_assert_uint_eq(row(1, &found).attempts, 3);
}
END_TEST

START_TEST(recipient_window)
{
    struct kms_link_record t = token(1);
    ck_ok(kms_store_link_insert(store, &t));
    struct att x;
    for (int i = 0; i < 2; i++) {
        attempt(&x, 7); /* another token, the same recipient each time */
        memset(x.rec, 1, sizeof(x.rec));
        x.a.rate_limit = 2;
        ck_assert_int_eq(redeem(&x), KMS_LINK_UNKNOWN);
    }
    attempt(&x, 1);
    x.a.rate_limit = 2;
    ck_assert_int_eq(redeem(&x), KMS_LINK_RATE_LIMITED);
    bool found;
    ck_assert_uint_eq(row(1, &found).attempts, 0);
    /* Another recipient is not limited by this one's count. */
    attempt(&x, 3);
    x.a.rate_limit = 2;
    ck_assert_int_eq(redeem(&x), KMS_LINK_UNKNOWN);
    /* The window over, the count starts again. */
    attempt(&x, 1);
    x.a.rate_limit = 2;
    x.a.now = 1600 + 900;
    x.a.skew_s = 1000;
    ck_assert_int_eq(redeem(&x), KMS_LINK_ACCEPTED);
}
END_TEST

START_TEST(revoke_and_sweep)
{
    for (uint8_t n = 1; n <= 4; n++) {
        struct kms_link_record t = token(n);
        if (n == 4)
            t.expires_at = 5000;
        ck_ok(kms_store_link_insert(store, &t));
    }
    uint8_t ids[2][KMS_LINK_ID_LEN];
    memset(ids[0], 1, KMS_LINK_ID_LEN);
    memset(ids[1], 9, KMS_LINK_ID_LEN);
    uint32_t n = 0;
    ck_ok(kms_store_link_revoke(store, KEY, (const uint8_t(*)[KMS_LINK_ID_LEN])ids, 2, NULL, &n));
    ck_assert_uint_eq(n, 1);
    ck_ok(kms_store_link_revoke(store, KEY, (const uint8_t(*)[KMS_LINK_ID_LEN])ids, 2, NULL, &n));
    ck_assert_uint_eq(n, 0);
    /* ref-0: tokens 2 and 4. */
    ck_ok(kms_store_link_revoke(store, KEY, NULL, 0, "ref-0", &n));
    ck_assert_uint_eq(n, 2);
    struct att x;
    attempt(&x, 1);
    ck_assert_int_eq(redeem(&x), KMS_LINK_WAS_REVOKED);
    attempt(&x, 3);
    ck_assert_int_eq(redeem(&x), KMS_LINK_ACCEPTED);
    ck_assert_int_eq(kms_store_link_revoke(store, KEY, NULL, 0, "", &n), KMS_ERR_INVALID_ARGUMENT);
    /* Rows that expired before 2001 go; token 4 (5000) stays. */
    size_t swept = 0;
    ck_ok(kms_store_link_sweep(store, 2001, 1000, &swept));
    ck_assert_uint_eq(swept, 3);
    bool found;
    row(1, &found);
    ck_assert(!found);
    row(4, &found);
    ck_assert(found);
}
END_TEST

struct racer {
    int accepted, used;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    for (int i = 0; i < 25; i++) {
        struct att x;
        attempt(&x, 1);
        enum kms_link_verdict v = KMS_LINK_UNKNOWN;
        if (kms_store_link_redeem(store, &x.a, &v, NULL) != KMS_OK)
            continue;
        r->accepted += v == KMS_LINK_ACCEPTED;
        r->used += v == KMS_LINK_ALREADY_USED;
    }
    return NULL;
}

START_TEST(single_use_under_concurrency)
{
    struct kms_link_record t = token(1);
    ck_ok(kms_store_link_insert(store, &t));
    pthread_t th[8];
    struct racer r[8];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, race, &r[i]);
    int accepted = 0, used = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        accepted += r[i].accepted;
        used += r[i].used;
    }
    ck_assert_int_eq(accepted, 1);
    ck_assert_int_eq(used, 8 * 25 - 1);
}
END_TEST

int main(void)
{
    const char *base = getenv("CUSTOS_TEST_WORK");
    snprintf(workroot, sizeof(workroot), "%s/test_kms_store_links.XXXXXX",
             base && *base ? base : "/tmp");
    if (mkdtemp(workroot) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("kms_store_links");
    TCase *tc = tcase_create("links");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, insert_and_get);
    tcase_add_test(tc, verdicts_in_order);
    tcase_add_test(tc, attempts_void_the_token);
    tcase_add_test(tc, recipient_window);
    tcase_add_test(tc, revoke_and_sweep);
    tcase_add_test(tc, single_use_under_concurrency);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(workroot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
