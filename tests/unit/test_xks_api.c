/*
 * test_xks_api.c - the XKS wire rules (kms/xks/xks_api.c, xks_request.c),
 * written from the spec (aws-kms-xksproxy-api-spec, xks_proxy_api_spec.md):
 * the error table, paths, strict Base64, the AAD layout with lengths, the
 * CDIV of Appendix C's worked example, Custos's ciphertextMetadata, and
 * request bodies (the spec's own examples parse; each missing or bad field
 * is refused with the spec's error name; sizes at and over the limits);
 * and the seen-signature cache behind the Decrypt replay check
 * (xks_replay.c).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "xks_api.h"
#include "xks_config.h"
#include "xks_replay.h"

START_TEST(error_table_is_the_specs)
{
    static const struct {
        enum xks_error e;
        const char *name;
        int status;
    } want[] = {
        {XKS_E_VALIDATION, "ValidationException", 400},
        {XKS_E_INVALID_STATE, "InvalidStateException", 400},
        {XKS_E_INVALID_CIPHERTEXT, "InvalidCiphertextException", 400},
        {XKS_E_INVALID_KEY_USAGE, "InvalidKeyUsageException", 400},
        {XKS_E_AUTH_FAILED, "AuthenticationFailedException", 401},
        {XKS_E_ACCESS_DENIED, "AccessDeniedException", 403},
        {XKS_E_KEY_NOT_FOUND, "KeyNotFoundException", 404},
        {XKS_E_INVALID_URI_PATH, "InvalidUriPathException", 404},
        {XKS_E_THROTTLING, "ThrottlingException", 429},
        {XKS_E_UNSUPPORTED, "UnsupportedOperationException", 501},
        {XKS_E_DEPENDENCY_TIMEOUT, "DependencyTimeoutException", 503},
        {XKS_E_INTERNAL, "InternalException", 500},
    };
    ck_assert_int_eq(sizeof(want) / sizeof(want[0]), XKS_E_COUNT);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_str_eq(xks_error_name(want[i].e), want[i].name);
        ck_assert_int_eq(xks_error_status(want[i].e), want[i].status);
    }
    /* errorMessage: printable ASCII only, under 512 characters */
    char longmsg[2000];
    memset(longmsg, 'x', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    longmsg[3] = '\n';
    longmsg[4] = (char)0xc3;
    char *body = xks_error_body(XKS_E_VALIDATION, longmsg);
    json_t *j = json_loads(body, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "errorName")), "ValidationException");
    const char *m = json_string_value(json_object_get(j, "errorMessage"));
    ck_assert_uint_lt(strlen(m), 512);
    for (const char *s = m; *s; s++)
        ck_assert(*s >= 0x20 && *s <= 0x7e);
    json_decref(j);
    free(body);
}
END_TEST

