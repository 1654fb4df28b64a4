/*
 * kms_text.c - free text that people read or sign (kms_text.h).
 */
#include "kms_text.h"

#include "kms_utf8.h"

/* General category Cf, Unicode 15.1 (DerivedGeneralCategory.txt), plus Zl
 * and Zp; sorted, inclusive. Cc is tested apart. U+2065 (unassigned, in the
 * middle of the invisible operators) is refused with its neighbours. */
static const struct {
    uint32_t lo, hi;
} refused[] = {
    {0x00ad, 0x00ad},   {0x0600, 0x0605},   {0x061c, 0x061c},   {0x06dd, 0x06dd},
    {0x070f, 0x070f},   {0x0890, 0x0891},   {0x08e2, 0x08e2},   {0x180e, 0x180e},
    {0x200b, 0x200f},   {0x2028, 0x202e},   {0x2060, 0x206f},   {0xfeff, 0xfeff},
    {0xfff9, 0xfffb},   {0x110bd, 0x110bd}, {0x110cd, 0x110cd}, {0x13430, 0x1343f},
    {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f},
};

bool kms_text_cp_refused(uint32_t cp)
{
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
        return true;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (cp >= refused[i].lo && cp <= refused[i].hi)
            return true;
    return false;
}

bool kms_text_ok(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        i += kms_utf8_next(p + i, n - i, &cp);
        if (cp == KMS_UTF8_BAD || kms_text_cp_refused(cp))
            return false;
    }
    return true;
}
