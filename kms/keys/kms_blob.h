/*
 * kms_blob.h - the public ciphertext format and the canonical encoding of an
 * encryption context. docs/ciphertext-format.md is the byte-by-byte
 * reference; this file is its only implementation in the service.
 *
 * Format 2 (what Custos writes):
 *
 *   off  len  field
 *   0    1    magic 0xC5
 *   1    1    format version 0x02
 *   2    1    region length R (1..63)
 *   3    R    region, ASCII
 *   3+R  16   key id (the 16 bytes behind the 32-hex key_id)
 *   19+R 4    key version, big-endian
 *   23+R 12   IV
 *   35+R 1    kind: what made the plaintext (enum kms_blob_kind)
 *   36+R n    AES-256-GCM ciphertext
 *   ..   16   GCM tag
 *
 * Format 1 (read only) is the same without the kind byte: header 35+R.
 *
 * AAD = header (everything before the ciphertext) || canonical context. The
 * region is in the header, so a ciphertext presented to a key of another
 * region fails to authenticate even if key ids collided; the kind is in the
 * header, so a message ciphertext cannot be passed off as a wrapped data key
 * (or the reverse) without the tag failing.
 */
#ifndef KMS_BLOB_H
#define KMS_BLOB_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_keyid.h"

#define KMS_BLOB_MAGIC 0xC5
#define KMS_BLOB_VERSION 0x02 /* the format written */
#define KMS_BLOB_VERSION_1 0x01 /* still read; no kind byte */
#define KMS_BLOB_KEY_ID_LEN 16
#define KMS_BLOB_IV_LEN 12
#define KMS_BLOB_TAG_LEN 16
#define KMS_BLOB_REGION_MAX 63
#define KMS_BLOB_HEADER_MAX (3 + KMS_BLOB_REGION_MAX + 16 + 4 + 12 + 1)

/* Plaintext limit of Encrypt, and so of a blob. */
#define KMS_PLAINTEXT_MAX 65536
#define KMS_BLOB_MAX (KMS_BLOB_HEADER_MAX + KMS_PLAINTEXT_MAX + KMS_BLOB_TAG_LEN)

/* Encryption context limits. */
#define KMS_CTX_MAX_PAIRS 64
#define KMS_CTX_KEY_MAX 128
#define KMS_CTX_VALUE_MAX 1024
#define KMS_CTX_TOTAL_MAX 8192
/* Canonical encoding: 2-byte count, then per pair 2+k+2+v bytes. */
#define KMS_CTX_ENCODED_MAX (2 + KMS_CTX_MAX_PAIRS * 4 + KMS_CTX_TOTAL_MAX)

/* What made a blob's plaintext, byte 35+R of format 2. Each operation that
 * opens a blob accepts only its own kind (kms_envelope.c). */
enum kms_blob_kind {
    /* Origin unknown: every format 1 blob, and a format 2 blob that
     * ReEncrypt made from one (it cannot know either). Opening one takes
     * both Decrypt and DecryptDataKey on the key. */
    KMS_BLOB_KIND_LEGACY = 0x00,
    KMS_BLOB_KIND_DATA = 0x01,     /* Encrypt: opened by Decrypt */
    KMS_BLOB_KIND_DATA_KEY = 0x02, /* GenerateDataKey: opened by DecryptDataKey */
};

/* "legacy", "data", "data key"; "?" for anything else. */
const char *kms_blob_kind_name(enum kms_blob_kind kind);

struct kms_blob_header {
    uint8_t format;          /* KMS_BLOB_VERSION or KMS_BLOB_VERSION_1 */
    enum kms_blob_kind kind; /* format 1: always KMS_BLOB_KIND_LEGACY */
    char region[KMS_BLOB_REGION_MAX + 1];
    uint8_t key_id[KMS_BLOB_KEY_ID_LEN];
    uint32_t version;
    uint8_t iv[KMS_BLOB_IV_LEN];
};

/* Serialise the header into out (>= KMS_BLOB_HEADER_MAX); *out_len gets its
 * length. h->format says which format; format 1 (for tests and tools that
 * must make what older releases made) takes only KMS_BLOB_KIND_LEGACY. */
kms_err kms_blob_write_header(const struct kms_blob_header *h, uint8_t *out, size_t *out_len);

/* Parse a blob of format 2 or 1: header fields into *h, header length (=
 * start of the GCM ciphertext) into *out_header_len. An unknown kind byte is
 * refused here; whether the kind suits the operation is the caller's check.
 * The body (ciphertext||tag) is what follows; it must be at least a tag long. Every malformed input is
 * KMS_ERR_BAD_CIPHERTEXT with a detail saying what was wrong. */
kms_err kms_blob_parse(const uint8_t *blob, size_t len, struct kms_blob_header *h,
                       size_t *out_header_len);

/* One context pair as protobuf-c's map entries lay it out. */
struct kms_ctx_pair {
    const char *key;
    const char *value;
};

/* Validate pairs against the limits (count, sizes, UTF-8, no duplicate
 * keys) and write the canonical encoding (pairs sorted bytewise by key) to
 * out (>= KMS_CTX_ENCODED_MAX). KMS_ERR_INVALID_ARGUMENT names the bad pair
 * by index, never by content. */
kms_err kms_ctx_encode(const struct kms_ctx_pair *pairs, size_t n, uint8_t *out, size_t *out_len);

#endif
