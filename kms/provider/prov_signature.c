/*
 * prov_signature.c - ECDSA and RSA (PKCS#1 v1.5, PSS) signatures with Custos
 * key references (prov.h).
 *
 * Signing sends kmsd the SHA-256 digest (Sign, message_type DIGEST) and
 * returns its signature (ECDSA as DER). The digest-sign entry points hash
 * locally with the SHA-256 of the child library context (the default
 * provider), so only 32 bytes travel, whatever the message size.
 * Everything else is passed through to the child context (the default
 * provider) unchanged: verification (with the public key: no round trip,
 * no grant), and signing with a *plain* key, one the application's own key
 * file put in this provider's key manager (prov.h). The restrictions below
 * apply to signing with a Custos key only.
 *
 * Custos signs with SHA-256 only, and PSS only with MGF1-SHA-256 and a salt
 * as long as the digest (what TLS 1.3 uses); any other choice is refused
 * when it is set, not when kmsd is asked (prov_sigparams.c).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "proto/key.pb-c.h"
#include "prov.h"
#include "prov_client.h"
#include "prov_sigparams.h"

/* Signing with a Custos key is ours; everything else is passed through. */
static int custos_sign(const struct prov_sig *s)
{
    return s->op == 1 && s->key != NULL && s->key->is_ref;
}

static EVP_PKEY_CTX *inner_pctx(const struct prov_sig *s)
{
    return s->inner ? s->inner : s->inner_md ? EVP_MD_CTX_get_pkey_ctx(s->inner_md) : NULL;
}

static void inner_reset(struct prov_sig *s)
{
    EVP_PKEY_CTX_free(s->inner);
    EVP_MD_CTX_free(s->inner_md);
    s->inner = NULL;
    s->inner_md = NULL;
}

static void *sig_newctx(struct prov_ctx *ctx, int is_ec)
{
    struct prov_sig *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->ctx = ctx;
    s->is_ec = is_ec;
    s->pad = RSA_PKCS1_PADDING;
    s->saltlen = RSA_PSS_SALTLEN_DIGEST;
    return s;
}

static void *ecdsa_newctx(void *provctx, const char *propq)
{
    (void)propq;
    return sig_newctx(provctx, 1);
}

static void *rsa_newctx(void *provctx, const char *propq)
{
    (void)propq;
    return sig_newctx(provctx, 0);
}

static void sig_freectx(void *vs)
{
    struct prov_sig *s = vs;
    if (s == NULL)
        return;
    prov_key_free(s->key);
    EVP_MD_CTX_free(s->mdctx);
    EVP_MD_free(s->md);
    inner_reset(s);
    free(s);
}

static void *sig_dupctx(void *vs)
{
    struct prov_sig *s = vs, *d = malloc(sizeof(*d));
    if (d == NULL)
        return NULL;
    *d = *s;
    d->key = NULL;
    d->md = NULL;
    d->mdctx = NULL;
    d->inner = NULL;
    d->inner_md = NULL;
    if ((s->inner && (d->inner = EVP_PKEY_CTX_dup(s->inner)) == NULL) ||
        (s->inner_md && ((d->inner_md = EVP_MD_CTX_new()) == NULL ||
                         !EVP_MD_CTX_copy_ex(d->inner_md, s->inner_md)))) {
        sig_freectx(d);
        return NULL;
    }
    if (s->key)
        d->key = prov_key_ref(s->key);
    if (s->md && EVP_MD_up_ref(s->md))
        d->md = s->md;
    if (s->mdctx && ((d->mdctx = EVP_MD_CTX_new()) == NULL ||
                     !EVP_MD_CTX_copy_ex(d->mdctx, s->mdctx))) {
        sig_freectx(d);
        return NULL;
    }
    return d;
}

static int sig_set_ctx_params(void *vs, const OSSL_PARAM params[]);

static int sig_init(void *vs, void *provkey, const OSSL_PARAM params[], int op)
{
    struct prov_sig *s = vs;
    struct prov_key *k = provkey;
    (void)params;
    if (k == NULL || k->magic != PROV_KEY_MAGIC ||
        (k->type == PROV_KEY_EC) != (s->is_ec != 0) || k->pub == NULL) {
        PROV_RAISE(s->ctx, PROV_R_INTERNAL, "not a custos key object of this type");
        return 0;
    }
    if (op == OP_SIGN && !k->is_ref && !k->has_private) {
        PROV_RAISE(s->ctx, PROV_R_NO_KEY_REFERENCE,
                   "this key is a public key only: open a custos:key=... URI to sign");
        return 0;
    }
    prov_key_free(s->key);
    s->key = prov_key_ref(k);
    s->op = op;
    inner_reset(s);
    return 1;
}

static int sig_init_plain(void *vs, void *provkey, const OSSL_PARAM params[], int op)
{
    struct prov_sig *s = vs;
    if (!sig_init(vs, provkey, params, op))
        return 0;
    if (custos_sign(s))
        return sig_set_ctx_params(s, params);
    s->inner = EVP_PKEY_CTX_new_from_pkey(s->ctx->libctx, s->key->pub, PROV_PEER_PROPQ);
    if (s->inner == NULL)
        return 0;
    return (op == OP_SIGN ? EVP_PKEY_sign_init_ex(s->inner, params)
                          : EVP_PKEY_verify_init_ex(s->inner, params)) > 0;
}

