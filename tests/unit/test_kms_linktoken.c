/*
 * test_kms_linktoken.c - the link token's bytes and the MAC's input
 * (kms_linktoken.h), pinned to the worked example of docs/link-tokens.md.
 * The expected bytes were computed from the document by an independent
 * Python implementation; the example MAC is HMAC-SHA256 under the
 * example's key 00 01 .. 1f (computed here with OpenSSL, as the HSM does
 * with its own key), so a change of either encoding fails this test.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "kms_linktoken.h"

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

static const char EX_MAC_INPUT[] =
    "637573746f732e6c696e6b2d746f6b656e2e7631000100000001a1a2a3a4a5a6a7a8a9aaabac000000006b0c"
    "c900000464656d6f00203366326139633065356237643431653861366334643262306631653361356337000765"
    "752d77657374000c766965772d6d657373616765000d2b34343737303039303031323300086d73672d303030"
    "31dadb06e0d2ebf939a88089ab1312a0e10552eefcc8be90ae1dea835045a8cf7b";
static const char EX_RAW[] =
    "010001a1a2a3a4a5a6a7a8a9aaabac006b0cc900753c250282dce1d33da558e69cf8f087";
static const char EX_TOKEN[] = "AQABoaKjpKWmp6ipqqusAGsMyQB1PCUCgtzh0z2lWOac-PCH";
static const char EX_RECIPIENT_INPUT[] =
    "637573746f732e6c696e6b2d726563697069656e742e763100000d2b343437373030393030313233";
static const char EX_RECIPIENT[] = "03ebba6828b276b1db66ff83146d1f4a";

static uint8_t ex_id[12] = {0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac};
static uint8_t ex_dev[32];

static struct kms_linkmac example(void)
{
    SHA256((const uint8_t *)"app-instance-42", 15, ex_dev);
    struct kms_linkmac m = {"demo",         "3f2a9c0e5b7d41e8a6c4d2b0f1e3a5c7",
                            "eu-west",      1,
                            ex_id,          1796000000,
                            "view-message", "+447700900123",
                            ex_dev,         "msg-0001"};
    return m;
}

static void hmac_key(const uint8_t *in, size_t n, uint8_t out[32])
{
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    unsigned len = 32;
    HMAC(EVP_sha256(), key, sizeof(key), in, n, out, &len);
}

START_TEST(mac_input_matches_document)
{
    struct kms_linkmac m = example();
    uint8_t got[KMS_LINKTOKEN_MAC_INPUT_MAX], want[KMS_LINKTOKEN_MAC_INPUT_MAX];
    size_t n = 0, wn = 0;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, got, sizeof(got), &n), KMS_OK);
    unhex(EX_MAC_INPUT, want, &wn);
    ck_assert_uint_eq(n, wn);
    ck_assert_mem_eq(got, want, n);
    /* The recipient's index input, and its domain differs from the MAC's. */
    ck_assert_int_eq(kms_linktoken_recipient_input("+447700900123", got, sizeof(got), &n), KMS_OK);
    unhex(EX_RECIPIENT_INPUT, want, &wn);
    ck_assert_uint_eq(n, wn);
    ck_assert_mem_eq(got, want, n);
    uint8_t mac[32], idx[16];
    hmac_key(got, n, mac);
    unhex(EX_RECIPIENT, idx, &wn);
    ck_assert_mem_eq(mac, idx, 16);
}
END_TEST

START_TEST(token_matches_document)
{
    struct kms_linkmac m = example();
    uint8_t in[KMS_LINKTOKEN_MAC_INPUT_MAX], mac[32];
    size_t n = 0;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, in, sizeof(in), &n), KMS_OK);
    hmac_key(in, n, mac);
    struct kms_linktoken t = {.key_version = 1, .expires_at = 1796000000};
    memcpy(t.id, ex_id, sizeof(t.id));
    memcpy(t.mac, mac, sizeof(t.mac));
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN], want[64];
    size_t wn = 0;
    ck_assert_int_eq(kms_linktoken_raw(&t, raw), KMS_OK);
    unhex(EX_RAW, want, &wn);
    ck_assert_uint_eq(wn, KMS_LINKTOKEN_RAW_LEN);
    ck_assert_mem_eq(raw, want, wn);
    char text[KMS_LINKTOKEN_TEXT_LEN + 1];
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_OK);
    ck_assert_str_eq(text, EX_TOKEN);
    ck_assert_uint_eq(strlen(text), 48);
    struct kms_linktoken back;
    uint8_t braw[KMS_LINKTOKEN_RAW_LEN];
    ck_assert_int_eq(kms_linktoken_decode(text, strlen(text), &back, braw), KMS_OK);
    ck_assert_uint_eq(back.key_version, 1);
    ck_assert_int_eq(back.expires_at, 1796000000);
    ck_assert_mem_eq(back.id, ex_id, 12);
    ck_assert_mem_eq(back.mac, mac, 16);
    ck_assert_mem_eq(braw, raw, sizeof(raw));
}
END_TEST

