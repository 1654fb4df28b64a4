/*
 * test_kms_utf8.c - the one UTF-8 validator (kms/base/kms_utf8.c): every
 * code point round-trips; overlong forms, surrogates, code points past
 * U+10FFFF and truncated sequences are refused; an ill-formed sequence is
 * consumed by maximal subpart (Unicode 15, Table 3-8); NUL is the
 * _nonul variant's business only.
 */
#include <check.h>
#include <string.h>

#include "kms_utf8.h"

/* The shortest encoding of cp in len bytes (len may be longer than the
 * shortest: an overlong form). */
static size_t encode(uint32_t cp, size_t len, uint8_t *out)
{
    static const uint8_t lead[] = {0, 0, 0xc0, 0xe0, 0xf0};
    if (len == 1) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    for (size_t k = len - 1; k > 0; k--) {
        out[k] = (uint8_t)(0x80 | (cp & 0x3f));
        cp >>= 6;
    }
    out[0] = (uint8_t)(lead[len] | cp);
    return len;
}

static size_t shortest(uint32_t cp)
{
    return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

/* The loops below test with plain ifs: check's ck_assert marks its place
 * through a pipe on every call, which over a million code points is
 * minutes of system time. */
#define FAIL_IF(cond, ...)                                                                         \
    do {                                                                                           \
        if (cond)                                                                                  \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

START_TEST(every_code_point)
{
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        uint8_t b[4];
        size_t n = encode(cp, shortest(cp), b);
        bool surrogate = cp >= 0xd800 && cp <= 0xdfff;
        uint32_t got;
        size_t len = kms_utf8_next(b, n, &got);
        if (surrogate) {
            FAIL_IF(got != KMS_UTF8_BAD || len != 1, "surrogate U+%04X", cp);
            FAIL_IF(kms_utf8_valid(b, n), "surrogate U+%04X accepted", cp);
        } else {
            FAIL_IF(got != cp || len != n, "U+%04X decoded as %x/%zu", cp, got, len);
            FAIL_IF(!kms_utf8_valid(b, n), "U+%04X refused", cp);
            FAIL_IF(kms_utf8_valid_nonul(b, n) != (cp != 0), "U+%04X nonul", cp);
        }
        /* every proper prefix of a multi-byte sequence is truncated */
        for (size_t k = 1; k < n; k++) {
            FAIL_IF(kms_utf8_valid(b, k), "U+%04X cut to %zu accepted", cp, k);
            if (!surrogate) {
                len = kms_utf8_next(b, k, &got);
                FAIL_IF(len != k || got != KMS_UTF8_BAD, "U+%04X cut to %zu: %zu", cp, k, len);
            }
        }
    }
}
END_TEST

START_TEST(overlong_forms_refused)
{
    /* every code point in every longer form than its shortest */
    for (uint32_t cp = 0; cp < 0x10000; cp++) {
        for (size_t len = shortest(cp) + 1; len <= 4; len++) {
            uint8_t b[4];
            size_t n = encode(cp, len, b);
            FAIL_IF(kms_utf8_valid(b, n), "U+%04X in %zu bytes accepted", cp, len);
        }
    }
    static const uint8_t slash2[] = {0xc0, 0xaf}, nul2[] = {0xc0, 0x80};
    ck_assert(!kms_utf8_valid(slash2, 2));
    ck_assert(!kms_utf8_valid_nonul(nul2, 2));
}
END_TEST

START_TEST(past_u10ffff_refused)
{
    /* F4 90..BF and the leads F5..FF: U+110000 up to what 4 bytes hold */
    for (uint32_t cp = 0x110000; cp < 0x200000; cp += 0x3f) {
        uint8_t b[4];
        encode(cp, 4, b);
        FAIL_IF(kms_utf8_valid(b, 4), "%x accepted", cp);
    }
    for (unsigned lead = 0xf5; lead <= 0xff; lead++) {
        uint8_t b[4] = {(uint8_t)lead, 0x80, 0x80, 0x80};
        ck_assert(!kms_utf8_valid(b, 4));
    }
    static const uint8_t max[] = {0xf4, 0x8f, 0xbf, 0xbf}, over[] = {0xf4, 0x90, 0x80, 0x80};
    ck_assert(kms_utf8_valid(max, 4));
    ck_assert(!kms_utf8_valid(over, 4));
}
END_TEST

/* Table 3-8 of Unicode 15 (the same as WHATWG's decoder and Python's
 * "replace"): each ill-formed sequence becomes one U+FFFD per maximal
 * subpart. */
START_TEST(maximal_subparts)
{
    static const uint8_t in[] = {0x61, 0xf1, 0x80, 0x80, 0xe1, 0x80, 0xc2, 0x62,
                                 0x80, 0x63, 0x80, 0xbf, 0x64};
    static const uint32_t want[] = {0x61, KMS_UTF8_BAD, KMS_UTF8_BAD, KMS_UTF8_BAD, 0x62,
                                    KMS_UTF8_BAD, 0x63, KMS_UTF8_BAD, KMS_UTF8_BAD, 0x64};
    static const size_t want_len[] = {1, 3, 2, 1, 1, 1, 1, 1, 1, 1};
    size_t i = 0, k = 0;
    while (i < sizeof(in)) {
        uint32_t cp;
        size_t len = kms_utf8_next(in + i, sizeof(in) - i, &cp);
        ck_assert_uint_lt(k, sizeof(want) / sizeof(want[0]));
        ck_assert_msg(cp == want[k] && len == want_len[k], "item %zu: %x/%zu", k, cp, len);
        i += len;
        k++;
    }
    ck_assert_uint_eq(k, sizeof(want) / sizeof(want[0]));
    /* a surrogate's lead and an overlong's lead are one subpart each */
    static const uint8_t sur[] = {0xed, 0xa0, 0x80}, ovl[] = {0xe0, 0x80, 0x80};
    uint32_t cp;
    ck_assert_uint_eq(kms_utf8_next(sur, 3, &cp), 1);
    ck_assert_uint_eq(cp, KMS_UTF8_BAD);
    ck_assert_uint_eq(kms_utf8_next(ovl, 3, &cp), 1);
    ck_assert_uint_eq(cp, KMS_UTF8_BAD);
}
END_TEST

START_TEST(nul_and_text)
{
    ck_assert(kms_utf8_valid((const uint8_t *)"", 0));
    ck_assert(kms_utf8_valid_nonul((const uint8_t *)"", 0));
    ck_assert(kms_utf8_valid((const uint8_t *)"alice\0mallory", 13));
    ck_assert(!kms_utf8_valid_nonul((const uint8_t *)"alice\0mallory", 13));
    static const char mixed[] = "J\xc3\xbcrg \xe6\xb3\x95 \xf0\x9f\x94\x91";
    ck_assert(kms_utf8_valid_nonul((const uint8_t *)mixed, strlen(mixed)));
    ck_assert(!kms_utf8_valid((const uint8_t *)"J\xc3rg", 4));
    ck_assert(!kms_utf8_valid((const uint8_t *)"mallory\xe2\x82", 9));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_utf8");
    TCase *tc = tcase_create("utf8");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, every_code_point);
    tcase_add_test(tc, overlong_forms_refused);
    tcase_add_test(tc, past_u10ffff_refused);
    tcase_add_test(tc, maximal_subparts);
    tcase_add_test(tc, nul_and_text);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