static int sign_init(void *vs, void *provkey, const OSSL_PARAM params[])
{
    return sig_init_plain(vs, provkey, params, OP_SIGN);
}

static int verify_init(void *vs, void *provkey, const OSSL_PARAM params[])
{
    return sig_init_plain(vs, provkey, params, OP_VERIFY);
}

/* Sign a SHA-256 digest through kmsd. */
static int sign_digest(struct prov_sig *s, unsigned char *sig, size_t *siglen, size_t sigsize,
                       const unsigned char *dgst, size_t dlen)
{
    size_t max = prov_key_max_sig(s->key);
    if (sig == NULL) {
        *siglen = max;
        return 1;
    }
    if (s->op != OP_SIGN) {
        PROV_RAISE(s->ctx, PROV_R_INTERNAL, "not initialised for signing");
        return 0;
    }
    if (dlen != SHA256_LEN) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED,
                   "Custos signs SHA-256 digests: expected 32 bytes to sign, got %zu", dlen);
        return 0;
    }
    /* Raw RSA input without a digest named would be signed differently by
     * OpenSSL (no DigestInfo); Custos always signs a DigestInfo, so the
     * caller must say the input is a SHA-256 digest. */
    if (!s->is_ec && !s->md_set) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED,
                   "set the digest to SHA-256 (e.g. -pkeyopt digest:sha256) to sign with an RSA "
                   "custos key");
        return 0;
    }
    if (s->key->algs && !(s->key->algs & (1u << prov_sigparams_algorithm(s)))) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED, "kmsd does not offer this algorithm for the key");
        return 0;
    }
    Custos__V1__SignRequest req = CUSTOS__V1__SIGN_REQUEST__INIT;
    Custos__V1__SignResponse *resp = NULL;
    req.key_id = s->key->key_id;
    req.version = s->key->version;
    req.message.data = (uint8_t *)dgst;
    req.message.len = dlen;
    req.message_type = CUSTOS__V1__MESSAGE_TYPE__DIGEST;
    req.algorithm = prov_sigparams_algorithm(s);
    if (!prov_client_call(s->ctx, "Sign", &req.base, &custos__v1__sign_response__descriptor,
                          (ProtobufCMessage **)&resp))
        return 0;
    int ok = 0;
    if (resp->signature.len == 0 || resp->signature.len > max || resp->signature.len > sigsize) {
        PROV_RAISE(s->ctx, PROV_R_BAD_REPLY, "kmsd's signature has %zu bytes, expected at most %zu",
                   resp->signature.len, max < sigsize ? max : sigsize);
    } else {
        memcpy(sig, resp->signature.data, resp->signature.len);
        *siglen = resp->signature.len;
        ok = 1;
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ok;
}

static int sign(void *vs, unsigned char *sig, size_t *siglen, size_t sigsize,
                const unsigned char *tbs, size_t tbslen)
{
    struct prov_sig *s = vs;
    if (custos_sign(s))
        return sign_digest(s, sig, siglen, sigsize, tbs, tbslen);
    *siglen = sigsize;
    return s->inner != NULL && EVP_PKEY_sign(s->inner, sig, siglen, tbs, tbslen) > 0;
}

static int verify(void *vs, const unsigned char *sig, size_t siglen, const unsigned char *tbs,
                  size_t tbslen)
{
    struct prov_sig *s = vs;
    return s->inner != NULL && EVP_PKEY_verify(s->inner, sig, siglen, tbs, tbslen) > 0;
}

/* ---- digest sign / verify ---------------------------------------------- */

static int dsig_init(void *vs, const char *mdname, void *provkey, const OSSL_PARAM params[],
                     int op)
{
    struct prov_sig *s = vs;
    if (!sig_init(vs, provkey, NULL, op))
        return 0;
    if (!custos_sign(s)) {
        if ((s->inner_md = EVP_MD_CTX_new()) == NULL)
            return 0;
        return (op == OP_SIGN
                    ? EVP_DigestSignInit_ex(s->inner_md, NULL, mdname, s->ctx->libctx,
                                            PROV_PEER_PROPQ, s->key->pub, params)
                    : EVP_DigestVerifyInit_ex(s->inner_md, NULL, mdname, s->ctx->libctx,
                                              PROV_PEER_PROPQ, s->key->pub, params)) > 0;
    }
    if (!prov_sigparams_set_digest(s, mdname && *mdname ? mdname : "SHA2-256"))
        return 0;
    EVP_MD_free(s->md);
    s->md = EVP_MD_fetch(s->ctx->libctx, "SHA2-256", PROV_PEER_PROPQ);
    if (s->md == NULL) {
        PROV_RAISE(s->ctx, PROV_R_CONFIG,
                   "no SHA-256 implementation: load the default provider next to custos");
        return 0;
    }
    if (s->mdctx == NULL && (s->mdctx = EVP_MD_CTX_new()) == NULL)
        return 0;
    if (!EVP_DigestInit_ex2(s->mdctx, s->md, NULL))
        return 0;
    return sig_set_ctx_params(s, params);
}

