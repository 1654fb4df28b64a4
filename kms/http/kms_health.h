/*
 * kms_health.h - readiness with a cached deep check, for /readyz.
 *
 * A load balancer may ask every second from every instance; the deep check
 * (kms_service_check: one HSM call and one session check per token, one
 * store query) runs at most once per cache period, and concurrent askers
 * never pile up behind a slow check: while one runs, the others get the
 * previous answer. Changes of state are logged with the reason; the HTTP
 * answer carries only region-level facts (it is unauthenticated): which
 * regions are not served, never paths, file contents or HSM details.
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

/* One region's readiness, for GET /readyz?region=R: served here (its audit
 * log passed the start-up scan), its audit log writable, its token
 * answering and holding every live version's object (as of the sweeper's
 * last object check). Cheap (no HSM call): flags the service keeps. Returns 1 when
 * ready, 0 when not (why gets one line, "region R: ...", no paths or
 * secrets: the answer is unauthenticated), -1 when R is not configured. */
int kms_health_region(struct kms_health *h, const char *region, char *why, size_t n);

/* "region R: not served: ...\n" for every region refused at start (its
 * audit log failed the start-up scan), for the body of a 503 /readyz: a
 * region refused at start stays so until an operator restores its files
 * and restarts kmsd, so that is worth saying where they look first; and
 * "region R: its HSM token 'L' is unavailable ...\n" for every token that
 * does not answer (as of the last check), and "region R: N live key
 * version(s) have no object ...\n" (a count, never key ids) for every token
 * missing objects. "" when none. */
void kms_health_refused_regions(struct kms_health *h, char *buf, size_t n);

#endif
