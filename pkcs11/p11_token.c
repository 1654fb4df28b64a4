/*
 * p11_token.c - resolving configured tokens, reading their capabilities.
 */
#include "p11_token.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/uri.h>

#include "kms_log.h"
#include "p11_internal.h"
#include "p11_rv.h"

const char *p11_token_region(const struct p11_token *tok)
{
    return tok->region;
}

const char *p11_token_label(const struct p11_token *tok)
{
    return tok->label;
}

const char *p11_token_serial(const struct p11_token *tok)
{
    return tok->serial;
}

bool p11_token_available(const struct p11_token *tok)
{
    return !atomic_load(&tok->unavailable);
}

unsigned long p11_token_lookups_missed(const struct p11_token *tok)
{
    return atomic_load(&((struct p11_token *)tok)->lookups_missed);
}

/* ---- capabilities ---------------------------------------------------- */

struct cap_row {
    CK_MECHANISM_TYPE mech;
    CK_FLAGS need;
    unsigned long min_size, max_size; /* in the token's unit for that mech */
    bool size_in_bits;                /* else bytes */
    const char *name;
};

/* Key-size units differ by mechanism (PKCS#11 2.40 section 2): AES and
 * generic secrets in bytes, RSA and EC in bits. */
static const struct cap_row cap_rows[P11_CAP_COUNT] = {
    [P11_CAP_GEN_AES_256] = {CKM_AES_KEY_GEN, CKF_GENERATE, 32, 32, false,
                             "CKM_AES_KEY_GEN (256-bit)"},
    [P11_CAP_GEN_SECRET_256] = {CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, 32, 32, false,
                                "CKM_GENERIC_SECRET_KEY_GEN (256-bit)"},
    [P11_CAP_GEN_EC_P256] = {CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 256, 256, true,
                             "CKM_EC_KEY_PAIR_GEN (P-256)"},
    [P11_CAP_GEN_RSA_3072] = {CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 3072, 3072, true,
                              "CKM_RSA_PKCS_KEY_PAIR_GEN (3072-bit)"},
    [P11_CAP_AES_GCM] = {CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 0, 0, false,
                         "CKM_AES_GCM encrypt/decrypt"},
    [P11_CAP_AES_KWP] = {CKM_AES_KEY_WRAP_PAD, CKF_WRAP | CKF_UNWRAP, 0, 0, false,
                         "CKM_AES_KEY_WRAP_PAD wrap/unwrap"},
    [P11_CAP_RSA_OAEP_UNWRAP] = {CKM_RSA_PKCS_OAEP, CKF_UNWRAP, 0, 0, false,
                                 "CKM_RSA_PKCS_OAEP unwrap"},
    [P11_CAP_RSA_AES_KEY_WRAP] = {CKM_RSA_AES_KEY_WRAP, CKF_UNWRAP, 0, 0, false,
                                  "CKM_RSA_AES_KEY_WRAP unwrap"},
    [P11_CAP_HMAC_SHA256] = {CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, 0, 0, false,
                             "CKM_SHA256_HMAC sign/verify"},
    [P11_CAP_ECDSA] = {CKM_ECDSA, CKF_SIGN, 0, 0, false, "CKM_ECDSA sign"},
};

const char *p11_cap_name(enum p11_cap cap)
{
    return (unsigned)cap < P11_CAP_COUNT ? cap_rows[cap].name : "unknown capability";
}

bool p11_token_has(const struct p11_token *tok, enum p11_cap cap)
{
    if ((unsigned)cap >= P11_CAP_COUNT)
        return false;
    const struct cap_row *r = &cap_rows[cap];
    for (size_t i = 0; i < tok->n_mechs; i++) {
        if (tok->mechs[i] != r->mech)
            continue;
        const CK_MECHANISM_INFO *mi = &tok->mech_info[i];
        if ((mi->flags & r->need) != r->need)
            return false;
        if (r->min_size && (mi->ulMinKeySize > r->min_size || mi->ulMaxKeySize < r->max_size))
            return false;
        return true;
    }
    return false;
}

