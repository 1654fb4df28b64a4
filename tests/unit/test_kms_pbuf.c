/*
 * test_kms_pbuf.c - bounded decoding of request bodies (kms_pbuf.h): what
 * decodes with protobuf-c still decodes, and each limit refuses with a
 * reason before anything is allocated for the offending part.
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_error.h"
#include "kms_pbuf.h"
#include "kms_twirp.h"
#include "proto/audit.pb-c.h"
#include "proto/escrow.pb-c.h"
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

/* ---- string fields: NUL bytes and UTF-8, every field of every route ------ */

/* A string field and the fields leading to it from the request type,
 * found by walking the descriptors of kms_twirp's route table. */
struct spath {
    const ProtobufCFieldDescriptor *f[KMS_PBUF_MAX_DEPTH];
    unsigned n;
};

struct spaths {
    struct spath p[256];
    size_t n;
};

static void find_strings(const ProtobufCMessageDescriptor *d, struct spath *cur,
                         struct spaths *out)
{
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        cur->f[cur->n++] = f;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            ck_assert_uint_lt(out->n, sizeof(out->p) / sizeof(out->p[0]));
            out->p[out->n++] = *cur;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && cur->n < KMS_PBUF_MAX_DEPTH - 1) {
            find_strings(f->descriptor, cur, out);
        }
        cur->n--;
    }
}

/* The wire bytes of a request whose only field is the string at the end
 * of path (each enclosing message holding just the next one). */
static void put_path(struct wbuf *b, const struct spath *path, unsigned at, const void *value,
                     size_t len)
{
    const ProtobufCFieldDescriptor *f = path->f[at];
    put_varint(b, ((uint64_t)f->id << 3) | 2);
    if (at + 1 == path->n) {
        put_varint(b, len);
        put(b, value, len);
        return;
    }
    struct wbuf inner = {0};
    put_path(&inner, path, at + 1, value, len);
    put_varint(b, inner.len);
    put(b, inner.p, inner.len);
    free(inner.p);
}

/* The string at path in a decoded message (element 0 of repeated ones). */
static const char *get_path(const ProtobufCMessage *m, const struct spath *path)
{
    const void *cur = m;
    for (unsigned i = 0; i < path->n; i++) {
        const ProtobufCFieldDescriptor *f = path->f[i];
        const char *base = (const char *)cur + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)cur + f->quantifier_offset);
            ck_assert_uint_eq(n, 1);
            base = *(const char *const *)base; /* the array */
        }
        cur = *(const void *const *)base; /* the sub-message or the char * */
        ck_assert_ptr_nonnull(cur);
    }
    return cur;
}

static void path_name(const struct spath *path, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < path->n && used < len; i++)
        used += (size_t)snprintf(out + used, len - used, "%s%s", i ? "." : "",
                                 path->f[i]->name);
}

/* Bad strings: an embedded NUL, and what is not UTF-8 (a stray
 * continuation byte, 0xff, an overlong '/', a surrogate, past U+10FFFF, a
 * sequence cut short). Each carries "mallory" so that an echo would show. */
static const struct {
    const char *bytes;
    size_t len;
    const char *why;
} bad_strings[] = {
    {"alice\0mallory", 13, "contains a NUL byte"},
    {"\0", 1, "contains a NUL byte"},
    {"mallory\0", 8, "contains a NUL byte"},
    {"alice\x80mallory", 13, "is not valid UTF-8"},
    {"alice\xffmallory", 13, "is not valid UTF-8"},
    {"alice\xc0\xafmallory", 14, "is not valid UTF-8"},
    {"alice\xed\xa0\x80mallory", 15, "is not valid UTF-8"},
    {"alice\xf4\x90\x80\x80mallory", 16, "is not valid UTF-8"},
    {"mallory\xe2\x82", 9, "is not valid UTF-8"},
};

/* Good strings, carried in full: ASCII, 2-, 3- and 4-byte UTF-8, the last
 * code point, and the empty string. */
static const char *const good_strings[] = {"alice", "ab", "caf\xc3\xa9", "\xe2\x82\xac 5",
                                           "\xf0\x9f\x94\x91", "\xf4\x8f\xbf\xbf", ""};

