/*
 * kms_pjson.c - proto3 JSON <-> protobuf wire, driven by descriptors.
 */
#include "kms_pjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_buf.h"
#include "kms_utf8.h"

/* Per-message "seen" flags live on the stack; kms_pbuf has the same bound. */
#define PJSON_MAX_FIELDS 64

/* ---- JSON -> wire ------------------------------------------------------------- */

/* What a "\u0000" in an object key is parsed as (see unnul_keys). */
#define KEY_NUL '\x01'

struct enc {
    bool nul_keys;  /* some object key held "\u0000", parsed as KEY_NUL */
    char path[192]; /* where in the message, for the error ("fields[2].mode") */
    char why[420];  /* the refusal, set once */
    kms_err err;
};

static kms_err enc_fail(struct enc *e, kms_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record why (with the field's path) and return err. */
static kms_err enc_fail(struct enc *e, kms_err err, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->path[0] && err == KMS_ERR_MALFORMED)
        snprintf(e->why, sizeof(e->why), "field \"%s\": %s", e->path, msg);
    else
        snprintf(e->why, sizeof(e->why), "%s", msg);
    e->err = err;
    return err;
}

#define ENC_BAD(e, ...) enc_fail((e), KMS_ERR_MALFORMED, __VA_ARGS__)

static size_t path_push(struct enc *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Append a segment to the path; returns the length to restore. */
static size_t path_push(struct enc *e, const char *fmt, ...)
{
    size_t n = strlen(e->path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->path + n, sizeof(e->path) - n, fmt, ap);
    va_end(ap);
    return n;
}

static void path_pop(struct enc *e, size_t n)
{
    e->path[n] = '\0';
}

static kms_err put(struct enc *e, struct kms_buf *b, const void *src, size_t n)
{
    kms_err rc = kms_buf_append(b, src, n);
    if (rc == KMS_ERR_TOO_LARGE)
        return enc_fail(e, rc, "request body larger than %zu bytes", b->max);
    if (rc != KMS_OK)
        return enc_fail(e, KMS_ERR_NOMEM, "out of memory");
    return KMS_OK;
}

static kms_err put_varint(struct enc *e, struct kms_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    return put(e, b, tmp, n);
}

static kms_err put_fixed(struct enc *e, struct kms_buf *b, uint64_t v, size_t n)
{
    uint8_t tmp[8];
    for (size_t i = 0; i < n; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    return put(e, b, tmp, n);
}

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static kms_err put_tag(struct enc *e, struct kms_buf *b, uint32_t id, unsigned wt)
{
    return put_varint(e, b, ((uint64_t)id << 3) | wt);
}

static kms_err put_len(struct enc *e, struct kms_buf *b, uint32_t id, const void *p, size_t n)
{
    KMS_GUARD(put_tag(e, b, id, WT_LEN));
    KMS_GUARD(put_varint(e, b, n));
    return put(e, b, p, n);
}

/* protoc's json_name: underscores dropped, the letter after one upper-cased. */
static bool json_name_eq(const char *proto_name, const char *key, size_t klen)
{
    size_t j = 0;
    bool up = false;
    for (const char *c = proto_name; *c; c++) {
        if (*c == '_') {
            up = true;
            continue;
        }
        char want = up && *c >= 'a' && *c <= 'z' ? (char)(*c - 'a' + 'A') : *c;
        up = false;
        if (j >= klen || key[j] != want)
            return false;
        j++;
    }
    return j == klen;
}

static bool name_eq(const char *name, const char *key, size_t klen)
{
    return strlen(name) == klen && memcmp(name, key, klen) == 0;
}

/* protoc turns map<K, V> name = N into `repeated NameEntry name = N` whose
 * type has key = 1 and value = 2; protobuf-c keeps no map_entry option, so
 * the shape is recognised by that construction. */
static bool is_map(const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    if (d->n_fields != 2 || d->fields[0].id != 1 || d->fields[1].id != 2 ||
        strcmp(d->fields[0].name, "key") != 0 || strcmp(d->fields[1].name, "value") != 0)
        return false;
    /* "encryption_context" -> "EncryptionContextEntry" */
    char want[160];
    size_t j = 0;
    bool up = true;
    for (const char *c = f->name; *c && j + 6 < sizeof(want); c++) {
        if (*c == '_') {
            up = true;
            continue;
        }
        want[j++] = up && *c >= 'a' && *c <= 'z' ? (char)(*c - 'a' + 'A') : *c;
        up = false;
    }
    memcpy(want + j, "Entry", 6);
    return strcmp(d->short_name, want) == 0;
}

/* A decimal integer in a string: optional '-', digits, nothing else. */
static bool parse_dec(const char *s, size_t n, bool *neg, uint64_t *mag)
{
    size_t i = 0;
    *neg = false;
    *mag = 0;
    if (n > 0 && s[0] == '-') {
        *neg = true;
        i = 1;
    }
    if (i == n || n - i > 20)
        return false;
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(s[i] - '0'), &v))
            return false;
    }
    *mag = v;
    return true;
}

