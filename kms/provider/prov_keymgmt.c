/*
 * prov_keymgmt.c - KEYMGMT for EC and RSA (prov.h): Custos key references
 * and plain keys passed through.
 *
 * A reference is a Custos key version plus its public key, decoded from
 * GetPublicKey's SPKI in the child library context (so by the default
 * provider). Everything public is answered from that public key:
 * parameters (group, n/e, bits, security bits, signature size, default
 * digest), export, comparison. The private half stays in kmsd: exporting a
 * reference with the private key selected fails, nothing can be imported
 * into a reference, and `has` reports a private half (so OpenSSL treats it
 * as a private key and sends signing here).
 *
 * Failing that export is also what routes signing to this provider: OpenSSL
 * 3.0 first tries the application's preferred SIGNATURE implementation (the
 * default provider's) and exports the key to it with every part selected;
 * the export must fail for OpenSSL to fall back to this provider's
 * signature (crypto/evp/m_sigver.c).
 *
 * OpenSSL may also fetch these key managers for keys that are not Custos's
 * (whichever provider's "EC" comes first): a certificate's public key, a
 * key file, an ECDHE key share. Those *plain* keys are held whole in the
 * child context and passed through: import, export, generation and
 * parameters behave as the default provider's would, so loading custos
 * changes nothing for them.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/x509.h>

#include "prov.h"

struct prov_key *prov_key_new(struct prov_ctx *ctx, enum prov_key_type type)
{
    struct prov_key *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    k->magic = PROV_KEY_MAGIC;
    k->refs = 1;
    k->ctx = ctx;
    k->type = type;
    return k;
}

struct prov_key *prov_key_ref(struct prov_key *k)
{
    __atomic_add_fetch(&k->refs, 1, __ATOMIC_RELAXED);
    return k;
}

void prov_key_free(struct prov_key *k)
{
    if (k == NULL || __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    EVP_PKEY_free(k->pub);
    k->magic = 0;
    free(k);
}

static const char *type_name(enum prov_key_type t)
{
    return t == PROV_KEY_EC ? "EC" : "RSA";
}

int prov_key_set_spki(struct prov_key *k, const unsigned char *spki, size_t len)
{
    const unsigned char *p = spki;
    EVP_PKEY *pk = d2i_PUBKEY_ex(NULL, &p, (long)len, k->ctx->libctx, PROV_PEER_PROPQ);
    if (pk == NULL || p != spki + len) {
        EVP_PKEY_free(pk);
        PROV_RAISE(k->ctx, PROV_R_BAD_REPLY,
                   "kmsd's public key does not decode (is the default provider loaded?)");
        return 0;
    }
    if (!EVP_PKEY_is_a(pk, type_name(k->type))) {
        EVP_PKEY_free(pk);
        PROV_RAISE(k->ctx, PROV_R_BAD_REPLY, "kmsd's public key is not an %s key",
                   type_name(k->type));
        return 0;
    }
    if (k->type == PROV_KEY_EC) {
        char group[64];
        if (!EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                            NULL) ||
            strcmp(group, "prime256v1") != 0) {
            EVP_PKEY_free(pk);
            PROV_RAISE(k->ctx, PROV_R_UNSUPPORTED, "only P-256 EC keys are supported");
            return 0;
        }
    }
    EVP_PKEY_free(k->pub);
    k->pub = pk;
    return 1;
}

size_t prov_key_max_sig(const struct prov_key *k)
{
    int n = k->pub ? EVP_PKEY_get_size(k->pub) : 0;
    return n > 0 ? (size_t)n : 0;
}

static struct prov_key *as_key(void *keydata)
{
    struct prov_key *k = keydata;
    return k && k->magic == PROV_KEY_MAGIC ? k : NULL;
}

/* ---- lifecycle --------------------------------------------------------- */

static void *ec_new(void *provctx)
{
    return prov_key_new(provctx, PROV_KEY_EC);
}

