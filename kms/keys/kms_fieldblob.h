/*
 * kms_fieldblob.h - the public per-field ciphertext format of FieldService
 * and the exact byte strings that are authenticated or fed to the HSM's
 * HMAC. docs/metadata.md is the byte-by-byte reference, with a
 * worked example that tests/unit/test_kms_fields.c checks against this code
 * and against OpenSSL alone. Pure host code: no HSM, no allocation.
 *
 * Field blob, version 1 (integers big-endian):
 *
 *   off  len  field
 *   0    1    format      0xF1 (field blob, version 1)
 *   1    1    mode        0x01 randomized, 0x02 deterministic
 *   2    4    key version 1, 2, ...
 *   6    12   IV
 *   18   n    AES-256-GCM ciphertext of the value (n = value length)
 *   18+n 16   GCM tag
 *
 * The key id and region are not in the blob: the caller names the key in
 * every request, and a blob offered to another key fails to authenticate.
 *
 *   AAD      = header (bytes 0..18) || u8 len(name) || name || canonical(ctx)
 *   IV input = u8 18 || "custos/field-iv/v1" || u32 version
 *              || u8 len(name) || name || canonical(ctx) || u32 len(v) || v
 *   IV       = HMAC-SHA256(K_hmac[version], IV input)[0..12)
 *   idx input= u8 21 || "custos/blind-index/v1" || u8 canonicalizer
 *              || u8 len(name) || name || u32 len(cv) || cv
 *   index    = leftmost length_bits of HMAC-SHA256(K_hmac[version], idx input)
 *
 * canonical(ctx) is the encryption-context encoding of
 * docs/ciphertext-format.md (kms_ctx_encode). Every part is length-prefixed
 * or fixed-size, so each input is an injective encoding of its fields, and
 * the two labels (different lengths, so different first bytes) keep IV
 * inputs and index inputs apart although they use one HMAC key.
 */
#ifndef KMS_FIELDBLOB_H
#define KMS_FIELDBLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_blob.h"
#include "kms_error.h"

#define KMS_FIELD_FORMAT 0xF1
#define KMS_FIELD_HEADER_LEN 18
#define KMS_FIELD_IV_LEN 12
#define KMS_FIELD_TAG_LEN 16
#define KMS_FIELD_OVERHEAD (KMS_FIELD_HEADER_LEN + KMS_FIELD_TAG_LEN)

/* Request limits (fields.proto states the same). */
#define KMS_FIELD_NAME_MAX 64
#define KMS_FIELD_VALUE_MAX 4096
#define KMS_FIELDS_MAX 32
#define KMS_FIELDS_TOTAL_MAX 65536
#define KMS_FIELD_BLOB_MAX (KMS_FIELD_VALUE_MAX + KMS_FIELD_OVERHEAD)
/* BlindIndex: HMAC calls per request (versions x values). */
#define KMS_INDEX_OPS_MAX 256
#define KMS_INDEX_BITS_MIN 8
#define KMS_INDEX_BITS_MAX 256
#define KMS_INDEX_BITS_DEFAULT 128

#define KMS_FIELD_IV_LABEL "custos/field-iv/v1"
#define KMS_FIELD_INDEX_LABEL "custos/blind-index/v1"

/* Largest AAD, IV input and index input. */
#define KMS_FIELD_AAD_MAX (KMS_FIELD_HEADER_LEN + 1 + KMS_FIELD_NAME_MAX + KMS_CTX_ENCODED_MAX)
#define KMS_FIELD_IV_INPUT_MAX                                                                     \
    (1 + sizeof(KMS_FIELD_IV_LABEL) + 4 + 1 + KMS_FIELD_NAME_MAX + KMS_CTX_ENCODED_MAX + 4 +        \
     KMS_FIELD_VALUE_MAX)
#define KMS_FIELD_INDEX_INPUT_MAX                                                                  \
    (1 + sizeof(KMS_FIELD_INDEX_LABEL) + 1 + 1 + KMS_FIELD_NAME_MAX + 4 + KMS_FIELD_VALUE_MAX)

/* Numeric values are on the wire (fields.proto FieldMode) and in blobs. */
enum kms_field_mode {
    KMS_FIELD_RANDOMIZED = 1,
    KMS_FIELD_DETERMINISTIC = 2,
};

/* 1..KMS_FIELD_NAME_MAX bytes of [A-Za-z0-9._:/-]. KMS_ERR_INVALID_ARGUMENT
 * with a detail that does not repeat the name. */
kms_err kms_field_name_check(const char *name, size_t len);

/* The 18-byte header. */
void kms_field_header_write(enum kms_field_mode mode, uint32_t version,
                            const uint8_t iv[KMS_FIELD_IV_LEN], uint8_t out[KMS_FIELD_HEADER_LEN]);

/* Parse a blob's header. The body (ciphertext || tag) follows it and is at
 * least a tag long. Every malformed blob is KMS_ERR_BAD_CIPHERTEXT. *out_iv
 * points into blob. */
kms_err kms_field_blob_parse(const uint8_t *blob, size_t len, enum kms_field_mode *out_mode,
                             uint32_t *out_version, const uint8_t **out_iv);

/* AAD of a field into out (>= KMS_FIELD_AAD_MAX). */
kms_err kms_field_aad(const uint8_t header[KMS_FIELD_HEADER_LEN], const char *name,
                      size_t name_len, const uint8_t *ctx, size_t ctx_len, uint8_t *out,
                      size_t out_cap, size_t *out_len);

/* Deterministic IV input into out (>= KMS_FIELD_IV_INPUT_MAX). */
kms_err kms_field_iv_input(uint32_t version, const char *name, size_t name_len,
                           const uint8_t *ctx, size_t ctx_len, const uint8_t *value,
                           size_t value_len, uint8_t *out, size_t out_cap, size_t *out_len);

/* Blind index input into out (>= KMS_FIELD_INDEX_INPUT_MAX). */
kms_err kms_field_index_input(int canonicalizer, const char *name, size_t name_len,
                              const uint8_t *cv, size_t cv_len, uint8_t *out, size_t out_cap,
                              size_t *out_len);

/* Truncate a 32-byte MAC to its leftmost `bits` bits (8..256) in place:
 * returns the index length in bytes, ceil(bits/8); unused low bits of the
 * last byte are zeroed, the rest of mac is wiped. */
size_t kms_field_index_truncate(uint8_t mac[32], unsigned bits);

#endif
