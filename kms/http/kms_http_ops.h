/*
 * kms_http_ops.h - the operational endpoints of the front: /livez,
 * /readyz (the whole node), /readyz/R (one region) and /metrics. Only
 * what they answer; kms_http.c sends it (and authenticates /metrics).
 */
#ifndef KMS_HTTP_OPS_H
#define KMS_HTTP_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include "kms_error.h"
#include "kms_health.h"
#include "kms_service.h"

enum kms_http_op {
    KMS_HTTP_OP_NONE, /* not an operational endpoint: Twirp */
    KMS_HTTP_OP_LIVEZ,
    KMS_HTTP_OP_READYZ,
    KMS_HTTP_OP_METRICS,
};

/* Which endpoint url is; for /readyz/R, *out_region = R (else NULL). */
enum kms_http_op kms_http_ops_route(const char *url, const char **out_region);

/* /readyz (region NULL) or /readyz/R: the HTTP status (200, 404 for a
 * region this node does not have, 503) and its text in body[0..n-1]: a
 * node draining or in safe mode is not ready; a 503 names the regions not
 * served and why, in region-level terms only (the answer is
 * unauthenticated). A path, not a query string, because no request target
 * carries one (kms_httpreq_check_framing). */
unsigned kms_http_ops_readyz(struct kms_health *health, struct kms_service *svc,
                             const char *region, bool draining, char *body, size_t n);

/* The /metrics page (Prometheus text format): the counters of kms_metrics,
 * the service's gauges and inflight, the requests between their headers
 * and completion. malloc'd into *out. */
kms_err kms_http_ops_metrics(struct kms_service *svc, unsigned inflight, char **out,
                             size_t *out_len);

#endif
