/*
 * test_kms_store_epoch.c - restore detection's store facts (kms_store_epoch.h)
 * against real SQLite files: audit watermarks, raw states, the version
 * floor, state rebuild, version reattach, confirmed unknown objects, and the
 * consistent snapshot with its fresh store_id.
 */
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_store.h"
#include "kms_store_epoch.h"
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

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/t.XXXXXX", workroot);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dbpath, sizeof(dbpath), "%s/kmsd.db", tmpdir);
    kms_log_set_level(KMS_LOG_ERROR);
    ck_ok(kms_store_open(dbpath, &store));
}

static void teardown(void)
{
    kms_store_free(store);
    store = NULL;
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The same cases on PostgreSQL ($CUSTOS_TEST_PG_DIR), a database each. */
static char pg_conninfo[1400];
static char pg_db[64];

static void setup_pg(void)
{
    kms_log_set_level(KMS_LOG_ERROR);
    testpg_create(pg_conninfo, sizeof(pg_conninfo), pg_db, sizeof(pg_db));
    ck_ok(kms_store_open_pg(pg_conninfo, testpg_password_source(), &store));
}

static void teardown_pg(void)
{
    kms_store_free(store);
    store = NULL;
    testpg_drop(pg_db);
}

static const char KEY[] = "00112233445566778899aabbccddeeff";

static void hsm(uint8_t out[KMS_HSM_ID_LEN], uint8_t v)
{
    memset(out, 0x5a, KMS_HSM_ID_LEN);
    out[0] = v;
}

static void enabled_key(void)
{
    struct kms_key_record k = {0};
    struct kms_version_record v = {0};
    snprintf(k.key_id, sizeof(k.key_id), "%s", KEY);
    snprintf(k.tenant, sizeof(k.tenant), "demo");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "custos-eu-west");
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = 1000;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = 1000;
    hsm(v.hsm_id, 1);
    ck_ok(kms_store_key_insert(store, &k, &v));
    ck_ok(kms_store_version_activate(store, KEY, 1));
}

START_TEST(watermark_never_moves_back)
{
    uint64_t m = 99;
    bool found = true;
    ck_ok(kms_store_audit_mark_get(store, "eu-west", &m, &found));
    ck_assert(!found);
    ck_assert_uint_eq(m, 0);
    ck_ok(kms_store_audit_mark_set(store, "eu-west", 10));
    ck_ok(kms_store_audit_mark_set(store, "eu-west", 9)); /* text "9" > "10": compared as numbers */
    ck_ok(kms_store_audit_mark_get(store, "eu-west", &m, &found));
    ck_assert(found);
    ck_assert_uint_eq(m, 10);
    ck_ok(kms_store_audit_mark_set(store, "eu-west", 123456789012ull));
    ck_ok(kms_store_audit_mark_get(store, "eu-west", &m, &found));
    ck_assert_uint_eq(m, 123456789012ull);
    ck_ok(kms_store_audit_mark_get(store, "us-east", &m, &found));
    ck_assert(!found);
}
END_TEST

START_TEST(raw_states_include_creating)
{
    struct kms_store_key_raw k;
    bool found = true;
    enum kms_version_state vs;
    ck_ok(kms_store_key_state_any(store, KEY, &k, &found));
    ck_assert(!found);
    struct kms_key_record r = {0};
    struct kms_version_record v = {0};
    snprintf(r.key_id, sizeof(r.key_id), "%s", KEY);
    snprintf(r.tenant, sizeof(r.tenant), "demo");
    snprintf(r.region, sizeof(r.region), "eu-west");
    snprintf(r.token, sizeof(r.token), "custos-eu-west");
    r.spec = KMS_KEY_SPEC_METADATA;
    r.usage = KMS_KEY_USAGE_METADATA;
    r.origin = KMS_KEY_ORIGIN_HSM;
    r.state = KMS_KEY_CREATING;
    r.created_at = 5;
    r.escrow_required = true;
    v.version = 1;
    v.state = KMS_VERSION_CREATING;
    v.created_at = 5;
    hsm(v.hsm_id, 1);
    ck_ok(kms_store_key_insert(store, &r, &v));
    ck_ok(kms_store_key_state_any(store, KEY, &k, &found));
    ck_assert(found);
    ck_assert_int_eq(k.state, KMS_KEY_CREATING);
    ck_assert_int_eq(k.spec, KMS_KEY_SPEC_METADATA);
    ck_assert(k.escrow_required);
    ck_ok(kms_store_version_state_any(store, KEY, 1, &vs, &found));
    ck_assert(found);
    ck_assert_int_eq(vs, KMS_VERSION_CREATING);
    ck_ok(kms_store_version_state_any(store, KEY, 2, &vs, &found));
    ck_assert(!found);
    bool known = false;
    ck_ok(kms_store_hsm_id_known(store, v.hsm_id, &known));
    ck_assert(known);
    hsm(v.hsm_id, 7);
    ck_ok(kms_store_hsm_id_known(store, v.hsm_id, &known));
    ck_assert(!known);
}
END_TEST

