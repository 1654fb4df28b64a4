/*
 * test_p11_escrow_key.c - a region's escrow key in its token: init makes it
 * once (a second init finds the same key), find matches the exact label
 * (prefix + region, not another region's), and two keys with the label are
 * an error, never a guess. Real SoftHSMv2 tokens.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_error.h"
#include "p11_escrow_key.h"
#include "p11_key.h"
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

START_TEST(init_is_idempotent)
{
    struct p11_key_id before, first, second, found;
    bool had = false, created1 = false, created2 = true, ok = false;
    ck_assert_int_eq(p11_escrow_key_find(env.eu, &before, &had), KMS_OK);
    ck_assert_msg(p11_escrow_key_init(env.eu, &first, &created1) == KMS_OK, "init: %s",
                  kms_err_detail());
    /* Made only when there was none; named either way. */
    ck_assert(created1 == !had);
    if (had)
        ck_assert_mem_eq(before.b, first.b, sizeof(first.b));
    ck_assert_int_eq(p11_escrow_key_init(env.eu, &second, &created2), KMS_OK);
    ck_assert(!created2);
    ck_assert_mem_eq(first.b, second.b, sizeof(first.b));
    ck_assert_int_eq(p11_escrow_key_find(env.eu, &found, &ok), KMS_OK);
    ck_assert(ok);
    ck_assert_mem_eq(first.b, found.b, sizeof(first.b));
    /* The label convention: prefix + region. */
    char label[65];
    ck_assert_int_eq(p11_key_label(env.eu, &found, label), KMS_OK);
    ck_assert_str_eq(label, P11_ESCROW_LABEL_PREFIX "eu-west");
}
END_TEST

/* Another region's escrow label in this token is not this region's key. */
START_TEST(find_matches_the_region)
{
    struct p11_key_id mine, other, found;
    bool created = false, ok = false;
    ck_assert_int_eq(p11_escrow_key_init(env.eu, &mine, &created), KMS_OK);
    ck_assert_int_eq(p11_key_id_new(env.eu, &other), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ESCROW, 0, &other,
                                      P11_ESCROW_LABEL_PREFIX "eu-west-2"),
                     KMS_OK);
    kms_err rc = p11_escrow_key_find(env.eu, &found, &ok);
    p11_key_destroy(env.eu, &other);
    ck_assert_int_eq(rc, KMS_OK);
    ck_assert(ok);
    ck_assert_mem_eq(mine.b, found.b, sizeof(mine.b));
}
END_TEST

/* Two keys labelled for the region: which blob is under which key would be
 * a guess, so find and init refuse (KMS_ERR_CONFIG) and init makes none. */
START_TEST(duplicate_label_is_an_error)
{
    struct p11_key_id mine, dup, id;
    bool created = false, ok = true;
    ck_assert_int_eq(p11_escrow_key_init(env.us, &mine, &created), KMS_OK);
    ck_assert_int_eq(p11_key_id_new(env.us, &dup), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.us, P11_KEY_AES_ESCROW, 0, &dup,
                                      P11_ESCROW_LABEL_PREFIX "us-east"),
                     KMS_OK);
    kms_err frc = p11_escrow_key_find(env.us, &id, &ok);
    char detail[400];
    snprintf(detail, sizeof(detail), "%s", kms_err_detail());
    bool fok = ok;
    kms_err irc = p11_escrow_key_init(env.us, &id, &created);
    bool icreated = created;
    /* Put the token back before asserting: later tests use it. */
    ck_assert_int_eq(p11_key_destroy(env.us, &dup), KMS_OK);
    ck_assert_int_eq(frc, KMS_ERR_CONFIG);
    ck_assert_msg(strstr(detail, "2 escrow keys") != NULL, "%s", detail);
    ck_assert(!fok);
    ck_assert_int_eq(irc, KMS_ERR_CONFIG);
    ck_assert(!icreated);
    ck_assert_int_eq(p11_escrow_key_find(env.us, &id, &ok), KMS_OK);
    ck_assert(ok);
    ck_assert_mem_eq(mine.b, id.b, sizeof(mine.b));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_escrow_key");
    TCase *t = tcase_create("escrow_key");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, init_is_idempotent);
    tcase_add_test(t, find_matches_the_region);
    tcase_add_test(t, duplicate_label_is_an_error);
    suite_add_tcase(s, t);
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
