/*
 * test_p11_token.c - module loading, token selection, capabilities, PINs and
 * the session pool, against the real SoftHSMv2 tokens of the test run.
 */
#include <check.h>
#include <dirent.h>
#include <time.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"
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

/* Open a single token with the given selector/region/pin; returns rc. */
static kms_err open_one(struct p11_module *mod, const char *region, const char *selector,
                        const char *pin_source, struct p11_token **out)
{
    struct p11_token_config cfg = {region, selector, pin_source, 0};
    return p11_tokens_open(mod, &cfg, 1, out);
}

START_TEST(load_bad_path)
{
    struct p11_module *mod = (void *)1;
    kms_err rc = p11_module_load("/nonexistent/libnothing.so", &mod);
    ck_assert_int_eq(rc, KMS_ERR_CONFIG);
    ck_assert_ptr_null(mod);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "cannot load"));
}
END_TEST

START_TEST(load_not_a_module)
{
    struct p11_module *mod = NULL;
    /* libc is a shared object without any C_ entry point. */
    kms_err rc = p11_module_load("libc.so.6", &mod);
    ck_assert_int_eq(rc, KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_GetFunctionList"));
}
END_TEST

/* The initialisation string never carries a secret: names mentioning a PIN
 * or password are refused at any nesting depth; quoted values are not names. */
START_TEST(module_args_checked)
{
    ck_assert_int_eq(p11_module_args_check(NULL), KMS_OK);
    ck_assert_int_eq(p11_module_args_check(""), KMS_OK);
    ck_assert_int_eq(p11_module_args_check("configdir='sql:/var/lib/pins/x' flags=readOnly"),
                     KMS_OK);
    ck_assert_int_eq(
        p11_module_args_check("tokens=<0x4=[configdir='sql:/a' tokenDescription='custos-a']>"),
        KMS_OK);
    ck_assert_int_eq(p11_module_args_check("configdir='sql:/a' pin=1234"), KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "parameter 'pin'"));
    ck_assert_ptr_null(strstr(kms_err_detail(), "1234"));
    ck_assert_int_eq(p11_module_args_check("tokens=<0x4=[configdir='sql:/a' userPassword='x']>"),
                     KMS_ERR_CONFIG);
    ck_assert_int_eq(p11_module_args_check("SO-PIN=1"), KMS_ERR_CONFIG);
    ck_assert_int_eq(p11_module_args_check("a=b\nc=d"), KMS_ERR_CONFIG);
    char big[P11_MODULE_ARGS_MAX + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(p11_module_args_check(big), KMS_ERR_CONFIG);
    /* Refused before the library is even opened. */
    struct p11_module *mod = (void *)1;
    ck_assert_int_eq(p11_module_load_args("/nonexistent/lib.so", "pin=1", &mod), KMS_ERR_CONFIG);
    ck_assert_ptr_null(mod);
}
END_TEST

START_TEST(load_twice_shares_initialisation)
{
    /* A second load of the same library in one process meets
     * CKR_CRYPTOKI_ALREADY_INITIALIZED and must treat it as success. */
    struct p11_module *mod2 = NULL;
    kms_err rc = testenv_module_load(&mod2);
    ck_assert_msg(rc == KMS_OK, "%s", kms_err_detail());
    p11_module_free(mod2);
    /* The first module still works: it still owns the initialisation. */
    uint8_t buf[16];
    ck_assert_int_eq(p11_random(env.eu, buf, sizeof(buf)), KMS_OK);
}
END_TEST

START_TEST(select_by_label_and_uri)
{
    char pin[512];
    struct p11_token *t = NULL;
    testenv_pin_source("eu-west", pin, sizeof(pin));

    ck_assert_int_eq(open_one(env.mod, "eu-west", "pkcs11:token=custos-eu-west", pin, &t), KMS_OK);
    ck_assert_str_eq(p11_token_label(t), "custos-eu-west");
    ck_assert_str_eq(p11_token_region(t), "eu-west");
    char uri[256];
    snprintf(uri, sizeof(uri), "pkcs11:token=custos-eu-west;serial=%s", p11_token_serial(t));
    p11_token_free(t);

    ck_assert_int_eq(open_one(env.mod, "eu-west", uri, pin, &t), KMS_OK);
    ck_assert_str_eq(p11_token_label(t), "custos-eu-west");
    p11_token_free(t);
}
END_TEST

START_TEST(select_missing_ambiguous_duplicate)
{
    char pin[512], pin2[512];
    struct p11_token *t = NULL;
    testenv_pin_source("eu-west", pin, sizeof(pin));
    testenv_pin_source("us-east", pin2, sizeof(pin2));

    ck_assert_int_eq(open_one(env.mod, "eu-west", "no-such-token", pin, &t), KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "no token matches 'no-such-token'"));
    ck_assert_ptr_null(t);

    /* Both dev tokens share the manufacturer (whichever module runs the
     * tests): a selector on it is ambiguous. */
    char uri[128] = "pkcs11:manufacturer=";
    size_t u = strlen(uri);
    for (const char *m = env.eu->manufacturer; *m && u + 4 < sizeof(uri); m++) {
        if (*m == ' ') {
            memcpy(uri + u, "%20", 3);
            u += 3;
        } else {
            uri[u++] = *m;
        }
    }
    uri[u] = '\0';
    ck_assert_int_eq(open_one(env.mod, "eu-west", uri, pin, &t), KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "ambiguous"));

    ck_assert_int_eq(open_one(env.mod, "eu-west", "pkcs11:token=%zz", pin, &t), KMS_ERR_CONFIG);

    struct p11_token_config cfg[2] = {
        {"eu-west", "custos-eu-west", pin, 0},
        {"us-east", "pkcs11:token=custos-eu-west", pin, 0},
    };
    struct p11_token *two[2] = {(void *)1, (void *)1};
    ck_assert_int_eq(p11_tokens_open(env.mod, cfg, 2, two), KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "configured twice"));
    ck_assert_ptr_null(two[0]);
    ck_assert_ptr_null(two[1]);
}
END_TEST

