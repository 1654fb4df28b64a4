/*
 * test_kms_pjson.c - the proto3 JSON mapping of Twirp's JSON encoding
 * (kms_pjson.h): every route's request and response type round-trips
 * protobuf -> JSON -> protobuf with every field set, under both field name
 * spellings; the JSON forms the mapping allows are accepted; every refusal
 * is MALFORMED (or TOO_LARGE) with the field named; the Content-Type check
 * of the HTTP front accepts exactly the JSON and protobuf media types.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kms_httpreq.h"
#include "kms_pbuf.h"
#include "kms_pjson.h"
#include "kms_twirp.h"
#include "proto/audit.pb-c.h"
#include "proto/escrow.pb-c.h"
#include "proto/fields.pb-c.h"
#include "proto/key.pb-c.h"

#define MAX_WIRE (1024 * 1024)

/* ---- messages with every field set, built from the descriptor ------------------ */

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static unsigned counter;

/* Ill-formed UTF-8 of every kind, between well-formed text: a lone
 * continuation byte, a lead byte followed by ASCII, a surrogate (ED A0 80),
 * a truncated 4-byte sequence, an overlong form (C0 AF), a code point past
 * U+10FFFF (F4 90 80 80), and a sequence cut off by the end of the string.
 * FIXED is the same with U+FFFD for each maximal subpart (Unicode 3.9; what
 * Python's bytes.decode("utf-8", "replace") gives). */
#define BAD_UTF8                                                                                   \
    "\xff \xc3\x28 \xed\xa0\x80 \xf0\x9f\x94 \xc0\xaf caf\xc3\xa9 \x80\xbf \xf4\x90\x80\x80 \"q\"\\ "   \
    "\xe2\x82"
#define FFFD "\xef\xbf\xbd"
#define FIXED_UTF8                                                                                 \
    FFFD " " FFFD "( " FFFD FFFD FFFD " " FFFD " " FFFD FFFD " caf\xc3\xa9 " FFFD FFFD " " FFFD FFFD   \
        FFFD FFFD " \"q\"\\ " FFFD

/* set_value's strings: BAD_UTF8 after the field name and counter. */
static bool bad_utf8;

static ProtobufCMessage *fill(const ProtobufCMessageDescriptor *d, unsigned depth);

static bool field_is_map(const ProtobufCFieldDescriptor *f)
{
    return f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_MESSAGE &&
           strstr(((const ProtobufCMessageDescriptor *)f->descriptor)->short_name, "Entry") != NULL;
}

/* A non-default value of f's type at p; values vary with a counter so that
 * elements differ (map keys must). Extremes where a type has them: uint64
 * max, negative int64, strings with escapes and non-ASCII, bytes of every
 * length modulo 3 (each base64 padding). */
static void set_value(const ProtobufCFieldDescriptor *f, void *p, unsigned depth)
{
    unsigned k = ++counter;
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *(uint32_t *)p = k % 2 ? 4294967295u : k;
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        *(int32_t *)p = -(int32_t)k;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *(int64_t *)p = k % 2 ? INT64_MIN : -1234567890123456789LL - k;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        *(uint64_t *)p = k % 2 ? UINT64_MAX : 9007199254740993ull + k;
        break;
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)p = 1;
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        *(int *)p = ed->values[ed->n_values - 1].value;
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        char *s = xmalloc(128);
        if (bad_utf8)
            snprintf(s, 128, "%s-%u %s", f->name, k, BAD_UTF8);
        else
            snprintf(s, 128, "%s-%u \"q\" \\ \t\x01 caf\xc3\xa9 \xf0\x9f\x94\x91", f->name,
                     k);
        *(char **)p = s;
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = p;
        b->len = 30 + k % 3;
        b->data = xmalloc(b->len);
        for (size_t i = 0; i < b->len; i++)
            b->data[i] = (uint8_t)(i * 37 + k + 0xf8); /* '+' and '/' in base64 */
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        *(ProtobufCMessage **)p = fill(f->descriptor, depth + 1);
        break;
    default:
        ck_abort_msg("field %s: type %d not in the schema before", f->name, (int)f->type);
    }
}

static ProtobufCMessage *fill(const ProtobufCMessageDescriptor *d, unsigned depth)
{
    ProtobufCMessage *m = xmalloc(d->sizeof_message);
    protobuf_c_message_init(d, m);
    ck_assert_uint_lt(depth, 6);
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        uint8_t *member = (uint8_t *)m + f->offset;
        ck_assert_msg(!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF), "%s.%s: oneof", d->name, f->name);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = 2;
            uint8_t *arr = xmalloc(n * kms_pbuf_elem_size(f->type));
            for (size_t j = 0; j < n; j++)
                set_value(f, arr + j * kms_pbuf_elem_size(f->type), depth);
            *(size_t *)((uint8_t *)m + f->quantifier_offset) = n;
            *(uint8_t **)member = arr;
        } else {
            ck_assert_msg(f->label == PROTOBUF_C_LABEL_NONE, "%s.%s: not proto3", d->name, f->name);
            set_value(f, member, depth);
        }
    }
    return m;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *n)
{
    *n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = xmalloc(*n);
    ck_assert_uint_eq(protobuf_c_message_pack(m, p), *n);
    return p;
}

/* ---- JSON helpers ------------------------------------------------------------------------ */

static char *camel(const char *name)
{
    char *out = xmalloc(strlen(name) + 1);
    size_t j = 0;
    bool up = false;
    for (const char *c = name; *c; c++) {
        if (*c == '_') {
            up = true;
            continue;
        }
        out[j++] = up && *c >= 'a' && *c <= 'z' ? (char)(*c - 32) : *c;
        up = false;
    }
    return out;
}

