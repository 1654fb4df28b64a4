/*
 * kms_error.h - the one error type of Custos.
 *
 * Every fallible function returns a kms_err. Codes are grouped by kind, and
 * one table names the error code of each (kms_err_twirp_code), which the
 * fronts, the audit log and the metrics share; the HTTP status of a code is
 * the HTTP front's (kms_twirp_http_status in kms/http/kms_twirp.h). A
 * human-readable detail for the most recent error of the calling thread is
 * kept in thread-local storage: kms_err_set() records it, kms_err_detail()
 * reads it. Details never contain secrets: callers must not format PINs, key
 * bytes or plaintext into them.
 */
#ifndef KMS_ERROR_H
#define KMS_ERROR_H

#include <stdarg.h>

typedef enum kms_err {
    KMS_OK = 0,

    /* usage: the caller of an API broke its contract */
    KMS_ERR_USAGE = 100,

    /* input: the request is wrong; nothing was changed */
    KMS_ERR_INVALID_ARGUMENT = 200,
    KMS_ERR_TOO_LARGE,
    KMS_ERR_NOT_FOUND,
    KMS_ERR_ALREADY_EXISTS,
    KMS_ERR_FAILED_PRECONDITION,
    KMS_ERR_BAD_CIPHERTEXT, /* authentication failed or malformed blob */
    KMS_ERR_UNSUPPORTED,    /* a spec or mechanism the token cannot serve */
    KMS_ERR_MALFORMED,      /* a request body that does not decode */
    KMS_ERR_BAD_ROUTE,      /* no such method, wrong HTTP method or content type */

    /* policy and authentication */
    KMS_ERR_UNAUTHENTICATED = 300,
    KMS_ERR_PERMISSION_DENIED,
    KMS_ERR_RESOURCE_EXHAUSTED,

    /* HSM */
    KMS_ERR_HSM = 400,          /* the HSM refused or failed an operation */
    KMS_ERR_HSM_UNAVAILABLE,    /* token removed, not present, cannot log in */
    KMS_ERR_HSM_SESSION,        /* session or handle lost: replace and retry */
    KMS_ERR_HSM_PIN,            /* PIN wrong or locked: never retried */

    /* I/O */
    KMS_ERR_IO = 500,
    KMS_ERR_NOSPC,
    KMS_ERR_CONFIG,

    /* internal */
    KMS_ERR_NOMEM = 600,
    KMS_ERR_INTERNAL,
} kms_err;

/* Static name of a code ("KMS_ERR_NOT_FOUND"). Never NULL. */
const char *kms_strerror(kms_err err);

/* The error code name of err ("not_found"): the API's code names, which
 * are Twirp's; the audit log's `outcome` and the metrics' label too. */
const char *kms_err_twirp_code(kms_err err);

/* Twirp v7's error codes, in the protocol's order ("canceled" first,
 * "dataloss" last): the one list the metrics' labels, the front's HTTP
 * status table and the OpenSSL provider's reasons are indexed by. */
#define KMS_TWIRP_CODE_COUNT 18
extern const char *const kms_twirp_codes[KMS_TWIRP_CODE_COUNT];

/* Index of code in kms_twirp_codes, or -1. */
int kms_twirp_code_index(const char *code);

/* Record a detail for the calling thread and return err unchanged, so that
 * `return kms_err_set(KMS_ERR_X, "...")` reads naturally. */
kms_err kms_err_set(kms_err err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Detail recorded by the last kms_err_set() on this thread ("" if none). */
const char *kms_err_detail(void);

/* Forget the detail of this thread. */
void kms_err_clear(void);

/* What a client is told of a refusal of code err (HTTP status < 500) whose
 * detail is detail: the detail itself, unless it is an internal layer's
 * (a "store: ..." check, a PKCS#11 return value or token label, a policy
 * engine call), which names kmsd's insides and means nothing to a caller;
 * then a fixed sentence for the code that points to the operational log.
 * Handlers say what the caller did wrong themselves; this is the net for a
 * lower layer's check that a handler did not repeat. Static storage. */
const char *kms_err_client_msg(kms_err err, const char *detail);

/* Guard macros: straight-line checks that return on failure. */
#define KMS_GUARD(expr)                                                        \
    do {                                                                       \
        kms_err kms_guard_rc_ = (expr);                                        \
        if (kms_guard_rc_ != KMS_OK)                                           \
            return kms_guard_rc_;                                              \
    } while (0)

#define KMS_ENSURE(cond, err, ...)                                             \
    do {                                                                       \
        if (!(cond))                                                           \
            return kms_err_set((err), __VA_ARGS__);                            \
    } while (0)

/* Variants that jump to a cleanup label with rc set, for functions that own
 * resources and free them on one exit path. */
#define KMS_GUARD_GOTO(expr, label)                                            \
    do {                                                                       \
        rc = (expr);                                                           \
        if (rc != KMS_OK)                                                      \
            goto label;                                                        \
    } while (0)

#define KMS_ENSURE_GOTO(cond, label, err, ...)                                 \
    do {                                                                       \
        if (!(cond)) {                                                         \
            rc = kms_err_set((err), __VA_ARGS__);                              \
            goto label;                                                        \
        }                                                                      \
    } while (0)

#endif
