/*
 * p11_token.c - one configured token: resolving its selector, reading its
 * capabilities, logging in, owning its session pool (p11_pool.c, to which
 * it hands the operations that open, close and check its sessions),
 * noticing when it goes away and comes back, and the readiness check.
 *
 * PKCS#11 login state belongs to the application, not to a session: one
 * C_Login serves every session of the token, and closing the last session
 * logs the application out. So each newly opened session is asked for its
 * state and logged in only when it is public. The PIN is read from its source
 * for each login and wiped at once; it is never kept in memory.
 */
#include "p11_token.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/uri.h>

#include "kms_log.h"
#include "kms_secret.h"
#include "p11_internal.h"

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
    /* The mechanism is the token's (tok->kwp_mech, p11_probe_kwp). */
    [P11_CAP_AES_KWP] = {CKM_AES_KEY_WRAP_KWP, CKF_WRAP | CKF_UNWRAP, 0, 0, false,
                         "RFC 5649 wrap/unwrap"},
    [P11_CAP_RSA_OAEP_UNWRAP] = {CKM_RSA_PKCS_OAEP, CKF_UNWRAP, 0, 0, false,
                                 "CKM_RSA_PKCS_OAEP unwrap"},
    [P11_CAP_RSA_AES_KEY_WRAP] = {CKM_RSA_AES_KEY_WRAP, CKF_UNWRAP, 0, 0, false,
                                  "CKM_RSA_AES_KEY_WRAP unwrap"},
    [P11_CAP_HMAC_SHA256] = {CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, 0, 0, false,
                             "CKM_SHA256_HMAC sign/verify"},
    [P11_CAP_ECDSA] = {CKM_ECDSA, CKF_SIGN, 0, 0, false, "CKM_ECDSA sign"},
    [P11_CAP_RSA_PSS] = {CKM_RSA_PKCS_PSS, CKF_SIGN | CKF_VERIFY, 0, 0, false,
                         "CKM_RSA_PKCS_PSS sign/verify"},
};

const char *p11_cap_name(enum p11_cap cap)
{
    return (unsigned)cap < P11_CAP_COUNT ? cap_rows[cap].name : "unknown capability";
}

