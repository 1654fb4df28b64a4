/*
 * kms_canon.h - canonical forms of identifiers, so that one person's phone
 * number or address gives one blind index however it was typed.
 *
 * Pure host code (no HSM, no allocation). docs/metadata.md states
 * the same rules for tenants; tests/unit/test_kms_canon.c pins them.
 *
 *   RAW          the bytes as given.
 *   E164         "+1 (415) 555-0123", "tel:+1-415-555-0123" -> "+14155550123".
 *                Surrounding ASCII whitespace is dropped; an optional "tel:"
 *                (any case) prefix is dropped; then a '+' is required; then
 *                digits with separators ' ', '-', '.' and one non-nested pair
 *                of parentheses around digits. The first digit (country
 *                code) is not 0; 7..15 digits in all (ITU-T E.164 allows at
 *                most 15; the shortest numbering plans in use give 7).
 *                Anything else is refused: letters ("1-800-FLOWERS"),
 *                extensions, URI parameters, a national number without '+',
 *                "00" or "011" prefixes (which country's exit code?),
 *                non-ASCII digits.
 *   EMAIL        local@domain, split at the last '@'. Surrounding ASCII
 *                whitespace is dropped. The domain is ASCII (IDNs as A-labels,
 *                "xn--..."), lowercased, one trailing '.' removed, 1..253
 *                bytes of LDH labels of 1..63; address literals ("[...]")
 *                are refused. The local part is a dot-atom or a quoted string
 *                (RFC 5321), UTF-8 allowed (RFC 6531); its case is kept,
 *                because RFC 5321 lets the receiving host treat it as case
 *                sensitive. A quoted string that could be written as a
 *                dot-atom is written so ("\"a.b\"" -> "a.b"); any other keeps
 *                its quotes with only '"' and '\' escaped. No provider rules
 *                (dots or "+tag" in Gmail addresses) are applied. Local part
 *                <= 64 bytes, address <= 254 bytes, after canonicalisation.
 *                Unicode is not normalised: send NFC.
 *   EMAIL_CI     EMAIL with ASCII letters of the local part lowercased too;
 *                a local part with non-ASCII characters is refused (folding
 *                case beyond ASCII needs Unicode tables and a locale).
 *
 * Errors are KMS_ERR_INVALID_ARGUMENT with a detail that states the rule
 * broken, never the value.
 */
#ifndef KMS_CANON_H
#define KMS_CANON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

/* Numeric values are on the wire (fields.proto Canonicalizer) and inside
 * blind indexes: never renumber. */
enum kms_canon {
    KMS_CANON_RAW = 1,
    KMS_CANON_E164 = 2,
    KMS_CANON_EMAIL = 3,
    KMS_CANON_EMAIL_CI = 4,
};

#define KMS_CANON_E164_DIGITS_MIN 7
#define KMS_CANON_E164_DIGITS_MAX 15
#define KMS_CANON_EMAIL_LOCAL_MAX 64
#define KMS_CANON_EMAIL_DOMAIN_MAX 253
#define KMS_CANON_EMAIL_MAX 254

/* "raw", "e164", "email", "email-ci"; "unknown" for anything else. */
const char *kms_canon_name(enum kms_canon c);

/* Is c one of the values above? */
bool kms_canon_valid(int c);

/*
 * Canonicalise in[0..len) into out (out_cap bytes; the canonical form is
 * never longer than the input, so out_cap >= len always suffices). in and
 * out must not overlap. On error nothing useful is in out and *out_len is 0.
 */
kms_err kms_canon_apply(enum kms_canon c, const uint8_t *in, size_t len, uint8_t *out,
                        size_t out_cap, size_t *out_len);

#endif
