/*
 * kms_import.h - BYOK import: the two RPCs (GetImportParameters,
 * ImportKeyMaterial), the key check value, and the cleanup of import
 * tokens and their wrapping keys. docs/byok.md is the tenant's and operator's view.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef KMS_IMPORT_H
#define KMS_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "kms_call.h"
#include "kms_error.h"
#include "kms_service.h"
#include "kms_store.h"
#include "p11_key.h"

/* CKA_LABEL of wrapping key pairs. Deliberately not KMS_HSM_LABEL_PREFIX:
 * reconcile must never take a wrapping key for a key version. */
#define KMS_IMPORT_LABEL_PREFIX "custos:import:"

/* The handlers, registered in kms/http/kms_twirp.c. */
kms_err kms_rpc_get_import_parameters(struct kms_call *, const ProtobufCMessage *,
                                      struct kms_reply *);
kms_err kms_rpc_import_key_material(struct kms_call *, const ProtobufCMessage *,
                                    struct kms_reply *);

/* Import tokens: 1 format byte + 32 random bytes. */
#define KMS_IMPORT_TOKEN_LEN 33
/* Unexpired, unused tokens per key (each holds an RSA pair in the HSM). */
#define KMS_IMPORT_MAX_LIVE 3
/* Refused attempts after which a token is void. */
#define KMS_IMPORT_MAX_FAILURES 10
/* A CREATING or CLAIMED token older than this past its creation or expiry
 * was abandoned by a crash; younger ones may be in flight. */
#define KMS_IMPORT_GRACE_S 600
/* CLOSED tokens are kept this long after expiry, for precise refusals. */
#define KMS_IMPORT_PURGE_AFTER_S (30 * 86400)
/* RSA-3072 OAEP block + RFC 5649 of a 256-bit key. */
#define KMS_IMPORT_WRAPPED_LEN (384 + 40)

/* The refusal of a token that is not one this service issued. */
#define KMS_IMPORT_TOKEN_INVALID                                                            \
    "import token is not valid: it was not issued by this service (mistyped, forged, or "   \
    "purged long after it expired)"

/* The untrusted import token of an ImportKeyMaterial request: its shape
 * (length, format byte) and, into out_id, the id the store knows it by (its
 * SHA-256; the store never holds the token itself). KMS_ERR_INVALID_ARGUMENT
 * with KMS_IMPORT_TOKEN_INVALID otherwise. Pure: no store, no HSM. */
kms_err kms_import_token_parse(const uint8_t *token, size_t len,
                               uint8_t out_id[KMS_IMPORT_TOKEN_ID_LEN]);

/*
 * Key check value of an AES_ENCRYPT key, computed inside the token:
 *   SHA-256( AES-256-GCM(key, IV = 12 zero bytes, AAD = "custos-kcv-v1",
 *                        plaintext = 16 zero bytes)  ciphertext || tag )
 * A fixed IV is safe here because this is never the encryption of a
 * message: it is a MAC of one constant, always the same (key, IV, AAD,
 * plaintext), so nothing that GCM nonce reuse could leak (the XOR of two
 * plaintexts, the GHASH key from two tags) has a second message to come
 * from. Blobs use random IVs from another source; that one of those hits
 * the all-zero IV is a 2^-96 event. The output is hashed so that not even
 * the keystream block of that constant is stored.
 */
kms_err kms_import_kcv(struct p11_token *tok, const struct p11_key_id *key,
                       uint8_t out[KMS_KCV_LEN]);

/*
 * Clean up tokens due (kms_store_import_tokens_due): expired, used, burnt,
 * or abandoned by a crash. Each is first made SPENT in the store (so no
 * import can claim it), then its wrapping key is destroyed, then it is
 * CLOSED; closed tokens long expired are purged. At most `limit` tokens per
 * call; *out_n (may be NULL) gets how many were closed. Tokens of regions
 * this node does not serve are left for the node that does.
 *
 * Called at the start of every GetImportParameters, after every import, and
 * by the service's sweeper thread every deletion.sweep_interval_s
 * (kms_service.c), so that wrapping keys go at expiry even when nobody
 * imports.
 */
kms_err kms_import_sweep(struct kms_service *svc, int64_t now, size_t limit, size_t *out_n);

/*
 * Destroy wrapping keys in tok that no live import token names: objects
 * labelled KMS_IMPORT_LABEL_PREFIX whose CKA_ID the store does not know
 * (e.g. after the store was restored from a backup older than them; a crash
 * cannot leave one, since every wrapping key's row is written first).
 * Lists the token before reading the store, so a token being issued
 * concurrently is never destroyed. Walks the token with C_FindObjects: for
 * start-up, not for the request path. *out_n (may be NULL) gets how many.
 */
kms_err kms_import_reconcile(struct kms_service *svc, struct p11_token *tok, size_t *out_n);

#endif
