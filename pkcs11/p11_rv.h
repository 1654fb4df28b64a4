/*
 * p11_rv.h - CK_RV to project errors. Internal to pkcs11/.
 */
#ifndef P11_RV_H
#define P11_RV_H

#include <p11-kit/pkcs11.h>

#include "kms_error.h"

/* "CKR_PIN_INCORRECT" etc.; never NULL. */
const char *p11_rv_name(CK_RV rv);

/* "CKM_AES_GCM" etc. for the mechanisms kmsd uses, "CKM_OTHER" for any
 * other; a string literal (metrics compare it by address). */
const char *p11_mech_name(CK_MECHANISM_TYPE m);

/* Map rv to a kms_err and record a detail naming the C_ function, the token
 * and the CKR_ name. Unexpected HSM failures are also logged. KMS_OK for
 * CKR_OK. */
kms_err p11_rv_err(CK_RV rv, const char *fn, const char *token_label);

#endif
