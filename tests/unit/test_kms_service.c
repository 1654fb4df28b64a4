/*
 * test_kms_service.c - the service registry on its own (tokens by region,
 * store, cache, usage, audit logs, escrow keys, policy reload, region
 * check, readiness), and the key layer's start-up and background work on
 * top of it: kms_reconcile_start, one kms_sweeper_round (a deletion due is
 * destroyed, a rotation period due rotates, nothing happens in safe mode)
 * and the object check readiness reads. Real SoftHSMv2 tokens, a real
 * store and audit logs in a temporary directory; no HTTP.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit_log.h"
#include "kms_blob.h"
#include "kms_config.h"
#include "kms_error.h"
#include "kms_keycache.h"
#include "kms_reconcile.h"
#include "kms_rotate.h"
#include "kms_service.h"
#include "kms_store.h"
#include "kms_sweeper.h"
#include "kms_usage_count.h"
#include "p11_escrow_key.h"
#include "p11_key.h"
#include "pol_doc.h"
#include "testenv.h"

static char dir[512];
static struct kms_config *cfg;
static struct kms_service *svc;

static void path_in(char *out, size_t n, const char *name)
{
    ck_assert_int_lt(snprintf(out, n, "%s/%s", dir, name), (int)n);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    return b;
}

static void spit(const char *name, const char *text)
{
    char p[700];
    path_in(p, sizeof(p), name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    fclose(f);
}

/* Key objects of ours left in the run's tokens (by another test's store)
 * are objects this test's store does not know: restore detection would
 * start in SAFE MODE. Each test starts and ends with none. */
static void clean_tokens(void)
{
    struct testenv env;
    testenv_open(&env);
    struct p11_token *toks[2] = {env.eu, env.us};
    for (size_t t = 0; t < 2; t++) {
        struct p11_key_id *ids = NULL;
        size_t n = 0;
        ck_assert_int_eq(p11_key_list_ids(toks[t], KMS_HSM_LABEL_PREFIX, &ids, &n), KMS_OK);
        for (size_t i = 0; i < n; i++)
            ck_assert_int_eq(p11_key_destroy(toks[t], &ids[i]), KMS_OK);
        free(ids);
    }
    testenv_close(&env);
}

/* A dev configuration over the run's two tokens, the sample policy, a
 * store and audit logs of its own; each region with its escrow key. */
static void setup(void)
{
    static int seq;
    snprintf(dir, sizeof(dir), "%s/service-%ld-%d", testenv_work_dir(), (long)getpid(), seq++);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    char *policy = slurp("deploy/examples/policy.json");
    spit("policy.json", policy);
    free(policy);
    char eu[600], us[600], json[4096];
    testenv_pin_source("eu-west", eu, sizeof(eu));
    testenv_pin_source("us-east", us, sizeof(us));
    snprintf(json, sizeof(json),
             "{\"mode\": \"dev\", \"pkcs11\": {\"module\": \"%s\", \"tokens\": ["
             "{\"region\": \"eu-west\", \"token\": \"custos-eu-west\", \"pin\": \"%s\"},"
             "{\"region\": \"us-east\", \"token\": \"custos-us-east\", \"pin\": \"%s\"}]},"
             " \"policy\": \"policy.json\", \"store\": \"kmsd.db\", \"audit\": {\"dir\": \"audit\"}}",
             testenv_module_path(), eu, us);
    spit("kmsd.json", json);
    char audit[700];
    path_in(audit, sizeof(audit), "audit");
    ck_assert_int_eq(mkdir(audit, 0700), 0);
    /* kmsctl hsm init-region, as the dev setup runs it (idempotent). */
    struct testenv env;
    testenv_open(&env);
    struct p11_key_id id;
    bool created;
    ck_assert_int_eq(p11_escrow_key_init(env.eu, &id, &created), KMS_OK);
    ck_assert_int_eq(p11_escrow_key_init(env.us, &id, &created), KMS_OK);
    testenv_close(&env);
    clean_tokens();
    char p[700];
    path_in(p, sizeof(p), "kmsd.json");
    ck_assert_msg(kms_config_load(p, &cfg) == KMS_OK, "config: %s", kms_err_detail());
    svc = NULL;
}

static void teardown(void)
{
    kms_service_free(svc);
    svc = NULL;
    kms_config_free(cfg);
    cfg = NULL;
    clean_tokens();
}

