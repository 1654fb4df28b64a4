/*
 * kms_http_ops.c - what the operational endpoints answer: which URL is one,
 * the /readyz verdict and text, the /metrics page (kms_http_ops.h).
 */
#include "kms_http_ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_metrics.h"

enum kms_http_op kms_http_ops_route(const char *url, const char **out_region)
{
    static const char readyz_region[] = "/readyz/";
    *out_region = NULL;
    if (strcmp(url, "/livez") == 0)
        return KMS_HTTP_OP_LIVEZ;
    if (strcmp(url, "/readyz") == 0)
        return KMS_HTTP_OP_READYZ;
    if (strncmp(url, readyz_region, sizeof(readyz_region) - 1) == 0) {
        *out_region = url + sizeof(readyz_region) - 1;
        return KMS_HTTP_OP_READYZ;
    }
    if (strcmp(url, "/metrics") == 0)
        return KMS_HTTP_OP_METRICS;
    return KMS_HTTP_OP_NONE;
}

static unsigned text(char *body, size_t n, unsigned status, const char *s)
{
    snprintf(body, n, "%s", s);
    return status;
}

/* /readyz: the whole node (a load balancer's check), or /readyz/R one region
 * (kms_health_region): a path, not a query string, because no request
 * target carries one (kms_httpreq_check_framing). A 503 names the regions that are not served
 * and why, in region-level terms only (unauthenticated). */
unsigned kms_http_ops_readyz(struct kms_health *health, struct kms_service *svc,
                             const char *region, bool draining, char *body, size_t n)
{
    char why[320], lines[1536];
    if (region != NULL) {
        int r = kms_health_region(health, region, why, sizeof(why));
        if (r < 0)
            return text(body, n, 404, "no such region on this node\n");
        const char *safe = NULL;
        bool safe_mode = kms_service_safe_mode(svc, &safe);
        if (r > 0 && !draining && !safe_mode)
            return text(body, n, 200, "ready\n");
        snprintf(body, n, "not ready\n%s\n",
                 r == 0 ? why : draining ? "draining" : safe);
        return 503;
    }
    /* Safe mode is not ready: the node must not take a balancer's full
     * traffic, but says why, and decrypts for whoever calls it. */
    const char *safe = NULL;
    bool safe_mode = kms_service_safe_mode(svc, &safe);
    if (!draining && !safe_mode && kms_health_ready(health))
        return text(body, n, 200, "ready\n");
    if (safe_mode) {
        snprintf(body, n, "not ready: %s\n", safe);
        return 503;
    }
    kms_health_refused_regions(health, lines, sizeof(lines));
    snprintf(body, n, "not ready\n%s", lines);
    return 503;
}

kms_err kms_http_ops_metrics(struct kms_service *svc, unsigned inflight, char **out,
                             size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    FILE *f = open_memstream(out, out_len);
    KMS_ENSURE(f != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_metrics_render(f);
    kms_service_metrics(svc, f);
    kms_metrics_family(f, "custos_http_inflight_requests", "gauge",
                       "Requests received and not yet completed.");
    fprintf(f, "custos_http_inflight_requests %u\n", inflight);
    if (fclose(f) != 0 || *out == NULL) {
        free(*out);
        *out = NULL;
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    return KMS_OK;
}
