/*
 * xks_config.h - who may call the XKS proxy API, and for which keys
 * (docs/xks.md "Configuration").
 *
 * A JSON file (named by kmsd's config key "xks_config") lists endpoints. An
 * endpoint is one URI path prefix (the `<optional-path-prefix>` of the XKS
 * spec, before /kms/xks/v1) that belongs to exactly one Custos tenant, with
 * one or two SigV4 credential sets (two during a rotation) and the tenant's
 * keys it exposes, each with the XKS operations it allows:
 *
 *   {"endpoints": [{
 *      "uri_prefix": "/acme", "tenant": "acme",
 *      "credentials": [{"access_key_id": "AKIA...", "secret": "file:/etc/custos/xks/acme-1"}],
 *      "keys": {"<custos key id>": ["ENCRYPT", "DECRYPT"]},
 *      "aws_region": "eu-west-1", "region": "eu-west"}]}
 *
 * Optional per endpoint: "aws_region", the AWS region of the external key
 * store (a request signed for another region's scope is refused as not
 * authenticated); "region", the Custos region whose keys it serves (a key
 * of another region is refused AccessDeniedException: residency);
 * "replay_check" (default true; false only for load tests that replay one
 * pre-signed request): a Decrypt whose signature was already seen is
 * refused (xks_replay.h).
 * SigV4 needs the secret itself (kmsd recomputes an HMAC with it), so unlike
 * a bearer API key it cannot be stored as a hash: the file names a secret
 * *source* ("file:/path" of mode 0600/0400, or "env:NAME", as PINs are,
 * kms_secret.h) and never holds the secret. A loaded config is immutable;
 * kmsd swaps in a new one on SIGHUP (xks_config_holder), and a document that
 * does not load leaves the old one in place.
 */
#ifndef XKS_CONFIG_H
#define XKS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

/* Limits (a document over them is refused). */
#define XKS_MAX_ENDPOINTS 256
#define XKS_MAX_CREDS 2      /* per endpoint: the current and the next */
#define XKS_MAX_KEYS 1024    /* per endpoint */
#define XKS_URI_PATH_MAX 128 /* spec: XksProxyUriPath = prefix + "/kms/xks/v1" */
#define XKS_AWS_REGION_MAX 32
#define XKS_REGION_MAX 63 /* a Custos region name */

/* The usage bits of an exposed key (an empty list is allowed: metadata is
 * answered and encrypt/decrypt are refused with InvalidKeyUsageException). */
enum xks_usage { XKS_USE_ENCRYPT = 1, XKS_USE_DECRYPT = 2 };

struct xks_config;
struct xks_endpoint;

/* Load and validate the file at path (every secret source is read now, so a
 * missing secret file fails the load, not a request). KMS_ERR_CONFIG with a
 * detail naming the JSON path of the fault, never a secret. */
kms_err xks_config_load(const char *path, struct xks_config **out);
void xks_config_free(struct xks_config *c);

/* The endpoint whose uri_prefix is exactly prefix[0..len-1] ("" for none),
 * or NULL. */
const struct xks_endpoint *xks_config_endpoint(const struct xks_config *c, const char *prefix,
                                               size_t len);

const char *xks_endpoint_tenant(const struct xks_endpoint *ep);
const char *xks_endpoint_prefix(const struct xks_endpoint *ep);
/* The endpoint's pins, NULL when unset (any region). */
const char *xks_endpoint_aws_region(const struct xks_endpoint *ep);
const char *xks_endpoint_region(const struct xks_endpoint *ep);
bool xks_endpoint_replay_check(const struct xks_endpoint *ep);

/* The secret of the endpoint's credential with this access key id; false
 * when the endpoint has no such credential. The secret stays owned by the
 * config (valid while the caller holds it). */
bool xks_endpoint_secret(const struct xks_endpoint *ep, const char *access_key_id,
                         const uint8_t **secret, size_t *secret_len);

/* Whether the endpoint exposes key_id (32 lowercase hex), and its usage
 * bits (enum xks_usage) in *usage. */
bool xks_endpoint_key(const struct xks_endpoint *ep, const char *key_id, unsigned *usage);

/* ---- the live config, swapped on reload ---- */

struct xks_config_holder;

/* A holder for the config at path, loaded now. */
kms_err xks_config_holder_open(const char *path, struct xks_config_holder **out);
/* Load the file again; on success swap it in (requests holding the old one
 * finish with it), on failure keep the old one and return the error. */
kms_err xks_config_holder_reload(struct xks_config_holder *h);
/* Take a reference to the current config; give it back with _release. */
const struct xks_config *xks_config_holder_acquire(struct xks_config_holder *h);
void xks_config_holder_release(struct xks_config_holder *h, const struct xks_config *c);
void xks_config_holder_free(struct xks_config_holder *h);

#endif
