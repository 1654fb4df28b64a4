/*
 * kms_twirp.h - Twirp v7 routing and error encoding.
 */
#ifndef KMS_TWIRP_H
#define KMS_TWIRP_H

#include "kms_rpc.h"

/* "/twirp/custos.v1.KeyService/Encrypt" -> handler (and the method name,
 * pointing into path); NULL for anything that is not a known route. */
kms_rpc_fn kms_twirp_route(const char *path, const char **out_method);

/* {"code": "...", "msg": "..."} for err; malloc'd, NULL on OOM. */
char *kms_twirp_error_body(kms_err err, const char *msg);

#endif