static void start(void)
{
    ck_assert_msg(kms_service_start(cfg, &svc) == KMS_OK, "start: %s", kms_err_detail());
}

/* kms_service_start, then the key layer's start-up as kmsd_main runs it. */
static void start_serving(void)
{
    start();
    bool stop = true;
    ck_assert_msg(kms_reconcile_start(svc, KMS_RESTORE_MODE_SERVE, NULL, &stop) == KMS_OK,
                  "reconcile: %s", kms_err_detail());
    ck_assert(!stop);
    const char *why = NULL;
    ck_assert_msg(!kms_service_safe_mode(svc, &why), "%s", why);
}

/* ---- the registry --------------------------------------------------------- */

START_TEST(tokens_by_region)
{
    start();
    ck_assert_uint_eq(kms_service_n_tokens(svc), 2);
    struct p11_token *eu = kms_service_token(svc, "eu-west");
    struct p11_token *us = kms_service_token(svc, "us-east");
    ck_assert_ptr_nonnull(eu);
    ck_assert_ptr_nonnull(us);
    ck_assert_ptr_ne(eu, us);
    ck_assert_str_eq(p11_token_label(eu), "custos-eu-west");
    ck_assert_str_eq(p11_token_region(us), "us-east");
    ck_assert_ptr_eq(kms_service_token_at(svc, 0), eu);
    ck_assert_ptr_eq(kms_service_token_at(svc, 1), us);
    ck_assert_ptr_null(kms_service_token_at(svc, 2));
    ck_assert_ptr_eq(kms_service_token_by_label(svc, "custos-us-east"), us);
    ck_assert_ptr_null(kms_service_token_by_label(svc, "custos-ap-south"));
    /* An unknown region is no token, no log, no escrow key, nothing missing. */
    ck_assert_ptr_null(kms_service_token(svc, "ap-south"));
    ck_assert_ptr_null(kms_service_token(svc, ""));
    ck_assert_ptr_null(kms_service_audit_log(svc, "ap-south"));
    ck_assert_ptr_null(kms_service_audit_log(svc, NULL));
    struct p11_key_id id;
    ck_assert(!kms_service_escrow_key(svc, "ap-south", &id));
    ck_assert_uint_eq(kms_service_missing_objects(svc, "ap-south"), 0);
}
END_TEST

START_TEST(handles)
{
    start();
    ck_assert_ptr_eq(kms_service_config(svc), cfg);
    struct kms_store *st = kms_service_store(svc);
    ck_assert_ptr_nonnull(st);
    struct kms_store_info info;
    ck_assert_int_eq(kms_store_info(st, &info), KMS_OK);
    ck_assert_ptr_nonnull(kms_service_keycache(svc));
    /* The usage counter counts against the registry's store. */
    struct kms_usage *u = kms_service_usage(svc);
    ck_assert_ptr_nonnull(u);
    struct kms_usage_stats us;
    kms_usage_stats(u, &us);
    ck_assert_uint_eq(us.rotate_at, cfg->usage_rotate_at);
    ck_assert_uint_eq(us.limit, cfg->usage_limit);
    /* One open audit log per region, the default the first region's. */
    struct audit_log *eu = kms_service_audit_log(svc, "eu-west");
    struct audit_log *usl = kms_service_audit_log(svc, "us-east");
    ck_assert_ptr_nonnull(eu);
    ck_assert_ptr_nonnull(usl);
    ck_assert_ptr_ne(eu, usl);
    ck_assert_str_eq(audit_log_region(usl), "us-east");
    ck_assert_ptr_eq(kms_service_audit_default(svc), eu);
    /* The escrow key found at start is the one init-region made. */
    struct p11_key_id found, want;
    bool ok = false;
    ck_assert(kms_service_escrow_key(svc, "us-east", &found));
    ck_assert_int_eq(p11_escrow_key_find(kms_service_token(svc, "us-east"), &want, &ok), KMS_OK);
    ck_assert(ok);
    ck_assert_mem_eq(found.b, want.b, sizeof(want.b));
    /* Healthy: served, ready, not in safe mode. */
    ck_assert_int_eq(kms_service_region_check(svc, "eu-west"), KMS_OK);
    ck_assert_int_eq(kms_service_region_check(svc, "us-east"), KMS_OK);
    ck_assert_msg(kms_service_check(svc) == KMS_OK, "check: %s", kms_err_detail());
    const char *why = NULL;
    ck_assert(!kms_service_safe_mode(svc, &why));
}
END_TEST

