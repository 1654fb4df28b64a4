/*
 * fuzz_linktoken - the link token parser (kms_linktoken_decode), run on the
 * token a RedeemLinkToken caller sends.
 * Property: accepted exactly when the input is 48 base64url characters
 * whose bytes are format 1 with a non-zero version and expiry; an accepted
 * token encodes back to the same text (one text per token).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_linktoken.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int b64(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kms_linktoken t;
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN];
    bool ok = kms_linktoken_decode(size ? (const char *)data : NULL, size, &t, raw) == KMS_OK;
    bool alphabet = size == KMS_LINKTOKEN_TEXT_LEN;
    for (size_t i = 0; alphabet && i < size; i++)
        alphabet = b64(data[i]);
    if (ok && !alphabet)
        abort();
    if (!ok)
        return 0;
    if (raw[0] != KMS_LINKTOKEN_FORMAT || t.key_version == 0 || t.expires_at <= 0)
        abort();
    char text[KMS_LINKTOKEN_TEXT_LEN + 1];
    if (kms_linktoken_encode(&t, text) != KMS_OK || memcmp(text, data, size) != 0)
        abort();
    return 0;
}