/* An integer in [min, max] (signed) from a JSON number or decimal string. */
static kms_err get_int(struct enc *e, const json_t *v, int64_t min, int64_t max, int64_t *out)
{
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < min || x > max)
            return ENC_BAD(e, "integer out of range");
        *out = (int64_t)x;
        return KMS_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || d != floor(d))
            return ENC_BAD(e, "not an integer");
        if (d < -9007199254740992.0 || d > 9007199254740992.0 || d < (double)min ||
            d > (double)max)
            return ENC_BAD(e, "integer out of range (or above 2^53 as a number: use a string)");
        *out = (int64_t)d;
        return KMS_OK;
    }
    if (json_is_string(v)) {
        bool neg;
        uint64_t mag;
        if (!parse_dec(json_string_value(v), json_string_length(v), &neg, &mag))
            return ENC_BAD(e, "not a decimal integer");
        int64_t x;
        if (neg) {
            if (mag > (uint64_t)INT64_MAX + 1)
                return ENC_BAD(e, "integer out of range");
            x = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
        } else {
            if (mag > (uint64_t)INT64_MAX)
                return ENC_BAD(e, "integer out of range");
            x = (int64_t)mag;
        }
        if (x < min || x > max)
            return ENC_BAD(e, "integer out of range");
        *out = x;
        return KMS_OK;
    }
    return ENC_BAD(e, "expected a number or a decimal string");
}

static kms_err get_uint(struct enc *e, const json_t *v, uint64_t max, uint64_t *out)
{
    if (json_is_string(v)) {
        bool neg;
        uint64_t mag;
        if (!parse_dec(json_string_value(v), json_string_length(v), &neg, &mag))
            return ENC_BAD(e, "not a decimal integer");
        if ((neg && mag != 0) || mag > max)
            return ENC_BAD(e, "integer out of range");
        *out = mag;
        return KMS_OK;
    }
    int64_t x;
    KMS_GUARD(get_int(e, v, 0, INT64_MAX, &x));
    if ((uint64_t)x > max)
        return ENC_BAD(e, "integer out of range");
    *out = (uint64_t)x;
    return KMS_OK;
}

static int b64_value(unsigned char c, bool *std, bool *url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '/') {
        *std = true;
        return c == '+' ? 62 : 63;
    }
    if (c == '-' || c == '_') {
        *url = true;
        return c == '-' ? 62 : 63;
    }
    return -1;
}

/* Standard or URL-safe base64 (not both in one value), padding optional
 * but complete when present. Decodes into out (room for 3 * n / 4 + 3). */
static bool b64_decode(const char *s, size_t n, uint8_t *out, size_t *out_len)
{
    size_t pad = 0;
    while (n > 0 && s[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (pad && (n + pad) % 4 != 0)
        return false;
    if (n % 4 == 1)
        return false;
    bool std = false, url = false;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i], &std, &url);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *out_len = o;
    OPENSSL_cleanse(&acc, sizeof(acc));
    return !(std && url);
}

