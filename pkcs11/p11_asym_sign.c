/*
 * p11_asym_sign.c - signing and verifying SHA-256 digests with a pair's
 * halves: the mechanism of each algorithm, DER <-> raw r || s for ECDSA,
 * and refusing an algorithm that does not suit the key before the token
 * sees it.
 */
#include "p11_asym_internal.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>

#include "p11_crypto.h"
#include "p11_rv.h"

/* DER DigestInfo prefix of SHA-256 (RFC 8017 section 9.2, note 1):
 * CKM_RSA_PKCS signs DigestInfo || digest and pads it, nothing more. */
static const uint8_t sha256_digest_info[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                               0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                               0x01, 0x05, 0x00, 0x04, 0x20};

/* Mechanism and the bytes the token signs for alg. `pss` and `buf` are the
 * caller's storage (they must outlive the mechanism's use). */
static CK_ULONG mech_for(enum p11_sig_alg alg, CK_MECHANISM *m, CK_RSA_PKCS_PSS_PARAMS *pss,
                         const uint8_t *digest, uint8_t buf[64], const uint8_t **data)
{
    memset(m, 0, sizeof(*m));
    switch (alg) {
    case P11_SIG_ECDSA_SHA256:
        m->mechanism = CKM_ECDSA;
        *data = digest;
        return 32;
    case P11_SIG_RSA_PSS_SHA256:
        pss->hashAlg = CKM_SHA256;
        pss->mgf = CKG_MGF1_SHA256;
        pss->sLen = 32;
        m->mechanism = CKM_RSA_PKCS_PSS;
        m->pParameter = pss;
        m->ulParameterLen = sizeof(*pss);
        *data = digest;
        return 32;
    case P11_SIG_RSA_PKCS1_SHA256:
        memcpy(buf, sha256_digest_info, sizeof(sha256_digest_info));
        memcpy(buf + sizeof(sha256_digest_info), digest, 32);
        m->mechanism = CKM_RSA_PKCS;
        *data = buf;
        return sizeof(sha256_digest_info) + 32;
    }
    return 0;
}

/* Sign in session s with private handle h; sig holds *sig_len bytes. */
kms_err p11_asym_sign_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         enum p11_sig_alg alg, const uint8_t *digest, uint8_t *sig,
                         size_t *sig_len)
{
    CK_MECHANISM m;
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t buf[64];
    const uint8_t *data = NULL;
    CK_ULONG data_len = mech_for(alg, &m, &pss, digest, buf, &data);
    uint8_t raw[P11_ASYM_SIG_MAX];
    CK_ULONG raw_len = sizeof(raw);
    CK_RV rv = P11_RV(tok, C_SignInit, m.mechanism, s, &m, h);
    KMS_GUARD(p11_rv_err(rv, "C_SignInit", tok->label));
    rv = P11_RV(tok, C_Sign, m.mechanism, s, (CK_BYTE *)data, data_len, raw, &raw_len);
    KMS_GUARD(p11_rv_err(rv, "C_Sign", tok->label));
    if (alg == P11_SIG_ECDSA_SHA256) {
        /* CKM_ECDSA answers raw r || s; OpenSSL and X.509 want DER. */
        KMS_ENSURE(raw_len == 64, KMS_ERR_HSM,
                   "token '%s' returned a %lu-byte P-256 signature, want 64", tok->label,
                   (unsigned long)raw_len);
        return p11_ecdsa_raw_to_der(raw, sig, *sig_len, sig_len);
    }
    KMS_ENSURE(raw_len <= *sig_len, KMS_ERR_USAGE, "signature buffer too small");
    memcpy(sig, raw, raw_len);
    *sig_len = raw_len;
    return KMS_OK;
}

/* Strict DER Ecdsa-Sig-Value to raw r || s (32 bytes each). False for
 * anything that is not the one canonical encoding of two integers below
 * 2^256: a signature is valid in one encoding only. */
static bool ecdsa_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[64])
{
    bool ok = false;
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    uint8_t *again = NULL;
    if (sig == NULL || (size_t)(p - der) != len)
        goto done;
    int n = i2d_ECDSA_SIG(sig, &again);
    if (n <= 0 || (size_t)n != len || memcmp(again, der, len) != 0)
        goto done;
    const BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_is_negative(r) || BN_is_negative(s) || BN_bn2binpad(r, raw, 32) != 32 ||
        BN_bn2binpad(s, raw + 32, 32) != 32)
        goto done;
    ok = true;
done:
    OPENSSL_free(again);
    ECDSA_SIG_free(sig);
    return ok;
}