START_TEST(paths)
{
    struct xks_path p;
    ck_assert(!xks_path_parse("/twirp/custos.v1.KeyService/Encrypt", &p));
    ck_assert(!xks_path_parse("/kms/xks/v10/health", &p));
    ck_assert(xks_path_parse("/kms/xks/v1/health", &p));
    ck_assert_int_eq(p.op, XKS_OP_HEALTH);
    ck_assert_uint_eq(p.prefix_len, 0);
    ck_assert(xks_path_parse("/acme/eu-1/kms/xks/v1/keys/k-1.A_b/encrypt", &p));
    ck_assert_int_eq(p.op, XKS_OP_ENCRYPT);
    ck_assert_uint_eq(p.prefix_len, 10);
    ck_assert_str_eq(p.key_id, "k-1.A_b");
    ck_assert(xks_path_parse("/p/kms/xks/v1/keys/abc/metadata", &p));
    ck_assert_int_eq(p.op, XKS_OP_METADATA);
    ck_assert(xks_path_parse("/p/kms/xks/v1/keys/abc/decrypt", &p));
    ck_assert_int_eq(p.op, XKS_OP_DECRYPT);
    /* under /kms/xks/v1 but no operation: InvalidUriPathException */
    static const char *none[] = {
        "/p/kms/xks/v1",          "/p/kms/xks/v1/",           "/p/kms/xks/v1/healthz",
        "/p/kms/xks/v1/keys/abc", "/p/kms/xks/v1/keys//encrypt", "/p/kms/xks/v1/keys/a b/encrypt",
        "/p/kms/xks/v1/keys/abc/sign", "/p/kms/xks/v1/keys/abc/encrypt/",
        "/p/kms/xks/v1/keys/a/b/encrypt",
    };
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        ck_assert_msg(xks_path_parse(none[i], &p), "%s", none[i]);
        ck_assert_msg(p.op == XKS_OP_NONE, "%s", none[i]);
    }
    char longid[300];
    snprintf(longid, sizeof(longid), "/kms/xks/v1/keys/%0129d/encrypt", 0);
    ck_assert(xks_path_parse(longid, &p));
    ck_assert_int_eq(p.op, XKS_OP_NONE);
    snprintf(longid, sizeof(longid), "/kms/xks/v1/keys/%0128d/encrypt", 0);
    ck_assert(xks_path_parse(longid, &p));
    ck_assert_int_eq(p.op, XKS_OP_ENCRYPT);
}
END_TEST

START_TEST(base64_strict)
{
    uint8_t out[32];
    size_t n;
    ck_assert(xks_b64_decode("SGVsbG8gV29ybGQh", out, sizeof(out), &n));
    ck_assert_uint_eq(n, 12);
    ck_assert_mem_eq(out, "Hello World!", 12);
    ck_assert(xks_b64_decode("a2V5X3ZlcnNpb249MQ==", out, sizeof(out), &n));
    ck_assert_uint_eq(n, 13);
    ck_assert(xks_b64_decode("", out, sizeof(out), &n));
    ck_assert_uint_eq(n, 0);
    static const char *bad[] = {"SGVsbG8", "SGVs bG8=", "SGVsbG8=\n", "SG=sbG8h", "SGVsbG9=",
                                "SGVsbA===", "SGVs-G8h", "SGVs_G8h", "=GVs"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!xks_b64_decode(bad[i], out, sizeof(out), &n), "%s", bad[i]);
    /* over the output capacity */
    ck_assert(!xks_b64_decode("SGVsbG8gV29ybGQh", out, 11, &n));
}
END_TEST

/* Appendix C's worked example, from the Encrypt response example's fields. */
START_TEST(cdiv_appendix_c)
{
    uint8_t aad[64], md[32], iv[16], ct[32], tag[16], cdiv[32];
    size_t al, ml, il, cl, tl;
    ck_assert(xks_b64_decode("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n", aad, sizeof(aad),
                             &al));
    ck_assert(xks_b64_decode("a2V5X3ZlcnNpb249MQ==", md, sizeof(md), &ml));
    ck_assert(xks_b64_decode("HMrlRw85cAJUd5Ax", iv, sizeof(iv), &il));
    ck_assert(xks_b64_decode("ghxkK1txeDNn3q8Y", ct, sizeof(ct), &cl));
    ck_assert(xks_b64_decode("vBxN2ncH1oEkR8WVXpmyYQ==", tag, sizeof(tag), &tl));
    ck_assert_uint_eq(al + ml + il + cl + tl, 86);
    ck_assert_int_eq(xks_cdiv(aad, al, md, ml, iv, il, ct, cl, tag, cdiv), KMS_OK);
    static const uint8_t want[32] = {
        0xa8, 0x70, 0x3f, 0x22, 0x60, 0xbd, 0x87, 0x91, 0xec, 0x2d, 0x15,
        0xea, 0x0b, 0x23, 0xe6, 0x5a, 0x06, 0x31, 0xee, 0xdc, 0xf2, 0xa1,
        0x3a, 0x65, 0xcc, 0x82, 0xdb, 0x3f, 0x47, 0xcf, 0x5e, 0xc7};
    ck_assert_mem_eq(cdiv, want, 32);
    /* and as the response renders it */
    char *body = xks_encrypt_body(ct, cl, md, ml, iv, il, tag, cdiv);
    json_t *j = json_loads(body, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "ciphertextDataIntegrityValue")),
                     "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=");
    ck_assert_str_eq(json_string_value(json_object_get(j, "ciphertextMetadata")),
                     "a2V5X3ZlcnNpb249MQ==");
    ck_assert_str_eq(json_string_value(json_object_get(j, "ciphertext")), "ghxkK1txeDNn3q8Y");
    ck_assert_str_eq(json_string_value(json_object_get(j, "initializationVector")),
                     "HMrlRw85cAJUd5Ax");
    ck_assert_str_eq(json_string_value(json_object_get(j, "authenticationTag")),
                     "vBxN2ncH1oEkR8WVXpmyYQ==");
    json_decref(j);
    free(body);
    /* without CDIV and metadata the fields are absent */
    body = xks_encrypt_body(ct, cl, NULL, 0, iv, il, tag, NULL);
    j = json_loads(body, 0, NULL);
    ck_assert_ptr_null(json_object_get(j, "ciphertextDataIntegrityValue"));
    ck_assert_ptr_null(json_object_get(j, "ciphertextMetadata"));
    json_decref(j);
    free(body);
}
END_TEST

