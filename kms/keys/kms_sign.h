/*
 * kms_sign.h - asymmetric signing keys (issue 16; docs/signing.md):
 * KeyService's GetPublicKey, Sign and Verify, and what key creation,
 * rotation and escrow need to make a version of a signing key.
 *
 * A signing key (spec EC_P256 or RSA_2048/3072/4096, usage SIGN_VERIFY,
 * origin HSM) has versions like any key; each version is one key pair in
 * the region's token (pkcs11/p11_asym.h), named by the version's hsm_id.
 * Sign uses the current version (or a named ACTIVE one); every ACTIVE
 * version keeps verifying and keeps its public key until the key is
 * destroyed. Messages are hashed with SHA-256 by kmsd (RAW, <= 65536
 * bytes) or given as their 32-byte digest (DIGEST); the HSM signs the
 * digest. Audit events carry the message's SHA-256 and lengths, never the
 * message or the signature.
 */
#ifndef KMS_SIGN_H
#define KMS_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_rpc.h"
#include "kms_store.h"
#include "p11_asym.h"
#include "p11_key.h"

/* Largest RAW message; a DIGEST is exactly 32 bytes. */
#define KMS_SIGN_MESSAGE_MAX 65536
/* Largest signature Verify takes (RSA-4096). */
#define KMS_SIGN_SIGNATURE_MAX 512

/* The store spec of a pair KeySpec (custos.v1.KeySpec EC_P256, RSA_*);
 * false for any other value. */
bool kms_sign_spec_from_proto(int proto_spec, enum kms_key_spec *out);
/* custos.v1.KeySpec of any store spec (AES_256 for one it does not know). */
int kms_sign_spec_to_proto(enum kms_key_spec spec);
/* custos.v1.KeyUsage of a store usage. */
int kms_sign_usage_to_proto(enum kms_key_usage usage);
/* The pkcs11 kind of a pair spec (kms_key_spec_is_pair must hold). */
enum p11_asym_kind kms_sign_kind(enum kms_key_spec spec);

/* FAILED_PRECONDITION naming the missing mechanism when the token cannot
 * make and use pairs of this spec: asked before anything changes. */
kms_err kms_sign_supported(struct p11_token *tok, enum kms_key_spec spec);

/* Make the pair of a version whose CREATING row exists (kms_version_make
 * calls this for pair specs): generate under id; with escrow, wrap the
 * private half under the region's escrow key, store the blob with the
 * version, then lock the private half (kms_escrow.h's protocol). The
 * caller destroys the id's objects and discards the row on failure. */
kms_err kms_sign_version_make(struct kms_service *svc, struct p11_token *tok, const char *key_id,
                              uint32_t version, const struct p11_key_id *id,
                              enum kms_key_spec spec, const char *label, bool escrow);

/* RESTORE of one escrowed version of a pair key (kms_recovery.c): entry is
 * one of kms_store_escrow_pair_list's; the pair comes back under id with
 * label, from the stored blob and public key (p11_asym_restore). */
kms_err kms_sign_escrow_restore(struct kms_service *svc, struct p11_token *tok,
                                const struct kms_escrow_record *entry,
                                const struct p11_key_id *id, const char *label);

/* The handlers. */
kms_err kms_rpc_get_public_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_sign(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_verify(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);

#endif