static kms_err enc_message(struct enc *e, const ProtobufCMessageDescriptor *d, const json_t *obj,
                           struct kms_buf *out, unsigned depth);

/* One value of field f (an element when f is repeated). keep_default: emit
 * it even when it is the type's default (array elements, map entries). */
static kms_err enc_value(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                         struct kms_buf *out, unsigned depth, bool keep_default)
{
    int64_t s;
    uint64_t u;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        KMS_GUARD(get_int(e, v, INT32_MIN, INT32_MAX, &s));
        if (s == 0 && !keep_default)
            return KMS_OK;
        if (f->type == PROTOBUF_C_TYPE_SFIXED32) {
            KMS_GUARD(put_tag(e, out, f->id, WT_I32));
            return put_fixed(e, out, (uint32_t)(int32_t)s, 4);
        }
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        if (f->type == PROTOBUF_C_TYPE_SINT32)
            return put_varint(e, out, ((uint32_t)s << 1) ^ (uint32_t)((int32_t)s >> 31));
        return put_varint(e, out, (uint64_t)s); /* negative: sign-extended, 10 bytes */
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        KMS_GUARD(get_int(e, v, INT64_MIN, INT64_MAX, &s));
        if (s == 0 && !keep_default)
            return KMS_OK;
        if (f->type == PROTOBUF_C_TYPE_SFIXED64) {
            KMS_GUARD(put_tag(e, out, f->id, WT_I64));
            return put_fixed(e, out, (uint64_t)s, 8);
        }
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        if (f->type == PROTOBUF_C_TYPE_SINT64)
            return put_varint(e, out, ((uint64_t)s << 1) ^ (uint64_t)(s >> 63));
        return put_varint(e, out, (uint64_t)s);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        KMS_GUARD(get_uint(e, v, UINT32_MAX, &u));
        if (u == 0 && !keep_default)
            return KMS_OK;
        if (f->type == PROTOBUF_C_TYPE_FIXED32) {
            KMS_GUARD(put_tag(e, out, f->id, WT_I32));
            return put_fixed(e, out, u, 4);
        }
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        return put_varint(e, out, u);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        KMS_GUARD(get_uint(e, v, UINT64_MAX, &u));
        if (u == 0 && !keep_default)
            return KMS_OK;
        if (f->type == PROTOBUF_C_TYPE_FIXED64) {
            KMS_GUARD(put_tag(e, out, f->id, WT_I64));
            return put_fixed(e, out, u, 8);
        }
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        return put_varint(e, out, u);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v))
            return ENC_BAD(e, "expected true or false");
        if (json_is_false(v) && !keep_default)
            return KMS_OK;
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        return put_varint(e, out, json_is_true(v) ? 1 : 0);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (json_is_string(v)) {
            const char *name = json_string_value(v);
            const ProtobufCEnumValue *ev = NULL;
            if (strlen(name) == json_string_length(v))
                ev = protobuf_c_enum_descriptor_get_value_by_name(ed, name);
            if (ev == NULL)
                return ENC_BAD(e, "not a value name of %s", ed->short_name);
            s = ev->value;
        } else if (json_is_number(v)) {
            KMS_GUARD(get_int(e, v, INT32_MIN, INT32_MAX, &s));
        } else {
            return ENC_BAD(e, "expected a %s value name or number", ed->short_name);
        }
        if (s == 0 && !keep_default)
            return KMS_OK;
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        return put_varint(e, out, (uint64_t)s);
    }
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(v))
            return ENC_BAD(e, "expected a string");
        /* The length, not strlen: a "\u0000" reaches the decoder, which
         * decides about it exactly as for a protobuf body. */
        if (json_string_length(v) == 0 && !keep_default)
            return KMS_OK;
        return put_len(e, out, f->id, json_string_value(v), json_string_length(v));
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(v))
            return ENC_BAD(e, "expected a base64 string");
        size_t n = json_string_length(v);
        if (n == 0 && !keep_default)
            return KMS_OK;
        uint8_t *tmp = malloc(n / 4 * 3 + 3);
        if (tmp == NULL)
            return enc_fail(e, KMS_ERR_NOMEM, "out of memory");
        size_t m = 0;
        kms_err rc = KMS_OK;
        if (!b64_decode(json_string_value(v), n, tmp, &m))
            rc = ENC_BAD(e, "not base64");
        else
            rc = put_len(e, out, f->id, tmp, m);
        OPENSSL_cleanse(tmp, n / 4 * 3 + 3);
        free(tmp);
        return rc;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (depth + 1 > KMS_PBUF_MAX_DEPTH)
            return ENC_BAD(e, "messages nested deeper than %d", KMS_PBUF_MAX_DEPTH);
        struct kms_buf sub;
        kms_buf_init(&sub, out->max);
        kms_err rc = enc_message(e, f->descriptor, v, &sub, depth + 1);
        if (rc == KMS_OK)
            rc = put_len(e, out, f->id, sub.data, sub.len);
        kms_buf_wipe(&sub);
        return rc;
    }
    default:
        return enc_fail(e, KMS_ERR_INTERNAL, "field type %d has no JSON mapping here",
                        (int)f->type);
    }
}

