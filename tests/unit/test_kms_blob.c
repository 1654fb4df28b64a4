/*
 * test_kms_blob.c - the public ciphertext format and the canonical context
 * encoding, pinned to the worked example of docs/ciphertext-format.md: if
 * either drifts from the document, this fails. The example is then
 * decrypted with OpenSSL alone, as a tenant holding its key would. The
 * format 1 example (what releases before format 2 wrote) is kept as a
 * fixture: it must still parse, and the kind byte of format 2 must be
 * authenticated (changing it, or relabelling a blob as format 1, breaks
 * the tag).
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

/* The worked example of docs/ciphertext-format.md (format 2, kind data). */
static const char EX_HEADER[] =
    "c5020765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac01";
static const char EX_CTX[] =
    "0002000c636f6e766572736174696f6e0003632d31000674656e616e74000464656d6f";
static const char EX_BLOB[] =
    "c5020765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac01"
    "0ddeb35ec1600b5abe4f80438f3bc9103094b4291ddbb5a05ff15acd";
/* The same inputs as a format 1 blob, byte for byte what the releases
 * before format 2 wrote (and the document's example then). */
static const char EX_V1_HEADER[] =
    "c5010765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac";
static const char EX_V1_BLOB[] =
    "c5010765752d776573743f2a9c0e5b7d41e8a6c4d2b0f1e3a5c700000001a1a2a3a4a5a6a7a8a9aaabac"
    "0ddeb35ec1600b5abe4f8043837fde4eed3b1488a447b9af17299624";

static const uint8_t EX_KEY[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                   11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                   22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* Decrypt blob (header length hl) under the example key and context with
 * OpenSSL alone; 1 when the tag verifies and the plaintext is the example's. */
static int openssl_opens(const uint8_t *blob, size_t blob_len, size_t hl)
{
    uint8_t aad[256], pt[64];
    size_t cl;
    const uint8_t *iv = blob + hl - 12 - (blob[1] == 2 ? 1 : 0);
    memcpy(aad, blob, hl);
    struct kms_ctx_pair p[] = {{"conversation", "c-1"}, {"tenant", "demo"}};
    ck_assert_int_eq(kms_ctx_encode(p, 2, aad + hl, &cl), KMS_OK);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;
    size_t ct_len = blob_len - hl - 16;
    int ok = EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, EX_KEY, iv) == 1 &&
             EVP_DecryptUpdate(c, NULL, &len, aad, (int)(hl + cl)) == 1 &&
             EVP_DecryptUpdate(c, pt, &len, blob + hl, (int)ct_len) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, (void *)(blob + blob_len - 16)) ==
                 1 &&
             EVP_DecryptFinal_ex(c, pt + len, &fin) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok && len == 12 && memcmp(pt, "+14155550123", 12) == 0;
}

START_TEST(header_matches_document)
{
    struct kms_blob_header h;
    memset(&h, 0, sizeof(h));
    h.format = KMS_BLOB_VERSION;
    h.kind = KMS_BLOB_KIND_DATA;
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
    ck_assert_uint_eq(len, 43);
    ck_assert_mem_eq(out, want, len);
    /* The kind byte is the last of the header, at 35 + R. */
    ck_assert_uint_eq(out[35 + 7], KMS_BLOB_KIND_DATA);
    h.kind = KMS_BLOB_KIND_DATA_KEY;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_OK);
    ck_assert_uint_eq(out[42], 0x02);
    /* Format 1, as the old releases wrote it: no kind byte. */
    h.format = KMS_BLOB_VERSION_1;
    h.kind = KMS_BLOB_KIND_LEGACY;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_OK);
    unhex(EX_V1_HEADER, want, &want_len);
    ck_assert_uint_eq(len, 42);
    ck_assert_mem_eq(out, want, len);
    /* A format 1 header cannot claim a kind, and unknown formats or kinds
     * are not written. */
    h.kind = KMS_BLOB_KIND_DATA;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_ERR_USAGE);
    h.format = 3;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_ERR_USAGE);
    h.format = KMS_BLOB_VERSION;
    h.kind = (enum kms_blob_kind)3;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &len), KMS_ERR_USAGE);
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
    ck_assert_uint_eq(blob_len, 71);
    struct kms_blob_header h;
    ck_assert_int_eq(kms_blob_parse(blob, blob_len, &h, &hl), KMS_OK);
    ck_assert_str_eq(h.region, "eu-west");
    ck_assert_uint_eq(h.version, 1);
    ck_assert_uint_eq(h.format, 2);
    ck_assert_int_eq(h.kind, KMS_BLOB_KIND_DATA);
    ck_assert_uint_eq(hl, 43);
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

