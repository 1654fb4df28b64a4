/*
 * prov_main.c - entry point of the `custos` OpenSSL 3 provider module
 * (docs/openssl-provider.md): settings, the algorithm tables, errors.
 *
 * Init reads settings (provider parameters from openssl.cnf, else the
 * environment variables kmsctl uses) and makes the client; it never touches
 * the network, so an application that loads the provider but never opens a
 * custos: URI needs neither kmsd nor credentials. The module offers only
 * KEYMGMT, SIGNATURE and STORE: no digests, ciphers or RNG, so it cannot
 * take over operations that have nothing to do with Custos keys.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include "prov.h"
#include "kms_error.h"
#include "prov_client.h"

/* Reason strings: ours, then one per Twirp code (filled at first init). */
#define N_OWN 7
static OSSL_ITEM reason_strings[N_OWN + KMS_TWIRP_CODE_COUNT + 1] = {
    {PROV_R_BAD_URI, (void *)"bad custos URI"},
    {PROV_R_CONFIG, (void *)"custos provider configuration"},
    {PROV_R_TRANSPORT, (void *)"cannot reach kmsd"},
    {PROV_R_BAD_REPLY, (void *)"unexpected reply from kmsd"},
    {PROV_R_UNSUPPORTED, (void *)"not supported by custos keys"},
    {PROV_R_NO_KEY_REFERENCE, (void *)"not a custos key reference"},
    {PROV_R_INTERNAL, (void *)"custos provider internal error"},
};

static void fill_reasons(void)
{
    for (size_t i = 0; i < KMS_TWIRP_CODE_COUNT; i++) {
        reason_strings[N_OWN + i].id = (unsigned int)(PROV_R_TWIRP_FIRST + (int)i);
        reason_strings[N_OWN + i].ptr = (void *)kms_twirp_codes[i];
    }
}

void prov_raise(const struct prov_ctx *ctx, const char *file, int line, const char *func,
                int reason, const char *fmt, ...)
{
    va_list ap;
    if (ctx == NULL || ctx->new_error == NULL || ctx->vset_error == NULL)
        return;
    ctx->new_error(ctx->handle);
    if (ctx->set_error_debug)
        ctx->set_error_debug(ctx->handle, file, line, func);
    va_start(ap, fmt);
    ctx->vset_error(ctx->handle, (uint32_t)reason, fmt, ap);
    va_end(ap);
}

static const OSSL_ALGORITHM keymgmt_algs[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", "provider=custos", prov_ec_keymgmt_functions,
     "Custos EC key reference"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=custos", prov_rsa_keymgmt_functions,
     "Custos RSA key reference"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM signature_algs[] = {
    {"ECDSA", "provider=custos", prov_ecdsa_signature_functions, "ECDSA through kmsd"},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=custos", prov_rsa_signature_functions,
     "RSA PKCS#1 v1.5 and PSS through kmsd"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM store_algs[] = {
    {"custos", "provider=custos", prov_store_functions, "custos:key=<id>[;version=<n>] URIs"},
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *query(void *provctx, int operation_id, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return keymgmt_algs;
    case OSSL_OP_SIGNATURE:
        return signature_algs;
    case OSSL_OP_STORE:
        return store_algs;
    default:
        return NULL;
    }
}

/* TLS groups. libssl uses a group only when the "EC" key manager it fetches
 * comes from the provider that declared the group; with this provider
 * loaded that fetch may return ours (it passes generation and key exchange
 * through to the child context, prov_keymgmt.c), so the NIST curves are
 * declared here too, exactly as the default provider declares them, or
 * loading custos would switch off ECDHE on P-256/384/521. */
#define TLS_GROUP(name, internal, id, bits)                                                    \
    {OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME, (void *)(name), sizeof(name)),   \
     OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME_INTERNAL, (void *)(internal),      \
                            sizeof(internal)),                                               \
     OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_ALG, (void *)"EC", sizeof("EC")),       \
     OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_ID, (unsigned int *)&group_ids[id]),           \
     OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_SECURITY_BITS, (unsigned int *)&group_bits[bits]), \
     OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_TLS, (int *)&tls_min),                     \
     OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_TLS, (int *)&tls_max),                     \
     OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_DTLS, (int *)&dtls_min),                   \
     OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_DTLS, (int *)&dtls_max),                   \
     OSSL_PARAM_END}

static const unsigned int group_ids[] = {23, 24, 25};
static const unsigned int group_bits[] = {128, 192, 256};
static const int tls_min = 0x0301, tls_max = 0, dtls_min = 0xFEFF, dtls_max = 0;
static const OSSL_PARAM tls_groups[][10] = {
    TLS_GROUP("secp256r1", "prime256v1", 0, 0), TLS_GROUP("P-256", "prime256v1", 0, 0),
    TLS_GROUP("secp384r1", "secp384r1", 1, 1),  TLS_GROUP("P-384", "secp384r1", 1, 1),
    TLS_GROUP("secp521r1", "secp521r1", 2, 2),  TLS_GROUP("P-521", "secp521r1", 2, 2),
};

static int get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg)
{
    (void)provctx;
    if (strcmp(capability, "TLS-GROUP") != 0)
        return 0;
    for (size_t i = 0; i < sizeof(tls_groups) / sizeof(tls_groups[0]); i++)
        if (!cb(tls_groups[i], arg))
            return 0;
    return 1;
}

