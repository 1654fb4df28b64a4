/*
 * xks_api.c - XKS paths, error names, Base64, ciphertextMetadata, the GCM
 * AAD, the CDIV and the response bodies (xks_api.h).
 */
#include "xks_api.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_b64.h"
#include "xks_config.h"

static const struct {
    const char *name;
    int status;
} errors[XKS_E_COUNT] = {
    [XKS_E_VALIDATION] = {"ValidationException", 400},
    [XKS_E_INVALID_STATE] = {"InvalidStateException", 400},
    [XKS_E_INVALID_CIPHERTEXT] = {"InvalidCiphertextException", 400},
    [XKS_E_INVALID_KEY_USAGE] = {"InvalidKeyUsageException", 400},
    [XKS_E_AUTH_FAILED] = {"AuthenticationFailedException", 401},
    [XKS_E_ACCESS_DENIED] = {"AccessDeniedException", 403},
    [XKS_E_KEY_NOT_FOUND] = {"KeyNotFoundException", 404},
    [XKS_E_INVALID_URI_PATH] = {"InvalidUriPathException", 404},
    [XKS_E_THROTTLING] = {"ThrottlingException", 429},
    [XKS_E_UNSUPPORTED] = {"UnsupportedOperationException", 501},
    [XKS_E_DEPENDENCY_TIMEOUT] = {"DependencyTimeoutException", 503},
    [XKS_E_INTERNAL] = {"InternalException", 500},
};

/* json_dumps of o as a plain malloc'd string (jansson's own blocks go back
 * to its allocator: kmsd gives jansson a wiping one, kms_secret_alloc, whose
 * blocks free() must not see). NULL when o is NULL or memory runs out. */
static char *dump(json_t *o)
{
    char *j = o ? json_dumps(o, JSON_COMPACT) : NULL;
    char *out = j ? strdup(j) : NULL;
    if (j != NULL) {
        json_free_t jfree;
        json_get_alloc_funcs(NULL, &jfree);
        jfree(j);
    }
    json_decref(o);
    return out;
}

const char *xks_error_name(enum xks_error e)
{
    return (unsigned)e < XKS_E_COUNT ? errors[e].name : errors[XKS_E_INTERNAL].name;
}

int xks_error_status(enum xks_error e)
{
    return (unsigned)e < XKS_E_COUNT ? errors[e].status : 500;
}

char *xks_error_body(enum xks_error e, const char *message)
{
    char msg[511];
    size_t n = 0;
    for (const char *s = message ? message : ""; *s && n < sizeof(msg) - 1; s++)
        msg[n++] = (*s >= 0x20 && *s <= 0x7e) ? *s : '?';
    msg[n] = '\0';
    return dump(json_pack("{s:s, s:s}", "errorName", xks_error_name(e), "errorMessage", msg));
}

/* ---- paths ---- */

#define XKS_ROOT "/kms/xks/v1"

static bool key_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > XKS_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

bool xks_path_parse(const char *url, struct xks_path *out)
{
    memset(out, 0, sizeof(*out));
    /* The first /kms/xks/v1 that is followed by '/' or the end: a prefix
     * never contains it (xks_config refuses one that does). */
    const char *root = NULL;
    for (const char *p = strstr(url, XKS_ROOT); p != NULL; p = strstr(p + 1, XKS_ROOT)) {
        char after = p[strlen(XKS_ROOT)];
        if (after == '/' || after == '\0') {
            root = p;
            break;
        }
    }
    if (root == NULL)
        return false;
    out->prefix_len = (size_t)(root - url);
    out->op = XKS_OP_NONE;
    if (strlen(url) > XKS_PATH_MAX)
        return true;
    const char *rest = root + strlen(XKS_ROOT);
    if (strcmp(rest, "/health") == 0) {
        out->op = XKS_OP_HEALTH;
        return true;
    }
    if (strncmp(rest, "/keys/", 6) != 0)
        return true;
    const char *id = rest + 6, *slash = strchr(id, '/');
    if (slash == NULL || !key_id_ok(id, (size_t)(slash - id)))
        return true;
    const char *verb = slash + 1;
    enum xks_op op = strcmp(verb, "metadata") == 0  ? XKS_OP_METADATA
                     : strcmp(verb, "encrypt") == 0 ? XKS_OP_ENCRYPT
                     : strcmp(verb, "decrypt") == 0 ? XKS_OP_DECRYPT
                                                    : XKS_OP_NONE;
    if (op != XKS_OP_NONE) {
        memcpy(out->key_id, id, (size_t)(slash - id));
        out->key_id[slash - id] = '\0';
    }
    out->op = op;
    return true;
}

/* ---- Base64 ---- */

bool xks_b64_decode(const char *in, uint8_t *out, size_t cap, size_t *out_len)
{
    size_t n = strlen(in), o = 0;
    if (n % 4 != 0)
        return false;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = in[i + (size_t)j];
            if (c == '=' && i + 4 == n && j >= 2) {
                pad++;
                v[j] = 0;
                continue;
            }
            if (pad > 0 || (v[j] = kms_b64_digit((unsigned char)c, KMS_B64_STD, NULL)) < 0)
                return false;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        /* canonical: the unused bits before padding must be zero */
        if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
            return false;
        size_t take = 3 - (size_t)pad;
        if (o + take > cap)
            return false;
        for (size_t k = 0; k < take; k++, o++)
            if (out != NULL)
                out[o] = (uint8_t)(w >> (16 - 8 * k));
    }
    *out_len = o;
    return true;
}