START_TEST(aad_with_lengths_and_metadata)
{
    uint8_t out[64];
    const uint8_t aad[3] = {'a', 'b', 'c'};
    uint8_t md[XKS_MD_LEN];
    xks_md_encode(0x01020304, md);
    ck_assert_uint_eq(md[0], XKS_MD_FORMAT);
    size_t n = xks_gcm_aad(aad, 3, md, XKS_MD_LEN, out);
    ck_assert_uint_eq(n, 2 + 3 + 1 + XKS_MD_LEN);
    const uint8_t want[] = {0, 3, 'a', 'b', 'c', 5, 1, 1, 2, 3, 4};
    ck_assert_mem_eq(out, want, sizeof(want));
    /* the spec's confusion case: encrypt(no AAD) -> md, then decrypt with
     * md passed as AAD and no md: the HSM's AAD must differ */
    uint8_t a1[64], a2[64];
    size_t n1 = xks_gcm_aad(NULL, 0, md, XKS_MD_LEN, a1);
    size_t n2 = xks_gcm_aad(md, XKS_MD_LEN, NULL, 0, a2);
    ck_assert(n1 != n2 || memcmp(a1, a2, n1) != 0);
    uint32_t v;
    ck_assert_int_eq(xks_md_decode(md, XKS_MD_LEN, &v), KMS_OK);
    ck_assert_uint_eq(v, 0x01020304);
    ck_assert_int_eq(xks_md_decode(md, XKS_MD_LEN - 1, &v), KMS_ERR_BAD_CIPHERTEXT);
    md[0] = 2;
    ck_assert_int_eq(xks_md_decode(md, XKS_MD_LEN, &v), KMS_ERR_BAD_CIPHERTEXT);
}
END_TEST

/* ---- request bodies ---- */

#define META                                                                                   \
    "\"requestMetadata\": {\"awsPrincipalArn\": \"arn:aws:iam::123456789012:user/Alice\","       \
    "\"kmsKeyArn\": \"arn:aws:kms:us-east-2:123456789012:/key/1234abcd\","                       \
    "\"kmsOperation\": \"Encrypt\", \"kmsRequestId\": \"4112f4d6-db54-4af4-ae30-c55a22a8dfae\"," \
    "\"kmsViaService\": \"ebs\", \"futureField\": 1}"

static kms_err parse(enum xks_op op, const char *body, struct xks_request *r, enum xks_error *e)
{
    return xks_request_parse(op, (const uint8_t *)body, strlen(body), r, e);
}