static void *rsa_new(void *provctx)
{
    return prov_key_new(provctx, PROV_KEY_RSA);
}

static void km_free(void *keydata)
{
    prov_key_free(as_key(keydata));
}

/* A reference made by our STORE loader (prov_store.c): the bytes are a
 * pointer to a key object that the loader keeps alive during this call. */
static void *load_common(const void *reference, size_t size, enum prov_key_type type)
{
    struct prov_key *k;
    if (reference == NULL || size != sizeof(k))
        return NULL;
    memcpy(&k, reference, sizeof(k));
    k = as_key(k);
    if (k == NULL || k->type != type || !k->is_ref)
        return NULL;
    return prov_key_ref(k);
}

static void *ec_load(const void *reference, size_t size)
{
    return load_common(reference, size, PROV_KEY_EC);
}

static void *rsa_load(const void *reference, size_t size)
{
    return load_common(reference, size, PROV_KEY_RSA);
}

/* A reference is immutable once made: a duplicate is another reference
 * (the private half of a reference is the reference itself). A plain key
 * may be changed by set_params (an ECDHE peer's public point), so it is
 * copied. */
static void *km_dup(const void *keydata, int selection)
{
    struct prov_key *k = as_key((void *)keydata), *d;
    (void)selection;
    if (k == NULL)
        return NULL;
    if (k->is_ref || k->pub == NULL)
        return prov_key_ref(k);
    if ((d = prov_key_new(k->ctx, k->type)) == NULL)
        return NULL;
    if ((d->pub = EVP_PKEY_dup(k->pub)) == NULL) {
        prov_key_free(d);
        return NULL;
    }
    d->has_private = k->has_private;
    return d;
}

/* ---- queries ----------------------------------------------------------- */

static int km_has(const void *keydata, int selection)
{
    const struct prov_key *k = as_key((void *)keydata);
    if (k == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && !k->is_ref && !k->has_private)
        return 0;
    if ((selection & (OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_PRIVATE_KEY |
                      OSSL_KEYMGMT_SELECT_ALL_PARAMETERS)) &&
        k->pub == NULL)
        return 0;
    return 1;
}

static int km_match(const void *a, const void *b, int selection)
{
    const struct prov_key *ka = as_key((void *)a), *kb = as_key((void *)b);
    if (ka == NULL || kb == NULL || ka->type != kb->type || ka->pub == NULL || kb->pub == NULL)
        return 0;
    /* Two references name the same private half only when they name the
     * same key version. */
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) && ka->is_ref && kb->is_ref &&
        (strcmp(ka->key_id, kb->key_id) != 0 || ka->version != kb->version))
        return 0;
    return EVP_PKEY_eq(ka->pub, kb->pub) == 1;
}

static const char *ec_query_operation_name(int operation_id)
{
    /* Key exchange is the child context's (plain keys only: ECDHE). */
    return operation_id == OSSL_OP_SIGNATURE ? "ECDSA"
           : operation_id == OSSL_OP_KEYEXCH ? "ECDH"
                                             : NULL;
}

static const OSSL_PARAM ec_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *ec_gettable_params(void *provctx)
{
    (void)provctx;
    return ec_gettable;
}

static const OSSL_PARAM *rsa_gettable_params(void *provctx)
{
    (void)provctx;
    return rsa_gettable;
}

static int km_get_params(void *keydata, OSSL_PARAM params[])
{
    struct prov_key *k = as_key(keydata);
    if (k == NULL || k->pub == NULL)
        return 0;
    /* The child context's provider answers what it knows (a reference's
     * `pub` holds no private parameter to give); a parameter it does not
     * know stays unset, as with any keymgmt. */
    return EVP_PKEY_get_params(k->pub, params);
}