START_TEST(every_string_field_of_every_route)
{
    size_t total = 0, in_maps = 0, nested = 0;
    for (size_t r = 0; r < kms_twirp_n_routes(); r++) {
        char route[128];
        const ProtobufCMessageDescriptor *d = kms_twirp_route_at(r, route, sizeof(route));
        ck_assert_ptr_nonnull(d);
        struct spath cur = {.n = 0};
        struct spaths all = {.n = 0};
        find_strings(d, &cur, &all);
        ck_assert_msg(all.n > 0, "%s: no string field found", route);
        for (size_t i = 0; i < all.n; i++) {
            const struct spath *p = &all.p[i];
            char name[160];
            path_name(p, name, sizeof(name));
            total++;
            nested += p->n > 1;
            in_maps += p->n > 1 && strcmp(p->f[p->n - 1]->name, "key") == 0;
            for (size_t g = 0; g < sizeof(good_strings) / sizeof(good_strings[0]); g++) {
                struct wbuf b = {0};
                put_path(&b, p, 0, good_strings[g], strlen(good_strings[g]));
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m != NULL, "%s %s: good string %zu refused%s", route, name, g,
                              kms_pbuf_last_refusal());
                ck_assert_str_eq(get_path(m, p), good_strings[g]);
                protobuf_c_message_free_unpacked(m, NULL);
                free(b.p);
            }
            /* The one opaque field (kms_pbuf.h): its handler gets a marker
             * for the flaw, never a part of the value, and answers it. */
            bool opaque = p->n == 1 &&
                          strcmp(d->name, "custos.v1.RedeemLinkTokenRequest") == 0 &&
                          strcmp(p->f[0]->name, "token") == 0;
            for (size_t k = 0; opaque && k < sizeof(bad_strings) / sizeof(bad_strings[0]); k++) {
                struct wbuf b = {0};
                put_path(&b, p, 0, bad_strings[k].bytes, bad_strings[k].len);
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m != NULL, "%s %s: opaque field refused", route, name);
                ck_assert_str_eq(get_path(m, p), bad_strings[k].why[0] == 'c'
                                                     ? KMS_PBUF_FLAW_NUL
                                                     : KMS_PBUF_FLAW_UTF8);
                kms_pbuf_free_wiped(m);
                free(b.p);
            }
            for (size_t k = 0; !opaque && k < sizeof(bad_strings) / sizeof(bad_strings[0]); k++) {
                struct wbuf b = {0};
                put_path(&b, p, 0, bad_strings[k].bytes, bad_strings[k].len);
                ck_assert_int_eq(kms_pbuf_check(d, b.p, b.len), KMS_ERR_INVALID_ARGUMENT);
                kms_err_clear();
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m == NULL, "%s %s: bad string %zu accepted", route, name, k);
                /* What a handler answers: invalid_argument naming the
                 * field (the map's name for an entry's key or value),
                 * never the value. */
                kms_err rc = kms_pbuf_refused(d->short_name);
                ck_assert_int_eq(rc, KMS_ERR_INVALID_ARGUMENT);
                ck_assert_str_eq(kms_err_twirp_code(rc), "invalid_argument");
                const char *msg = kms_err_detail();
                char want[200];
                const ProtobufCFieldDescriptor *leaf = p->f[p->n - 1];
                bool map = p->n > 1 && (strcmp(leaf->name, "key") == 0 ||
                                        strcmp(leaf->name, "value") == 0);
                if (map) {
                    char parent[160];
                    struct spath up = *p;
                    up.n--;
                    path_name(&up, parent, sizeof(parent));
                    snprintf(want, sizeof(want), "field \"%s\" (a map %s) %s", parent,
                             leaf->name, bad_strings[k].why);
                } else {
                    snprintf(want, sizeof(want), "field \"%s\" %s", name, bad_strings[k].why);
                }
                ck_assert_str_eq(msg, want);
                ck_assert_ptr_null(strstr(msg, "mallory"));
                ck_assert_ptr_null(strstr(msg, "alice"));
                free(b.p);
            }
        }
    }
    /* The walk saw the whole class: top-level, nested and map strings. */
    ck_assert_uint_ge(total, 40);
    ck_assert_uint_ge(nested, 8);
    ck_assert_uint_ge(in_maps, 4);
}
END_TEST

/* ---- enum fields: only values their enum defines, every field of every route */

