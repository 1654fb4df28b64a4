/*
 * test_kms_blob.c - the public ciphertext format and the canonical context
 * encoding, pinned to the worked example of docs/ciphertext-format.md: if
 * either drifts from the document, this fails. The example is then
 * decrypted with OpenSSL alone, as a tenant holding its key would.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "kms_blob.h"

static void unhex(const char *h, uint8_t *out, size_t *out_len)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    *out_len = n;
}

/* The worked example of docs/ciphertext-format.md. */
static const char EX_HEADER[] =
    "c5010765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac";
static const char EX_CTX[] =
    "0002000c636f6e766572736174696f6e0003632d31000674656e616e74000464656d6f";
static const char EX_BLOB[] =
    "c5010765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac"
    "0ddeb35ec1600b5abe4f8043837fde4eed3b1488a447b9af17299624";

START_TEST(header_matches_document)
{
    struct kms_blob_header h;
    memset(&h, 0, sizeof(h));
    strcpy(h.region, "eu-west");
    ck_assert_int_eq(kms_key_id_parse("3f2a9c0e5b7d41e8a6c4d2b0f1e3a5c7", h.key_id), KMS_OK);
    h.version = 1;
    size_t n;
    uint8_t iv[16];
    unhex("a1a2a3a4a5a6a7a8a9aaabac", iv, &n);
    memcpy(h.iv, iv, 12);
    uint8_t out[KMS_BLOB_HEADER_MAX], want[128];
    size_t len, want_len;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_OK);
    unhex(EX_HEADER, want, &want_len);
    ck_assert_uint_eq(len, want_len);
    ck_assert_mem_eq(out, want, len);
}
END_TEST

START_TEST(context_encoding_matches_document)
{
    /* Given in the "wrong" order: the encoding sorts by key. */
    struct kms_ctx_pair p[] = {{"tenant", "demo"}, {"conversation", "c-1"}};
    uint8_t out[KMS_CTX_ENCODED_MAX], want[128];
    size_t len, want_len;
    ck_assert_int_eq(kms_ctx_encode(p, 2, out, &len), KMS_OK);
    unhex(EX_CTX, want, &want_len);
    ck_assert_uint_eq(len, want_len);
    ck_assert_mem_eq(out, want, len);
    /* The empty context is two zero bytes. */
    ck_assert_int_eq(kms_ctx_encode(NULL, 0, out, &len), KMS_OK);
    ck_assert_uint_eq(len, 2);
    ck_assert_uint_eq(out[0] | out[1], 0);
}
END_TEST

START_TEST(example_decrypts_with_openssl_alone)
{
    uint8_t blob[256], aad[256], key[32], pt[64];
    size_t blob_len, hl, cl;
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    unhex(EX_BLOB, blob, &blob_len);
    struct kms_blob_header h;
    ck_assert_int_eq(kms_blob_parse(blob, blob_len, &h, &hl), KMS_OK);
    ck_assert_str_eq(h.region, "eu-west");
    ck_assert_uint_eq(h.version, 1);
    ck_assert_uint_eq(hl, 42);
    memcpy(aad, blob, hl);
    struct kms_ctx_pair p[] = {{"conversation", "c-1"}, {"tenant", "demo"}};
    ck_assert_int_eq(kms_ctx_encode(p, 2, aad + hl, &cl), KMS_OK);

    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len, fin;
    size_t ct_len = blob_len - hl - 16;
    ck_assert_int_eq(EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, h.iv), 1);
    ck_assert_int_eq(EVP_DecryptUpdate(c, NULL, &len, aad, (int)(hl + cl)), 1);
    ck_assert_int_eq(EVP_DecryptUpdate(c, pt, &len, blob + hl, (int)ct_len), 1);
    ck_assert_int_eq(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, blob + blob_len - 16), 1);
    ck_assert_int_eq(EVP_DecryptFinal_ex(c, pt + len, &fin), 1);
    EVP_CIPHER_CTX_free(c);
    ck_assert_uint_eq((size_t)len, 12);
    ck_assert_mem_eq(pt, "+14155550123", 12);
}
END_TEST

