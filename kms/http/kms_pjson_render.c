/*
 * kms_pjson_render.c - protobuf wire -> proto3 JSON, driven by descriptors
 * (kms_pjson.h; the other direction is kms_pjson.c).
 */
#include "kms_pjson.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_buf.h"
#include "kms_pbuf.h"
#include "kms_pjson_lex.h"
#include "kms_utf8.h"

/* ---- wire -> JSON ------------------------------------------------------------- */

/* protobuf-c's allocations for the unpacked reply, wiped on free: the reply
 * may carry plaintext or a data key. The size sits in front of the block. */
#define HDR 16

static void *wipe_alloc(void *ud, size_t n)
{
    (void)ud;
    if (n > SIZE_MAX - HDR)
        return NULL;
    uint8_t *p = malloc(n + HDR);
    if (p == NULL)
        return NULL;
    memcpy(p, &n, sizeof(n));
    return p + HDR;
}

static void wipe_free(void *ud, void *q)
{
    (void)ud;
    if (q == NULL)
        return;
    uint8_t *p = (uint8_t *)q - HDR;
    size_t n;
    memcpy(&n, p, sizeof(n));
    OPENSSL_cleanse(p, n + HDR);
    free(p);
}

static ProtobufCAllocator wiping_allocator = {wipe_alloc, wipe_free, NULL};

struct out {
    struct kms_buf b;
    kms_err err; /* the first failure; later writes are ignored */
};

static void out_put(struct out *o, const void *src, size_t n)
{
    if (o->err != KMS_OK || n == 0)
        return;
    if (kms_buf_append(&o->b, src, n) != KMS_OK)
        o->err = kms_err_set(KMS_ERR_NOMEM, "out of memory");
}

static void out_str(struct out *o, const char *s)
{
    out_put(o, s, strlen(s));
}

