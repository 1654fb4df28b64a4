/*
 * p11_escrow.c - export of an escrowed key for a recipient, inside the HSM.
 */
#include "p11_escrow.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11_internal.h"
#include "p11_rv.h"

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

struct export_arg {
    const struct p11_key_id *escrow;
    const uint8_t *blob;
    size_t blob_len;
    uint8_t *n, *e; /* recipient modulus and exponent, big-endian */
    size_t n_len, e_len;
    uint8_t *out;
    size_t out_cap, out_len;
    enum p11_oaep_hash hash;
};

/* Every usage attribute explicit (SoftHSMv2 defaults them to true). */
#define NO_USE(wrap_)                                                                            \
    {CKA_ENCRYPT, &no, sizeof(no)}, {CKA_DECRYPT, &no, sizeof(no)},                          \
        {CKA_WRAP, (wrap_), sizeof(CK_BBOOL)}, {CKA_UNWRAP, &no, sizeof(no)},                  \
        {CKA_SIGN, &no, sizeof(no)}, {CKA_VERIFY, &no, sizeof(no)},                            \
        {CKA_DERIVE, &no, sizeof(no)}

static kms_err oaep_wrap(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                         CK_OBJECT_HANDLE e, struct export_arg *a, CK_ULONG *len)
{
    /* SHA-256 first; SoftHSMv2 2.6.1 accepts only SHA-1 in OAEP. */
    enum p11_oaep_hash hashes[2] = {P11_OAEP_SHA256, P11_OAEP_SHA1};
    CK_RV rv = CKR_GENERAL_ERROR;
    for (int i = 0; i < 2; i++) {
        CK_RSA_PKCS_OAEP_PARAMS p = {0};
        p.hashAlg = hashes[i] == P11_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
        p.mgf = hashes[i] == P11_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
        p.source = CKZ_DATA_SPECIFIED;
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
        *len = a->out_cap;
        rv = P11_RV(tok, C_WrapKey, CKM_RSA_PKCS_OAEP, s, &m, pub, e, a->out, len);
        if (rv == CKR_OK) {
            a->hash = hashes[i];
            return KMS_OK;
        }
        if (rv != CKR_MECHANISM_PARAM_INVALID && rv != CKR_ARGUMENTS_BAD &&
            rv != CKR_MECHANISM_INVALID)
            break;
    }
    return p11_rv_err(rv, "C_WrapKey(RSA-OAEP)", tok->label);
}