static void find_enums(const ProtobufCMessageDescriptor *d, struct spath *cur, struct spaths *out)
{
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        cur->f[cur->n++] = f;
        if (f->type == PROTOBUF_C_TYPE_ENUM) {
            ck_assert_uint_lt(out->n, sizeof(out->p) / sizeof(out->p[0]));
            out->p[out->n++] = *cur;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && cur->n < KMS_PBUF_MAX_DEPTH - 1) {
            find_enums(f->descriptor, cur, out);
        }
        cur->n--;
    }
}

/* A request whose only field is the enum at the end of path, = v. */
static void put_enum_path(struct wbuf *b, const struct spath *path, unsigned at, uint64_t v)
{
    const ProtobufCFieldDescriptor *f = path->f[at];
    if (at + 1 == path->n) {
        put_varint(b, (uint64_t)f->id << 3);
        put_varint(b, v);
        return;
    }
    put_varint(b, ((uint64_t)f->id << 3) | 2);
    struct wbuf inner = {0};
    put_enum_path(&inner, path, at + 1, v);
    put_varint(b, inner.len);
    put(b, inner.p, inner.len);
    free(inner.p);
}

/* The enum at path in a decoded message (element 0 of repeated ones). */
static int get_enum_path(const ProtobufCMessage *m, const struct spath *path)
{
    const void *cur = m;
    for (unsigned i = 0; i < path->n; i++) {
        const ProtobufCFieldDescriptor *f = path->f[i];
        const char *base = (const char *)cur + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)cur + f->quantifier_offset);
            ck_assert_uint_eq(n, 1);
            base = *(const char *const *)base;
        }
        if (i + 1 == path->n)
            return *(const int *)base;
        cur = *(const void *const *)base;
        ck_assert_ptr_nonnull(cur);
    }
    return -1;
}

START_TEST(every_enum_field_of_every_route)
{
    size_t total = 0, nested = 0;
    for (size_t r = 0; r < kms_twirp_n_routes(); r++) {
        char route[128];
        const ProtobufCMessageDescriptor *d = kms_twirp_route_at(r, route, sizeof(route));
        ck_assert_ptr_nonnull(d);
        struct spath cur = {.n = 0};
        struct spaths all = {.n = 0};
        find_enums(d, &cur, &all);
        for (size_t i = 0; i < all.n; i++) {
            const struct spath *p = &all.p[i];
            const ProtobufCEnumDescriptor *ed = p->f[p->n - 1]->descriptor;
            char name[160];
            path_name(p, name, sizeof(name));
            total++;
            nested += p->n > 1;
            /* Every defined value decodes, UNSPECIFIED (0) included. */
            for (unsigned k = 0; k < ed->n_values; k++) {
                struct wbuf b = {0};
                put_enum_path(&b, p, 0, (uint64_t)(int64_t)ed->values[k].value);
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m != NULL, "%s %s: defined value %s refused%s", route, name,
                              ed->values[k].name, kms_pbuf_last_refusal());
                ck_assert_int_eq(get_enum_path(m, p), ed->values[k].value);
                protobuf_c_message_free_unpacked(m, NULL);
                free(b.p);
            }
            /* Undefined: one past the largest, 99, 2^31-1, -1, and values
             * whose low 32 bits are defined (2^40 is 0, 2^32+1 is 1). */
            int maxv = 0;
            for (unsigned k = 0; k < ed->n_values; k++)
                if (ed->values[k].value > maxv)
                    maxv = ed->values[k].value;
            const uint64_t bad[] = {(uint64_t)maxv + 1, 99, 0x7fffffff, UINT64_MAX,
                                    (uint64_t)1 << 40, ((uint64_t)1 << 32) + 1};
            for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                struct wbuf b = {0};
                put_enum_path(&b, p, 0, bad[k]);
                ck_assert_int_eq(kms_pbuf_check(d, b.p, b.len), KMS_ERR_INVALID_ARGUMENT);
                kms_err_clear();
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m == NULL, "%s %s: undefined value %zu accepted", route, name, k);
                kms_err rc = kms_pbuf_refused(d->short_name);
                ck_assert_int_eq(rc, KMS_ERR_INVALID_ARGUMENT);
                ck_assert_str_eq(kms_err_twirp_code(rc), "invalid_argument");
                char want[200];
                snprintf(want, sizeof(want), "field \"%s\" is not a defined %s value", name,
                         ed->short_name);
                ck_assert_str_eq(kms_err_detail(), want);
                free(b.p);
            }
        }
    }
    /* The walk saw the class: CreateKey's spec/usage/origin, the field
     * modes inside EncryptFields' repeated messages, escrow's enums. */
    ck_assert_uint_ge(total, 8);
    ck_assert_uint_ge(nested, 1);
}
END_TEST

