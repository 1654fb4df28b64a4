/*
 * kms_twirp.h - Twirp v7 routing and error encoding.
 */
#ifndef KMS_TWIRP_H
#define KMS_TWIRP_H

#include <protobuf-c/protobuf-c.h>

#include "kms_call.h"

/* "/twirp/custos.v1.KeyService/Encrypt" -> its route row (and the method
 * name, pointing into path); NULL for anything that is not a known route. */
const struct kms_route *kms_twirp_route(const char *path, const char **out_method);

/* The row of "custos.v1.KeyService", "Encrypt", or NULL (bad_route). */
const struct kms_route *kms_twirp_lookup(const char *service, const char *method);

/* Decode len bytes of body as the route's request (kms_pbuf_unpack, bounded),
 * call its handler, then wipe and free the request (kms_pbuf_free_wiped).
 * A body that does not decode is refused as the handlers always refused
 * it (kms_pbuf_refused with the request type's name: KMS_ERR_MALFORMED, or
 * KMS_ERR_INVALID_ARGUMENT for a bad string or enum) and no handler runs. */
kms_err kms_twirp_dispatch(const struct kms_route *r, struct kms_call *call, const uint8_t *body,
                           size_t len, struct kms_reply *reply);

/* The request message type of a route, or NULL (no such route). */
const ProtobufCMessageDescriptor *kms_twirp_route_request(const char *path);

/* The response message type of a route, or NULL (no such route). */
const ProtobufCMessageDescriptor *kms_twirp_route_response(const char *path);

/* Routes by index, 0 .. kms_twirp_n_routes()-1: the request type, and the
 * path ("/twirp/custos.v1.KeyService/Encrypt") into out_path when not
 * NULL. NULL past the end. For tests and fuzz targets. */
size_t kms_twirp_n_routes(void);
const ProtobufCMessageDescriptor *kms_twirp_route_at(size_t i, char *out_path, size_t out_len);
/* The response type of route i (same order), NULL past the end. */
const ProtobufCMessageDescriptor *kms_twirp_route_response_at(size_t i);
/* Row i itself, NULL past the end. */
const struct kms_route *kms_twirp_route_row(size_t i);

/* The HTTP status of err's Twirp error code (kms_err_twirp_code): Twirp
 * v7's table (invalid_argument 400, not_found 404, ...; 200 for KMS_OK). */
int kms_twirp_http_status(kms_err err);

/* {"code": "...", "msg": "..."} for err; malloc'd, NULL on OOM. */
char *kms_twirp_error_body(kms_err err, const char *msg);

#endif