static const OSSL_PARAM settable[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_EC_INCLUDE_PUBLIC, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *km_settable_params(void *provctx)
{
    (void)provctx;
    return settable;
}

/* Plain keys only: a reference's public key is kmsd's and stays as it is. */
static int km_set_params(void *keydata, const OSSL_PARAM params[])
{
    struct prov_key *k = as_key(keydata);
    if (k == NULL || k->is_ref)
        return 0;
    /* A bare new key has nothing to set on: it gets its content by import
     * or generation (libssl's ECDHE peer key is generated from the group's
     * parameters first, then given its public point here). */
    if (k->pub == NULL)
        return 0;
    return EVP_PKEY_set_params(k->pub, (OSSL_PARAM *)params);
}

/* ---- import and export (public parts only) ---------------------------- */

/* What import and export carry: a reference exports its public parts; a
 * plain key carries whatever the child context's key manager does. */
static const OSSL_PARAM ec_io[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_PRIV_KEY, NULL, 0),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_USE_COFACTOR_ECDH, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_EC_INCLUDE_PUBLIC, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_io[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_D, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR1, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_FACTOR2, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT1, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_EXPONENT2, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_COEFFICIENT1, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *ec_io_types(int selection)
{
    (void)selection;
    return ec_io;
}

static const OSSL_PARAM *rsa_io_types(int selection)
{
    (void)selection;
    return rsa_io;
}

/* ---- generation (plain keys: ephemeral ECDHE keys, genpkey) ------------ */

/* Custos keys are made with kmsctl or CreateKey, never here; generation is
 * passed to the child context so that an application that fetched this key
 * manager for an unrelated key (libssl's ECDHE key share) still works. */
struct prov_gen {
    struct prov_ctx *ctx;
    enum prov_key_type type;
    int selection;
    EVP_PKEY_CTX *pctx;
};

static void gen_cleanup(void *vg)
{
    struct prov_gen *g = vg;
    if (g == NULL)
        return;
    EVP_PKEY_CTX_free(g->pctx);
    free(g);
}

static void *gen_init(void *provctx, int selection, const OSSL_PARAM params[],
                      enum prov_key_type type)
{
    struct prov_ctx *ctx = provctx;
    struct prov_gen *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->ctx = ctx;
    g->type = type;
    g->selection = selection;
    g->pctx = EVP_PKEY_CTX_new_from_name(ctx->libctx, type_name(type), PROV_PEER_PROPQ);
    int ok = g->pctx != NULL &&
             ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) ? EVP_PKEY_keygen_init(g->pctx)
                                                         : EVP_PKEY_paramgen_init(g->pctx)) > 0 &&
             (params == NULL || EVP_PKEY_CTX_set_params(g->pctx, params) > 0);
    if (!ok) {
        gen_cleanup(g);
        return NULL;
    }
    return g;
}

static void *ec_gen_init(void *provctx, int selection, const OSSL_PARAM params[])
{
    return gen_init(provctx, selection, params, PROV_KEY_EC);
}

static void *rsa_gen_init(void *provctx, int selection, const OSSL_PARAM params[])
{
    return gen_init(provctx, selection, params, PROV_KEY_RSA);
}

static int gen_set_params(void *vg, const OSSL_PARAM params[])
{
    struct prov_gen *g = vg;
    return EVP_PKEY_CTX_set_params(g->pctx, params) > 0;
}

static const OSSL_PARAM ec_gen_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM rsa_gen_settable[] = {
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_BITS, NULL),
    OSSL_PARAM_size_t(OSSL_PKEY_PARAM_RSA_PRIMES, NULL),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *ec_gen_settable_params(void *vg, void *provctx)
{
    (void)vg;
    (void)provctx;
    return ec_gen_settable;
}

static const OSSL_PARAM *rsa_gen_settable_params(void *vg, void *provctx)
{
    (void)vg;
    (void)provctx;
    return rsa_gen_settable;
}

/* An EC group given as a template key (libssl: EVP_PKEY_keygen from the
 * group's parameters). */