START_TEST(parse_refuses_malformed)
{
    uint8_t blob[256];
    size_t n, hl;
    struct kms_blob_header h;
    unhex(EX_BLOB, blob, &n);
    ck_assert_int_eq(kms_blob_parse(blob, 2, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_blob_parse(NULL, 0, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    /* Shorter than header + tag. */
    ck_assert_int_eq(kms_blob_parse(blob, 42 + 15, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_blob_parse(blob, 42 + 16, &h, &hl), KMS_OK);
    uint8_t b[256];
    memcpy(b, blob, n);
    b[0] = 0xC4;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(b, blob, n);
    b[1] = 2;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "version 2"));
    memcpy(b, blob, n);
    b[2] = 0;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    b[2] = 64;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(b, blob, n);
    b[3] = 'E'; /* upper case is not a region character */
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(b, blob, n);
    memset(b + 26, 0, 4); /* version 0 */
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_blob_parse(blob, KMS_BLOB_MAX + 1, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
}
END_TEST

START_TEST(context_limits)
{
    uint8_t out[KMS_CTX_ENCODED_MAX];
    size_t len;
    struct kms_ctx_pair dup[] = {{"a", "1"}, {"a", "2"}};
    ck_assert_int_eq(kms_ctx_encode(dup, 2, out, &len), KMS_ERR_INVALID_ARGUMENT);
    struct kms_ctx_pair empty_key[] = {{"", "1"}};
    ck_assert_int_eq(kms_ctx_encode(empty_key, 1, out, &len), KMS_ERR_INVALID_ARGUMENT);
    char big[KMS_CTX_VALUE_MAX + 2];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct kms_ctx_pair bigv[] = {{"k", big}};
    ck_assert_int_eq(kms_ctx_encode(bigv, 1, out, &len), KMS_ERR_INVALID_ARGUMENT);
    big[KMS_CTX_VALUE_MAX] = '\0';
    ck_assert_int_eq(kms_ctx_encode(bigv, 1, out, &len), KMS_OK);
    /* Invalid UTF-8: a lone continuation byte, an overlong '/', a surrogate. */
    const char *bad[] = {"\x80", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\xe2\x82"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct kms_ctx_pair p[] = {{"k", bad[i]}};
        ck_assert_int_eq(kms_ctx_encode(p, 1, out, &len), KMS_ERR_INVALID_ARGUMENT);
    }
    struct kms_ctx_pair good[] = {{"name", "Zoë ✓ 𝄞"}};
    ck_assert_int_eq(kms_ctx_encode(good, 1, out, &len), KMS_OK);
    /* Too many pairs, and too many bytes in all. */
    struct kms_ctx_pair many[KMS_CTX_MAX_PAIRS + 1];
    char keys[KMS_CTX_MAX_PAIRS + 1][16];
    for (int i = 0; i <= KMS_CTX_MAX_PAIRS; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        many[i] = (struct kms_ctx_pair){keys[i], "v"};
    }
    ck_assert_int_eq(kms_ctx_encode(many, KMS_CTX_MAX_PAIRS + 1, out, &len),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_ctx_encode(many, KMS_CTX_MAX_PAIRS, out, &len), KMS_OK);
    memset(big, 'v', KMS_CTX_VALUE_MAX);
    big[KMS_CTX_VALUE_MAX] = '\0';
    struct kms_ctx_pair heavy[9];
    for (int i = 0; i < 9; i++)
        heavy[i] = (struct kms_ctx_pair){keys[i], big};
    ck_assert_int_eq(kms_ctx_encode(heavy, 9, out, &len), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(key_ids)
{
    uint8_t id[16];
    char s[33];
    ck_assert_int_eq(kms_key_id_parse("00ff10ab00ff10ab00ff10ab00ff10ab", id), KMS_OK);
    kms_key_id_format(id, s);
    ck_assert_str_eq(s, "00ff10ab00ff10ab00ff10ab00ff10ab");
    ck_assert_int_eq(kms_key_id_parse("00FF10AB00FF10AB00FF10AB00FF10AB", id),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_key_id_parse("00ff", id), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_key_id_parse("00ff10ab00ff10ab00ff10ab00ff10ag", id),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_key_id_parse(NULL, id), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_blob");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, header_matches_document);
    tcase_add_test(tc, context_encoding_matches_document);
    tcase_add_test(tc, example_decrypts_with_openssl_alone);
    tcase_add_test(tc, parse_refuses_malformed);
    suite_add_tcase(s, tc);
    tc = tcase_create("context");
    tcase_add_test(tc, context_limits);
    tcase_add_test(tc, key_ids);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
