/*
 * kms_httpreq.c - header checks of the HTTP front, free of libmicrohttpd.
 */
#include "kms_httpreq.h"

#include <stdint.h>
#include <stdio.h>
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
    out->route = kms_twirp_route(in->url, &out->method);
    /* Refusals before a route is known are not audited: there is no
     * operation, and an unauthenticated scanner must not fill the log. */
    KMS_ENSURE(strcmp(in->method, "POST") == 0, KMS_ERR_BAD_ROUTE,
               "Twirp methods are called with POST");
    KMS_ENSURE(out->route != NULL, KMS_ERR_BAD_ROUTE, "no such method");
    out->request = out->route->request;
    out->routed = true;
    out->response = out->route->response;
    out->json = content_type_json(in->content_type);
    KMS_ENSURE(out->json || content_type_ok(in->content_type), KMS_ERR_BAD_ROUTE,
               "unsupported Content-Type: use application/protobuf or application/json");
    /* Two Content-Length headers never get here: kms_httpreq_check_framing
     * refuses every repeated framing header before the route is looked at. */
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
        /* Visible ASCII: HTTP strips spaces at a value's ends, so an id with
         * spaces could not be audited exactly as the client holds it. */
        KMS_ENSURE(printable, KMS_ERR_INVALID_ARGUMENT,
                   "X-Correlation-Id must be 1..128 visible ASCII characters "
                   "(0x21-0x7e, no space)");
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

/* ---- framing and header hygiene ---------------------------------------------- */

/* Headers that mean one thing: a second copy, even an equal one, is a
 * request that a proxy and kmsd may read differently (libmicrohttpd
 * answers lookups with the first, many proxies keep the last). */
static const char *const singletons[] = {
    "Host", "Authorization", "Content-Type", "Content-Length", "Transfer-Encoding",
    "X-Correlation-Id",
};

/* Longest header name quoted in a refusal; names are tokens, so printable. */
#define NAME_QUOTE_MAX 64

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool field_is(const struct kms_httpreq_field *f, const char *name)
{
    return f->name_len == strlen(name) && strncasecmp(f->name, name, f->name_len) == 0;
}

/* Offset of [p, p + len) inside the block, or SIZE_MAX when any of it lies
 * outside (a folded header's name lives in a copy elsewhere). */
static size_t block_offset(const struct kms_httpreq_block *b, const char *p, size_t len)
{
    uintptr_t s = (uintptr_t)b->start, q = (uintptr_t)p;
    if (p == NULL || q < s || q - s > b->size || len > b->size - (q - s))
        return SIZE_MAX;
    return (size_t)(q - s);
}

static bool all_nul(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != '\0')
            return false;
    return true;
}

/* Between two strings of the block there must be exactly the separator
 * libmicrohttpd overwrote: `want` NULs. What else is there was sent and
 * dropped from view. */
static kms_err line_end(const struct kms_httpreq_block *b, size_t pos, size_t next,
                        size_t want, const char *after)
{
    size_t gap = next == SIZE_MAX || next < pos ? SIZE_MAX : next - pos;
    if (gap == want && all_nul(b->start + pos, want))
        return KMS_OK;
    KMS_ENSURE(!(gap < want && gap >= want / 2 && all_nul(b->start + pos, gap)),
               KMS_ERR_INVALID_ARGUMENT,
               "a line of the header block ends with a bare LF: lines must end with CRLF");
    return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                       "a NUL byte in or after %s: the header block must not contain NUL", after);
}

