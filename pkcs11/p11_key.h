/*
 * p11_key.h - key objects in a token: kinds, templates, identity, lifecycle.
 *
 * Every key is one of a few kinds, and every kind has exactly one template,
 * built in p11_key_kind.c; callers never pass raw attributes. Templates are
 * defensive: CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE are true, every usage
 * attribute is set explicitly (SoftHSMv2 defaults unspecified
 * ENCRYPT/DECRYPT/WRAP/UNWRAP to true), and a key that can wrap or unwrap can
 * never encrypt or decrypt, and the reverse. After each create or unwrap the
 * attributes are read back and checked; a key whose attributes differ from its
 * template is destroyed and the call fails.
 *
 * A key is identified by a random 16-byte CKA_ID. Several objects may share
 * one id when they differ in class or key type: both halves of a pair, and
 * the AES and HMAC keys of a metadata key version (generated one after the
 * other under the same id). Lookups name the class and, for secret keys, the
 * key type, so those objects never shadow one another; destroy and list act
 * on the id and so on all of them. Handles are cached per token by (id,
 * class, type); the cache is cleared on session loss and all of an id's
 * entries are dropped on destroy.
 */
#ifndef P11_KEY_H
#define P11_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

struct p11_token;

#define P11_KEY_ID_LEN 16

struct p11_key_id {
    uint8_t b[P11_KEY_ID_LEN];
};

enum p11_key_kind {
    P11_KEY_AES_ENCRYPT = 1, /* AES-256: encrypt, decrypt (GCM) */
    P11_KEY_AES_WRAP,        /* AES-256: wrap, unwrap (KWP); unwraps only into
                                sensitive, non-extractable keys */
    P11_KEY_AES_TRANSPORT,   /* AES-256: unwrap only; BYOK's ephemeral key.
                                Its unwrap template forces sensitive results
                                but allows extractable ones, for escrow */
    P11_KEY_HMAC_SHA256,     /* 256-bit generic secret: sign, verify */
    P11_KEY_EC_P256_SIGN,    /* P-256 pair: private signs, public verifies */
    P11_KEY_RSA3072_UNWRAP,  /* RSA-3072 pair: private unwraps only, into
                                sensitive non-extractable keys */
    P11_KEY_AES_ESCROW,      /* AES-256: wrap, unwrap (KWP); a region's escrow
                                key. Its unwrap template forces sensitive
                                results; extractability is the caller's
                                choice (RESTORE: never; EXPORT_WRAPPED: a
                                session copy, see p11_escrow.h) */
};

enum p11_key_flags {
    /* Created extractable and modifiable so that it can be wrapped once under
     * an escrow key, then locked with p11_key_lock(). Secret keys only. */
    P11_KEY_ESCROWABLE = 1u << 0,
    /* A session object (CKA_TOKEN false): gone when its session closes. Used
     * for short-lived keys such as the BYOK transport key. */
    P11_KEY_EPHEMERAL = 1u << 1,
};

/* Name of a kind for messages. */
const char *p11_key_kind_name(enum p11_key_kind kind);

/* Fail with KMS_ERR_UNSUPPORTED, naming the missing mechanism, when the token
 * cannot generate and use keys of this kind. Callers ask before changing any
 * state. */
kms_err p11_key_kind_supported(const struct p11_token *tok, enum p11_key_kind kind);

/* KMS_OK when the token keeps an AES key and a generic secret under one
 * CKA_ID as two objects (a metadata key version, "Several objects under one
 * id" in docs/pkcs11.md); KMS_ERR_UNSUPPORTED when a second secret key
 * replaces the first (NSS's softoken). Probed once per token with throw-away
 * token keys (p11_probe.c). */
kms_err p11_key_shared_id_supported(struct p11_token *tok);

/* Fresh random CKA_ID (from the token's RNG). */
kms_err p11_key_id_new(struct p11_token *tok, struct p11_key_id *out_id);

