/*
 * test_kms_pbuf.c - bounded decoding of request bodies (kms_pbuf.h): what
 * decodes with protobuf-c still decodes, and each limit refuses with a
 * reason before anything is allocated for the offending part.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_pbuf.h"
#include "proto/audit.pb-c.h"
#include "proto/fields.pb-c.h"
#include "proto/key.pb-c.h"

struct wbuf {
    uint8_t *p;
    size_t len, cap;
};

static void put(struct wbuf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_varint(struct wbuf *b, uint64_t v)
{
    do {
        uint8_t c = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            c |= 0x80;
        put(b, &c, 1);
    } while (v);
}

/* A map entry of encryption_context (field 3 of EncryptRequest). */
static void put_ctx_pair(struct wbuf *b, unsigned i)
{
    char k[16];
    int kl = snprintf(k, sizeof(k), "k%u", i);
    put_varint(b, (3 << 3) | 2);
    put_varint(b, (uint64_t)(2 + kl + 2 + 1));
    put_varint(b, (1 << 3) | 2);
    put_varint(b, (uint64_t)kl);
    put(b, k, (size_t)kl);
    put_varint(b, (2 << 3) | 2);
    put_varint(b, 1);
    put(b, "v", 1);
}

START_TEST(honest_messages_decode)
{
    Custos__V1__EncryptRequest r = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    r.key_id = (char *)"0123456789abcdef0123456789abcdef";
    r.plaintext.data = (uint8_t *)"hello";
    r.plaintext.len = 5;
    uint8_t buf[256];
    size_t n = custos__v1__encrypt_request__pack(&r, buf);
    Custos__V1__EncryptRequest *m =
        kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, buf, n);
    ck_assert_ptr_nonnull(m);
    ck_assert_str_eq(m->key_id, r.key_id);
    ck_assert_uint_eq(m->plaintext.len, 5);
    ck_assert_str_eq(kms_pbuf_last_refusal(), "");
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    /* An empty body is the all-defaults message. */
    m = kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, (const uint8_t *)"", 0);
    ck_assert_ptr_nonnull(m);
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    /* Nested messages (depth 3) and unknown fields within the limit. */
    struct wbuf b = {0};
    for (unsigned i = 0; i < 64; i++)
        put_ctx_pair(&b, i);
    for (unsigned i = 0; i < 10; i++) {
        put_varint(&b, (99 << 3) | 0);
        put_varint(&b, i);
    }
    m = kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, b.p, b.len);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->n_encryption_context, 64);
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    free(b.p);
}
END_TEST

START_TEST(repeated_count_limit)
{
    struct wbuf b = {0};
    for (unsigned i = 0; i < KMS_PBUF_MAX_REPEATED; i++)
        put_ctx_pair(&b, i);
    Custos__V1__EncryptRequest *m =
        kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, b.p, b.len);
    ck_assert_ptr_nonnull(m); /* the limit itself is allowed (policy refuses > 64 later) */
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    put_ctx_pair(&b, KMS_PBUF_MAX_REPEATED);
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, b.p, b.len));
    ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "too many elements"));
    free(b.p);

    /* Repeated bytes (BlindIndexRequest.values = 4) count the same way. */
    struct wbuf v = {0};
    for (unsigned i = 0; i <= KMS_PBUF_MAX_REPEATED; i++) {
        put_varint(&v, (4 << 3) | 2);
        put_varint(&v, 0);
    }
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__blind_index_request__descriptor, v.p, v.len));
    ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "too many elements"));
    free(v.p);
}
END_TEST

START_TEST(unknown_field_limit)
{
    struct wbuf b = {0};
    for (unsigned i = 0; i <= KMS_PBUF_MAX_REPEATED; i++) {
        put_varint(&b, (99 << 3) | 0);
        put_varint(&b, 1);
    }
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__describe_key_request__descriptor, b.p, b.len));
    ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "too many unknown fields"));
    free(b.p);
}
END_TEST

/* 1000 PlaintextFields of 1000 unknown fields each: within every count,
 * 2 MB of wire, but ~25 MB of protobuf-c structs. The budget refuses. */
START_TEST(allocation_budget)
{
    struct wbuf inner = {0}, b = {0};
    for (unsigned i = 0; i < 1000; i++) {
        put_varint(&inner, (15 << 3) | 0);
        put_varint(&inner, 0);
    }
    for (unsigned i = 0; i < 1000; i++) {
        put_varint(&b, (3 << 3) | 2);
        put_varint(&b, inner.len);
        put(&b, inner.p, inner.len);
    }
    ck_assert_int_eq(kms_pbuf_check(&custos__v1__encrypt_fields_request__descriptor, b.p, b.len),
                     KMS_OK);
    ck_assert_ptr_null(
        kms_pbuf_unpack(&custos__v1__encrypt_fields_request__descriptor, b.p, b.len));
    ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "allocate more"));
    free(inner.p);
    free(b.p);
}
END_TEST

START_TEST(wire_errors)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *why;
    } cases[] = {
        {"\x0a\x05" "ab", 4, "length past the end"},
        {"\x0a", 1, "truncated length"},
        {"\x08\xff\xff", 3, "truncated varint"},
        {"\x0b\x0c", 2, "unsupported wire type"}, /* a group */
        {"\x00\x01", 2, "invalid field number"},
        {"\x0d\x01\x02", 3, "truncated 32-bit"},
        {"\x80", 1, "truncated field tag"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__describe_key_request__descriptor,
                                           (const uint8_t *)cases[i].bytes, cases[i].len));
        ck_assert_msg(strstr(kms_pbuf_last_refusal(), cases[i].why) != NULL, "case %zu: %s", i,
                      kms_pbuf_last_refusal());
    }
    /* Inside a nested message too: the reason names the inner type. */
    static const uint8_t nested[] = {0x1a, 0x03, 0x0a, 0x05, 'x'};
    ck_assert_ptr_null(
        kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, nested, sizeof(nested)));
    ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "EncryptionContextEntry"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_pbuf");
    TCase *tc = tcase_create("decode");
    tcase_add_test(tc, honest_messages_decode);
    tcase_add_test(tc, wire_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_add_test(tc, repeated_count_limit);
    tcase_add_test(tc, unknown_field_limit);
    tcase_add_test(tc, allocation_budget);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
