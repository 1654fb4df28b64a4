/*
 * fuzz_http_request - the HTTP front's request path as a function of the
 * request's headers and body: the checks made before the body is read
 * (kms_httpreq_check_head), the bearer shape (kms_httpreq_bearer), the body
 * limit, and the decoding of the body as the route's request message (a JSON
 * body converted to wire bytes first, kms_pjson).
 *
 * Input: a raw HTTP/1.1 request, "METHOD URL\r\nName: value\r\n...\r\n\r\nbody".
 * libmicrohttpd does the framing in production; this harness splits lines
 * itself and, like MHD_lookup_connection_value, takes the first of repeated
 * headers. Properties: no crash or leak; an accepted request names a route,
 * a request type and a printable correlation id, and is a POST.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kms_httpreq.h"
#include "kms_pbuf.h"
#include "kms_pjson.h"

#define MAX_BODY 65536

static unsigned header_count(char *const *names, size_t n, const char *want)
{
    unsigned c = 0;
    for (size_t i = 0; i < n; i++)
        c += strcasecmp(names[i], want) == 0;
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *header(char *const *names, char *const *values, size_t n, const char *want)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(names[i], want) == 0)
            return values[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The head is text up to the first blank line; the rest is the body. */
    const uint8_t *sep = memmem(data, size, "\r\n\r\n", 4);
    if (sep == NULL)
        return 0;
    size_t head_len = (size_t)(sep - data);
    const uint8_t *body = sep + 4;
    size_t body_len = size - head_len - 4;
    char *head = malloc(head_len + 1);
    if (head == NULL)
        abort();
    memcpy(head, data, head_len);
    head[head_len] = '\0';

    enum { MAXH = 32 };
    char *names[MAXH], *values[MAXH];
    size_t nh = 0;
    char *save = NULL;
    char *line = strtok_r(head, "\r\n", &save);
    char *method = line, *url = NULL;
    if (line != NULL) {
        char *sp = strchr(line, ' ');
        if (sp != NULL) {
            *sp = '\0';
            url = sp + 1;
            char *sp2 = strchr(url, ' '); /* " HTTP/1.1" */
            if (sp2 != NULL)
                *sp2 = '\0';
        }
    }
    while (line != NULL && (line = strtok_r(NULL, "\r\n", &save)) != NULL && nh < MAXH) {
        char *colon = strchr(line, ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        names[nh] = line;
        values[nh++] = v;
    }
    if (method == NULL || url == NULL)
        goto done;

    struct kms_httpreq_head in = {
        .method = method,
        .url = url,
        .content_type = header(names, values, nh, "Content-Type"),
        .content_length = header(names, values, nh, "Content-Length"),
        .content_length_count = header_count(names, nh, "Content-Length"),
        .correlation_id = header(names, values, nh, "X-Correlation-Id"),
        .max_body = MAX_BODY,
    };
    struct kms_httpreq req;
    if (kms_httpreq_check_head(&in, &req) != KMS_OK) {
        /* Refused before a route: never audited, never routed. */
        if (!req.routed && req.fn != NULL && strcmp(method, "POST") == 0)
            abort();
        goto done;
    }
    if (req.fn == NULL || req.request == NULL || req.method == NULL || strcmp(method, "POST") != 0)
        abort();
    /* Never accepted with two framings of the body. */
    if (in.content_length_count > 1)
        abort();
    for (const char *p = req.correlation_id; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            abort();
    const char *key;
    size_t key_len;
    if (kms_httpreq_bearer(header(names, values, nh, "Authorization"), &key, &key_len) != KMS_OK)
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
    free(head);
    return 0;
}
