/*
 * kms_twirp.h - Twirp v7 routing and error encoding.
 */
#ifndef KMS_TWIRP_H
#define KMS_TWIRP_H

#include <protobuf-c/protobuf-c.h>

#include "kms_rpc.h"

/* "/twirp/custos.v1.KeyService/Encrypt" -> handler (and the method name,
 * pointing into path); NULL for anything that is not a known route. */
kms_rpc_fn kms_twirp_route(const char *path, const char **out_method);

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

/* {"code": "...", "msg": "..."} for err; malloc'd, NULL on OOM. */
char *kms_twirp_error_body(kms_err err, const char *msg);

#endif
