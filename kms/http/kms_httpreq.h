/*
 * kms_httpreq.h - the decisions the HTTP front makes from a request's
 * headers alone, as pure functions of their text (no connection, no
 * policy, no I/O), so that they can be fuzzed and tested without a daemon.
 *
 * kms_http.c looks the headers up in libmicrohttpd and calls these; what
 * they refuse is answered before the body is read.
 */
#ifndef KMS_HTTPREQ_H
#define KMS_HTTPREQ_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "kms_error.h"
#include "kms_rpc.h"

/* Longest bearer key accepted; longer ones are refused unread. */
#define KMS_HTTP_BEARER_MAX 512
/* Longest X-Correlation-Id accepted. */
#define KMS_HTTP_CORRELATION_MAX 128

/* The request line and headers the front decides on; NULL: header absent. */
struct kms_httpreq_head {
    const char *method; /* "POST" */
    const char *url;
    const char *content_type;
    const char *content_length;
    unsigned content_length_count; /* Content-Length headers received (0 or 1 is sound) */
    const char *correlation_id;
    size_t max_body; /* the configured body limit */
};

/* What kms_httpreq_check_head found. */
struct kms_httpreq {
    kms_rpc_fn fn;                                /* the route's handler */
    const char *method;                           /* its name, pointing into url */
    const ProtobufCMessageDescriptor *request;    /* its request message type */
    const ProtobufCMessageDescriptor *response;   /* its response message type */
    bool json;                                    /* application/json: body and reply in JSON */
    bool routed;                                  /* a known route: refusals are audited */
    char correlation_id[KMS_HTTP_CORRELATION_MAX + 1]; /* "" when absent */
};

/* Method, route, Content-Type, Content-Length and X-Correlation-Id, in that
 * order. On refusal returns the error (detail set: the client's message)
 * and out->routed says whether the request reached a route, i.e. whether
 * the refusal is an audit event (before that there is no operation to
 * audit). */
kms_err kms_httpreq_check_head(const struct kms_httpreq_head *in, struct kms_httpreq *out);

/* The shape of an Authorization header: "Bearer <1..512 bytes>". Sets
 * out_key and out_len to the key (pointing into auth). The key itself is
 * checked against the policy by the caller. */
kms_err kms_httpreq_bearer(const char *auth, const char **out_key, size_t *out_len);

/* A body of len bytes under the limit: what the front would hand to the
 * handler (body refused as too large otherwise). */
kms_err kms_httpreq_check_body_len(size_t len, size_t max_body);

#endif
