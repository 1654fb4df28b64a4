/*
 * xks_ops.h - the XKS operations on Custos keys: GetKeyMetadata, Encrypt,
 * Decrypt (AES-256-GCM in the key's HSM, through the key layer of
 * kms/keys), and the spec's error for every refusal. The front (kms/http)
 * authenticates (SigV4, xks_sigv4.h), finds the endpoint (xks_config.h),
 * calls xks_ops_run, writes the audit event from call->audit and answers.
 *
 * A key is served to an endpoint when the endpoints file exposes it and the
 * key belongs to the endpoint's tenant; otherwise KeyNotFoundException (a
 * key of another tenant and a missing key answer the same).
 */
#ifndef XKS_OPS_H
#define XKS_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include "kms_call.h"
#include "xks_api.h"
#include "xks_config.h"

struct xks_reply {
    char *body; /* malloc'd JSON; wiped before free when secret */
    size_t len;
    bool secret;
    enum xks_error err; /* when the call fails */
};

/* Run a parsed key operation (req->op METADATA, ENCRYPT or DECRYPT) on
 * key_id for endpoint ep. Fills call->audit (key, version, region, token).
 * On failure reply->err is the spec's error and the kms_err detail is safe
 * to show the caller. */
kms_err xks_ops_run(struct kms_call *call, const struct xks_endpoint *ep, const char *key_id,
                    const struct xks_request *req, struct xks_reply *reply);

void xks_reply_free(struct xks_reply *reply);

#endif