/* The defect as reported: CreateKey origin=99 and origin=2^40. */
START_TEST(enum_cases_of_the_defect)
{
    Custos__V1__CreateKeyRequest r = CUSTOS__V1__CREATE_KEY_REQUEST__INIT;
    r.region = (char *)"eu-west";
    r.spec = 1;
    r.usage = 1;
    r.origin = 99;
    uint8_t buf[128];
    size_t n = custos__v1__create_key_request__pack(&r, buf);
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__create_key_request__descriptor, buf, n));
    ck_assert_int_eq(kms_pbuf_refused("CreateKeyRequest"), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "field \"origin\" is not a defined KeyOrigin value");
    /* origin as the varint 2^40, which protobuf-c alone reads as 0 */
    r.origin = 0;
    n = custos__v1__create_key_request__pack(&r, buf);
    static const uint8_t big[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x20};
    const ProtobufCFieldDescriptor *of =
        protobuf_c_message_descriptor_get_field_by_name(&custos__v1__create_key_request__descriptor,
                                                        "origin");
    ck_assert_ptr_nonnull(of);
    buf[n++] = (uint8_t)(of->id << 3);
    memcpy(buf + n, big, sizeof(big));
    n += sizeof(big);
    ck_assert_int_eq(kms_pbuf_check(&custos__v1__create_key_request__descriptor, buf, n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_pbuf_last_refusal(),
                     ": field \"origin\" is not a defined KeyOrigin value");
    Custos__V1__CreateKeyRequest *m = (Custos__V1__CreateKeyRequest *)protobuf_c_message_unpack(
        &custos__v1__create_key_request__descriptor, NULL, n, buf);
    ck_assert_ptr_nonnull(m); /* what protobuf-c alone made of it */
    ck_assert_int_eq(m->origin, 0);
    custos__v1__create_key_request__free_unpacked(m, NULL);
}
END_TEST

/* ---- 32-bit integers: the whole varint must fit the field's type -------- */

static void find_u32(const ProtobufCMessageDescriptor *d, struct spath *cur, struct spaths *out)
{
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        cur->f[cur->n++] = f;
        if (f->type == PROTOBUF_C_TYPE_UINT32) {
            ck_assert_uint_lt(out->n, sizeof(out->p) / sizeof(out->p[0]));
            out->p[out->n++] = *cur;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && cur->n < KMS_PBUF_MAX_DEPTH - 1) {
            find_u32(f->descriptor, cur, out);
        }
        cur->n--;
    }
}

