/*
 * test_p11_call.c - the one C_ call wrapper (P11_CALL / P11_RV,
 * pkcs11/p11_call.c): every call is counted in the HSM call histogram under
 * its function and mechanism, failures included, and its CK_RV is mapped by
 * the p11_rv.c table with the retry and quirk handling around it. Faults
 * come from the fault-injecting shim ($CUSTOS_TEST_BUILD/lib/p11_fault.so,
 * docs/development.md) in front of the test run's SoftHSMv2 tokens. With
 * p11_serialize_calls(true), no two calls are inside a module at once.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms_error.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "p11_asym.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_module.h"
#include "testenv.h"

static struct p11_module *mod;
static struct p11_token *tok;
static struct p11_key_id key;
static char ctl[600];

/* Replace the shim's control file (rename: the shim never sees half a
 * file, and a new inode is noticed at once) and give the shim its check
 * interval (10 ms) to notice. */
static void faults(const char *rules)
{
    char tmp[620];
    snprintf(tmp, sizeof(tmp), "%s.tmp", ctl);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(rules, f);
    fclose(f);
    ck_assert_int_eq(rename(tmp, ctl), 0);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static void load_shim(void)
{
    const char *build = getenv("CUSTOS_TEST_BUILD");
    ck_assert_ptr_nonnull(build);
    char shim[600];
    snprintf(shim, sizeof(shim), "%s/lib/p11_fault.so", build);
    snprintf(ctl, sizeof(ctl), "%s/p11call-%d.ctl", testenv_work_dir(), (int)getpid());
    setenv("CUSTOS_P11FAULT_CONTROL", ctl, 1);
    setenv("CUSTOS_P11FAULT_MODULE", testenv_module_path(), 1);
    faults("");
    kms_log_set_level(KMS_LOG_ERROR);
    /* The shim forwards C_Initialize's arguments to the module it wraps. */
    kms_err rc = p11_module_load_args(shim, testenv_module_args(), &mod);
    ck_assert_msg(rc == KMS_OK, "%s", kms_err_detail());
}

static kms_err open_eu(void)
{
    char pin[512];
    struct p11_token_config cfg = {"eu-west", "custos-eu-west",
                                   testenv_pin_source("eu-west", pin, sizeof(pin)), 0};
    return p11_tokens_open(mod, &cfg, 1, &tok);
}

static void setup(void)
{
    load_shim();
    ck_assert_msg(open_eu() == KMS_OK, "%s", kms_err_detail());
    ck_assert_int_eq(p11_key_id_new(tok, &key), KMS_OK);
    /* A token object: a session object dies with the session that made
     * it, and these tests make the pool close sessions. */
    ck_assert_int_eq(p11_key_generate(tok, P11_KEY_AES_ENCRYPT, 0, &key, NULL), KMS_OK);
}

static void teardown(void)
{
    faults("");
    if (tok != NULL)
        p11_key_destroy(tok, &key);
    p11_token_free(tok);
    tok = NULL;
    p11_module_free(mod);
    mod = NULL;
    unlink(ctl);
}

static void setup_no_token(void)
{
    load_shim();
    tok = NULL;
}

/* The count of custos_hsm_call_duration_seconds for the eu-west token. */
static unsigned long calls(const char *fn, const char *mech)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    kms_metrics_render(f);
    fclose(f);
    char needle[256];
    snprintf(needle, sizeof(needle),
             "custos_hsm_call_duration_seconds_count{region=\"eu-west\",token=\"custos-eu-west\","
             "function=\"%s\",mechanism=\"%s\"} ",
             fn, mech);
    const char *p = strstr(buf, needle);
    unsigned long n = p ? strtoul(p + strlen(needle), NULL, 10) : 0;
    free(buf);
    return n;
}

static kms_err encrypt(void)
{
    uint8_t iv[P11_GCM_IV_LEN] = {0}, out[64];
    size_t out_len;
    return p11_gcm_encrypt(tok, &key, iv, sizeof(iv), NULL, 0, (const uint8_t *)"hello", 5, out,
                           sizeof(out), &out_len);
}

