/*
 * test_xks_config.c - the XKS endpoints file (kms/xks/xks_config.c): a good
 * file answers prefix -> tenant, access key id -> secret (read from its
 * source), key id -> usage; each rule of the file refuses a document that
 * breaks it (without the secret in the detail); the holder swaps a reloaded
 * file in, keeps a config alive while a request holds it, and keeps the old
 * one when the new file does not load (a credential rotation end to end).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xks_config.h"

static char dir[64];
static char cfg_path[128];

#define SECRET_A "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456/+="
#define SECRET_B "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkji9876543210"
#define SECRET_C "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
#define KEY1 "00112233445566778899aabbccddeeff"
#define KEY2 "ffeeddccbbaa99887766554433221100"

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    ck_assert_int_eq(chmod(path, mode), 0);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test_xks_config.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char p[128];
    snprintf(p, sizeof(p), "%s/a", dir);
    write_file(p, SECRET_A "\n", 0600);
    snprintf(p, sizeof(p), "%s/b", dir);
    write_file(p, SECRET_B, 0400);
    snprintf(p, sizeof(p), "%s/c", dir);
    write_file(p, SECRET_C, 0600);
    snprintf(p, sizeof(p), "%s/short", dir);
    write_file(p, "tooshortsecretvalue1234567890", 0600);
    snprintf(p, sizeof(p), "%s/open", dir);
    write_file(p, SECRET_C, 0644);
    snprintf(cfg_path, sizeof(cfg_path), "%s/xks.json", dir);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Write the config with %D replaced by the temporary directory. */