START_TEST(region_names_checked)
{
    char pin[512];
    struct p11_token *t = NULL;
    testenv_pin_source("eu-west", pin, sizeof(pin));
    ck_assert_int_eq(open_one(env.mod, "EU West", "custos-eu-west", pin, &t), KMS_ERR_CONFIG);
    ck_assert_int_eq(open_one(env.mod, "", "custos-eu-west", pin, &t), KMS_ERR_CONFIG);
    ck_assert_int_eq(open_one(env.mod, NULL, "custos-eu-west", pin, &t), KMS_ERR_CONFIG);
}
END_TEST

static void write_file(const char *path, const char *content, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    ck_assert_int_eq(chmod(path, mode), 0);
}

START_TEST(pin_errors)
{
    struct p11_token *t = NULL;
    char path[512], src[600];
    /* Log the application out of eu-west so the PIN source is really used
     * (PKCS#11 login is shared by all sessions of a token). */
    p11_token_free(env.eu);
    env.eu = NULL;

    /* A PIN file readable by others is refused before any login. */
    snprintf(path, sizeof(path), "%s/open-%d.pin", testenv_work_dir(), (int)getpid());
    write_file(path, "whatever\n", 0644);
    snprintf(src, sizeof(src), "file:%s", path);
    ck_assert_int_eq(open_one(env.mod, "eu-west", "custos-eu-west", src, &t), KMS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "too open"));
    unlink(path);

    ck_assert_int_eq(open_one(env.mod, "eu-west", "custos-eu-west", "file:/nonexistent/pin", &t),
                     KMS_ERR_CONFIG);
    ck_assert_int_eq(open_one(env.mod, "eu-west", "custos-eu-west", "plain-pin", &t),
                     KMS_ERR_CONFIG);
    ck_assert_ptr_null(strstr(kms_err_detail(), "plain-pin"));
}
END_TEST

START_TEST(wrong_pin_not_retried)
{
    /* A fresh module instance would share login state with env's, so the
     * wrong-PIN token is opened on a token nobody is logged in to: first
     * close env's sessions on eu-west (which logs the application out). */
    p11_token_free(env.eu);
    env.eu = NULL;

    char path[512], src[600];
    snprintf(path, sizeof(path), "%s/wrong-%d.pin", testenv_work_dir(), (int)getpid());
    write_file(path, "definitely-not-the-pin\n", 0600);
    snprintf(src, sizeof(src), "file:%s", path);
    struct p11_token *t = NULL;
    kms_err rc = open_one(env.mod, "eu-west", "custos-eu-west", src, &t);
    ck_assert_int_eq(rc, KMS_ERR_HSM_PIN);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKR_PIN_INCORRECT"));
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_Login"));
    ck_assert_ptr_null(strstr(kms_err_detail(), "definitely"));
    unlink(path);
}
END_TEST