START_TEST(every_call_is_timed)
{
    /* Before the wrapper only the data calls were: now the set-up calls of
     * an operation and the session housekeeping are counted too. */
    unsigned long init0 = calls("C_EncryptInit", "CKM_AES_GCM");
    unsigned long enc0 = calls("C_Encrypt", "CKM_AES_GCM");
    ck_assert_int_eq(encrypt(), KMS_OK);
    ck_assert_uint_eq(calls("C_EncryptInit", "CKM_AES_GCM"), init0 + 1);
    ck_assert_uint_eq(calls("C_Encrypt", "CKM_AES_GCM"), enc0 + 1);
    ck_assert_uint_ge(calls("C_OpenSession", "none"), 1);
    ck_assert_uint_ge(calls("C_GetSessionInfo", "none"), 1);
    ck_assert_uint_ge(calls("C_GenerateKey", "CKM_AES_KEY_GEN"), 1);
    ck_assert_uint_ge(calls("C_GenerateRandom", "none"), 1);
}
END_TEST

START_TEST(device_error_maps_to_internal_and_is_counted)
{
    unsigned long enc0 = calls("C_Encrypt", "CKM_AES_GCM");
    faults("C_Encrypt CKR_DEVICE_ERROR count=1\n");
    ck_assert_int_eq(encrypt(), KMS_ERR_HSM);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_Encrypt"));
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKR_DEVICE_ERROR"));
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "custos-eu-west"));
    /* The failed call is in the histogram; the token answered the probe. */
    ck_assert_uint_eq(calls("C_Encrypt", "CKM_AES_GCM"), enc0 + 1);
    ck_assert(p11_token_available(tok));
    ck_assert_int_eq(encrypt(), KMS_OK);
    ck_assert_uint_eq(calls("C_Encrypt", "CKM_AES_GCM"), enc0 + 2);
}
END_TEST

START_TEST(lost_session_is_replaced_and_retried_once)
{
    struct p11_pool_stats before, after;
    p11_token_pool_stats(tok, &before);
    unsigned long enc0 = calls("C_Encrypt", "CKM_AES_GCM");
    faults("C_Encrypt CKR_SESSION_HANDLE_INVALID count=1\n");
    ck_assert_int_eq(encrypt(), KMS_OK);
    ck_assert_uint_eq(calls("C_Encrypt", "CKM_AES_GCM"), enc0 + 2);
    p11_token_pool_stats(tok, &after);
    ck_assert_uint_eq(after.replaced, before.replaced + 1);
    /* Twice in a row: the retry is once, and the session class shows. */
    faults("C_Encrypt CKR_SESSION_HANDLE_INVALID count=2\n");
    ck_assert_int_eq(encrypt(), KMS_ERR_HSM_SESSION);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKR_SESSION_HANDLE_INVALID"));
}
END_TEST

START_TEST(removed_token_is_unavailable_then_back)
{
    faults("C_Encrypt CKR_DEVICE_REMOVED count=1\n");
    ck_assert_int_eq(encrypt(), KMS_ERR_HSM_UNAVAILABLE);
    ck_assert(!p11_token_available(tok));
    faults("");
    /* The next lease probes the token again and finds it. */
    ck_assert_int_eq(encrypt(), KMS_OK);
    ck_assert(p11_token_available(tok));
}
END_TEST

