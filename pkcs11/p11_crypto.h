/*
 * p11_crypto.h - cryptographic operations inside a token.
 *
 * Every function leases a session from the token's pool, resolves the key by
 * CKA_ID through the handle cache, and retries once on a lost session. On
 * failure no output is produced: output buffers are wiped and lengths set to
 * zero. Keys are named by id; their kind decides what the token allows (a
 * wrap key refuses to encrypt, and the token, not this layer, says so).
 */
#ifndef P11_CRYPTO_H
#define P11_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "p11_key.h"
#include "p11_token.h" /* p11_random */

#define P11_GCM_IV_LEN 12
#define P11_GCM_TAG_LEN 16
/* Upper bound on one GCM message; the service's own limits are lower. */
#define P11_GCM_MAX_INPUT (1u << 24)

/* AES-256-GCM encrypt with a P11_KEY_AES_ENCRYPT key. iv must be 12 bytes;
 * callers that want the HSM to choose pass a buffer filled by p11_random.
 * out receives ciphertext || 16-byte tag; out_cap >= pt_len + 16. */
kms_err p11_gcm_encrypt(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *iv,
                        size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *pt,
                        size_t pt_len, uint8_t *out, size_t out_cap, size_t *out_len);

/* AES-256-GCM decrypt of ciphertext || tag. KMS_ERR_BAD_CIPHERTEXT when the
 * tag does not verify (and then out holds nothing). out_cap >= ct_len - 16. */
kms_err p11_gcm_decrypt(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *iv,
                        size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                        size_t ct_len, uint8_t *out, size_t out_cap, size_t *out_len);

/* RFC 5649 AES key wrap with padding of `target` under `wrapping` (a
 * P11_KEY_AES_WRAP key). target must be extractable. out_cap >= 40 for a
 * 256-bit key. */
kms_err p11_kwp_wrap(struct p11_token *tok, const struct p11_key_id *wrapping,
                     const struct p11_key_id *target, uint8_t *out, size_t out_cap,
                     size_t *out_len);

/* RFC 5649 unwrap of `wrapped` under `unwrapping` (P11_KEY_AES_WRAP or
 * P11_KEY_AES_TRANSPORT) into a new key of `kind` with id new_id, made with
 * the kind's template and checked after. */
kms_err p11_kwp_unwrap(struct p11_token *tok, const struct p11_key_id *unwrapping,
                       const uint8_t *wrapped, size_t wrapped_len, enum p11_key_kind kind,
                       unsigned flags, const struct p11_key_id *new_id, const char *label);

enum p11_oaep_hash {
    P11_OAEP_SHA1 = 1,   /* MGF1-SHA1; the only one SoftHSMv2 2.6.1 accepts */
    P11_OAEP_SHA256 = 2, /* MGF1-SHA256 */
};

/* RSAES-OAEP unwrap with a P11_KEY_RSA3072_UNWRAP private key into a new key
 * of `kind`. KMS_ERR_UNSUPPORTED when the token refuses the hash. */
kms_err p11_oaep_unwrap(struct p11_token *tok, const struct p11_key_id *rsa,
                        enum p11_oaep_hash hash, const uint8_t *wrapped, size_t wrapped_len,
                        enum p11_key_kind kind, unsigned flags, const struct p11_key_id *new_id,
                        const char *label);

/* CKM_RSA_AES_KEY_WRAP in one call: `wrapped` is the OAEP block of an
 * ephemeral AES-256 key followed by the RFC 5649 wrap of a 256-bit key under
 * it (424 bytes for RSA-3072); the token unwraps both internally and the
 * ephemeral key never exists as an object. KMS_ERR_UNSUPPORTED, touching
 * nothing, when the token lacks the mechanism (SoftHSMv2 2.6.1 does; the
 * two-step p11_oaep_unwrap + p11_kwp_unwrap is the fallback). */
kms_err p11_rsa_aes_unwrap(struct p11_token *tok, const struct p11_key_id *rsa,
                           enum p11_oaep_hash hash, const uint8_t *wrapped, size_t wrapped_len,
                           enum p11_key_kind kind, unsigned flags, const struct p11_key_id *new_id,
                           const char *label);

/* Does the token accept SHA-256 in OAEP with this RSA key? Asked once, by an
 * unwrap of a deliberately invalid block, and remembered per token. */
kms_err p11_oaep_sha256_supported(struct p11_token *tok, const struct p11_key_id *rsa,
                                  bool *out_supported);

/* HMAC-SHA256 with a P11_KEY_HMAC_SHA256 key. */
kms_err p11_hmac_sha256(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *data,
                        size_t len, uint8_t out[32]);

/* ECDSA P-256 signature of a 32-byte digest, as raw r || s (64 bytes). */
kms_err p11_ecdsa_sign(struct p11_token *tok, const struct p11_key_id *key,
                       const uint8_t digest[32], uint8_t out_raw[64]);

/* Raw r || s to DER (ECDSA-Sig-Value), as OpenSSL and `openssl dgst -verify`
 * expect. out_cap >= 72. Pure host code. */
kms_err p11_ecdsa_raw_to_der(const uint8_t raw[64], uint8_t *out, size_t out_cap,
                             size_t *out_len);

/* DER SubjectPublicKeyInfo of the public half of an EC or RSA pair. The
 * caller frees *out_der. */
kms_err p11_public_key_der(struct p11_token *tok, const struct p11_key_id *key,
                           uint8_t **out_der, size_t *out_len);

/* Escrow at birth, then lock: wrap an escrowable key under `escrow` (a
 * P11_KEY_AES_WRAP key) and make it non-extractable. If the wrap fails, the
 * key stays as it was and the caller destroys it; if the lock fails, the
 * blob is wiped and not returned. */
kms_err p11_escrow_and_lock(struct p11_token *tok, const struct p11_key_id *escrow,
                            const struct p11_key_id *key, uint8_t *out_blob, size_t out_cap,
                            size_t *out_len);

/* Escrow wrap of one object of a version, named by kind (an AES_256 version
 * is one AES key; a METADATA version an AES and an HMAC key under one id):
 * RFC 5649 under `escrow` (P11_KEY_AES_ESCROW). The object must be
 * escrowable (still extractable); the caller locks it after storing the
 * blob (p11_key_lock_kind). out_cap >= 40. */
kms_err p11_escrow_wrap(struct p11_token *tok, const struct p11_key_id *escrow,
                        const struct p11_key_id *key, enum p11_key_kind kind, uint8_t *out_blob,
                        size_t out_cap, size_t *out_len);

#endif
