/*
 * kms_pbuf.c - a wire walk before protobuf-c, and a counting allocator.
 */
#include "kms_pbuf.h"
#include "kms_utf8.h" /* strings: the one UTF-8 rule */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* Counts per field of one message instance live on the stack; no message
 * of proto/ comes close to this many fields. */
#define PBUF_MAX_FIELDS 64

static _Thread_local char last_refusal[256];
/* KMS_ERR_MALFORMED, or KMS_ERR_INVALID_ARGUMENT for a string field that
 * is well-formed protobuf but not a string kmsd can carry. */
static _Thread_local kms_err last_code;

/* Top-level string fields a handler judges itself (kms_pbuf.h): the link
 * token, whose every refusal must look alike (docs/link-tokens.md). */
static const struct {
    const char *message, *field;
} opaque_fields[] = {
    {"custos.v1.RedeemLinkTokenRequest", "token"},
};

/* The opaque field of the last walk that was not a string kmsd can carry,
 * and the marker its value becomes. */
static _Thread_local const ProtobufCFieldDescriptor *flaw_field;
static _Thread_local const char *flaw_marker;

static bool is_opaque(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f)
{
    for (size_t i = 0; i < sizeof(opaque_fields) / sizeof(opaque_fields[0]); i++)
        if (strcmp(d->name, opaque_fields[i].message) == 0 &&
            strcmp(f->name, opaque_fields[i].field) == 0)
            return true;
    return false;
}

const char *kms_pbuf_last_refusal(void)
{
    return last_refusal;
}

kms_err kms_pbuf_refused(const char *what)
{
    if (last_code == KMS_ERR_INVALID_ARGUMENT)
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s", last_refusal + 2); /* past ": " */
    return kms_err_set(KMS_ERR_MALFORMED, "the body is not a valid %s message%s", what,
                       last_refusal);
}

struct cursor {
    const uint8_t *p, *end;
};

static bool read_varint(struct cursor *c, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64 && c->p < c->end; shift += 7) {
        uint8_t b = *c->p++;
        /* The 10th byte holds bit 63 only: more would be a value past 64
         * bits, which protobuf-c (and a shift) would silently drop. */
        if (shift == 63 && (b & 0x7e) != 0)
            return false;
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false; /* truncated, longer than 10 bytes, or past 64 bits */
}

static bool skip(struct cursor *c, uint64_t n)
{
    if (n > (uint64_t)(c->end - c->p))
        return false;
    c->p += n;
    return true;
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
                                                  uint64_t id, size_t *out_index)
{
    for (size_t i = 0; i < d->n_fields; i++)
        if (d->fields[i].id == id) {
            *out_index = i;
            return &d->fields[i];
        }
    return NULL;
}

/* Elements in a packed run of len bytes of a scalar of this type. */
static uint64_t packed_count(ProtobufCType t, const uint8_t *p, size_t len)
{
    switch (t) {
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return len / 4;
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return len / 8;
    default: {
        uint64_t n = 0;
        for (size_t i = 0; i < len; i++)
            n += (p[i] & 0x80) == 0;
        return n;
    }
    }
}

static kms_err refuse(const char *what, const ProtobufCMessageDescriptor *d)
{
    last_code = KMS_ERR_MALFORMED;
    snprintf(last_refusal, sizeof(last_refusal), ": %s (in %s)", what, d->short_name);
    return kms_err_set(KMS_ERR_MALFORMED, "the body is not a valid %s message%s", d->short_name,
                       last_refusal);
}

/* protobuf-c's map<K, V> is a repeated message "<Name>Entry" of key = 1,
 * value = 2; its fields are named after the map, not "key"/"value". */
static bool is_map_entry(const ProtobufCMessageDescriptor *d)
{
    size_t n = strlen(d->short_name);
    return n > 5 && strcmp(d->short_name + n - 5, "Entry") == 0 && d->n_fields == 2 &&
           strcmp(d->fields[0].name, "key") == 0 && strcmp(d->fields[1].name, "value") == 0;
}

/* The fields from the request down to a string field: trail[0..n-1]. */
struct trail {
    const ProtobufCFieldDescriptor *f[KMS_PBUF_MAX_DEPTH];
    unsigned n;
};

