/*
 * p11_call.c - the recording half of the one call wrapper (P11_CALL,
 * P11_RV in p11_internal.h): function names for the metrics, and the
 * module quirks that decide how a CK_RV is read.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "p11_internal.h"

/* Set once at start-up, before any thread calls a module; atomic only so
 * that a test may flip it between phases without a data race. */
static atomic_bool serialized;
static pthread_mutex_t serial_lock = PTHREAD_MUTEX_INITIALIZER;

void p11_serialize_calls(bool on)
{
    atomic_store(&serialized, on);
}

bool p11_call_enter(void)
{
    if (!atomic_load_explicit(&serialized, memory_order_relaxed))
        return false;
    pthread_mutex_lock(&serial_lock);
    return true;
}

void p11_call_leave(bool held)
{
    if (held)
        pthread_mutex_unlock(&serial_lock);
}

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
