/*
 * p11_crypto.c - GCM, key wrap, OAEP unwrap, HMAC, ECDSA and public keys.
 */
#include "p11_crypto.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "kms_log.h"
#include "p11_internal.h"
#include "p11_rv.h"

/* ---- AES-GCM --------------------------------------------------------------- */

struct gcm_arg {
    const struct p11_key_id *key;
    const uint8_t *iv, *aad, *in;
    size_t aad_len, in_len;
    uint8_t *out;
    size_t out_cap, out_len;
    bool encrypt;
};

static kms_err do_gcm(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct gcm_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->key, CKO_SECRET_KEY, CKK_AES, &h));
    CK_GCM_PARAMS p = {
        .pIv = (CK_BYTE *)a->iv,
        .ulIvLen = P11_GCM_IV_LEN,
        .ulIvBits = P11_GCM_IV_LEN * 8,
        .pAAD = (CK_BYTE *)a->aad,
        .ulAADLen = a->aad_len,
        .ulTagBits = P11_GCM_TAG_LEN * 8,
    };
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_ULONG out_len = a->out_cap;
    CK_RV rv;
    if (a->encrypt) {
        rv = P11_RV(tok, C_EncryptInit, CKM_AES_GCM, s, &m, h);
        KMS_GUARD(p11_rv_err(rv, "C_EncryptInit", tok->label));
        /* SoftHSMv2 refuses a NULL input even of length 0. */
        static CK_BYTE empty[1];
        CK_BYTE *in = a->in_len ? (CK_BYTE *)a->in : empty;
        rv = P11_RV(tok, C_Encrypt, CKM_AES_GCM, s, in, a->in_len, a->out, &out_len);
        KMS_GUARD(p11_rv_err(rv, "C_Encrypt", tok->label));
    } else {
        /* SoftHSMv2 wants room for the whole input (tag included) before it
         * has checked the tag, and a CKR_BUFFER_TOO_SMALL would leave the
         * operation active on the session. Decrypt into scratch space of the
         * input's size, then copy out only the verified plaintext. */
        uint8_t stack[4096];
        uint8_t *scratch = a->in_len <= sizeof(stack) ? stack : malloc(a->in_len);
        KMS_ENSURE(scratch != NULL, KMS_ERR_NOMEM, "out of memory");
        out_len = a->in_len;
        kms_err rc;
        rv = P11_RV(tok, C_DecryptInit, CKM_AES_GCM, s, &m, h);
        rc = p11_rv_err(rv, "C_DecryptInit", tok->label);
        if (rc == KMS_OK) {
            rv = P11_RV(tok, C_Decrypt, CKM_AES_GCM, s, (CK_BYTE *)a->in, a->in_len, scratch,
                        &out_len);
            rc = p11_rv_err(p11_rv_auth_failure(tok, rv), "C_Decrypt", tok->label);
        }
        if (rc == KMS_OK && out_len > a->out_cap)
            rc = kms_err_set(KMS_ERR_HSM, "token '%s' returned more plaintext than expected",
                             tok->label);
        if (rc == KMS_OK)
            memcpy(a->out, scratch, out_len);
        OPENSSL_cleanse(scratch, a->in_len);
        if (scratch != stack)
            free(scratch);
        KMS_GUARD(rc);
    }
    a->out_len = out_len;
    return KMS_OK;
}

static kms_err gcm(struct p11_token *tok, struct gcm_arg *a, size_t iv_len, size_t *out_len)
{
    *out_len = 0;
    KMS_ENSURE(iv_len == P11_GCM_IV_LEN, KMS_ERR_INVALID_ARGUMENT, "GCM IV must be %d bytes, got %zu",
               P11_GCM_IV_LEN, iv_len);
    KMS_ENSURE(a->in_len <= P11_GCM_MAX_INPUT, KMS_ERR_TOO_LARGE, "GCM input over %u bytes",
               P11_GCM_MAX_INPUT);
    KMS_ENSURE(a->aad_len <= P11_GCM_MAX_INPUT, KMS_ERR_TOO_LARGE, "GCM AAD over %u bytes",
               P11_GCM_MAX_INPUT);
    kms_err rc = p11_with_session(tok, do_gcm, a);
    if (rc != KMS_OK) {
        /* Never hand back a partial result, least of all unauthenticated
         * plaintext. */
        OPENSSL_cleanse(a->out, a->out_cap);
        return rc;
    }
    *out_len = a->out_len;
    return KMS_OK;
}

