/*
 * test_kms_recovery_stmt.c - the statement officers sign (kms/keys/kms_recovery_stmt.c):
 * its exact bytes, that every field is bound (changing any one changes the
 * statement, so an approval cannot be moved to anything else), signature
 * verification with OpenSSL, and the refusal of free text that could forge a
 * line.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>

#include "kms_recovery_stmt.h"

static struct kms_recovery_record rec(void)
{
    struct kms_recovery_record r;
    memset(&r, 0, sizeof(r));
    snprintf(r.recovery_id, sizeof(r.recovery_id), "0123456789abcdef0123456789abcdef");
    snprintf(r.tenant, sizeof(r.tenant), "bank");
    snprintf(r.key_id, sizeof(r.key_id), "ffeeddccbbaa99887766554433221100");
    snprintf(r.region, sizeof(r.region), "eu-west");
    r.versions[0] = 1;
    r.versions[1] = 3;
    r.n_versions = 2;
    r.mode = 1;
    r.justification = 2;
    snprintf(r.justification_text, sizeof(r.justification_text), "court order 12/2026");
    snprintf(r.case_reference, sizeof(r.case_reference), "CASE-9");
    r.restore_state = 1;
    snprintf(r.requester, sizeof(r.requester), "officer-1");
    r.expires_at = 1795798800;
    return r;
}

static const char *stmt(const struct kms_recovery_record *r)
{
    static char buf[KMS_RECOVERY_STMT_MAX];
    size_t len = 0;
    ck_assert_int_eq(kms_recovery_statement(r, buf, sizeof(buf), &len), KMS_OK);
    ck_assert_uint_eq(len, strlen(buf));
    return buf;
}

START_TEST(test_exact_bytes)
{
    struct kms_recovery_record r = rec();
    ck_assert_str_eq(stmt(&r), "custos recovery approval v1\n"
                               "recovery: 0123456789abcdef0123456789abcdef\n"
                               "tenant: bank\n"
                               "key: ffeeddccbbaa99887766554433221100\n"
                               "region: eu-west\n"
                               "versions: 1,3\n"
                               "mode: RESTORE\n"
                               "target: restore in region eu-west as DISABLED\n"
                               "justification: LAWFUL_REQUEST\n"
                               "justification-text: court order 12/2026\n"
                               "case: CASE-9\n"
                               "requester: officer-1\n"
                               "expires: 1795798800\n");
    r.mode = 2;
    snprintf(r.recipient, sizeof(r.recipient), "legal-eu");
    snprintf(r.recipient_sha256, sizeof(r.recipient_sha256), "%064d", 7);
    ck_assert_ptr_nonnull(strstr(stmt(&r), "mode: EXPORT_WRAPPED\ntarget: export to recipient "
                                           "legal-eu sha256:0000"));
}
END_TEST

START_TEST(test_every_field_bound)
{
    struct kms_recovery_record base = rec();
    char orig[KMS_RECOVERY_STMT_MAX];
    snprintf(orig, sizeof(orig), "%s", stmt(&base));
    for (int i = 0; i < 12; i++) {
        struct kms_recovery_record r = rec();
        switch (i) {
        case 0: r.recovery_id[0] = '9'; break;
        case 1: r.tenant[0] = 'c'; break;
        case 2: r.key_id[0] = '0'; break;
        case 3: r.region[0] = 'u'; break;
        case 4: r.versions[1] = 2; break;
        case 5: r.mode = 2; break;
        case 6: r.restore_state = 2; break;
        case 7: r.justification = 1; break;
        case 8: r.justification_text[0] = 'C'; break;
        case 9: r.case_reference[0] = 'K'; break;
        case 10: r.requester[0] = 'O'; break;
        case 11: r.expires_at++; break;
        }
        ck_assert_msg(strcmp(stmt(&r), orig) != 0, "field %d is not bound", i);
    }
}
END_TEST

START_TEST(test_verify)
{
    EVP_PKEY *k = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(k);
    struct kms_recovery_record r = rec();
    const char *s = stmt(&r);
    uint8_t sig[80];
    size_t n = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k), 1);
    ck_assert_int_eq(EVP_DigestSign(ctx, sig, &n, (const unsigned char *)s, strlen(s)), 1);
    EVP_MD_CTX_free(ctx);
    ck_assert_int_eq(kms_recovery_verify(k, s, strlen(s), sig, n), KMS_OK);
    ck_assert_int_eq(kms_recovery_verify(other, s, strlen(s), sig, n), KMS_ERR_PERMISSION_DENIED);
    /* Another request's statement: the signature is worthless there. */
    r.recovery_id[31] = '0';
    const char *s2 = stmt(&r);
    ck_assert_int_eq(kms_recovery_verify(k, s2, strlen(s2), sig, n), KMS_ERR_PERMISSION_DENIED);
    sig[n / 2] ^= 1;
    r = rec();
    s = stmt(&r);
    ck_assert_int_eq(kms_recovery_verify(k, s, strlen(s), sig, n), KMS_ERR_PERMISSION_DENIED);
    ck_assert_int_eq(kms_recovery_verify(k, s, strlen(s), sig, 3), KMS_ERR_PERMISSION_DENIED);
    ck_assert_int_eq(kms_recovery_verify(NULL, s, strlen(s), sig, n), KMS_ERR_PERMISSION_DENIED);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}
END_TEST

START_TEST(test_text)
{
    ck_assert(kms_recovery_text_ok("Gerichtsbeschluss \xc3\xbc 12/2026", 512));
    ck_assert(!kms_recovery_text_ok("", 512));
    ck_assert(!kms_recovery_text_ok("a\nrecovery: forged", 512));
    ck_assert(!kms_recovery_text_ok("tab\there", 512));
    ck_assert(!kms_recovery_text_ok("del\x7f", 512));
    ck_assert(!kms_recovery_text_ok("bad \xc3", 512));      /* truncated UTF-8 */
    ck_assert(!kms_recovery_text_ok("over \xc0\xaf", 512)); /* overlong */
    ck_assert(!kms_recovery_text_ok("\xff", 512));
    ck_assert(kms_recovery_text_ok("12345", 5));
    ck_assert(!kms_recovery_text_ok("123456", 5));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_recovery_stmt");
    TCase *tc = tcase_create("statement");
    tcase_add_test(tc, test_exact_bytes);
    tcase_add_test(tc, test_every_field_bound);
    tcase_add_test(tc, test_verify);
    tcase_add_test(tc, test_text);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