/* A region whose audit log cannot be opened is not served; the others are. */
START_TEST(region_check_broken_log)
{
    char p[700];
    path_in(p, sizeof(p), "audit/us-east.keys");
    ck_assert_int_eq(mkdir(p, 0700), 0); /* a directory where a file must be */
    start();
    ck_assert_int_eq(kms_service_region_check(svc, "eu-west"), KMS_OK);
    ck_assert_int_eq(kms_service_region_check(svc, "us-east"), KMS_ERR_HSM_UNAVAILABLE);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "region us-east is not served"));
    ck_assert_ptr_null(kms_service_audit_log(svc, "us-east"));
    ck_assert_ptr_nonnull(kms_service_audit_default(svc));
    /* Readiness names the region; the token itself is still there. */
    ck_assert_ptr_nonnull(kms_service_token(svc, "us-east"));
    ck_assert_int_ne(kms_service_check(svc), KMS_OK);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "us-east"));
}
END_TEST

START_TEST(policy_reload)
{
    start();
    struct pol_doc *before = kms_service_policy(svc);
    ck_assert_ptr_nonnull(before);
    char old_digest[65];
    snprintf(old_digest, sizeof(old_digest), "%s", pol_doc_digest_hex(before));

    /* A bad document is refused and the current one stays. */
    spit("policy.json", "{\"version\": 1, \"tenants\": [");
    ck_assert_int_ne(kms_service_reload_policy(svc), KMS_OK);
    struct pol_doc *kept = kms_service_policy(svc);
    ck_assert_str_eq(pol_doc_digest_hex(kept), old_digest);
    pol_doc_unref(kept);

    /* A good one replaces it; a reference taken before keeps its own. */
    char *text = slurp("deploy/examples/policy.json");
    char *at = strstr(text, "Sample Custos policy");
    ck_assert_ptr_nonnull(at);
    memcpy(at, "Sampel", 6);
    spit("policy.json", text);
    free(text);
    ck_assert_msg(kms_service_reload_policy(svc) == KMS_OK, "reload: %s", kms_err_detail());
    struct pol_doc *after = kms_service_policy(svc);
    ck_assert_str_ne(pol_doc_digest_hex(after), old_digest);
    ck_assert_str_eq(pol_doc_digest_hex(before), old_digest);
    pol_doc_unref(after);
    pol_doc_unref(before);
}
END_TEST

START_TEST(state_the_key_layer_records)
{
    start();
    ck_assert_uint_eq(kms_service_set_missing_objects(svc, "us-east", 3), 0);
    ck_assert_uint_eq(kms_service_missing_objects(svc, "us-east"), 3);
    ck_assert_uint_eq(kms_service_missing_objects(svc, "eu-west"), 0);
    ck_assert_int_ne(kms_service_check(svc), KMS_OK); /* readiness sees it */
    ck_assert_uint_eq(kms_service_set_missing_objects(svc, "us-east", 0), 3);
    ck_assert_int_eq(kms_service_check(svc), KMS_OK);
    kms_service_set_safe_mode(svc, "SAFE MODE: test");
    const char *why = NULL;
    ck_assert(kms_service_safe_mode(svc, &why));
    ck_assert_str_eq(why, "SAFE MODE: test");
}
END_TEST

/* ---- the key layer on top: start-up and the sweeper ------------------------ */

/* An ENABLED AES key with version 1 in eu-west, made as CreateKey makes it
 * (row CREATING, HSM object, activate); no escrow (its tenant has no
 * policy). */
