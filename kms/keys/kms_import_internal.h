/*
 * kms_import_internal.h - what the two halves of BYOK import share:
 * kms_import.c (the key check value, GetImportParameters, the cleanup of
 * import tokens) defines these; kms_import_material.c (ImportKeyMaterial)
 * uses them. Not for other files.
 */
#ifndef KMS_IMPORT_INTERNAL_H
#define KMS_IMPORT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "kms_call.h"
#include "kms_import.h"
#include "kms_store.h"
#include "p11_key.h"
#include "proto/key.pb-c.h"

/* The first byte of every import token. */
#define KMS_IMPORT_TOKEN_FORMAT 0x01
/* Import tokens retired per sweep pass. */
#define KMS_IMPORT_SWEEP_BATCH 16

/* Cleanup after a failure must not replace the detail the caller will see
 * (the HTTP front answers with kms_err_detail()). */
struct kms_import_detail {
    char s[512];
};

void kms_import_detail_save(struct kms_import_detail *d);
kms_err kms_import_detail_restore(const struct kms_import_detail *d, kms_err rc);

/* The name of a wrapping algorithm ("RSA_AES_KEY_WRAP_SHA_256"). */
const char *kms_import_alg_name(Custos__V1__WrappingAlgorithm a);

/* Whether, and how, key k may receive material (new_version: the caller
 * wants a new version); escrow readiness included. */
kms_err kms_import_check_importable(struct kms_call *call, const struct kms_key_record *k,
                                    bool new_version);

/* What the token can unwrap with RSA key rsa, preferred first. */
kms_err kms_import_offered_algorithms(struct p11_token *tok, const struct p11_key_id *rsa,
                                      Custos__V1__WrappingAlgorithm out[2], size_t *out_n);

/* The CKA_LABEL of an imported version's object. */
void kms_import_version_label(char out[80], const char *key_id, uint32_t version);

/* A SPENT token: destroy its wrapping key, then close it. */
kms_err kms_import_finish_spent(struct kms_service *svc, struct p11_token *tok,
                                const struct kms_import_token_record *t);

#endif
