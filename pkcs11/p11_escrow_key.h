/*
 * p11_escrow_key.h - a region's escrow key in its token: the label
 * convention, finding it, creating it once.
 *
 * Each region has one escrow wrapping key (AES-256, wrap/unwrap only,
 * P11_KEY_AES_ESCROW) in its token, labelled P11_ESCROW_LABEL_PREFIX +
 * region. kmsd finds it at start (kms_service_start) and kmsctl hsm
 * init-region creates it: both need only this and the public p11_* calls,
 * not the key layer that seals key versions under it (kms_escrow.h).
 */
#ifndef P11_ESCROW_KEY_H
#define P11_ESCROW_KEY_H

#include <stdbool.h>

#include "kms_error.h"
#include "p11_key.h"
#include "p11_token.h"

/* CKA_LABEL of a region's escrow key: this prefix + the region. */
#define P11_ESCROW_LABEL_PREFIX "custos:escrow:"

/* Find the escrow key of the token's region by its label. *out_found false
 * when there is none (the region was never initialised); KMS_ERR_CONFIG
 * when the token holds two or more (which blob is under which key would be
 * a guess). Walks the token: for start-up and operator commands, not the
 * request path. */
kms_err p11_escrow_key_find(struct p11_token *tok, struct p11_key_id *out_id, bool *out_found);

/* Create the region's escrow key if it has none (kmsctl hsm init-region):
 * idempotent. *out_created says whether one was made; *out_id names the
 * key either way. */
kms_err p11_escrow_key_init(struct p11_token *tok, struct p11_key_id *out_id, bool *out_created);

#endif
