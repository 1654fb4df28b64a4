/*
 * p11_call.c - the recording half of the one call wrapper (P11_CALL,
 * P11_RV in p11_internal.h): function names for the metrics, and the
 * module quirks that decide how a CK_RV is read.
 */
#include <string.h>

#include "p11_internal.h"

#define P11_FN_NAME_(f) #f,
static const char *const fn_names[P11_FN_COUNT] = {P11_FUNCTIONS(P11_FN_NAME_)};
#undef P11_FN_NAME_

const char *p11_fn_name(enum p11_fn fn)
{
    return (unsigned)fn < P11_FN_COUNT ? fn_names[fn] : "C_Unknown";
}

void p11_call_record(int metrics_id, enum p11_fn fn, CK_MECHANISM_TYPE mech, uint64_t t0)
{
    if (metrics_id < 0)
        return;
    kms_metrics_hsm(metrics_id, p11_fn_name(fn), p11_mech_name(mech), kms_metrics_now_ns() - t0);
}

CK_RV p11_rv_auth_failure(const struct p11_token *tok, CK_RV rv)
{
    if (rv == CKR_GENERAL_ERROR && tok->integrity_general)
        return CKR_ENCRYPTED_DATA_INVALID;
    return rv;
}