START_TEST(every_uint32_field_of_every_route)
{
    size_t total = 0, nested = 0, repeated = 0;
    for (size_t r = 0; r < kms_twirp_n_routes(); r++) {
        char route[128];
        const ProtobufCMessageDescriptor *d = kms_twirp_route_at(r, route, sizeof(route));
        ck_assert_ptr_nonnull(d);
        struct spath cur = {.n = 0};
        struct spaths all = {.n = 0};
        find_u32(d, &cur, &all);
        for (size_t i = 0; i < all.n; i++) {
            const struct spath *p = &all.p[i];
            char name[160];
            path_name(p, name, sizeof(name));
            total++;
            nested += p->n > 1;
            repeated += p->f[p->n - 1]->label == PROTOBUF_C_LABEL_REPEATED;
            /* Values of a uint32, up to 0xFFFFFFFF, decode as sent. */
            const uint64_t good[] = {0, 1, 0x7fffffff, 0x80000000, 0xffffffff};
            for (size_t k = 0; k < sizeof(good) / sizeof(good[0]); k++) {
                struct wbuf b = {0};
                put_enum_path(&b, p, 0, good[k]);
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m != NULL, "%s %s: %llx refused%s", route, name,
                              (unsigned long long)good[k], kms_pbuf_last_refusal());
                ck_assert_uint_eq((uint32_t)get_enum_path(m, p), good[k]);
                protobuf_c_message_free_unpacked(m, NULL);
                free(b.p);
            }
            /* Past 32 bits, including values whose low 32 bits are a
             * version (2^32+1 is 1, 2^32 is 0 "current"). */
            const uint64_t bad[] = {(uint64_t)1 << 32, ((uint64_t)1 << 32) + 1,
                                    (uint64_t)1 << 63, ((uint64_t)1 << 63) + 1, UINT64_MAX};
            for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                struct wbuf b = {0};
                put_enum_path(&b, p, 0, bad[k]);
                ck_assert_int_eq(kms_pbuf_check(d, b.p, b.len), KMS_ERR_INVALID_ARGUMENT);
                kms_err_clear();
                ProtobufCMessage *m = kms_pbuf_unpack(d, b.p, b.len);
                ck_assert_msg(m == NULL, "%s %s: %llx accepted", route, name,
                              (unsigned long long)bad[k]);
                kms_err rc = kms_pbuf_refused(d->short_name);
                ck_assert_int_eq(rc, KMS_ERR_INVALID_ARGUMENT);
                ck_assert_str_eq(kms_err_twirp_code(rc), "invalid_argument");
                char want[200];
                snprintf(want, sizeof(want), "field \"%s\" is out of range for a uint32", name);
                ck_assert_str_eq(kms_err_detail(), want);
                free(b.p);
            }
        }
    }
    /* The class: every version, page_size, number_of_bytes..., in nested
     * messages and repeated (RequestRecovery versions). */
    ck_assert_uint_ge(total, 10);
    ck_assert_uint_ge(nested, 1);
    ck_assert_uint_ge(repeated, 1);
}
END_TEST

/* The defect as reported: Sign version = 2^32+1 (protobuf-c alone reads 1),
 * packed repeated versions, and varints with bits past 64. */