/* "fields.name" quoted, or "encryption_context" (a map key) for a map
 * entry's key. Names only: the value itself is never echoed. */
static void trail_name(const struct trail *t, char *out, size_t outlen)
{
    size_t used = 1;
    const char *suffix = "";
    snprintf(out, outlen, "\"");
    for (unsigned i = 0; i < t->n; i++) {
        const ProtobufCFieldDescriptor *f = t->f[i];
        if (i > 0 && t->f[i - 1]->type == PROTOBUF_C_TYPE_MESSAGE &&
            is_map_entry(t->f[i - 1]->descriptor)) {
            suffix = f->id == 1 ? " (a map key)" : " (a map value)";
            continue;
        }
        int w = snprintf(out + used, outlen - used, "%s%s", used > 1 ? "." : "", f->name);
        if (w < 0 || (size_t)w >= outlen - used)
            break;
        used += (size_t)w;
    }
    snprintf(out + used, outlen - used, "\"%s", suffix);
}

/* Every string field of every request, nested and map entries included,
 * is refused here unless it is UTF-8 without NUL: protobuf-c hands
 * handlers a char *, which would end at the first NUL and so carry
 * another string than the caller sent ("alice\0mallory" as "alice"), and
 * proto3 requires strings to be UTF-8. */
/* A well-formed field whose value kmsd refuses: invalid_argument naming the
 * field at the end of t and why, never the value. */
static kms_err refuse_field(const struct trail *t, const char *why)
{
    char name[112];
    trail_name(t, name, sizeof(name));
    last_code = KMS_ERR_INVALID_ARGUMENT;
    snprintf(last_refusal, sizeof(last_refusal), ": field %s %s", name, why);
    return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s", last_refusal + 2);
}

static kms_err check_string(const struct trail *t, const uint8_t *p, size_t n)
{
    if (memchr(p, 0, n) != NULL)
        return refuse_field(t, "contains a NUL byte");
    if (!kms_utf8_valid(p, n))
        return refuse_field(t, "is not valid UTF-8");
    return KMS_OK;
}

/* Every varint field of a 32-bit type of every request (singular,
 * repeated, packed, nested, map values) is refused here unless the whole
 * varint as sent is a value of the field's type: protobuf-c keeps only the
 * low 32 bits, so a uint32 version sent as 2^32+1 would otherwise be acted
 * on (and audited) as version 1, and an enum origin 2^40 as 0.
 *   - uint32, and sint32 (zigzag, so its wire value is the 32-bit
 *     pattern): at most 0xFFFFFFFF.
 *   - int32 and enums: protobuf writes negatives sign-extended to 64 bits
 *     (10 bytes), so exactly INT32_MIN..INT32_MAX read as an int64.
 *   - enums also only a value the enum defines: proto3 decoders keep
 *     unknown values, protobuf-c hands them to handlers as they are, and a
 *     handler that tests only for the values it acts on would read an
 *     unknown one as "not X", i.e. as a default (origin 99 made an HSM
 *     key). UNSPECIFIED (0) is defined and passes; what it means is each
 *     handler's rule.
 * 64-bit types fit any varint read_varint() accepts; fixed32/sfixed32
 * travel as exactly 4 bytes and bool as any varint (non-zero is true). */
static bool is_checked_varint(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_ENUM || t == PROTOBUF_C_TYPE_INT32 ||
           t == PROTOBUF_C_TYPE_UINT32 || t == PROTOBUF_C_TYPE_SINT32;
}

static bool varint_fits(const ProtobufCFieldDescriptor *f, uint64_t v)
{
    int64_t s = (int64_t)v;
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_SINT32:
        return v <= UINT32_MAX;
    case PROTOBUF_C_TYPE_INT32:
        return s >= INT32_MIN && s <= INT32_MAX;
    case PROTOBUF_C_TYPE_ENUM:
        return s >= INT32_MIN && s <= INT32_MAX &&
               protobuf_c_enum_descriptor_get_value(f->descriptor, (int)s) != NULL;
    default:
        return true;
    }
}

