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
#include "kms_call.h"

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
    const char *correlation_id;
    size_t max_body; /* the configured body limit */
};

/* What kms_httpreq_check_head found. */
struct kms_httpreq {
    const struct kms_route *route;                /* the route's row */
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

/* ---- framing and header hygiene ------------------------------------------
 *
 * Checked first, on every request (Twirp and operational endpoints alike),
 * because a proxy in front of kmsd must read the request exactly as kmsd
 * does: any doubt about where the request ends or what a header says is a
 * 400 and the connection is closed (RFC 9112 sections 6.1 and 6.3).
 */

/* Most header fields accepted in one request. */
#define KMS_HTTP_MAX_FIELDS 100

/* One header field as libmicrohttpd reports it: pointers into the header
 * block and the lengths libmicrohttpd gives (strlen of what it stored). */
struct kms_httpreq_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A request's header block as libmicrohttpd 0.9.75 holds it. It parses in
 * place: the block is kept as received, with each separator (the two
 * spaces of the request line, each ':', each CR and LF) overwritten by a
 * NUL, and reports every string with strlen. A NUL sent inside a value
 * therefore silently ends the value (`Bearer <key>\0junk` reads as
 * `Bearer <key>`), and a folded line (obs-fold) is glued onto the NAME of
 * the header before it in a copy outside the block. Neither is visible in
 * the strings or lengths libmicrohttpd hands out; both are visible in the
 * layout, which kms_httpreq_check_framing accounts for byte by byte. */
struct kms_httpreq_block {
    const char *start;   /* the request line's first byte (the method) */
    size_t size;         /* bytes from start through the empty line ending the block */
    const char *method;  /* NUL-terminated, as libmicrohttpd reports them */
    const char *url;
    const char *version;
    const struct kms_httpreq_field *fields; /* in the order received */
    size_t n_fields;     /* more than KMS_HTTP_MAX_FIELDS is refused */
};

/* The whole header block is what was received, and its framing has one
 * reading; refused (KMS_ERR_INVALID_ARGUMENT, detail set for the client)
 * otherwise:
 *  - every byte of the block is accounted for: a request line of exactly
 *    method SP path SP version (no query string, no NUL), header lines
 *    "name:" OWS value ended by CRLF, then CRLF. A NUL anywhere, a bare
 *    LF line end, or an obs-folded line is refused;
 *  - header names are RFC 9110 tokens (no space before the colon);
 *  - no value holds a control byte (0x00-0x1f except HTAB, 0x7f);
 *  - Host, Authorization, Content-Type, Content-Length, Transfer-Encoding
 *    and X-Correlation-Id appear at most once (equal copies included);
 *  - Content-Length and Transfer-Encoding are never both present;
 *  - Transfer-Encoding is exactly "chunked" (any case; no list, no
 *    parameter, no whitespace) and only in HTTP/1.1;
 *  - Content-Length is 1..19 ASCII digits.
 * Limit: a NUL sent in place of the CR of a bare-LF line end is stored by
 * libmicrohttpd exactly like that CR and cannot be told apart (it ends the
 * line; nothing after it is hidden). */
kms_err kms_httpreq_check_framing(const struct kms_httpreq_block *b);

#endif