START_TEST(spec_examples_parse)
{
    struct xks_request r;
    enum xks_error e;
    ck_assert_int_eq(parse(XKS_OP_ENCRYPT,
                           "{" META ", \"additionalAuthenticatedData\": "
                           "\"cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n\", \"plaintext\": "
                           "\"SGVsbG8gV29ybGQh\", \"encryptionAlgorithm\": \"AES_GCM\", "
                           "\"ciphertextDataIntegrityValueAlgorithm\": \"SHA_256\"}",
                           &r, &e),
                     KMS_OK);
    ck_assert_str_eq(r.kms_request_id, "4112f4d6-db54-4af4-ae30-c55a22a8dfae");
    ck_assert_str_eq(r.principal_arn, "arn:aws:iam::123456789012:user/Alice");
    ck_assert_str_eq(r.key_arn, "arn:aws:kms:us-east-2:123456789012:/key/1234abcd");
    ck_assert_uint_eq(r.plaintext_len, 12);
    ck_assert_mem_eq(r.plaintext, "Hello World!", 12);
    ck_assert_uint_eq(r.aad_len, 33);
    ck_assert(r.want_cdiv);
    xks_request_wipe(&r);

    ck_assert_int_eq(parse(XKS_OP_DECRYPT,
                           "{" META ", \"encryptionAlgorithm\": \"AES_GCM\", \"ciphertext\": "
                           "\"ghxkK1txeDNn3q8Y\", \"ciphertextMetadata\": \"a2V5X3ZlcnNpb249MQ==\","
                           " \"initializationVector\": \"HMrlRw85cAJUd5Ax\", "
                           "\"authenticationTag\": \"vBxN2ncH1oEkR8WVXpmyYQ==\"}",
                           &r, &e),
                     KMS_OK);
    ck_assert_uint_eq(r.ciphertext_len, 12);
    ck_assert(r.has_md);
    ck_assert_uint_eq(r.md_len, 13);
    ck_assert_uint_eq(r.iv_len, 12);
    ck_assert_uint_eq(r.aad_len, 0);
    xks_request_wipe(&r);

    /* GetKeyMetadata during CreateKey: no kmsKeyArn */
    ck_assert_int_eq(parse(XKS_OP_METADATA,
                           "{\"requestMetadata\": {\"awsPrincipalArn\": \"arn:aws:iam::1:root\", "
                           "\"kmsOperation\": \"CreateKey\", \"kmsRequestId\": \"x\"}}",
                           &r, &e),
                     KMS_OK);
    xks_request_wipe(&r);
    /* health: an unknown kmsOperation and even a body that is not JSON */
    ck_assert_int_eq(parse(XKS_OP_HEALTH,
                           "{\"requestMetadata\": {\"kmsRequestId\": \"h1\", \"kmsOperation\": "
                           "\"SomethingNew\"}}",
                           &r, &e),
                     KMS_OK);
    ck_assert_str_eq(r.kms_request_id, "h1");
    xks_request_wipe(&r);
    ck_assert_int_eq(parse(XKS_OP_HEALTH, "not json", &r, &e), KMS_OK);
    xks_request_wipe(&r);
}
END_TEST

/* The spec bounds ARNs in characters (2048), not bytes: 2048 characters of
 * 1, 2 and 4 bytes pass whole, 2049 of any width are refused. */