START_TEST(round_trip_extremes)
{
    struct kms_linktoken t = {.key_version = 65535, .expires_at = KMS_LINKTOKEN_EXPIRY_MAX};
    memset(t.id, 0xff, sizeof(t.id));
    memset(t.mac, 0xfe, sizeof(t.mac));
    char text[KMS_LINKTOKEN_TEXT_LEN + 1];
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_OK);
    struct kms_linktoken back;
    ck_assert_int_eq(kms_linktoken_decode(text, 48, &back, NULL), KMS_OK);
    ck_assert_uint_eq(back.key_version, 65535);
    ck_assert_int_eq(back.expires_at, KMS_LINKTOKEN_EXPIRY_MAX);
    /* Out of range: nothing is encoded. */
    t.key_version = 65536;
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_ERR_INVALID_ARGUMENT);
    t.key_version = 0;
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_ERR_INVALID_ARGUMENT);
    t.key_version = 1;
    t.expires_at = KMS_LINKTOKEN_EXPIRY_MAX + 1;
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_ERR_INVALID_ARGUMENT);
    t.expires_at = 0;
    ck_assert_int_eq(kms_linktoken_encode(&t, text), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(decode_refuses)
{
    struct kms_linktoken t;
    char buf[64];
    ck_assert_int_eq(kms_linktoken_decode(EX_TOKEN, 47, &t, NULL), KMS_ERR_INVALID_ARGUMENT);
    snprintf(buf, sizeof(buf), "%sA", EX_TOKEN);
    ck_assert_int_eq(kms_linktoken_decode(buf, 49, &t, NULL), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_linktoken_decode(NULL, 48, &t, NULL), KMS_ERR_INVALID_ARGUMENT);
    /* Standard base64's '+' '/', padding, space, NUL: not base64url. */
    const char bad[] = {'+', '/', '=', ' ', '.', '\0', '\n'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        memcpy(buf, EX_TOKEN, 48);
        buf[40] = bad[i];
        ck_assert_int_eq(kms_linktoken_decode(buf, 48, &t, NULL), KMS_ERR_INVALID_ARGUMENT);
    }
    /* Format 0 and 2, version 0, expiry 0. */
    struct kms_linktoken ok = {.key_version = 1, .expires_at = 5};
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN];
    ck_assert_int_eq(kms_linktoken_raw(&ok, raw), KMS_OK);
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int c = 0; c < 4; c++) {
        uint8_t r[KMS_LINKTOKEN_RAW_LEN];
        memcpy(r, raw, sizeof(r));
        if (c == 0)
            r[0] = 0;
        else if (c == 1)
            r[0] = 2;
        else if (c == 2)
            r[1] = r[2] = 0;
        else
            memset(r + 15, 0, 5);
        for (size_t g = 0; g < 12; g++) {
            uint32_t v = (uint32_t)r[3 * g] << 16 | (uint32_t)r[3 * g + 1] << 8 | r[3 * g + 2];
            for (int k = 0; k < 4; k++)
                buf[4 * g + (size_t)k] = b64[(v >> (18 - 6 * k)) & 63];
        }
        ck_assert_int_eq(kms_linktoken_decode(buf, 48, &t, NULL), KMS_ERR_INVALID_ARGUMENT);
    }
}
END_TEST

/* Every one-character change of a valid token is refused or decodes to
 * other bytes: no two texts name the same token (base64url of 36 bytes has
 * no unused bits). */
