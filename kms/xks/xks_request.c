/*
 * xks_request.c - XKS request bodies: JSON (jansson, duplicate members
 * refused), the spec's required fields per operation, strict Base64, the
 * spec's sizes (xks_api.h). Unknown members are ignored, as AWS KMS may add
 * requestMetadata fields at any time (spec, Appendix B).
 */
#include "xks_api.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

void xks_request_wipe(struct xks_request *r)
{
    if (r->plaintext != NULL) {
        OPENSSL_cleanse(r->plaintext, r->plaintext_len);
        free(r->plaintext);
    }
    free(r->ciphertext);
    OPENSSL_cleanse(r, sizeof(*r));
}

static kms_err bad(enum xks_error *err, enum xks_error e, const char *field, const char *why)
{
    *err = e;
    return kms_err_set(e == XKS_E_UNSUPPORTED ? KMS_ERR_TOO_LARGE : KMS_ERR_INVALID_ARGUMENT,
                       "%s: %s", field, why);
}

/* Characters of s[0..n-1], valid UTF-8 (jansson checked it): the bytes
 * that do not continue a sequence. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* A string member copied into out[cap]; absent is "" unless required.
 * max_chars: the spec's bound in characters (0: cap's bytes alone). */
static kms_err take_str_chars(json_t *obj, const char *name, bool required, char *out,
                              size_t cap, size_t max_chars, enum xks_error *err)
{
    json_t *v = json_object_get(obj, name);
    out[0] = '\0';
    if (v == NULL)
        return required ? bad(err, XKS_E_VALIDATION, name, "required") : KMS_OK;
    if (!json_is_string(v))
        return bad(err, XKS_E_VALIDATION, name, "must be a string");
    size_t n = json_string_length(v);
    if (n >= cap || (max_chars > 0 && utf8_chars(json_string_value(v), n) > max_chars))
        return bad(err, XKS_E_VALIDATION, name, "too long");
    if (memchr(json_string_value(v), '\0', n) != NULL)
        return bad(err, XKS_E_VALIDATION, name, "holds a NUL character");
    memcpy(out, json_string_value(v), n + 1);
    return KMS_OK;
}

static kms_err take_str(json_t *obj, const char *name, bool required, char *out, size_t cap,
                        enum xks_error *err)
{
    return take_str_chars(obj, name, required, out, cap, 0, err);
}

/* A Base64 member decoded into out[cap]; over cap: Unsupported (the value
 * may be legal but over kmsd's limit) when over_is_unsupported. */
static kms_err take_b64(json_t *obj, const char *name, bool required, uint8_t *out, size_t cap,
                        bool over_is_unsupported, size_t *len, bool *present,
                        enum xks_error *err)
{
    json_t *v = json_object_get(obj, name);
    *len = 0;
    if (present)
        *present = v != NULL;
    if (v == NULL)
        return required ? bad(err, XKS_E_VALIDATION, name, "required") : KMS_OK;
    if (!json_is_string(v))
        return bad(err, XKS_E_VALIDATION, name, "must be a Base64 string");
    const char *s = json_string_value(v);
    if (json_string_length(v) / 4 * 3 > cap + 2 && over_is_unsupported)
        return bad(err, XKS_E_UNSUPPORTED, name, "larger than kmsd supports");
    if (!xks_b64_decode(s, out, cap, len)) {
        if (over_is_unsupported && json_string_length(v) / 4 * 3 > cap)
            return bad(err, XKS_E_UNSUPPORTED, name, "larger than kmsd supports");
        size_t need = 0;
        if (xks_b64_decode(s, NULL, SIZE_MAX, &need)) { /* valid, only too long */
            char why[64];
            snprintf(why, sizeof(why), "longer than %zu bytes", cap);
            return bad(err, XKS_E_VALIDATION, name, why);
        }
        return bad(err, XKS_E_VALIDATION, name, "not valid Base64");
    }
    return KMS_OK;
}

static kms_err take_metadata(json_t *root, struct xks_request *r, enum xks_error *err)
{
    json_t *m = json_object_get(root, "requestMetadata");
    bool health = r->op == XKS_OP_HEALTH;
    if (!json_is_object(m)) {
        if (health)
            return KMS_OK;
        return bad(err, XKS_E_VALIDATION, "requestMetadata", "required object");
    }
    bool crypto = r->op == XKS_OP_ENCRYPT || r->op == XKS_OP_DECRYPT;
    KMS_GUARD(take_str(m, "kmsRequestId", !health, r->kms_request_id,
                       sizeof(r->kms_request_id), err));
    KMS_GUARD(take_str(m, "kmsOperation", !health, r->kms_operation, sizeof(r->kms_operation),
                       err));
    if (health)
        return KMS_OK;
    /* The spec counts ARNs in characters: up to 4 bytes each in UTF-8. */
    KMS_GUARD(take_str_chars(m, "awsPrincipalArn", true, r->principal_arn,
                             sizeof(r->principal_arn), XKS_ARN_MAX, err));
    KMS_GUARD(take_str_chars(m, "kmsKeyArn", crypto, r->key_arn, sizeof(r->key_arn),
                             XKS_ARN_MAX, err));
    KMS_GUARD(take_str(m, "awsSourceVpc", false, r->source_vpc, sizeof(r->source_vpc), err));
    KMS_GUARD(take_str(m, "awsSourceVpce", false, r->source_vpce, sizeof(r->source_vpce), err));
    return take_str(m, "kmsViaService", false, r->via_service, sizeof(r->via_service), err);
}

