/*
 * kms_escrow.h - escrow at birth: the region's escrow key, and sealing a
 * new key version under it before the version is locked and activated.
 *
 * Protocol for a version of a key that must be escrowed (CreateKey,
 * RotateKey, ImportKeyMaterial), between "row CREATING" and "activate":
 *   1. make the HSM object(s) escrowable (extractable, sensitive);
 *   2. kms_escrow_seal: wrap each object under the region's escrow key
 *      inside the HSM (RFC 5649), store the blob(s) with the CREATING
 *      version, then make each object non-extractable (one-way);
 *   3. activate the version.
 * A failure or crash anywhere before 3 leaves a CREATING version, which the
 * caller (or reconcile at start) discards with its objects and blobs: a key
 * is never half-escrowed, and never acknowledged before it is locked.
 */
#ifndef KMS_ESCROW_H
#define KMS_ESCROW_H

#include <stdbool.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_service.h"
#include "kms_store.h"
#include "p11_key.h"

/* The region's escrow key itself (its label, finding it at start, creating
 * it in kmsctl hsm init-region) is PKCS#11 plus a label convention:
 * p11_escrow_key.h. The service holds the one found at start
 * (kms_service_escrow_key). */

/* Step 2 above for version `version` of key_id, whose objects carry CKA_ID
 * obj: one object for AES_256, two (AES, HMAC) for METADATA. With
 * store_blob false (an object re-made for a version that is already ACTIVE
 * and escrowed) the objects are only locked. */
kms_err kms_escrow_seal(struct kms_service *svc, struct p11_token *tok, const char *key_id,
                        uint32_t version, const struct p11_key_id *obj, enum kms_key_spec spec,
                        bool store_blob);

/* FAILED_PRECONDITION, with what the operator must do, when the region
 * cannot escrow (no escrow key). Asked before anything is created. */
kms_err kms_escrow_ready(struct kms_service *svc, const char *region);

#endif
