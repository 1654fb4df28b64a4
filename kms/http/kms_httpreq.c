/*
 * kms_httpreq.c - header checks of the HTTP front, free of libmicrohttpd.
 */
#include "kms_httpreq.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kms_twirp.h"

static bool content_type_ok(const char *ct)
{
    if (ct == NULL)
        return false;
    size_t n = strlen("application/protobuf");
    return strncasecmp(ct, "application/protobuf", n) == 0 && (ct[n] == '\0' || ct[n] == ';');
}

/* Twirp's JSON encoding: "application/json", optionally with
 * "; charset=utf-8" (RFC 8259 JSON is UTF-8; any other charset or
 * parameter is refused rather than guessed at). */
static bool content_type_json(const char *ct)
{
    static const char base[] = "application/json";
    if (ct == NULL || strncasecmp(ct, base, sizeof(base) - 1) != 0)
        return false;
    const char *p = ct + sizeof(base) - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return true;
    if (*p++ != ';')
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "charset=", 8) != 0)
        return false;
    p += 8;
    bool quoted = *p == '"';
    p += quoted;
    if (strncasecmp(p, "utf-8", 5) != 0)
        return false;
    p += 5;
    if (quoted && *p++ != '"')
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0';
}

kms_err kms_httpreq_check_body_len(size_t len, size_t max_body)
{
    KMS_ENSURE(len <= max_body, KMS_ERR_TOO_LARGE, "request body larger than %zu bytes",
               max_body);
    return KMS_OK;
}

kms_err kms_httpreq_check_head(const struct kms_httpreq_head *in, struct kms_httpreq *out)
{
    memset(out, 0, sizeof(*out));
    out->fn = kms_twirp_route(in->url, &out->method);
    /* Refusals before a route is known are not audited: there is no
     * operation, and an unauthenticated scanner must not fill the log. */
    KMS_ENSURE(strcmp(in->method, "POST") == 0, KMS_ERR_BAD_ROUTE,
               "Twirp methods are called with POST");
    KMS_ENSURE(out->fn != NULL, KMS_ERR_BAD_ROUTE, "no such method");
    out->request = kms_twirp_route_request(in->url);
    out->routed = true;
    out->response = kms_twirp_route_response(in->url);
    out->json = content_type_json(in->content_type);
    KMS_ENSURE(out->json || content_type_ok(in->content_type), KMS_ERR_BAD_ROUTE,
               "unsupported Content-Type: use application/protobuf or application/json");
    /* Two Content-Length headers are a request-smuggling shape (RFC 9112
     * section 6.3: an unrecoverable framing error). libmicrohttpd 0.9.75
     * frames the body by the first one and would parse what the other one
     * covers as the next request on the connection, while a proxy in front
     * may have framed by the second. Refused even when they agree: no
     * honest client sends two. */
    KMS_ENSURE(in->content_length_count <= 1, KMS_ERR_INVALID_ARGUMENT,
               "more than one Content-Length header");
    if (in->content_length != NULL) {
        const char *cl = in->content_length;
        char *end = NULL;
        unsigned long long v = strtoull(cl, &end, 10);
        KMS_ENSURE(end != cl && *end == '\0' && v <= in->max_body, KMS_ERR_TOO_LARGE,
                   "request body larger than %zu bytes", in->max_body);
    }
    if (in->correlation_id != NULL) {
        const char *corr = in->correlation_id;
        size_t n = strlen(corr);
        bool printable = n >= 1 && n <= KMS_HTTP_CORRELATION_MAX;
        for (size_t i = 0; printable && i < n; i++)
            printable = corr[i] > 0x20 && corr[i] < 0x7f;
        KMS_ENSURE(printable, KMS_ERR_INVALID_ARGUMENT,
                   "X-Correlation-Id must be 1..128 printable ASCII characters");
        memcpy(out->correlation_id, corr, n + 1);
    }
    return KMS_OK;
}

kms_err kms_httpreq_bearer(const char *auth, const char **out_key, size_t *out_len)
{
    *out_key = NULL;
    *out_len = 0;
    KMS_ENSURE(auth != NULL, KMS_ERR_UNAUTHENTICATED, "missing credentials");
    KMS_ENSURE(strncasecmp(auth, "Bearer ", 7) == 0, KMS_ERR_UNAUTHENTICATED,
               "Authorization must use the Bearer scheme");
    const char *key = auth + 7;
    size_t n = strlen(key);
    KMS_ENSURE(n >= 1 && n <= KMS_HTTP_BEARER_MAX, KMS_ERR_UNAUTHENTICATED, "invalid credentials");
    *out_key = key;
    *out_len = n;
    return KMS_OK;
}
