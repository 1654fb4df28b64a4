/*
 * kms_http_xks.h - the XKS proxy API on the Twirp front's port
 * (docs/xks.md). kms_http.c hands a request whose path holds /kms/xks/v1 to
 * here at its first call and every later one: POST only (405 otherwise),
 * the body collected up to KMS_HTTP_XKS_BODY_MAX, then SigV4 against the
 * endpoint's credentials (xks_sigv4.h, xks_config.h), the operation
 * (xks_ops.h, or the health answer), one audit event, the JSON answer with
 * the spec's error names and statuses.
 */
#ifndef KMS_HTTP_XKS_H
#define KMS_HTTP_XKS_H

#include <stdbool.h>
#include <stddef.h>

#include <microhttpd.h>

#include "kms_call.h"
#include "kms_http_internal.h"

/* The largest XKS body: the spec's largest fields in Base64 (4300-byte
 * plaintext or ciphertext, 8192-byte AAD), two 2048-character ARNs, and
 * room for requestMetadata fields AWS may add. */
#define KMS_HTTP_XKS_BODY_MAX (64 * 1024)

struct kms_http_xks;

/* Whether url is addressed to the XKS API. */
bool kms_http_xks_claims(const char *url);

/* The first call (headers only): *out is the request's XKS state, freed by
 * kms_http_xks_free at completion. */
enum MHD_Result kms_http_xks_first(struct kms_http *h, struct MHD_Connection *c,
                                   struct kms_call *call, const char *url, const char *method,
                                   struct kms_http_xks **out);

/* Every later call: body bytes, then the answer. */
enum MHD_Result kms_http_xks_next(struct kms_http *h, struct MHD_Connection *c,
                                  struct kms_call *call, struct kms_http_xks *x,
                                  const char *upload_data, size_t *upload_size);

/* A request to the XKS API whose framing kms_http.c refused (msg): 400
 * ValidationException with Connection: close, audited. */
enum MHD_Result kms_http_xks_refuse_framing(struct MHD_Connection *c, struct kms_call *call,
                                            const char *url, const char *msg,
                                            struct kms_http_xks **out);

void kms_http_xks_free(struct kms_http_xks *x);

#endif
