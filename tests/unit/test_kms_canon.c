/*
 * test_kms_canon.c - canonical forms of phone numbers and email addresses:
 * every spelling of one identifier gives one form, everything that is not
 * one is refused with a message that does not repeat it, and no form is
 * longer than its input (the service sizes buffers on that).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_canon.h"

/* Canonicalise s; returns the form in a static buffer, or NULL when
 * refused (and then checks that the refusal does not echo the input). */
static const char *canon(enum kms_canon c, const char *s)
{
    static char out[1024];
    size_t n = 0, len = strlen(s);
    kms_err rc = kms_canon_apply(c, (const uint8_t *)s, len, (uint8_t *)out, len, &n);
    if (rc != KMS_OK) {
        ck_assert_int_eq(rc, KMS_ERR_INVALID_ARGUMENT);
        ck_assert_uint_eq(n, 0);
        /* The detail states a rule, never the value. */
        if (len >= 4)
            ck_assert_msg(strstr(kms_err_detail(), s) == NULL, "detail echoes input: %s",
                          kms_err_detail());
        return NULL;
    }
    ck_assert_uint_le(n, len);
    out[n] = '\0';
    return out;
}

#define SAME(c, in, want)                                                                          \
    do {                                                                                           \
        const char *got_ = canon((c), (in));                                                       \
        ck_assert_msg(got_ != NULL, "'%s' refused: %s", (in), kms_err_detail());                   \
        ck_assert_str_eq(got_, (want));                                                            \
    } while (0)

#define REFUSED(c, in)                                                                             \
    ck_assert_msg(canon((c), (in)) == NULL, "'%s' accepted as '%s'", (in), canon((c), (in)))

/* ---- E.164 ---- */

START_TEST(e164_spellings_of_one_number)
{
    const char *spellings[] = {
        "+14155550123",        "+1 (415) 555-0123", "+1 415 555 0123", "+1-415-555-0123",
        "+1.415.555.0123",     "  +1 415 5550123\n", "tel:+1-415-555-0123",
        "TEL:+14155550123",    "+1 (415)555-0123",  "+1  415  555  0123",
    };
    for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++)
        SAME(KMS_CANON_E164, spellings[i], "+14155550123");
    SAME(KMS_CANON_E164, "+44 20 7946 0958", "+442079460958");
    SAME(KMS_CANON_E164, "+49 (0)30 123456", "+49030123456"); /* digits kept as typed */
}
END_TEST

START_TEST(e164_length_bounds)
{
    SAME(KMS_CANON_E164, "+6901234", "+6901234");                 /* 7 digits: Tokelau */
    SAME(KMS_CANON_E164, "+123456789012345", "+123456789012345"); /* 15: the E.164 maximum */
    REFUSED(KMS_CANON_E164, "+123456");                           /* 6 */
    REFUSED(KMS_CANON_E164, "+1234567890123456");                 /* 16 */
    REFUSED(KMS_CANON_E164, "+1");
    REFUSED(KMS_CANON_E164, "+");
    REFUSED(KMS_CANON_E164, "");
    REFUSED(KMS_CANON_E164, "   ");
}
END_TEST

