/*
 * xks_api.h - the XKS proxy API's wire rules (aws/aws-kms-xksproxy-api-spec,
 * xks_proxy_api_spec.md, v1): URI paths, error names and statuses, request
 * bodies and their limits, the AES-GCM AAD and ciphertextMetadata, the
 * ciphertext data integrity value (CDIV), response bodies. Pure functions:
 * no HSM, no store, no HTTP (the handlers are xks_ops.c, the front
 * kms/http). See docs/xks.md.
 */
#ifndef XKS_API_H
#define XKS_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

enum xks_op { XKS_OP_NONE, XKS_OP_METADATA, XKS_OP_ENCRYPT, XKS_OP_DECRYPT, XKS_OP_HEALTH };

/* The spec's error table, in its order. */
enum xks_error {
    XKS_E_VALIDATION,          /* 400 ValidationException */
    XKS_E_INVALID_STATE,       /* 400 InvalidStateException */
    XKS_E_INVALID_CIPHERTEXT,  /* 400 InvalidCiphertextException */
    XKS_E_INVALID_KEY_USAGE,   /* 400 InvalidKeyUsageException */
    XKS_E_AUTH_FAILED,         /* 401 AuthenticationFailedException */
    XKS_E_ACCESS_DENIED,       /* 403 AccessDeniedException */
    XKS_E_KEY_NOT_FOUND,       /* 404 KeyNotFoundException */
    XKS_E_INVALID_URI_PATH,    /* 404 InvalidUriPathException */
    XKS_E_THROTTLING,          /* 429 ThrottlingException */
    XKS_E_UNSUPPORTED,         /* 501 UnsupportedOperationException */
    XKS_E_DEPENDENCY_TIMEOUT,  /* 503 DependencyTimeoutException */
    XKS_E_INTERNAL,            /* 500 InternalException */
    XKS_E_COUNT
};

const char *xks_error_name(enum xks_error e);
int xks_error_status(enum xks_error e);

/* {"errorName": ..., "errorMessage": ...}: the message cut below 512
 * characters and anything outside 0x20-0x7e replaced by '?', as the spec
 * requires. malloc'd; NULL when memory runs out. */
char *xks_error_body(enum xks_error e, const char *message);

/* Limits. The spec's minimums are what kmsd accepts at most: a larger value
 * is refused with UnsupportedOperationException, as the spec allows. */
#define XKS_DATA_MAX 4300     /* plaintext / ciphertext bytes */
#define XKS_AAD_MAX 8192      /* additionalAuthenticatedData bytes */
#define XKS_MD_MAX 20         /* ciphertextMetadata bytes */
#define XKS_ARN_MAX 2048      /* characters (code points) of awsPrincipalArn, kmsKeyArn */
#define XKS_ARN_MAX_BYTES (4 * XKS_ARN_MAX) /* their UTF-8 bytes at most */
#define XKS_META_FIELD_MAX 128 /* bytes of kmsRequestId (the audit correlation id), kmsOperation, kmsViaService, awsSourceVpc(e) */
#define XKS_KEY_ID_MAX 128    /* externalKeyId */
#define XKS_PATH_MAX 256      /* the whole path */

/* An XKS path: [<prefix>]/kms/xks/v1/health or
 * [<prefix>]/kms/xks/v1/keys/<externalKeyId>/{metadata,encrypt,decrypt}. */
struct xks_path {
    enum xks_op op; /* XKS_OP_NONE: under /kms/xks/v1 but not an operation */
    size_t prefix_len; /* url[0..prefix_len-1] is the prefix */
    char key_id[XKS_KEY_ID_MAX + 1];
};

/* Whether url is addressed to the XKS API at all (it holds the segments
 * /kms/xks/v1); if so *out says which operation (XKS_OP_NONE: answer
 * InvalidUriPathException). */
bool xks_path_parse(const char *url, struct xks_path *out);

/* ---- bodies ---- */

