/*
 * kms_linktoken.h - the link token's bytes and the MAC's input
 * (docs/link-tokens.md, "Token format"). Pure host code: no HSM, no store;
 * kms_links.c computes the MACs in the HSM over what this encodes. The
 * parser faces untrusted input (tests/fuzz/fuzz_linktoken.c).
 *
 * Token, 36 bytes, sent as 48 characters of base64url without padding:
 *   0      format (1)
 *   1..2   key version, big-endian (1..65535)
 *   3..14  token id (96 random bits)
 *   15..19 expiry, Unix seconds, big-endian 40-bit
 *   20..35 MAC: HMAC-SHA256 in the HSM over kms_linktoken_mac_input,
 *          truncated to its first 128 bits
 */
#ifndef KMS_LINKTOKEN_H
#define KMS_LINKTOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

#define KMS_LINKTOKEN_FORMAT 1
#define KMS_LINKTOKEN_RAW_LEN 36
#define KMS_LINKTOKEN_TEXT_LEN 48
#define KMS_LINKTOKEN_ID_LEN 12
#define KMS_LINKTOKEN_MAC_LEN 16
#define KMS_LINKTOKEN_VERSION_MAX 65535
#define KMS_LINKTOKEN_EXPIRY_MAX ((int64_t)0xffffffffff)
/* The longest MAC input: kms_linktoken_mac_input's bounds below. */
#define KMS_LINKTOKEN_MAC_INPUT_MAX 640
#define KMS_LINKTOKEN_RECIPIENT_INPUT_MAX 64

struct kms_linktoken {
    uint32_t key_version;
    uint8_t id[KMS_LINKTOKEN_ID_LEN];
    int64_t expires_at;
    uint8_t mac[KMS_LINKTOKEN_MAC_LEN];
};

/* The 36 bytes of t. INVALID_ARGUMENT for a version or expiry out of
 * range. */
kms_err kms_linktoken_raw(const struct kms_linktoken *t, uint8_t out[KMS_LINKTOKEN_RAW_LEN]);

/* The 48 characters (and a NUL) of t. */
kms_err kms_linktoken_encode(const struct kms_linktoken *t, char out[KMS_LINKTOKEN_TEXT_LEN + 1]);

/* Parse exactly len bytes of text: 48 base64url characters of a format-1
 * token with a version >= 1. Anything else is KMS_ERR_INVALID_ARGUMENT
 * with a detail that never repeats the input. *out_raw (may be NULL) gets
 * the decoded bytes. */
kms_err kms_linktoken_decode(const char *text, size_t len, struct kms_linktoken *out,
                             uint8_t out_raw[KMS_LINKTOKEN_RAW_LEN]);

/* What the MAC binds. Strings are NUL-terminated; lengths are bounded:
 * tenant and region <= 64, key_id 32, purpose <= 64, phone <= 16 (E.164
 * with its '+'), message_ref <= 128 bytes. */
struct kms_linkmac {
    const char *tenant;
    const char *key_id;
    const char *region;
    uint32_t key_version;
    const uint8_t *id; /* KMS_LINKTOKEN_ID_LEN */
    int64_t expires_at;
    const char *purpose;
    const char *phone;
    const uint8_t *device_sha256; /* 32 bytes */
    const char *message_ref;
};

/* The domain-separated encoding the MAC is computed over:
 *   "custos.link-token.v1" 0x00, format (1 byte), key version (4), id (12),
 *   expiry (8), then tenant, key_id, region, purpose, phone, message_ref
 *   each as a 2-byte big-endian length and its bytes, then the device
 *   value's SHA-256 (32).
 * Lengths make the encoding injective: no two inputs share it. */
kms_err kms_linktoken_mac_input(const struct kms_linkmac *m, uint8_t *out, size_t cap,
                                size_t *out_len);

/* The blind index input of a recipient: "custos.link-recipient.v1" 0x00
 * and the canonical phone. A different domain from the MAC's, so an index
 * never equals a token's MAC. */
kms_err kms_linktoken_recipient_input(const char *phone, uint8_t *out, size_t cap, size_t *out_len);

/* Token ids as 24 lowercase hex digits, and back (exactly that form). */
void kms_linktoken_id_hex(const uint8_t id[KMS_LINKTOKEN_ID_LEN],
                          char out[2 * KMS_LINKTOKEN_ID_LEN + 1]);
bool kms_linktoken_id_parse(const char *hex, uint8_t out[KMS_LINKTOKEN_ID_LEN]);

#endif