START_TEST(uint32_cases_of_the_defect)
{
    /* SignRequest {key_id: "k", version: 2^32+1} */
    Custos__V1__SignRequest r = CUSTOS__V1__SIGN_REQUEST__INIT;
    r.key_id = (char *)"k";
    uint8_t buf[64];
    size_t n = custos__v1__sign_request__pack(&r, buf);
    const ProtobufCFieldDescriptor *vf = protobuf_c_message_descriptor_get_field_by_name(
        &custos__v1__sign_request__descriptor, "version");
    ck_assert_ptr_nonnull(vf);
    struct wbuf b = {0};
    put(&b, buf, n);
    put_varint(&b, (uint64_t)vf->id << 3);
    put_varint(&b, ((uint64_t)1 << 32) + 1);
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__sign_request__descriptor, b.p, b.len));
    ck_assert_int_eq(kms_pbuf_refused("SignRequest"), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "field \"version\" is out of range for a uint32");
    Custos__V1__SignRequest *m = (Custos__V1__SignRequest *)protobuf_c_message_unpack(
        &custos__v1__sign_request__descriptor, NULL, b.len, b.p);
    ck_assert_ptr_nonnull(m); /* what protobuf-c alone made of it */
    ck_assert_uint_eq(m->version, 1);
    custos__v1__sign_request__free_unpacked(m, NULL);
    free(b.p);

    /* RequestRecoveryRequest versions, packed: [1, 0xFFFFFFFF] decodes,
     * [1, 2^32] and [2^32+2] do not. */
    const ProtobufCFieldDescriptor *vs = protobuf_c_message_descriptor_get_field_by_name(
        &custos__v1__request_recovery_request__descriptor, "versions");
    ck_assert_ptr_nonnull(vs);
    ck_assert_int_eq(vs->type, PROTOBUF_C_TYPE_UINT32);
    const uint64_t runs[3][2] = {{1, 0xffffffff}, {1, (uint64_t)1 << 32}, {((uint64_t)1 << 32) + 2, 3}};
    for (int k = 0; k < 3; k++) {
        struct wbuf run = {0}, pb = {0};
        put_varint(&run, runs[k][0]);
        put_varint(&run, runs[k][1]);
        put_varint(&pb, ((uint64_t)vs->id << 3) | 2);
        put_varint(&pb, run.len);
        put(&pb, run.p, run.len);
        Custos__V1__RequestRecoveryRequest *rr =
            kms_pbuf_unpack(&custos__v1__request_recovery_request__descriptor, pb.p, pb.len);
        if (k == 0) {
            ck_assert_ptr_nonnull(rr);
            ck_assert_uint_eq(rr->n_versions, 2);
            ck_assert_uint_eq(rr->versions[1], 0xffffffffu);
            custos__v1__request_recovery_request__free_unpacked(rr, NULL);
        } else {
            ck_assert_ptr_null(rr);
            ck_assert_int_eq(kms_pbuf_refused("RequestRecoveryRequest"),
                             KMS_ERR_INVALID_ARGUMENT);
            ck_assert_str_eq(kms_err_detail(), "field \"versions\" is out of range for a uint32");
        }
        free(run.p);
        free(pb.p);
    }

    /* A 10-byte varint with bits past the 64th (2^64+1, which a 64-bit
     * read keeps as 1) is malformed, for a uint32 and an enum alike. */
    static const uint8_t past64[] = {0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02};
    const uint8_t tags[2] = {(uint8_t)(vf->id << 3),
                             (uint8_t)(protobuf_c_message_descriptor_get_field_by_name(
                                           &custos__v1__sign_request__descriptor, "algorithm")
                                           ->id
                                       << 3)};
    for (int k = 0; k < 2; k++) {
        uint8_t w[16];
        w[0] = tags[k];
        memcpy(w + 1, past64, sizeof(past64));
        ck_assert_int_eq(
            kms_pbuf_check(&custos__v1__sign_request__descriptor, w, 1 + sizeof(past64)),
            KMS_ERR_MALFORMED);
        ck_assert_ptr_nonnull(strstr(kms_pbuf_last_refusal(), "truncated varint"));
        kms_err_clear();
    }
    /* ... while bit 63 itself (2^63, the 10th byte 0x01) is a 64-bit value
     * that is simply out of range for the uint32. */
    static const uint8_t bit63[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    uint8_t w[16];
    w[0] = tags[0];
    memcpy(w + 1, bit63, sizeof(bit63));
    ck_assert_int_eq(kms_pbuf_check(&custos__v1__sign_request__descriptor, w, 1 + sizeof(bit63)),
                     KMS_ERR_INVALID_ARGUMENT);
    kms_err_clear();
}
END_TEST

/* int32, sint32 and maps of uint32: no request of proto/ has one today, so
 * hand-made descriptors (what the walk reads of them: fields, ids, types,
 * labels, sub-message descriptors). */
static const ProtobufCFieldDescriptor i32_fields[] = {
    {.name = "i", .id = 1, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_INT32},
    {.name = "z", .id = 2, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_SINT32},
    {.name = "many", .id = 3, .label = PROTOBUF_C_LABEL_REPEATED, .type = PROTOBUF_C_TYPE_INT32},
    {.name = "f", .id = 4, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_FIXED32},
};
static const ProtobufCMessageDescriptor i32_desc = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Ints",
    .short_name = "Ints",
    .n_fields = 4,
    .fields = i32_fields,
};
/* map<string, uint32> counts = 1 inside a nested message: Outer { Ints
 * ints = 1; map<string, uint32> counts = 2; }. */
static const ProtobufCFieldDescriptor entry_fields[] = {
    {.name = "key", .id = 1, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_STRING},
    {.name = "value", .id = 2, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_UINT32},
};
static const ProtobufCMessageDescriptor entry_desc = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Outer.CountsEntry",
    .short_name = "CountsEntry",
    .n_fields = 2,
    .fields = entry_fields,
};
static const ProtobufCFieldDescriptor outer_fields[] = {
    {.name = "ints", .id = 1, .label = PROTOBUF_C_LABEL_NONE, .type = PROTOBUF_C_TYPE_MESSAGE,
     .descriptor = &i32_desc},
    {.name = "counts", .id = 2, .label = PROTOBUF_C_LABEL_REPEATED,
     .type = PROTOBUF_C_TYPE_MESSAGE, .descriptor = &entry_desc},
};
static const ProtobufCMessageDescriptor outer_desc = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Outer",
    .short_name = "Outer",
    .n_fields = 2,
    .fields = outer_fields,
};

