/*
 * p11_asym_spki.c - a pair's public half as a DER SubjectPublicKeyInfo:
 * exported from the token, and parsed back into the values a restore
 * gives the token.
 */
#include "p11_asym_internal.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11_crypto.h"

kms_err p11_asym_public_spki(struct p11_token *tok, const struct p11_key_id *id,
                             uint8_t **out_der, size_t *out_len)
{
    /* p11_public_key_der reads CKA_EC_POINT or CKA_MODULUS and
     * CKA_PUBLIC_EXPONENT of the public half and encodes them with
     * OpenSSL's i2d_PUBKEY (so the buffer is OpenSSL's). */
    return p11_public_key_der(tok, id, out_der, out_len);
}

/* The public values of spki, checked against kind, into r. */
kms_err p11_asym_spki_values(enum p11_asym_kind kind, const uint8_t *spki, size_t spki_len,
                             struct p11_asym_pub_values *r)
{
    kms_err rc = KMS_OK;
    BIGNUM *n = NULL, *e = NULL;
    const uint8_t *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    KMS_ENSURE_GOTO(pkey != NULL && (size_t)(p - spki) == spki_len, done,
                    KMS_ERR_INVALID_ARGUMENT, "the version's public key does not parse");
    if (p11_asym_kind_is_ec(kind)) {
        char group[32] = "";
        uint8_t pt[65];
        size_t pt_len = 0;
        KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "EC") &&
                            EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                           sizeof(group), NULL) == 1 &&
                            strcmp(group, "prime256v1") == 0,
                        done, KMS_ERR_INVALID_ARGUMENT, "the version's public key is not P-256");
        KMS_ENSURE_GOTO(EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                                        pt, sizeof(pt), &pt_len) == 1 &&
                            pt_len == 65,
                        done, KMS_ERR_INVALID_ARGUMENT, "cannot read the P-256 public point");
        /* CKA_EC_POINT is the DER OCTET STRING of the uncompressed point. */
        r->a[0] = 0x04;
        r->a[1] = 65;
        memcpy(r->a + 2, pt, 65);
        r->a_len = 67;
    } else {
        KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "RSA") &&
                            (unsigned)EVP_PKEY_get_bits(pkey) == p11_asym_kind_bits(kind),
                        done, KMS_ERR_INVALID_ARGUMENT,
                        "the version's public key is not %s", p11_asym_kind_name(kind));
        KMS_ENSURE_GOTO(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                            EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
                            BN_num_bytes(n) <= (int)sizeof(r->a) &&
                            BN_num_bytes(e) <= (int)sizeof(r->b),
                        done, KMS_ERR_INVALID_ARGUMENT, "cannot read the RSA public key");
        r->a_len = (size_t)BN_bn2bin(n, r->a);
        r->b_len = (size_t)BN_bn2bin(e, r->b);
    }
done:
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pkey);
    return rc;
}
