/*
 * p11_asym.h - asymmetric signing key pairs in a token (issue 16):
 * ECDSA P-256 and RSA 2048/3072/4096, generated in the HSM, signing and
 * verifying SHA-256 digests there.
 *
 * One key version is one pair under one CKA_ID: the private half
 * (CKO_PRIVATE_KEY: sensitive, CKA_SIGN only, never extractable unless
 * escrow wraps it once at birth and then locks it) and the public half
 * (CKO_PUBLIC_KEY: CKA_VERIFY only). p11_key_destroy(id) removes both.
 * Callers pass digests, never messages: hashing is the caller's (kmsd
 * hashes a RAW message with OpenSSL); the HSM only sees 32 bytes, so one
 * mechanism per algorithm serves every message length.
 *
 * Every function leases a session from the token's pool, resolves the
 * halves by CKA_ID through the handle cache and retries once on a lost
 * session (p11_with_session). Thread-safe.
 */
#ifndef P11_ASYM_H
#define P11_ASYM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "p11_key.h"

enum p11_asym_kind {
    P11_ASYM_EC_P256,
    P11_ASYM_RSA_2048,
    P11_ASYM_RSA_3072,
    P11_ASYM_RSA_4096,
};

enum p11_sig_alg {
    P11_SIG_ECDSA_SHA256,     /* CKM_ECDSA over the digest; DER Ecdsa-Sig-Value */
    P11_SIG_RSA_PSS_SHA256,   /* CKM_RSA_PKCS_PSS, SHA-256, MGF1-SHA-256, salt 32 */
    P11_SIG_RSA_PKCS1_SHA256, /* CKM_RSA_PKCS over the DER DigestInfo (RFC 8017 9.2) */
};

/* Largest signature any kind makes: RSA-4096 (512 bytes); ECDSA P-256 DER
 * is at most 72. Output buffers of this size always suffice. */
#define P11_ASYM_SIG_MAX 512
/* The only digest length: SHA-256. */
#define P11_ASYM_DIGEST_LEN 32
/* Largest escrow blob of a private key: RFC 5649 of the PKCS#8 encoding of
 * an RSA-4096 key (~2.4 KB) with room to spare. */
#define P11_ASYM_ESCROW_MAX 4096

/* "ECDSA P-256", "RSA-3072", ...; "unknown" for anything else. */
const char *p11_asym_kind_name(enum p11_asym_kind kind);
/* "ECDSA_SHA_256", "RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_256". */
const char *p11_sig_alg_name(enum p11_sig_alg alg);
/* Modulus (RSA) or field (EC) size in bits. */
unsigned p11_asym_kind_bits(enum p11_asym_kind kind);
/* True when alg suits keys of kind: ECDSA for EC, the two RSASSA for RSA. */
bool p11_sig_alg_fits(enum p11_asym_kind kind, enum p11_sig_alg alg);

/* Can the token generate this kind and sign and verify with it? Asks the
 * mechanism list and info read at open (C_GetMechanismList/Info): the pair
 * generation mechanism with CKF_GENERATE_KEY_PAIR and a key size range
 * holding the kind's size, and each signing mechanism of the kind with
 * CKF_SIGN and CKF_VERIFY and the same size range. KMS_ERR_UNSUPPORTED
 * (failed_precondition) naming the first missing mechanism otherwise.
 * Touches nothing: callers ask before any state changes. */
kms_err p11_asym_supported(struct p11_token *tok, enum p11_asym_kind kind);

/* Generate a pair of `kind` under id (a fresh id from p11_key_id_new).
 * label (<= 64 bytes, no secret) becomes CKA_LABEL of both halves.
 * escrow_wrappable: the private half is made extractable and modifiable so
 * that p11_asym_escrow_wrap can wrap it once under the region's escrow key;
 * the caller then calls p11_asym_lock (one-way). Otherwise it is
 * non-extractable and unmodifiable from birth. Both halves are read back and
 * checked against their templates; a pair that differs is destroyed and the
 * call fails (KMS_ERR_HSM). KMS_ERR_ALREADY_EXISTS when id already names a
 * pair. */
kms_err p11_asym_generate(struct p11_token *tok, enum p11_asym_kind kind,
                          const struct p11_key_id *id, const char *label, bool escrow_wrappable);

/* DER SubjectPublicKeyInfo of the pair's public half, built with OpenSSL
 * from CKA_EC_POINT (P-256) or CKA_MODULUS + CKA_PUBLIC_EXPONENT. The caller
 * frees *out_der with OPENSSL_free. KMS_ERR_NOT_FOUND when id names no
 * public key. */