START_TEST(reattach_and_floor_never_reissue)
{
    enabled_key();
    uint8_t id[KMS_HSM_ID_LEN];
    hsm(id, 3);
    /* The token holds v3 of the key (v2 was abandoned or is elsewhere). */
    ck_ok(kms_store_version_reattach(store, KEY, 3, id, 2000));
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, KEY, &k));
    ck_assert_uint_eq(k.current_version, 3);
    uint32_t next = 0;
    hsm(id, 4);
    ck_ok(kms_store_version_add(store, KEY, id, 2001, &next));
    ck_assert_uint_eq(next, 4);
    /* A kept, unattached object labelled v9 raises the floor. */
    ck_ok(kms_store_key_version_floor(store, KEY, 9));
    ck_ok(kms_store_key_version_floor(store, KEY, 2)); /* never lowers it */
    hsm(id, 10);
    ck_ok(kms_store_version_add(store, KEY, id, 2002, &next));
    ck_assert_uint_eq(next, 10);
    /* The same hsm_id twice is refused, not duplicated. */
    hsm(id, 3);
    ck_assert_int_ne(kms_store_version_reattach(store, KEY, 11, id, 2003), KMS_OK);
}
END_TEST

START_TEST(force_state_rebuilds_from_the_audit_log)
{
    enabled_key();
    /* The restored store has the key DESTROYED; the log says it was
     * recovered afterwards. */
    ck_ok(kms_store_key_set_state(store, KEY, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 10));
    ck_ok(kms_store_key_mark_destroyed(store, KEY, 20, NULL, NULL));
    struct kms_hsm_id present[1];
    hsm(present[0].bytes, 1);
    ck_ok(kms_store_key_force_state(store, KEY, KMS_KEY_DISABLED, present, 1));
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, KEY, &k));
    ck_assert_int_eq(k.state, KMS_KEY_DISABLED);
    ck_assert_int_eq(k.deletion_at, 0);
    ck_assert_uint_eq(k.current_version, 1);
    struct kms_version_record v;
    ck_ok(kms_store_version_get(store, KEY, 1, &v));
    ck_assert_int_eq(v.state, KMS_VERSION_ACTIVE);
    ck_assert_int_eq(kms_store_key_force_state(store, KEY, KMS_KEY_DESTROYED, NULL, 0),
                     KMS_ERR_USAGE);
}
END_TEST

/* A recovery brings back only the versions whose objects a token still
 * holds: before, every DESTROYED version became ACTIVE, also one whose
 * object was gone (an ACTIVE row that could never decrypt). */
START_TEST(force_state_revives_only_present_versions)
{
    enabled_key();
    uint8_t id2[KMS_HSM_ID_LEN];
    hsm(id2, 2);
    ck_ok(kms_store_version_reattach(store, KEY, 2, id2, 1500));
    ck_ok(kms_store_key_set_state(store, KEY, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION, 10));
    ck_ok(kms_store_key_mark_destroyed(store, KEY, 20, NULL, NULL));
    struct kms_hsm_id present[1];
    hsm(present[0].bytes, 1); /* v1's object survived; v2's did not */
    ck_ok(kms_store_key_force_state(store, KEY, KMS_KEY_DISABLED, present, 1));
    struct kms_version_record v;
    ck_ok(kms_store_version_get(store, KEY, 1, &v));
    ck_assert_int_eq(v.state, KMS_VERSION_ACTIVE);
    enum kms_version_state vs;
    bool found = false;
    ck_ok(kms_store_version_state_any(store, KEY, 2, &vs, &found));
    ck_assert(found);
    ck_assert_int_eq(vs, KMS_VERSION_DESTROYED);
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, KEY, &k));
    ck_assert_int_eq(k.state, KMS_KEY_DISABLED);
    ck_assert_uint_eq(k.current_version, 1);
}
END_TEST

/* Encryption counts rebuilt from the audit log: added, or raised to a
 * bound, never lowered, never wrapped; the watermark per region. */
START_TEST(encryption_counts_bounded)
{
    enabled_key();
    uint64_t n = 0, total = 0;
    ck_ok(kms_store_usage_reserve(store, KEY, 1, 100, &total));
    ck_ok(kms_store_usage_bound(store, KEY, 1, 7, true));
    ck_ok(kms_store_usage_get(store, KEY, 1, &n));
    ck_assert_uint_eq(n, 107);
    ck_ok(kms_store_usage_bound(store, KEY, 1, 50, false));
    ck_ok(kms_store_usage_get(store, KEY, 1, &n));
    ck_assert_uint_eq(n, 107);
    ck_ok(kms_store_usage_bound(store, KEY, 1, 500, false));
    ck_ok(kms_store_usage_get(store, KEY, 1, &n));
    ck_assert_uint_eq(n, 500);
    ck_ok(kms_store_usage_bound(store, KEY, 1, UINT64_MAX, true));
    ck_ok(kms_store_usage_get(store, KEY, 1, &n));
    ck_assert_uint_eq(n, (uint64_t)INT64_MAX);
    ck_ok(kms_store_usage_bound(store, KEY, 9, 5, true)); /* no such version: nothing */
    uint64_t m = 9;
    ck_ok(kms_store_enc_mark_get(store, "eu-west", &m));
    ck_assert_uint_eq(m, 0);
    ck_ok(kms_store_enc_mark_set(store, "eu-west", 42));
    ck_ok(kms_store_enc_mark_get(store, "eu-west", &m));
    ck_assert_uint_eq(m, 42);
    ck_ok(kms_store_enc_mark_get(store, "us-east", &m));
    ck_assert_uint_eq(m, 0);
}
END_TEST

