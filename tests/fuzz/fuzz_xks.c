/*
 * fuzz_xks - the XKS front's parsers of untrusted input (kms/xks): request
 * bodies (xks_request_parse, for each operation), the Authorization header
 * (xks_sigv4_parse) and the URI path (xks_path_parse).
 *
 * Input: one byte choosing the parser (0 Authorization, 1-4 the body of
 * metadata / encrypt / decrypt / health, 5 a path), then the text.
 * Properties: no crash, no leak; an accepted body is within the spec's
 * limits (plaintext and ciphertext <= 4300 bytes, AAD <= 8192, metadata
 * <= 20, a decrypt's IV of 12 or 16 bytes); a refusal names one of the
 * spec's errors; an accepted Authorization has a 64-hex signature and an
 * 8-digit date; a path's key id is within the spec's character set.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xks_api.h"
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned which = data[0] % 6;
    data++;
    size--;
    if (which >= 1 && which <= 4) {
        body((enum xks_op)which, data, size);
        return 0;
    }
    char *s = text(data, size);
    if (which == 0) {
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
