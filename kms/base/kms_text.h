/*
 * kms_text.h - free text that people read or sign.
 *
 * A recovery's justification text, case reference and cancel reason are
 * written into the canonical statement officers read and sign, and a key's
 * description is shown by kmsctl and in logs. Such text must mean to the
 * reader what it meant to the writer, so beyond well-formed UTF-8 it holds
 * no code point that moves, hides or breaks lines:
 *
 *   Cc  C0 and C1 controls and DEL (U+0000..001F, U+007F..009F): NEL
 *       (U+0085) is a line break to some viewers, ESC starts terminal
 *       sequences;
 *   Zl  U+2028 LINE SEPARATOR, Zp  U+2029 PARAGRAPH SEPARATOR: line breaks;
 *   Cf  every format character of Unicode 15.1: the bidi embeddings,
 *       overrides and isolates (U+202A..202E, U+2066..2069) and marks
 *       (U+200E, U+200F, U+061C) that reorder what is displayed, the
 *       zero-width characters (U+200B..200D, U+2060..2064, U+FEFF) that
 *       make two different texts look alike, soft hyphen, tags and the rest.
 *
 * One list for every such field, so that no field is stricter or looser
 * than another. Thread-safety: pure functions.
 */
#ifndef KMS_TEXT_H
#define KMS_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* true if the code point is refused in free text (Cc, Cf, Zl, Zp). */
bool kms_text_cp_refused(uint32_t cp);

/* true if s[0..n-1] is well-formed UTF-8 (no overlong forms, surrogates or
 * code points past U+10FFFF) with no code point kms_text_cp_refused refuses
 * (so no NUL either). The empty text is ok; lengths are the caller's rule. */
bool kms_text_ok(const char *s, size_t n);

#endif