/* Format 1 blobs (the fixture is what the old code wrote) still parse, as
 * kind "legacy", with the old 35 + R header, and still decrypt. */
START_TEST(format1_fixture_still_reads)
{
    uint8_t blob[256];
    size_t blob_len, hl;
    unhex(EX_V1_BLOB, blob, &blob_len);
    struct kms_blob_header h;
    ck_assert_int_eq(kms_blob_parse(blob, blob_len, &h, &hl), KMS_OK);
    ck_assert_uint_eq(h.format, 1);
    ck_assert_int_eq(h.kind, KMS_BLOB_KIND_LEGACY);
    ck_assert_uint_eq(hl, 42);
    ck_assert_str_eq(h.region, "eu-west");
    ck_assert_uint_eq(h.version, 1);
    ck_assert_int_eq(openssl_opens(blob, blob_len, hl), 1);
    /* Round trip: the parsed header writes back the same bytes. */
    uint8_t out[KMS_BLOB_HEADER_MAX];
    size_t ol;
    ck_assert_int_eq(kms_blob_write_header(&h, out, &ol), KMS_OK);
    ck_assert_uint_eq(ol, hl);
    ck_assert_mem_eq(out, blob, hl);
}
END_TEST

/* The kind is authenticated: a blob whose kind byte was changed parses (as
 * the other kind) but no longer decrypts; nor does a format 2 blob
 * relabelled as format 1 (kind byte removed), which would otherwise turn a
 * typed blob into one of unknown kind. Each of the three kinds is tried. */
START_TEST(kind_is_authenticated)
{
    uint8_t blob[256], b[256];
    size_t n, hl;
    struct kms_blob_header h;
    unhex(EX_BLOB, blob, &n);
    ck_assert_int_eq(kms_blob_parse(blob, n, &h, &hl), KMS_OK);
    ck_assert_int_eq(openssl_opens(blob, n, hl), 1);
    const uint8_t kinds[] = {KMS_BLOB_KIND_LEGACY, KMS_BLOB_KIND_DATA_KEY};
    for (size_t i = 0; i < sizeof(kinds); i++) {
        memcpy(b, blob, n);
        b[42] = kinds[i];
        ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_OK);
        ck_assert_int_eq(h.kind, kinds[i]);
        ck_assert_int_eq(openssl_opens(b, n, hl), 0);
    }
    /* Relabel as format 1: drop the kind byte. */
    memcpy(b, blob, 42);
    memcpy(b + 42, blob + 43, n - 43);
    b[1] = 1;
    ck_assert_int_eq(kms_blob_parse(b, n - 1, &h, &hl), KMS_OK);
    ck_assert_int_eq(h.kind, KMS_BLOB_KIND_LEGACY);
    ck_assert_int_eq(openssl_opens(b, n - 1, hl), 0);
    /* And the reverse: a format 1 blob given a kind byte. */
    uint8_t v1[256];
    size_t n1;
    unhex(EX_V1_BLOB, v1, &n1);
    memcpy(b, v1, 42);
    b[1] = 2;
    b[42] = KMS_BLOB_KIND_DATA;
    memcpy(b + 43, v1 + 42, n1 - 42);
    ck_assert_int_eq(kms_blob_parse(b, n1 + 1, &h, &hl), KMS_OK);
    ck_assert_int_eq(openssl_opens(b, n1 + 1, hl), 0);
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
    /* Shorter than header + tag (format 2: 43 + 16; format 1: 42 + 16). */
    ck_assert_int_eq(kms_blob_parse(blob, 43 + 15, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_blob_parse(blob, 43 + 16, &h, &hl), KMS_OK);
    uint8_t b[256];
    memcpy(b, blob, n);
    b[1] = 1;
    ck_assert_int_eq(kms_blob_parse(b, 42 + 15, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_blob_parse(b, 42 + 16, &h, &hl), KMS_OK);
    memcpy(b, blob, n);
    b[0] = 0xC4;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(b, blob, n);
    b[1] = 3;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "version 3"));
    b[1] = 0;
    ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    /* Unknown kinds. */
    memcpy(b, blob, n);
    for (unsigned k = 3; k < 256; k++) {
        b[42] = (uint8_t)k;
        ck_assert_int_eq(kms_blob_parse(b, n, &h, &hl), KMS_ERR_BAD_CIPHERTEXT);
    }
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
    tcase_add_test(tc, format1_fixture_still_reads);
    tcase_add_test(tc, kind_is_authenticated);
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