START_TEST(unknown_objects_confirmed)
{
    uint8_t id[KMS_HSM_ID_LEN];
    hsm(id, 42);
    bool ok = true;
    ck_ok(kms_store_unknown_confirmed(store, id, &ok));
    ck_assert(!ok);
    ck_ok(kms_store_unknown_confirm(store, id, 100));
    ck_ok(kms_store_unknown_confirm(store, id, 200)); /* idempotent */
    ck_ok(kms_store_unknown_confirmed(store, id, &ok));
    ck_assert(ok);
}
END_TEST

START_TEST(snapshot_is_a_new_store_naming_the_old)
{
    enabled_key();
    struct kms_store_info live;
    ck_ok(kms_store_info(store, &live));
    char dst[4400], id[33], of[33];
    snprintf(dst, sizeof(dst), "%s/backup.db", tmpdir);
    /* The live store stays open (and locked) by this process: as beside a
     * running kmsd. */
    ck_ok(kms_store_snapshot(dbpath, dst, 1234, id, of));
    ck_assert_str_eq(of, live.store_id);
    ck_assert_str_ne(id, live.store_id);
    ck_assert_int_eq(kms_store_snapshot(dbpath, dst, 1234, id, of) == KMS_OK, 0); /* exists */
    kms_store_free(store);
    store = NULL;
    ck_ok(kms_store_open(dst, &store));
    struct kms_store_info copy;
    ck_ok(kms_store_info(store, &copy));
    ck_assert_str_eq(copy.store_id, id);
    struct kms_key_record k;
    ck_ok(kms_store_key_get(store, KEY, &k));
    ck_assert_int_eq(k.state, KMS_KEY_ENABLED);
    bool pending = false;
    char bof[KMS_STORE_META_MAX], bat[KMS_STORE_META_MAX];
    ck_ok(kms_store_backup_pending(store, &pending, bof, bat));
    ck_assert(pending);
    ck_assert_str_eq(bof, live.store_id);
    ck_assert_str_eq(bat, "1234");
    ck_ok(kms_store_backup_announced(store, 5678));
    ck_ok(kms_store_backup_pending(store, &pending, bof, bat));
    ck_assert(!pending);
    /* Not a Custos store: refused. */
    char other[4400];
    snprintf(other, sizeof(other), "%s/other.db", tmpdir);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(other, &db), SQLITE_OK);
    sqlite3_exec(db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);", NULL, NULL, NULL);
    sqlite3_close(db);
    snprintf(dst, sizeof(dst), "%s/other-copy.db", tmpdir);
    ck_assert_int_eq(kms_store_snapshot(other, dst, 1, id, of), KMS_ERR_CONFIG);
}
END_TEST

static Suite *epoch_suite(void)
{
    Suite *s = suite_create("kms_store_epoch");
    TCase *tc = tcase_create("epoch");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, watermark_never_moves_back);
    tcase_add_test(tc, raw_states_include_creating);
    tcase_add_test(tc, reattach_and_floor_never_reissue);
    tcase_add_test(tc, force_state_rebuilds_from_the_audit_log);
    tcase_add_test(tc, force_state_revives_only_present_versions);
    tcase_add_test(tc, encryption_counts_bounded);
    tcase_add_test(tc, unknown_objects_confirmed);
    tcase_add_test(tc, snapshot_is_a_new_store_naming_the_old);
    suite_add_tcase(s, tc);
    if (!testpg_available())
        return s;
    /* All but the snapshot, which copies a SQLite file. */
    tc = tcase_create("pg/epoch");
    tcase_add_checked_fixture(tc, setup_pg, teardown_pg);
    tcase_add_test(tc, watermark_never_moves_back);
    tcase_add_test(tc, raw_states_include_creating);
    tcase_add_test(tc, reattach_and_floor_never_reissue);
    tcase_add_test(tc, force_state_rebuilds_from_the_audit_log);
    tcase_add_test(tc, force_state_revives_only_present_versions);
    tcase_add_test(tc, encryption_counts_bounded);
    tcase_add_test(tc, unknown_objects_confirmed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *base = getenv("CUSTOS_TEST_WORK");
    snprintf(workroot, sizeof(workroot), "%s/test_kms_store_epoch.XXXXXX",
             base && *base ? base : "/tmp");
    if (mkdtemp(workroot) == NULL) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(epoch_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(workroot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
