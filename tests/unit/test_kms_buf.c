/*
 * test_kms_buf.c - the grow-and-wipe buffer (kms/base/kms_buf.c): bytes
 * survive every growth, the cap is exact (max bytes fit, one more is refused
 * whole and leaves the buffer as it was), size arithmetic cannot wrap,
 * reserve/commit writes in place, take hands over even an empty result,
 * adopt and wipe leave a reusable buffer.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_buf.h"

START_TEST(grows_and_keeps_bytes)
{
    struct kms_buf b;
    kms_buf_init(&b, 1 << 20);
    ck_assert_ptr_null(b.data);
    uint8_t want[100000];
    for (size_t i = 0; i < sizeof(want); i++)
        want[i] = (uint8_t)(i * 7 + 3);
    /* uneven pieces, so that growth happens mid-append */
    size_t off = 0, piece = 1;
    while (off < sizeof(want)) {
        size_t n = piece < sizeof(want) - off ? piece : sizeof(want) - off;
        ck_assert_int_eq(kms_buf_append(&b, want + off, n), KMS_OK);
        off += n;
        piece = piece * 3 + 1;
    }
    ck_assert_uint_eq(b.len, sizeof(want));
    ck_assert_uint_ge(b.cap, b.len);
    ck_assert_uint_le(b.cap, b.max);
    ck_assert_mem_eq(b.data, want, sizeof(want));
    kms_buf_wipe(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_uint_eq(b.max, 1 << 20); /* reusable with the same cap */
    ck_assert_int_eq(kms_buf_append(&b, "x", 1), KMS_OK);
    kms_buf_wipe(&b);
}
END_TEST

START_TEST(cap_is_exact)
{
    struct kms_buf b;
    kms_buf_init(&b, 1000);
    uint8_t block[1001];
    memset(block, 'a', sizeof(block));
    ck_assert_int_eq(kms_buf_append(&b, block, 600), KMS_OK);
    /* one byte too many: refused whole, nothing appended */
    ck_assert_int_eq(kms_buf_append(&b, block, 401), KMS_ERR_TOO_LARGE);
    ck_assert_uint_eq(b.len, 600);
    ck_assert_int_eq(kms_buf_append(&b, block, 400), KMS_OK);
    ck_assert_uint_eq(b.len, 1000);
    ck_assert_uint_le(b.cap, 1000); /* growth never allocates past the cap */
    ck_assert_int_eq(kms_buf_append(&b, block, 1), KMS_ERR_TOO_LARGE);
    ck_assert_int_eq(kms_buf_append(&b, block, 0), KMS_OK); /* nothing fits nothing */
    ck_assert_uint_eq(b.len, 1000);
    kms_buf_wipe(&b);

    kms_buf_init(&b, 1000);
    ck_assert_int_eq(kms_buf_append(&b, block, 1001), KMS_ERR_TOO_LARGE);
    ck_assert_ptr_null(b.data);
    kms_buf_wipe(&b);

    /* len + n that wraps size_t is over any cap, not a small number */
    kms_buf_init(&b, SIZE_MAX);
    ck_assert_int_eq(kms_buf_append(&b, block, 10), KMS_OK);
    ck_assert_int_eq(kms_buf_reserve(&b, SIZE_MAX - 5), KMS_ERR_TOO_LARGE);
    ck_assert_uint_eq(b.len, 10);
    kms_buf_wipe(&b);

    /* a zero cap holds nothing */
    kms_buf_init(&b, 0);
    ck_assert_int_eq(kms_buf_append(&b, block, 1), KMS_ERR_TOO_LARGE);
    kms_buf_wipe(&b);
}
END_TEST

START_TEST(reserve_commit_take_adopt)
{
    struct kms_buf b;
    kms_buf_init(&b, 64);
    ck_assert_int_eq(kms_buf_append(&b, "ab", 2), KMS_OK);
    ck_assert_int_eq(kms_buf_reserve(&b, 3), KMS_OK);
    memcpy(b.data + b.len, "cde", 3);
    ck_assert_uint_eq(b.len, 2); /* reserved is not held until committed */
    kms_buf_commit(&b, 3);
    ck_assert_uint_eq(b.len, 5);
    size_t n = 0;
    uint8_t *p = kms_buf_take(&b, &n);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(p, "abcde", 5);
    ck_assert_ptr_null(b.data); /* b is empty, and owns nothing */
    ck_assert_uint_eq(b.len, 0);

    /* an empty result is still a block to hand over */
    uint8_t *e = kms_buf_take(&b, &n);
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(n, 0);
    free(e);

    /* adopt: b now holds p's bytes and frees them */
    ck_assert_int_eq(kms_buf_append(&b, "zz", 2), KMS_OK);
    kms_buf_adopt(&b, p, 5);
    ck_assert_ptr_eq(b.data, p);
    ck_assert_uint_eq(b.len, 5);
    ck_assert_mem_eq(b.data, "abcde", 5);
    kms_buf_wipe(&b);
    ck_assert_ptr_null(b.data);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_buf");
    TCase *tc = tcase_create("buf");
    tcase_add_test(tc, grows_and_keeps_bytes);
    tcase_add_test(tc, cap_is_exact);
    tcase_add_test(tc, reserve_commit_take_adopt);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