static kms_err read_mechanisms(struct p11_token *tok)
{
    CK_ULONG n = 0;
    CK_RV rv = tok->fl->C_GetMechanismList(tok->slot, NULL, &n);
    KMS_GUARD(p11_rv_err(rv, "C_GetMechanismList", tok->label));
    tok->mechs = calloc(n ? n : 1, sizeof(*tok->mechs));
    tok->mech_info = calloc(n ? n : 1, sizeof(*tok->mech_info));
    KMS_ENSURE(tok->mechs && tok->mech_info, KMS_ERR_NOMEM, "out of memory");
    rv = tok->fl->C_GetMechanismList(tok->slot, tok->mechs, &n);
    KMS_GUARD(p11_rv_err(rv, "C_GetMechanismList", tok->label));
    for (CK_ULONG i = 0; i < n; i++) {
        rv = tok->fl->C_GetMechanismInfo(tok->slot, tok->mechs[i], &tok->mech_info[i]);
        if (rv != CKR_OK)
            memset(&tok->mech_info[i], 0, sizeof(tok->mech_info[i]));
    }
    tok->n_mechs = n;
    return KMS_OK;
}

/* ---- opening ----------------------------------------------------------- */

static bool region_ok(const char *r)
{
    size_t n = r ? strlen(r) : 0;
    if (n == 0 || n > P11_REGION_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)r[i]) || isdigit((unsigned char)r[i]) || r[i] == '-'))
            return false;
    return true;
}

/* Does the token in `ti` match selector (a label, or an RFC 7512 URI)? */
static kms_err selector_matches(const char *selector, const CK_TOKEN_INFO *ti, bool *out)
{
    if (strncmp(selector, "pkcs11:", 7) != 0) {
        char label[33];
        p11_str_from_field(label, sizeof(label), ti->label, sizeof(ti->label));
        *out = strcmp(label, selector) == 0;
        return KMS_OK;
    }
    P11KitUri *uri = p11_kit_uri_new();
    KMS_ENSURE(uri != NULL, KMS_ERR_NOMEM, "out of memory");
    int prc = p11_kit_uri_parse(selector, P11_KIT_URI_FOR_TOKEN, uri);
    if (prc != P11_KIT_URI_OK) {
        p11_kit_uri_free(uri);
        return kms_err_set(KMS_ERR_CONFIG, "token URI '%s': %s", selector,
                           p11_kit_uri_message(prc));
    }
    *out = p11_kit_uri_match_token_info(uri, (CK_TOKEN_INFO *)ti) == 1;
    p11_kit_uri_free(uri);
    return KMS_OK;
}

/* Resolve one selector to exactly one initialised token. */
static kms_err resolve_slot(struct p11_module *mod, const char *selector, CK_SLOT_ID *out_slot,
                            CK_TOKEN_INFO *out_ti)
{
    CK_FUNCTION_LIST_PTR fl = p11_module_fl(mod);
    CK_ULONG n = 0;
    kms_err rc = KMS_OK;
    CK_SLOT_ID *slots = NULL;
    size_t matches = 0;

    CK_RV rv = fl->C_GetSlotList(CK_TRUE, NULL, &n);
    KMS_GUARD(p11_rv_err(rv, "C_GetSlotList", p11_module_path(mod)));
    slots = calloc(n ? n : 1, sizeof(*slots));
    KMS_ENSURE(slots != NULL, KMS_ERR_NOMEM, "out of memory");
    rv = fl->C_GetSlotList(CK_TRUE, slots, &n);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_GetSlotList", p11_module_path(mod)), done);

    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        bool m = false;
        KMS_GUARD_GOTO(selector_matches(selector, &ti, &m), done);
        if (m) {
            if (matches++ == 0) {
                *out_slot = slots[i];
                *out_ti = ti;
            }
        }
    }
    KMS_ENSURE_GOTO(matches > 0, done, KMS_ERR_CONFIG, "no token matches '%s' in %s", selector,
                    p11_module_path(mod));
    KMS_ENSURE_GOTO(matches == 1, done, KMS_ERR_CONFIG,
                    "'%s' is ambiguous: it matches %zu tokens (name one by URI with serial=)",
                    selector, matches);
done:
    free(slots);
    return rc;
}

static size_t default_sessions(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        cores = 1;
    return (size_t)cores * 2 + 2;
}

static kms_err token_open(struct p11_module *mod, const struct p11_token_config *cfg,
                          struct p11_token **out)
{
    kms_err rc = KMS_OK;
    KMS_ENSURE(region_ok(cfg->region), KMS_ERR_CONFIG,
               "token region must be 1..%d characters of [a-z0-9-]", P11_REGION_MAX);
    KMS_ENSURE(cfg->selector && *cfg->selector, KMS_ERR_CONFIG,
               "token for region %s: no label or URI", cfg->region);