START_TEST(arn_limit_in_characters)
{
    static const char *const chars[] = {"a", "\xc3\xa9", "\xf0\x9d\x84\x9e"};
    for (size_t c = 0; c < 3; c++) {
        for (int field = 0; field < 2; field++) {
            for (size_t n = XKS_ARN_MAX; n <= XKS_ARN_MAX + 1; n++) {
                size_t w = strlen(chars[c]);
                char *arn = malloc(n * w + 1), *body = malloc(n * w + 512);
                ck_assert_ptr_nonnull(arn);
                ck_assert_ptr_nonnull(body);
                for (size_t i = 0; i < n; i++)
                    memcpy(arn + i * w, chars[c], w);
                arn[n * w] = '\0';
                snprintf(body, n * w + 512,
                         "{\"requestMetadata\": {\"awsPrincipalArn\": \"%s\", \"kmsKeyArn\": "
                         "\"%s\", \"kmsOperation\": \"Encrypt\", \"kmsRequestId\": \"r\"}, "
                         "\"plaintext\": \"AA==\", \"encryptionAlgorithm\": \"AES_GCM\"}",
                         field == 0 ? arn : "arn:k", field == 1 ? arn : "arn:p");
                struct xks_request r;
                enum xks_error e = XKS_E_INTERNAL;
                kms_err rc = parse(XKS_OP_ENCRYPT, body, &r, &e);
                if (n == XKS_ARN_MAX) {
                    ck_assert_msg(rc == KMS_OK, "%zu characters of %zu bytes: %s", n, w,
                                  kms_err_detail());
                    ck_assert_str_eq(field == 0 ? r.principal_arn : r.key_arn, arn);
                    xks_request_wipe(&r);
                } else {
                    ck_assert_int_eq(rc, KMS_ERR_INVALID_ARGUMENT);
                    ck_assert_int_eq(e, XKS_E_VALIDATION);
                    ck_assert_str_eq(kms_err_detail(), field == 0 ? "awsPrincipalArn: too long"
                                                                  : "kmsKeyArn: too long");
                }
                free(arn);
                free(body);
            }
        }
    }
}
END_TEST

#define ENC(fields) "{" META ", \"encryptionAlgorithm\": \"AES_GCM\"" fields "}"
#define DEC(fields)                                                                            \
    "{" META ", \"encryptionAlgorithm\": \"AES_GCM\", \"ciphertext\": \"ghxkK1txeDNn3q8Y\"" fields \
    "}"
#define IVTAG ", \"initializationVector\": \"HMrlRw85cAJUd5Ax\", \"authenticationTag\": \"vBxN2ncH1oEkR8WVXpmyYQ==\""

