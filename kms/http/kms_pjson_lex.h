/*
 * kms_pjson_lex.h - the lexical rules of the proto3 JSON mapping that do
 * not depend on a message: field-name spellings, the shape protoc gives a
 * map field, decimal integer strings, lenient base64, and the passes over
 * the raw text before jansson parses it. Used by the JSON
 * reader (kms_pjson.c) and renderer (kms_pjson_render.c).
 * Thread-safety: pure functions.
 */
#ifndef KMS_PJSON_LEX_H
#define KMS_PJSON_LEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "kms_error.h"
#include "kms_pbuf.h"

/* JSON nesting accepted before jansson builds a tree: a message level is at
 * most two JSON levels (an array of objects), plus the top object. */
#define KMS_PJSON_MAX_DEPTH (2 * KMS_PBUF_MAX_DEPTH + 1)
/* Structural tokens (strings, brackets, commas, colons) of one body: bounds
 * the tree jansson allocates (a few hundred bytes per value at most) far
 * below what a body of the size limit of "[{},{},...]" would build. The
 * largest legitimate request (1024 fields of EncryptFields) needs ~20k. */
#define KMS_PJSON_MAX_TOKENS 65536

/* true if key[0..klen-1] names the field proto_name: its proto name
 * ("key_id") or protoc's json_name ("keyId"). */
bool kms_pjson_name_is(const char *proto_name, const char *key, size_t klen);

/* true if f is a map<K, V> field (as protoc builds it: a repeated
 * <Name>Entry message of key = 1, value = 2). */
bool kms_pjson_is_map(const ProtobufCFieldDescriptor *f);

/* A decimal integer in s[0..n-1]: optional '-', 1..20 digits, nothing else,
 * no overflow of *mag. */
bool kms_pjson_parse_dec(const char *s, size_t n, bool *neg, uint64_t *mag);

/* Standard or URL-safe base64 (not both in one value), padding optional
 * but complete when present, into out (room for n / 4 * 3 + 3 bytes). */
bool kms_pjson_b64_decode(const char *s, size_t n, uint8_t *out, size_t *out_len);

/* What a "\u0000" in an object key is parsed as (kms_pjson_unnul_keys). */
#define KMS_PJSON_KEY_NUL '\x01'

enum kms_pjson_scan {
    KMS_PJSON_SCAN_OK,
    KMS_PJSON_SCAN_TOO_DEEP, /* nested deeper than KMS_PJSON_MAX_DEPTH */
    KMS_PJSON_SCAN_TOO_MANY, /* more than KMS_PJSON_MAX_TOKENS tokens */
};

/* Bound the tree jansson would build from p[0..n-1], before it builds it:
 * nesting depth and structural tokens. */
enum kms_pjson_scan kms_pjson_prescan(const uint8_t *p, size_t n);

/* jansson refuses a NUL in an object key: a copy of p[0..n-1] in *out_copy
 * (malloc'd, n bytes; the caller wipes it) in which every "\u0000" of an
 * object key reads "\u0001" (KMS_PJSON_KEY_NUL); *out_copy stays NULL when
 * no key holds one. KMS_ERR_NOMEM only. */
kms_err kms_pjson_unnul_keys(const uint8_t *p, size_t n, uint8_t **out_copy);

#endif