/* Outer with one sub-message field `id` holding `inner`. */
static kms_err check_outer(unsigned id, const struct wbuf *inner)
{
    struct wbuf b = {0};
    put_varint(&b, ((uint64_t)id << 3) | 2);
    put_varint(&b, inner->len);
    put(&b, inner->p, inner->len);
    kms_err rc = kms_pbuf_check(&outer_desc, b.p, b.len);
    kms_err_clear();
    free(b.p);
    return rc;
}

static kms_err check_one(unsigned id, uint64_t v)
{
    struct wbuf b = {0};
    put_varint(&b, (uint64_t)id << 3);
    put_varint(&b, v);
    kms_err rc = kms_pbuf_check(&i32_desc, b.p, b.len);
    kms_err_clear();
    free(b.p);
    return rc;
}

START_TEST(int32_sint32_and_map_values)
{
    /* int32: negatives come sign-extended (10 bytes); exactly the int32
     * range read as an int64 is accepted. */
    const int64_t ok[] = {0, 1, -1, INT32_MAX, INT32_MIN};
    for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++)
        ck_assert_int_eq(check_one(1, (uint64_t)ok[k]), KMS_OK);
    /* -1 really is the 10-byte varint protobuf writes. */
    static const uint8_t m1[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff, 0x01};
    ck_assert_int_eq(kms_pbuf_check(&i32_desc, m1, sizeof(m1)), KMS_OK);
    const uint64_t bad[] = {(uint64_t)INT32_MAX + 1, 0xffffffff /* -1 as 5 bytes */,
                            (uint64_t)1 << 32, (uint64_t)((int64_t)INT32_MIN - 1), UINT64_MAX >> 1};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        ck_assert_int_eq(check_one(1, bad[k]), KMS_ERR_INVALID_ARGUMENT);
        ck_assert_str_eq(kms_pbuf_last_refusal(), ": field \"i\" is out of range for an int32");
    }
    /* sint32 (zigzag): the wire value is the 32-bit pattern. */
    ck_assert_int_eq(check_one(2, 0xffffffff), KMS_OK);
    ck_assert_int_eq(check_one(2, (uint64_t)1 << 32), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_pbuf_last_refusal(), ": field \"z\" is out of range for a sint32");
    /* Repeated int32, unpacked and packed: one element out of range is
     * enough. */
    ck_assert_int_eq(check_one(3, (uint64_t)-5), KMS_OK);
    ck_assert_int_eq(check_one(3, (uint64_t)1 << 31), KMS_ERR_INVALID_ARGUMENT);
    struct wbuf run = {0}, pb = {0};
    put_varint(&run, (uint64_t)-1);
    put_varint(&run, 7);
    put_varint(&pb, (3 << 3) | 2);
    put_varint(&pb, run.len);
    put(&pb, run.p, run.len);
    ck_assert_int_eq(kms_pbuf_check(&i32_desc, pb.p, pb.len), KMS_OK);
    put_varint(&run, (uint64_t)1 << 31);
    pb.len = 0;
    put_varint(&pb, (3 << 3) | 2);
    put_varint(&pb, run.len);
    put(&pb, run.p, run.len);
    ck_assert_int_eq(kms_pbuf_check(&i32_desc, pb.p, pb.len), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_pbuf_last_refusal(), ": field \"many\" is out of range for an int32");
    kms_err_clear();
    free(run.p);
    free(pb.p);
    /* fixed32 is exactly 4 bytes on the wire: nothing to overflow. */
    static const uint8_t fx[] = {0x25, 0xff, 0xff, 0xff, 0xff};
    ck_assert_int_eq(kms_pbuf_check(&i32_desc, fx, sizeof(fx)), KMS_OK);

    /* Nested: Outer.ints.i, named by its path. */
    for (int k = 0; k < 2; k++) {
        struct wbuf in = {0};
        put_varint(&in, 1 << 3);
        put_varint(&in, k == 0 ? (uint64_t)INT32_MIN : (uint64_t)1 << 31);
        ck_assert_int_eq(check_outer(1, &in), k == 0 ? KMS_OK : KMS_ERR_INVALID_ARGUMENT);
        if (k == 1)
            ck_assert_str_eq(kms_pbuf_last_refusal(),
                             ": field \"ints.i\" is out of range for an int32");
        free(in.p);
    }
    /* A map value: {"a": 0xFFFFFFFF} decodes, {"a": 2^32+1} does not. */
    for (int k = 0; k < 2; k++) {
        struct wbuf in = {0};
        put_varint(&in, (1 << 3) | 2);
        put_varint(&in, 1);
        put(&in, "a", 1);
        put_varint(&in, 2 << 3);
        put_varint(&in, k == 0 ? 0xffffffff : ((uint64_t)1 << 32) + 1);
        ck_assert_int_eq(check_outer(2, &in), k == 0 ? KMS_OK : KMS_ERR_INVALID_ARGUMENT);
        if (k == 1)
            ck_assert_str_eq(kms_pbuf_last_refusal(),
                             ": field \"counts\" (a map value) is out of range for a uint32");
        free(in.p);
    }
}
END_TEST