static const struct {
    enum xks_op op;
    const char *body;
    enum xks_error want;
    const char *field;
} refused[] = {
    {XKS_OP_ENCRYPT, "[]", XKS_E_VALIDATION, "body: not a JSON object"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": \"AA==\", \"plaintext\": \"AA==\"}", XKS_E_VALIDATION,
     "body: a member appears twice"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": \"AA==\", \"\\u0070laintext\": \"AA==\"}", XKS_E_VALIDATION,
     "body: a member appears twice"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": \"A\xff\"}", XKS_E_VALIDATION, "body: not valid UTF-8"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": \"\\ud800\"}", XKS_E_VALIDATION,
     "body: a \\u escape that is not a character"},
    {XKS_OP_ENCRYPT, "{\"n\": 1e999999}", XKS_E_VALIDATION, "body: a number out of range"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": ", XKS_E_VALIDATION, "body: not valid JSON"},
    {XKS_OP_ENCRYPT, "{\"plaintext\": \"AA==\", \"encryptionAlgorithm\": \"AES_GCM\"}",
     XKS_E_VALIDATION, "requestMetadata"},
    {XKS_OP_ENCRYPT, ENC(""), XKS_E_VALIDATION, "plaintext"},
    {XKS_OP_ENCRYPT, ENC(", \"plaintext\": \"SGVsbG8\""), XKS_E_VALIDATION, "plaintext"},
    {XKS_OP_ENCRYPT, ENC(", \"plaintext\": 5"), XKS_E_VALIDATION, "plaintext"},
    {XKS_OP_ENCRYPT,
     "{" META ", \"plaintext\": \"AA==\", \"encryptionAlgorithm\": \"AES_CBC\"}",
     XKS_E_VALIDATION, "encryptionAlgorithm"},
    {XKS_OP_ENCRYPT, "{" META ", \"plaintext\": \"AA==\"}", XKS_E_VALIDATION,
     "encryptionAlgorithm"},
    {XKS_OP_ENCRYPT,
     ENC(", \"plaintext\": \"AA==\", \"ciphertextDataIntegrityValueAlgorithm\": \"SHA_512\""),
     XKS_E_VALIDATION, "ciphertextDataIntegrityValueAlgorithm"},
    {XKS_OP_ENCRYPT, ENC(", \"plaintext\": \"AA==\", \"additionalAuthenticatedData\": \"A\""),
     XKS_E_VALIDATION, "additionalAuthenticatedData"},
    {XKS_OP_DECRYPT, DEC(""), XKS_E_VALIDATION, "initializationVector"},
    {XKS_OP_DECRYPT,
     DEC(", \"initializationVector\": \"AAAAAAAAAAAAAAAAAA==\", \"authenticationTag\": "
         "\"vBxN2ncH1oEkR8WVXpmyYQ==\""),
     XKS_E_VALIDATION, "initializationVector"},
    {XKS_OP_DECRYPT,
     DEC(", \"initializationVector\": \"HMrlRw85cAJUd5Ax\", \"authenticationTag\": "
         "\"vBxN2ncH1oEkR8WVXpmy\""),
     XKS_E_VALIDATION, "authenticationTag"},
    {XKS_OP_DECRYPT, DEC(IVTAG ", \"ciphertextMetadata\": \"AAAAAAAAAAAAAAAAAAAAAAAAAAAA\""),
     XKS_E_VALIDATION, "ciphertextMetadata: longer than 20 bytes"},
    {XKS_OP_DECRYPT, DEC(IVTAG ", \"ciphertextMetadata\": \"AAAA*AAA\""), XKS_E_VALIDATION,
     "ciphertextMetadata: not valid Base64"},
    {XKS_OP_DECRYPT,
     "{" META ", \"encryptionAlgorithm\": \"AES_GCM\"" IVTAG "}", XKS_E_VALIDATION, "ciphertext"},
    {XKS_OP_METADATA, "{\"requestMetadata\": {\"kmsOperation\": \"x\", \"kmsRequestId\": \"y\"}}",
     XKS_E_VALIDATION, "awsPrincipalArn"},
    {XKS_OP_METADATA,
     "{\"requestMetadata\": {\"awsPrincipalArn\": \"a\", \"kmsOperation\": \"x\"}}",
     XKS_E_VALIDATION, "kmsRequestId"},
    {XKS_OP_ENCRYPT,
     "{\"requestMetadata\": {\"awsPrincipalArn\": \"a\", \"kmsOperation\": \"x\", "
     "\"kmsRequestId\": \"y\"}, \"plaintext\": \"AA==\", \"encryptionAlgorithm\": \"AES_GCM\"}",
     XKS_E_VALIDATION, "kmsKeyArn"},
    {XKS_OP_METADATA,
     "{\"requestMetadata\": {\"awsPrincipalArn\": \"a\\u0000b\", \"kmsOperation\": \"x\", "
     "\"kmsRequestId\": \"y\"}}",
     XKS_E_VALIDATION, "body: a string holds an escaped NUL"}, /* jansson refuses \u0000 */
};

START_TEST(bad_fields_refused)
{
    struct xks_request r;
    enum xks_error e;
    ck_assert_msg(parse(refused[_i].op, refused[_i].body, &r, &e) != KMS_OK, "case %d accepted",
                  _i);
    ck_assert_msg(e == refused[_i].want, "case %d: %s", _i, xks_error_name(e));
    ck_assert_msg(strstr(kms_err_detail(), refused[_i].field) != NULL, "case %d: %s", _i,
                  kms_err_detail());
    ck_assert_ptr_null(r.plaintext);
}
END_TEST

/* A body with a Base64 field of n bytes (of 'A') in `field`. */
static char *with_size(const char *field, size_t n, const char *rest)
{
    uint8_t *raw = calloc(1, n + 1);
    char *b = malloc(4 * ((n + 2) / 3) + 1);
    size_t bl = 0;
    /* hand-rolled encoder (independent of the code under test) */
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)raw[i] << 16 | (i + 1 < n ? raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        b[bl++] = t[(w >> 18) & 63];
        b[bl++] = t[(w >> 12) & 63];
        b[bl++] = i + 1 < n ? t[(w >> 6) & 63] : '=';
        b[bl++] = i + 2 < n ? t[w & 63] : '=';
    }
    b[bl] = '\0';
    size_t cap = bl + strlen(rest) + 2048;
    char *out = malloc(cap);
    snprintf(out, cap, "{" META ", \"encryptionAlgorithm\": \"AES_GCM\", \"%s\": \"%s\"%s}", field,
             b, rest);
    free(raw);
    free(b);
    return out;
}