START_TEST(softhsm_general_error_on_decrypt_is_bad_ciphertext)
{
    uint8_t iv[P11_GCM_IV_LEN] = {0}, ct[64], pt[64];
    size_t ct_len, pt_len;
    ck_assert_int_eq(p11_gcm_encrypt(tok, &key, iv, sizeof(iv), NULL, 0,
                                     (const uint8_t *)"hello", 5, ct, sizeof(ct), &ct_len),
                     KMS_OK);
    unsigned long dec0 = calls("C_Decrypt", "CKM_AES_GCM");
    /* What SoftHSMv2 answers to a tag that does not verify. It is read so
     * only on a token found to answer so at open (p11_probe_integrity):
     * SoftHSMv2 is, NSS's softoken (CKR_ENCRYPTED_DATA_INVALID) is not. */
    faults("C_Decrypt CKR_GENERAL_ERROR count=1\n");
    ck_assert_int_eq(
        p11_gcm_decrypt(tok, &key, iv, sizeof(iv), NULL, 0, ct, ct_len, pt, sizeof(pt), &pt_len),
        tok->integrity_general ? KMS_ERR_BAD_CIPHERTEXT : KMS_ERR_HSM);
    ck_assert(tok->integrity_general == !testenv_is_nss());
    ck_assert_uint_eq(pt_len, 0);
    ck_assert_uint_eq(calls("C_Decrypt", "CKM_AES_GCM"), dec0 + 1);
    /* On the ...Init call the same code is no tag failure. */
    faults("C_DecryptInit CKR_GENERAL_ERROR count=1\n");
    ck_assert_int_eq(p11_gcm_decrypt(tok, &key, iv, sizeof(iv), NULL, 0, ct, ct_len, pt,
                                     sizeof(pt), &pt_len),
                     KMS_ERR_HSM);
    faults("");
    ck_assert_int_eq(p11_gcm_decrypt(tok, &key, iv, sizeof(iv), NULL, 0, ct, ct_len, pt,
                                     sizeof(pt), &pt_len),
                     KMS_OK);
    ck_assert_uint_eq(pt_len, 5);
}
END_TEST

START_TEST(transient_creation_failure_is_retried)
{
    unsigned long gen0 = calls("C_GenerateKey", "CKM_AES_KEY_GEN");
    faults("C_GenerateKey CKR_GENERAL_ERROR count=1\n");
    struct p11_key_id k2;
    ck_assert_int_eq(p11_key_id_new(tok, &k2), KMS_OK);
    ck_assert_int_eq(p11_key_generate(tok, P11_KEY_AES_ENCRYPT, P11_KEY_EPHEMERAL, &k2, NULL),
                     KMS_OK);
    ck_assert_uint_eq(calls("C_GenerateKey", "CKM_AES_KEY_GEN"), gen0 + 2);
    /* A failure that is not transient is not retried. */
    faults("C_GenerateKey 0xd1 count=1\n"); /* CKR_TEMPLATE_INCONSISTENT */
    struct p11_key_id k3;
    ck_assert_int_eq(p11_key_id_new(tok, &k3), KMS_OK);
    ck_assert_int_ne(p11_key_generate(tok, P11_KEY_AES_ENCRYPT, P11_KEY_EPHEMERAL, &k3, NULL),
                     KMS_OK);
    ck_assert_uint_eq(calls("C_GenerateKey", "CKM_AES_KEY_GEN"), gen0 + 3);
}
END_TEST

/* Signing pairs share p11_key_generate's retry (p11_create_retrying): a
 * transient C_GenerateKeyPair failure is retried and the pair that results
 * is complete and the only one under the id; a failure that is not
 * transient is not retried. */
START_TEST(transient_pair_creation_failure_is_retried)
{
    unsigned long gen0 = calls("C_GenerateKeyPair", "CKM_EC_KEY_PAIR_GEN");
    faults("C_GenerateKeyPair CKR_GENERAL_ERROR count=1\n");
    struct p11_key_id k2;
    ck_assert_int_eq(p11_key_id_new(tok, &k2), KMS_OK);
    kms_err rc = p11_asym_generate(tok, P11_ASYM_EC_P256, &k2, NULL, false);
    ck_assert_msg(rc == KMS_OK, "%s", kms_err_detail());
    ck_assert_uint_eq(calls("C_GenerateKeyPair", "CKM_EC_KEY_PAIR_GEN"), gen0 + 2);
    uint8_t digest[32] = {1}, sig[P11_ASYM_SIG_MAX];
    size_t sig_len = sizeof(sig);
    bool valid = false;
    ck_assert_int_eq(p11_asym_sign_digest(tok, &k2, P11_SIG_ECDSA_SHA256, digest, 32, sig,
                                          &sig_len),
                     KMS_OK);
    ck_assert_int_eq(p11_asym_verify_digest(tok, &k2, P11_SIG_ECDSA_SHA256, digest, 32, sig,
                                            sig_len, &valid),
                     KMS_OK);
    ck_assert(valid);
    ck_assert_int_eq(p11_key_destroy(tok, &k2), KMS_OK);

    faults("C_GenerateKeyPair 0xd1 count=1\n"); /* CKR_TEMPLATE_INCONSISTENT */
    struct p11_key_id k3;
    ck_assert_int_eq(p11_key_id_new(tok, &k3), KMS_OK);
    ck_assert_int_ne(p11_asym_generate(tok, P11_ASYM_EC_P256, &k3, NULL, false), KMS_OK);
    ck_assert_uint_eq(calls("C_GenerateKeyPair", "CKM_EC_KEY_PAIR_GEN"), gen0 + 3);
}
END_TEST