kms_err p11_asym_verify_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                           enum p11_sig_alg alg, const uint8_t *digest, const uint8_t *sig,
                           size_t sig_len, bool *out_valid)
{
    *out_valid = false;
    uint8_t raw[64];
    if (alg == P11_SIG_ECDSA_SHA256) {
        if (!ecdsa_der_to_raw(sig, sig_len, raw))
            return KMS_OK;
        sig = raw;
        sig_len = sizeof(raw);
    }
    CK_MECHANISM m;
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t buf[64];
    const uint8_t *data = NULL;
    CK_ULONG data_len = mech_for(alg, &m, &pss, digest, buf, &data);
    CK_RV rv = P11_RV(tok, C_VerifyInit, m.mechanism, s, &m, h);
    KMS_GUARD(p11_rv_err(rv, "C_VerifyInit", tok->label));
    rv = P11_RV(tok, C_Verify, m.mechanism, s, (CK_BYTE *)data, data_len, (CK_BYTE *)sig,
                sig_len);
    /* C_Verify ends the operation whatever it answers (PKCS#11 5.13). */
    if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
        return KMS_OK;
    KMS_GUARD(p11_rv_err(rv, "C_Verify", tok->label));
    *out_valid = true;
    return KMS_OK;
}

struct sig_arg {
    const struct p11_key_id *id;
    enum p11_sig_alg alg;
    const uint8_t *digest;
    const uint8_t *sig_in;
    size_t sig_in_len;
    uint8_t *sig;
    size_t sig_len;
    bool valid;
};

/* The algorithm must suit the key's type before the token sees it:
 * SoftHSMv2 2.6.1 accepts C_SignInit(CKM_RSA_PKCS_PSS) with an EC key and
 * then crashes the process inside C_Sign (found by test_p11_asym). One
 * attribute read per call. */
static kms_err check_alg_type(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              enum p11_sig_alg alg)
{
    CK_KEY_TYPE kt = CK_UNAVAILABLE_INFORMATION;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_KEY_TYPE)", tok->label));
    CK_KEY_TYPE want = alg == P11_SIG_ECDSA_SHA256 ? CKK_EC : CKK_RSA;
    KMS_ENSURE(kt == want, KMS_ERR_INVALID_ARGUMENT, "%s does not suit this key's type",
               p11_sig_alg_name(alg));
    return KMS_OK;
}

static kms_err do_sign(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sig_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h));
    KMS_GUARD(check_alg_type(tok, s, h, a->alg));
    return p11_asym_sign_in(tok, s, h, a->alg, a->digest, a->sig, &a->sig_len);
}

static kms_err do_verify(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sig_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PUBLIC_KEY, P11_TYPE_ANY, &h));
    KMS_GUARD(check_alg_type(tok, s, h, a->alg));
    return p11_asym_verify_in(tok, s, h, a->alg, a->digest, a->sig_in, a->sig_in_len, &a->valid);
}

kms_err p11_asym_sign_digest(struct p11_token *tok, const struct p11_key_id *id,
                             enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                             uint8_t *sig, size_t *sig_len)
{
    size_t cap = *sig_len;
    *sig_len = 0;
    KMS_ENSURE(p11_asym_alg_valid(alg), KMS_ERR_INVALID_ARGUMENT, "unknown signing algorithm %d",
               (int)alg);
    KMS_ENSURE(digest_len == P11_ASYM_DIGEST_LEN, KMS_ERR_INVALID_ARGUMENT,
               "a SHA-256 digest is 32 bytes, got %zu", digest_len);
    struct sig_arg a = {id, alg, digest, NULL, 0, sig, cap, false};
    kms_err rc = p11_with_session(tok, do_sign, &a);
    if (rc != KMS_OK) {
        OPENSSL_cleanse(sig, cap);
        return rc;
    }
    *sig_len = a.sig_len;
    return KMS_OK;
}

kms_err p11_asym_verify_digest(struct p11_token *tok, const struct p11_key_id *id,
                               enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                               const uint8_t *sig, size_t sig_len, bool *out_valid)
{
    *out_valid = false;
    KMS_ENSURE(p11_asym_alg_valid(alg), KMS_ERR_INVALID_ARGUMENT, "unknown signing algorithm %d",
               (int)alg);
    KMS_ENSURE(digest_len == P11_ASYM_DIGEST_LEN, KMS_ERR_INVALID_ARGUMENT,
               "a SHA-256 digest is 32 bytes, got %zu", digest_len);
    /* No key here makes a longer signature: it cannot verify. */
    if (sig_len == 0 || sig_len > P11_ASYM_SIG_MAX)
        return KMS_OK;
    struct sig_arg a = {id, alg, digest, sig, sig_len, NULL, 0, false};
    KMS_GUARD(p11_with_session(tok, do_verify, &a));
    *out_valid = a.valid;
    return KMS_OK;
}
