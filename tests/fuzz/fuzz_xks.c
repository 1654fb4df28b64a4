/*
 * fuzz_xks - the XKS front's parsers of untrusted input (kms/xks): request
 * bodies (xks_request_parse, for each operation), the Authorization header
 * (xks_sigv4_parse) and the URI path (xks_path_parse).
 *
 * Input: one byte choosing the parser (0 Authorization, 1-4 the body of
 * metadata / encrypt / decrypt / health, 5 a path, 6 an endpoints file
 * (xks_config_load), 7 a whole signed request (xks_sigv4_verify with its
 * header callback)), then the text.
 * Properties: no crash, no leak; an accepted body is within the spec's
 * limits (plaintext and ciphertext <= 4300 bytes, AAD <= 8192, metadata
 * <= 20, a decrypt's IV of 12 or 16 bytes); a refusal names one of the
 * spec's errors; an accepted Authorization has a 64-hex signature and an
 * 8-digit date; a path's key id is within the spec's character set; an
 * endpoints file loads or is refused KMS_ERR_CONFIG / NOMEM, and a loaded
 * one answers its lookups; a request verifies only if re-signing it with
 * the same secret, scope and header list gives its signature.
 *
 * A request (7) is "PATH\nAUTHORIZATION\nName: value\n...\n\nBODY", verified
 * with the spec's example secret at the request's own x-amz-date (so the
 * time window never hides the rest), with the front's rule that a header
 * sent twice reads as absent.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <unistd.h>

#include "xks_api.h"
#include "xks_config.h"
#include "xks_sigv4.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *text(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

static void body(enum xks_op op, const uint8_t *data, size_t size)
{
    struct xks_request r;
    enum xks_error e = XKS_E_COUNT;
    if (xks_request_parse(op, data, size, &r, &e) != KMS_OK) {
        if (e >= XKS_E_COUNT || xks_error_name(e) == NULL)
            abort();
        return;
    }
    if (r.plaintext_len > XKS_DATA_MAX || r.ciphertext_len > XKS_DATA_MAX ||
        r.aad_len > XKS_AAD_MAX || r.md_len > XKS_MD_MAX)
        abort();
    if (op == XKS_OP_DECRYPT && r.iv_len != 12 && r.iv_len != 16)
        abort();
    if (op == XKS_OP_ENCRYPT && r.plaintext == NULL)
        abort();
    xks_request_wipe(&r);
}

/* An endpoints file: loaded from a scratch file (xks_config_load takes a
 * path), looked up, freed. */
static void config(const uint8_t *data, size_t size)
{
    static char path[64];
    if (path[0] == '\0') {
        snprintf(path, sizeof(path), "/tmp/fuzz_xks_config.%ld.json", (long)getpid());
        /* the seed's credential reads "env:FUZZ_XKS_SECRET" */
        setenv("FUZZ_XKS_SECRET", "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE", 1);
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return;
    fwrite(data, 1, size, f);
    fclose(f);
    struct xks_config *c = NULL;
    kms_err rc = xks_config_load(path, &c);
    unlink(path); /* nothing left in /tmp after a run */
    if (rc != KMS_OK) {
        if ((rc != KMS_ERR_CONFIG && rc != KMS_ERR_NOMEM) || c != NULL)
            abort();
        return;
    }
    const struct xks_endpoint *ep = xks_config_endpoint(c, "/f", 2);
    unsigned u = 0;
    if (ep != NULL && (xks_endpoint_tenant(ep)[0] == '\0' ||
                       (xks_endpoint_key(ep, "0123456789abcdef0123456789abcdef", &u) &&
                        (u & ~(unsigned)(XKS_USE_ENCRYPT | XKS_USE_DECRYPT)) != 0)))
        abort();
    xks_config_free(c);
}

#define REQ_HEADERS_MAX 32
struct headers {
    size_t n;
    char *name[REQ_HEADERS_MAX], *value[REQ_HEADERS_MAX];
};

/* As the front's lookup: case-insensitive; a header sent twice is absent. */
static const char *header(void *ctx, const char *name)
{
    const struct headers *h = ctx;
    const char *v = NULL;
    int seen = 0;
    for (size_t i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0) {
            v = h->value[i];
            seen++;
        }
    return seen == 1 ? v : NULL;
}

static void request(char *s, size_t size)
{
    static const char secret[] = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE";
    char *end = s + size, *path = s, *nl = memchr(s, '\n', size);
    if (nl == NULL)
        return;
    *nl = '\0';
    char *authz = nl + 1;
    if ((nl = memchr(authz, '\n', (size_t)(end - authz))) == NULL)
        return;
    *nl = '\0';
    struct headers h = {0};
    char *line = nl + 1;
    while (line < end && *line != '\n' && h.n < REQ_HEADERS_MAX) {
        nl = memchr(line, '\n', (size_t)(end - line));
        if (nl == NULL)
            return;
        *nl = '\0';
        char *colon = strchr(line, ':');
        if (colon != NULL) {
            *colon = '\0';
            h.name[h.n] = line;
            h.value[h.n++] = colon + 1 + strspn(colon + 1, " ");
        }
        line = nl + 1;
    }
    const uint8_t *body = (const uint8_t *)(line < end ? line + 1 : end);
    xks_sigv4_auth a;
    if (xks_sigv4_parse(authz, &a) != KMS_OK)
        return;
    xks_sigv4_req req = {"POST", path, "", header, &h, body, (size_t)((const uint8_t *)end - body)};
    time_t now = xks_sigv4_request_time(&req);
    if (xks_sigv4_verify(&req, &a, "kms-xks-proxy", (const uint8_t *)secret, strlen(secret),
                         now) != KMS_OK)
        return;
    /* accepted: it is exactly what the signer makes of it */
    char again[65];
    if (xks_sigv4_sign(&req, a.signed_headers, header(&h, "x-amz-date"), a.region,
                       "kms-xks-proxy", (const uint8_t *)secret, strlen(secret),
                       again) != KMS_OK ||
        strcmp(again, a.signature) != 0 || header(&h, "host") == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned which = data[0] % 8;
    data++;
    size--;
    if (which >= 1 && which <= 4) {
        body((enum xks_op)which, data, size);
        return 0;
    }
    if (which == 6) {
        config(data, size);
        return 0;
    }
    char *s = text(data, size);
    if (which == 7) {
        request(s, size);
    } else if (which == 0) {
        xks_sigv4_auth a;
        if (xks_sigv4_parse(s, &a) == KMS_OK &&
            (strlen(a.signature) != 64 || strlen(a.date) != 8 || a.access_key[0] == '\0'))
            abort();
    } else {
        struct xks_path p;
        if (xks_path_parse(s, &p) && p.op != XKS_OP_NONE && p.op != XKS_OP_HEALTH) {
            size_t n = strlen(p.key_id);
            if (n == 0 || n > XKS_KEY_ID_MAX ||
                strspn(p.key_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789-._") != n)
                abort();
        }
    }
    free(s);
    return 0;
}
