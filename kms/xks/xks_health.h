/*
 * xks_health.h - the deep check behind XKS GetHealthStatus: for each token,
 * a real AES-256-GCM round trip in the HSM on a test key that belongs to no
 * tenant (a session object generated for the check and destroyed after it,
 * so it never appears among the token's keys or in a tenant's audit log),
 * cached so that the answer is at most max_age_ms old (the spec allows one
 * minute) and a burst of health calls costs one check.
 *
 * Thread-safe: while one caller runs the check, the others get the previous
 * result (or wait for the first one).
 */
#ifndef XKS_HEALTH_H
#define XKS_HEALTH_H

#include <stddef.h>

#include "kms_error.h"
#include "kms_service.h"

/* A result older than max_age_ms (kmsd's health.cache_ms, at most this)
 * is refreshed before answering: well under the spec's one minute, so the
 * answer is never older than a minute. */
#define XKS_HEALTH_MAX_AGE_MS 30000
#define XKS_HEALTH_MAX_TOKENS 10 /* the spec's ekmFleetDetails limit */

/* A token whose round trip passes but takes this long is DEGRADED (the
 * spec: "unhealthy but can still serve traffic"): AWS KMS gives a whole
 * call 250 ms, network and TLS included, so an HSM this slow puts calls
 * at risk of timing out. */
#define XKS_HEALTH_SLOW_MS 100

/* Per token, as the spec's ekmFleetDetails[].healthStatus: ACTIVE (the
 * round trip passed in time), DEGRADED (passed, slowly), UNAVAILABLE
 * (failed: this token's keys cannot be served). */
enum xks_token_health { XKS_TOKEN_ACTIVE, XKS_TOKEN_DEGRADED, XKS_TOKEN_UNAVAILABLE };

struct xks_health_result {
    size_t n;
    char id[XKS_HEALTH_MAX_TOKENS][160];    /* "region/label" */
    char model[XKS_HEALTH_MAX_TOKENS][96];  /* "SoftHSM project token (PKCS#11)" */
    enum xks_token_health status[XKS_HEALTH_MAX_TOKENS];
    size_t active;   /* ACTIVE or DEGRADED: tokens that serve */
    size_t degraded; /* of which DEGRADED */
};

/* The spec's name of a token status. */
const char *xks_token_health_name(enum xks_token_health s);

struct xks_health;

kms_err xks_health_new(struct kms_service *svc, unsigned max_age_ms, struct xks_health **out);
void xks_health_free(struct xks_health *h);

/* The current result (refreshed first when stale) into *out. */
void xks_health_get(struct xks_health *h, struct xks_health_result *out);

/* One token's check, uncached: generate a session AES key, encrypt 32
 * random bytes with AAD, decrypt, compare, destroy the key. */
kms_err xks_health_check_token(struct p11_token *tok);

#endif
