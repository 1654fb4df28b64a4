/*
 * p11_rv.h - CK_RV to project errors. Internal to pkcs11/.
 */
#ifndef P11_RV_H
#define P11_RV_H

#include <stdbool.h>

#include <p11-kit/pkcs11.h>

#include "kms_error.h"

/* "CKR_PIN_INCORRECT" etc.; never NULL. */
const char *p11_rv_name(CK_RV rv);

/* "CKM_AES_GCM" etc. for the mechanisms kmsd uses, "none" for
 * P11_NO_MECH, "CKM_OTHER" for any other; a static string, the same
 * address on every call (metrics compare it by address). */
const char *p11_mech_name(CK_MECHANISM_TYPE m);

/* A failure that says nothing about the request and is worth one more try
 * of an object creation: SoftHSMv2's file store now and then fails one of
 * two concurrent token object creations with CKR_GENERAL_ERROR
 * (tests/bench/bench_mkkeys.c saw it under load, and so did concurrent
 * RotateKey); CKR_FUNCTION_FAILED is the specification's "could not be
 * performed, no detail". Device errors and removals are not here: those
 * are the token's state, not a collision. */
bool p11_rv_transient(CK_RV rv);

/* Map rv to a kms_err and record a detail naming the C_ function, the token
 * and the CKR_ name. Unexpected HSM failures are also logged. KMS_OK for
 * CKR_OK. */
kms_err p11_rv_err(CK_RV rv, const char *fn, const char *token_label);

#endif