static kms_err do_export(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct export_arg *a = varg;
    kms_err rc = KMS_OK;
    CK_OBJECT_HANDLE hesc, pub = CK_INVALID_HANDLE, key = CK_INVALID_HANDLE,
                           eph = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, sec_cls = CKO_SECRET_KEY;
    CK_KEY_TYPE rsa = CKK_RSA, aes = CKK_AES;
    CK_ULONG value_len = 32;
    KMS_GUARD(p11_key_handle(tok, s, a->escrow, CKO_SECRET_KEY, CKK_AES, &hesc));

    CK_ATTRIBUTE pub_t[] = {
        {CKA_CLASS, &pub_cls, sizeof(pub_cls)},
        {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_MODULUS, a->n, a->n_len},
        {CKA_PUBLIC_EXPONENT, a->e, a->e_len},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_VERIFY, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
    };
    CK_RV rv = P11_RV(tok, C_CreateObject, P11_NO_MECH, s, pub_t,
                      sizeof(pub_t) / sizeof(pub_t[0]), &pub);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_CreateObject(recipient key)", tok->label), done);

    /* The recovered key: a session object that exists only to be wrapped
     * once, by E below. */
    CK_ATTRIBUTE key_t[] = {
        {CKA_CLASS, &sec_cls, sizeof(sec_cls)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        NO_USE(&no),
    };
    CK_MECHANISM kwp = {tok->kwp_mech, NULL, 0};
    rv = P11_RV(tok, C_UnwrapKey, tok->kwp_mech, s, &kwp, hesc, (CK_BYTE *)a->blob, a->blob_len,
                key_t, sizeof(key_t) / sizeof(key_t[0]), &key);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_UnwrapKey(escrow blob)", tok->label), done);

    CK_ATTRIBUTE eph_t[] = {
        {CKA_CLASS, &sec_cls, sizeof(sec_cls)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        NO_USE(&yes),
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    rv = P11_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, eph_t,
                sizeof(eph_t) / sizeof(eph_t[0]), &eph);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_GenerateKey(ephemeral AES)", tok->label), done);

    CK_ULONG oaep_len = 0;
    KMS_GUARD_GOTO(oaep_wrap(tok, s, pub, eph, a, &oaep_len), done);
    CK_ULONG kwp_len = a->out_cap - oaep_len;
    rv = P11_RV(tok, C_WrapKey, tok->kwp_mech, s, &kwp, eph, key, a->out + oaep_len, &kwp_len);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_WrapKey(AES-KWP)", tok->label), done);
    KMS_ENSURE_GOTO(kwp_len == 40, done, KMS_ERR_HSM,
                    "token '%s' wrapped a 256-bit key into %lu bytes, want 40", tok->label,
                    (unsigned long)kwp_len);
    a->out_len = oaep_len + kwp_len;
done:
    if (eph != CK_INVALID_HANDLE)
        P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, eph);
    if (key != CK_INVALID_HANDLE)
        P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, key);
    if (pub != CK_INVALID_HANDLE)
        P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, pub);
    return rc;
}

kms_err p11_escrow_export(struct p11_token *tok, const struct p11_key_id *escrow,
                          const uint8_t *blob, size_t blob_len, const uint8_t *recipient_spki,
                          size_t spki_len, uint8_t *out, size_t out_cap, size_t *out_len,
                          enum p11_oaep_hash *out_hash)
{
    kms_err rc = KMS_OK;
    *out_len = 0;
    struct export_arg a;
    memset(&a, 0, sizeof(a));
    BIGNUM *n = NULL, *e = NULL;
    const uint8_t *p = recipient_spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    KMS_ENSURE_GOTO(blob_len == 40, done, KMS_ERR_BAD_CIPHERTEXT,
                    "escrow blob must be 40 bytes, got %zu", blob_len);
    KMS_ENSURE_GOTO(pkey != NULL && EVP_PKEY_is_a(pkey, "RSA"), done, KMS_ERR_INVALID_ARGUMENT,
                    "recipient key is not an RSA public key");
    int bits = EVP_PKEY_get_bits(pkey);
    KMS_ENSURE_GOTO(bits >= 2048 && bits <= 4096 && out_cap >= (size_t)bits / 8 + 40, done,
                    KMS_ERR_INVALID_ARGUMENT, "recipient key must be RSA 2048..4096 bits");
    KMS_ENSURE_GOTO(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1,
                    done, KMS_ERR_INVALID_ARGUMENT, "cannot read the recipient's RSA key");
    uint8_t nb[512], eb[16];
    KMS_ENSURE_GOTO(BN_num_bytes(n) <= (int)sizeof(nb) && BN_num_bytes(e) <= (int)sizeof(eb),
                    done, KMS_ERR_INVALID_ARGUMENT, "recipient RSA key out of range");
    a.n_len = (size_t)BN_bn2bin(n, nb);
    a.e_len = (size_t)BN_bn2bin(e, eb);
    a.n = nb;
    a.e = eb;
    a.escrow = escrow;
    a.blob = blob;
    a.blob_len = blob_len;
    a.out = out;
    a.out_cap = out_cap;
    rc = p11_with_session(tok, do_export, &a);
    if (rc == KMS_OK) {
        *out_len = a.out_len;
        *out_hash = a.hash;
    } else {
        OPENSSL_cleanse(out, out_cap);
    }
done:
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pkey);
    return rc;
}
