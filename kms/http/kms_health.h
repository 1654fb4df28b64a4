/*
 * kms_health.h - readiness with a cached deep check, for /readyz.
 *
 * A load balancer may ask every second from every instance; the deep check
 * (kms_service_check: one HSM call and one session check per token, one
 * store query) runs at most once per cache period, and concurrent askers
 * never pile up behind a slow check: while one runs, the others get the
 * previous answer. Changes of state are logged with the reason; the HTTP
 * answer carries none (it is unauthenticated).
 *
 * Thread-safe. The service must outlive the health object.
 */
#ifndef KMS_HEALTH_H
#define KMS_HEALTH_H

#include <stdbool.h>

#include "kms_error.h"
#include "kms_service.h"

struct kms_health;

kms_err kms_health_new(struct kms_service *svc, unsigned cache_ms, struct kms_health **out);
void kms_health_free(struct kms_health *h);

/* True when the service is ready to serve, as of at most cache_ms ago. */
bool kms_health_ready(struct kms_health *h);

#endif