struct xks_request {
    enum xks_op op;
    /* requestMetadata (copies, NUL-terminated; "" when absent) */
    char principal_arn[XKS_ARN_MAX_BYTES + 1];
    char key_arn[XKS_ARN_MAX_BYTES + 1];
    char kms_operation[XKS_META_FIELD_MAX + 1];
    char kms_request_id[XKS_META_FIELD_MAX + 1];
    char via_service[XKS_META_FIELD_MAX + 1];
    char source_vpc[XKS_META_FIELD_MAX + 1];  /* awsSourceVpc */
    char source_vpce[XKS_META_FIELD_MAX + 1]; /* awsSourceVpce */
    /* decoded fields; plaintext is wiped by xks_request_wipe */
    uint8_t *plaintext;
    size_t plaintext_len;
    uint8_t *ciphertext;
    size_t ciphertext_len;
    uint8_t aad[XKS_AAD_MAX];
    size_t aad_len;
    uint8_t md[XKS_MD_MAX];
    size_t md_len;
    bool has_md;
    uint8_t iv[16];
    size_t iv_len;
    uint8_t tag[16];
    bool want_cdiv;
};

/* Parse and check a body for op. On failure *err is the spec's error for it
 * (ValidationException, or UnsupportedOperationException for a value over
 * kmsd's limits) and the detail says which field. A health body is never
 * refused: only its kmsRequestId and kmsOperation are taken when present. */
kms_err xks_request_parse(enum xks_op op, const uint8_t *body, size_t len,
                          struct xks_request *out, enum xks_error *err);
void xks_request_wipe(struct xks_request *r);

/* Strict standard Base64 (RFC 4648 section 4, padded, no whitespace) into
 * out[cap]; false when malformed or longer than cap. out NULL: only
 * validate and count (*out_len). */
bool xks_b64_decode(const char *in, uint8_t *out, size_t cap, size_t *out_len);

/* ---- the cryptography around the HSM call ---- */

/* Custos's ciphertextMetadata: format byte 0x01 then the key version (big
 * endian, 4 bytes). Format 1 means "AAD built with lengths" (below). */
#define XKS_MD_FORMAT 0x01
#define XKS_MD_LEN 5
void xks_md_encode(uint32_t key_version, uint8_t out[XKS_MD_LEN]);
/* KMS_ERR_BAD_CIPHERTEXT unless md is format 1 of XKS_MD_LEN bytes. */
kms_err xks_md_decode(const uint8_t *md, size_t len, uint32_t *key_version);

/* The HSM's AAD, as the spec requires: 2-byte big-endian length of aad ||
 * aad || 1-byte length of md || md. out: at least 3 + aad_len + md_len. */
size_t xks_gcm_aad(const uint8_t *aad, size_t aad_len, const uint8_t *md, size_t md_len,
                   uint8_t *out);

/* CDIV: SHA-256(aad || md || iv || ciphertext || tag) (spec, Appendix C). */
kms_err xks_cdiv(const uint8_t *aad, size_t aad_len, const uint8_t *md, size_t md_len,
                 const uint8_t *iv, size_t iv_len, const uint8_t *ct, size_t ct_len,
                 const uint8_t tag[16], uint8_t out[32]);

/* ---- responses (malloc'd JSON text; NULL when memory runs out) ---- */

char *xks_metadata_body(unsigned usage_bits, bool enabled); /* enum xks_usage bits */
char *xks_encrypt_body(const uint8_t *ct, size_t ct_len, const uint8_t *md, size_t md_len,
                       const uint8_t *iv, size_t iv_len, const uint8_t tag[16],
                       const uint8_t *cdiv /* 32 bytes or NULL */);
/* The plaintext reply; the caller wipes it (length in *len). */
char *xks_decrypt_body(const uint8_t *pt, size_t pt_len, size_t *len);
char *xks_health_body(const char *vendor, const char *model, size_t n_tokens,
                      const char *const *token_ids, const char *const *token_models,
                      const char *const *statuses);

#endif