static const OSSL_ITEM *get_reason_strings(void *provctx)
{
    (void)provctx;
    return reason_strings;
}

static const OSSL_PARAM gettable[] = {
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
    OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0),
    OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
    OSSL_PARAM_END,
};

static const OSSL_PARAM *gettable_params(void *provctx)
{
    (void)provctx;
    return gettable;
}

static int get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;
    (void)provctx;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, "Custos KMS provider"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, "1.0"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, "custos"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL &&
        !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

static void teardown(void *provctx)
{
    struct prov_ctx *ctx = provctx;
    if (ctx == NULL)
        return;
    prov_client_free(ctx->client);
    OSSL_LIB_CTX_free(ctx->libctx);
    free(ctx);
}

static const OSSL_DISPATCH provider_functions[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))get_params},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))query},
    {OSSL_FUNC_PROVIDER_GET_REASON_STRINGS, (void (*)(void))get_reason_strings},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))get_capabilities},
    {0, NULL},
};

/* A timeout setting in milliseconds: 1..PROV_TIMEOUT_MS_MAX, else 0 (the
 * default) and *bad set. */
static long parse_ms(const char *s, int *bad)
{
    char *end = NULL;
    if (s == NULL || *s == '\0')
        return 0;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < 1 || v > PROV_TIMEOUT_MS_MAX) {
        *bad = 1;
        return 0;
    }
    return v;
}

static const char *pick(const char *param, const char *env)
{
    if (param && *param)
        return param;
    const char *e = getenv(env);
    return e && *e ? e : NULL;
}

/* Exported: the only symbol of the module (see the linker version script). */
__attribute__((visibility("default"))) int
OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                   const OSSL_DISPATCH **out, void **provctx);

int OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                       const OSSL_DISPATCH **out, void **provctx)
{
    OSSL_FUNC_core_get_params_fn *core_get_params = NULL;
    struct prov_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return 0;
    ctx->handle = handle;
    fill_reasons();
    for (const OSSL_DISPATCH *f = in; f->function_id != 0; f++) {
        switch (f->function_id) {
        case OSSL_FUNC_CORE_GET_PARAMS:
            core_get_params = OSSL_FUNC_core_get_params(f);
            break;
        case OSSL_FUNC_CORE_NEW_ERROR:
            ctx->new_error = OSSL_FUNC_core_new_error(f);
            break;
        case OSSL_FUNC_CORE_SET_ERROR_DEBUG:
            ctx->set_error_debug = OSSL_FUNC_core_set_error_debug(f);
            break;
        case OSSL_FUNC_CORE_VSET_ERROR:
            ctx->vset_error = OSSL_FUNC_core_vset_error(f);
            break;
        default:
            break;
        }
    }

    /* openssl.cnf's provider section wins over the environment. */
    char *addr = NULL, *keyf = NULL, *ca = NULL, *cert = NULL, *ckey = NULL, *cto = NULL,
         *to = NULL;
    OSSL_PARAM cp[] = {
        OSSL_PARAM_utf8_ptr("custos-addr", &addr, 0),
        OSSL_PARAM_utf8_ptr("api-key-file", &keyf, 0),
        OSSL_PARAM_utf8_ptr("cacert", &ca, 0),
        OSSL_PARAM_utf8_ptr("client-cert", &cert, 0),
        OSSL_PARAM_utf8_ptr("client-key", &ckey, 0),
        OSSL_PARAM_utf8_ptr("connect-timeout-ms", &cto, 0),
        OSSL_PARAM_utf8_ptr("timeout-ms", &to, 0),
        OSSL_PARAM_END,
    };
    if (core_get_params != NULL && !core_get_params(handle, cp))
        goto fail;

    int bad = 0;
    struct prov_client_cfg cfg = {
        .addr = pick(addr, "CUSTOS_ADDR"),
        .api_key_file = pick(keyf, "CUSTOS_API_KEY_FILE"),
        .cacert = pick(ca, "CUSTOS_CACERT"),
        .cert = pick(cert, "CUSTOS_CLIENT_CERT"),
        .key = pick(ckey, "CUSTOS_CLIENT_KEY"),
        .connect_timeout_ms = parse_ms(pick(cto, "CUSTOS_CONNECT_TIMEOUT_MS"), &bad),
        .timeout_ms = parse_ms(pick(to, "CUSTOS_TIMEOUT_MS"), &bad),
    };
    if (bad) {
        /* A settings mistake fails loading loudly rather than silently
         * running with a default the operator did not choose. */
        PROV_RAISE(ctx, PROV_R_CONFIG, "timeouts are milliseconds, 1..%ld", PROV_TIMEOUT_MS_MAX);
        goto fail;
    }
    /* The child context mirrors the application's providers (the default
     * provider, normally): public keys, digests and verification use them. */
    if ((ctx->libctx = OSSL_LIB_CTX_new_child(handle, in)) == NULL)
        goto fail;
    if ((ctx->client = prov_client_new(&cfg)) == NULL)
        goto fail;
    *out = provider_functions;
    *provctx = ctx;
    return 1;
fail:
    teardown(ctx);
    return 0;
}
