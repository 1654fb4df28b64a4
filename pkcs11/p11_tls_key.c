/*
 * p11_tls_key.c - find kmsd's TLS key by RFC 7512 URI and sign handshakes
 * with it (p11_tls_key.h).
 */
#include "p11_tls_key.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <p11-kit/uri.h>

#include "kms_log.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_rv.h"

/* Longest CKA_LABEL / CKA_ID a URI may name. */
#define LABEL_MAX 255
#define ID_MAX 255

struct p11_tls_key {
    struct p11_token *tok;
    enum p11_tls_key_type type;
    unsigned bits;
    /* What finds the object again when its handle goes stale (a module
     * re-initialisation renumbers handles). */
    uint8_t label[LABEL_MAX];
    size_t label_len; /* 0: not part of the search */
    uint8_t id[ID_MAX];
    size_t id_len;    /* 0: not part of the search */
    bool has_label, has_id;
    /* The private key's handle lives in the token's handle cache under
     * this derived id (a hash of label and id, so it names no object of
     * ours), because that cache is what the pool clears whenever handles
     * may have gone stale: a broken session, a module re-initialisation,
     * after which an old handle number may name another object. */
    uint8_t cache_id[P11_KEY_ID_LEN];
};

/* ---- finding the key ------------------------------------------------------- */

struct find_arg {
    struct p11_tls_key *key;
    CK_OBJECT_HANDLE first;
    CK_ULONG count; /* matches, counted up to 2 */
};

static kms_err do_find(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct find_arg *a = varg;
    struct p11_tls_key *k = a->key;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_ULONG n = 1;
    if (k->has_label)
        t[n++] = (CK_ATTRIBUTE){CKA_LABEL, k->label, k->label_len};
    if (k->has_id)
        t[n++] = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
    CK_RV rv = P11_RV(tok, C_FindObjectsInit, P11_NO_MECH, s, t, n);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    CK_OBJECT_HANDLE hs[2];
    CK_ULONG got = 0;
    rv = P11_RV(tok, C_FindObjects, P11_NO_MECH, s, hs, 2, &got);
    (void)P11_RV(tok, C_FindObjectsFinal, P11_NO_MECH, s);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjects", tok->label));
    a->count = got;
    a->first = got > 0 ? hs[0] : CK_INVALID_HANDLE;
    return KMS_OK;
}

/* DER of the named curve P-256 (OID 1.2.840.10045.3.1.7) as CKA_EC_PARAMS. */
static const uint8_t p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

struct describe_arg {
    struct p11_tls_key *key;
    CK_OBJECT_HANDLE h;
};

/* Type, size and sign permission of the private key found. */
static kms_err do_describe(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct describe_arg *a = varg;
    struct p11_tls_key *k = a->key;
    CK_KEY_TYPE type = 0;
    CK_BBOOL sign = CK_FALSE;
    CK_ATTRIBUTE t[2] = {{CKA_KEY_TYPE, &type, sizeof(type)}, {CKA_SIGN, &sign, sizeof(sign)}};
    KMS_GUARD(P11_CALL(tok, C_GetAttributeValue, P11_NO_MECH, s, a->h, t, 2));
    KMS_ENSURE(sign == CK_TRUE, KMS_ERR_CONFIG,
               "the key is not allowed to sign (CKA_SIGN is false)");
    if (type == CKK_EC) {
        uint8_t params[64];
        CK_ATTRIBUTE p = {CKA_EC_PARAMS, params, sizeof(params)};
        CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, a->h, &p, 1);
        KMS_ENSURE(rv == CKR_OK && p.ulValueLen == sizeof(p256_params) &&
                       memcmp(params, p256_params, sizeof(p256_params)) == 0,
                   KMS_ERR_CONFIG, "the key is an EC key on a curve other than P-256");
        k->type = P11_TLS_KEY_EC_P256;
        k->bits = 256;
        return KMS_OK;
    }
    KMS_ENSURE(type == CKK_RSA, KMS_ERR_CONFIG,
               "the key is neither EC P-256 nor RSA (CKA_KEY_TYPE 0x%lx)", (unsigned long)type);
    /* CKA_MODULUS is public, and readable on the private half too. */
    uint8_t mod[P11_TLS_SIG_MAX + 1];
    CK_ATTRIBUTE m = {CKA_MODULUS, mod, sizeof(mod)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, a->h, &m, 1);
    KMS_ENSURE(rv == CKR_OK, KMS_ERR_CONFIG,
               "the RSA key's modulus cannot be read (%s) or is longer than 8192 bits",
               p11_rv_name(rv));
    size_t len = m.ulValueLen, i = 0;
    while (i < len && mod[i] == 0)
        i++;
    unsigned bits = 0;
    if (i < len) {
        bits = (unsigned)(len - i - 1) * 8;
        for (uint8_t top = mod[i]; top; top >>= 1)
            bits++;
    }
    KMS_ENSURE(bits >= 2048 && bits <= 8192, KMS_ERR_CONFIG,
               "the RSA key has %u bits; 2048..8192 are accepted", bits);
    k->type = P11_TLS_KEY_RSA;
    k->bits = bits;
    return KMS_OK;
}