kms_err p11_asym_public_spki(struct p11_token *tok, const struct p11_key_id *id,
                             uint8_t **out_der, size_t *out_len);

/* Sign a SHA-256 digest (digest_len must be 32) with the pair's private
 * half. sig has room for *sig_len bytes (P11_ASYM_SIG_MAX always suffices);
 * on success *sig_len is the signature's length. ECDSA signatures are DER.
 * On failure sig is wiped and *sig_len is 0. An algorithm that does not suit
 * the key's type is KMS_ERR_INVALID_ARGUMENT, checked here against
 * CKA_KEY_TYPE before the token sees it (SoftHSMv2 crashes on PSS with an
 * EC key); callers still check p11_sig_alg_fits first. */
kms_err p11_asym_sign_digest(struct p11_token *tok, const struct p11_key_id *id,
                             enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                             uint8_t *sig, size_t *sig_len);

/* Verify sig over a SHA-256 digest with the pair's public half, in the HSM
 * (C_Verify). A signature that does not verify (including a malformed or
 * non-canonical ECDSA DER, or one of the wrong length) gives KMS_OK with
 * *out_valid false; errors are kept for bad arguments (an algorithm that
 * does not suit the key: KMS_ERR_INVALID_ARGUMENT) and HSM failures. */
kms_err p11_asym_verify_digest(struct p11_token *tok, const struct p11_key_id *id,
                               enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                               const uint8_t *sig, size_t sig_len, bool *out_valid);

/* ---- escrow (docs/escrow.md) --------------------------------------------
 *
 * At birth, for tenants whose policy requires escrow: generate with
 * escrow_wrappable, p11_asym_escrow_wrap, store the blob, then p11_asym_lock.
 * The blob is RFC 5649 (CKM_AES_KEY_WRAP_PAD) of the private key's PKCS#8
 * encoding under the region's escrow key (P11_KEY_AES_ESCROW), made and
 * opened only inside the HSM. */

/* Wrap the (still extractable) private half under `escrow`. out_cap >=
 * P11_ASYM_ESCROW_MAX. On failure out is wiped and *out_len is 0. */
kms_err p11_asym_escrow_wrap(struct p11_token *tok, const struct p11_key_id *escrow,
                             const struct p11_key_id *id, uint8_t *out, size_t out_cap,
                             size_t *out_len);

/* Make the private half non-extractable (CKA_EXTRACTABLE false, read back).
 * The token makes this one-way. */
kms_err p11_asym_lock(struct p11_token *tok, const struct p11_key_id *id);

/* Restore a pair from an escrow blob into the token it was made in:
 * the private half is unwrapped under `escrow` with the generation
 * template (sensitive, non-extractable, CKA_SIGN only), the public half is
 * made again from spki (the version's SubjectPublicKeyInfo, which the
 * caller kept: a PKCS#8 EC key need not carry its public point), and the
 * two are proven to be one pair by a sign and verify of a fixed digest
 * before the call succeeds; on any failure neither half is left.
 * KMS_ERR_ALREADY_EXISTS when id already names a pair. */
kms_err p11_asym_restore(struct p11_token *tok, const struct p11_key_id *escrow,
                         const uint8_t *blob, size_t blob_len, enum p11_asym_kind kind,
                         const struct p11_key_id *id, const char *label, const uint8_t *spki,
                         size_t spki_len);

/* KMS_OK when the token can restore an escrowed private key of kind:
 * probed once per token and kind with the real path (an escrowable
 * `custos:probe` pair, wrapped under escrow, restored under a second id,
 * everything destroyed). KMS_ERR_UNSUPPORTED when the restore fails although
 * the pair was made and wrapped: NSS's softoken 3.87 unwraps a PKCS#8 EC
 * key only with a vendor attribute (CKR_TEMPLATE_INCOMPLETE) and sets
 * CKA_DECRYPT on an unwrapped RSA key against the template. Any earlier
 * failure is returned as it is and not remembered. Costs one key generation
 * of the kind (seconds for RSA-4096 on a soft token) the first time. */
kms_err p11_asym_restore_supported(struct p11_token *tok, const struct p11_key_id *escrow,
                                   enum p11_asym_kind kind);

/* Attributes of both halves read back, for checks and tests. */
struct p11_asym_info {
    struct p11_key_info priv; /* sign set; encrypt/wrap/verify read false */
    struct p11_key_info pub;  /* verify set; decrypt/unwrap/sign read false */
    bool priv_sign_recover, pub_verify_recover;
    unsigned long bits;       /* CKA_MODULUS_BITS of the public RSA half; 256 for EC */
};
kms_err p11_asym_info(struct p11_token *tok, const struct p11_key_id *id,
                      struct p11_asym_info *out);

#endif
