/*
 * fuzz_http_request - the HTTP front's request path as a function of the
 * bytes a client sends: the framing and header checks made on every request
 * (kms_httpreq_check_framing), the checks made before the body is read
 * (kms_httpreq_check_head), the bearer shape (kms_httpreq_bearer), the body
 * limit, and the decoding of the body as the route's request message (a JSON
 * body converted to wire bytes first, kms_pjson).
 *
 * Input: a raw HTTP/1.1 request, "METHOD URL VERSION\r\nName: value\r\n...
 * \r\n\r\nbody". The harness parses the header block the way libmicrohttpd
 * 0.9.75 does, in place: lines end at LF (a CR before it is dropped), each
 * separator becomes a NUL, values start after the colon and its spaces and
 * tabs, a '?' ends the URL, a line starting with a space or tab is glued
 * onto the previous header's name in a copy outside the block (obs-fold),
 * and every string is measured with strlen. That is the block kmsd checks.
 *
 * Properties: no crash or leak; a request accepted by the framing check was
 * received exactly as kmsd reads it: its header block holds no NUL, no
 * control byte but HTAB and the CRLF line ends, no bare CR or LF, no folded
 * line, no query string; no credential or framing header twice; never both
 * Content-Length and Transfer-Encoding; Transfer-Encoding only "chunked".
 * (The one exception, documented in kms_httpreq.h: NUL bytes sent in place
 * of the CR of a bare-LF line end look like that CR in libmicrohttpd's
 * buffer; they end a line and hide nothing after them.) A request
 * accepted by the head check names a route, a request type and a printable
 * correlation id, and is a POST.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kms_httpreq.h"
#include "kms_pbuf.h"
#include "kms_pjson.h"

#define MAX_BODY 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *header(const struct kms_httpreq_field *f, size_t n, const char *want)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(f[i].name, want) == 0)
            return f[i].value;
    return NULL;
}

static unsigned header_count(const struct kms_httpreq_field *f, size_t n, const char *want)
{
    unsigned c = 0;
    for (size_t i = 0; i < n; i++)
        c += strcasecmp(f[i].name, want) == 0;
    return c;
}

/* The end of the line starting at p (the LF), or NULL. */
static char *line_lf(char *p, const char *end)
{
    return memchr(p, '\n', (size_t)(end - p));
}

/* Overwrite the line end at lf like libmicrohttpd: LF and a CR before it. */
static void cut_line(char *line, char *lf)
{
    if (lf > line && lf[-1] == '\r')
        lf[-1] = '\0';
    *lf = '\0';
}

/* The raw header block [0, n) as a proxy would read it: true when it is
 * clean. The documented exception (kms_httpreq.h): libmicrohttpd
 * overwrites a CR and an LF with NUL, so NUL bytes sent at the very end of
 * a line, in place of the CRs of bare-LF line ends, look like CRs. Such
 * trailing NULs carry nothing (no byte of content follows them on their
 * line); when the block has any, the CRLF discipline is not asserted. */
