/*
 * kms_keyid.c - key ids (kms_keyid.h).
 */
#include "kms_keyid.h"

#include <string.h>

kms_err kms_key_id_parse(const char *hex, uint8_t out[16])
{
    KMS_ENSURE(hex != NULL && strlen(hex) == 32, KMS_ERR_INVALID_ARGUMENT,
               "key_id must be 32 lowercase hex characters");
    for (size_t i = 0; i < 32; i++) {
        char c = hex[i];
        int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        KMS_ENSURE(v >= 0, KMS_ERR_INVALID_ARGUMENT, "key_id must be 32 lowercase hex characters");
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return KMS_OK;
}

void kms_key_id_format(const uint8_t id[16], char out[33])
{
    static const char hexd[] = "0123456789abcdef";
    for (size_t i = 0; i < 16; i++) {
        out[2 * i] = hexd[id[i] >> 4];
        out[2 * i + 1] = hexd[id[i] & 15];
    }
    out[32] = '\0';
}
