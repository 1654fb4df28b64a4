/*
 * kms_keyuse.h - what the handlers that use a key's versions share
 * (kms_envelope.c, kms_fields.c, kms_import.c): the token that holds the
 * key, a version through the key cache, the encryption context of a
 * request, and wiping a plaintext buffer. One copy, so that a check added
 * for one RPC family holds for all of them.
 *
 * Thread-safety: as the handlers: any worker thread.
 */
#ifndef KMS_KEYUSE_H
#define KMS_KEYUSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_call.h"
#include "kms_store.h"
#include "p11_token.h"

/* The token that holds k's versions: the one serving k's region on this
 * node, and it must be the token the key was made in (its label, recorded
 * in the key's row). FAILED_PRECONDITION otherwise: a region that is not
 * served here, or a configuration that now names another token for it
 * (whose objects are not this key's). */
kms_err kms_keyuse_token(struct kms_call *call, const struct kms_key_record *k,
                         struct p11_token **out);

/* Version `version` of key_id, through the key cache (no store query per
 * call), which must be ACTIVE. from_blob: the number was read from a
 * ciphertext, so an unknown version means the ciphertext is not this
 * key's: BAD_CIPHERTEXT with the one message every mismatch gets. */
kms_err kms_keyuse_version(struct kms_call *call, const char *key_id, uint32_t version,
                           bool from_blob, struct kms_version_record *out);

/* The canonical encoding (kms_ctx_encode) of a request's encryption
 * context: n map<string,string> entries as protoc-c generates them, into
 * out (KMS_CTX_ENCODED_MAX bytes). */
kms_err kms_keyuse_context(size_t n, void *const *entries, uint8_t *out, size_t *out_len);

/* Wipe len bytes at p and free it; NULL is a no-op. */
void kms_keyuse_free_secret(uint8_t *p, size_t len);

#endif