START_TEST(capabilities)
{
    ck_assert(p11_token_has(env.eu, P11_CAP_GEN_AES_256));
    ck_assert(p11_token_has(env.eu, P11_CAP_AES_GCM));
    ck_assert(p11_token_has(env.eu, P11_CAP_AES_KWP));
    ck_assert(p11_token_has(env.eu, P11_CAP_RSA_OAEP_UNWRAP));
    ck_assert(p11_token_has(env.eu, P11_CAP_HMAC_SHA256));
    ck_assert(p11_token_has(env.eu, P11_CAP_ECDSA));
    ck_assert(p11_token_has(env.eu, P11_CAP_GEN_EC_P256));
    ck_assert(p11_token_has(env.eu, P11_CAP_GEN_RSA_3072));
    /* SoftHSMv2 2.6.1 lacks the single-step RSA-AES key wrap. */
    ck_assert(!p11_token_has(env.eu, P11_CAP_RSA_AES_KEY_WRAP));
    ck_assert(!p11_token_has(env.eu, P11_CAP_COUNT));
    /* RFC 5649 through the mechanism each token really does it with:
     * NSS lists CKM_AES_KEY_WRAP_KWP; SoftHSMv2 does it under _PAD, which
     * the probe found by unwrapping a blob made with the token's AES-ECB. */
    ck_assert_uint_eq(env.eu->kwp_mech,
                      testenv_is_nss() ? CKM_AES_KEY_WRAP_KWP : CKM_AES_KEY_WRAP_PAD);
    /* A forged GCM tag: SoftHSMv2 says CKR_GENERAL_ERROR, NSS the standard. */
    ck_assert(env.eu->integrity_general == !testenv_is_nss());
    /* The core every region needs. */
    ck_assert_ptr_null(p11_token_missing_core(env.eu));

    const enum p11_key_kind kinds[] = {P11_KEY_AES_ENCRYPT, P11_KEY_AES_WRAP,
                                       P11_KEY_AES_TRANSPORT, P11_KEY_HMAC_SHA256,
                                       P11_KEY_EC_P256_SIGN, P11_KEY_RSA3072_UNWRAP};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        ck_assert_msg(p11_key_kind_supported(env.eu, kinds[i]) == KMS_OK, "%s",
                      kms_err_detail());

    /* Take a capability away: the answer must name the missing mechanism. */
    for (size_t i = 0; i < env.eu->n_mechs; i++)
        if (env.eu->mechs[i] == CKM_AES_GCM)
            env.eu->mech_info[i].flags &= ~(CK_FLAGS)CKF_DECRYPT;
    ck_assert(!p11_token_has(env.eu, P11_CAP_AES_GCM));
    ck_assert_str_eq(p11_token_missing_core(env.eu), "CKM_AES_GCM encrypt/decrypt");
    ck_assert_int_eq(p11_key_kind_supported(env.eu, P11_KEY_AES_ENCRYPT), KMS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKM_AES_GCM"));
    /* ...and generation is refused before touching the token. */
    struct p11_key_id id;
    ck_assert_int_eq(p11_key_id_new(env.eu, &id), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, "custos:test"),
                     KMS_ERR_UNSUPPORTED);
    bool exists = true;
    ck_assert_int_eq(p11_key_exists(env.eu, &id, &exists), KMS_OK);
    ck_assert(!exists);
}
END_TEST

START_TEST(pool_respects_cap)
{
    char pin[512];
    struct p11_token *t = NULL;
    struct p11_token_config cfg = {"eu-west", "custos-eu-west",
                                   testenv_pin_source("eu-west", pin, sizeof(pin)), 2};
    p11_token_free(env.eu);
    env.eu = NULL;
    ck_assert_int_eq(p11_tokens_open(env.mod, &cfg, 1, &t), KMS_OK);
    CK_SESSION_HANDLE a, b, c;
    ck_assert_int_eq(p11_session_take(t, &a), KMS_OK);
    ck_assert_int_eq(p11_session_take(t, &b), KMS_OK);
    ck_assert_uint_ne(a, b);
    struct p11_pool_stats st;
    p11_token_pool_stats(t, &st);
    ck_assert_uint_eq(st.cap, 2);
    ck_assert_uint_eq(st.open, 2);
    /* A third lease waits, then gives up with a clear error. */
    ck_assert_int_eq(p11_session_take(t, &c), KMS_ERR_RESOURCE_EXHAUSTED);
    p11_session_give(t, a, false);
    ck_assert_int_eq(p11_session_take(t, &c), KMS_OK);
    ck_assert_uint_eq(c, a);
    p11_session_give(t, b, false);
    p11_session_give(t, c, false);
    p11_token_free(t);
}
END_TEST