static kms_err enc_map(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                       struct kms_buf *out, unsigned depth)
{
    if (!json_is_object(v))
        return ENC_BAD(e, "expected an object (a map)");
    if (json_object_size(v) > KMS_PBUF_MAX_REPEATED)
        return ENC_BAD(e, "more than %d entries", KMS_PBUF_MAX_REPEATED);
    if (depth + 1 > KMS_PBUF_MAX_DEPTH)
        return ENC_BAD(e, "messages nested deeper than %d", KMS_PBUF_MAX_DEPTH);
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach((json_t *)v, key, klen, val)
    {
        if (json_is_null(val))
            return ENC_BAD(e, "a map value is null");
        json_t *k = json_stringn(key, klen);
        if (k == NULL)
            return enc_fail(e, KMS_ERR_NOMEM, "out of memory");
        if (e->nul_keys) /* the NULs the client sent, back for the decoder to judge */
            for (char *c = (char *)json_string_value(k); c < json_string_value(k) + klen; c++)
                if (*c == KEY_NUL)
                    *c = '\0';
        struct kms_buf entry;
        kms_buf_init(&entry, out->max);
        kms_err rc = enc_value(e, &ed->fields[0], k, &entry, depth + 1, true);
        if (rc == KMS_OK)
            rc = enc_value(e, &ed->fields[1], val, &entry, depth + 1, true);
        if (rc == KMS_OK)
            rc = put_len(e, out, f->id, entry.data, entry.len);
        kms_buf_wipe(&entry);
        json_decref(k);
        if (rc != KMS_OK)
            return rc;
    }
    return KMS_OK;
}

static kms_err enc_field(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                         struct kms_buf *out, unsigned depth)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        if (is_map(f))
            return enc_map(e, f, v, out, depth);
        if (!json_is_array(v))
            return ENC_BAD(e, "expected an array");
        if (json_array_size(v) > KMS_PBUF_MAX_REPEATED)
            return ENC_BAD(e, "more than %d elements", KMS_PBUF_MAX_REPEATED);
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *el = json_array_get(v, i);
            size_t mark = path_push(e, "[%zu]", i);
            kms_err rc = json_is_null(el) ? ENC_BAD(e, "null in an array")
                                          : enc_value(e, f, el, out, depth, true);
            if (rc != KMS_OK)
                return rc;
            path_pop(e, mark);
        }
        return KMS_OK;
    }
    return enc_value(e, f, v, out, depth, false);
}

/* A client-chosen key, shown printable and short in the refusal. */
static void safe_key(const char *key, size_t klen, char *out, size_t out_len)
{
    size_t j = 0;
    for (size_t i = 0; i < klen && j + 4 < out_len; i++)
        out[j++] = key[i] > 0x20 && key[i] < 0x7f && key[i] != '"' ? key[i] : '?';
    if (klen > out_len - 4 && j + 3 < out_len) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
}