kms_err p11_gcm_encrypt(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *iv,
                        size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *pt,
                        size_t pt_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
    KMS_ENSURE(out_cap >= pt_len + P11_GCM_TAG_LEN, KMS_ERR_USAGE,
               "GCM output buffer too small");
    struct gcm_arg a = {key, iv, aad, pt, aad_len, pt_len, out, out_cap, 0, true};
    return gcm(tok, &a, iv_len, out_len);
}

kms_err p11_gcm_decrypt(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *iv,
                        size_t iv_len, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
                        size_t ct_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
    *out_len = 0;
    KMS_ENSURE(ct_len >= P11_GCM_TAG_LEN, KMS_ERR_BAD_CIPHERTEXT,
               "ciphertext shorter than the GCM tag");
    KMS_ENSURE(out_cap >= ct_len - P11_GCM_TAG_LEN, KMS_ERR_USAGE, "GCM output buffer too small");
    struct gcm_arg a = {key, iv, aad, ct, aad_len, ct_len, out, out_cap, 0, false};
    return gcm(tok, &a, iv_len, out_len);
}

/* ---- key wrap ---------------------------------------------------------------- */

struct wrap_arg {
    const struct p11_key_id *wrapping, *target;
    enum p11_key_kind target_kind; /* 0: the id's AES key, else its generic secret */
    uint8_t *out;
    size_t out_cap, out_len;
};

kms_err p11_kwp_wrap_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE hw,
                        CK_OBJECT_HANDLE target, const char *fn, uint8_t *out, size_t out_cap,
                        size_t *out_len)
{
    /* PKCS#11 makes C_WrapKey refuse a key whose CKA_EXTRACTABLE is false
     * (CKR_KEY_UNEXTRACTABLE); NSS's softoken 3.87 wraps it anyway. The
     * layer asks first, on every token, so "locked after escrow" and
     * "non-extractable" hold whatever the token enforces. */
    CK_BBOOL extractable = CK_FALSE;
    CK_ATTRIBUTE ea = {CKA_EXTRACTABLE, &extractable, sizeof(extractable)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, target, &ea, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    if (extractable != CK_TRUE)
        return p11_rv_err(CKR_KEY_UNEXTRACTABLE, fn, tok->label);
    CK_MECHANISM m = {tok->kwp_mech, NULL, 0};
    CK_ULONG len = out_cap;
    rv = P11_RV(tok, C_WrapKey, tok->kwp_mech, s, &m, hw, target, out, &len);
    KMS_GUARD(p11_rv_err(rv, fn, tok->label));
    *out_len = len;
    return KMS_OK;
}

static kms_err do_wrap(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct wrap_arg *a = varg;
    CK_OBJECT_HANDLE hw, ht;
    KMS_GUARD(p11_key_handle(tok, s, a->wrapping, CKO_SECRET_KEY, CKK_AES, &hw));
    KMS_GUARD(p11_key_handle_kind(tok, s, a->target, a->target_kind, &ht));
    return p11_kwp_wrap_in(tok, s, hw, ht, "C_WrapKey", a->out, a->out_cap, &a->out_len);
}

static kms_err kwp_wrap(struct p11_token *tok, const struct p11_key_id *wrapping,
                        const struct p11_key_id *target, enum p11_key_kind target_kind,
                        uint8_t *out, size_t out_cap, size_t *out_len)
{
    *out_len = 0;
    struct wrap_arg a = {wrapping, target, target_kind, out, out_cap, 0};
    kms_err rc = p11_with_session(tok, do_wrap, &a);
    if (rc != KMS_OK) {
        OPENSSL_cleanse(out, out_cap);
        return rc;
    }
    *out_len = a.out_len;
    return KMS_OK;
}

kms_err p11_kwp_wrap(struct p11_token *tok, const struct p11_key_id *wrapping,
                     const struct p11_key_id *target, uint8_t *out, size_t out_cap,
                     size_t *out_len)
{
    return kwp_wrap(tok, wrapping, target, 0, out, out_cap, out_len);
}

struct unwrap_arg {
    const struct p11_key_id *unwrapping;
    CK_OBJECT_CLASS unwrapping_cls;
    CK_MECHANISM mech;
    const uint8_t *wrapped;
    size_t wrapped_len;
    enum p11_key_kind kind;
    unsigned flags;
    const struct p11_key_id *new_id;
    const char *label;
};

static kms_err do_unwrap(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct unwrap_arg *a = varg;
    CK_OBJECT_HANDLE hu, h;
    KMS_GUARD(p11_key_handle(tok, s, a->unwrapping, a->unwrapping_cls,
                             a->unwrapping_cls == CKO_SECRET_KEY ? CKK_AES : P11_TYPE_ANY, &hu));

    KMS_GUARD(p11_key_refuse_existing(tok, s, a->new_id, a->kind));

    struct p11_tmpl t;
    p11_tmpl_secret(&t, a->kind, a->flags, a->new_id, a->label, true);
    CK_ULONG nt = t.n;
    p11_tmpl_fit(tok, s, t.a, &nt);
    CK_RV rv = P11_RV(tok, C_UnwrapKey, a->mech.mechanism, s, &a->mech, hu, (CK_BYTE *)a->wrapped,
                      a->wrapped_len, t.a, nt, &h);
    /* A wrapped key of a length the key type cannot have (RFC 5649 pads
     * 25..31 bytes to the 40 of a 256-bit key): NSS's softoken says so at
     * once, as PKCS#11 lets it; the caller's data, not the token's fault. */
    if (rv == CKR_KEY_SIZE_RANGE) {
        p11_rv_err(rv, "C_UnwrapKey", tok->label); /* logged like any refusal */
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                           "the unwrapped key has a length an AES-256 key cannot have: not a "
                           "256-bit AES key");
    }
    KMS_GUARD(p11_rv_err(p11_rv_auth_failure(tok, rv), "C_UnwrapKey", tok->label));
    return p11_key_admit(tok, s, a->new_id, a->kind, a->flags, false, h, CK_INVALID_HANDLE,
                         "unwrapped key");
}

