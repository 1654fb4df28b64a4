/*
 * kms_b64.c - Base64 digits (kms_b64.h).
 */
#include "kms_b64.h"

#include <stddef.h>

int kms_b64_digit(unsigned char c, unsigned accept, unsigned *used)
{
    unsigned alphabet = 0;
    int v = -1;
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '/') {
        alphabet = KMS_B64_STD;
        v = c == '+' ? 62 : 63;
    } else if (c == '-' || c == '_') {
        alphabet = KMS_B64_URL;
        v = c == '-' ? 62 : 63;
    }
    if ((accept & alphabet) == 0)
        return -1;
    if (used != NULL)
        *used |= alphabet;
    return v;
}