/* The concrete cases of the defect, byte for byte as a client sends them. */
START_TEST(nul_cases_of_the_defect)
{
    /* EncryptRequest {key_id, plaintext, encryption_context {user: alice\0mallory}} */
    static const uint8_t ctx[] = {0x0a, 0x02, 'i', 'd', 0x12, 0x01, 'x',  0x1a, 0x15,
                                  0x0a, 0x04, 'u', 's', 'e', 'r', 0x12, 0x0d, 'a',
                                  'l',  'i',  'c', 'e', 0,   'm', 'a',  'l',  'l',
                                  'o',  'r',  'y'};
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, ctx,
                                       sizeof(ctx)));
    ck_assert_int_eq(kms_pbuf_refused("EncryptRequest"), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(),
                     "field \"encryption_context\" (a map value) contains a NUL byte");
    /* CreateKeyRequest {region: "eu-west\0us-east"} */
    static const uint8_t region[] = {0x0a, 0x0f, 'e', 'u', '-', 'w', 'e', 's', 't',
                                     0,    'u',  's', '-', 'e', 'a', 's', 't'};
    ck_assert_int_eq(kms_pbuf_check(&custos__v1__create_key_request__descriptor, region,
                                    sizeof(region)),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_pbuf_last_refusal(), ": field \"region\" contains a NUL byte");
    /* Bytes fields are not strings: a NUL in a plaintext is data. */
    static const uint8_t pt[] = {0x0a, 0x02, 'i', 'd', 0x12, 0x03, 0, 0xff, 0};
    Custos__V1__EncryptRequest *m =
        kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, pt, sizeof(pt));
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->plaintext.len, 3);
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    /* A wire-level refusal stays malformed, with its reason. */
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__describe_key_request__descriptor,
                                       (const uint8_t *)"\x0a\x05" "ab", 4));
    ck_assert_int_eq(kms_pbuf_refused("DescribeKeyRequest"), KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "not a valid DescribeKeyRequest message: "
                                                   "length past the end"));
    /* A refusal by protobuf-c itself (key_id sent as a varint) right after
     * a string refusal is malformed, not the previous call's answer. */
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__create_key_request__descriptor, region,
                                       sizeof(region)));
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__describe_key_request__descriptor,
                                       (const uint8_t *)"\x08\x01", 2));
    ck_assert_int_eq(kms_pbuf_refused("DescribeKeyRequest"), KMS_ERR_MALFORMED);
    ck_assert_str_eq(kms_err_detail(), "the body is not a valid DescribeKeyRequest message");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_pbuf");
    TCase *tc = tcase_create("decode");
    tcase_add_test(tc, honest_messages_decode);
    tcase_add_test(tc, wire_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("strings");
    tcase_add_test(tc, every_string_field_of_every_route);
    tcase_add_test(tc, nul_cases_of_the_defect);
    suite_add_tcase(s, tc);
    tc = tcase_create("enums");
    tcase_add_test(tc, every_enum_field_of_every_route);
    tcase_add_test(tc, enum_cases_of_the_defect);
    suite_add_tcase(s, tc);
    tc = tcase_create("integers");
    tcase_add_test(tc, every_uint32_field_of_every_route);
    tcase_add_test(tc, uint32_cases_of_the_defect);
    tcase_add_test(tc, int32_sint32_and_map_values);
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