    struct p11_token *tok = calloc(1, sizeof(*tok));
    KMS_ENSURE(tok != NULL, KMS_ERR_NOMEM, "out of memory");
    tok->mod = mod;
    tok->fl = p11_module_fl(mod);
    tok->oaep_sha256 = -1;
    tok->metrics_id = -1;
    pthread_mutex_init(&tok->lock, NULL);
    pthread_mutex_init(&tok->create_lock, NULL);
    pthread_cond_init(&tok->cond, NULL);
    snprintf(tok->region, sizeof(tok->region), "%s", cfg->region);
    KMS_GUARD_GOTO(p11_cache_init(&tok->cache), fail);
    tok->pin_source = strdup(cfg->pin_source ? cfg->pin_source : "");
    KMS_ENSURE_GOTO(tok->pin_source != NULL, fail, KMS_ERR_NOMEM, "out of memory");

    CK_TOKEN_INFO ti;
    KMS_GUARD_GOTO(resolve_slot(mod, cfg->selector, &tok->slot, &ti), fail);
    p11_str_from_field(tok->label, sizeof(tok->label), ti.label, sizeof(ti.label));
    tok->metrics_id = kms_metrics_token(tok->region, tok->label);
    p11_str_from_field(tok->serial, sizeof(tok->serial), ti.serialNumber,
                       sizeof(ti.serialNumber));
    p11_str_from_field(tok->manufacturer, sizeof(tok->manufacturer), ti.manufacturerID,
                       sizeof(ti.manufacturerID));

    tok->cap = cfg->max_sessions ? cfg->max_sessions : default_sessions();
    /* 0 means "effectively infinite" and ~0 "unknown" in PKCS#11. */
    CK_ULONG limits[2] = {ti.ulMaxSessionCount, ti.ulMaxRwSessionCount};
    for (int i = 0; i < 2; i++)
        if (limits[i] != CK_EFFECTIVELY_INFINITE && limits[i] != CK_UNAVAILABLE_INFORMATION &&
            limits[i] < tok->cap)
            tok->cap = limits[i];
    KMS_ENSURE_GOTO(tok->cap > 0, fail, KMS_ERR_CONFIG, "token '%s' allows no sessions",
                    tok->label);
    tok->idle = calloc(tok->cap, sizeof(*tok->idle));
    KMS_ENSURE_GOTO(tok->idle != NULL, fail, KMS_ERR_NOMEM, "out of memory");

    KMS_GUARD_GOTO(read_mechanisms(tok), fail);

    /* Log in now, so that a wrong PIN or a missing PIN file stops the start
     * instead of the first request. */
    CK_SESSION_HANDLE s;
    KMS_GUARD_GOTO(p11_session_take(tok, &s), fail);
    p11_session_give(tok, s, false);

    kms_log_info("pkcs11", "token '%s' (serial %s, %s) serves region %s with up to %zu sessions",
                 tok->label, tok->serial, tok->manufacturer, tok->region, tok->cap);
    p11_module_add_token(mod, tok);
    *out = tok;
    return KMS_OK;
fail:
    p11_token_free(tok);
    return rc;
}

kms_err p11_tokens_open(struct p11_module *mod, const struct p11_token_config *cfg, size_t n,
                        struct p11_token **out_tokens)
{
    kms_err rc = KMS_OK;
    size_t opened = 0;
    for (size_t i = 0; i < n; i++)
        out_tokens[i] = NULL;
    for (; opened < n; opened++) {
        KMS_GUARD_GOTO(token_open(mod, &cfg[opened], &out_tokens[opened]), fail);
        for (size_t j = 0; j < opened; j++) {
            /* Two selectors naming one token would put two regions in one
             * HSM partition: refuse. */
            KMS_ENSURE_GOTO(out_tokens[j]->slot != out_tokens[opened]->slot, fail, KMS_ERR_CONFIG,
                            "token '%s' is configured twice (regions %s and %s)",
                            out_tokens[opened]->label, out_tokens[j]->region,
                            out_tokens[opened]->region);
        }
    }
    return KMS_OK;
fail:
    for (size_t i = 0; i <= opened && i < n; i++) {
        p11_token_free(out_tokens[i]);
        out_tokens[i] = NULL;
    }
    return rc;
}