static kms_err check_unwrap_target(enum p11_key_kind kind)
{
    KMS_ENSURE(kind == P11_KEY_AES_ENCRYPT || kind == P11_KEY_AES_WRAP ||
                   kind == P11_KEY_AES_TRANSPORT || kind == P11_KEY_HMAC_SHA256,
               KMS_ERR_INVALID_ARGUMENT, "only secret keys can be unwrapped");
    return KMS_OK;
}

kms_err p11_kwp_unwrap(struct p11_token *tok, const struct p11_key_id *unwrapping,
                       const uint8_t *wrapped, size_t wrapped_len, enum p11_key_kind kind,
                       unsigned flags, const struct p11_key_id *new_id, const char *label)
{
    KMS_GUARD(check_unwrap_target(kind));
    /* RFC 5649 of a 32-byte key is exactly 40 bytes (8-byte integrity block
     * + 32). Anything else would be another key size: every kind here is
     * 256-bit, and the token may not report CKA_VALUE_LEN after unwrap. */
    KMS_ENSURE(wrapped_len == 40, KMS_ERR_BAD_CIPHERTEXT,
               "wrapped key must be 40 bytes (RFC 5649 of a 256-bit key), got %zu", wrapped_len);
    struct unwrap_arg a = {unwrapping, CKO_SECRET_KEY, {tok->kwp_mech, NULL, 0},
                           wrapped,    wrapped_len,    kind,
                           flags,      new_id,         label};
    return p11_with_session(tok, do_unwrap, &a);
}