static kms_err enc_message(struct enc *e, const ProtobufCMessageDescriptor *d, const json_t *obj,
                           struct kms_buf *out, unsigned depth)
{
    if (!json_is_object(obj))
        return ENC_BAD(e, "expected an object (a %s message)", d->short_name);
    if (d->n_fields > PJSON_MAX_FIELDS)
        return enc_fail(e, KMS_ERR_INTERNAL, "%s has too many fields", d->short_name);
    const char *seen_as[PJSON_MAX_FIELDS] = {0};
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach((json_t *)obj, key, klen, v)
    {
        const ProtobufCFieldDescriptor *f = NULL;
        size_t i;
        for (i = 0; i < d->n_fields && f == NULL; i++)
            if (name_eq(d->fields[i].name, key, klen) || json_name_eq(d->fields[i].name, key, klen))
                f = &d->fields[i];
        if (f == NULL) {
            char shown[48];
            safe_key(key, klen, shown, sizeof(shown));
            size_t mark = path_push(e, "%s%s", e->path[0] ? "." : "", shown);
            kms_err rc = ENC_BAD(e, "no such field in %s", d->short_name);
            path_pop(e, mark);
            return rc;
        }
        i--;
        size_t mark = path_push(e, "%s%s", e->path[0] ? "." : "", f->name);
        if (seen_as[i] != NULL)
            return ENC_BAD(e, "given twice (\"%s\" and \"%s\")", seen_as[i], key);
        seen_as[i] = key;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
            (f->label != PROTOBUF_C_LABEL_NONE && f->label != PROTOBUF_C_LABEL_REPEATED))
            return enc_fail(e, KMS_ERR_INTERNAL,
                            "oneof and proto2 fields have no JSON mapping here");
        if (!json_is_null(v)) /* null: the field's default, i.e. absent */
            KMS_GUARD(enc_field(e, f, v, out, depth));
        path_pop(e, mark);
    }
    return KMS_OK;
}

/* Depth and token count of the text before jansson builds a tree: what it
 * allocates is then bounded whatever the body. Strings are skipped (an
 * escaped quote does not end one); whether the text is JSON at all is
 * jansson's to say. */
static kms_err prescan(struct enc *e, const uint8_t *p, size_t n)
{
    size_t depth = 0, tokens = 0;
    for (size_t i = 0; i < n; i++) {
        switch (p[i]) {
        case '"':
            for (i++; i < n && p[i] != '"'; i++)
                if (p[i] == '\\')
                    i++;
            tokens++;
            break;
        case '{':
        case '[':
            if (++depth > KMS_PJSON_MAX_DEPTH)
                return ENC_BAD(e, "JSON nested deeper than %d", KMS_PJSON_MAX_DEPTH);
            tokens++;
            break;
        case '}':
        case ']':
            if (depth > 0)
                depth--;
            break;
        case ',':
        case ':':
            tokens++;
            break;
        default:
            break;
        }
        if (tokens > KMS_PJSON_MAX_TOKENS)
            return ENC_BAD(e, "more than %d JSON values", KMS_PJSON_MAX_TOKENS);
    }
    return KMS_OK;
}

/* jansson 2.14 refuses a NUL in an object key ("NUL byte in object key not
 * supported") even with JSON_ALLOW_NUL, which covers values only. So that a
 * "\u0000" in a map key reaches the decoder like one in a map value (and is
 * refused there as invalid_argument naming the map, the one rule for every
 * encoding), each "\u0000" escape inside an object key is rewritten as
 * "\u0001" (KEY_NUL) in a copy of the text, and enc_map turns KEY_NUL in a
 * map key back into NUL. A body that holds such a key is refused whatever
 * else it holds (a field name with a NUL is no field either), so the only
 * side effect, a genuine U+0001 in another key of the same body read as
 * NUL, changes no outcome. *out_copy stays NULL when no key holds one. */