START_TEST(sizes_at_and_over_the_limits)
{
    struct xks_request r;
    enum xks_error e;
    char *body = with_size("plaintext", XKS_DATA_MAX, "");
    ck_assert_msg(parse(XKS_OP_ENCRYPT, body, &r, &e) == KMS_OK, "%s", kms_err_detail());
    ck_assert_uint_eq(r.plaintext_len, 4300);
    xks_request_wipe(&r);
    free(body);
    body = with_size("plaintext", XKS_DATA_MAX + 1, "");
    ck_assert_int_ne(parse(XKS_OP_ENCRYPT, body, &r, &e), KMS_OK);
    ck_assert_int_eq(e, XKS_E_UNSUPPORTED);
    free(body);
    body = with_size("additionalAuthenticatedData", XKS_AAD_MAX, ", \"plaintext\": \"AA==\"");
    ck_assert_int_eq(parse(XKS_OP_ENCRYPT, body, &r, &e), KMS_OK);
    ck_assert_uint_eq(r.aad_len, 8192);
    xks_request_wipe(&r);
    free(body);
    body = with_size("additionalAuthenticatedData", XKS_AAD_MAX + 1, ", \"plaintext\": \"AA==\"");
    ck_assert_int_ne(parse(XKS_OP_ENCRYPT, body, &r, &e), KMS_OK);
    ck_assert_int_eq(e, XKS_E_UNSUPPORTED);
    free(body);
    body = with_size("ciphertextMetadata", XKS_MD_MAX, IVTAG ", \"ciphertext\": \"AA==\"");
    ck_assert_int_eq(parse(XKS_OP_DECRYPT, body, &r, &e), KMS_OK);
    ck_assert_uint_eq(r.md_len, 20);
    xks_request_wipe(&r);
    free(body);
    body = with_size("ciphertext", XKS_DATA_MAX + 1, IVTAG);
    ck_assert_int_ne(parse(XKS_OP_DECRYPT, body, &r, &e), KMS_OK);
    ck_assert_int_eq(e, XKS_E_UNSUPPORTED);
    free(body);
}
END_TEST

START_TEST(response_bodies)
{
    char *b = xks_metadata_body(XKS_USE_ENCRYPT | XKS_USE_DECRYPT, true);
    ck_assert_str_eq(b, "{\"keySpec\":\"AES_256\",\"keyUsage\":[\"ENCRYPT\",\"DECRYPT\"],"
                        "\"keyStatus\":\"ENABLED\"}");
    free(b);
    b = xks_metadata_body(0, false);
    ck_assert_str_eq(b, "{\"keySpec\":\"AES_256\",\"keyUsage\":[],\"keyStatus\":\"DISABLED\"}");
    free(b);
    size_t n;
    b = xks_decrypt_body((const uint8_t *)"Hello World!", 12, &n);
    ck_assert_str_eq(b, "{\"plaintext\":\"SGVsbG8gV29ybGQh\"}");
    ck_assert_uint_eq(n, strlen(b));
    free(b);
    const char *ids[] = {"eu-west/tok1"}, *models[] = {"SoftHSM v2"}, *st[] = {"ACTIVE"};
    b = xks_health_body("Custos", "Custos kmsd", 1, ids, models, st);
    json_t *j = json_loads(b, 0, NULL);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "xksProxyFleetSize")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(j, "ekmVendor")), "Custos");
    json_t *f = json_array_get(json_object_get(j, "ekmFleetDetails"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(f, "healthStatus")), "ACTIVE");
    json_decref(j);
    free(b);
}
END_TEST

