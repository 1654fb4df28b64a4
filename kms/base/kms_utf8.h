/*
 * kms_utf8.h - well-formed UTF-8, the one validator every layer uses.
 *
 * Well-formed as Unicode defines it (section 3.9, Table 3-7) and RFC 3629
 * restricts it: no overlong forms, no surrogates (U+D800..DFFF), nothing
 * past U+10FFFF, no truncated sequence. Each caller adds its own rule on
 * top (no NUL for strings that become C strings, no control or format
 * characters for free text: kms_text.h); none of them decodes UTF-8 itself.
 * Thread-safety: pure functions.
 */
#ifndef KMS_UTF8_H
#define KMS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What kms_utf8_next stores for an ill-formed sequence. */
#define KMS_UTF8_BAD UINT32_MAX

/*
 * The sequence at the start of s[0..n-1], n >= 1. Well-formed: returns its
 * length (1..4) and stores its code point in *out_cp. Ill-formed: returns
 * the length of its maximal subpart (Unicode 15, section 3.9, "U+FFFD
 * substitution of maximal subparts": the bytes that could begin a
 * well-formed sequence, or the one byte that cannot; 1..3) and stores
 * KMS_UTF8_BAD, so that a renderer can put one U+FFFD for it and go on.
 */
size_t kms_utf8_next(const uint8_t *s, size_t n, uint32_t *out_cp);

/* true if s[0..n-1] is well-formed UTF-8 (NUL is a code point like any
 * other here). The empty string is. */
bool kms_utf8_valid(const uint8_t *s, size_t n);

/* true if s[0..n-1] is well-formed UTF-8 without a NUL byte: text that a C
 * string carries whole (a NUL would silently cut "alice\0mallory" to
 * "alice"). */
bool kms_utf8_valid_nonul(const uint8_t *s, size_t n);

#endif