static kms_err take_alg(json_t *root, const char *name, const char *want, bool required,
                        bool *present, enum xks_error *err)
{
    char v[32];
    KMS_GUARD(take_str(root, name, required, v, sizeof(v), err));
    if (present)
        *present = v[0] != '\0';
    if (v[0] != '\0' && strcmp(v, want) != 0)
        return bad(err, XKS_E_VALIDATION, name, want[0] == 'A' ? "must be AES_GCM"
                                                               : "must be SHA_256");
    return KMS_OK;
}

static kms_err take_encrypt(json_t *root, struct xks_request *r, enum xks_error *err)
{
    KMS_GUARD(take_alg(root, "encryptionAlgorithm", "AES_GCM", true, NULL, err));
    KMS_GUARD(take_alg(root, "ciphertextDataIntegrityValueAlgorithm", "SHA_256", false,
                       &r->want_cdiv, err));
    KMS_GUARD(take_b64(root, "additionalAuthenticatedData", false, r->aad, sizeof(r->aad), true,
                       &r->aad_len, NULL, err));
    r->plaintext = malloc(XKS_DATA_MAX);
    if (r->plaintext == NULL)
        return bad(err, XKS_E_INTERNAL, "plaintext", "out of memory");
    return take_b64(root, "plaintext", true, r->plaintext, XKS_DATA_MAX, true, &r->plaintext_len,
                    NULL, err);
}

static kms_err take_decrypt(json_t *root, struct xks_request *r, enum xks_error *err)
{
    KMS_GUARD(take_alg(root, "encryptionAlgorithm", "AES_GCM", true, NULL, err));
    KMS_GUARD(take_b64(root, "additionalAuthenticatedData", false, r->aad, sizeof(r->aad), true,
                       &r->aad_len, NULL, err));
    KMS_GUARD(take_b64(root, "ciphertextMetadata", false, r->md, sizeof(r->md), false,
                       &r->md_len, &r->has_md, err));
    KMS_GUARD(take_b64(root, "initializationVector", true, r->iv, sizeof(r->iv), false,
                       &r->iv_len, NULL, err));
    if (r->iv_len != 12 && r->iv_len != 16)
        return bad(err, XKS_E_VALIDATION, "initializationVector", "must be 12 or 16 bytes");
    size_t tl;
    KMS_GUARD(take_b64(root, "authenticationTag", true, r->tag, sizeof(r->tag), false, &tl, NULL,
                       err));
    if (tl != 16)
        return bad(err, XKS_E_VALIDATION, "authenticationTag", "must be 16 bytes");
    r->ciphertext = malloc(XKS_DATA_MAX);
    if (r->ciphertext == NULL)
        return bad(err, XKS_E_INTERNAL, "ciphertext", "out of memory");
    return take_b64(root, "ciphertext", true, r->ciphertext, XKS_DATA_MAX, true,
                    &r->ciphertext_len, NULL, err);
}

/* Why a body is not a JSON object, in words of our own: jansson's texts
 * may quote the body. */
static const char *body_fault(const json_t *root, const json_error_t *jerr)
{
    if (root != NULL)
        return "not a JSON object";
    switch (json_error_code(jerr)) {
    case json_error_duplicate_key:
        return "a member appears twice (JSON with a duplicate member)";
    case json_error_invalid_utf8:
        return "not valid UTF-8";
    case json_error_null_character:
    case json_error_null_byte_in_key:
        return "a string holds an escaped NUL (\\u0000)";
    case json_error_numeric_overflow:
        return "a number out of range";
    default:
        /* jansson's text for a \uD800 with no pair: the escape only */
        if (strncmp(jerr->text, "invalid Unicode", 15) == 0)
            return "a \\u escape that is not a character (a lone surrogate)";
        return "not valid JSON";
    }
}

kms_err xks_request_parse(enum xks_op op, const uint8_t *body, size_t len,
                          struct xks_request *out, enum xks_error *err)
{
    memset(out, 0, sizeof(*out));
    out->op = op;
    *err = XKS_E_VALIDATION;
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    kms_err rc = KMS_OK;
    if (!json_is_object(root)) {
        /* A health check is never refused for its body (the spec lists no
         * ValidationException for it): it is audited without ids. */
        if (op != XKS_OP_HEALTH)
            rc = bad(err, XKS_E_VALIDATION, "body", body_fault(root, &jerr));
        goto out;
    }
    KMS_GUARD_GOTO(take_metadata(root, out, err), out);
    if (op == XKS_OP_ENCRYPT)
        KMS_GUARD_GOTO(take_encrypt(root, out, err), out);
    else if (op == XKS_OP_DECRYPT)
        KMS_GUARD_GOTO(take_decrypt(root, out, err), out);
out:
    json_decref(root);
    if (rc != KMS_OK)
        xks_request_wipe(out);
    return rc;
}