START_TEST(replay_cache)
{
    struct xks_replay *r;
    ck_assert_int_eq(xks_replay_new(100, &r), KMS_ERR_INTERNAL); /* not a power of two */
    ck_assert_int_eq(xks_replay_new(XKS_REPLAY_SHARDS * XKS_REPLAY_PROBE, &r), KMS_OK);
    uint8_t sig[32];
    for (size_t i = 0; i < sizeof(sig); i++)
        sig[i] = (uint8_t)(i * 37 + 1);
    /* the cache is empty when kmsd starts: a signature dated before that
     * may have been served by the kmsd before; one of its own second not */
    time_t t0 = time(NULL);
    time_t started = xks_replay_started(r);
    ck_assert(started >= t0 - 1 && started <= t0);
    ck_assert_int_eq(xks_replay_check_time(r, started - 60), KMS_ERR_UNAUTHENTICATED);
    ck_assert_int_eq(xks_replay_check_time(r, started - 1), KMS_ERR_UNAUTHENTICATED);
    ck_assert_int_eq(xks_replay_check_time(r, started), KMS_OK);
    ck_assert_int_eq(xks_replay_check_time(r, started + 1), KMS_OK);
    time_t now = 1700000000;
    /* first sight, then the replay while it is valid, then served again
     * once expired (the time check refuses such a request anyway) */
    ck_assert_int_eq(xks_replay_check(r, sig, now + 300, now), KMS_OK);
    ck_assert_int_eq(xks_replay_check(r, sig, now + 300, now + 299), KMS_ERR_UNAUTHENTICATED);
    ck_assert_int_eq(xks_replay_check(r, sig, now + 900, now + 300), KMS_OK);
    ck_assert_int_eq(xks_replay_check(r, sig, now + 900, now + 301), KMS_ERR_UNAUTHENTICATED);
    /* another signature is another request */
    uint8_t other[32];
    memcpy(other, sig, sizeof(other));
    other[20] ^= 1; /* inside the 16 bytes kept (8..23); 0..7 pick the slot */
    ck_assert_int_eq(xks_replay_check(r, other, now + 900, now + 301), KMS_OK);
    /* a full probe window (signatures sharing their home slot) fails
     * closed, never lets a signature through unrecorded */
    for (unsigned i = 2; i < XKS_REPLAY_PROBE; i++) {
        other[20] = (uint8_t)(i + 10); /* 12..41: never sig[20] (229), other[20] (228) */
        ck_assert_int_eq(xks_replay_check(r, other, now + 900, now + 301), KMS_OK);
    }
    other[20] = 250;
    ck_assert_int_eq(xks_replay_check(r, other, now + 900, now + 301), KMS_ERR_RESOURCE_EXHAUSTED);
    /* the live ones are all still refused as replays */
    ck_assert_int_eq(xks_replay_check(r, sig, now + 900, now + 302), KMS_ERR_UNAUTHENTICATED);
    /* once they expire the window is reused */
    ck_assert_int_eq(xks_replay_check(r, other, now + 2000, now + 900), KMS_OK);
    ck_assert_int_eq(xks_replay_check(r, other, now + 2000, now + 901), KMS_ERR_UNAUTHENTICATED);
    xks_replay_free(r);
    xks_replay_free(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("xks_api");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, error_table_is_the_specs);
    tcase_add_test(tc, paths);
    tcase_add_test(tc, arn_limit_in_characters);
    tcase_add_test(tc, base64_strict);
    tcase_add_test(tc, cdiv_appendix_c);
    tcase_add_test(tc, aad_with_lengths_and_metadata);
    tcase_add_test(tc, spec_examples_parse);
    tcase_add_loop_test(tc, bad_fields_refused, 0, (int)(sizeof(refused) / sizeof(refused[0])));
    tcase_add_test(tc, sizes_at_and_over_the_limits);
    tcase_add_test(tc, response_bodies);
    tcase_add_test(tc, replay_cache);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
