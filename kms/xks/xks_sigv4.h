/*
 * xks_sigv4.h - AWS Signature Version 4 verification for the XKS proxy API
 * (docs/xks.md). kmsd verifies the requests AWS KMS sends to an external key
 * store itself: the Authorization header is parsed, the canonical request is
 * rebuilt from the method, the path, the query, exactly the headers that
 * SignedHeaders names and the SHA-256 of the body, and the signature is
 * recomputed with the credential's secret and compared in constant time.
 *
 * Paths are restricted to unreserved characters and '/' with no empty, "."
 * or ".." segment (the XKS paths never need more), so that the canonical URI
 * is the path itself: no percent-decoding ambiguity between the front and
 * the signer, and AWS's double encoding for non-S3 services is the identity.
 */
#ifndef XKS_SIGV4_H
#define XKS_SIGV4_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "kms_error.h"

/* Limits: a larger Authorization header or more signed headers is refused. */
#define XKS_SIGV4_MAX_AUTHZ 2048
#define XKS_SIGV4_MAX_SIGNED 16
#define XKS_SIGV4_MAX_QUERY_PARAMS 32
#define XKS_SIGV4_MAX_ACCESS_KEY 128
/* The most a request's time may differ from kmsd's clock, either way. */
#define XKS_SIGV4_MAX_SKEW_SECONDS 300

/* The parsed Authorization header. All strings are NUL-terminated copies. */
typedef struct xks_sigv4_auth {
    char access_key[XKS_SIGV4_MAX_ACCESS_KEY + 1];
    char date[9];     /* YYYYMMDD of the credential scope */
    char region[64];  /* the credential scope's region */
    char service[64]; /* the credential scope's service */
    char signed_headers[512]; /* as sent: lowercase names joined by ';' */
    char signature[65];       /* 64 lowercase hex digits */
} xks_sigv4_auth;

/* The request as received. header() returns the value of the header named
 * (lowercase) or NULL when absent; it must return NULL (or the front must
 * refuse the request) for a header sent more than once. */
typedef struct xks_sigv4_req {
    const char *method;
    const char *path;  /* without the query */
    const char *query; /* without '?'; NULL or "" when none */
    const char *(*header)(void *ctx, const char *name);
    void *header_ctx;
    const uint8_t *body;
    size_t body_len;
} xks_sigv4_req;

/* Parse "AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request,
 * SignedHeaders=a;b, Signature=hex". KMS_ERR_UNAUTHENTICATED when malformed. */
kms_err xks_sigv4_parse(const char *authz, xks_sigv4_auth *out);

/* Verify req against auth with the credential's secret, for service (the
 * scope's service must equal it) at time now. SignedHeaders must include host
 * and x-amz-date, be sorted and unique; x-amz-date must be within
 * XKS_SIGV4_MAX_SKEW_SECONDS of now and on the scope's date; an
 * x-amz-content-sha256 header, if sent, must be the body's hash.
 * KMS_OK or KMS_ERR_UNAUTHENTICATED (detail client-safe, never a secret). */
kms_err xks_sigv4_verify(const xks_sigv4_req *req, const xks_sigv4_auth *auth,
                         const char *service, const uint8_t *secret, size_t secret_len,
                         time_t now);

/* The request's x-amz-date in seconds since the epoch; -1 when absent or
 * malformed (a verified request has a good one). */
time_t xks_sigv4_request_time(const xks_sigv4_req *req);

/* Sign (for tests and tools): the hex signature of req for the given scope
 * and signed header list, at amz_date (YYYYMMDDTHHMMSSZ). out: 65 bytes. */
kms_err xks_sigv4_sign(const xks_sigv4_req *req, const char *signed_headers,
                       const char *amz_date, const char *region, const char *service,
                       const uint8_t *secret, size_t secret_len, char out[65]);

#endif
