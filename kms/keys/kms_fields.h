/*
 * kms_fields.h - FieldService (proto/fields.proto): field-level encryption
 * of message metadata and blind indexes, with METADATA_AES_HMAC keys.
 *
 * Each version of a metadata key is two objects in the region's token under
 * the version's one hsm_id (CKA_ID): an AES-256 key (P11_KEY_AES_ENCRYPT)
 * and an HMAC-SHA256 generic secret (P11_KEY_HMAC_SHA256); pkcs11/ resolves
 * them by key type (docs/pkcs11.md). Every AES-GCM and every HMAC runs in
 * the HSM; this module builds the byte strings around them
 * (kms_fieldblob.h) and never sees key material.
 *
 * The three handlers are registered in kms_twirp.c under
 * "custos.v1.FieldService". They fill call->audit like every handler:
 * kms_rpc_authorize_key records key, region, token and rule, and the
 * handler sets key_version to the version the request used — for
 * EncryptFields the current one, for DecryptFields and BlindIndex with
 * all_versions the oldest one involved (the figure that tells an operator
 * whether an old version is still in use). Values never reach the audit
 * facts, the operational log or an error message.
 *
 * Thread-safety: the handlers and the functions below may run on any
 * worker thread concurrently; they share nothing but the token's session
 * pool and handle cache, which lock themselves.
 */
#ifndef KMS_FIELDS_H
#define KMS_FIELDS_H

#include <stddef.h>
#include <stdint.h>

#include "kms_canon.h"
#include "kms_error.h"
#include "kms_fieldblob.h"
#include "kms_call.h"
#include "p11_key.h"

/* The handlers. */
kms_err kms_rpc_encrypt_fields(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_decrypt_fields(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_blind_index(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);

/* One version of a metadata key, in its token. Borrowed pointers. */
struct kms_field_key {
    struct p11_token *tok;
    struct p11_key_id hsm_id;
    uint32_t version;
};

/*
 * Encrypt one field: value[0..value_len) (<= KMS_FIELD_VALUE_MAX) under
 * version k, field `name` and the canonical context ctx (kms_ctx_encode).
 * Deterministic mode asks the HSM for the IV (HMAC with the version's HMAC
 * key); randomized mode draws it from the host DRBG. out receives the blob,
 * out_cap >= value_len + KMS_FIELD_OVERHEAD. On error out is wiped and
 * *out_len is 0.
 */
kms_err kms_field_seal(const struct kms_field_key *k, enum kms_field_mode mode, const char *name,
                       size_t name_len, const uint8_t *ctx, size_t ctx_len, const uint8_t *value,
                       size_t value_len, uint8_t *out, size_t out_cap, size_t *out_len);

/*
 * Authenticate and decrypt one blob made by kms_field_seal with version k
 * (the blob's version must be k->version: KMS_ERR_USAGE otherwise). Wrong
 * name, context, key or any changed byte: KMS_ERR_BAD_CIPHERTEXT, with one
 * message for all. out_cap >= blob_len - KMS_FIELD_OVERHEAD; plaintext is
 * written only once the tag verified. *out_mode may be NULL.
 */
kms_err kms_field_open(const struct kms_field_key *k, const char *name, size_t name_len,
                       const uint8_t *ctx, size_t ctx_len, const uint8_t *blob, size_t blob_len,
                       uint8_t *out, size_t out_cap, size_t *out_len,
                       enum kms_field_mode *out_mode);

/*
 * Blind index of an already canonical value cv under version k: the
 * leftmost `bits` (8..256) bits of the HSM's HMAC of the index input, into
 * out (32 bytes); *out_len = ceil(bits / 8).
 */
kms_err kms_field_blind_index(const struct kms_field_key *k, enum kms_canon canon,
                              const char *name, size_t name_len, const uint8_t *cv,
                              size_t cv_len, unsigned bits, uint8_t out[32], size_t *out_len);

#endif