bool p11_token_has(const struct p11_token *tok, enum p11_cap cap)
{
    if ((unsigned)cap >= P11_CAP_COUNT)
        return false;
    if (cap == P11_CAP_AES_KWP)
        return tok->kwp_mech != (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION;
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
    KMS_GUARD(P11_CALL(tok, C_GetMechanismList, P11_NO_MECH, tok->slot, NULL, &n));
    tok->mechs = calloc(n ? n : 1, sizeof(*tok->mechs));
    tok->mech_info = calloc(n ? n : 1, sizeof(*tok->mech_info));
    KMS_ENSURE(tok->mechs && tok->mech_info, KMS_ERR_NOMEM, "out of memory");
    KMS_GUARD(P11_CALL(tok, C_GetMechanismList, P11_NO_MECH, tok->slot, tok->mechs, &n));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV rv = P11_RV(tok, C_GetMechanismInfo, P11_NO_MECH, tok->slot, tok->mechs[i],
                          &tok->mech_info[i]);
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
    CK_ULONG n = 0;
    kms_err rc = KMS_OK;
    CK_SLOT_ID *slots = NULL;
    size_t matches = 0;

    CK_RV rv = P11_MOD_RV(mod, C_GetSlotList, CK_TRUE, NULL, &n);
    KMS_GUARD(p11_rv_err(rv, "C_GetSlotList", p11_module_path(mod)));
    slots = calloc(n ? n : 1, sizeof(*slots));
    KMS_ENSURE(slots != NULL, KMS_ERR_NOMEM, "out of memory");
    rv = P11_MOD_RV(mod, C_GetSlotList, CK_TRUE, slots, &n);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_GetSlotList", p11_module_path(mod)), done);

    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (P11_MOD_RV(mod, C_GetTokenInfo, slots[i], &ti) != CKR_OK ||
            !(ti.flags & CKF_TOKEN_INITIALIZED))
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

/* ---- the token's sessions: what its pool calls --------------------------- */

static bool logged_in(const CK_SESSION_INFO *si)
{
    return si->state == CKS_RW_USER_FUNCTIONS || si->state == CKS_RO_USER_FUNCTIONS;
}

static kms_err login_if_needed(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    CK_SESSION_INFO si;
    KMS_GUARD(P11_CALL(tok, C_GetSessionInfo, P11_NO_MECH, s, &si));
    if (logged_in(&si))
        return KMS_OK;

    /* A wrong PIN is never retried on its own: tokens lock after a few tries,
     * and a locked production HSM is an outage. An operator fixes the PIN
     * and reloads. */
    KMS_ENSURE(!atomic_load(&tok->pin_failed), KMS_ERR_HSM_PIN,
               "token '%s': login disabled after a PIN error; fix the PIN source and restart",
               tok->label);

    struct kms_secret pin = {0};
    KMS_GUARD(kms_secret_read_source(tok->pin_source, &pin));
    CK_RV rv = P11_RV(tok, C_Login, P11_NO_MECH, s, CKU_USER, pin.data, pin.len);
    kms_secret_wipe(&pin);
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        return KMS_OK;
    kms_err rc = p11_rv_err(rv, "C_Login", tok->label);
    if (rc == KMS_ERR_HSM_PIN)
        atomic_store(&tok->pin_failed, true);
    return rc;
}

static kms_err session_open(void *ctx, CK_SESSION_HANDLE *out)
{
    struct p11_token *tok = ctx;
    KMS_GUARD(P11_CALL(tok, C_OpenSession, P11_NO_MECH, tok->slot,
                       CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, out));
    kms_err rc = login_if_needed(tok, *out);
    if (rc != KMS_OK)
        P11_RV(tok, C_CloseSession, P11_NO_MECH, *out);
    return rc;
}

static void session_close(void *ctx, CK_SESSION_HANDLE s)
{
    struct p11_token *tok = ctx;
    /* Ignore the result: the session may already be gone. */
    P11_RV(tok, C_CloseSession, P11_NO_MECH, s);
}

static bool session_alive(void *ctx, CK_SESSION_HANDLE s, bool *out_exists)
{
    struct p11_token *tok = ctx;
    CK_SESSION_INFO si;
    CK_RV rv = P11_RV(tok, C_GetSessionInfo, P11_NO_MECH, s, &si);
    *out_exists = rv == CKR_OK;
    return rv == CKR_OK && logged_in(&si);
}

static const struct p11_pool_ops session_ops = {session_open, session_close, session_alive};

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
    tok->kwp_mech = (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION;
    atomic_init(&tok->copyable, -1);
    atomic_init(&tok->ids_shared, -1);
    for (size_t i = 0; i < sizeof(tok->asym_restore) / sizeof(tok->asym_restore[0]); i++)
        atomic_init(&tok->asym_restore[i], -1);
    tok->metrics_id = -1;
    pthread_mutex_init(&tok->create_lock, NULL);
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

    size_t cap = cfg->max_sessions ? cfg->max_sessions : default_sessions();
    /* 0 means "effectively infinite" and ~0 "unknown" in PKCS#11. */
    CK_ULONG limits[2] = {ti.ulMaxSessionCount, ti.ulMaxRwSessionCount};
    for (int i = 0; i < 2; i++)
        if (limits[i] != CK_EFFECTIVELY_INFINITE && limits[i] != CK_UNAVAILABLE_INFORMATION &&
            limits[i] < cap)
            cap = limits[i];
    KMS_ENSURE_GOTO(cap > 0, fail, KMS_ERR_CONFIG, "token '%s' allows no sessions", tok->label);
    KMS_GUARD_GOTO(p11_pool_new(cap, &session_ops, tok, tok->label, &tok->pool), fail);

    KMS_GUARD_GOTO(read_mechanisms(tok), fail);

    /* Log in now, so that a wrong PIN or a missing PIN file stops the start
     * instead of the first request. */
    CK_SESSION_HANDLE s;
    KMS_GUARD_GOTO(p11_pool_take(tok->pool, &s), fail);
    p11_probe_integrity(tok, s);
    p11_probe_kwp(tok, s);
    p11_pool_give(tok->pool, s, false);

    kms_log_info("pkcs11", "token '%s' (serial %s, %s) serves region %s with up to %zu sessions",
                 tok->label, tok->serial, tok->manufacturer, tok->region, cap);
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
    p11_pool_free(tok->pool); /* closes the idle sessions, which logs out */
    p11_cache_cleanup(&tok->cache);
    pthread_mutex_destroy(&tok->create_lock);
    free(tok->mechs);
    free(tok->mech_info);
    free(tok->pin_source);
    free(tok);
}

/* One C_GetTokenInfo: does the slot still hold our token? *out_asked is
 * false when the pool was frozen by a recovery and nothing was asked. */
static kms_err probe_once(struct p11_token *tok, bool *out_asked)
{
    *out_asked = p11_pool_probe_begin(tok->pool);
    if (!*out_asked)
        return kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s': its module is being "
                           "re-initialised", tok->label);
    CK_TOKEN_INFO ti;
    CK_RV rv = P11_RV(tok, C_GetTokenInfo, P11_NO_MECH, tok->slot, &ti);
    p11_pool_probe_end(tok->pool);
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
    if (P11_RV(tok, C_GetSlotList, P11_NO_MECH, CK_TRUE, NULL, &n) == CKR_OK && n > 0 &&
        (slots = calloc(n, sizeof(*slots))) != NULL &&
        P11_RV(tok, C_GetSlotList, P11_NO_MECH, CK_TRUE, slots, &n) == CKR_OK) {
        for (CK_ULONG i = 0; i < n && !found; i++) {
            CK_TOKEN_INFO ti;
            if (P11_RV(tok, C_GetTokenInfo, P11_NO_MECH, slots[i], &ti) != CKR_OK)
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

void p11_token_forget_sessions(struct p11_token *tok)
{
    p11_pool_forget(tok->pool);
    p11_cache_clear(&tok->cache);
}

/* ---- health and statistics --------------------------------------------- */

void p11_token_pool_stats(struct p11_token *tok, struct p11_pool_stats *out)
{
    struct p11_pool_counts c;
    p11_pool_counts(tok->pool, &c);
    out->cap = c.cap;
    out->open = c.open;
    out->idle = c.idle;
    out->replaced = c.replaced;
}

kms_err p11_token_check(struct p11_token *tok)
{
    KMS_GUARD(p11_token_probe(tok));
    /* An idle session is checked; when every session is busy the token is
     * evidently in use, and waiting for one would make a saturated node
     * report itself unready (and flap behind a load balancer). With no
     * session open at all, one is opened and logged in, as a request would. */
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    bool busy = false;
    kms_err rc = p11_pool_take_idle(tok->pool, &s, &busy);
    if (rc == KMS_ERR_NOT_FOUND) {
        if (busy)
            return KMS_OK;
        rc = p11_pool_take(tok->pool, &s);
    }
    KMS_GUARD(rc);
    CK_SESSION_INFO si;
    rc = P11_CALL(tok, C_GetSessionInfo, P11_NO_MECH, s, &si);
    if (rc == KMS_OK && !logged_in(&si))
        rc = kms_err_set(KMS_ERR_HSM_SESSION, "token '%s': session is not logged in", tok->label);
    /* A broken session: its handles may be stale too (p11_session_give). */
    if (rc != KMS_OK)
        p11_cache_clear(&tok->cache);
    p11_pool_give(tok->pool, s, rc != KMS_OK);
    if (rc == KMS_ERR_HSM_UNAVAILABLE)
        p11_token_mark_unavailable(tok);
    return rc;
}

/* One pass over the token that fills the handle cache with every key
 * object, so that even the first request for a key finds its handle without
 * C_FindObjects (whose cost grows with the number of objects in the token). */
static kms_err warm_one(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, void *varg)
{
    size_t *count = varg;
    uint8_t id[P11_KEY_ID_LEN];
    CK_OBJECT_CLASS cls = 0;
    CK_KEY_TYPE type = 0;
    CK_ATTRIBUTE at[3] = {{CKA_ID, id, sizeof(id)},
                          {CKA_CLASS, &cls, sizeof(cls)},
                          {CKA_KEY_TYPE, &type, sizeof(type)}};
    if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, at, 3) != CKR_OK ||
        at[0].ulValueLen != P11_KEY_ID_LEN)
        return KMS_OK; /* not a key object of ours */
    if (cls != CKO_SECRET_KEY)
        type = P11_TYPE_ANY;
    p11_cache_put(&tok->cache, id, cls, type, h);
    (*count)++;
    return KMS_OK;
}

static kms_err do_warm(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    return p11_for_each_object(tok, s, warm_one, varg);
}

kms_err p11_token_warm_cache(struct p11_token *tok, size_t *out_count)
{
    size_t n = 0;
    kms_err rc = p11_with_session(tok, do_warm, &n);
    if (out_count)
        *out_count = n;
    return rc;
}

/* ---- random ---------------------------------------------------------------- */

struct random_arg {
    uint8_t *buf;
    size_t len;
};

static kms_err do_random(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct random_arg *a = varg;
    return P11_CALL(tok, C_GenerateRandom, P11_NO_MECH, s, a->buf, a->len);
}

kms_err p11_random(struct p11_token *tok, uint8_t *buf, size_t len)
{
    struct random_arg a = {buf, len};
    return p11_with_session(tok, do_random, &a);
}