kms_err p11_oaep_unwrap(struct p11_token *tok, const struct p11_key_id *rsa,
                        enum p11_oaep_hash hash, const uint8_t *wrapped, size_t wrapped_len,
                        enum p11_key_kind kind, unsigned flags, const struct p11_key_id *new_id,
                        const char *label)
{
    KMS_GUARD(check_unwrap_target(kind));
    KMS_ENSURE(wrapped_len == 384, KMS_ERR_BAD_CIPHERTEXT,
               "RSA-3072 OAEP block must be 384 bytes, got %zu", wrapped_len);
    CK_RSA_PKCS_OAEP_PARAMS p = {0};
    if (hash == P11_OAEP_SHA256) {
        p.hashAlg = CKM_SHA256;
        p.mgf = CKG_MGF1_SHA256;
    } else {
        p.hashAlg = CKM_SHA_1;
        p.mgf = CKG_MGF1_SHA1;
    }
    p.source = CKZ_DATA_SPECIFIED;
    struct unwrap_arg a = {rsa, CKO_PRIVATE_KEY, {CKM_RSA_PKCS_OAEP, &p, sizeof(p)},
                           wrapped, wrapped_len, kind, flags, new_id, label};
    kms_err rc = p11_with_session(tok, do_unwrap, &a);
    if (rc == KMS_ERR_UNSUPPORTED || (rc == KMS_ERR_HSM && hash == P11_OAEP_SHA256))
        return kms_err_set(KMS_ERR_UNSUPPORTED, "token '%s' refuses RSA-OAEP with %s",
                           tok->label, hash == P11_OAEP_SHA256 ? "SHA-256" : "SHA-1");
    return rc;
}

/* CK_RSA_AES_KEY_WRAP_PARAMS of PKCS#11 v2.40, which p11-kit's header lacks. */
struct p11_rsa_aes_key_wrap_params {
    CK_ULONG ulAESKeyBits;
    CK_RSA_PKCS_OAEP_PARAMS *pOAEPParams;
};

kms_err p11_rsa_aes_unwrap(struct p11_token *tok, const struct p11_key_id *rsa,
                           enum p11_oaep_hash hash, const uint8_t *wrapped, size_t wrapped_len,
                           enum p11_key_kind kind, unsigned flags, const struct p11_key_id *new_id,
                           const char *label)
{
    KMS_GUARD(check_unwrap_target(kind));
    KMS_ENSURE(p11_token_has(tok, P11_CAP_RSA_AES_KEY_WRAP), KMS_ERR_UNSUPPORTED,
               "token '%s' lacks %s", tok->label, p11_cap_name(P11_CAP_RSA_AES_KEY_WRAP));
    /* The OAEP block of the ephemeral key (384 bytes for RSA-3072), then the
     * RFC 5649 wrap of a 256-bit key (40 bytes). */
    KMS_ENSURE(wrapped_len == 384 + 40, KMS_ERR_BAD_CIPHERTEXT,
               "RSA-AES wrapped key must be 424 bytes, got %zu", wrapped_len);
    CK_RSA_PKCS_OAEP_PARAMS p = {0};
    p.hashAlg = hash == P11_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
    p.mgf = hash == P11_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
    p.source = CKZ_DATA_SPECIFIED;
    struct p11_rsa_aes_key_wrap_params rp = {256, &p};
    struct unwrap_arg a = {rsa, CKO_PRIVATE_KEY, {CKM_RSA_AES_KEY_WRAP, &rp, sizeof(rp)},
                           wrapped, wrapped_len, kind, flags, new_id, label};
    return p11_with_session(tok, do_unwrap, &a);
}

kms_err p11_oaep_sha256_supported(struct p11_token *tok, const struct p11_key_id *rsa,
                                  bool *out_supported)
{
    int known = __atomic_load_n(&tok->oaep_sha256, __ATOMIC_ACQUIRE);
    if (known >= 0) {
        *out_supported = known == 1;
        return KMS_OK;
    }
    /* An all-zero block is not a valid RSA ciphertext for OAEP: a token that
     * accepts the parameters fails on the data, one that does not fails on
     * the parameters, and no key is created either way. */
    uint8_t zero[384] = {0};
    struct p11_key_id probe_id;
    KMS_GUARD(p11_key_id_new(tok, &probe_id));
    kms_err rc = p11_oaep_unwrap(tok, rsa, P11_OAEP_SHA256, zero, sizeof(zero),
                                 P11_KEY_AES_TRANSPORT, P11_KEY_EPHEMERAL, &probe_id, NULL);
    if (rc == KMS_OK) {
        p11_key_destroy(tok, &probe_id);
        rc = KMS_ERR_BAD_CIPHERTEXT;
    }
    if (rc != KMS_ERR_UNSUPPORTED && rc != KMS_ERR_BAD_CIPHERTEXT)
        return rc;
    int v = rc == KMS_ERR_BAD_CIPHERTEXT ? 1 : 0;
    __atomic_store_n(&tok->oaep_sha256, v, __ATOMIC_RELEASE);
    kms_err_clear();
    *out_supported = v == 1;
    return KMS_OK;
}