static void write_cfg(const char *tmpl)
{
    char out[8192];
    size_t o = 0;
    for (const char *s = tmpl; *s && o < sizeof(out) - 80; s++) {
        if (s[0] == '%' && s[1] == 'D') {
            o += (size_t)snprintf(out + o, sizeof(out) - o, "%s", dir);
            s++;
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
    write_file(cfg_path, out, 0600);
}

static const char *good =
    "{\"endpoints\": ["
    " {\"uri_prefix\": \"/acme/eu-1\", \"tenant\": \"acme\", \"comment\": \"rotating\","
    "  \"credentials\": [{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/a\"},"
    "                   {\"access_key_id\": \"AKIAACMESECOND234567\", \"secret\": \"file:%D/b\"}],"
    "  \"keys\": {\"" KEY1 "\": [\"ENCRYPT\", \"DECRYPT\"], \"" KEY2 "\": []}},"
    " {\"uri_prefix\": \"\", \"tenant\": \"globex\", \"aws_region\": \"us-gov-west-1\","
    "  \"region\": \"us-east\", \"replay_check\": false,"
    "  \"credentials\": [{\"access_key_id\": \"AKIAGLOBEXAAAAAAAAAA\", \"secret\": \"file:%D/c\"}],"
    "  \"keys\": {\"" KEY2 "\": [\"DECRYPT\"]}}]}";

START_TEST(good_file_answers)
{
    write_cfg(good);
    struct xks_config *c;
    ck_assert_msg(xks_config_load(cfg_path, &c) == KMS_OK, "%s", kms_err_detail());
    const struct xks_endpoint *ep = xks_config_endpoint(c, "/acme/eu-1", 10);
    ck_assert_ptr_nonnull(ep);
    ck_assert_str_eq(xks_endpoint_tenant(ep), "acme");
    const uint8_t *s;
    size_t n;
    ck_assert(xks_endpoint_secret(ep, "AKIAACMEFIRST2345672", &s, &n));
    ck_assert_uint_eq(n, strlen(SECRET_A)); /* trailing newline stripped */
    ck_assert_mem_eq(s, SECRET_A, n);
    ck_assert(xks_endpoint_secret(ep, "AKIAACMESECOND234567", &s, &n));
    ck_assert_mem_eq(s, SECRET_B, n);
    /* the other tenant's credential does not open this endpoint */
    ck_assert(!xks_endpoint_secret(ep, "AKIAGLOBEXAAAAAAAAAA", &s, &n));
    unsigned u = 99;
    ck_assert(xks_endpoint_key(ep, KEY1, &u));
    ck_assert_uint_eq(u, XKS_USE_ENCRYPT | XKS_USE_DECRYPT);
    ck_assert(xks_endpoint_key(ep, KEY2, &u));
    ck_assert_uint_eq(u, 0);
    /* prefixes match exactly */
    ck_assert_ptr_null(xks_config_endpoint(c, "/acme", 5));
    ck_assert_ptr_null(xks_config_endpoint(c, "/acme/eu-1/x", 12));
    const struct xks_endpoint *g = xks_config_endpoint(c, "", 0);
    ck_assert_ptr_nonnull(g);
    ck_assert_str_eq(xks_endpoint_tenant(g), "globex");
    ck_assert(xks_endpoint_key(g, KEY2, &u));
    ck_assert_uint_eq(u, XKS_USE_DECRYPT);
    ck_assert(!xks_endpoint_key(g, KEY1, &u));
    /* the optional pins: unset means any region and the replay check on */
    ck_assert_ptr_null(xks_endpoint_aws_region(ep));
    ck_assert_ptr_null(xks_endpoint_region(ep));
    ck_assert(xks_endpoint_replay_check(ep));
    ck_assert_str_eq(xks_endpoint_aws_region(g), "us-gov-west-1");
    ck_assert_str_eq(xks_endpoint_region(g), "us-east");
    ck_assert(!xks_endpoint_replay_check(g));
    xks_config_free(c);
}
END_TEST

#define EP(prefix, creds, keys)                                                                \
    "{\"endpoints\": [{\"uri_prefix\": \"" prefix "\", \"tenant\": \"t\", \"credentials\": [" creds \
    "], \"keys\": {" keys "}}]}"
/* one good endpoint with one more member */
#define EPX(member)                                                                            \
    "{\"endpoints\": [{\"uri_prefix\": \"/a\", \"tenant\": \"t\", \"credentials\": [" CRED_A     \
    "], \"keys\": {}, " member "}]}"
#define CRED_A "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/a\"}"
#define CRED_B "{\"access_key_id\": \"AKIAACMESECOND234567\", \"secret\": \"file:%D/b\"}"
#define CRED_C "{\"access_key_id\": \"AKIAGLOBEXAAAAAAAAAA\", \"secret\": \"file:%D/c\"}"

static const struct {
    const char *why, *doc, *detail;
} bad[] = {
    {"not JSON", "{\"endpoints\": [", "line"},
    {"extra top-level member", "{\"endpoints\": [], \"x\": 1}", "the document is"},
    {"duplicate JSON member", "{\"endpoints\": [], \"endpoints\": []}", "duplicate"},
    {"prefix with a dot", EP("/acme.x", CRED_A, ""), "uri_prefix"},
    {"prefix with a trailing slash", EP("/acme/", CRED_A, ""), "uri_prefix"},
    {"relative prefix", EP("acme", CRED_A, ""), "uri_prefix"},
    {"prefix holding /kms/xks/v1", EP("/a/kms/xks/v1", CRED_A, ""), "/kms/xks/v1"},
    {"prefix too long",
     EP("/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        CRED_A, ""),
     "longer than"},
    {"no credentials", EP("/a", "", ""), "credentials"},
    {"three credentials", EP("/a", CRED_A "," CRED_B "," CRED_C, ""), "credentials"},
    {"same access key twice", EP("/a", CRED_A "," CRED_A, ""), "same access key"},
    {"lowercase access key",
     EP("/a", "{\"access_key_id\": \"akiaacmefirst2345672\", \"secret\": \"file:%D/a\"}", ""),
     "access_key_id"},
    {"short access key",
     EP("/a", "{\"access_key_id\": \"AKIA2345\", \"secret\": \"file:%D/a\"}", ""),
     "access_key_id"},
    {"short secret",
     EP("/a", "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/short\"}", ""),
     "43-64"},
    {"missing secret file",
     EP("/a", "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/none\"}", ""),
     "secret"},
    {"secret file readable by others",
     EP("/a", "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/open\"}", ""),
     "secret"},
    {"secret given inline",
     EP("/a", "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"" SECRET_A "\"}", ""),
     "secret"},
    {"unknown credential member",
     EP("/a",
        "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"file:%D/a\", \"x\": 1}",
        ""),
     "exactly"},
    {"key id not hex", EP("/a", CRED_A, "\"zz112233445566778899aabbccddeeff\": []"), "key id"},
    {"usage SIGN", EP("/a", CRED_A, "\"" KEY1 "\": [\"SIGN\"]"), "ENCRYPT or DECRYPT"},
    {"usage twice", EP("/a", CRED_A, "\"" KEY1 "\": [\"ENCRYPT\", \"ENCRYPT\"]"), "once each"},
    {"usage lowercase", EP("/a", CRED_A, "\"" KEY1 "\": [\"encrypt\"]"), "ENCRYPT or DECRYPT"},
    {"same prefix twice",
     "{\"endpoints\": [{\"uri_prefix\": \"/a\", \"tenant\": \"t\", \"credentials\": [" CRED_A
     "], \"keys\": {}}, {\"uri_prefix\": \"/a\", \"tenant\": \"u\", \"credentials\": [" CRED_B
     "], \"keys\": {}}]}",
     "same as"},
    {"access key in two endpoints",
     "{\"endpoints\": [{\"uri_prefix\": \"/a\", \"tenant\": \"t\", \"credentials\": [" CRED_A
     "], \"keys\": {}}, {\"uri_prefix\": \"/b\", \"tenant\": \"u\", \"credentials\": [" CRED_A
     "], \"keys\": {}}]}",
     "already used"},
    {"aws_region in capitals", EPX("\"aws_region\": \"EU-WEST-1\""), "aws_region"},
    {"aws_region without its number", EPX("\"aws_region\": \"eu-west\""), "aws_region"},
    {"aws_region not a string", EPX("\"aws_region\": 1"), "exactly"},
    {"empty region", EPX("\"region\": \"\""), "region"},
    {"replay_check not a boolean", EPX("\"replay_check\": \"no\""), "replay_check"},
    {"no tenant",
     "{\"endpoints\": [{\"uri_prefix\": \"/a\", \"credentials\": [" CRED_A "], \"keys\": {}}]}",
     "exactly"},
};

START_TEST(bad_files_refused)
{
    write_cfg(bad[_i].doc);
    struct xks_config *c = (struct xks_config *)0x1;
    ck_assert_msg(xks_config_load(cfg_path, &c) == KMS_ERR_CONFIG, "%s loaded", bad[_i].why);
    ck_assert_ptr_null(c);
    const char *d = kms_err_detail();
    ck_assert_msg(strstr(d, bad[_i].detail) != NULL, "%s: detail \"%s\"", bad[_i].why, d);
    ck_assert_msg(strstr(d, "abcdefghijklmnopqrstuvwxyz") == NULL &&
                      strstr(d, "tooshortsecret") == NULL,
                  "%s: a secret in the detail", bad[_i].why);
}
END_TEST

/* The whole reason of a secret source's failure, after the JSON path once
 * (the detail used to be formatted into itself: path doubled, reason cut,
 * and an earlier error's text showing through). Two rounds, so the second
 * starts with the first's detail still in the buffer. */
START_TEST(secret_errors_read_whole)
{
    setenv("XKS_TEST_EMPTY_VAR", "", 1);
    unsetenv("XKS_TEST_NO_SUCH_VAR");
    char open_path[160], open_want[300], none_want[300];
    snprintf(open_path, sizeof(open_path), "%s/open", dir);
    snprintf(open_want, sizeof(open_want),
             "xks: endpoints[0].credentials[0].secret: secret file %s: mode 0644 is too open "
             "(want 0600 or 0400)",
             open_path);
    snprintf(none_want, sizeof(none_want),
             "xks: endpoints[0].credentials[0].secret: secret file %s/none: No such file or "
             "directory",
             dir);
    const struct {
        const char *src, *want;
    } cases[] = {
        {"file:%D/open", open_want},
        {"file:%D/none", none_want},
        {SECRET_A, "xks: endpoints[0].credentials[0].secret: secret source must start with "
                   "file: or env:"},
        {"env:XKS_TEST_NO_SUCH_VAR", "xks: endpoints[0].credentials[0].secret: secret source "
                                     "env:XKS_TEST_NO_SUCH_VAR: variable not set"},
        {"env:XKS_TEST_EMPTY_VAR", "xks: endpoints[0].credentials[0].secret: secret source "
                                   "env:XKS_TEST_EMPTY_VAR: variable not set"},
        {"file:", "xks: endpoints[0].credentials[0].secret: secret file : No such file or "
                  "directory"},
    };
    for (int round = 0; round < 2; round++) {
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
            char cred[400], doc[1024];
            snprintf(cred, sizeof(cred),
                     "{\"access_key_id\": \"AKIAACMEFIRST2345672\", \"secret\": \"%s\"}",
                     cases[k].src);
            snprintf(doc, sizeof(doc),
                     "{\"endpoints\": [{\"uri_prefix\": \"/a\", \"tenant\": \"t\", "
                     "\"credentials\": [%s], \"keys\": {}}]}",
                     cred);
            write_cfg(doc);
            struct xks_config *c = NULL;
            ck_assert_int_eq(xks_config_load(cfg_path, &c), KMS_ERR_CONFIG);
            ck_assert_str_eq(kms_err_detail(), cases[k].want);
        }
    }
    unsetenv("XKS_TEST_EMPTY_VAR");
}
END_TEST

START_TEST(holder_rotation_and_failed_reload)
{
    write_cfg(EP("/r", CRED_A, ""));
    struct xks_config_holder *h;
    ck_assert_int_eq(xks_config_holder_open(cfg_path, &h), KMS_OK);
    const struct xks_config *before = xks_config_holder_acquire(h);
    const struct xks_endpoint *ep = xks_config_endpoint(before, "/r", 2);
    const uint8_t *s;
    size_t n;
    ck_assert(xks_endpoint_secret(ep, "AKIAACMEFIRST2345672", &s, &n));
    ck_assert(!xks_endpoint_secret(ep, "AKIAACMESECOND234567", &s, &n));

    /* rotation step 1: both credentials */
    write_cfg(EP("/r", CRED_A "," CRED_B, ""));
    ck_assert_int_eq(xks_config_holder_reload(h), KMS_OK);
    const struct xks_config *both = xks_config_holder_acquire(h);
    ep = xks_config_endpoint(both, "/r", 2);
    ck_assert(xks_endpoint_secret(ep, "AKIAACMEFIRST2345672", &s, &n));
    ck_assert(xks_endpoint_secret(ep, "AKIAACMESECOND234567", &s, &n));
    /* a request that started before the reload still has its config */
    ep = xks_config_endpoint(before, "/r", 2);
    ck_assert(xks_endpoint_secret(ep, "AKIAACMEFIRST2345672", &s, &n));
    ck_assert_mem_eq(s, SECRET_A, n);
    xks_config_holder_release(h, before);
    xks_config_holder_release(h, both);

    /* a broken file keeps the current config */
    write_cfg("{\"endpoints\": [");
    ck_assert_int_eq(xks_config_holder_reload(h), KMS_ERR_CONFIG);
    const struct xks_config *kept = xks_config_holder_acquire(h);
    ck_assert(xks_endpoint_secret(xks_config_endpoint(kept, "/r", 2), "AKIAACMESECOND234567",
                                  &s, &n));
    xks_config_holder_release(h, kept);

    /* rotation step 2: the old credential removed */
    write_cfg(EP("/r", CRED_B, ""));
    ck_assert_int_eq(xks_config_holder_reload(h), KMS_OK);
    const struct xks_config *after = xks_config_holder_acquire(h);
    ep = xks_config_endpoint(after, "/r", 2);
    ck_assert(!xks_endpoint_secret(ep, "AKIAACMEFIRST2345672", &s, &n));
    ck_assert(xks_endpoint_secret(ep, "AKIAACMESECOND234567", &s, &n));
    xks_config_holder_release(h, after);
    xks_config_holder_free(h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("xks_config");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, good_file_answers);
    tcase_add_loop_test(tc, bad_files_refused, 0, (int)(sizeof(bad) / sizeof(bad[0])));
    tcase_add_test(tc, secret_errors_read_whole);
    tcase_add_test(tc, holder_rotation_and_failed_reload);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
