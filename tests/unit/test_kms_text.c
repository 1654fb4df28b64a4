/*
 * test_kms_text.c - the free-text rule (kms/base/kms_text.c) shared by a
 * recovery's justification text, case reference and cancel reason and a
 * key's description: every code point of Cc, Cf (Unicode 15.1), Zl and Zp is
 * refused wherever it sits in the text, its neighbours are carried, and
 * malformed UTF-8 is refused.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "kms_recovery_stmt.h"
#include "kms_text.h"

/* An independent copy of the list (from DerivedGeneralCategory.txt of
 * Unicode 15.1, categories Cc Cf Zl Zp), so that a change to the table in
 * kms_text.c fails here. 0x2065 is unassigned and refused with its
 * neighbours. */
static const struct {
    uint32_t lo, hi;
} want_refused[] = {
    {0x0000, 0x001f},   {0x007f, 0x009f},   {0x00ad, 0x00ad},   {0x0600, 0x0605},
    {0x061c, 0x061c},   {0x06dd, 0x06dd},   {0x070f, 0x070f},   {0x0890, 0x0891},
    {0x08e2, 0x08e2},   {0x180e, 0x180e},   {0x200b, 0x200f},   {0x2028, 0x2029},
    {0x202a, 0x202e},   {0x2060, 0x2064},   {0x2065, 0x2065},   {0x2066, 0x206f},
    {0xfeff, 0xfeff},   {0xfff9, 0xfffb},   {0x110bd, 0x110bd}, {0x110cd, 0x110cd},
    {0x13430, 0x1343f}, {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a}, {0xe0001, 0xe0001},
    {0xe0020, 0xe007f},
};

static bool in_list(uint32_t cp)
{
    for (size_t i = 0; i < sizeof(want_refused) / sizeof(want_refused[0]); i++)
        if (cp >= want_refused[i].lo && cp <= want_refused[i].hi)
            return true;
    return false;
}

static size_t utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Plain ifs in the loop below: check's ck_assert marks its place through a
 * pipe on every call, which over a million code points took most of the
 * test's timeout under ASan on a loaded machine. */
#define FAIL_IF(cond, ...)                                                                         \
    do {                                                                                           \
        if (cond)                                                                                  \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

/* Every scalar value, alone, first, in the middle and last of a text: refused
 * exactly when it is on the list. */
START_TEST(every_code_point)
{
    size_t refused = 0;
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        if (cp >= 0xd800 && cp <= 0xdfff)
            continue;
        char t[16];
        size_t n = utf8(cp, t);
        bool want = !in_list(cp);
        FAIL_IF(kms_text_ok(t, n) != want, "U+%04X alone", cp);
        FAIL_IF(kms_text_cp_refused(cp) != !want, "U+%04X refused", cp);
        char mid[24];
        mid[0] = 'a';
        memcpy(mid + 1, t, n);
        mid[n + 1] = 'b';
        FAIL_IF(kms_text_ok(mid, n + 2) != want, "U+%04X between letters", cp);
        FAIL_IF(kms_text_ok(mid, n + 1) != want, "U+%04X last", cp);
        FAIL_IF(kms_text_ok(mid + 1, n + 1) != want, "U+%04X first", cp);
        refused += !want;
    }
    ck_assert_uint_eq(refused, 65 + 1 + 6 + 1 + 1 + 1 + 2 + 1 + 1 + 5 + 2 + 5 + 16 + 1 + 3 +
                                   2 + 16 + 4 + 8 + 1 + 96);
}
END_TEST

/* The cases of the defect report, and text that must still pass. */
START_TEST(reported_cases_and_honest_text)
{
    static const char *const bad[] = {
        "a\xc2\x85" "b",     /* U+0085 NEL */
        "a\xe2\x80\xa8" "b", /* U+2028 LINE SEPARATOR */
        "a\xe2\x80\xa9" "b", /* U+2029 PARAGRAPH SEPARATOR */
        "a\xe2\x80\xae" "b", /* U+202E RIGHT-TO-LEFT OVERRIDE */
        "a\xe2\x81\xa6" "b", /* U+2066 LEFT-TO-RIGHT ISOLATE */
        "a\xe2\x80\x8b" "b", /* U+200B ZERO WIDTH SPACE */
        "a\xef\xbb\xbf" "b", /* U+FEFF */
        "a\xd8\x9c" "b",     /* U+061C ARABIC LETTER MARK */
        "a\xe1\xa0\x8e" "b", /* U+180E MONGOLIAN VOWEL SEPARATOR */
        "a\nb", "a\tb", "a\x1b[31mb", "a\x7f" "b",
        "a\xc3", "a\xc0\xaf", "a\xed\xa0\x80", "a\xf4\x90\x80\x80", "\xff",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(!kms_text_ok(bad[i], strlen(bad[i])), "bad %zu accepted", i);
        ck_assert_msg(!kms_recovery_text_ok(bad[i], 512), "bad %zu accepted as recovery text", i);
    }
    ck_assert(!kms_text_ok("a\0b", 3));
    static const char *const good[] = {
        "court order 12/2026", "Gerichtsbeschluss \xc3\xbc", "\xe6\xb3\x95\xe9\x99\xa2",
        "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d" /* Hebrew letters: RTL text itself is fine */,
        "\xf0\x9f\x94\x91 key", "a \xc2\xa0 b" /* NBSP is Zs, visible as a space */,
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ck_assert_msg(kms_text_ok(good[i], strlen(good[i])), "good %zu refused", i);
        ck_assert(kms_recovery_text_ok(good[i], 512));
    }
    ck_assert(kms_text_ok("", 0));
    ck_assert(!kms_recovery_text_ok("", 512)); /* recovery text is 1..max */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_text");
    TCase *tc = tcase_create("text");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, every_code_point);
    tcase_add_test(tc, reported_cases_and_honest_text);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