static void make_key(char key_id[KMS_KEY_ID_SIZE], struct p11_key_id *obj, uint64_t period_s)
{
    struct p11_token *tok = kms_service_token(svc, "eu-west");
    struct kms_key_record k;
    struct kms_version_record v1;
    memset(&k, 0, sizeof(k));
    memset(&v1, 0, sizeof(v1));
    uint8_t raw[16];
    struct p11_key_id rid;
    ck_assert_int_eq(p11_key_id_new(tok, &rid), KMS_OK);
    memcpy(raw, rid.b, sizeof(raw));
    kms_key_id_format(raw, k.key_id);
    snprintf(k.tenant, sizeof(k.tenant), "unit-tests");
    snprintf(k.region, sizeof(k.region), "eu-west");
    snprintf(k.token, sizeof(k.token), "%s", p11_token_label(tok));
    k.spec = KMS_KEY_SPEC_AES_256;
    k.usage = KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.origin = KMS_KEY_ORIGIN_HSM;
    k.state = KMS_KEY_CREATING;
    k.created_at = (int64_t)time(NULL);
    ck_assert_int_eq(p11_key_id_new(tok, obj), KMS_OK);
    v1.version = 1;
    v1.state = KMS_VERSION_CREATING;
    v1.created_at = k.created_at;
    memcpy(v1.hsm_id, obj->b, sizeof(v1.hsm_id));
    struct kms_store *st = kms_service_store(svc);
    ck_assert_int_eq(kms_store_key_insert(st, &k, &v1), KMS_OK);
    if (period_s)
        ck_assert_int_eq(kms_store_rotation_period_set(st, k.key_id, period_s), KMS_OK);
    ck_assert_msg(kms_version_make(svc, "unit", tok, k.key_id, 1, v1.hsm_id, k.spec, false) ==
                      KMS_OK,
                  "make: %s", kms_err_detail());
    snprintf(key_id, KMS_KEY_ID_SIZE, "%s", k.key_id);
}

static enum kms_key_state state_of(const char *key_id)
{
    struct kms_key_record r;
    ck_assert_int_eq(kms_store_key_get(kms_service_store(svc), key_id, &r), KMS_OK);
    return r.state;
}

static bool object_exists(const struct p11_key_id *obj)
{
    bool exists = false;
    ck_assert_int_eq(p11_key_exists(kms_service_token(svc, "eu-west"), obj, &exists), KMS_OK);
    return exists;
}

START_TEST(sweeper_destroys_due_deletion)
{
    start_serving();
    char due[KMS_KEY_ID_SIZE], later[KMS_KEY_ID_SIZE];
    struct p11_key_id due_obj, later_obj;
    make_key(due, &due_obj, 0);
    make_key(later, &later_obj, 0);
    ck_assert_int_eq(state_of(due), KMS_KEY_ENABLED);
    int64_t now = (int64_t)time(NULL);
    struct kms_store *st = kms_service_store(svc);
    ck_assert_int_eq(kms_store_key_set_state(st, due, KMS_KEY_ENABLED, KMS_KEY_PENDING_DELETION,
                                             now - 60),
                     KMS_OK);
    ck_assert_int_eq(kms_store_key_set_state(st, later, KMS_KEY_ENABLED,
                                             KMS_KEY_PENDING_DELETION, now + 86400),
                     KMS_OK);
    ck_assert(object_exists(&due_obj));

    kms_sweeper_round(svc, now);
    /* The one whose waiting period is over: DESTROYED, its object gone. */
    ck_assert_int_eq(state_of(due), KMS_KEY_DESTROYED);
    ck_assert(!object_exists(&due_obj));
    /* The other one waits. */
    ck_assert_int_eq(state_of(later), KMS_KEY_PENDING_DELETION);
    ck_assert(object_exists(&later_obj));
}
END_TEST

START_TEST(sweeper_rotates_due_period)
{
    start_serving();
    char due[KMS_KEY_ID_SIZE], not_due[KMS_KEY_ID_SIZE];
    struct p11_key_id obj;
    make_key(due, &obj, 3600);
    make_key(not_due, &obj, 30 * 86400);
    struct kms_key_record r;
    ck_assert_int_eq(kms_store_key_get(kms_service_store(svc), due, &r), KMS_OK);
    ck_assert_uint_eq(r.current_version, 1);

    /* Two hours on: the hourly key's period has elapsed, the monthly's not. */
    kms_sweeper_round(svc, (int64_t)time(NULL) + 7200);
    ck_assert_int_eq(kms_store_key_get(kms_service_store(svc), due, &r), KMS_OK);
    ck_assert_uint_eq(r.current_version, 2);
    ck_assert_int_eq(r.state, KMS_KEY_ENABLED);
    struct kms_version_record v2;
    ck_assert_int_eq(kms_store_version_get(kms_service_store(svc), due, 2, &v2), KMS_OK);
    struct p11_key_id v2obj;
    memcpy(v2obj.b, v2.hsm_id, sizeof(v2obj.b));
    ck_assert(object_exists(&v2obj));
    ck_assert_int_eq(kms_store_key_get(kms_service_store(svc), not_due, &r), KMS_OK);
    ck_assert_uint_eq(r.current_version, 1);
}
END_TEST

/* Safe mode: the store may be older than what tenants were told; the
 * sweeper destroys and rotates nothing. */
