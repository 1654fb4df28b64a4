/*
 * prov_store.c - the STORE loader of the custos: URI scheme (prov.h).
 *
 * open() only parses the URI (a bad one is refused before any network
 * call); load() asks kmsd for the key version's public key (GetPublicKey),
 * builds a key object, and hands OpenSSL a reference to it
 * (OSSL_OBJECT_PARAM_REFERENCE), which this provider's KEYMGMT load turns
 * into an EVP_PKEY. No key material but the public key ever reaches this
 * process. There is deliberately no export_object: OpenSSL must not copy
 * the object into another provider's key manager, where it would be a
 * public key posing as the private one.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include "proto/key.pb-c.h"
#include "prov.h"
#include "prov_client.h"

struct prov_store {
    struct prov_ctx *ctx;
    struct prov_uri uri;
    int expect; /* OSSL_STORE_INFO_* asked for, 0: any */
    int done;
};

static void *store_open(void *provctx, const char *uri)
{
    struct prov_ctx *ctx = provctx;
    struct prov_uri u;
    const char *why = NULL;
    if (!prov_uri_parse(uri, &u, &why)) {
        PROV_RAISE(ctx, PROV_R_BAD_URI, "%s", why);
        return NULL;
    }
    struct prov_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->ctx = ctx;
    s->uri = u;
    return s;
}

static const OSSL_PARAM store_settable[] = {
    OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *store_settable_ctx_params(void *provctx)
{
    (void)provctx;
    return store_settable;
}

static int store_set_ctx_params(void *vs, const OSSL_PARAM params[])
{
    struct prov_store *s = vs;
    const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
    if (p != NULL && !OSSL_PARAM_get_int(p, &s->expect))
        return 0;
    return 1;
}

static enum prov_key_type spec_type(Custos__V1__KeySpec spec)
{
    switch (spec) {
    case CUSTOS__V1__KEY_SPEC__EC_P256:
        return PROV_KEY_EC;
    case CUSTOS__V1__KEY_SPEC__RSA_2048:
    case CUSTOS__V1__KEY_SPEC__RSA_3072:
    case CUSTOS__V1__KEY_SPEC__RSA_4096:
        return PROV_KEY_RSA;
    default:
        return 0;
    }
}

static int store_load(void *vs, OSSL_CALLBACK *object_cb, void *object_cbarg,
                      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    struct prov_store *s = vs;
    Custos__V1__GetPublicKeyRequest req = CUSTOS__V1__GET_PUBLIC_KEY_REQUEST__INIT;
    Custos__V1__GetPublicKeyResponse *resp = NULL;
    struct prov_key *k = NULL;
    int ok = 0;
    (void)pw_cb;
    (void)pw_cbarg;

    s->done = 1;
    /* Only keys here: asked for certificates or CRLs, there is nothing. */
    if (s->expect != 0 && s->expect != OSSL_STORE_INFO_PKEY && s->expect != OSSL_STORE_INFO_PUBKEY)
        return 1;
    req.key_id = s->uri.key_id;
    req.version = s->uri.version;
    if (!prov_client_call(s->ctx, "GetPublicKey", &req.base,
                          &custos__v1__get_public_key_response__descriptor,
                          (ProtobufCMessage **)&resp))
        return 0;
    enum prov_key_type type = spec_type(resp->spec);
    if (type == 0) {
        PROV_RAISE(s->ctx, PROV_R_UNSUPPORTED, "key %s is not a signing key this provider serves",
                   s->uri.key_id);
        goto done;
    }
    /* kmsd must answer for the version asked (0: it names the current). */
    if (resp->version == 0 || (s->uri.version && resp->version != s->uri.version)) {
        PROV_RAISE(s->ctx, PROV_R_BAD_REPLY, "kmsd answered for another version of key %s",
                   s->uri.key_id);
        goto done;
    }
    if ((k = prov_key_new(s->ctx, type)) == NULL)
        goto done;
    if (!prov_key_set_spki(k, resp->public_key.data, resp->public_key.len))
        goto done;
    memcpy(k->key_id, s->uri.key_id, sizeof(k->key_id));
    k->version = resp->version;
    k->is_ref = 1;
    for (size_t i = 0; i < resp->n_signing_algorithms; i++)
        if (resp->signing_algorithms[i] > 0 && resp->signing_algorithms[i] < 32)
            k->algs |= 1u << resp->signing_algorithms[i];

    int object_type = OSSL_OBJECT_PKEY;
    char *data_type = (char *)(type == PROV_KEY_EC ? "EC" : "RSA");
    OSSL_PARAM params[4];
    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &object_type);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, data_type, 0);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &k, sizeof(k));
    params[3] = OSSL_PARAM_construct_end();
    ok = object_cb(params, object_cbarg);
done:
    prov_key_free(k); /* keymgmt load took its own reference */
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ok;
}

static int store_eof(void *vs)
{
    return ((struct prov_store *)vs)->done;
}

static int store_close(void *vs)
{
    free(vs);
    return 1;
}

const OSSL_DISPATCH prov_store_functions[] = {
    {OSSL_FUNC_STORE_OPEN, (void (*)(void))store_open},
    {OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, (void (*)(void))store_settable_ctx_params},
    {OSSL_FUNC_STORE_SET_CTX_PARAMS, (void (*)(void))store_set_ctx_params},
    {OSSL_FUNC_STORE_LOAD, (void (*)(void))store_load},
    {OSSL_FUNC_STORE_EOF, (void (*)(void))store_eof},
    {OSSL_FUNC_STORE_CLOSE, (void (*)(void))store_close},
    {0, NULL},
};