static void out_fmt(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out_fmt(struct out *o, const char *fmt, ...)
{
    char tmp[48];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        out_put(o, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A string as a JSON string. Ill-formed UTF-8, which JSON cannot carry,
 * becomes U+FFFD per maximal subpart rather than an error: a reply is
 * rendered after the handler has changed state, and a string stored before
 * kmsd refused non-UTF-8 ones (a key description) must not turn a
 * committed RotateKey into a failure the client retries. The protobuf
 * encoding still returns the bytes as stored (docs/api.md, JSON). */
static void out_json_string(struct out *o, const char *s, size_t n)
{
    static const char fffd[] = "\xef\xbf\xbd";
    const uint8_t *u = (const uint8_t *)s;
    if (o->err != KMS_OK)
        return;
    out_put(o, "\"", 1);
    size_t run = 0; /* bytes copied as they are, flushed before an escape */
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        char tmp[8];
        uint32_t cp;
        size_t len = kms_utf8_next(u + i, n - i, &cp);
        if (cp == KMS_UTF8_BAD)
            esc = fffd; /* one per maximal subpart (kms_utf8.h) */
        else if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            esc = tmp;
        }
        if (esc != NULL) {
            out_put(o, s + run, i - run);
            out_str(o, esc);
            run = i + len;
        }
        i += len;
    }
    out_put(o, s + run, n - run);
    out_put(o, "\"", 1);
}

static void out_base64(struct out *o, const uint8_t *p, size_t n)
{
    if (o->err != KMS_OK)
        return;
    if (n > (SIZE_MAX - 8) / 4 * 3) {
        o->err = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        return;
    }
    size_t m = (n + 2) / 3 * 4;
    if (kms_buf_reserve(&o->b, m + 3) != KMS_OK) {
        o->err = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        return;
    }
    uint8_t *dst = o->b.data + o->b.len;
    dst[0] = '"';
    /* EVP_EncodeBlock: standard alphabet, padded, no line breaks; it writes
     * a NUL after the text, overwritten by the closing quote. The input
     * length is an int. */
    size_t done = 0, w = 1;
    while (done < n) {
        size_t chunk = n - done > (size_t)3 * 1024 * 1024 ? (size_t)3 * 1024 * 1024 : n - done;
        w += (size_t)EVP_EncodeBlock(dst + w, p + done, (int)chunk);
        done += chunk;
    }
    dst[w++] = '"';
    kms_buf_commit(&o->b, w);
}

static void emit_message(struct out *o, const ProtobufCMessageDescriptor *d,
                         const ProtobufCMessage *m, unsigned depth);

/* One value of field f at p (a member, or an element of a repeated one). */
static void emit_value(struct out *o, const ProtobufCFieldDescriptor *f, const void *p,
                       unsigned depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        out_fmt(o, "%" PRId32, *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        out_fmt(o, "%" PRIu32, *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        out_fmt(o, "\"%" PRId64 "\"", *(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        out_fmt(o, "\"%" PRIu64 "\"", *(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        out_str(o, *(const protobuf_c_boolean *)p ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev)
            out_json_string(o, ev->name, strlen(ev->name));
        else
            out_fmt(o, "%d", v); /* a value newer than this schema: its number */
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        out_json_string(o, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        out_base64(o, b->data, b->len);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sm = *(ProtobufCMessage *const *)p;
        if (sm)
            emit_message(o, f->descriptor, sm, depth + 1);
        else
            out_str(o, "null");
        break;
    }
    default:
        if (o->err == KMS_OK)
            o->err = kms_err_set(KMS_ERR_INTERNAL, "field type %d has no JSON mapping here",
                                 (int)f->type);
        break;
    }
}

/* A map key as a JSON object key: always a string. */
static void emit_map_key(struct out *o, const ProtobufCFieldDescriptor *kf, const void *p)
{
    if (kf->type == PROTOBUF_C_TYPE_STRING) {
        emit_value(o, kf, p, 0);
        return;
    }
    if (kf->type == PROTOBUF_C_TYPE_BOOL) {
        out_str(o, *(const protobuf_c_boolean *)p ? "\"true\"" : "\"false\"");
        return;
    }
    /* Integers: 64-bit ones are quoted already, 32-bit ones are not. */
    bool wide = kms_pbuf_elem_size(kf->type) == 8;
    if (!wide)
        out_put(o, "\"", 1);
    emit_value(o, kf, p, 0);
    if (!wide)
        out_put(o, "\"", 1);
}

/* Whether map entry j of arr[n] has its key again in a later entry. */
static bool map_key_later(const ProtobufCFieldDescriptor *f, const uint8_t *arr, size_t j,
                          size_t n)
{
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0];
    const ProtobufCMessage *const *entries = (const ProtobufCMessage *const *)arr;
    const uint8_t *kj = (const uint8_t *)entries[j] + kf->offset;
    for (size_t l = j + 1; l < n; l++) {
        const uint8_t *kl = (const uint8_t *)entries[l] + kf->offset;
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            const char *a = *(char *const *)kj, *b = *(char *const *)kl;
            if (strcmp(a ? a : "", b ? b : "") == 0)
                return true;
        } else if (memcmp(kj, kl, kms_pbuf_elem_size(kf->type)) == 0) {
            return true;
        }
    }
    return false;
}

static void emit_message(struct out *o, const ProtobufCMessageDescriptor *d,
                         const ProtobufCMessage *m, unsigned depth)
{
    if (depth > KMS_PBUF_MAX_DEPTH) {
        if (o->err == KMS_OK)
            o->err = kms_err_set(KMS_ERR_INTERNAL, "the reply nests deeper than %d",
                                 KMS_PBUF_MAX_DEPTH);
        return;
    }
    out_put(o, "{", 1);
    for (size_t i = 0; i < d->n_fields && o->err == KMS_OK; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
            (f->label != PROTOBUF_C_LABEL_NONE && f->label != PROTOBUF_C_LABEL_REPEATED)) {
            o->err = kms_err_set(KMS_ERR_INTERNAL,
                                 "oneof and proto2 fields have no JSON mapping here");
            break;
        }
        if (i)
            out_put(o, ",", 1);
        out_json_string(o, f->name, strlen(f->name));
        out_put(o, ":", 1);
        const uint8_t *member = (const uint8_t *)m + f->offset;
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            emit_value(o, f, member, depth);
            continue;
        }
        size_t n = *(const size_t *)((const uint8_t *)m + f->quantifier_offset);
        const uint8_t *arr = *(const uint8_t *const *)member;
        bool map = kms_pjson_is_map(f);
        out_put(o, map ? "{" : "[", 1);
        bool first = true;
        for (size_t j = 0; j < n; j++) {
            const uint8_t *el = arr + j * kms_pbuf_elem_size(f->type);
            /* A key repeated on the wire: the last entry wins (protobuf's
             * rule), and a JSON object never holds a key twice. */
            if (map && map_key_later(f, arr, j, n))
                continue;
            if (!first)
                out_put(o, ",", 1);
            first = false;
            if (map) {
                const ProtobufCMessage *entry = *(ProtobufCMessage *const *)el;
                const ProtobufCMessageDescriptor *ed = f->descriptor;
                emit_map_key(o, &ed->fields[0], (const uint8_t *)entry + ed->fields[0].offset);
                out_put(o, ":", 1);
                emit_value(o, &ed->fields[1], (const uint8_t *)entry + ed->fields[1].offset,
                           depth + 1);
            } else {
                emit_value(o, f, el, depth);
            }
        }
        out_put(o, map ? "}" : "]", 1);
    }
    out_put(o, "}", 1);
}

kms_err kms_pjson_from_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *wire,
                            size_t len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    /* The handler's own packed reply: trusted bytes, and possibly larger
     * than kms_pbuf's request limits allow (an audit export). */
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &wiping_allocator, len, wire);
    KMS_ENSURE(m != NULL, KMS_ERR_INTERNAL, "the reply does not decode as %s", desc->short_name);
    struct out o = {.err = KMS_OK};
    kms_buf_init(&o.b, SIZE_MAX);
    emit_message(&o, desc, m, 1);
    out_put(&o, "", 1); /* the NUL, not counted */
    protobuf_c_message_free_unpacked(m, &wiping_allocator);
    if (o.err != KMS_OK) {
        kms_buf_wipe(&o.b);
        return o.err;
    }
    *out = (char *)o.b.data;
    *out_len = o.b.len - 1;
    return KMS_OK;
}