static kms_err unnul_keys(struct enc *e, const uint8_t *p, size_t n, uint8_t **out_copy)
{
    *out_copy = NULL;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '"')
            continue;
        bool has_nul = false;
        size_t start = i;
        for (i++; i < n && p[i] != '"'; i++)
            if (p[i] == '\\') {
                if (i + 5 < n && memcmp(p + i + 1, "u0000", 5) == 0)
                    has_nul = true;
                i++;
            }
        if (!has_nul)
            continue;
        size_t j = i + 1;
        while (j < n && (p[j] == ' ' || p[j] == '\t' || p[j] == '\n' || p[j] == '\r'))
            j++;
        if (j >= n || p[j] != ':')
            continue; /* a value: JSON_ALLOW_NUL carries it */
        if (*out_copy == NULL) {
            *out_copy = malloc(n);
            if (*out_copy == NULL)
                return enc_fail(e, KMS_ERR_NOMEM, "out of memory");
            memcpy(*out_copy, p, n);
        }
        for (size_t k = start + 1; k < i; k++)
            if (p[k] == '\\') {
                if (k + 5 < i && memcmp(p + k + 1, "u0000", 5) == 0)
                    (*out_copy)[k + 5] = '1';
                k++;
            }
        e->nul_keys = true;
    }
    return KMS_OK;
}

/* The parsed tree held the request's strings (plaintext in base64, say):
 * wipe them before jansson frees them. */
static void wipe_tree(json_t *v)
{
    if (json_is_string(v)) {
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            wipe_tree(json_array_get(v, i));
    } else if (json_is_object(v)) {
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val)
            wipe_tree(val);
    }
}

kms_err kms_pjson_to_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *json,
                          size_t len, size_t max_wire, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    struct enc e = {.err = KMS_OK};
    struct kms_buf w;
    kms_buf_init(&w, max_wire);
    json_t *root = NULL;
    uint8_t *copy = NULL;
    kms_err rc = prescan(&e, json, len);
    if (rc == KMS_OK)
        rc = unnul_keys(&e, json, len, &copy);
    if (rc == KMS_OK) {
        json_error_t jerr;
        root = json_loadb(copy ? (const char *)copy : (const char *)json, len,
                          JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        /* jansson's own text quotes the input near the error: it could be a
         * secret and the detail is logged, so only the position is told. */
        if (root == NULL && json_error_code(&jerr) == json_error_duplicate_key)
            rc = ENC_BAD(&e, "an object key appears twice (line %d, column %d)", jerr.line,
                         jerr.column);
        else if (root == NULL)
            rc = ENC_BAD(&e, "not valid JSON (line %d, column %d)", jerr.line, jerr.column);
        else
            rc = enc_message(&e, desc, root, &w, 1);
    }
    /* An empty message is zero bytes, still a buffer to hand over. */
    if (rc == KMS_OK && (*out = kms_buf_take(&w, out_len)) == NULL)
        rc = enc_fail(&e, KMS_ERR_NOMEM, "out of memory");
    if (root) {
        wipe_tree(root);
        json_decref(root);
    }
    if (copy) { /* the body's text: plaintext in base64, say */
        OPENSSL_cleanse(copy, len);
        free(copy);
    }
    if (rc != KMS_OK) {
        kms_buf_wipe(&w);
        if (rc == KMS_ERR_MALFORMED)
            return kms_err_set(rc, "the body is not a valid JSON %s message: %s", desc->short_name,
                               e.why);
        return kms_err_set(rc, "%s", e.why);
    }
    return KMS_OK;
}

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

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 4;
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
    bool wide = elem_size(kf->type) == 8;
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
        } else if (memcmp(kj, kl, elem_size(kf->type)) == 0) {
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
        bool map = is_map(f);
        out_put(o, map ? "{" : "[", 1);
        bool first = true;
        for (size_t j = 0; j < n; j++) {
            const uint8_t *el = arr + j * elem_size(f->type);
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
