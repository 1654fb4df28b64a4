/*
 * p11_asym_internal.h - what the p11_asym*.c files share; not for callers
 * outside pkcs11/ (they use p11_asym.h).
 *
 *   p11_asym.c         kinds, capability check, the templates of both
 *                      halves, the read-back checks
 *   p11_asym_gen.c     generation (with the retry of a transient failure)
 *                      and inspection of a pair's attributes
 *   p11_asym_spki.c    SPKI export, and an SPKI's public values for a restore
 *   p11_asym_sign.c    sign and verify of SHA-256 digests (DER <-> raw ECDSA)
 *   p11_asym_escrow.c  escrow wrap, lock and restore of the private half
 */
#ifndef P11_ASYM_INTERNAL_H
#define P11_ASYM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p11_asym.h"
#include "p11_internal.h"

/* ---- kinds (p11_asym.c) ---- */

bool p11_asym_kind_valid(enum p11_asym_kind kind);
bool p11_asym_alg_valid(enum p11_sig_alg alg);
bool p11_asym_kind_is_ec(enum p11_asym_kind kind);

/* ---- templates (p11_asym.c) ---- */

#define P11_ASYM_TMPL_MAX 24

struct p11_asym_tmpl {
    CK_ATTRIBUTE a[P11_ASYM_TMPL_MAX];
    CK_ULONG n;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_ULONG bits;
};

enum p11_asym_tmpl_use { P11_ASYM_FOR_GENERATE, P11_ASYM_FOR_UNWRAP };

/* Append one attribute (value must outlive the template's use). */
void p11_asym_tmpl_add(struct p11_asym_tmpl *t, CK_ATTRIBUTE_TYPE type, void *value,
                       CK_ULONG len);
/* Private half: sensitive, CKA_SIGN only; extractable and modifiable only
 * when `escrow` (one wrap, then p11_asym_lock). CKA_MODIFIABLE is last. */
void p11_asym_tmpl_private(struct p11_asym_tmpl *t, enum p11_asym_kind kind,
                           const struct p11_key_id *id, const char *label, bool escrow,
                           enum p11_asym_tmpl_use use);
/* Public half: CKA_VERIFY only; CKA_MODIFIABLE is last. For a restore the
 * caller inserts the key's own values before it. */
void p11_asym_tmpl_public(struct p11_asym_tmpl *t, enum p11_asym_kind kind,
                          const struct p11_key_id *id, const char *label,
                          enum p11_asym_tmpl_use use);

/* ---- read-back checks (p11_asym.c) ---- */

/* The token holds what the templates asked for, and the key's size. */
kms_err p11_asym_check_private(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                               enum p11_asym_kind kind, bool escrow, bool generated);
kms_err p11_asym_check_public(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              enum p11_asym_kind kind);

/* ---- generation (p11_asym_gen.c) ---- */

/* KMS_ERR_ALREADY_EXISTS when a private key already has this id. */
kms_err p11_asym_refuse_existing(struct p11_token *tok, CK_SESSION_HANDLE s,
                                 const struct p11_key_id *id);

/* ---- SPKI (p11_asym_spki.c) ---- */

/* A public half's values as PKCS#11 takes them. */
struct p11_asym_pub_values {
    uint8_t a[600], b[16]; /* DER EC point (OCTET STRING) or modulus; exponent */
    size_t a_len, b_len;
};

/* The public values of a DER SubjectPublicKeyInfo, checked against kind. */
kms_err p11_asym_spki_values(enum p11_asym_kind kind, const uint8_t *spki, size_t spki_len,
                             struct p11_asym_pub_values *out);

/* ---- sign and verify in a session (p11_asym_sign.c) ---- */

/* Sign digest with private handle h; sig holds *sig_len bytes. */
kms_err p11_asym_sign_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         enum p11_sig_alg alg, const uint8_t *digest, uint8_t *sig,
                         size_t *sig_len);
/* *out_valid false (and KMS_OK) for a signature that does not verify. */
kms_err p11_asym_verify_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                           enum p11_sig_alg alg, const uint8_t *digest, const uint8_t *sig,
                           size_t sig_len, bool *out_valid);

#endif