/* ---- HMAC and ECDSA ----------------------------------------------------------- */

struct sign_arg {
    const struct p11_key_id *key;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_MECHANISM_TYPE mech;
    const uint8_t *data;
    size_t len;
    uint8_t *out;
    size_t out_len;
};

static kms_err do_sign(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sign_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->key, a->cls, a->type, &h));
    CK_MECHANISM m = {a->mech, NULL, 0};
    CK_RV rv = P11_RV(tok, C_SignInit, a->mech, s, &m, h);
    KMS_GUARD(p11_rv_err(rv, "C_SignInit", tok->label));
    CK_ULONG len = a->out_len;
    rv = P11_RV(tok, C_Sign, a->mech, s, (CK_BYTE *)a->data, a->len, a->out, &len);
    KMS_GUARD(p11_rv_err(rv, "C_Sign", tok->label));
    KMS_ENSURE(len == a->out_len, KMS_ERR_HSM, "token '%s' returned a %lu-byte signature, want %zu",
               tok->label, (unsigned long)len, a->out_len);
    return KMS_OK;
}

kms_err p11_hmac_sha256(struct p11_token *tok, const struct p11_key_id *key, const uint8_t *data,
                        size_t len, uint8_t out[32])
{
    KMS_ENSURE(len <= P11_GCM_MAX_INPUT, KMS_ERR_TOO_LARGE, "HMAC input too large");
    struct sign_arg a = {key, CKO_SECRET_KEY, CKK_GENERIC_SECRET, CKM_SHA256_HMAC, data, len, out,
                         32};
    kms_err rc = p11_with_session(tok, do_sign, &a);
    if (rc != KMS_OK)
        OPENSSL_cleanse(out, 32);
    return rc;
}

kms_err p11_ecdsa_sign(struct p11_token *tok, const struct p11_key_id *key,
                       const uint8_t digest[32], uint8_t out_raw[64])
{
    struct sign_arg a = {key, CKO_PRIVATE_KEY, P11_TYPE_ANY, CKM_ECDSA, digest, 32, out_raw, 64};
    kms_err rc = p11_with_session(tok, do_sign, &a);
    if (rc != KMS_OK)
        memset(out_raw, 0, 64);
    return rc;
}

kms_err p11_ecdsa_raw_to_der(const uint8_t raw[64], uint8_t *out, size_t out_cap,
                             size_t *out_len)
{
    kms_err rc = KMS_OK;
    *out_len = 0;
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL);
    BIGNUM *sv = BN_bin2bn(raw + 32, 32, NULL);
    KMS_ENSURE_GOTO(sig && r && sv, done, KMS_ERR_NOMEM, "out of memory");
    KMS_ENSURE_GOTO(ECDSA_SIG_set0(sig, r, sv) == 1, done, KMS_ERR_INTERNAL, "ECDSA_SIG_set0");
    r = sv = NULL; /* owned by sig now */
    int n = i2d_ECDSA_SIG(sig, NULL);
    KMS_ENSURE_GOTO(n > 0 && (size_t)n <= out_cap, done, KMS_ERR_USAGE,
                    "DER signature buffer too small");
    uint8_t *p = out;
    i2d_ECDSA_SIG(sig, &p);
    *out_len = (size_t)n;
done:
    BN_free(r);
    BN_free(sv);
    ECDSA_SIG_free(sig);
    return rc;
}

/* ---- public keys ------------------------------------------------------------------ */

struct pub_arg {
    const struct p11_key_id *key;
    CK_KEY_TYPE type;
    uint8_t a[1024], b[16]; /* EC point / RSA modulus, RSA exponent */
    size_t a_len, b_len;
};

