/*
 * prov.h - the inside of the `custos` OpenSSL 3 provider (docs/openssl-provider.md).
 *
 * The provider is a client of kmsd: it holds key *references* (key id and
 * version) and public keys, never private material. One struct prov_ctx per
 * provider instance (per OSSL_LIB_CTX that loads the module) owns the Twirp
 * client and a child library context in which public keys are decoded and
 * SHA-256 is computed with whatever provider the application loaded for
 * digests (the default provider, normally): this module registers no
 * digests, ciphers or RNG of its own.
 */
#ifndef PROV_H
#define PROV_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>
#include <openssl/types.h>

#define PROV_NAME "custos"
/* Property query that keeps this provider out of the child library context's
 * fetches (public-key decoding, digests, local verification). */
#define PROV_PEER_PROPQ "provider!=custos"

struct prov_client;

struct prov_ctx {
    const OSSL_CORE_HANDLE *handle;
    OSSL_LIB_CTX *libctx; /* child of the application's library context */
    struct prov_client *client;
    /* Core error functions (the module may not share the caller's libcrypto
     * error queue symbols, so errors go through the core). */
    OSSL_FUNC_core_new_error_fn *new_error;
    OSSL_FUNC_core_set_error_debug_fn *set_error_debug;
    OSSL_FUNC_core_vset_error_fn *vset_error;
};

/* Reasons this provider raises. Twirp error codes from kmsd each get their
 * own reason, named exactly as the code ("permission_denied"), so that a log
 * line says what kmsd decided; the data says kmsd's message and request id. */
enum prov_reason {
    PROV_R_BAD_URI = 1,
    PROV_R_CONFIG,
    PROV_R_TRANSPORT,
    PROV_R_BAD_REPLY,
    PROV_R_UNSUPPORTED,
    PROV_R_NO_KEY_REFERENCE,
    PROV_R_INTERNAL,
    PROV_R_TWIRP_FIRST = 100, /* + index into kms_twirp_codes (kms_error.h) */
};

/* Raise an error on OpenSSL's queue through the core (ERR_raise_data's
 * provider-side equivalent). */
void prov_raise(const struct prov_ctx *ctx, const char *file, int line, const char *func,
                int reason, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define PROV_RAISE(ctx, reason, ...)                                                    \
    prov_raise((ctx), __FILE__, __LINE__, __func__, (reason), __VA_ARGS__)

/* ---- key references (prov_keymgmt.c) ---------------------------------- */

enum prov_key_type { PROV_KEY_EC = 1, PROV_KEY_RSA = 2 };

/* Signing algorithm bits (SigningAlgorithm enum values of proto/key.proto). */
#define PROV_ALG_ECDSA_SHA256 (1u << 1)
#define PROV_ALG_RSA_PSS_SHA256 (1u << 2)
#define PROV_ALG_RSA_PKCS1_SHA256 (1u << 3)

/* A key object: either a reference to a Custos key version (from the STORE
 * loader, `has` a private half that stays in kmsd), or a *plain* key: one
 * that OpenSSL imported or generated here because this provider's "EC" or
 * "RSA" key manager was the one it fetched (a certificate's public key, an
 * ephemeral ECDHE key, the application's own key file). A plain key is the
 * application's, not Custos's: it is held as a key of the child context
 * (`pub`, then with its private half) and every operation on it is passed
 * through unchanged. Reference counted: the STORE loader hands one reference
 * to keymgmt's load. */
struct prov_key {
    uint32_t magic;
    int refs; /* atomic */
    struct prov_ctx *ctx;
    enum prov_key_type type;
    int is_ref;       /* a Custos key version: signs through kmsd */
    char key_id[33];  /* lower-case hex, when is_ref */
    uint32_t version; /* the version kmsd resolved, when is_ref */
    uint32_t algs;    /* PROV_ALG_* the key signs with */
    EVP_PKEY *pub;    /* public half, decoded in ctx->libctx (never ours);
                       * for a plain key, the whole key */
    int has_private;  /* plain key with a private half */
};

#define PROV_KEY_MAGIC 0x43535459u /* "CSTY" */

struct prov_key *prov_key_new(struct prov_ctx *ctx, enum prov_key_type type);
struct prov_key *prov_key_ref(struct prov_key *k);
void prov_key_free(struct prov_key *k);
/* Fill k (a fresh key) from a GetPublicKey answer: DER SPKI, checked to be
 * of k's type. 1 on success, 0 with an error raised. */
int prov_key_set_spki(struct prov_key *k, const unsigned char *spki, size_t len);
/* Largest signature of k, in bytes. */
size_t prov_key_max_sig(const struct prov_key *k);

/* ---- URIs (prov_uri.c) ------------------------------------------------- */

#define PROV_URI_MAX 256

struct prov_uri {
    char key_id[33]; /* 32 lower-case hex digits */
    uint32_t version;  /* 0: the current version */
};

/* Parse "custos:key=<32 hex>[;version=<n>]" (n >= 1, decimal, no sign, no
 * leading zero). Pure: no network, no allocation. 1 on success; 0 with a
 * static reason in *why. */
int prov_uri_parse(const char *uri, struct prov_uri *out, const char **why);

/* ---- dispatch tables --------------------------------------------------- */

extern const OSSL_DISPATCH prov_ec_keymgmt_functions[];
extern const OSSL_DISPATCH prov_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH prov_ecdsa_signature_functions[];
extern const OSSL_DISPATCH prov_rsa_signature_functions[];
extern const OSSL_DISPATCH prov_store_functions[];

#endif