/* The same JSON with every field name in lowerCamelCase (map keys kept). */
static json_t *camelize(const ProtobufCMessageDescriptor *d, json_t *obj)
{
    if (!json_is_object(obj))
        return json_incref(obj);
    json_t *out = json_object();
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        json_t *v = json_object_get(obj, f->name);
        ck_assert_msg(v != NULL, "%s missing from the reply JSON", f->name);
        json_t *nv;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && !field_is_map(f)) {
            if (json_is_array(v)) {
                nv = json_array();
                for (size_t j = 0; j < json_array_size(v); j++)
                    json_array_append_new(nv, camelize(f->descriptor, json_array_get(v, j)));
            } else {
                nv = camelize(f->descriptor, v);
            }
        } else {
            nv = json_incref(v);
        }
        char *c = camel(f->name);
        json_object_set_new(out, c, nv);
        free(c);
    }
    return out;
}

static kms_err to_wire(const ProtobufCMessageDescriptor *d, const char *json, uint8_t **w,
                       size_t *n)
{
    kms_err_clear();
    return kms_pjson_to_wire(d, (const uint8_t *)json, strlen(json), MAX_WIRE, w, n);
}

static void *decode(const ProtobufCMessageDescriptor *d, const char *json)
{
    uint8_t *w;
    size_t n;
    kms_err rc = to_wire(d, json, &w, &n);
    ck_assert_msg(rc == KMS_OK, "%s: %s", json, kms_err_detail());
    void *m = kms_pbuf_unpack(d, w, n);
    ck_assert_msg(m != NULL, "%s: the wire bytes do not decode", json);
    free(w);
    return m;
}

static char *render(const ProtobufCMessage *m)
{
    size_t n, jn;
    uint8_t *w = pack(m, &n);
    char *j;
    kms_err rc = kms_pjson_from_wire(m->descriptor, w, n, &j, &jn);
    ck_assert_msg(rc == KMS_OK, "%s: %s", m->descriptor->name, kms_err_detail());
    ck_assert_uint_eq(strlen(j), jn);
    free(w);
    return j;
}

/* ---- round trips --------------------------------------------------------------------------- */

/* pack(m) == pack(unpack(to_wire(json))) */
static void assert_same(const ProtobufCMessageDescriptor *d, const uint8_t *want, size_t want_n,
                        const char *json, const char *what)
{
    uint8_t *w;
    size_t n;
    kms_err rc = kms_pjson_to_wire(d, (const uint8_t *)json, strlen(json), MAX_WIRE, &w, &n);
    ck_assert_msg(rc == KMS_OK, "%s %s: %s\n%s", d->name, what, kms_err_detail(), json);
    ProtobufCMessage *back = protobuf_c_message_unpack(d, NULL, n, w);
    ck_assert_msg(back != NULL, "%s %s: wire does not unpack", d->name, what);
    size_t bn;
    uint8_t *b = pack(back, &bn);
    ck_assert_msg(bn == want_n && memcmp(b, want, bn) == 0, "%s %s: differs after the round trip",
                  d->name, what);
    free(b);
    protobuf_c_message_free_unpacked(back, NULL);
    free(w);
}

static void round_trip(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = fill(d, 0);
    size_t n;
    uint8_t *orig = pack(m, &n);
    char *j = render(m);
    assert_same(d, orig, n, j, "(proto names)");

    json_error_t err;
    json_t *tree = json_loads(j, JSON_ALLOW_NUL, &err);
    ck_assert_msg(tree != NULL, "%s: the reply is not JSON: %s\n%s", d->name, err.text, j);
    json_t *cc = camelize(d, tree);
    char *cj = json_dumps(cc, JSON_COMPACT);
    assert_same(d, orig, n, cj, "(lowerCamelCase names)");

    free(cj);
    json_decref(cc);
    json_decref(tree);
    free(j);
    free(orig);
    protobuf_c_message_free_unpacked(m, NULL);
}

START_TEST(every_route_round_trips)
{
    size_t n = kms_twirp_n_routes();
    ck_assert_uint_gt(n, 20);
    for (size_t i = 0; i < n; i++) {
        char path[128];
        const ProtobufCMessageDescriptor *req = kms_twirp_route_at(i, path, sizeof(path));
        const ProtobufCMessageDescriptor *resp = kms_twirp_route_response_at(i);
        ck_assert_ptr_nonnull(req);
        ck_assert_ptr_nonnull(resp);
        ck_assert_ptr_eq(kms_twirp_route_response(path), resp);
        /* Request and response of one method: the route table pairs them. */
        size_t stem = strlen(req->short_name) - strlen("Request");
        ck_assert_int_eq(strncmp(req->short_name, resp->short_name, stem), 0);
        ck_assert_str_eq(resp->short_name + stem, "Response");
        round_trip(req);
        round_trip(resp);
    }
    ck_assert_ptr_null(kms_twirp_route_response_at(n));
}
END_TEST

/* Every string of m (singular, repeated, map key and value, at any depth)
 * is in obj with BAD_UTF8 rendered as FIXED_UTF8. */
static void expect_fixed(const char *have, const char *stored, const char *where)
{
    size_t n = strlen(stored), bn = strlen(BAD_UTF8);
    ck_assert_msg(n > bn && strcmp(stored + n - bn, BAD_UTF8) == 0, "%s: not a bad string", where);
    char want[256];
    snprintf(want, sizeof(want), "%.*s%s", (int)(n - bn), stored, FIXED_UTF8);
    ck_assert_msg(have != NULL && strcmp(have, want) == 0, "%s: rendered as \"%s\"", where,
                  have ? have : "(not a string)");
}