/* Base64 of in as a new NUL-terminated string (malloc'd), or NULL. */
static char *b64(const uint8_t *in, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (s != NULL)
        EVP_EncodeBlock((unsigned char *)s, in, (int)n);
    return s;
}

/* ---- the cryptography around the HSM call ---- */

void xks_md_encode(uint32_t key_version, uint8_t out[XKS_MD_LEN])
{
    out[0] = XKS_MD_FORMAT;
    for (int i = 0; i < 4; i++)
        out[1 + i] = (uint8_t)(key_version >> (24 - 8 * i));
}

kms_err xks_md_decode(const uint8_t *md, size_t len, uint32_t *key_version)
{
    KMS_ENSURE(len == XKS_MD_LEN && md[0] == XKS_MD_FORMAT, KMS_ERR_BAD_CIPHERTEXT,
               "ciphertextMetadata is not one kmsd made");
    *key_version = (uint32_t)md[1] << 24 | (uint32_t)md[2] << 16 | (uint32_t)md[3] << 8 | md[4];
    return KMS_OK;
}

size_t xks_gcm_aad(const uint8_t *aad, size_t aad_len, const uint8_t *md, size_t md_len,
                   uint8_t *out)
{
    size_t o = 0;
    out[o++] = (uint8_t)(aad_len >> 8);
    out[o++] = (uint8_t)aad_len;
    if (aad_len > 0)
        memcpy(out + o, aad, aad_len);
    o += aad_len;
    out[o++] = (uint8_t)md_len;
    if (md_len > 0)
        memcpy(out + o, md, md_len);
    return o + md_len;
}

kms_err xks_cdiv(const uint8_t *aad, size_t aad_len, const uint8_t *md, size_t md_len,
                 const uint8_t *iv, size_t iv_len, const uint8_t *ct, size_t ct_len,
                 const uint8_t tag[16], uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 0;
    bool ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(c, aad, aad_len) == 1 && EVP_DigestUpdate(c, md, md_len) == 1 &&
              EVP_DigestUpdate(c, iv, iv_len) == 1 && EVP_DigestUpdate(c, ct, ct_len) == 1 &&
              EVP_DigestUpdate(c, tag, 16) == 1 && EVP_DigestFinal_ex(c, out, &n) == 1 &&
              n == 32;
    EVP_MD_CTX_free(c);
    KMS_ENSURE(ok, KMS_ERR_INTERNAL, "SHA-256 failed");
    return KMS_OK;
}

/* ---- responses ---- */

char *xks_metadata_body(unsigned usage_bits, bool enabled)
{
    json_t *use = json_array();
    if (use != NULL && (usage_bits & XKS_USE_ENCRYPT))
        json_array_append_new(use, json_string("ENCRYPT"));
    if (use != NULL && (usage_bits & XKS_USE_DECRYPT))
        json_array_append_new(use, json_string("DECRYPT"));
    json_t *o = json_pack("{s:s, s:o, s:s}", "keySpec", "AES_256", "keyUsage", use, "keyStatus",
                          enabled ? "ENABLED" : "DISABLED");
    return dump(o);
}

char *xks_encrypt_body(const uint8_t *ct, size_t ct_len, const uint8_t *md, size_t md_len,
                       const uint8_t *iv, size_t iv_len, const uint8_t tag[16],
                       const uint8_t *cdiv)
{
    char *s_ct = b64(ct, ct_len), *s_iv = b64(iv, iv_len), *s_tag = b64(tag, 16);
    char *s_md = md_len > 0 ? b64(md, md_len) : NULL, *s_cdiv = cdiv ? b64(cdiv, 32) : NULL;
    char *out = NULL;
    json_t *o = NULL;
    if (s_ct && s_iv && s_tag && (md_len == 0 || s_md) && (!cdiv || s_cdiv))
        o = json_pack("{s:s, s:s, s:s}", "ciphertext", s_ct, "initializationVector", s_iv,
                      "authenticationTag", s_tag);
    if (o != NULL && s_md != NULL)
        json_object_set_new(o, "ciphertextMetadata", json_string(s_md));
    if (o != NULL && s_cdiv != NULL)
        json_object_set_new(o, "ciphertextDataIntegrityValue", json_string(s_cdiv));
    out = dump(o);
    free(s_ct);
    free(s_iv);
    free(s_tag);
    free(s_md);
    free(s_cdiv);
    return out;
}

char *xks_decrypt_body(const uint8_t *pt, size_t pt_len, size_t *len)
{
    char *s = b64(pt, pt_len);
    if (s == NULL)
        return NULL;
    size_t sl = strlen(s);
    /* Built by hand, not by jansson: the plaintext is in exactly two
     * buffers, both wiped (this one by the caller). */
    char *out = malloc(sl + 17);
    if (out != NULL) {
        memcpy(out, "{\"plaintext\":\"", 14);
        memcpy(out + 14, s, sl);
        memcpy(out + 14 + sl, "\"}", 3);
        *len = sl + 16;
    }
    OPENSSL_cleanse(s, sl);
    free(s);
    return out;
}

char *xks_health_body(const char *vendor, const char *model, size_t n_tokens,
                      const char *const *token_ids, const char *const *token_models,
                      const char *const *statuses)
{
    json_t *fleet = json_array();
    for (size_t i = 0; fleet != NULL && i < n_tokens && i < 10; i++)
        json_array_append_new(fleet, json_pack("{s:s, s:s, s:s}", "id", token_ids[i], "model",
                                               token_models[i], "healthStatus", statuses[i]));
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:o}", "xksProxyFleetSize", 1, "xksProxyVendor",
                          vendor, "xksProxyModel", model, "ekmVendor", vendor,
                          "ekmFleetDetails", fleet);
    return dump(o);
}