static int digest_sign_init(void *vs, const char *mdname, void *provkey,
                            const OSSL_PARAM params[])
{
    return dsig_init(vs, mdname, provkey, params, OP_SIGN);
}

static int digest_verify_init(void *vs, const char *mdname, void *provkey,
                              const OSSL_PARAM params[])
{
    return dsig_init(vs, mdname, provkey, params, OP_VERIFY);
}

static int digest_update(void *vs, const unsigned char *data, size_t len)
{
    struct prov_sig *s = vs;
    if (s->inner_md)
        return (s->op == OP_SIGN ? EVP_DigestSignUpdate(s->inner_md, data, len)
                                 : EVP_DigestVerifyUpdate(s->inner_md, data, len)) > 0;
    return s->mdctx != NULL && EVP_DigestUpdate(s->mdctx, data, len);
}

static int digest_sign_final(void *vs, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    struct prov_sig *s = vs;
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (s->inner_md) {
        if (sig != NULL)
            *siglen = sigsize;
        return EVP_DigestSignFinal(s->inner_md, sig, siglen) > 0;
    }
    if (sig == NULL)
        return sign_digest(s, NULL, siglen, 0, NULL, 0);
    if (s->mdctx == NULL || !EVP_DigestFinal_ex(s->mdctx, d, &dlen))
        return 0;
    return sign_digest(s, sig, siglen, sigsize, d, dlen);
}

static int digest_sign(void *vs, unsigned char *sig, size_t *siglen, size_t sigsize,
                       const unsigned char *tbs, size_t tbslen)
{
    struct prov_sig *s = vs;
    if (s->inner_md) {
        if (sig != NULL)
            *siglen = sigsize;
        return EVP_DigestSign(s->inner_md, sig, siglen, tbs, tbslen) > 0;
    }
    if (sig == NULL)
        return sign_digest(s, NULL, siglen, 0, NULL, 0);
    if (!digest_update(s, tbs, tbslen))
        return 0;
    return digest_sign_final(s, sig, siglen, sigsize);
}

static int digest_verify_final(void *vs, const unsigned char *sig, size_t siglen)
{
    struct prov_sig *s = vs;
    return s->inner_md != NULL && EVP_DigestVerifyFinal(s->inner_md, sig, siglen) > 0;
}

/* ---- parameters (prov_sigparams.c) ------------------------------------- */

static int sig_get_ctx_params(void *vs, OSSL_PARAM params[])
{
    struct prov_sig *s = vs;
    if (!custos_sign(s)) {
        EVP_PKEY_CTX *in = inner_pctx(s);
        return in != NULL && EVP_PKEY_CTX_get_params(in, params) > 0;
    }
    return prov_sigparams_get(s, params);
}

static int sig_set_ctx_params(void *vs, const OSSL_PARAM params[])
{
    struct prov_sig *s = vs;
    if (params == NULL || params->key == NULL)
        return 1;
    if (!custos_sign(s)) {
        EVP_PKEY_CTX *in = inner_pctx(s);
        return in != NULL && EVP_PKEY_CTX_set_params(in, params) > 0;
    }
    return prov_sigparams_set(s, params);
}

static const OSSL_PARAM *ec_settable_ctx_params(void *vs, void *provctx)
{
    (void)vs;
    (void)provctx;
    return prov_sigparams_settable(1);
}

static const OSSL_PARAM *rsa_settable_ctx_params(void *vs, void *provctx)
{
    (void)vs;
    (void)provctx;
    return prov_sigparams_settable(0);
}

static const OSSL_PARAM *ec_gettable_ctx_params(void *vs, void *provctx)
{
    (void)vs;
    (void)provctx;
    return prov_sigparams_gettable(1);
}

static const OSSL_PARAM *rsa_gettable_ctx_params(void *vs, void *provctx)
{
    (void)vs;
    (void)provctx;
    return prov_sigparams_gettable(0);
}

#define SIGNATURE_COMMON                                                                   \
    {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},                             \
        {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},                           \
        {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sign_init},                         \
        {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sign},                                   \
        {OSSL_FUNC_SIGNATURE_VERIFY_INIT, (void (*)(void))verify_init},                     \
        {OSSL_FUNC_SIGNATURE_VERIFY, (void (*)(void))verify},                               \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))digest_sign_init},           \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))digest_update},            \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))digest_sign_final},         \
        {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, (void (*)(void))digest_sign},                     \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, (void (*)(void))digest_verify_init},       \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, (void (*)(void))digest_update},          \
        {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, (void (*)(void))digest_verify_final},     \
        {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},           \
        {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params}

const OSSL_DISPATCH prov_ecdsa_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))ecdsa_newctx},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))ec_settable_ctx_params},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))ec_gettable_ctx_params},
    SIGNATURE_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH prov_rsa_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))rsa_newctx},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))rsa_settable_ctx_params},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))rsa_gettable_ctx_params},
    SIGNATURE_COMMON,
    {0, NULL},
};
