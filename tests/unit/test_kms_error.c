/*
 * test_kms_error.c - what a client is told of a refusal (kms_err_client_msg):
 * a handler's own detail as it is, a lower layer's ("store: ...", PKCS#11,
 * token labels, the policy engine) replaced by a fixed sentence.
 */
#include <check.h>
#include <string.h>

#include "kms_error.h"

START_TEST(internal_details_are_not_shown)
{
    static const char *const internal[] = {
        "store: list keys: malformed page token",
        "store: create key: description is not UTF-8 text without control characters",
        "p11_key: something",
        "pkcs11: module",
        "pol_decide: NULL decision",
        "sqlite: busy",
        "C_Encrypt failed: CKR_DEVICE_ERROR",
        "token 'custos-eu-west' refuses RSA-OAEP with SHA-256",
    };
    static const kms_err codes[] = {KMS_ERR_INVALID_ARGUMENT, KMS_ERR_NOT_FOUND,
                                    KMS_ERR_FAILED_PRECONDITION, KMS_ERR_UNSUPPORTED,
                                    KMS_ERR_PERMISSION_DENIED, KMS_ERR_ALREADY_EXISTS};
    for (size_t i = 0; i < sizeof(internal) / sizeof(internal[0]); i++)
        for (size_t c = 0; c < sizeof(codes) / sizeof(codes[0]); c++) {
            const char *m = kms_err_client_msg(codes[c], internal[i]);
            ck_assert_ptr_nonnull(m);
            ck_assert_ptr_ne(m, internal[i]);
            ck_assert_ptr_null(strstr(m, "store"));
            ck_assert_ptr_null(strstr(m, "CKR_"));
            ck_assert_ptr_null(strstr(m, "custos-eu-west"));
        }
    ck_assert_str_eq(kms_err_client_msg(KMS_ERR_NOT_FOUND, "store: get key: x"), "not found");
}
END_TEST

START_TEST(handler_details_pass)
{
    static const char *const mine[] = {
        "page_token is not one this server issued",
        "field \"origin\" is not a defined KeyOrigin value",
        "key not found",
        "description longer than 256 bytes",
        "key is DISABLED",
    };
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++)
        ck_assert_ptr_eq(kms_err_client_msg(KMS_ERR_INVALID_ARGUMENT, mine[i]), mine[i]);
}
END_TEST

/* Every error's code is one of Twirp's, and the list is Twirp v7's: the
 * metrics' labels, the HTTP status table and the provider index it. */
START_TEST(every_code_is_twirps)
{
    ck_assert_str_eq(kms_err_twirp_code(KMS_OK), "ok");
    for (int e = 1; e <= 700; e++) {
        const char *code = kms_err_twirp_code((kms_err)e);
        ck_assert_msg(kms_twirp_code_index(code) >= 0, "error %d -> unlisted code %s", e, code);
    }
    ck_assert_int_eq(kms_twirp_code_index("dataloss"), KMS_TWIRP_CODE_COUNT - 1);
    ck_assert_int_eq(kms_twirp_code_index("canceled"), 0);
    ck_assert_int_eq(kms_twirp_code_index("data_loss"), -1);
    ck_assert_int_eq(kms_twirp_code_index(NULL), -1);
    for (int i = 0; i < KMS_TWIRP_CODE_COUNT; i++)
        ck_assert_int_eq(kms_twirp_code_index(kms_twirp_codes[i]), i);
}
END_TEST

/* A detail may wrap the current one: "outer: <the detail before>". */
START_TEST(detail_wraps_itself)
{
    kms_err_set(KMS_ERR_CONFIG, "secret source file:/x: mode 0644 is too open");
    ck_assert_int_eq(kms_err_set(KMS_ERR_CONFIG, "endpoints[0].credentials[1].secret: %s",
                                 kms_err_detail()),
                     KMS_ERR_CONFIG);
    ck_assert_str_eq(kms_err_detail(), "endpoints[0].credentials[1].secret: secret source "
                                       "file:/x: mode 0644 is too open");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_error");
    TCase *tc = tcase_create("client_msg");
    tcase_add_test(tc, internal_details_are_not_shown);
    tcase_add_test(tc, handler_details_pass);
    tcase_add_test(tc, every_code_is_twirps);
    tcase_add_test(tc, detail_wraps_itself);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