static kms_err check_layout(const struct kms_httpreq_block *b)
{
    KMS_ENSURE(b->start != NULL && b->method == b->start && b->url && b->version,
               KMS_ERR_INVALID_ARGUMENT, "malformed request line");
    size_t mlen = strlen(b->method), ulen = strlen(b->url), vlen = strlen(b->version);
    size_t url = block_offset(b, b->url, ulen), ver = block_offset(b, b->version, vlen);
    bool token = mlen > 0;
    for (size_t k = 0; token && k < mlen; k++)
        token = is_tchar((unsigned char)b->method[k]);
    KMS_ENSURE(token && mlen < b->size && url == mlen + 1 && b->start[mlen] == '\0',
               KMS_ERR_INVALID_ARGUMENT,
               "malformed request line: method, one space, path, one space, version");
    KMS_ENSURE(ver != SIZE_MAX && ver == url + ulen + 1 && b->start[url + ulen] == '\0',
               KMS_ERR_INVALID_ARGUMENT,
               "the request target must be a path alone: no query string, no NUL byte");
    /* Visible characters only: a control byte in the path (or a TAB
     * that some proxies take for the separator) must not route. */
    for (size_t k = 0; k < ver + vlen; k++) {
        unsigned char ch = (unsigned char)b->start[k];
        KMS_ENSURE(ch == '\0' || (ch > 0x20 && ch < 0x7f), KMS_ERR_INVALID_ARGUMENT,
                   "a control character or non-ASCII byte in the request line");
    }
    size_t pos = ver + vlen;
    char after[NAME_QUOTE_MAX + 32];
    snprintf(after, sizeof(after), "the request line");
    for (size_t i = 0; i < b->n_fields; i++) {
        const struct kms_httpreq_field *f = &b->fields[i];
        size_t name = block_offset(b, f->name, f->name_len + 1);
        KMS_ENSURE(name != SIZE_MAX, KMS_ERR_INVALID_ARGUMENT,
                   "a header line folded onto the next (obs-fold) is not accepted");
        KMS_GUARD(line_end(b, pos, name, 2, after));
        /* name, the ':' (now NUL), optional whitespace, the value */
        size_t value = block_offset(b, f->value, f->value_len);
        size_t colon = name + f->name_len;
        KMS_ENSURE(value != SIZE_MAX && value > colon && b->start[colon] == '\0',
                   KMS_ERR_INVALID_ARGUMENT, "malformed header line");
        for (size_t k = colon + 1; k < value; k++)
            KMS_ENSURE(b->start[k] == ' ' || b->start[k] == '\t', KMS_ERR_INVALID_ARGUMENT,
                       "malformed header line");
        pos = value + f->value_len;
        snprintf(after, sizeof(after), "the value of %.*s",
                 (int)(f->name_len < NAME_QUOTE_MAX ? f->name_len : NAME_QUOTE_MAX), f->name);
    }
    /* the last line's CRLF, then the empty line's */
    return line_end(b, pos, b->size, 4, after);
}

static kms_err check_fields(const struct kms_httpreq_block *b)
{
    const struct kms_httpreq_field *cl = NULL, *te = NULL;
    unsigned seen[sizeof(singletons) / sizeof(singletons[0])] = {0};
    for (size_t i = 0; i < b->n_fields; i++) {
        const struct kms_httpreq_field *f = &b->fields[i];
        int q = (int)(f->name_len < NAME_QUOTE_MAX ? f->name_len : NAME_QUOTE_MAX);
        bool token = f->name_len > 0;
        for (size_t k = 0; token && k < f->name_len; k++)
            token = is_tchar((unsigned char)f->name[k]);
        /* "Transfer-Encoding : chunked" arrives as a name ending in a
         * space: libmicrohttpd ignores it, a lenient proxy does not. */
        KMS_ENSURE(token, KMS_ERR_INVALID_ARGUMENT,
                   "a header name that is not an RFC 9110 token (a space before the colon?)");
        for (size_t k = 0; k < f->value_len; k++) {
            unsigned char c = (unsigned char)f->value[k];
            KMS_ENSURE((c >= 0x20 || c == '\t') && c != 0x7f, KMS_ERR_INVALID_ARGUMENT,
                       "header %.*s: a control character (0x%02x) in its value", q, f->name, c);
        }
        for (size_t s = 0; s < sizeof(singletons) / sizeof(singletons[0]); s++)
            if (field_is(f, singletons[s]))
                KMS_ENSURE(seen[s]++ == 0, KMS_ERR_INVALID_ARGUMENT, "more than one %s header",
                           singletons[s]);
        if (field_is(f, "Content-Length"))
            cl = f;
        else if (field_is(f, "Transfer-Encoding"))
            te = f;
    }
    KMS_ENSURE(cl == NULL || te == NULL, KMS_ERR_INVALID_ARGUMENT,
               "both Content-Length and Transfer-Encoding: the body must have one framing");
    if (te != NULL) {
        KMS_ENSURE(strcmp(b->version, "HTTP/1.1") == 0, KMS_ERR_INVALID_ARGUMENT,
                   "Transfer-Encoding is only accepted in HTTP/1.1 requests");
        KMS_ENSURE(te->value_len == 7 && strncasecmp(te->value, "chunked", 7) == 0,
                   KMS_ERR_INVALID_ARGUMENT,
                   "Transfer-Encoding must be exactly \"chunked\" (no other coding, list or "
                   "parameter)");
    }
    if (cl != NULL) {
        bool digits = cl->value_len >= 1 && cl->value_len <= 19;
        for (size_t k = 0; digits && k < cl->value_len; k++)
            digits = cl->value[k] >= '0' && cl->value[k] <= '9';
        KMS_ENSURE(digits, KMS_ERR_INVALID_ARGUMENT, "Content-Length must be 1..19 digits");
    }
    return KMS_OK;
}

kms_err kms_httpreq_check_framing(const struct kms_httpreq_block *b)
{
    KMS_ENSURE(b->n_fields <= KMS_HTTP_MAX_FIELDS, KMS_ERR_INVALID_ARGUMENT,
               "more than %d header fields", KMS_HTTP_MAX_FIELDS);
    /* The layout first: the field checks below read values by their
     * lengths and must see everything that was sent. */
    KMS_GUARD(check_layout(b));
    return check_fields(b);
}