static bool raw_block_clean(const uint8_t *raw, size_t n)
{
    bool has_nul = memchr(raw, '\0', n) != NULL;
    bool line_start = true, first_line = true;
    unsigned spaces = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = raw[i];
        if (c == '\0' || c == '\r') {
            /* only NUL and CR from here to the LF: a line end */
            size_t k = i;
            while (k < n && (raw[k] == '\0' || raw[k] == '\r'))
                k++;
            if (k == n || raw[k] != '\n')
                return false; /* NUL or CR inside a line */
            if (!has_nul && k != i + 1)
                return false;
            i = k - 1;
            continue;
        }
        if (c == '\n') {
            if (!has_nul && (i == 0 || raw[i - 1] != '\r'))
                return false; /* bare LF */
            if (first_line && spaces != 2)
                return false;
            first_line = false;
            line_start = true;
            continue;
        }
        if (line_start && (c == ' ' || c == '\t') && !first_line)
            return false; /* obs-fold */
        line_start = false;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
        if (first_line) {
            if (c == ' ')
                spaces++;
            if ((c == '?' && spaces == 1) || c == '\t')
                return false; /* a query string; a TAB taken for a space */
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (buf == NULL)
        abort();
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *end = buf + size;
    char *folded[KMS_HTTP_MAX_FIELDS + 1] = {NULL};
    struct kms_httpreq_field f[KMS_HTTP_MAX_FIELDS + 1];
    size_t nf = 0;

    /* The request line: METHOD SP URL SP VERSION, split by position in
     * the line (a NUL inside a part just shortens that part's string). */
    char *p = buf;
    char *lf = line_lf(p, end);
    if (lf == NULL)
        goto done;
    size_t line_len = (size_t)(lf - p) - (lf > p && lf[-1] == '\r');
    cut_line(p, lf);
    char *method = p, *url = NULL, *version = NULL;
    char *sp = memchr(p, ' ', line_len);
    char *last = memrchr(p, ' ', line_len);
    if (sp == NULL || last == sp)
        goto done;
    *sp = '\0';
    url = sp + 1;
    while (url < last && *url == ' ')
        url++;
    *last = '\0';
    version = last + 1;
    char *q = strchr(url, '?');
    if (q != NULL)
        *q = '\0';
    if (strcmp(version, "HTTP/1.1") != 0 && strcmp(version, "HTTP/1.0") != 0)
        goto done;
    p = lf + 1;

    /* Header lines up to the empty one. */
    for (;;) {
        lf = line_lf(p, end);
        if (lf == NULL)
            goto done; /* no end of the head: libmicrohttpd waits */
        cut_line(p, lf);
        if (*p == '\0') { /* the empty line, as libmicrohttpd sees it */
            p = lf + 1;
            break;
        }
        if ((*p == ' ' || *p == '\t') && nf > 0) {
            /* obs-fold: libmicrohttpd appends the continuation to the NAME,
             * in a new allocation */
            char *t = p;
            while (*t == ' ' || *t == '\t')
                t++;
            size_t a = strlen(f[nf - 1].name), b = strlen(t);
            char *n = malloc(a + b + 1);
            if (n == NULL)
                abort();
            memcpy(n, f[nf - 1].name, a);
            memcpy(n + a, t, b + 1);
            free(folded[nf - 1]);
            folded[nf - 1] = n;
            f[nf - 1].name = n;
            f[nf - 1].name_len = a + b;
        } else {
            char *colon = strchr(p, ':');
            if (colon == NULL || nf == KMS_HTTP_MAX_FIELDS + 1)
                goto done; /* libmicrohttpd answers 400 itself */
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            f[nf++] = (struct kms_httpreq_field){p, strlen(p), v, strlen(v)};
        }
        p = lf + 1;
    }
    size_t head_len = (size_t)(p - method);
    const uint8_t *body = (const uint8_t *)p;
    size_t body_len = (size_t)(end - p);

    struct kms_httpreq_block block = {
        .start = method,
        .size = head_len,
        .method = method,
        .url = url,
        .version = version,
        .fields = f,
        .n_fields = nf,
    };
    if (kms_httpreq_check_framing(&block) != KMS_OK)
        goto done;
    /* Accepted: what kmsd reads is what was sent. */
    if (method != buf || !raw_block_clean(data, head_len))
        abort();
    const char *te = header(f, nf, "Transfer-Encoding");
    if (nf > KMS_HTTP_MAX_FIELDS || (te != NULL && header(f, nf, "Content-Length") != NULL) ||
        (te != NULL && strcasecmp(te, "chunked") != 0))
        abort();
    static const char *const once[] = {"Host", "Authorization", "Content-Type",
                                       "Content-Length", "Transfer-Encoding", "X-Correlation-Id"};
    for (size_t i = 0; i < sizeof(once) / sizeof(once[0]); i++)
        if (header_count(f, nf, once[i]) > 1)
            abort();

    struct kms_httpreq_head in = {
        .method = method,
        .url = url,
        .content_type = header(f, nf, "Content-Type"),
        .content_length = header(f, nf, "Content-Length"),
        .correlation_id = header(f, nf, "X-Correlation-Id"),
        .max_body = MAX_BODY,
    };
    struct kms_httpreq req;
    if (kms_httpreq_check_head(&in, &req) != KMS_OK) {
        /* Refused before a route: never audited, never routed. */
        if (!req.routed && req.route != NULL && strcmp(method, "POST") == 0)
            abort();
        goto done;
    }
    if (req.route == NULL || req.request == NULL || req.method == NULL ||
        strcmp(method, "POST") != 0)
        abort();
    /* Never accepted with two framings of the body. */
    if (header_count(f, nf, "Content-Length") > 1)
        abort();
    for (const char *c = req.correlation_id; *c; c++)
        if (*c <= 0x20 || *c >= 0x7f)
            abort();
    const char *key;
    size_t key_len;
    if (kms_httpreq_bearer(header(f, nf, "Authorization"), &key, &key_len) != KMS_OK)
        goto done;
    if (key_len == 0 || key_len > KMS_HTTP_BEARER_MAX)
        abort();
    if (kms_httpreq_check_body_len(body_len, MAX_BODY) != KMS_OK)
        goto done;
    /* application/json: the body becomes wire bytes first, as in kms_http.c. */
    uint8_t *wire = NULL;
    size_t wire_len = 0;
    if (req.json) {
        if (req.response == NULL)
            abort();
        if (kms_pjson_to_wire(req.request, body, body_len, MAX_BODY, &wire, &wire_len) != KMS_OK)
            goto done;
        body = wire;
        body_len = wire_len;
    }
    ProtobufCMessage *m = kms_pbuf_unpack(req.request, body, body_len);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    free(wire);
done:
    for (size_t i = 0; i < KMS_HTTP_MAX_FIELDS + 1; i++)
        free(folded[i]);
    free(buf);
    return 0;
}