static unsigned check_strings(const ProtobufCMessageDescriptor *d, const ProtobufCMessage *m,
                              const json_t *obj)
{
    unsigned seen = 0;
    ck_assert_msg(json_is_object(obj), "%s: not an object", d->name);
    for (size_t i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const uint8_t *member = (const uint8_t *)m + f->offset;
        const json_t *v = json_object_get(obj, f->name);
        ck_assert_msg(v != NULL, "%s.%s missing", d->name, f->name);
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label != PROTOBUF_C_LABEL_REPEATED) {
            if (f->type == PROTOBUF_C_TYPE_STRING) {
                expect_fixed(json_string_value(v), *(char *const *)member, f->name);
                seen++;
            } else {
                seen += check_strings(f->descriptor, *(ProtobufCMessage *const *)member, v);
            }
            continue;
        }
        size_t n = *(const size_t *)((const uint8_t *)m + f->quantifier_offset);
        void *const *arr = *(void *const *const *)member;
        const ProtobufCMessageDescriptor *ed = f->descriptor;
        if (field_is_map(f) && ed->n_fields == 2 && strcmp(ed->fields[0].name, "key") == 0 &&
            strcmp(ed->fields[1].name, "value") == 0) { /* not AuditEntry */
            const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
            ck_assert_msg(json_is_object(v), "%s: not a map", f->name);
            /* The stored entries' keys as rendered, with U+FFFD. */
            char(*keys)[256] = xmalloc(n * sizeof(*keys));
            for (size_t j = 0; j < n; j++) {
                const uint8_t *e = arr[j];
                if (kf->type == PROTOBUF_C_TYPE_STRING) {
                    const char *key = *(char *const *)(e + kf->offset);
                    size_t kn = strlen(key) - strlen(BAD_UTF8);
                    snprintf(keys[j], sizeof(keys[j]), "%.*s%s", (int)kn, key, FIXED_UTF8);
                    expect_fixed(keys[j], key, f->name);
                } else {
                    ck_abort_msg("%s: a map key type this test does not know", f->name);
                }
            }
            size_t distinct = 0;
            for (size_t j = 0; j < n; j++) {
                bool later = false;
                for (size_t l = j + 1; l < n; l++)
                    later = later || strcmp(keys[j], keys[l]) == 0;
                if (later)
                    continue;
                distinct++;
                const uint8_t *e = arr[j];
                const json_t *ev = json_object_get(v, keys[j]);
                ck_assert_msg(ev != NULL, "%s: key %s not rendered", f->name, keys[j]);
                seen += kf->type == PROTOBUF_C_TYPE_STRING;
                if (vf->type == PROTOBUF_C_TYPE_STRING) {
                    expect_fixed(json_string_value(ev), *(char *const *)(e + vf->offset), f->name);
                    seen++;
                } else if (vf->type == PROTOBUF_C_TYPE_MESSAGE) {
                    seen += check_strings(vf->descriptor,
                                          *(ProtobufCMessage *const *)(e + vf->offset), ev);
                }
            }
            ck_assert_uint_eq(json_object_size(v), distinct);
            free(keys);
            continue;
        }
        ck_assert_msg(json_is_array(v) && json_array_size(v) == n, "%s: not the array", f->name);
        for (size_t j = 0; j < n; j++) {
            if (f->type == PROTOBUF_C_TYPE_STRING) {
                expect_fixed(json_string_value(json_array_get(v, j)), ((char *const *)arr)[j],
                             f->name);
                seen++;
            } else {
                seen += check_strings(f->descriptor, arr[j], json_array_get(v, j));
            }
        }
    }
    return seen;
}

/* Every route's reply (and request) with ill-formed UTF-8 in every string
 * renders: valid JSON (jansson refuses invalid UTF-8 on load) with U+FFFD
 * in place of each ill-formed subpart and nothing else changed. */
