/*
 * prov_sigparams.h - the signature operation's state and its parameters
 * (digest name, RSA padding mode, PSS salt length and MGF1 digest, the DER
 * AlgorithmIdentifier), shared by prov_signature.c (the operation) and
 * prov_sigparams.c (what may be set and what is reported).
 *
 * Custos signs with SHA-256 only, and PSS only with MGF1-SHA-256 and a salt
 * as long as the digest; any other choice is refused when it is set, not
 * when kmsd is asked.
 */
#ifndef PROV_SIGPARAMS_H
#define PROV_SIGPARAMS_H

#include <stdint.h>

#include <openssl/core.h>
#include <openssl/evp.h>

#include "prov.h"

#define SHA256_LEN 32

enum { OP_SIGN = 1, OP_VERIFY = 2 };

struct prov_sig {
    struct prov_ctx *ctx;
    struct prov_key *key;
    int op;
    int pad;       /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING (RSA only) */
    int md_set;    /* SHA-256 was named (or implied by a digest-sign init) */
    int saltlen;   /* RSA_PSS_SALTLEN_DIGEST, or 32 */
    EVP_MD *md;    /* digest-sign: SHA-256 of the child context */
    EVP_MD_CTX *mdctx;
    int is_ec;
    /* Pass-through (verification, plain keys): the child context's
     * operation, one of the two. */
    EVP_PKEY_CTX *inner;
    EVP_MD_CTX *inner_md;
};

/* Accept SHA-256 under any of its names (sets md_set); anything else is
 * raised and refused (0). */
int prov_sigparams_set_digest(struct prov_sig *s, const char *name);

/* The kmsd SigningAlgorithm the key type and padding mode make. */
uint32_t prov_sigparams_algorithm(const struct prov_sig *s);

/* Get/set the context parameters of signing with a Custos key (the caller
 * passes everything else through to the child context). 1 on success. */
int prov_sigparams_get(const struct prov_sig *s, OSSL_PARAM params[]);
int prov_sigparams_set(struct prov_sig *s, const OSSL_PARAM params[]);

/* The settable and gettable parameter lists for an EC (is_ec) or RSA key. */
const OSSL_PARAM *prov_sigparams_settable(int is_ec);
const OSSL_PARAM *prov_sigparams_gettable(int is_ec);

#endif