static int gen_set_template(void *vg, void *templ)
{
    struct prov_gen *g = vg;
    struct prov_key *t = as_key(templ);
    char group[64];
    if (t == NULL || t->pub == NULL || g->type != PROV_KEY_EC)
        return 0;
    if (!EVP_PKEY_get_utf8_string_param(t->pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        NULL))
        return 0;
    OSSL_PARAM p[2] = {OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
                       OSSL_PARAM_END};
    return EVP_PKEY_CTX_set_params(g->pctx, p) > 0;
}

static void *gen(void *vg, OSSL_CALLBACK *cb, void *cbarg)
{
    struct prov_gen *g = vg;
    struct prov_key *k;
    EVP_PKEY *pk = NULL;
    (void)cb;
    (void)cbarg;
    if (EVP_PKEY_generate(g->pctx, &pk) <= 0)
        return NULL;
    if ((k = prov_key_new(g->ctx, g->type)) == NULL) {
        EVP_PKEY_free(pk);
        return NULL;
    }
    k->pub = pk;
    k->has_private = (g->selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
    return k;
}

/* Import makes a plain key (never a reference) in the child context from
 * the parameters as given: a certificate's public key that OpenSSL compares
 * with a reference (X509_check_private_key, SSL_CTX_use_PrivateKey), or any
 * key the application hands this key manager. A reference cannot be
 * imported into: its material is in kmsd. */
static int km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    struct prov_key *k = as_key(keydata);
    EVP_PKEY_CTX *pctx = NULL;
    EVP_PKEY *pk = NULL;
    int ok = 0;

    if (k == NULL || k->is_ref)
        return 0;
    pctx = EVP_PKEY_CTX_new_from_name(k->ctx->libctx, type_name(k->type), PROV_PEER_PROPQ);
    if (pctx == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
        EVP_PKEY_fromdata(pctx, &pk, selection, (OSSL_PARAM *)params) <= 0)
        goto done;
    EVP_PKEY_free(k->pub);
    k->pub = pk;
    k->has_private = (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0;
    pk = NULL;
    ok = 1;
done:
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static int km_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    struct prov_key *k = as_key(keydata);
    if (k == NULL || k->pub == NULL)
        return 0;
    /* Never for a reference: there is no private key here to give. Failing
     * (rather than exporting the public half alone) keeps OpenSSL from
     * mistaking the copy for a usable private key in another provider. */
    if (k->is_ref && (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY))
        return 0;
    return EVP_PKEY_export(k->pub, selection, cb, cbarg);
}

#define KEYMGMT_COMMON                                                                   \
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))km_free},                                    \
        {OSSL_FUNC_KEYMGMT_DUP, (void (*)(void))km_dup},                                  \
        {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))km_has},                                  \
        {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))km_match},                              \
        {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))km_get_params},                    \
        {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))km_import},                            \
        {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))km_export},                            \
        {OSSL_FUNC_KEYMGMT_SET_PARAMS, (void (*)(void))km_set_params},                    \
        {OSSL_FUNC_KEYMGMT_SETTABLE_PARAMS, (void (*)(void))km_settable_params},          \
        {OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, (void (*)(void))gen_set_params},               \
        {OSSL_FUNC_KEYMGMT_GEN_SET_TEMPLATE, (void (*)(void))gen_set_template},           \
        {OSSL_FUNC_KEYMGMT_GEN, (void (*)(void))gen},                                     \
        {OSSL_FUNC_KEYMGMT_GEN_CLEANUP, (void (*)(void))gen_cleanup}

const OSSL_DISPATCH prov_ec_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))ec_new},
    {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))ec_load},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))ec_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, (void (*)(void))ec_gen_settable_params},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))ec_gettable_params},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))ec_io_types},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))ec_io_types},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))ec_query_operation_name},
    KEYMGMT_COMMON,
    {0, NULL},
};

const OSSL_DISPATCH prov_rsa_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))rsa_new},
    {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))rsa_load},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))rsa_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, (void (*)(void))rsa_gen_settable_params},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))rsa_gettable_params},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))rsa_io_types},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))rsa_io_types},
    KEYMGMT_COMMON,
    {0, NULL},
};