START_TEST(sweeper_safe_mode_does_nothing)
{
    start_serving();
    char del[KMS_KEY_ID_SIZE], rot[KMS_KEY_ID_SIZE];
    struct p11_key_id del_obj, rot_obj;
    make_key(del, &del_obj, 0);
    make_key(rot, &rot_obj, 3600);
    int64_t now = (int64_t)time(NULL);
    ck_assert_int_eq(kms_store_key_set_state(kms_service_store(svc), del, KMS_KEY_ENABLED,
                                             KMS_KEY_PENDING_DELETION, now - 60),
                     KMS_OK);
    kms_service_set_safe_mode(svc, "SAFE MODE: test");
    kms_sweeper_round(svc, now + 7200);
    ck_assert_int_eq(state_of(del), KMS_KEY_PENDING_DELETION);
    ck_assert(object_exists(&del_obj));
    struct kms_key_record r;
    ck_assert_int_eq(kms_store_key_get(kms_service_store(svc), rot, &r), KMS_OK);
    ck_assert_uint_eq(r.current_version, 1);
}
END_TEST

/* An object deleted behind kmsd's back: the object check counts it for
 * readiness, and counts it no more once it is back (here: its key gone). */
START_TEST(object_check_feeds_readiness)
{
    start_serving();
    char key[KMS_KEY_ID_SIZE];
    struct p11_key_id obj;
    make_key(key, &obj, 0);
    kms_sweeper_check_objects(svc);
    ck_assert_uint_eq(kms_service_missing_objects(svc, "eu-west"), 0);
    ck_assert_int_eq(kms_service_check(svc), KMS_OK);
    ck_assert_int_eq(p11_key_destroy(kms_service_token(svc, "eu-west"), &obj), KMS_OK);
    kms_sweeper_check_objects(svc);
    ck_assert_uint_eq(kms_service_missing_objects(svc, "eu-west"), 1);
    ck_assert_uint_eq(kms_service_missing_objects(svc, "us-east"), 0);
    ck_assert_int_ne(kms_service_check(svc), KMS_OK);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "have no object"));
}
END_TEST

/* A key object of ours that the store does not know (a store restored from
 * before the key): the start goes into SAFE MODE, and reconcile leaves the
 * object in place. */
START_TEST(unknown_object_starts_safe_mode)
{
    start_serving();
    char key[KMS_KEY_ID_SIZE];
    struct p11_key_id obj;
    make_key(key, &obj, 0);
    kms_service_free(svc);
    svc = NULL;
    static const char *const files[] = {"kmsd.db", "kmsd.db-wal", "kmsd.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        char p[700];
        path_in(p, sizeof(p), files[i]);
        unlink(p);
    }
    start();
    bool stop = true;
    ck_assert_int_eq(kms_reconcile_start(svc, KMS_RESTORE_MODE_SERVE, NULL, &stop), KMS_OK);
    ck_assert(!stop);
    const char *why = NULL;
    ck_assert(kms_service_safe_mode(svc, &why));
    ck_assert_msg(strstr(why, "1 HSM object(s) unknown to the store") != NULL, "%s", why);
    ck_assert(object_exists(&obj));
}
END_TEST

/* The sweeper thread starts and stops cleanly around a running service. */
START_TEST(sweeper_thread_start_stop)
{
    start_serving();
    struct kms_sweeper *sw = NULL;
    ck_assert_int_eq(kms_sweeper_start(svc, &sw), KMS_OK);
    ck_assert_ptr_nonnull(sw);
    kms_sweeper_stop(sw);
    kms_sweeper_stop(NULL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_service");
    TCase *t = tcase_create("registry");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 60);
    tcase_add_test(t, tokens_by_region);
    tcase_add_test(t, handles);
    tcase_add_test(t, region_check_broken_log);
    tcase_add_test(t, policy_reload);
    tcase_add_test(t, state_the_key_layer_records);
    suite_add_tcase(s, t);
    t = tcase_create("sweeper");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 60);
    tcase_add_test(t, sweeper_destroys_due_deletion);
    tcase_add_test(t, sweeper_rotates_due_period);
    tcase_add_test(t, sweeper_safe_mode_does_nothing);
    tcase_add_test(t, object_check_feeds_readiness);
    tcase_add_test(t, sweeper_thread_start_stop);
    tcase_add_test(t, unknown_object_starts_safe_mode);
    suite_add_tcase(s, t);
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