START_TEST(invalid_utf8_rendered_as_fffd)
{
    size_t routes = kms_twirp_n_routes();
    unsigned total = 0;
    bad_utf8 = true;
    for (size_t i = 0; i < routes; i++) {
        char path[128];
        const ProtobufCMessageDescriptor *ds[2] = {kms_twirp_route_at(i, path, sizeof(path)),
                                                   kms_twirp_route_response_at(i)};
        for (size_t k = 0; k < 2; k++) {
            ProtobufCMessage *m = fill(ds[k], 0);
            char *j = render(m);
            json_error_t err;
            json_t *tree = json_loads(j, 0, &err);
            ck_assert_msg(tree != NULL, "%s: not valid JSON: %s", ds[k]->name, err.text);
            total += check_strings(ds[k], m, tree);
            json_decref(tree);
            free(j);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    bad_utf8 = false;
    /* Strings in every position were there to check: a map, a nested
     * message's and a repeated one's (KeyMetadata.description in
     * ListKeys). */
    ck_assert_uint_gt(total, 50);
}
END_TEST

/* An independent reading of RFC 3629 (decode, then reject overlong forms,
 * surrogates and anything past U+10FFFF), the oracle for the test below. */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = s[i] < 0x80 ? 0 : (s[i] & 0xe0) == 0xc0 ? 1 : (s[i] & 0xf0) == 0xe0 ? 2
                   : (s[i] & 0xf8) == 0xf0 ? 3 : 9;
        if (k == 9 || i + k >= n + (k == 0))
            return false;
        uint32_t cp = k == 0 ? s[i] : s[i] & (0x3f >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

/* Every string of up to 3 bytes over the bytes where UTF-8's rules change
 * (and of 4 bytes starting with a 4-byte lead) renders as JSON that jansson (which refuses invalid UTF-8) reads; a
 * well-formed one comes back unchanged, an ill-formed one with U+FFFD and
 * its well-formed ASCII kept. */
START_TEST(every_short_string_renders)
{
    static const uint8_t alphabet[] = {0x22, 0x41, 0x5c, 0x7f, 0x80, 0x8f, 0x90, 0x9f,
                                       0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1,
                                       0xed, 0xef, 0xf0, 0xf1, 0xf4, 0xf5, 0xff};
    const size_t na = sizeof(alphabet);
    Custos__V1__KeyMetadata km = CUSTOS__V1__KEY_METADATA__INIT;
    Custos__V1__DescribeKeyResponse r = CUSTOS__V1__DESCRIBE_KEY_RESPONSE__INIT;
    r.key = &km;
    unsigned valid = 0, invalid = 0;
    for (size_t len = 1; len <= 4; len++) {
        size_t total = 1;
        for (size_t i = 0; i < len; i++)
            total *= na;
        for (size_t idx = 0; idx < total; idx++) {
            uint8_t s[5];
            size_t x = idx;
            for (size_t i = 0; i < len; i++, x /= na)
                s[i] = alphabet[x % na];
            s[len] = 0;
            /* 4 bytes: only after a 4-byte lead (the rest repeats shorter
             * strings' cases, and the test stays quick under ASan). */
            if (len == 4 && (s[0] != 0xf0 && s[0] != 0xf1 && s[0] != 0xf4))
                continue;
            km.description = (char *)s;
            char *j = render(&r.base);
            json_error_t err;
            json_t *tree = json_loads(j, 0, &err);
            ck_assert_msg(tree != NULL, "%02x %02x %02x %02x (%zu bytes): not JSON: %s", s[0],
                          s[1], s[2], s[3], len, err.text);
            const char *d = json_string_value(json_object_get(json_object_get(tree, "key"),
                                                               "description"));
            ck_assert_ptr_nonnull(d);
            if (utf8_ok(s, len)) {
                ck_assert_msg(strcmp(d, (const char *)s) == 0, "%02x %02x %02x %02x changed",
                              s[0], s[1], s[2], s[3]);
                valid++;
            } else {
                ck_assert_msg(strstr(d, FFFD) != NULL, "%02x %02x %02x %02x: no U+FFFD", s[0],
                              s[1], s[2], s[3]);
                /* At most one U+FFFD per byte; ASCII bytes all kept. */
                size_t nf = 0, ascii = 0, dascii = 0;
                for (const char *q = d; (q = strstr(q, FFFD)) != NULL; q += 3)
                    nf++;
                for (size_t i = 0; i < len; i++)
                    ascii += s[i] < 0x80;
                for (const char *q = d; *q; q++)
                    dascii += (unsigned char)*q < 0x80;
                ck_assert_uint_le(nf, len);
                ck_assert_uint_eq(ascii, dascii);
                invalid++;
            }
            json_decref(tree);
            free(j);
        }
    }
    /* Both kinds were there: 2- to 4-byte sequences among the valid. */
    ck_assert_uint_gt(valid, 500);
    ck_assert_uint_gt(invalid, 20000);
}
END_TEST

START_TEST(empty_messages)
{
    /* {} is the all-defaults message: zero wire bytes, still a buffer. */
    uint8_t *w;
    size_t n;
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor, " {} \n", &w, &n), KMS_OK);
    ck_assert_ptr_nonnull(w);
    ck_assert_uint_eq(n, 0);
    free(w);
    /* Defaults are listed under their proto names, as Twirp's Go server
     * does: 0, "", false, the first enum value, [] , {}, and null for an
     * unset message. */
    Custos__V1__ListKeysResponse lk = CUSTOS__V1__LIST_KEYS_RESPONSE__INIT;
    char *j = render(&lk.base);
    ck_assert_str_eq(j, "{\"keys\":[],\"next_page_token\":\"\"}");
    free(j);
    Custos__V1__CreateKeyResponse ck = CUSTOS__V1__CREATE_KEY_RESPONSE__INIT;
    j = render(&ck.base);
    ck_assert_str_eq(j, "{\"key\":null}");
    free(j);
    Custos__V1__ExportAuditLogRequest ex = CUSTOS__V1__EXPORT_AUDIT_LOG_REQUEST__INIT;
    j = render(&ex.base);
    ck_assert_str_eq(j, "{\"region\":\"\",\"start\":\"0\",\"count\":0,\"inclusion_proofs\":false,"
                        "\"known_tree_size\":\"0\"}");
    free(j);
    Custos__V1__EncryptRequest er = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    j = render(&er.base);
    ck_assert_str_eq(j, "{\"key_id\":\"\",\"plaintext\":\"\",\"encryption_context\":{}}");
    free(j);
}
END_TEST

START_TEST(rendering)
{
    Custos__V1__KeyMetadata km = CUSTOS__V1__KEY_METADATA__INIT;
    km.key_id = (char *)"k1";
    km.spec = CUSTOS__V1__KEY_SPEC__AES_256;
    km.created_at = -5;
    Custos__V1__DescribeKeyResponse r = CUSTOS__V1__DESCRIBE_KEY_RESPONSE__INIT;
    r.key = &km;
    char *j = render(&r.base);
    /* Enums by name, int64 as strings, nested messages as objects. */
    ck_assert_ptr_nonnull(strstr(j, "{\"key\":{\"key_id\":\"k1\","));
    ck_assert_ptr_nonnull(strstr(j, "\"spec\":\"AES_256\""));
    ck_assert_ptr_nonnull(strstr(j, "\"created_at\":\"-5\""));
    free(j);
    /* Bytes: standard base64 with padding. */
    Custos__V1__EncryptResponse e = CUSTOS__V1__ENCRYPT_RESPONSE__INIT;
    e.ciphertext.data = (uint8_t *)"\xfb\xff\xbf\x01";
    e.ciphertext.len = 4;
    e.key_version = 4294967295u;
    j = render(&e.base);
    ck_assert_str_eq(j, "{\"ciphertext\":\"+/+/AQ==\",\"key_id\":\"\",\"key_version\":4294967295}");
    free(j);
    /* A map key repeated on the wire: the last entry wins, as protobuf
     * decoders do, and the object holds the key once. */
    Custos__V1__EncryptRequest__EncryptionContextEntry e1 =
        CUSTOS__V1__ENCRYPT_REQUEST__ENCRYPTION_CONTEXT_ENTRY__INIT;
    Custos__V1__EncryptRequest__EncryptionContextEntry e2 = e1, e3 = e1;
    e1.key = (char *)"a";
    e1.value = (char *)"first";
    e2.key = (char *)"b";
    e2.value = (char *)"x";
    e3.key = (char *)"a";
    e3.value = (char *)"last";
    Custos__V1__EncryptRequest__EncryptionContextEntry *ents[] = {&e1, &e2, &e3};
    Custos__V1__EncryptRequest er = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    er.encryption_context = ents;
    er.n_encryption_context = 3;
    j = render(&er.base);
    ck_assert_str_eq(j, "{\"key_id\":\"\",\"plaintext\":\"\",\"encryption_context\":{\"b\":\"x\","
                        "\"a\":\"last\"}}");
    free(j);
    /* An enum value newer than the schema: its number. */
    km.spec = 77;
    j = render(&r.base);
    ck_assert_ptr_nonnull(strstr(j, "\"spec\":77"));
    free(j);
    /* A string JSON cannot carry (a description stored before kmsd refused
     * them) never fails the reply, which is rendered after the handler has
     * committed: U+FFFD in its place, the rest as it was. */
    km.spec = CUSTOS__V1__KEY_SPEC__AES_256;
    km.description = (char *)"bad \xc3\x28 utf-8 \xff\xfe";
    j = render(&r.base);
    ck_assert_ptr_nonnull(strstr(j, "\"description\":\"bad " FFFD "( utf-8 " FFFD FFFD "\","));
    free(j);
    size_t jn;
    /* Bytes that are not the message: an internal error. */
    ck_assert_int_eq(kms_pjson_from_wire(&custos__v1__describe_key_response__descriptor,
                                         (const uint8_t *)"\x0a\x05x", 3, &j, &jn),
                     KMS_ERR_INTERNAL);
}
END_TEST

/* ---- the accepted forms --------------------------------------------------------------------- */

START_TEST(both_spellings)
{
    Custos__V1__EncryptRequest *m =
        decode(&custos__v1__encrypt_request__descriptor,
               "{\"keyId\":\"abc\",\"plaintext\":\"aGk=\",\"encryptionContext\":{\"tenant_id\":\"t\"}}");
    ck_assert_str_eq(m->key_id, "abc");
    ck_assert_uint_eq(m->plaintext.len, 2);
    ck_assert_int_eq(memcmp(m->plaintext.data, "hi", 2), 0);
    ck_assert_uint_eq(m->n_encryption_context, 1);
    /* Map keys are data: never renamed. */
    ck_assert_str_eq(m->encryption_context[0]->key, "tenant_id");
    ck_assert_str_eq(m->encryption_context[0]->value, "t");
    custos__v1__encrypt_request__free_unpacked(m, NULL);
    m = decode(&custos__v1__encrypt_request__descriptor,
               "{\"key_id\":\"abc\",\"encryption_context\":{\"a\":\"1\",\"b\":\"\"}}");
    ck_assert_str_eq(m->key_id, "abc");
    ck_assert_uint_eq(m->n_encryption_context, 2);
    ck_assert_str_eq(m->encryption_context[1]->value, "");
    custos__v1__encrypt_request__free_unpacked(m, NULL);
}
END_TEST

START_TEST(numbers_and_enums)
{
    /* 64-bit integers as numbers or strings; 32-bit ones as strings too;
     * an integral real; enums by name or number. */
    Custos__V1__ExportAuditLogRequest *e =
        decode(&custos__v1__export_audit_log_request__descriptor,
               "{\"start\":\"18446744073709551615\",\"count\":\"7\",\"inclusionProofs\":true,"
               "\"known_tree_size\":12}");
    ck_assert_uint_eq(e->start, UINT64_MAX);
    ck_assert_uint_eq(e->count, 7);
    ck_assert(e->inclusion_proofs);
    ck_assert_uint_eq(e->known_tree_size, 12);
    custos__v1__export_audit_log_request__free_unpacked(e, NULL);
    e = decode(&custos__v1__export_audit_log_request__descriptor,
               "{\"start\":9007199254740993,\"count\":1e3,\"known_tree_size\":\"0\"}");
    ck_assert_uint_eq(e->start, 9007199254740993ull);
    ck_assert_uint_eq(e->count, 1000);
    custos__v1__export_audit_log_request__free_unpacked(e, NULL);
    e = decode(&custos__v1__export_audit_log_request__descriptor, "{\"count\":4294967295}");
    ck_assert_uint_eq(e->count, 4294967295u);
    custos__v1__export_audit_log_request__free_unpacked(e, NULL);

    Custos__V1__CreateKeyRequest *c =
        decode(&custos__v1__create_key_request__descriptor,
               "{\"region\":\"eu-west\",\"spec\":\"AES_256\",\"usage\":1}");
    ck_assert_int_eq(c->spec, CUSTOS__V1__KEY_SPEC__AES_256);
    ck_assert_int_eq(c->usage, 1);
    custos__v1__create_key_request__free_unpacked(c, NULL);

    Custos__V1__EncryptFieldsRequest *f =
        decode(&custos__v1__encrypt_fields_request__descriptor,
               "{\"fields\":[{\"name\":\"a\",\"mode\":\"FIELD_MODE_DETERMINISTIC\","
               "\"indexLengthBits\":64},{\"name\":\"b\",\"mode\":1,\"canonicalizer\":null}]}");
    ck_assert_uint_eq(f->n_fields, 2);
    ck_assert_int_eq(f->fields[0]->mode, CUSTOS__V1__FIELD_MODE__FIELD_MODE_DETERMINISTIC);
    ck_assert_uint_eq(f->fields[0]->index_length_bits, 64);
    ck_assert_int_eq(f->fields[1]->mode, CUSTOS__V1__FIELD_MODE__FIELD_MODE_RANDOMIZED);
    custos__v1__encrypt_fields_request__free_unpacked(f, NULL);
}
END_TEST

START_TEST(bytes_and_strings)
{
    /* Standard and URL-safe alphabets, padded or not: the same bytes. */
    static const char *forms[] = {"\"+/+/AQ==\"", "\"+/+/AQ\"", "\"-_-_AQ==\"", "\"-_-_AQ\""};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"plaintext\":%s}", forms[i]);
        Custos__V1__EncryptRequest *m = decode(&custos__v1__encrypt_request__descriptor, json);
        ck_assert_uint_eq(m->plaintext.len, 4);
        ck_assert_int_eq(memcmp(m->plaintext.data, "\xfb\xff\xbf\x01", 4), 0);
        custos__v1__encrypt_request__free_unpacked(m, NULL);
    }
    /* A "\u0000" is not cut: the wire carries the whole string, NUL
     * included, for the decoder to judge. */
    uint8_t *w;
    size_t n;
    ck_assert_int_eq(to_wire(&custos__v1__describe_key_request__descriptor,
                             "{\"key_id\":\"ab\\u0000cd\"}", &w, &n),
                     KMS_OK);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(memcmp(w, "\x0a\x05" "ab\0cd", 7), 0);
    free(w);
    /* ... in a map key too (jansson itself refuses a NUL in any object
     * key): the entry reaches the decoder with its NUL, which refuses it
     * as invalid_argument naming the map, exactly as for a NUL in a map
     * value or in a protobuf body. */
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor,
                             "{\"encryption_context\" : {\"a\\u0000\" :\"v\"}}", &w, &n),
                     KMS_OK);
    ck_assert_uint_eq(n, 9);
    ck_assert_int_eq(memcmp(w, "\x1a\x07\x0a\x02" "a\0" "\x12\x01" "v", 9), 0);
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__encrypt_request__descriptor, w, n));
    ck_assert_int_eq(kms_pbuf_refused("EncryptRequest"), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "field \"encryption_context\" (a map key) contains a NUL byte");
    free(w);
    /* Only the escape is rewritten: an escaped backslash then "u0000" is
     * six plain characters, and a NUL in a value beside it stays a NUL. */
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor,
                             "{\"encryption_context\":{\"a\\\\u0000\":\"\\u0000\"}}", &w, &n),
                     KMS_OK);
    ck_assert_uint_eq(n, 14);
    ck_assert_int_eq(memcmp(w, "\x1a\x0c\x0a\x07" "a\\u0000" "\x12\x01" "\0", 14), 0);
    free(w);
    /* A NUL in a field name: no such field, the NUL shown as '?'. */
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor,
                             "{\"key\\u0000id\":\"x\"}", &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "field \"key?id\": no such field"));
    /* A numeric enum value its enum does not define passes through to the
     * decoder, which refuses it like the same number in a protobuf body:
     * one rule, one code (invalid_argument naming the field). */
    ck_assert_int_eq(to_wire(&custos__v1__create_key_request__descriptor,
                             "{\"region\":\"eu-west\",\"spec\":1,\"usage\":1,\"origin\":7}", &w,
                             &n),
                     KMS_OK);
    ck_assert_ptr_null(kms_pbuf_unpack(&custos__v1__create_key_request__descriptor, w, n));
    ck_assert_int_eq(kms_pbuf_refused("CreateKeyRequest"), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "field \"origin\" is not a defined KeyOrigin value");
    free(w);
    /* Escapes and non-ASCII arrive as UTF-8. */
    Custos__V1__CreateKeyRequest *c = decode(&custos__v1__create_key_request__descriptor,
                                             "{\"description\":\"caf\\u00e9 \\\"x\\\" \\ud83d\\udd11\"}");
    ck_assert_str_eq(c->description, "caf\xc3\xa9 \"x\" \xf0\x9f\x94\x91");
    custos__v1__create_key_request__free_unpacked(c, NULL);
    /* null is the default, for any type. */
    c = decode(&custos__v1__create_key_request__descriptor,
               "{\"region\":null,\"spec\":null,\"description\":null}");
    ck_assert_str_eq(c->region, "");
    ck_assert_int_eq(c->spec, 0);
    custos__v1__create_key_request__free_unpacked(c, NULL);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------------- */