/* The URI's object attribute `type` into dst; false when absent. */
static kms_err uri_bytes(P11KitUri *uri, CK_ATTRIBUTE_TYPE type, const char *name, uint8_t *dst,
                         size_t max, size_t *out_len, bool *out_has)
{
    CK_ATTRIBUTE_PTR a = p11_kit_uri_get_attribute(uri, type);
    *out_has = a != NULL;
    if (a == NULL)
        return KMS_OK;
    KMS_ENSURE(a->ulValueLen > 0 && a->ulValueLen <= max, KMS_ERR_CONFIG,
               "tls.key_uri: %s= must be 1..%zu bytes", name, max);
    memcpy(dst, a->pValue, a->ulValueLen);
    *out_len = a->ulValueLen;
    return KMS_OK;
}

/* Syntax and the parts kmsd uses; the URI text is never echoed before the
 * PIN attributes are known to be absent. */
static kms_err parse_uri(const char *text, struct p11_tls_key *k, P11KitUri **out)
{
    *out = NULL;
    KMS_ENSURE(text && strncmp(text, "pkcs11:", 7) == 0 && strlen(text) <= P11_TLS_URI_MAX,
               KMS_ERR_CONFIG, "tls.key_uri: must be a pkcs11: URI (RFC 7512) of at most %d bytes",
               P11_TLS_URI_MAX);
    P11KitUri *uri = p11_kit_uri_new();
    KMS_ENSURE(uri != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = KMS_OK;
    int prc = p11_kit_uri_parse(text, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, uri);
    KMS_ENSURE_GOTO(prc == P11_KIT_URI_OK, fail, KMS_ERR_CONFIG,
                    "tls.key_uri: not a valid PKCS#11 URI: %s", p11_kit_uri_message(prc));
    KMS_ENSURE_GOTO(p11_kit_uri_get_pin_value(uri) == NULL &&
                        p11_kit_uri_get_pin_source(uri) == NULL,
                    fail, KMS_ERR_CONFIG,
                    "tls.key_uri: must not carry a PIN (pin-value, pin-source): kmsd uses the "
                    "token's configured pin");
    CK_ATTRIBUTE_PTR cls = p11_kit_uri_get_attribute(uri, CKA_CLASS);
    KMS_ENSURE_GOTO(cls == NULL || (cls->ulValueLen == sizeof(CK_OBJECT_CLASS) &&
                                    *(CK_OBJECT_CLASS *)cls->pValue == CKO_PRIVATE_KEY),
                    fail, KMS_ERR_CONFIG, "tls.key_uri '%s': type= must be private", text);
    KMS_GUARD_GOTO(uri_bytes(uri, CKA_LABEL, "object", k->label, sizeof(k->label), &k->label_len,
                             &k->has_label),
                   fail);
    KMS_GUARD_GOTO(uri_bytes(uri, CKA_ID, "id", k->id, sizeof(k->id), &k->id_len, &k->has_id),
                   fail);
    KMS_ENSURE_GOTO(k->has_label || k->has_id, fail, KMS_ERR_CONFIG,
                    "tls.key_uri '%s': names no object (add object=<label> or id=<bytes>)", text);
    /* SHA-256("custos:tls-key" || len || label || len || id), truncated. */
    uint8_t md[32], lens[2] = {(uint8_t)k->label_len, (uint8_t)k->id_len};
    static const char tag[] = "custos:tls-key";
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, tag, sizeof(tag)) == 1 &&
              EVP_DigestUpdate(ctx, &lens[0], 1) == 1 &&
              EVP_DigestUpdate(ctx, k->label, k->label_len) == 1 &&
              EVP_DigestUpdate(ctx, &lens[1], 1) == 1 &&
              EVP_DigestUpdate(ctx, k->id, k->id_len) == 1 &&
              EVP_DigestFinal_ex(ctx, md, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    KMS_ENSURE_GOTO(ok, fail, KMS_ERR_INTERNAL, "SHA-256 failed");
    memcpy(k->cache_id, md, sizeof(k->cache_id));
    *out = uri;
    return KMS_OK;
fail:
    p11_kit_uri_free(uri);
    return rc;
}

kms_err p11_tls_key_open(struct p11_token *const *tokens, size_t n, const char *text,
                         struct p11_tls_key **out)
{
    *out = NULL;
    struct p11_tls_key *k = calloc(1, sizeof(*k));
    KMS_ENSURE(k != NULL, KMS_ERR_NOMEM, "out of memory");
    P11KitUri *uri = NULL;
    kms_err rc;
    KMS_GUARD_GOTO(parse_uri(text, k, &uri), fail);

    size_t n_tok = 0, n_found = 0;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    char seen[256] = "";
    for (size_t i = 0; i < n; i++) {
        struct p11_token *tok = tokens[i];
        if (tok == NULL)
            continue;
        CK_TOKEN_INFO ti;
        KMS_GUARD_GOTO(P11_CALL(tok, C_GetTokenInfo, P11_NO_MECH, tok->slot, &ti), fail);
        size_t used = strlen(seen);
        snprintf(seen + used, sizeof(seen) - used, "%s%s", used ? ", " : "", tok->label);
        if (p11_kit_uri_match_token_info(uri, &ti) != 1)
            continue;
        n_tok++;
        struct find_arg fa = {.key = k};
        KMS_GUARD_GOTO(p11_with_session(tok, do_find, &fa), fail);
        if (fa.count > 0 && n_found == 0) {
            k->tok = tok;
            h = fa.first;
        }
        n_found += fa.count;
    }
    KMS_ENSURE_GOTO(n_tok > 0, fail, KMS_ERR_CONFIG,
                    "tls.key_uri '%s': no configured token matches it (tokens: %s)", text, seen);
    KMS_ENSURE_GOTO(n_found > 0, fail, KMS_ERR_CONFIG,
                    "tls.key_uri '%s': no private key matches it in %s %s", text,
                    n_tok == 1 ? "token" : "tokens", seen);
    KMS_ENSURE_GOTO(n_found == 1, fail, KMS_ERR_CONFIG,
                    "tls.key_uri '%s': more than one private key matches it; name one with "
                    "token=, object= and id=",
                    text);
    struct describe_arg da = {.key = k, .h = h};
    rc = p11_with_session(k->tok, do_describe, &da);
    if (rc == KMS_ERR_CONFIG)
        rc = kms_err_set(KMS_ERR_CONFIG, "tls.key_uri '%s': %s", text, kms_err_detail());
    if (rc != KMS_OK)
        goto fail;
    p11_cache_put(&k->tok->cache, k->cache_id, CKO_PRIVATE_KEY, P11_TYPE_ANY, h);
    p11_kit_uri_free(uri);
    *out = k;
    return KMS_OK;
fail:
    p11_kit_uri_free(uri);
    free(k);
    return rc;
}

void p11_tls_key_free(struct p11_tls_key *key)
{
    free(key);
}

enum p11_tls_key_type p11_tls_key_type(const struct p11_tls_key *key)
{
    return key->type;
}

unsigned p11_tls_key_bits(const struct p11_tls_key *key)
{
    return key->bits;
}

struct p11_token *p11_tls_key_token(const struct p11_tls_key *key)
{
    return key->tok;
}

/* ---- signing ---------------------------------------------------------------- */

static size_t hash_len(enum p11_tls_hash h)
{
    switch (h) {
    case P11_TLS_SHA256: return 32;
    case P11_TLS_SHA384: return 48;
    case P11_TLS_SHA512: return 64;
    }
    return 0;
}

/* The DER DigestInfo prefix (AlgorithmIdentifier with NULL parameters,
 * then the OCTET STRING header) of each hash: RFC 8017, section 9.2. */
static const uint8_t *digest_info_prefix(enum p11_tls_hash h)
{
    static const uint8_t p256[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    static const uint8_t p384[19] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
    static const uint8_t p512[19] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
    switch (h) {
    case P11_TLS_SHA256: return p256;
    case P11_TLS_SHA384: return p384;
    case P11_TLS_SHA512: return p512;
    }
    return NULL;
}

/* PKCS#11 ECDSA gives r||s; X.509 and TLS want SEQUENCE { r, s }, at most
 * 72 bytes for P-256 (p11_ecdsa_raw_to_der, shared with p11_asym). */
static kms_err ecdsa_to_der(const uint8_t *rs, size_t rs_len, uint8_t *out, size_t *out_len)
{
    KMS_ENSURE(rs_len == 64, KMS_ERR_HSM, "CKM_ECDSA returned %zu bytes, not 64", rs_len);
    KMS_ENSURE(*out_len >= 72, KMS_ERR_USAGE, "signature buffer too small");
    return p11_ecdsa_raw_to_der(rs, out, *out_len, out_len);
}

struct sign_arg {
    struct p11_tls_key *key;
    CK_MECHANISM mech;
    const uint8_t *in;
    size_t in_len;
    uint8_t *out;
    CK_ULONG out_len;
};

static kms_err do_sign(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sign_arg *a = varg;
    struct p11_tls_key *k = a->key;
    CK_OBJECT_HANDLE h;
    if (!p11_cache_get(&tok->cache, k->cache_id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h)) {
        struct find_arg fa = {.key = k};
        KMS_GUARD(do_find(tok, s, &fa));
        KMS_ENSURE(fa.count == 1, KMS_ERR_HSM, "TLS key: token '%s' now holds %lu matching keys",
                   tok->label, (unsigned long)fa.count);
        h = fa.first;
        p11_cache_put(&tok->cache, k->cache_id, CKO_PRIVATE_KEY, P11_TYPE_ANY, h);
    }
    CK_RV rv = P11_RV(tok, C_SignInit, a->mech.mechanism, s, &a->mech, h);
    if (rv == CKR_OK)
        rv = P11_RV(tok, C_Sign, a->mech.mechanism, s, (CK_BYTE_PTR)a->in, a->in_len, a->out,
                    &a->out_len);
    /* A stale handle (after a module re-initialisation): find it again on
     * the retry p11_with_session makes for KMS_ERR_HSM_SESSION. */
    if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID)
        p11_cache_forget(&tok->cache, k->cache_id);
    return p11_rv_err(rv, "C_Sign", tok->label);
}

kms_err p11_tls_key_sign(struct p11_tls_key *key, enum p11_tls_sig sig, enum p11_tls_hash hash,
                         const uint8_t *in, size_t in_len, uint8_t *out, size_t *sig_len)
{
    size_t hl = hash_len(hash);
    KMS_ENSURE(key && in && out && sig_len && hl > 0, KMS_ERR_USAGE, "p11_tls_key_sign: bad call");
    uint8_t raw[P11_TLS_SIG_MAX];
    CK_RSA_PKCS_PSS_PARAMS pss = {0};
    struct sign_arg a = {.key = key, .in = in, .in_len = in_len, .out = raw,
                         .out_len = sizeof(raw)};
    switch (sig) {
    case P11_TLS_SIG_ECDSA:
        KMS_ENSURE(key->type == P11_TLS_KEY_EC_P256, KMS_ERR_INVALID_ARGUMENT,
                   "ECDSA needs an EC key");
        KMS_ENSURE(in_len == hl, KMS_ERR_INVALID_ARGUMENT, "not a digest of the hash named");
        a.mech = (CK_MECHANISM){CKM_ECDSA, NULL, 0};
        break;
    case P11_TLS_SIG_RSA_PSS:
        KMS_ENSURE(key->type == P11_TLS_KEY_RSA, KMS_ERR_INVALID_ARGUMENT,
                   "RSA-PSS needs an RSA key");
        KMS_ENSURE(in_len == hl, KMS_ERR_INVALID_ARGUMENT, "not a digest of the hash named");
        pss.hashAlg = hash == P11_TLS_SHA256 ? CKM_SHA256
                      : hash == P11_TLS_SHA384 ? CKM_SHA384
                                               : CKM_SHA512;
        pss.mgf = hash == P11_TLS_SHA256 ? CKG_MGF1_SHA256
                  : hash == P11_TLS_SHA384 ? CKG_MGF1_SHA384
                                           : CKG_MGF1_SHA512;
        pss.sLen = hl; /* TLS 1.3 (RFC 8446, 4.2.3): salt as long as the digest */
        a.mech = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
        break;
    case P11_TLS_SIG_RSA_PKCS1:
        KMS_ENSURE(key->type == P11_TLS_KEY_RSA, KMS_ERR_INVALID_ARGUMENT,
                   "RSA PKCS#1 v1.5 needs an RSA key");
        /* Only a DigestInfo of the hash named: the raw mechanism would sign
         * anything it is given (TLS 1.0's MD5+SHA-1 among them). */
        KMS_ENSURE(in_len == 19 + hl && memcmp(in, digest_info_prefix(hash), 19) == 0,
                   KMS_ERR_INVALID_ARGUMENT, "not a DigestInfo of the hash named");
        a.mech = (CK_MECHANISM){CKM_RSA_PKCS, NULL, 0};
        break;
    default:
        return kms_err_set(KMS_ERR_USAGE, "p11_tls_key_sign: unknown algorithm");
    }
    KMS_GUARD(p11_with_session(key->tok, do_sign, &a));
    if (sig == P11_TLS_SIG_ECDSA)
        return ecdsa_to_der(raw, a.out_len, out, sig_len);
    KMS_ENSURE(a.out_len <= *sig_len, KMS_ERR_USAGE, "signature buffer too small");
    memcpy(out, raw, a.out_len);
    *sig_len = a.out_len;
    return KMS_OK;
}
