/*
 * test_kms_keycache.c - the key record cache (kms/store/kms_keycache.c)
 * over a real SQLite store. A hit is told from a miss by changing the store
 * behind the cache's back: a hit still answers the old record, a miss (first
 * read, after invalidate, after expiry, after the cache was emptied at its
 * size limit) answers the new one.
 */
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_store.h"
#include "testenv.h"

static char tmpdir[512];
static struct kms_store *store;
static struct kms_keycache *cache;

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

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/kc.XXXXXX", testenv_work_dir());
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    char db[600];
    snprintf(db, sizeof(db), "%s/custos.db", tmpdir);
    kms_log_set_level(KMS_LOG_ERROR);
    ck_ok(kms_store_open(db, &store));
    cache = NULL;
}

static void teardown(void)
{
    kms_keycache_free(cache);
    kms_store_free(store);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void key_id_of(char out[KMS_KEY_ID_SIZE], unsigned n)
{
    snprintf(out, KMS_KEY_ID_SIZE, "%08x%08x%016x", 0x6b63u, 0xc0ffeeu, n);
}

/* An ENABLED AES key n with version 1 active. */
static void create_key(unsigned n)
{
    struct kms_key_record k;
    struct kms_version_record v;
    memset(&k, 0, sizeof(k));
    memset(&v, 0, sizeof(v));
    key_id_of(k.key_id, n);
    snprintf(k.tenant, sizeof(k.tenant), "demo");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos-eu-west");
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = 1700000000 + n;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = k.created_at;
    memset(v.hsm_id, 0x5a, sizeof(v.hsm_id));
    memcpy(v.hsm_id, &n, sizeof(n));
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, k.key_id, 1));
}

/* Disable key n in the store without telling the cache. */
static void disable_behind(unsigned n)
{
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, n);
    ck_ok(kms_store_key_set_state(store, id, KMS_KEY_ENABLED, KMS_KEY_DISABLED, 0));
}

static enum kms_key_state state_of(unsigned n)
{
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, n);
    struct kms_key_record k;
    ck_ok(kms_keycache_key(cache, store, id, &k));
    ck_assert_str_eq(k.key_id, id);
    return k.state;
}

START_TEST(hit_serves_the_cached_record)
{
    ck_ok(kms_keycache_new(16, 60000, &cache));
    create_key(1);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED); /* miss: loaded */
    disable_behind(1);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED); /* hit: the cached record */
}
END_TEST

START_TEST(invalidate_makes_the_next_read_a_miss)
{
    ck_ok(kms_keycache_new(16, 60000, &cache));
    create_key(1);
    create_key(2);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED);
    ck_assert_int_eq(state_of(2), KMS_KEY_ENABLED);
    disable_behind(1);
    disable_behind(2);
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, 1);
    kms_keycache_invalidate(cache, id);
    ck_assert_int_eq(state_of(1), KMS_KEY_DISABLED);
    /* Only that key: the other is still served from the cache. */
    ck_assert_int_eq(state_of(2), KMS_KEY_ENABLED);
    /* Invalidating a key the cache does not hold is harmless. */
    key_id_of(id, 99);
    kms_keycache_invalidate(cache, id);
}
END_TEST

START_TEST(missing_key_is_not_cached)
{
    ck_ok(kms_keycache_new(16, 60000, &cache));
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, 7);
    struct kms_key_record k;
    ck_assert_int_eq(kms_keycache_key(cache, store, id, &k), KMS_ERR_NOT_FOUND);
    /* No negative entry: a key created afterwards is found at once. */
    create_key(7);
    ck_assert_int_eq(state_of(7), KMS_KEY_ENABLED);
}
END_TEST

START_TEST(entries_expire_after_ttl)
{
    ck_ok(kms_keycache_new(16, 20, &cache));
    create_key(1);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED);
    disable_behind(1);
    struct timespec pause = {0, 60 * 1000 * 1000};
    nanosleep(&pause, NULL);
    ck_assert_int_eq(state_of(1), KMS_KEY_DISABLED);
}
END_TEST

START_TEST(ttl_zero_always_asks_the_store)
{
    ck_ok(kms_keycache_new(16, 0, &cache));
    create_key(1);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED);
    disable_behind(1);
    ck_assert_int_eq(state_of(1), KMS_KEY_DISABLED);
}
END_TEST

START_TEST(full_cache_is_emptied_not_grown)
{
    ck_ok(kms_keycache_new(2, 60000, &cache));
    create_key(1);
    create_key(2);
    create_key(3);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED);
    ck_assert_int_eq(state_of(2), KMS_KEY_ENABLED);
    disable_behind(1);
    disable_behind(2);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED); /* both still cached */
    ck_assert_int_eq(state_of(2), KMS_KEY_ENABLED);
    /* A third key finds the cache at its limit: everything is dropped and
     * re-read on demand. */
    ck_assert_int_eq(state_of(3), KMS_KEY_ENABLED);
    ck_assert_int_eq(state_of(1), KMS_KEY_DISABLED);
    ck_assert_int_eq(state_of(2), KMS_KEY_DISABLED);
}
END_TEST

START_TEST(versions_cached_with_their_key)
{
    ck_ok(kms_keycache_new(16, 60000, &cache));
    create_key(1);
    char id[KMS_KEY_ID_SIZE];
    key_id_of(id, 1);
    ck_assert_int_eq(state_of(1), KMS_KEY_ENABLED);
    struct kms_version_record v;
    ck_ok(kms_keycache_version(cache, store, id, 1, &v));
    ck_assert_uint_eq(v.version, 1);
    ck_assert_int_eq(v.state, KMS_VERSION_ACTIVE);
    /* A rotation behind the cache's back: the key record is stale until
     * invalidated, but the new version is found (the store decides what the
     * cache does not hold). */
    uint8_t hsm[KMS_HSM_ID_LEN];
    memset(hsm, 0x77, sizeof(hsm));
    uint32_t nv = 0;
    ck_ok(kms_store_version_add(store, id, hsm, 1700000100, &nv));
    ck_assert_uint_eq(nv, 2);
    ck_ok(kms_store_version_activate(store, id, 2));
    struct kms_key_record k;
    ck_ok(kms_keycache_key(cache, store, id, &k));
    ck_assert_uint_eq(k.current_version, 1);
    ck_ok(kms_keycache_version(cache, store, id, 2, &v));
    ck_assert_uint_eq(v.version, 2);
    ck_assert_int_eq(kms_keycache_version(cache, store, id, 9, &v), KMS_ERR_NOT_FOUND);
    kms_keycache_invalidate(cache, id);
    ck_ok(kms_keycache_key(cache, store, id, &k));
    ck_assert_uint_eq(k.current_version, 2);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_keycache");
    TCase *tc = tcase_create("cache");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, hit_serves_the_cached_record);
    tcase_add_test(tc, invalidate_makes_the_next_read_a_miss);
    tcase_add_test(tc, missing_key_is_not_cached);
    tcase_add_test(tc, entries_expire_after_ttl);
    tcase_add_test(tc, ttl_zero_always_asks_the_store);
    tcase_add_test(tc, full_cache_is_emptied_not_grown);
    tcase_add_test(tc, versions_cached_with_their_key);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