START_TEST(decode_is_injective)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t want[KMS_LINKTOKEN_RAW_LEN], got[KMS_LINKTOKEN_RAW_LEN];
    struct kms_linktoken t;
    ck_assert_int_eq(kms_linktoken_decode(EX_TOKEN, 48, &t, want), KMS_OK);
    char buf[49];
    for (size_t i = 0; i < 48; i++)
        for (size_t c = 0; c < 64; c++) {
            memcpy(buf, EX_TOKEN, 49);
            if (buf[i] == b64[c])
                continue;
            buf[i] = b64[c];
            if (kms_linktoken_decode(buf, 48, &t, got) == KMS_OK)
                ck_assert(memcmp(got, want, sizeof(got)) != 0);
        }
}
END_TEST

START_TEST(mac_input_bounds_and_separation)
{
    struct kms_linkmac m = example();
    uint8_t a[KMS_LINKTOKEN_MAC_INPUT_MAX], b[KMS_LINKTOKEN_MAC_INPUT_MAX];
    size_t na = 0, nb = 0;
    /* Moving a byte from one field to the next changes the encoding. */
    m.purpose = "ab";
    m.message_ref = "c";
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_OK);
    m.purpose = "a";
    m.message_ref = "bc";
    ck_assert_int_eq(kms_linktoken_mac_input(&m, b, sizeof(b), &nb), KMS_OK);
    ck_assert(na != nb || memcmp(a, b, na) != 0);
    /* Every bound field: one byte over is refused, nothing written. */
    char big[200];
    memset(big, 'x', sizeof(big));
    big[17] = '\0';
    m = example();
    m.phone = big; /* 17 > 16 */
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_uint_eq(na, 0);
    memset(big, 'x', sizeof(big));
    big[129] = '\0';
    m = example();
    m.message_ref = big;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_ERR_INVALID_ARGUMENT);
    big[65] = '\0';
    m = example();
    m.purpose = big;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_ERR_INVALID_ARGUMENT);
    m = example();
    m.tenant = big;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_ERR_INVALID_ARGUMENT);
    /* The largest input fits the documented maximum. */
    char s64[65], s16[17], s128[129];
    memset(s64, 'y', 64);
    s64[64] = '\0';
    memset(s16, '1', 16);
    s16[16] = '\0';
    memset(s128, 'z', 128);
    s128[128] = '\0';
    m = example();
    m.tenant = m.region = m.purpose = s64;
    m.phone = s16;
    m.message_ref = s128;
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, sizeof(a), &na), KMS_OK);
    ck_assert_uint_le(na, KMS_LINKTOKEN_MAC_INPUT_MAX);
    /* A buffer too small is refused. */
    m = example();
    ck_assert_int_eq(kms_linktoken_mac_input(&m, a, 100, &na), KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(token_ids)
{
    char hex[25];
    kms_linktoken_id_hex(ex_id, hex);
    ck_assert_str_eq(hex, "a1a2a3a4a5a6a7a8a9aaabac");
    uint8_t back[12];
    ck_assert(kms_linktoken_id_parse(hex, back));
    ck_assert_mem_eq(back, ex_id, 12);
    ck_assert(!kms_linktoken_id_parse("A1A2A3A4A5A6A7A8A9AAABAC", back));
    ck_assert(!kms_linktoken_id_parse("a1a2a3a4a5a6a7a8a9aaabа", back));
    ck_assert(!kms_linktoken_id_parse("a1a2a3a4a5a6a7a8a9aaab", back));
    ck_assert(!kms_linktoken_id_parse("a1a2a3a4a5a6a7a8a9aaabacd", back));
    ck_assert(!kms_linktoken_id_parse("a1a2a3a4a5a6a7a8a9aaabag", back));
    ck_assert(!kms_linktoken_id_parse(NULL, back));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_linktoken");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, mac_input_matches_document);
    tcase_add_test(tc, token_matches_document);
    tcase_add_test(tc, round_trip_extremes);
    tcase_add_test(tc, decode_refuses);
    tcase_add_test(tc, decode_is_injective);
    suite_add_tcase(s, tc);
    tc = tcase_create("inputs");
    tcase_add_test(tc, mac_input_bounds_and_separation);
    tcase_add_test(tc, token_ids);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