void p11_token_free(struct p11_token *tok)
{
    if (tok == NULL)
        return;
    p11_module_remove_token(tok->mod, tok);
    if (tok->idle)
        p11_session_pool_drain(tok);
    p11_cache_cleanup(&tok->cache);
    pthread_mutex_destroy(&tok->lock);
    pthread_mutex_destroy(&tok->create_lock);
    pthread_cond_destroy(&tok->cond);
    free(tok->idle);
    free(tok->mechs);
    free(tok->mech_info);
    free(tok->pin_source);
    free(tok);
}

/* One C_GetTokenInfo: does the slot still hold our token? *out_asked is
 * false when the pool was frozen by a recovery and nothing was asked. */
static kms_err probe_once(struct p11_token *tok, bool *out_asked)
{
    *out_asked = p11_probe_begin(tok);
    if (!*out_asked)
        return kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s': its module is being "
                           "re-initialised", tok->label);
    CK_TOKEN_INFO ti;
    CK_RV rv = tok->fl->C_GetTokenInfo(tok->slot, &ti);
    p11_probe_end(tok);
    if (rv != CKR_OK) {
        kms_err rc = p11_rv_err(rv, "C_GetTokenInfo", tok->label);
        if (rc != KMS_ERR_HSM_UNAVAILABLE)
            rc = kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s' does not answer: %s",
                             tok->label, p11_rv_name(rv));
        return rc;
    }
    char serial[17];
    p11_str_from_field(serial, sizeof(serial), ti.serialNumber, sizeof(ti.serialNumber));
    KMS_ENSURE(strcmp(serial, tok->serial) == 0, KMS_ERR_HSM_UNAVAILABLE,
               "slot of token '%s' now holds another token (serial %s)", tok->label, serial);
    return KMS_OK;
}

static long long mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec;
}

void p11_token_mark_unavailable(struct p11_token *tok)
{
    if (!atomic_exchange(&tok->unavailable, true)) {
        atomic_store(&tok->unavailable_since, mono_s());
        kms_log_error("pkcs11", "token '%s' (region %s) is unavailable: %s", tok->label,
                      tok->region, kms_err_detail());
    }
}

static void mark_available(struct p11_token *tok)
{
    if (atomic_exchange(&tok->unavailable, false))
        kms_log_info("pkcs11", "token '%s' (region %s) is available again", tok->label,
                     tok->region);
}

kms_err p11_token_probe(struct p11_token *tok)
{
    bool asked;
    kms_err rc = probe_once(tok, &asked);
    if (rc != KMS_OK && asked) {
        p11_token_mark_unavailable(tok);
        /* Some modules never see a token again once it failed (SoftHSMv2:
         * CKR_GENERAL_ERROR for good after its directory went away and came
         * back); re-initialising the module is the remedy, spaced out, and
         * only once the module had P11_REINIT_MIN_S to see it by itself. */
        char why[400];
        snprintf(why, sizeof(why), "%s", kms_err_detail());
        if (mono_s() - atomic_load(&tok->unavailable_since) >= P11_REINIT_MIN_S &&
            p11_module_recover(tok->mod, tok))
            rc = probe_once(tok, &asked);
        if (rc != KMS_OK)
            kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "%s", why);
    }
    if (rc != KMS_OK) {
        p11_token_mark_unavailable(tok);
        return rc;
    }
    mark_available(tok);
    return KMS_OK;
}

void p11_token_reresolve(struct p11_token *tok)
{
    CK_ULONG n = 0;
    CK_SLOT_ID *slots = NULL;
    bool found = false;
    if (tok->fl->C_GetSlotList(CK_TRUE, NULL, &n) == CKR_OK && n > 0 &&
        (slots = calloc(n, sizeof(*slots))) != NULL &&
        tok->fl->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK) {
        for (CK_ULONG i = 0; i < n && !found; i++) {
            CK_TOKEN_INFO ti;
            if (tok->fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                continue;
            char serial[17], label[33];
            p11_str_from_field(serial, sizeof(serial), ti.serialNumber, sizeof(ti.serialNumber));
            p11_str_from_field(label, sizeof(label), ti.label, sizeof(ti.label));
            if (strcmp(serial, tok->serial) == 0 && strcmp(label, tok->label) == 0) {
                tok->slot = slots[i]; /* modules may renumber slots */
                found = true;
            }
        }
    }
    free(slots);
    if (found) {
        mark_available(tok);
    } else {
        kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s' (serial %s) is not in any slot",
                    tok->label, tok->serial);
        p11_token_mark_unavailable(tok);
    }
}
