/*
 * kms_pjson_lex.c - the lexical rules of the proto3 JSON mapping
 * (kms_pjson_lex.h).
 */
#include "kms_pjson_lex.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_b64.h"

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

bool kms_pjson_name_is(const char *proto_name, const char *key, size_t klen)
{
    return name_eq(proto_name, key, klen) || json_name_eq(proto_name, key, klen);
}

/* protoc turns map<K, V> name = N into `repeated NameEntry name = N` whose
 * type has key = 1 and value = 2; protobuf-c keeps no map_entry option, so
 * the shape is recognised by that construction. */
bool kms_pjson_is_map(const ProtobufCFieldDescriptor *f)
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
bool kms_pjson_parse_dec(const char *s, size_t n, bool *neg, uint64_t *mag)
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

/* Standard or URL-safe base64 (not both in one value), padding optional
 * but complete when present. Decodes into out (room for 3 * n / 4 + 3). */
bool kms_pjson_b64_decode(const char *s, size_t n, uint8_t *out, size_t *out_len)
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
    unsigned used = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = kms_b64_digit((unsigned char)s[i], KMS_B64_STD | KMS_B64_URL, &used);
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
    return used != (KMS_B64_STD | KMS_B64_URL);
}

/* Depth and token count of the text before jansson builds a tree: what it
 * allocates is then bounded whatever the body. Strings are skipped (an
 * escaped quote does not end one); whether the text is JSON at all is
 * jansson's to say. */
enum kms_pjson_scan kms_pjson_prescan(const uint8_t *p, size_t n)
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
                return KMS_PJSON_SCAN_TOO_DEEP;
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
            return KMS_PJSON_SCAN_TOO_MANY;
    }
    return KMS_PJSON_SCAN_OK;
}

/* jansson 2.14 refuses a NUL in an object key ("NUL byte in object key not
 * supported") even with JSON_ALLOW_NUL, which covers values only. So that a
 * "\u0000" in a map key reaches the decoder like one in a map value (and is
 * refused there as invalid_argument naming the map, the one rule for every
 * encoding), each "\u0000" escape inside an object key is rewritten as
 * "\u0001" (KMS_PJSON_KEY_NUL) in a copy of the text, and enc_map turns KMS_PJSON_KEY_NUL in a
 * map key back into NUL. A body that holds such a key is refused whatever
 * else it holds (a field name with a NUL is no field either), so the only
 * side effect, a genuine U+0001 in another key of the same body read as
 * NUL, changes no outcome. *out_copy stays NULL when no key holds one. */
kms_err kms_pjson_unnul_keys(const uint8_t *p, size_t n, uint8_t **out_copy)
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
                return kms_err_set(KMS_ERR_NOMEM, "out of memory");
            memcpy(*out_copy, p, n);
        }
        for (size_t k = start + 1; k < i; k++)
            if (p[k] == '\\') {
                if (k + 5 < i && memcmp(p + k + 1, "u0000", 5) == 0)
                    (*out_copy)[k + 5] = '1';
                k++;
            }
    }
    return KMS_OK;
}
