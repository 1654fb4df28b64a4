/*
 * kms_utf8.c - well-formed UTF-8 (kms_utf8.h).
 */
#include "kms_utf8.h"

size_t kms_utf8_next(const uint8_t *s, size_t n, uint32_t *out_cp)
{
    uint8_t c = s[0];
    size_t k;                     /* bytes in a well-formed sequence with this lead */
    uint8_t lo = 0x80, hi = 0xbf; /* the second byte's range (Table 3-7) */
    uint32_t cp;
    if (c < 0x80) {
        *out_cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* past U+10FFFF */
    } else {
        /* a continuation byte, C0/C1 (always overlong) or F5..FF */
        *out_cp = KMS_UTF8_BAD;
        return 1;
    }
    for (size_t j = 1; j < k; j++) {
        uint8_t lo_j = j == 1 ? lo : 0x80, hi_j = j == 1 ? hi : 0xbf;
        if (j >= n || s[j] < lo_j || s[j] > hi_j) {
            *out_cp = KMS_UTF8_BAD;
            return j;
        }
        cp = cp << 6 | (s[j] & 0x3f);
    }
    *out_cp = cp;
    return k;
}

bool kms_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        i += kms_utf8_next(s + i, n - i, &cp);
        if (cp == KMS_UTF8_BAD)
            return false;
    }
    return true;
}

bool kms_utf8_valid_nonul(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == 0)
            return false;
    return kms_utf8_valid(s, n);
}