struct refusal {
    const ProtobufCMessageDescriptor *d;
    const char *json;
    const char *why; /* in the detail */
};

START_TEST(refusals)
{
    const ProtobufCMessageDescriptor *enc = &custos__v1__encrypt_request__descriptor;
    const ProtobufCMessageDescriptor *exp = &custos__v1__export_audit_log_request__descriptor;
    const ProtobufCMessageDescriptor *ck = &custos__v1__create_key_request__descriptor;
    const ProtobufCMessageDescriptor *ef = &custos__v1__encrypt_fields_request__descriptor;
    const ProtobufCMessageDescriptor *rr = &custos__v1__request_recovery_request__descriptor;
    const struct refusal cases[] = {
        {enc, "", "not valid JSON"},
        {enc, "   ", "not valid JSON"},
        {enc, "[]", "expected an object (a EncryptRequest message)"},
        {enc, "\"x\"", "not valid JSON"},
        {enc, "{\"key_id\":\"a\"} {}", "not valid JSON"},
        {enc, "{\"key_id\":\"a\"}x", "not valid JSON"},
        {enc, "{\"key_id\":\"a\",}", "not valid JSON"},
        {enc, "{\"key_id\":\"\xc3\x28\"}", "not valid JSON"},
        {enc, "{\"key_id\":\"a\",\"key_id\":\"b\"}", "an object key appears twice"},
        {enc, "{\"key_id\":\"a\",\"keyId\":\"b\"}", "field \"key_id\": given twice"},
        {enc, "{\"keyid\":\"a\"}", "field \"keyid\": no such field in EncryptRequest"},
        {enc, "{\"KeyId\":\"a\"}", "field \"KeyId\": no such field"},
        {enc, "{\"key_id\":1}", "field \"key_id\": expected a string"},
        {enc, "{\"key_id\":[\"a\"]}", "field \"key_id\": expected a string"},
        {enc, "{\"plaintext\":\"a\"}", "field \"plaintext\": not base64"},
        {enc, "{\"plaintext\":\"aGk\"}", "ok"},
        {enc, "{\"plaintext\":\"aG=k\"}", "field \"plaintext\": not base64"},
        {enc, "{\"plaintext\":\"aGk==\"}", "field \"plaintext\": not base64"},
        {enc, "{\"plaintext\":\"+_+_\"}", "field \"plaintext\": not base64"},
        {enc, "{\"plaintext\":\"aG k=\"}", "field \"plaintext\": not base64"},
        {enc, "{\"plaintext\":5}", "field \"plaintext\": expected a base64 string"},
        {enc, "{\"encryption_context\":[]}", "field \"encryption_context\": expected an object"},
        {enc, "{\"encryption_context\":{\"a\":1}}", "field \"encryption_context\": expected a string"},
        {enc, "{\"encryption_context\":{\"a\":null}}", "a map value is null"},
        {exp, "{\"count\":1.5}", "field \"count\": not an integer"},
        {exp, "{\"count\":4294967296}", "field \"count\": integer out of range"},
        {exp, "{\"count\":-1}", "field \"count\": integer out of range"},
        {exp, "{\"count\":\"-1\"}", "field \"count\": integer out of range"},
        {exp, "{\"count\":\"1.0\"}", "field \"count\": not a decimal integer"},
        {exp, "{\"count\":\" 1\"}", "field \"count\": not a decimal integer"},
        {exp, "{\"count\":\"+1\"}", "field \"count\": not a decimal integer"},
        {exp, "{\"count\":\"0x10\"}", "field \"count\": not a decimal integer"},
        {exp, "{\"count\":\"\"}", "field \"count\": not a decimal integer"},
        {exp, "{\"count\":true}", "field \"count\": expected a number"},
        {exp, "{\"start\":\"18446744073709551616\"}", "field \"start\": not a decimal integer"},
        {exp, "{\"start\":-3}", "field \"start\": integer out of range"},
        {exp, "{\"start\":1e300}", "field \"start\": integer out of range"},
        {exp, "{\"start\":18446744073709551615}", "not valid JSON"},
        {exp, "{\"inclusion_proofs\":\"true\"}", "field \"inclusion_proofs\": expected true or false"},
        {exp, "{\"inclusion_proofs\":1}", "field \"inclusion_proofs\": expected true or false"},
        {ck, "{\"spec\":\"AES256\"}", "field \"spec\": not a value name of KeySpec"},
        {ck, "{\"spec\":\"aes_256\"}", "field \"spec\": not a value name of KeySpec"},
        {ck, "{\"spec\":\"AES_256\\u0000x\"}", "field \"spec\": not a value name of KeySpec"},
        {ck, "{\"spec\":1.5}", "field \"spec\": not an integer"},
        {ck, "{\"spec\":{}}", "field \"spec\": expected a KeySpec value name or number"},
        {ef, "{\"fields\":{}}", "field \"fields\": expected an array"},
        {ef, "{\"fields\":[null]}", "field \"fields[0]\": null in an array"},
        {ef, "{\"fields\":[{\"name\":\"a\"},{\"mode\":\"X\"}]}",
         "field \"fields[1].mode\": not a value name of FieldMode"},
        {ef, "{\"fields\":[{\"nope\":1}]}", "field \"fields[0].nope\": no such field in PlaintextField"},
        {ef, "{\"fields\":[\"a\"]}", "field \"fields[0]\": expected an object (a PlaintextField"},
        {rr, "{\"versions\":[1,\"2\",-1]}", "field \"versions[2]\": integer out of range"},
        {rr, "{\"versions\":[1,null]}", "field \"versions[1]\": null in an array"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t *w = (uint8_t *)"sentinel";
        size_t n = 99;
        kms_err rc = to_wire(cases[i].d, cases[i].json, &w, &n);
        if (strcmp(cases[i].why, "ok") == 0) {
            ck_assert_msg(rc == KMS_OK, "case %zu (%s): %s", i, cases[i].json, kms_err_detail());
            free(w);
            continue;
        }
        ck_assert_msg(rc == KMS_ERR_MALFORMED, "case %zu (%s): rc %d", i, cases[i].json, (int)rc);
        ck_assert_ptr_null(w);
        ck_assert_uint_eq(n, 0);
        ck_assert_msg(strstr(kms_err_detail(), cases[i].why) != NULL, "case %zu (%s): %s", i,
                      cases[i].json, kms_err_detail());
        /* The same start as a malformed protobuf body. */
        ck_assert_msg(strncmp(kms_err_detail(), "the body is not a valid JSON ", 29) == 0,
                      "case %zu: %s", i, kms_err_detail());
    }
}
END_TEST

START_TEST(values_never_echoed)
{
    /* The detail is logged and audited: a refused value is not quoted. */
    uint8_t *w;
    size_t n;
    ck_assert_int_eq(to_wire(&custos__v1__create_key_request__descriptor,
                             "{\"spec\":\"SECRET-VALUE\"}", &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_null(strstr(kms_err_detail(), "SECRET"));
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor,
                             "{\"plaintext\":\"SECRET-VALUE\" x}", &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_null(strstr(kms_err_detail(), "SECRET"));
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor,
                             "{\"plaintext\":\"SECRET-VALUE!\"}", &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_null(strstr(kms_err_detail(), "SECRET"));
    /* A long unknown key is shown shortened and printable. */
    char json[600];
    snprintf(json, sizeof(json), "{\"%0300d\\n\":1}", 0);
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor, json, &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "...\": no such field"));
    ck_assert_ptr_null(strchr(kms_err_detail(), '\n'));
}
END_TEST

START_TEST(limits)
{
    uint8_t *w;
    size_t n;
    /* Nesting beyond KMS_PJSON_MAX_DEPTH is refused before parsing. */
    char deep[200] = "{\"key_id\":";
    for (int i = 0; i < KMS_PJSON_MAX_DEPTH; i++)
        strcat(deep, "[");
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor, deep, &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "JSON nested deeper than"));
    /* Brackets inside strings are not nesting. */
    char quoted[300] = "{\"key_id\":\"";
    for (int i = 0; i < 100; i++)
        strcat(quoted, "[{");
    strcat(quoted, "\\\"\"}");
    ck_assert_int_eq(to_wire(&custos__v1__encrypt_request__descriptor, quoted, &w, &n), KMS_OK);
    ck_assert_uint_eq(n, 3 + 201);
    free(w);
    /* Too many values, whatever their shape. */
    size_t big = (size_t)KMS_PJSON_MAX_TOKENS * 3 + 64;
    char *many = xmalloc(big);
    strcpy(many, "{\"keys\":[");
    size_t at = strlen(many);
    for (int i = 0; i <= KMS_PJSON_MAX_TOKENS; i++) {
        memcpy(many + at, "{},", 3);
        at += 3;
    }
    memcpy(many + at - 1, "]}", 3);
    kms_err_clear();
    ck_assert_int_eq(kms_pjson_to_wire(&custos__v1__list_keys_response__descriptor,
                                       (const uint8_t *)many, strlen(many), MAX_WIRE, &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "more than 65536 JSON values"));
    free(many);
    /* More elements than kms_pbuf allows in one repeated field. */
    char *arr = xmalloc(8 * (KMS_PBUF_MAX_REPEATED + 2) + 64);
    strcpy(arr, "{\"versions\":[");
    for (int i = 0; i <= KMS_PBUF_MAX_REPEATED; i++)
        strcat(arr, i ? ",1" : "1");
    strcat(arr, "]}");
    ck_assert_int_eq(to_wire(&custos__v1__request_recovery_request__descriptor, arr, &w, &n),
                     KMS_ERR_MALFORMED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "field \"versions\": more than 1024 elements"));
    free(arr);
    /* Wire output over the limit: TOO_LARGE, like a protobuf body over it. */
    const char *j = "{\"key_id\":\"0123456789abcdef0123456789abcdef\"}";
    kms_err_clear();
    ck_assert_int_eq(kms_pjson_to_wire(&custos__v1__describe_key_request__descriptor,
                                       (const uint8_t *)j, strlen(j), 33, &w, &n),
                     KMS_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "larger than 33 bytes"));
    ck_assert_int_eq(kms_pjson_to_wire(&custos__v1__describe_key_request__descriptor,
                                       (const uint8_t *)j, strlen(j), 34, &w, &n),
                     KMS_OK);
    ck_assert_uint_eq(n, 34);
    free(w);
}
END_TEST

