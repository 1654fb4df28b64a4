/*
 * fuzz_proto_requests - every request message decoder, as the handlers call
 * it (kms_pbuf_unpack: wire walk, limits, bounded allocator).
 *
 * Input: one byte choosing the route (modulo the number of routes, in
 * kms_twirp's table order), then the body.
 * Properties: no crash, no leak (libFuzzer's LeakSanitizer); a decoded
 * message re-encodes and that encoding decodes again (what the service
 * accepts it can also describe back); and no accepted body has a string
 * field, at any depth, with a NUL byte or bytes that are not UTF-8 (the
 * handlers get char *: such a string would reach them as another string),
 * nor an enum field, at any depth, whose value its enum does not define
 * (a handler would read it as a default), nor a uint32/sint32/int32 field
 * whose whole varint is not a value of its type (protobuf-c would keep its
 * low 32 bits: version 2^32+1 read as 1). These are checked on the input's
 * own bytes, by a reader of this file, not by the decoder's.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_pbuf.h"
#include "kms_twirp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Code point by code point: shortest form, no surrogates, <= U+10FFFF. */
static bool utf8_text(const uint8_t *p, size_t n)
{
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        uint32_t cp;
        size_t k;
        if (b < 0x80) {
            cp = b;
            k = 1;
        } else if ((b & 0xe0) == 0xc0) {
            cp = b & 0x1f;
            k = 2;
        } else if ((b & 0xf0) == 0xe0) {
            cp = b & 0x0f;
            k = 3;
        } else if ((b & 0xf8) == 0xf0) {
            cp = b & 0x07;
            k = 4;
        } else {
            return false;
        }
        if (k > n - i)
            return false;
        for (size_t j = 1; j < k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k;
    }
    return true;
}

static uint64_t varint(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            abort(); /* accepted, yet truncated */
        uint8_t b = *(*p)++;
        if (shift == 63 && b > 1)
            abort(); /* accepted bits past the 64th */
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0)
            return v;
    }
    abort();
}

/* v, as the wire holds an int32 (sign-extended), is one of ed's values:
 * a linear scan, not protobuf-c's lookup the decoder uses. */
static bool enum_defined(const ProtobufCEnumDescriptor *ed, uint64_t v)
{
    for (unsigned i = 0; i < ed->n_values; i++)
        if ((uint64_t)(int64_t)ed->values[i].value == v)
            return true;
    return false;
}

/* v, the whole varint, is a value of f's type (enums: a defined one). */
static bool varint_ok(const ProtobufCFieldDescriptor *f, uint64_t v)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_ENUM:
        return enum_defined(f->descriptor, v);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_SINT32:
        return (v >> 32) == 0;
    case PROTOBUF_C_TYPE_INT32:
        return (v >> 31) == 0 || (v >> 31) == (UINT64_MAX >> 31);
    default:
        return true;
    }
}

/* The one opaque field (kms_pbuf.h): a link token, whose flaws its handler
 * refuses like any other token fault, so the decoder passes it on. */
static bool opaque(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f, bool top)
{
    return top && strcmp(d->name, "custos.v1.RedeemLinkTokenRequest") == 0 &&
           strcmp(f->name, "token") == 0;
}

/* Every string field of an accepted body: UTF-8 without NUL (but the
 * opaque field); every enum field: a defined value; every 32-bit integer
 * field: a value of its type. */
static void strings_clean(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                          bool top)
{
    const uint8_t *end = p + n;
    while (p < end) {
        uint64_t tag = varint(&p, end);
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
        uint64_t len = 0;
        switch (tag & 7) {
        case 0: {
            uint64_t v = varint(&p, end);
            if (f != NULL && !varint_ok(f, v))
                abort(); /* a value the handler would read as another */
            continue;
        }
        case 1:
            len = 8;
            break;
        case 5:
            len = 4;
            break;
        case 2:
            len = varint(&p, end);
            break;
        default:
            abort(); /* accepted a wire type it refuses */
        }
        if (len > (uint64_t)(end - p))
            abort();
        if ((tag & 7) == 2 && f != NULL) {
            if (f->type == PROTOBUF_C_TYPE_STRING && !opaque(d, f, top) &&
                (memchr(p, 0, (size_t)len) != NULL || !utf8_text(p, (size_t)len)))
                abort(); /* a string the handler would not see as sent */
            if (f->type == PROTOBUF_C_TYPE_MESSAGE)
                strings_clean(f->descriptor, p, (size_t)len, false);
            if (f->type == PROTOBUF_C_TYPE_ENUM || f->type == PROTOBUF_C_TYPE_UINT32 ||
                f->type == PROTOBUF_C_TYPE_SINT32 ||
                f->type == PROTOBUF_C_TYPE_INT32) /* a packed run */
                for (const uint8_t *q = p; q < p + len;)
                    if (!varint_ok(f, varint(&q, p + len)))
                        abort();
        }
        p += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = kms_twirp_route_at(data[0] % kms_twirp_n_routes(), NULL, 0);
    if (d == NULL)
        abort();
    ProtobufCMessage *m = kms_pbuf_unpack(d, data + 1, size - 1);
    if (m == NULL)
        return 0;
    strings_clean(d, data + 1, size - 1, true);
    /* The opaque field holds clean text or exactly one of the markers. */
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!opaque(d, f, true))
            continue;
        const char *v = *(const char *const *)((const uint8_t *)m + f->offset);
        if (v != NULL && strcmp(v, KMS_PBUF_FLAW_NUL) != 0 &&
            strcmp(v, KMS_PBUF_FLAW_UTF8) != 0 && !utf8_text((const uint8_t *)v, strlen(v)))
            abort();
    }
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        abort();
    if (protobuf_c_message_pack(m, buf) != n)
        abort();
    ProtobufCMessage *again = kms_pbuf_unpack(d, buf, n);
    if (again == NULL)
        abort();
    /* Freed as the front frees every request: the wiping walk over the
     * descriptor must stay inside what protobuf-c allocated (ASan) and
     * never write to protobuf-c's static defaults, whatever the shape. */
    kms_pbuf_free_wiped(again);
    free(buf);
    kms_pbuf_free_wiped(m);
    return 0;
}