START_TEST(probe_available)
{
    ck_assert(p11_token_available(env.eu));
    ck_assert_int_eq(p11_token_probe(env.eu), KMS_OK);
    atomic_store(&env.eu->unavailable, true);
    ck_assert(!p11_token_available(env.eu));
    /* The next operation re-probes and finds the token back. */
    uint8_t buf[8];
    ck_assert_int_eq(p11_random(env.eu, buf, sizeof(buf)), KMS_OK);
    ck_assert(p11_token_available(env.eu));
}
END_TEST

/* The eu-west token directory moved away and back, as a restore does:
 * SoftHSMv2 answers CKR_GENERAL_ERROR for that slot from then on, even when
 * the directory is back; only re-initialising the module (p11_module_recover)
 * brings it back. Paths kept here so the teardown can put it back whatever
 * the test did. */
static char tok_dir[1024], tok_away[1040];

static void put_back(void)
{
    if (tok_away[0] && access(tok_away, F_OK) == 0)
        rename(tok_away, tok_dir);
    tok_away[0] = '\0';
}

static void teardown_put_back(void)
{
    put_back();
    testenv_close(&env);
}

static bool find_token_dir(const char *label, char *out, size_t n)
{
    char tokens[512];
    snprintf(tokens, sizeof(tokens), "%s/tokens", testenv_hsm_dir());
    DIR *d = opendir(tokens);
    if (d == NULL)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char obj[1024];
        snprintf(obj, sizeof(obj), "%s/%s/token.object", tokens, e->d_name);
        FILE *f = fopen(obj, "rb");
        if (f == NULL)
            continue;
        char buf[4096];
        size_t got = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        if (memmem(buf, got, label, strlen(label)) != NULL) {
            if ((size_t)snprintf(out, n, "%s/%s", tokens, e->d_name) < n)
                found = true;
            continue;
        }
    }
    closedir(d);
    return found;
}

START_TEST(token_back_after_reinit)
{
    /* It moves SoftHSMv2's token directory away; an NSS database stays open
     * in the module (docs/pkcs11.md, "Differences between the tokens"). */
    if (testenv_is_nss())
        return;
    ck_assert(find_token_dir("custos-eu-west", tok_dir, sizeof(tok_dir)));
    /* Out of the token directory: a fresh C_Initialize would find it there
     * under any name. */
    ck_assert((size_t)snprintf(tok_away, sizeof(tok_away), "%s/eu-west-token-away",
                               testenv_work_dir()) < sizeof(tok_away));
    uint8_t buf[8];
    ck_assert_int_eq(p11_random(env.us, buf, sizeof(buf)), KMS_OK); /* a pooled us session */
    ck_assert_int_eq(rename(tok_dir, tok_away), 0);
    ck_assert_int_ne(p11_token_probe(env.eu), KMS_OK);
    ck_assert(!p11_token_available(env.eu));
    put_back();
    /* Re-initialisation attempts are spaced out (P11_REINIT_MIN_S doubling):
     * poll well past the first intervals. */
    bool back = false;
    for (int i = 0; i < 200 && !back; i++) {
        back = p11_token_probe(env.eu) == KMS_OK;
        if (!back) {
            struct timespec ts = {0, 100000000L};
            nanosleep(&ts, NULL);
        }
    }
    ck_assert_msg(back, "eu-west never answered again: %s", kms_err_detail());
    ck_assert(p11_token_available(env.eu));
    ck_assert_int_eq(p11_random(env.eu, buf, sizeof(buf)), KMS_OK);
    /* The other token of the module lost its sessions to the
     * re-initialisation and serves on with new ones. */
    ck_assert_int_eq(p11_random(env.us, buf, sizeof(buf)), KMS_OK);
    ck_assert(p11_token_available(env.us));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_token");
    TCase *tc = tcase_create("module");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, load_bad_path);
    tcase_add_test(tc, load_not_a_module);
    tcase_add_test(tc, module_args_checked);
    tcase_add_test(tc, load_twice_shares_initialisation);
    suite_add_tcase(s, tc);

    tc = tcase_create("selection");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, select_by_label_and_uri);
    tcase_add_test(tc, select_missing_ambiguous_duplicate);
    tcase_add_test(tc, region_names_checked);
    suite_add_tcase(s, tc);

    tc = tcase_create("pins");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, pin_errors);
    tcase_add_test(tc, wrong_pin_not_retried);
    suite_add_tcase(s, tc);

    tc = tcase_create("capabilities");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, capabilities);
    suite_add_tcase(s, tc);

    tc = tcase_create("pool");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, pool_respects_cap);
    tcase_add_test(tc, probe_available);
    suite_add_tcase(s, tc);

    tc = tcase_create("recovery");
    tcase_add_checked_fixture(tc, setup, teardown_put_back);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, token_back_after_reinit);
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
