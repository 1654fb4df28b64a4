/*
 * kms_pjson.c - proto3 JSON -> protobuf wire, driven by descriptors
 * (kms_pjson.h; the other direction is kms_pjson_render.c).
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
#include "kms_pjson_lex.h"

/* Per-message "seen" flags live on the stack; kms_pbuf has the same bound. */
#define PJSON_MAX_FIELDS 64

/* ---- JSON -> wire ------------------------------------------------------------- */

struct enc {
    bool nul_keys;  /* some object key held "\u0000", parsed as KMS_PJSON_KEY_NUL */
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
        if (!kms_pjson_parse_dec(json_string_value(v), json_string_length(v), &neg, &mag))
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
        if (!kms_pjson_parse_dec(json_string_value(v), json_string_length(v), &neg, &mag))
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

static kms_err enc_message(struct enc *e, const ProtobufCMessageDescriptor *d, const json_t *obj,
                           struct kms_buf *out, unsigned depth);

/* The eight integer types: decimal strings or numbers in, varint, zigzag
 * or fixed-width out. */
static kms_err enc_integer(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                           struct kms_buf *out, bool keep_default)
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
    default:
        return enc_fail(e, KMS_ERR_INTERNAL, "field type %d is not an integer", (int)f->type);
    }
}

/* An enum by value name, or by number. */
static kms_err enc_enum(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                        struct kms_buf *out, bool keep_default)
{
    int64_t s;
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

/* Bytes from standard or URL-safe base64; the decoded copy is wiped. */
static kms_err enc_bytes(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                         struct kms_buf *out, bool keep_default)
{
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
    if (!kms_pjson_b64_decode(json_string_value(v), n, tmp, &m))
        rc = ENC_BAD(e, "not base64");
    else
        rc = put_len(e, out, f->id, tmp, m);
    OPENSSL_cleanse(tmp, n / 4 * 3 + 3);
    free(tmp);
    return rc;
}

/* A nested message, encoded apart for its length prefix, the copy wiped. */
static kms_err enc_submessage(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                              struct kms_buf *out, unsigned depth)
{
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

/* One value of field f (an element when f is repeated). keep_default: emit
 * it even when it is the type's default (array elements, map entries). */
static kms_err enc_value(struct enc *e, const ProtobufCFieldDescriptor *f, const json_t *v,
                         struct kms_buf *out, unsigned depth, bool keep_default)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return enc_integer(e, f, v, out, keep_default);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v))
            return ENC_BAD(e, "expected true or false");
        if (json_is_false(v) && !keep_default)
            return KMS_OK;
        KMS_GUARD(put_tag(e, out, f->id, WT_VARINT));
        return put_varint(e, out, json_is_true(v) ? 1 : 0);
    case PROTOBUF_C_TYPE_ENUM:
        return enc_enum(e, f, v, out, keep_default);
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(v))
            return ENC_BAD(e, "expected a string");
        /* The length, not strlen: a "\u0000" reaches the decoder, which
         * decides about it exactly as for a protobuf body. */
        if (json_string_length(v) == 0 && !keep_default)
            return KMS_OK;
        return put_len(e, out, f->id, json_string_value(v), json_string_length(v));
    case PROTOBUF_C_TYPE_BYTES:
        return enc_bytes(e, f, v, out, keep_default);
    case PROTOBUF_C_TYPE_MESSAGE:
        return enc_submessage(e, f, v, out, depth);
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
                if (*c == KMS_PJSON_KEY_NUL)
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
        if (kms_pjson_is_map(f))
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
            if (kms_pjson_name_is(d->fields[i].name, key, klen))
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
    kms_err rc = KMS_OK;
    switch (kms_pjson_prescan(json, len)) {
    case KMS_PJSON_SCAN_TOO_DEEP:
        rc = ENC_BAD(&e, "JSON nested deeper than %d", KMS_PJSON_MAX_DEPTH);
        break;
    case KMS_PJSON_SCAN_TOO_MANY:
        rc = ENC_BAD(&e, "more than %d JSON values", KMS_PJSON_MAX_TOKENS);
        break;
    case KMS_PJSON_SCAN_OK:
        if (kms_pjson_unnul_keys(json, len, &copy) != KMS_OK)
            rc = enc_fail(&e, KMS_ERR_NOMEM, "out of memory");
        e.nul_keys = copy != NULL;
        break;
    }
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
