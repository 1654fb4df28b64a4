/*
 * p11_escrow.h - recovery of escrowed keys inside the HSM.
 *
 * Escrow at birth is p11_escrow_wrap + p11_key_lock_kind (p11_crypto.h,
 * p11_key.h). Recovery takes an escrow blob back into the token it was made
 * in, in one of two ways:
 *
 *   restore: p11_kwp_unwrap(escrow key, blob, kind, 0, id, label) makes the
 *            version again as a token object with its kind's template:
 *            sensitive, non-extractable, never able to wrap.
 *   export:  p11_escrow_export below re-wraps the key for a recipient RSA
 *            public key, in the BYOK wrapping format, without the key ever
 *            leaving the HSM in plaintext.
 */
#ifndef P11_ESCROW_H
#define P11_ESCROW_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_key.h"

/* Largest export: the OAEP block of a 4096-bit recipient + 40 bytes. */
#define P11_EXPORT_MAX (512 + 40)

/*
 * Re-wrap the AES-256 key in an escrow blob for a recipient, all inside one
 * session of the token:
 *   1. the recipient's RSA public key (DER SubjectPublicKeyInfo, 2048..4096
 *      bits) becomes a session object that can only wrap;
 *   2. the blob is unwrapped under `escrow` into a session object that is
 *      sensitive, extractable and can do nothing else;
 *   3. a fresh AES-256 session key E is generated, wrapped with RSA-OAEP for
 *      the recipient, and the key is wrapped under E with RFC 5649;
 *   4. all three session objects are destroyed, whatever happened.
 * out receives OAEP(E) || KWP(E, key) (the BYOK format of docs/byok.md);
 * *out_hash the OAEP hash used (SHA-256 where the token accepts it, else
 * SHA-1). On failure nothing is output.
 */
kms_err p11_escrow_export(struct p11_token *tok, const struct p11_key_id *escrow,
                          const uint8_t *blob, size_t blob_len, const uint8_t *recipient_spki,
                          size_t spki_len, uint8_t *out, size_t out_cap, size_t *out_len,
                          enum p11_oaep_hash *out_hash);

#endif