static kms_err check_varint(const struct trail *t, const ProtobufCFieldDescriptor *f,
                            unsigned wire, uint64_t v, const uint8_t *packed, size_t len,
                            const ProtobufCMessageDescriptor *d)
{
    char why[96];
    if (f->type == PROTOBUF_C_TYPE_ENUM)
        snprintf(why, sizeof(why), "is not a defined %s value",
                 ((const ProtobufCEnumDescriptor *)f->descriptor)->short_name);
    else
        snprintf(why, sizeof(why), "is out of range for %s",
                 f->type == PROTOBUF_C_TYPE_UINT32  ? "a uint32"
                 : f->type == PROTOBUF_C_TYPE_INT32 ? "an int32"
                                                    : "a sint32");
    if (wire == 0)
        return varint_fits(f, v) ? KMS_OK : refuse_field(t, why);
    /* A packed run (walk() sends only repeated fields here). */
    struct cursor c = {packed, packed + len};
    while (c.p < c.end) {
        uint64_t e;
        if (!read_varint(&c, &e))
            return refuse("truncated varint in a packed field", d);
        if (!varint_fits(f, e))
            return refuse_field(t, why);
    }
    return KMS_OK;
}

static kms_err walk(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                    unsigned depth, struct trail *t)
{
    uint32_t counts[PBUF_MAX_FIELDS] = {0};
    uint32_t unknown = 0;
    if (d->n_fields > PBUF_MAX_FIELDS)
        return refuse("message type has more fields than the decoder bounds", d);
    struct cursor c = {data, data + len};
    while (c.p < c.end) {
        uint64_t tag, n = 0;
        if (!read_varint(&c, &tag))
            return refuse("truncated field tag", d);
        unsigned wire = (unsigned)(tag & 7);
        uint64_t id = tag >> 3;
        if (id == 0 || id > 0x1fffffff)
            return refuse("invalid field number", d);
        size_t fi = 0;
        const ProtobufCFieldDescriptor *f = find_field(d, id, &fi);
        const uint8_t *payload = NULL;
        switch (wire) {
        case 0:
            if (!read_varint(&c, &n))
                return refuse("truncated varint", d);
            break;
        case 1:
            if (!skip(&c, 8))
                return refuse("truncated 64-bit field", d);
            break;
        case 5:
            if (!skip(&c, 4))
                return refuse("truncated 32-bit field", d);
            break;
        case 2:
            payload = NULL;
            if (!read_varint(&c, &n))
                return refuse("truncated length", d);
            payload = c.p;
            if (!skip(&c, n))
                return refuse("length past the end of the body", d);
            break;
        default:
            /* Groups (3, 4) are proto2 legacy protobuf-c does not decode;
             * 6 and 7 do not exist. */
            return refuse("unsupported wire type", d);
        }
        if (f == NULL) {
            if (++unknown > KMS_PBUF_MAX_REPEATED)
                return refuse("too many unknown fields", d);
            continue;
        }
        uint64_t add = 1;
        if (wire == 2 && f->type == PROTOBUF_C_TYPE_MESSAGE) {
            if (depth + 1 > KMS_PBUF_MAX_DEPTH)
                return refuse("messages nested too deep", d);
            t->f[depth - 1] = f;
            t->n = depth;
            KMS_GUARD(walk(f->descriptor, payload, (size_t)n, depth + 1, t));
        } else if (wire == 2 && f->type == PROTOBUF_C_TYPE_STRING && depth == 1 &&
                   is_opaque(d, f)) {
            /* Not refused: the handler gets a marker instead (kms_pbuf_unpack). */
            if (memchr(payload, 0, (size_t)n) != NULL)
                flaw_marker = KMS_PBUF_FLAW_NUL;
            else if (!kms_utf8_valid(payload, (size_t)n))
                flaw_marker = KMS_PBUF_FLAW_UTF8;
            else
                flaw_marker = NULL; /* the last occurrence is the one decoded */
            flaw_field = flaw_marker != NULL ? f : NULL;
        } else if (wire == 2 && f->type == PROTOBUF_C_TYPE_STRING) {
            t->f[depth - 1] = f;
            t->n = depth;
            KMS_GUARD(check_string(t, payload, (size_t)n));
        } else if (is_checked_varint(f->type) &&
                   (wire == 0 || (wire == 2 && f->label == PROTOBUF_C_LABEL_REPEATED))) {
            t->f[depth - 1] = f;
            t->n = depth;
            KMS_GUARD(check_varint(t, f, wire, n, payload, wire == 2 ? (size_t)n : 0, d));
            if (wire == 2)
                add = packed_count(f->type, payload, (size_t)n);
        } else if (wire == 2 && f->label == PROTOBUF_C_LABEL_REPEATED &&
                   f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES) {
            add = packed_count(f->type, payload, (size_t)n);
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (add > KMS_PBUF_MAX_REPEATED - counts[fi])
                return refuse("too many elements in a repeated field", d);
            counts[fi] += (uint32_t)add;
        }
    }
    return KMS_OK;
}