static kms_err do_pub(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct pub_arg *p = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, p->key, CKO_PUBLIC_KEY, P11_TYPE_ANY, &h));
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &p->type, sizeof(p->type)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_KEY_TYPE)", tok->label));
    if (p->type == CKK_EC) {
        CK_ATTRIBUTE pt = {CKA_EC_POINT, p->a, sizeof(p->a)};
        rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &pt, 1);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EC_POINT)", tok->label));
        p->a_len = pt.ulValueLen;
    } else if (p->type == CKK_RSA) {
        CK_ATTRIBUTE ats[2] = {{CKA_MODULUS, p->a, sizeof(p->a)},
                               {CKA_PUBLIC_EXPONENT, p->b, sizeof(p->b)}};
        rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, ats, 2);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_MODULUS)", tok->label));
        p->a_len = ats[0].ulValueLen;
        p->b_len = ats[1].ulValueLen;
    } else {
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "key is neither EC nor RSA");
    }
    return KMS_OK;
}

/* CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point (some
 * old modules return the bare point); accept both. */
static kms_err ec_point_raw(const uint8_t *in, size_t len, const uint8_t **out, size_t *out_len)
{
    if (len == 65 && in[0] == 0x04) {
        *out = in;
        *out_len = len;
        return KMS_OK;
    }
    KMS_ENSURE(len == 67 && in[0] == 0x04 && in[1] == 65 && in[2] == 0x04, KMS_ERR_HSM,
               "unexpected CKA_EC_POINT encoding (%zu bytes)", len);
    *out = in + 2;
    *out_len = 65;
    return KMS_OK;
}

kms_err p11_public_key_der(struct p11_token *tok, const struct p11_key_id *key,
                           uint8_t **out_der, size_t *out_len)
{
    kms_err rc = KMS_OK;
    struct pub_arg p;
    memset(&p, 0, sizeof(p));
    p.key = key;
    *out_der = NULL;
    *out_len = 0;
    KMS_GUARD(p11_with_session(tok, do_pub, &p));

    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *e = NULL;
    KMS_ENSURE_GOTO(bld != NULL, done, KMS_ERR_NOMEM, "out of memory");
    if (p.type == CKK_EC) {
        const uint8_t *pt = NULL;
        size_t pt_len = 0;
        KMS_GUARD_GOTO(ec_point_raw(p.a, p.a_len, &pt, &pt_len), done);
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, pt_len);
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    } else {
        n = BN_bin2bn(p.a, (int)p.a_len, NULL);
        e = BN_bin2bn(p.b, (int)p.b_len, NULL);
        KMS_ENSURE_GOTO(n && e, done, KMS_ERR_NOMEM, "out of memory");
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    KMS_ENSURE_GOTO(ctx && params, done, KMS_ERR_NOMEM, "out of memory");
    KMS_ENSURE_GOTO(EVP_PKEY_fromdata_init(ctx) == 1 &&
                        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1,
                    done, KMS_ERR_HSM, "token '%s' returned a public key OpenSSL rejects",
                    tok->label);
    int len = i2d_PUBKEY(pkey, out_der);
    KMS_ENSURE_GOTO(len > 0, done, KMS_ERR_INTERNAL, "cannot encode SubjectPublicKeyInfo");
    *out_len = (size_t)len;
done:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return rc;
}

/* ---- escrow at birth --------------------------------------------------------------- */

kms_err p11_escrow_and_lock(struct p11_token *tok, const struct p11_key_id *escrow,
                            const struct p11_key_id *key, uint8_t *out_blob, size_t out_cap,
                            size_t *out_len)
{
    KMS_GUARD(p11_kwp_wrap(tok, escrow, key, out_blob, out_cap, out_len));
    kms_err rc = p11_key_lock(tok, key);
    if (rc != KMS_OK) {
        /* A blob for a key that stays extractable must not be stored. */
        OPENSSL_cleanse(out_blob, out_cap);
        *out_len = 0;
    }
    return rc;
}

kms_err p11_escrow_wrap(struct p11_token *tok, const struct p11_key_id *escrow,
                        const struct p11_key_id *key, enum p11_key_kind kind, uint8_t *out_blob,
                        size_t out_cap, size_t *out_len)
{
    KMS_ENSURE(kind == P11_KEY_AES_ENCRYPT || kind == P11_KEY_HMAC_SHA256, KMS_ERR_USAGE,
               "only AES and HMAC keys are escrowed");
    return kwp_wrap(tok, escrow, key, kind, out_blob, out_cap, out_len);
}