/* ---- Content-Type ---------------------------------------------------------------------------- */

static kms_err head(const char *ct, struct kms_httpreq *out)
{
    struct kms_httpreq_head h = {
        .method = "POST",
        .url = "/twirp/custos.v1.KeyService/Encrypt",
        .content_type = ct,
        .max_body = 1 << 20,
    };
    kms_err_clear();
    return kms_httpreq_check_head(&h, out);
}

START_TEST(content_types)
{
    struct kms_httpreq r;
    static const char *json[] = {"application/json", "Application/JSON",
                                 "application/json; charset=utf-8",
                                 "application/json;charset=UTF-8",
                                 "application/json; charset=\"utf-8\""};
    for (size_t i = 0; i < sizeof(json) / sizeof(json[0]); i++) {
        ck_assert_msg(head(json[i], &r) == KMS_OK, "%s: %s", json[i], kms_err_detail());
        ck_assert_msg(r.json, "%s", json[i]);
        ck_assert_ptr_eq(r.request, &custos__v1__encrypt_request__descriptor);
        ck_assert_ptr_eq(r.response, &custos__v1__encrypt_response__descriptor);
    }
    ck_assert_int_eq(head("application/protobuf", &r), KMS_OK);
    ck_assert(!r.json);
    ck_assert_ptr_eq(r.response, &custos__v1__encrypt_response__descriptor);
    static const char *bad[] = {NULL,
                                "",
                                "text/plain",
                                "application/jsonx",
                                "application/json; charset=latin1",
                                "application/json; charset=utf-16",
                                "application/json; foo=bar",
                                "application/json; charset=utf-8; x=y",
                                "application/x-protobuf",
                                "text/json"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(head(bad[i], &r) == KMS_ERR_BAD_ROUTE, "%s accepted", bad[i]);
        ck_assert(r.routed);
        ck_assert_ptr_nonnull(strstr(kms_err_detail(), "application/protobuf or application/json"));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_pjson");
    TCase *tc = tcase_create("round_trip");
    tcase_add_test(tc, every_route_round_trips);
    tcase_add_test(tc, empty_messages);
    tcase_add_test(tc, rendering);
    tcase_add_test(tc, invalid_utf8_rendered_as_fffd);
    tcase_add_test(tc, every_short_string_renders);
    suite_add_tcase(s, tc);
    tc = tcase_create("accepted");
    tcase_add_test(tc, both_spellings);
    tcase_add_test(tc, numbers_and_enums);
    tcase_add_test(tc, bytes_and_strings);
    suite_add_tcase(s, tc);
    tc = tcase_create("refused");
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, values_never_echoed);
    tcase_add_test(tc, limits);
    suite_add_tcase(s, tc);
    tc = tcase_create("content_type");
    tcase_add_test(tc, content_types);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