START_TEST(pin_error_maps_to_pin_and_is_not_retried)
{
    faults("C_Login CKR_PIN_LOCKED\n");
    ck_assert_int_eq(open_eu(), KMS_ERR_HSM_PIN);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_Login"));
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKR_PIN_LOCKED"));
    ck_assert_ptr_null(tok);
    ck_assert_uint_eq(calls("C_Login", "none"), 1);
}
END_TEST

/* ---- serialize_calls: a fake module that counts calls in flight ------------ */

static atomic_int in_flight, max_in_flight;

static CK_RV slow_random(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG n)
{
    (void)s;
    int now = atomic_fetch_add(&in_flight, 1) + 1;
    int seen = atomic_load(&max_in_flight);
    while (now > seen && !atomic_compare_exchange_weak(&max_in_flight, &seen, now))
        ;
    memset(out, 0, n);
    struct timespec pause = {0, 2 * 1000 * 1000};
    nanosleep(&pause, NULL);
    atomic_fetch_sub(&in_flight, 1);
    return CKR_OK;
}

static CK_FUNCTION_LIST fake = {.C_GenerateRandom = slow_random};

static void *caller(void *arg)
{
    (void)arg;
    CK_BYTE b[8];
    for (int i = 0; i < 20; i++)
        ck_assert_uint_eq(P11_RV_AT_(&fake, -1, C_GenerateRandom, P11_NO_MECH, 0, b, sizeof(b)),
                          CKR_OK);
    return NULL;
}

/* The most calls seen inside the module at once, 8 threads x 20 calls. */
static int most_at_once(void)
{
    atomic_store(&in_flight, 0);
    atomic_store(&max_in_flight, 0);
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, caller, NULL), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    return atomic_load(&max_in_flight);
}

START_TEST(serialize_calls_lets_one_call_in_at_a_time)
{
    /* The control first: without it, 8 threads calling a module that takes
     * 2 ms per call do overlap (else the check below proves nothing). */
    p11_serialize_calls(false);
    ck_assert_int_gt(most_at_once(), 1);
    p11_serialize_calls(true);
    int most = most_at_once();
    p11_serialize_calls(false);
    ck_assert_int_eq(most, 1);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_call");
    TCase *tc = tcase_create("wrapper");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, every_call_is_timed);
    tcase_add_test(tc, device_error_maps_to_internal_and_is_counted);
    tcase_add_test(tc, lost_session_is_replaced_and_retried_once);
    tcase_add_test(tc, removed_token_is_unavailable_then_back);
    tcase_add_test(tc, softhsm_general_error_on_decrypt_is_bad_ciphertext);
    tcase_add_test(tc, transient_creation_failure_is_retried);
    tcase_add_test(tc, transient_pair_creation_failure_is_retried);
    suite_add_tcase(s, tc);
    TCase *tl = tcase_create("login");
    tcase_add_checked_fixture(tl, setup_no_token, teardown);
    tcase_add_test(tl, pin_error_maps_to_pin_and_is_not_retried);
    suite_add_tcase(s, tl);
    TCase *ts = tcase_create("serialize");
    tcase_set_timeout(ts, 60);
    tcase_add_test(ts, serialize_calls_lets_one_call_in_at_a_time);
    suite_add_tcase(s, ts);
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
