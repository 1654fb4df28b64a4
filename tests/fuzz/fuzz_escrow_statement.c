/*
 * fuzz_escrow_statement - what an officer signs and what kmsd checks
 * (kms/keys/kms_recovery_stmt.c): the free text a requester supplies, the
 * canonical statement built from it, and the verification of an approval
 * signature over it.
 *
 * Input: 1 byte (mode and justification), then justification text, case
 * reference and recipient separated by 0x00, then the signature bytes.
 * Properties: text the checker accepts has no control character (C0, DEL,
 * C1 such as NEL), no line or paragraph separator, no bidi control and no
 * zero-width character, and fits its bound; a statement built from accepted text has exactly its 13 lines,
 * each "name: value" (no field can forge a line); a signature from the input
 * never verifies with a key it was not made with, and malformed DER is a
 * refusal, not a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>

#include "kms_recovery_stmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EVP_PKEY *officer;

/* The next 0x00-terminated field of the input, copied into out. */
static const uint8_t *field(const uint8_t *p, const uint8_t *end, char *out, size_t cap)
{
    size_t n = 0;
    while (p < end && *p != 0) {
        if (n + 1 < cap)
            out[n++] = (char)*p;
        p++;
    }
    out[n] = '\0';
    return p < end ? p + 1 : end;
}

static void text_property(const char *s, size_t max)
{
    if (!kms_recovery_text_ok(s, max))
        return;
    size_t n = strlen(s);
    if (n < 1 || n > max)
        abort();
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n; i++) {
        if (u[i] < 0x20 || u[i] == 0x7f)
            abort();
        /* C1 controls (NEL is C2 85): U+0080..U+009F */
        if (u[i] == 0xc2 && i + 1 < n && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f)
            abort();
        /* U+200B..U+200F, U+2028..U+202E, U+2060..U+206F: E2 80 8B-8F,
         * E2 80 A8-AE, E2 81 A0-AF */
        if (u[i] == 0xe2 && i + 2 < n &&
            ((u[i + 1] == 0x80 && ((u[i + 2] >= 0x8b && u[i + 2] <= 0x8f) ||
                                   (u[i + 2] >= 0xa8 && u[i + 2] <= 0xae))) ||
             (u[i + 1] == 0x81 && u[i + 2] >= 0xa0 && u[i + 2] <= 0xaf)))
            abort();
        /* U+FEFF (EF BB BF), U+061C (D8 9C) */
        if ((u[i] == 0xef && i + 2 < n && u[i + 1] == 0xbb && u[i + 2] == 0xbf) ||
            (u[i] == 0xd8 && i + 1 < n && u[i + 1] == 0x9c))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (officer == NULL && (officer = EVP_EC_gen("P-256")) == NULL)
        abort();
    if (size < 1)
        return 0;
    const uint8_t *p = data + 1, *end = data + size;
    struct kms_recovery_record r;
    memset(&r, 0, sizeof(r));
    p = field(p, end, r.justification_text, sizeof(r.justification_text));
    p = field(p, end, r.case_reference, sizeof(r.case_reference));
    p = field(p, end, r.recipient, sizeof(r.recipient));
    text_property(r.justification_text, KMS_RECOVERY_TEXT_MAX);
    text_property(r.case_reference, KMS_RECOVERY_CASE_MAX);
    if (!kms_recovery_text_ok(r.justification_text, KMS_RECOVERY_TEXT_MAX) ||
        !kms_recovery_text_ok(r.case_reference, KMS_RECOVERY_CASE_MAX))
        return 0;
    snprintf(r.recovery_id, sizeof(r.recovery_id), "%032x", 7);
    snprintf(r.tenant, sizeof(r.tenant), "bank");
    snprintf(r.key_id, sizeof(r.key_id), "%032x", 9);
    snprintf(r.region, sizeof(r.region), "eu-west");
    r.versions[0] = 1;
    r.n_versions = 1;
    r.mode = 1 + (data[0] & 1);
    r.justification = data[0] >> 1;
    r.restore_state = 1;
    snprintf(r.requester, sizeof(r.requester), "officer-1");
    r.expires_at = 1795798800;
    /* The recipient id is policy-checked text; keep only what policy ids allow. */
    for (char *c = r.recipient; *c; c++)
        if (!(*c >= 'a' && *c <= 'z') && !(*c >= '0' && *c <= '9') && *c != '-')
            *c = 'x';
    char stmt[KMS_RECOVERY_STMT_MAX];
    size_t len = 0;
    if (kms_recovery_statement(&r, stmt, sizeof(stmt), &len) != KMS_OK)
        abort();
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        if (stmt[i] == '\n') {
            lines++;
            const char *prev = i + 1 < len ? stmt + i + 1 : NULL;
            if (prev && strchr(prev, ':') == NULL)
                abort();
        }
    if (lines != 13 || stmt[len - 1] != '\n')
        abort();
    size_t sig_len = (size_t)(end - p);
    if (sig_len > 0 && sig_len <= 80 &&
        kms_recovery_verify(officer, stmt, len, p, sig_len) != KMS_ERR_PERMISSION_DENIED)
        abort();
    return 0;
}
