/*
 * kms_error.c - names, error code names and per-thread details of kms_err.
 */
#include "kms_error.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_detail[512];

struct err_row {
    kms_err err;
    const char *name;
    const char *code;
};

/* The one table from project errors to the error code names a caller, the
 * audit log and the metrics see (the API's, which are Twirp's). HSM
 * failures are "internal" unless the token is gone, which is "unavailable":
 * a load balancer may send the request to another node. The HTTP status of
 * each code is the front's business (kms/http/kms_twirp.c). */
static const struct err_row err_table[] = {
    {KMS_OK, "KMS_OK", "ok"},
    {KMS_ERR_USAGE, "KMS_ERR_USAGE", "internal"},
    {KMS_ERR_INVALID_ARGUMENT, "KMS_ERR_INVALID_ARGUMENT", "invalid_argument"},
    {KMS_ERR_TOO_LARGE, "KMS_ERR_TOO_LARGE", "invalid_argument"},
    {KMS_ERR_NOT_FOUND, "KMS_ERR_NOT_FOUND", "not_found"},
    {KMS_ERR_ALREADY_EXISTS, "KMS_ERR_ALREADY_EXISTS", "already_exists"},
    {KMS_ERR_FAILED_PRECONDITION, "KMS_ERR_FAILED_PRECONDITION", "failed_precondition"},
    {KMS_ERR_BAD_CIPHERTEXT, "KMS_ERR_BAD_CIPHERTEXT", "invalid_argument"},
    {KMS_ERR_UNSUPPORTED, "KMS_ERR_UNSUPPORTED", "failed_precondition"},
    {KMS_ERR_MALFORMED, "KMS_ERR_MALFORMED", "malformed"},
    {KMS_ERR_BAD_ROUTE, "KMS_ERR_BAD_ROUTE", "bad_route"},
    {KMS_ERR_UNAUTHENTICATED, "KMS_ERR_UNAUTHENTICATED", "unauthenticated"},
    {KMS_ERR_PERMISSION_DENIED, "KMS_ERR_PERMISSION_DENIED", "permission_denied"},
    {KMS_ERR_RESOURCE_EXHAUSTED, "KMS_ERR_RESOURCE_EXHAUSTED", "resource_exhausted"},
    {KMS_ERR_HSM, "KMS_ERR_HSM", "internal"},
    {KMS_ERR_HSM_UNAVAILABLE, "KMS_ERR_HSM_UNAVAILABLE", "unavailable"},
    {KMS_ERR_HSM_SESSION, "KMS_ERR_HSM_SESSION", "unavailable"},
    {KMS_ERR_HSM_PIN, "KMS_ERR_HSM_PIN", "unavailable"},
    {KMS_ERR_IO, "KMS_ERR_IO", "unavailable"},
    {KMS_ERR_NOSPC, "KMS_ERR_NOSPC", "unavailable"},
    {KMS_ERR_CONFIG, "KMS_ERR_CONFIG", "internal"},
    {KMS_ERR_NOMEM, "KMS_ERR_NOMEM", "resource_exhausted"},
    {KMS_ERR_INTERNAL, "KMS_ERR_INTERNAL", "internal"},
};

static const struct err_row *err_row(kms_err err)
{
    for (size_t i = 0; i < sizeof(err_table) / sizeof(err_table[0]); i++)
        if (err_table[i].err == err)
            return &err_table[i];
    return NULL;
}

const char *kms_strerror(kms_err err)
{
    const struct err_row *r = err_row(err);
    return r ? r->name : "KMS_ERR_UNKNOWN";
}

const char *const kms_twirp_codes[KMS_TWIRP_CODE_COUNT] = {
    "canceled",          "unknown",         "invalid_argument",   "malformed",
    "deadline_exceeded", "not_found",       "bad_route",          "already_exists",
    "permission_denied", "unauthenticated", "resource_exhausted", "failed_precondition",
    "aborted",           "out_of_range",    "unimplemented",      "internal",
    "unavailable",       "dataloss",
};

int kms_twirp_code_index(const char *code)
{
    for (int i = 0; code != NULL && i < KMS_TWIRP_CODE_COUNT; i++)
        if (strcmp(kms_twirp_codes[i], code) == 0)
            return i;
    return -1;
}

const char *kms_err_twirp_code(kms_err err)
{
    const struct err_row *r = err_row(err);
    return r ? r->code : "internal";
}

kms_err kms_err_set(kms_err err, const char *fmt, ...)
{
    /* Formatted aside first: a caller may pass the current detail as an
     * argument ("%s: %s", where, kms_err_detail()), and formatting a buffer
     * into itself is undefined (it garbled messages before). */
    char buf[sizeof(err_detail)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    memcpy(err_detail, buf, sizeof(buf));
    return err;
}

const char *kms_err_detail(void)
{
    return err_detail;
}

void kms_err_clear(void)
{
    err_detail[0] = '\0';
}

const char *kms_err_client_msg(kms_err err, const char *detail)
{
    /* The prefixes lower layers put on their own details, and what marks
     * PKCS#11 and token internals anywhere in one. */
    static const char *const internal_prefix[] = {"store:", "p11", "pkcs11", "pol_", "sqlite"};
    static const char *const internal_part[] = {"CKR_", "token '"};
    bool internal = detail == NULL;
    for (size_t i = 0; !internal && i < sizeof(internal_prefix) / sizeof(internal_prefix[0]); i++)
        internal = strncmp(detail, internal_prefix[i], strlen(internal_prefix[i])) == 0;
    for (size_t i = 0; !internal && i < sizeof(internal_part) / sizeof(internal_part[0]); i++)
        internal = strstr(detail, internal_part[i]) != NULL;
    if (!internal)
        return detail;
    switch (err) {
    case KMS_ERR_INVALID_ARGUMENT:
    case KMS_ERR_TOO_LARGE:
    case KMS_ERR_BAD_CIPHERTEXT:
        return "the request was refused as invalid; the operational log has the reason "
               "under this reply's X-Request-Id";
    case KMS_ERR_NOT_FOUND:
        return "not found";
    case KMS_ERR_FAILED_PRECONDITION:
    case KMS_ERR_UNSUPPORTED:
        return "the request cannot be served in the current state; the operational log has "
               "the reason under this reply's X-Request-Id";
    default:
        return "the request was refused; the operational log has the reason under this "
               "reply's X-Request-Id";
    }
}