kms_err kms_pbuf_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    last_refusal[0] = '\0';
    last_code = KMS_OK;
    flaw_field = NULL;
    flaw_marker = NULL;
    if (len > 0 && data == NULL)
        return refuse("no data", desc);
    struct trail t = {.n = 0};
    return walk(desc, data, len, 1, &t);
}

struct budget {
    size_t left;
    bool over;
};

static void *budget_alloc(void *cls, size_t size)
{
    struct budget *b = cls;
    /* Refuse before malloc: the point is that the process never holds it. */
    if (size > b->left) {
        b->over = true;
        return NULL;
    }
    b->left -= size;
    return malloc(size);
}

static void budget_free(void *cls, void *p)
{
    (void)cls;
    free(p);
}

void *kms_pbuf_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    if (kms_pbuf_check(desc, data, len) != KMS_OK)
        return NULL;
    struct budget b = {KMS_PBUF_ALLOC_BUDGET(len), false};
    ProtobufCAllocator a = {budget_alloc, budget_free, &b};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &a, len, data);
    if (m == NULL && b.over)
        refuse("decoding would allocate more than the body's budget", desc);
    if (m != NULL && flaw_field != NULL) {
        /* protobuf-c's copy would end at a NUL (another string than sent):
         * the handler gets the marker, never a part of the value. */
        char **s = (char **)(void *)((uint8_t *)m + flaw_field->offset);
        char *marker = strdup(flaw_marker);
        if (marker == NULL) {
            kms_pbuf_free_wiped(m);
            refuse("out of memory", desc);
            return NULL;
        }
        if (*s != NULL && *s != (const char *)flaw_field->default_value) {
            OPENSSL_cleanse(*s, strlen(*s));
            free(*s);
        }
        *s = marker;
    }
    return m;
}

/* One member of a message: a string, bytes or sub-message at p. */
size_t kms_pbuf_elem_size(ProtobufCType t)
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

static void wipe_member(const ProtobufCFieldDescriptor *f, void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        char *str = *(char **)p;
        /* protobuf-c points unset strings at its static "" (length 0:
         * nothing is written to it). */
        if (str != NULL)
            OPENSSL_cleanse(str, strlen(str));
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        if (b->data != NULL)
            OPENSSL_cleanse(b->data, b->len);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        if (*(ProtobufCMessage **)p != NULL)
            kms_pbuf_wipe(*(ProtobufCMessage **)p);
        break;
    default:
        break;
    }
}

void kms_pbuf_wipe(ProtobufCMessage *m)
{
    if (m == NULL)
        return;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES &&
            f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        uint8_t *member = (uint8_t *)m + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            /* Only the member the case names holds a pointer of its type. */
            if (*(const uint32_t *)((const uint8_t *)m + f->quantifier_offset) != f->id)
                continue;
        }
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            wipe_member(f, member);
            continue;
        }
        size_t n = *(const size_t *)((const uint8_t *)m + f->quantifier_offset);
        uint8_t *arr = *(uint8_t **)member;
        size_t el = kms_pbuf_elem_size(f->type);
        for (size_t j = 0; arr != NULL && j < n; j++)
            wipe_member(f, arr + j * el);
    }
}

void kms_pbuf_free_wiped(ProtobufCMessage *m)
{
    if (m == NULL)
        return;
    kms_pbuf_wipe(m);
    protobuf_c_message_free_unpacked(m, NULL);
}
