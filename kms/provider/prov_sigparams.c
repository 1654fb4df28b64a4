/*
 * prov_sigparams.c - the parameters of signing with a Custos key
 * (prov_sigparams.h): SHA-256 under any of its names, RSA padding PKCS#1
 * v1.5 or PSS, a PSS salt of 32 bytes with MGF1-SHA-256, and the DER
 * AlgorithmIdentifier a certificate signed this way carries.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "proto/key.pb-c.h"
#include "prov_sigparams.h"

/* Accept SHA-256 under any of its names; anything else is refused. */
int prov_sigparams_set_digest(struct prov_sig *s, const char *name)
{
    EVP_MD *md = EVP_MD_fetch(s->ctx->libctx, name, PROV_PEER_PROPQ);
    int ok = md != NULL && EVP_MD_is_a(md, "SHA2-256");
    EVP_MD_free(md);
    if (!ok) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED, "Custos keys sign with SHA-256 only, not %s", name);
        return 0;
    }
    s->md_set = 1;
    return 1;
}

uint32_t prov_sigparams_algorithm(const struct prov_sig *s)
{
    if (s->is_ec)
        return CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256;
    return s->pad == RSA_PKCS1_PSS_PADDING ? CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256
                                           : CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256;
}

/* DER AlgorithmIdentifiers for X.509 (RFC 5758, RFC 4055). */
static const unsigned char aid_ecdsa_sha256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                                 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char aid_rsa_sha256[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                               0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00};
/* RSASSA-PSS, hash SHA-256, MGF1 with SHA-256, salt length 32, trailer 1. */
static const unsigned char aid_rsa_pss_sha256[] = {
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30,
    0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
    0x02, 0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
    0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
    0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20};

int prov_sigparams_get(const struct prov_sig *s, OSSL_PARAM params[])
{
    OSSL_PARAM *p;
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID)) != NULL) {
        const unsigned char *aid = s->is_ec                       ? aid_ecdsa_sha256
                                   : s->pad == RSA_PKCS1_PSS_PADDING ? aid_rsa_pss_sha256
                                                                    : aid_rsa_sha256;
        size_t n = s->is_ec                       ? sizeof(aid_ecdsa_sha256)
                   : s->pad == RSA_PKCS1_PSS_PADDING ? sizeof(aid_rsa_pss_sha256)
                                                    : sizeof(aid_rsa_sha256);
        if (!OSSL_PARAM_set_octet_string(p, aid, n))
            return 0;
    }
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL &&
        !OSSL_PARAM_set_utf8_string(p, "SHA2-256"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST_SIZE)) != NULL &&
        !OSSL_PARAM_set_size_t(p, SHA256_LEN))
        return 0;
    if (!s->is_ec) {
        if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL) {
            int ok = p->data_type == OSSL_PARAM_INTEGER
                         ? OSSL_PARAM_set_int(p, s->pad)
                         : OSSL_PARAM_set_utf8_string(
                               p, s->pad == RSA_PKCS1_PSS_PADDING ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                                                  : OSSL_PKEY_RSA_PAD_MODE_PKCSV15);
            if (!ok)
                return 0;
        }
        if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL) {
            int ok = p->data_type == OSSL_PARAM_INTEGER ? OSSL_PARAM_set_int(p, SHA256_LEN)
                                                        : OSSL_PARAM_set_utf8_string(p, "32");
            if (!ok)
                return 0;
        }
        if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL &&
            !OSSL_PARAM_set_utf8_string(p, "SHA2-256"))
            return 0;
    }
    return 1;
}

static int set_pad(struct prov_sig *s, const OSSL_PARAM *p)
{
    int pad = 0;
    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *v = p->data;
        if (strcmp(v, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
            pad = RSA_PKCS1_PADDING;
        else if (strcmp(v, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0)
            pad = RSA_PKCS1_PSS_PADDING;
    } else if (!OSSL_PARAM_get_int(p, &pad)) {
        return 0;
    }
    if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED, "Custos RSA keys sign with PKCS#1 v1.5 or PSS only");
        return 0;
    }
    s->pad = pad;
    return 1;
}

/* PSS salt: the digest length (32) only. "auto" (OpenSSL's default when
 * nothing is said, which would mean the maximum for signing) is taken as
 * 32; an explicit "max" or any other length is refused, since a verifier
 * told so would reject a 32-byte salt. */
static int set_saltlen(struct prov_sig *s, const OSSL_PARAM *p)
{
    int len = 0;
    if (p->data_type == OSSL_PARAM_UTF8_STRING) {
        const char *v = p->data;
        if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0 ||
            strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0)
            len = SHA256_LEN;
        else if (strcmp(v, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0)
            len = RSA_PSS_SALTLEN_MAX;
        else
            len = atoi(v);
    } else if (!OSSL_PARAM_get_int(p, &len)) {
        return 0;
    }
    if (len == RSA_PSS_SALTLEN_DIGEST || len == RSA_PSS_SALTLEN_AUTO)
        len = SHA256_LEN;
    if (len != SHA256_LEN) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED,
                   "Custos PSS signatures use a 32-byte salt (the digest length)");
        return 0;
    }
    s->saltlen = len;
    return 1;
}

int prov_sigparams_set(struct prov_sig *s, const OSSL_PARAM params[])
{
    const OSSL_PARAM *p;
    if (params == NULL || params->key == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !prov_sigparams_set_digest(s, name))
            return 0;
    }
    if (s->is_ec)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL &&
        !set_pad(s, p))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL &&
        !set_saltlen(s, p))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL) {
        const char *name = NULL;
        EVP_MD *md = NULL;
        int ok = OSSL_PARAM_get_utf8_string_ptr(p, &name) &&
                 (md = EVP_MD_fetch(s->ctx->libctx, name, PROV_PEER_PROPQ)) != NULL &&
                 EVP_MD_is_a(md, "SHA2-256");
        EVP_MD_free(md);
        if (!ok) {
            PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED, "Custos PSS signatures use MGF1 with SHA-256");
            return 0;
        }
    }
    return 1;
}

static const OSSL_PARAM ec_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM ec_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_size_t(OSSL_SIGNATURE_PARAM_DIGEST_SIZE, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_size_t(OSSL_SIGNATURE_PARAM_DIGEST_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

const OSSL_PARAM *prov_sigparams_settable(int is_ec)
{
    return is_ec ? ec_settable : rsa_settable;
}

const OSSL_PARAM *prov_sigparams_gettable(int is_ec)
{
    return is_ec ? ec_gettable : rsa_gettable;
}
