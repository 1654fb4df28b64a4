/*
 * p11_tls_key.h - kmsd's own TLS private key, held in one of its tokens.
 *
 * The key is named by an RFC 7512 URI ("pkcs11:token=custos-eu-west;
 * object=kmsd-tls", or id=%01%02 instead of object=): the URI's token
 * attributes (token, serial, manufacturer, model) choose among the tokens
 * kmsd has already opened and logged in to, its object attributes (object
 * = CKA_LABEL, id = CKA_ID) the private key. The PIN is the token's own
 * (its "pin" setting): a URI carrying pin-value or pin-source is refused.
 * The key is not one of Custos's tenant keys (it has no 16-byte Custos id
 * and no "custos:key:" label): it is found by C_FindObjects on its label
 * and id, once; its handle is then kept in the token's handle cache under
 * a derived id, so it is found again whenever the pool drops cached
 * handles (a lost session, a module re-initialisation).
 *
 * Signing takes what a TLS library hands its external keys: ECDSA over a
 * digest (the token returns r||s, the caller gets DER), RSASSA-PSS over a
 * digest (salt length = digest length, as TLS 1.3 requires), RSASSA-PKCS1
 * v1.5 over a DigestInfo (checked to be one for SHA-256/384/512).
 *
 * Thread-safety: p11_tls_key_sign may be called from any thread at once
 * (each call leases its own session). The token must outlive the key.
 */
#ifndef P11_TLS_KEY_H
#define P11_TLS_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "p11_token.h"

struct p11_tls_key;

enum p11_tls_key_type {
    P11_TLS_KEY_EC_P256 = 1,
    P11_TLS_KEY_RSA, /* 2048..8192 bits */
};

enum p11_tls_hash { P11_TLS_SHA256 = 1, P11_TLS_SHA384, P11_TLS_SHA512 };

enum p11_tls_sig {
    P11_TLS_SIG_ECDSA = 1, /* in: digest of `hash`; out: DER ECDSA-Sig-Value */
    P11_TLS_SIG_RSA_PSS,   /* in: digest of `hash`; MGF1 with the same hash */
    P11_TLS_SIG_RSA_PKCS1, /* in: DER DigestInfo of `hash` (hash is checked) */
};

/* Longest signature p11_tls_key_sign writes (RSA-8192). */
#define P11_TLS_SIG_MAX 1024
/* Longest URI accepted. */
#define P11_TLS_URI_MAX 1024

/* Find the private key `uri` names among tokens[0..n) (NULL entries are
 * skipped). Exactly one token of those the URI's token attributes match
 * must hold exactly one private key matching its object attributes, and
 * the key must be able to sign and be EC P-256 or RSA 2048..8192.
 * KMS_ERR_CONFIG with a detail naming what is wrong (bad syntax, no such
 * token, no such object, two objects, wrong type); never the PIN. */
kms_err p11_tls_key_open(struct p11_token *const *tokens, size_t n, const char *uri,
                         struct p11_tls_key **out);

/* NULL is a no-op. */
void p11_tls_key_free(struct p11_tls_key *key);

enum p11_tls_key_type p11_tls_key_type(const struct p11_tls_key *key);
unsigned p11_tls_key_bits(const struct p11_tls_key *key);
struct p11_token *p11_tls_key_token(const struct p11_tls_key *key);

/* Sign `in` as `sig` says. *sig_len: in, the size of out (at least
 * P11_TLS_SIG_MAX is always enough); out, the signature's length.
 * KMS_ERR_INVALID_ARGUMENT when the algorithm does not fit the key or the
 * input is not a digest (or DigestInfo) of `hash`. */
kms_err p11_tls_key_sign(struct p11_tls_key *key, enum p11_tls_sig sig, enum p11_tls_hash hash,
                         const uint8_t *in, size_t in_len, uint8_t *out, size_t *sig_len);

#endif