START_TEST(e164_refuses_what_is_not_a_number)
{
    REFUSED(KMS_CANON_E164, "4155550123");          /* no country code */
    REFUSED(KMS_CANON_E164, "(415) 555-0123");      /* national format */
    REFUSED(KMS_CANON_E164, "0014155550123");       /* exit code: whose? */
    REFUSED(KMS_CANON_E164, "+0 415 555 0123");     /* no country code starts with 0 */
    REFUSED(KMS_CANON_E164, "+1-800-FLOWERS");      /* letters */
    REFUSED(KMS_CANON_E164, "+1 415 555 0123 x12"); /* extension */
    REFUSED(KMS_CANON_E164, "+14155550123;ext=12"); /* URI parameter */
    REFUSED(KMS_CANON_E164, "+1+4155550123");
    REFUSED(KMS_CANON_E164, "++14155550123");
    REFUSED(KMS_CANON_E164, "+1 (415 555-0123");    /* unbalanced */
    REFUSED(KMS_CANON_E164, "+1 415) 555-0123");
    REFUSED(KMS_CANON_E164, "+1 () 4155550123");    /* empty */
    REFUSED(KMS_CANON_E164, "+1 (415) (555) 0123"); /* two pairs */
    REFUSED(KMS_CANON_E164, "+1 415_555_0123");
    REFUSED(KMS_CANON_E164, "+1/415/555/0123");
    REFUSED(KMS_CANON_E164, "tel:4155550123");
    REFUSED(KMS_CANON_E164, "sip:+14155550123@example.com");
    REFUSED(KMS_CANON_E164, "+\xef\xbc\x91" "4155550123"); /* fullwidth 1 */
    REFUSED(KMS_CANON_E164, "+1\xc2\xa0" "4155550123");    /* no-break space */
    REFUSED(KMS_CANON_E164, "+1 415 555 0123\t#");
    /* A NUL inside is not a separator. */
    uint8_t in[] = {'+', '1', '4', '1', '5', 0, '5', '5', '5', '0', '1', '2', '3'}, out[32];
    size_t n;
    ck_assert_int_eq(kms_canon_apply(KMS_CANON_E164, in, sizeof(in), out, sizeof(out), &n),
                     KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

/* ---- email ---- */

START_TEST(email_domain_case_folds_local_part_does_not)
{
    SAME(KMS_CANON_EMAIL, "Alice@Example.COM", "Alice@example.com");
    SAME(KMS_CANON_EMAIL, "Alice@example.com", "Alice@example.com");
    SAME(KMS_CANON_EMAIL, "  Alice@EXAMPLE.com.\r\n", "Alice@example.com");
    /* Different local-part case: different addresses under EMAIL. */
    ck_assert_str_ne(canon(KMS_CANON_EMAIL, "alice@example.com"), "Alice@example.com");
    SAME(KMS_CANON_EMAIL_CI, "Alice@Example.COM", "alice@example.com");
    SAME(KMS_CANON_EMAIL_CI, "ALICE@example.com", "alice@example.com");
    /* No provider rules: dots and +tags are part of the address. */
    SAME(KMS_CANON_EMAIL, "a.l.i.c.e+news@gmail.com", "a.l.i.c.e+news@gmail.com");
    SAME(KMS_CANON_EMAIL, "!#$%&'*+-/=?^_`{|}~@x.org", "!#$%&'*+-/=?^_`{|}~@x.org");
    SAME(KMS_CANON_EMAIL, "user@xn--bcher-kva.example", "user@xn--bcher-kva.example");
    SAME(KMS_CANON_EMAIL, "user@localhost", "user@localhost");
}
END_TEST

START_TEST(email_quoted_local_parts)
{
    /* Quoting that changes nothing is removed. */
    SAME(KMS_CANON_EMAIL, "\"alice\"@example.com", "alice@example.com");
    SAME(KMS_CANON_EMAIL, "\"a.b\"@example.com", "a.b@example.com");
    SAME(KMS_CANON_EMAIL, "\"\\a\\l\\i\\c\\e\"@example.com", "alice@example.com");
    /* Quoting that is needed stays, with only '"' and '\' escaped. */
    SAME(KMS_CANON_EMAIL, "\"john doe\"@example.com", "\"john doe\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"john\\ doe\"@example.com", "\"john doe\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"a@b\"@example.com", "\"a@b\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"a\\\"b\"@example.com", "\"a\\\"b\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"a\\\\b\"@example.com", "\"a\\\\b\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"a..b\"@example.com", "\"a..b\"@example.com");
    SAME(KMS_CANON_EMAIL, "\"\"@example.com", "\"\"@example.com");
    SAME(KMS_CANON_EMAIL_CI, "\"John Doe\"@Example.com", "\"john doe\"@example.com");
    REFUSED(KMS_CANON_EMAIL, "\"unterminated@example.com");
    REFUSED(KMS_CANON_EMAIL, "\"a\"b\"@example.com");
    REFUSED(KMS_CANON_EMAIL, "\"a\\\"@example.com");
    REFUSED(KMS_CANON_EMAIL, "\"a\tb\"@example.com");
}
END_TEST

START_TEST(email_utf8_local_parts)
{
    /* RFC 6531: UTF-8 local parts are kept byte for byte. */
    SAME(KMS_CANON_EMAIL, "J\xc3\xb6rg@Example.de", "J\xc3\xb6rg@example.de");
    /* Case-insensitive matching refuses them rather than fold half of them. */
    REFUSED(KMS_CANON_EMAIL_CI, "J\xc3\xb6rg@example.de");
    REFUSED(KMS_CANON_EMAIL, "J\xc3rg@example.de");         /* broken UTF-8 */
    REFUSED(KMS_CANON_EMAIL, "J\xc0\xafrg@example.de");     /* overlong */
    REFUSED(KMS_CANON_EMAIL, "user@b\xc3\xbc" "cher.example"); /* U-label */
}
END_TEST

START_TEST(email_refuses_non_addresses)
{
    REFUSED(KMS_CANON_EMAIL, "alice");
    REFUSED(KMS_CANON_EMAIL, "alice@");
    REFUSED(KMS_CANON_EMAIL, "@example.com");
    REFUSED(KMS_CANON_EMAIL, "alice@@example.com");
    REFUSED(KMS_CANON_EMAIL, ".alice@example.com");
    REFUSED(KMS_CANON_EMAIL, "alice.@example.com");
    REFUSED(KMS_CANON_EMAIL, "al..ice@example.com");
    REFUSED(KMS_CANON_EMAIL, "al ice@example.com");
    REFUSED(KMS_CANON_EMAIL, "Alice <alice@example.com>");
    REFUSED(KMS_CANON_EMAIL, "alice@[192.0.2.1]");
    REFUSED(KMS_CANON_EMAIL, "alice@example..com");
    REFUSED(KMS_CANON_EMAIL, "alice@-example.com");
    REFUSED(KMS_CANON_EMAIL, "alice@example-.com");
    REFUSED(KMS_CANON_EMAIL, "alice@exa_mple.com");
    REFUSED(KMS_CANON_EMAIL, "alice@example.com..");
    REFUSED(KMS_CANON_EMAIL, "alice@.");
}
END_TEST

START_TEST(email_length_bounds)
{
    char local[80], addr[400], want[400];
    memset(local, 'a', 64);
    local[64] = '\0';
    snprintf(addr, sizeof(addr), "%s@example.com", local);
    SAME(KMS_CANON_EMAIL, addr, addr);
    snprintf(addr, sizeof(addr), "%sa@example.com", local);
    REFUSED(KMS_CANON_EMAIL, addr); /* 65-byte local part */
    /* A quoted 66-byte input whose canonical form is 64 bytes is fine. */
    snprintf(addr, sizeof(addr), "\"%s\"@example.com", local);
    snprintf(want, sizeof(want), "%s@example.com", local);
    SAME(KMS_CANON_EMAIL, addr, want);
    /* Domain label of 63 ok, 64 refused; whole address <= 254. */
    char label[70];
    memset(label, 'b', 63);
    label[63] = '\0';
    snprintf(addr, sizeof(addr), "a@%s.com", label);
    SAME(KMS_CANON_EMAIL, addr, addr);
    snprintf(addr, sizeof(addr), "a@%sb.com", label);
    REFUSED(KMS_CANON_EMAIL, addr);
    /* 64 + 1 + 189 = 254 */
    char dom[260];
    memset(dom, 'c', 189);
    for (int i = 60; i < 189; i += 61)
        dom[i] = '.';
    dom[189] = '\0';
    snprintf(addr, sizeof(addr), "%s@%s", local, dom);
    ck_assert_uint_eq(strlen(addr), 254);
    SAME(KMS_CANON_EMAIL, addr, addr);
    dom[189] = 'c';
    dom[190] = '\0';
    snprintf(addr, sizeof(addr), "%s@%s", local, dom);
    REFUSED(KMS_CANON_EMAIL, addr);
}
END_TEST

/* ---- raw, misc ---- */

START_TEST(raw_is_identity)
{
    uint8_t in[256], out[256];
    for (int i = 0; i < 256; i++)
        in[i] = (uint8_t)i;
    size_t n;
    ck_assert_int_eq(kms_canon_apply(KMS_CANON_RAW, in, sizeof(in), out, sizeof(out), &n), KMS_OK);
    ck_assert_uint_eq(n, 256);
    ck_assert_mem_eq(in, out, 256);
    ck_assert_int_eq(kms_canon_apply(KMS_CANON_RAW, NULL, 0, out, 0, &n), KMS_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(kms_canon_apply((enum kms_canon)9, in, 1, out, 1, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert(kms_canon_valid(1) && kms_canon_valid(4) && !kms_canon_valid(0) &&
              !kms_canon_valid(5));
    ck_assert_str_eq(kms_canon_name(KMS_CANON_EMAIL_CI), "email-ci");
}
END_TEST

/* Random and mutated inputs: never a crash, never an output longer than
 * the input, and a canonical form is a fixed point (canonicalising it again
 * changes nothing). ASan watches the buffers. */
START_TEST(random_inputs_fixed_points)
{
    static const char *seeds[] = {"+1 (415) 555-0123", "\"a b\"@Example.com",
                                  "tel:+44-20-7946-0958", "x.y+z@sub.Example.org."};
    static const char alphabet[] = "+-.()@\"\\ \t0123456789aZ.:tel\xc3\xb6";
    srand(7);
    for (int iter = 0; iter < 200000; iter++) {
        uint8_t in[64], out[64], again[64];
        size_t len;
        if (iter % 2) {
            const char *s = seeds[iter % 4];
            len = strlen(s);
            memcpy(in, s, len);
            in[rand() % len] = (uint8_t)alphabet[rand() % (sizeof(alphabet) - 1)];
        } else {
            len = (size_t)(rand() % 40);
            for (size_t i = 0; i < len; i++)
                in[i] = (uint8_t)alphabet[rand() % (sizeof(alphabet) - 1)];
        }
        for (int c = KMS_CANON_RAW; c <= KMS_CANON_EMAIL_CI; c++) {
            size_t n = 99, m = 99;
            if (kms_canon_apply((enum kms_canon)c, in, len, out, len, &n) != KMS_OK) {
                ck_assert_uint_eq(n, 0);
                continue;
            }
            ck_assert_uint_le(n, len);
            ck_assert_int_eq(kms_canon_apply((enum kms_canon)c, out, n, again, n, &m), KMS_OK);
            ck_assert_uint_eq(m, n);
            ck_assert_mem_eq(again, out, n);
        }
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_canon");
    TCase *tc = tcase_create("e164");
    tcase_add_test(tc, e164_spellings_of_one_number);
    tcase_add_test(tc, e164_length_bounds);
    tcase_add_test(tc, e164_refuses_what_is_not_a_number);
    suite_add_tcase(s, tc);

    tc = tcase_create("email");
    tcase_add_test(tc, email_domain_case_folds_local_part_does_not);
    tcase_add_test(tc, email_quoted_local_parts);
    tcase_add_test(tc, email_utf8_local_parts);
    tcase_add_test(tc, email_refuses_non_addresses);
    tcase_add_test(tc, email_length_bounds);
    suite_add_tcase(s, tc);

    tc = tcase_create("raw_and_properties");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, raw_is_identity);
    tcase_add_test(tc, random_inputs_fixed_points);
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