/* Lowercase hex of an id into out (33 bytes). */
void p11_key_id_hex(const struct p11_key_id *id, char out[2 * P11_KEY_ID_LEN + 1]);

/* Generate a key of `kind` with the given id. `label` (<= 64 bytes) becomes
 * CKA_LABEL for operators looking at the token; it must hold no secret.
 * KMS_ERR_ALREADY_EXISTS if the id already names an object of the same class
 * and key type (an AES key, a generic secret, a pair); a secret key of the
 * other type may share the id. */
kms_err p11_key_generate(struct p11_token *tok, enum p11_key_kind kind, unsigned flags,
                         const struct p11_key_id *id, const char *label);

/* Make an escrowable key non-extractable. The token makes this one-way.
 * p11_key_lock acts on the id's AES key if it has one, else its generic
 * secret; p11_key_lock_kind names the object by kind (secret kinds only). */
kms_err p11_key_lock(struct p11_token *tok, const struct p11_key_id *id);
kms_err p11_key_lock_kind(struct p11_token *tok, const struct p11_key_id *id,
                          enum p11_key_kind kind);

/* Destroy every object with this id (both halves of a pair, both secret keys
 * of a metadata version). KMS_ERR_NOT_FOUND if there was none. */
kms_err p11_key_destroy(struct p11_token *tok, const struct p11_key_id *id);

/* True if an object with this id exists (any class). Asks the token, not
 * the handle cache; when there is none, cached handles of the id are
 * dropped. */
kms_err p11_key_exists(struct p11_token *tok, const struct p11_key_id *id, bool *out_exists);

/* Attributes read back from the token, for checks and tests. For a pair,
 * these describe the private (secret) half; for an id holding an AES key and
 * a generic secret, the AES key (p11_key_info_kind names the other). */
struct p11_key_info {
    bool token, priv, sensitive, extractable, always_sensitive, never_extractable, modifiable;
    bool encrypt, decrypt, wrap, unwrap, sign, verify, derive;
    unsigned long key_type;
    unsigned long value_len; /* bytes, secret keys only */
};
kms_err p11_key_info(struct p11_token *tok, const struct p11_key_id *id,
                     struct p11_key_info *out);
kms_err p11_key_info_kind(struct p11_token *tok, const struct p11_key_id *id,
                          enum p11_key_kind kind, struct p11_key_info *out);

/* Fill the token's handle cache with every key object in one pass (done at
 * start, so the request path never needs C_FindObjects for existing keys).
 * *out_count (may be NULL) receives the number of objects cached. */
kms_err p11_token_warm_cache(struct p11_token *tok, size_t *out_count);

/* CKA_LABEL of the object(s) with this id, into out (<= 64 bytes + NUL). */
kms_err p11_key_label(struct p11_token *tok, const struct p11_key_id *id, char out[65]);

/* Every CKA_ID of a key object in the token labelled with the given label
 * prefix (for reconciling the store with the token at start; this walks the
 * token with C_FindObjects and is not for the request path). The caller frees
 * *out_ids. */
kms_err p11_key_list_ids(struct p11_token *tok, const char *label_prefix,
                         struct p11_key_id **out_ids, size_t *out_n);

/* Destroy key objects that have neither CKA_ID nor CKA_LABEL, and objects
 * whose CKA_CLASS cannot be read: incomplete objects an HSM library left when
 * its process died inside object creation (SoftHSMv2 does; every object of
 * ours carries both). For reconcile at
 * start, before serving: walks the token with C_FindObjects. At most 256
 * per call; *out_n (may be NULL) gets how many were destroyed. */
kms_err p11_key_destroy_husks(struct p11_token *tok, size_t *out_n);
/* The same objects, counted (at most 256), none destroyed: safe mode and
 * the restore plan. */
kms_err p11_key_count_husks(struct p11_token *tok, size_t *out_n);

#endif
