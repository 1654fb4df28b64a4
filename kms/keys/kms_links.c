/*
 * kms_links.c - LinkService: MintLinkToken, RedeemLinkToken,
 * RevokeLinkTokens, the link clock and the sweep (kms_links.h).
 */
#include "kms_links.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "kms_canon.h"
#include "kms_config.h"
#include "kms_keyuse.h"
#include "kms_linktoken.h"
#include "kms_pbuf.h"
#include "kms_store_links.h"
#include "p11_crypto.h"
#include "proto/links.pb-c.h"

/* ---- the clock ------------------------------------------------------------------- */

int64_t kms_links_now(struct kms_service *svc)
{
    int64_t now = (int64_t)time(NULL);
    const struct kms_config *cfg = kms_service_config(svc);
    /* Dev mode only (the configuration refuses it otherwise): tests move
     * the link clock by writing a number of seconds into this file. */
    if (cfg == NULL || cfg->link_test_clock_file == NULL)
        return now;
    FILE *f = fopen(cfg->link_test_clock_file, "r");
    long long off = 0;
    if (f != NULL) {
        if (fscanf(f, "%lld", &off) != 1 || off < -86400LL * 365 || off > 86400LL * 365)
            off = 0;
        fclose(f);
    }
    return now + (int64_t)off;
}

/* ---- shared checks --------------------------------------------------------------- */

/* A link-token key visible to the caller, allowed for op, enabled, and the
 * token that holds it on this node. */
static kms_err link_key(struct kms_call *call, enum pol_op op, const char *key_id,
                        struct kms_key_record *k, struct p11_token **out_tok)
{
    KMS_GUARD(kms_rpc_authorize_key(call, op, key_id, k));
    KMS_ENSURE(k->usage == KMS_KEY_USAGE_LINK_TOKEN && k->spec == KMS_KEY_SPEC_HMAC_256,
               KMS_ERR_INVALID_ARGUMENT, "key %s is not a LINK_TOKEN_HMAC key", k->key_id);
    KMS_ENSURE(k->state == KMS_KEY_ENABLED, KMS_ERR_FAILED_PRECONDITION, "key is %s",
               kms_key_state_name(k->state));
    return kms_keyuse_token(call, k, out_tok);
}

static bool charset_ok(const char *s, size_t min, size_t max, const char *extra, bool upper)
{
    size_t n = strnlen(s, max + 1);
    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (upper && c >= 'A' && c <= 'Z') || strchr(extra, c) != NULL;
        if (!ok || c == '\0')
            return false;
    }
    return true;
}

/* The broker's view of a binding: canonical phone, device hash, purpose. */
struct binding {
    char phone[KMS_CANON_E164_DIGITS_MAX + 2];
    uint8_t device_sha256[32];
};

static kms_err binding_from(const char *phone, const ProtobufCBinaryData *device,
                            const char *purpose, struct binding *out)
{
    memset(out, 0, sizeof(*out));
    size_t plen = strnlen(phone, KMS_LINKS_PHONE_INPUT_MAX + 1);
    KMS_ENSURE(plen >= 1 && plen <= KMS_LINKS_PHONE_INPUT_MAX, KMS_ERR_INVALID_ARGUMENT,
               "phone: 1..%d bytes required", KMS_LINKS_PHONE_INPUT_MAX);
    uint8_t canon[KMS_LINKS_PHONE_INPUT_MAX];
    size_t clen = 0;
    kms_err rc =
        kms_canon_apply(KMS_CANON_E164, (const uint8_t *)phone, plen, canon, sizeof(canon), &clen);
    if (rc == KMS_OK && clen >= sizeof(out->phone))
        rc = KMS_ERR_INVALID_ARGUMENT;
    if (rc == KMS_OK) {
        memcpy(out->phone, canon, clen);
        out->phone[clen] = '\0';
    }
    OPENSSL_cleanse(canon, sizeof(canon));
    /* The canonicaliser's own detail names the rule, never the value. */
    if (rc != KMS_OK)
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                           "phone: not an E.164 number (a '+', the country code, 7..15 digits)");
    KMS_ENSURE(device->len >= 1 && device->len <= KMS_LINKS_DEVICE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "device_value: 1..%d bytes required", KMS_LINKS_DEVICE_MAX);
    SHA256(device->data, device->len, out->device_sha256);
    KMS_ENSURE(charset_ok(purpose, 1, KMS_LINK_PURPOSE_MAX, "._:-", false),
               KMS_ERR_INVALID_ARGUMENT, "purpose: 1..%d bytes of [a-z0-9._:-]",
               KMS_LINK_PURPOSE_MAX);
    return KMS_OK;
}

/* The recipient's blind index and the token's MAC, both HMAC-SHA256 in
 * the HSM under one version's key, truncated. */
static kms_err hsm_tags(struct p11_token *tok, const struct p11_key_id *hk,
                        const struct kms_linkmac *m, uint8_t recipient[KMS_LINK_RECIPIENT_LEN],
                        uint8_t mac[KMS_LINKTOKEN_MAC_LEN])
{
    uint8_t in[KMS_LINKTOKEN_MAC_INPUT_MAX], out[32];
    size_t n = 0;
    kms_err rc = kms_linktoken_recipient_input(m->phone, in, sizeof(in), &n);
    if (rc == KMS_OK)
        rc = p11_hmac_sha256(tok, hk, in, n, out);
    if (rc == KMS_OK)
        memcpy(recipient, out, KMS_LINK_RECIPIENT_LEN);
    if (rc == KMS_OK)
        rc = kms_linktoken_mac_input(m, in, sizeof(in), &n);
    if (rc == KMS_OK)
        rc = p11_hmac_sha256(tok, hk, in, n, out);
    if (rc == KMS_OK)
        memcpy(mac, out, KMS_LINKTOKEN_MAC_LEN);
    /* The input holds the phone number. */
    OPENSSL_cleanse(in, sizeof(in));
    OPENSSL_cleanse(out, sizeof(out));
    return rc;
}

static void note(struct kms_call *call, const char *fmt, const char *a, const char *b)
{
    snprintf(call->audit.detail, sizeof(call->audit.detail), fmt, a, b);
}

/* ---- MintLinkToken --------------------------------------------------------------- */

/* The life a token may have: the service's bounds, narrowed by the
 * tenant's own (policy link_tokens). */
static kms_err ttl_bounds(struct kms_call *call, const struct kms_config *cfg, uint32_t *out_lo,
                          uint32_t *out_hi)
{
    uint32_t lo = cfg->link_min_ttl_s, hi = cfg->link_max_ttl_s;
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    if (t != NULL && pol_tenant_link_min_ttl_s(t) > lo)
        lo = pol_tenant_link_min_ttl_s(t);
    if (t != NULL && pol_tenant_link_max_ttl_s(t) != 0 && pol_tenant_link_max_ttl_s(t) < hi)
        hi = pol_tenant_link_max_ttl_s(t);
    KMS_ENSURE(lo <= hi, KMS_ERR_FAILED_PRECONDITION,
               "the tenant's link_tokens bounds (policy) lie outside this service's "
               "%u..%u seconds",
               cfg->link_min_ttl_s, cfg->link_max_ttl_s);
    *out_lo = lo;
    *out_hi = hi;
    return KMS_OK;
}

kms_err kms_rpc_mint_link_token(struct kms_call *call, const ProtobufCMessage *msg,
                                struct kms_reply *reply)
{
    const Custos__V1__MintLinkTokenRequest *req = (const void *)msg;
    const struct kms_config *cfg = kms_service_config(call->svc);
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    struct binding bd;
    struct kms_link_record row;
    memset(&row, 0, sizeof(row));
    kms_err rc = KMS_OK;

    KMS_GUARD_GOTO(link_key(call, POL_OP_MINT_LINK_TOKEN, req->key_id, &k, &tok), done);
    KMS_GUARD_GOTO(binding_from(req->phone, &req->device_value, req->purpose, &bd), done);
    KMS_ENSURE_GOTO(req->message_ref[0] == '\0' ||
                        charset_ok(req->message_ref, 1, KMS_LINK_REF_MAX, "._:/-", true),
                    done, KMS_ERR_INVALID_ARGUMENT, "message_ref: 0..%d bytes of [A-Za-z0-9._:/-]",
                    KMS_LINK_REF_MAX);
    uint32_t lo = 0, hi = 0;
    KMS_GUARD_GOTO(ttl_bounds(call, cfg, &lo, &hi), done);
    /* The default, held inside the bounds in force. */
    uint32_t def = cfg->link_default_ttl_s < lo   ? lo
                   : cfg->link_default_ttl_s > hi ? hi
                                                  : cfg->link_default_ttl_s;
    uint32_t ttl = req->ttl_s ? req->ttl_s : def;
    KMS_ENSURE_GOTO(ttl >= lo && ttl <= hi, done, KMS_ERR_INVALID_ARGUMENT,
                    "ttl_s: %u..%u seconds (0: %u)", lo, hi, def);
    KMS_ENSURE_GOTO(k.current_version <= KMS_LINKTOKEN_VERSION_MAX, done,
                    KMS_ERR_FAILED_PRECONDITION,
                    "key %s is past version %d, the last a link token can name", k.key_id,
                    KMS_LINKTOKEN_VERSION_MAX);
    struct kms_version_record v;
    KMS_GUARD_GOTO(kms_keyuse_version(call, k.key_id, k.current_version, false, &v), done);
    call->audit.key_version = v.version;

    struct kms_linktoken t;
    memset(&t, 0, sizeof(t));
    t.key_version = v.version;
    /* The all-zero id is reserved for the refusals redeem decides before
     * the store (it must find no row), so mint never makes it. */
    static const uint8_t reserved_id[KMS_LINKTOKEN_ID_LEN];
    do
        KMS_ENSURE_GOTO(RAND_bytes(t.id, sizeof(t.id)) == 1, done, KMS_ERR_INTERNAL,
                        "random number generator failed");
    while (CRYPTO_memcmp(t.id, reserved_id, sizeof(t.id)) == 0);
    int64_t now = kms_links_now(call->svc);
    t.expires_at = now + ttl;
    struct kms_linkmac m = {
        k.tenant,     k.key_id,     k.region, v.version,        t.id,
        t.expires_at, req->purpose, bd.phone, bd.device_sha256, req->message_ref};
    struct p11_key_id hk;
    memcpy(hk.b, v.hsm_id, sizeof(hk.b));
    KMS_GUARD_GOTO(hsm_tags(tok, &hk, &m, row.recipient, t.mac), done);

    char text[KMS_LINKTOKEN_TEXT_LEN + 1];
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN];
    KMS_GUARD_GOTO(kms_linktoken_raw(&t, raw), done);
    KMS_GUARD_GOTO(kms_linktoken_encode(&t, text), done);
    SHA256(raw, sizeof(raw), row.token_hash);
    OPENSSL_cleanse(raw, sizeof(raw));

    snprintf(row.key_id, sizeof(row.key_id), "%s", k.key_id);
    memcpy(row.token_id, t.id, sizeof(row.token_id));
    row.version = v.version;
    snprintf(row.region, sizeof(row.region), "%s", k.region);
    snprintf(row.tenant, sizeof(row.tenant), "%s", k.tenant);
    row.expires_at = t.expires_at;
    row.created_at = now;
    row.max_attempts = cfg->link_max_attempts;
    snprintf(row.purpose, sizeof(row.purpose), "%s", req->purpose);
    snprintf(row.message_ref, sizeof(row.message_ref), "%s", req->message_ref);
    KMS_GUARD_GOTO(kms_store_link_insert(kms_service_store(call->svc), &row), done);

    char idhex[2 * KMS_LINKTOKEN_ID_LEN + 1], exp[24];
    kms_linktoken_id_hex(t.id, idhex);
    snprintf(exp, sizeof(exp), "%" PRId64, t.expires_at);
    note(call, "link token %s minted, expires %s", idhex, exp);

    Custos__V1__MintLinkTokenResponse resp = CUSTOS__V1__MINT_LINK_TOKEN_RESPONSE__INIT;
    resp.token = text;
    resp.token_id = idhex;
    resp.expires_at = t.expires_at;
    resp.key_id = k.key_id;
    resp.key_version = v.version;
    /* The token is a bearer secret until redeemed: the reply is wiped. */
    rc = kms_rpc_pack_secret(&resp.base, reply);
    OPENSSL_cleanse(text, sizeof(text));
done:
    OPENSSL_cleanse(&bd, sizeof(bd));
    OPENSSL_cleanse(&row, sizeof(row));
    return rc;
}

/* ---- RedeemLinkToken ------------------------------------------------------------- */

/* A refused redemption: the reason and the token id into the audit
 * detail, the one answer to the caller. */
static kms_err refuse(struct kms_call *call, const char *idhex, const char *reason)
{
    note(call, "link token %s refused: %s", idhex, reason);
    return kms_err_set(KMS_ERR_PERMISSION_DENIED, KMS_LINKS_REFUSED);
}

/* Steps 1 and 2: the token's bytes and its key version into *t, *v.
 * A refusal known here (the token does not parse, or names no ACTIVE
 * version) is not answered at once: *early gets its reason and *t, *v the
 * key's current version with the reserved all-zero token id (mint never
 * makes it), so that the caller still does the work of every other
 * refusal: both HSM MACs and the store transaction, which counts the
 * attempt against the recipient and finds no row. Timing and the
 * recipient's counter then do not tell these reasons from the others. */
static kms_err token_step(struct kms_call *call, const struct kms_key_record *k,
                          const char *token, struct kms_linktoken *t,
                          uint8_t raw[KMS_LINKTOKEN_RAW_LEN],
                          char idhex[2 * KMS_LINKTOKEN_ID_LEN + 1], struct kms_version_record *v,
                          const char **early)
{
    memset(t, 0, sizeof(*t));
    *early = NULL;
    if (strcmp(token, KMS_PBUF_FLAW_NUL) == 0)
        *early = "malformed (a NUL byte)";
    else if (strcmp(token, KMS_PBUF_FLAW_UTF8) == 0)
        *early = "malformed (not UTF-8)";
    else if (kms_linktoken_decode(token, strlen(token), t, raw) != KMS_OK)
        *early = "malformed";
    if (*early == NULL) {
        kms_linktoken_id_hex(t->id, idhex);
        call->audit.key_version = t->key_version;
        kms_err rc = kms_keyuse_version(call, k->key_id, t->key_version, true, v);
        if (rc == KMS_ERR_BAD_CIPHERTEXT || rc == KMS_ERR_NOT_FOUND)
            *early = "unknown_version";
        else if (rc != KMS_OK)
            return rc;
    }
    if (*early == NULL)
        return KMS_OK;
    KMS_GUARD(kms_keyuse_version(call, k->key_id, k->current_version, false, v));
    memset(t, 0, sizeof(*t));
    t->key_version = v->version;
    OPENSSL_cleanse(raw, KMS_LINKTOKEN_RAW_LEN);
    return KMS_OK;
}

kms_err kms_rpc_redeem_link_token(struct kms_call *call, const ProtobufCMessage *msg,
                                  struct kms_reply *reply)
{
    const Custos__V1__RedeemLinkTokenRequest *req = (const void *)msg;
    const struct kms_config *cfg = kms_service_config(call->svc);
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    struct binding bd;
    memset(&bd, 0, sizeof(bd));
    /* The token's bytes: a bearer secret until this redemption is done. */
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN] = {0};
    kms_err rc = KMS_OK;

    KMS_GUARD_GOTO(link_key(call, POL_OP_REDEEM_LINK_TOKEN, req->key_id, &k, &tok), done);
    /* The broker's own request must be well formed; that says nothing
     * about the token. */
    KMS_GUARD_GOTO(binding_from(req->phone, &req->device_value, req->purpose, &bd), done);

    const char *early = NULL;
    char idhex[2 * KMS_LINKTOKEN_ID_LEN + 1] = "-";
    struct kms_linktoken t;
    struct kms_version_record v;
    KMS_GUARD_GOTO(token_step(call, &k, req->token, &t, raw, idhex, &v, &early), done);

    struct kms_linkmac m = {k.tenant,     k.key_id,     k.region, t.key_version,    t.id,
                            t.expires_at, req->purpose, bd.phone, bd.device_sha256, NULL};
    /* The message reference is the row's; the MAC of a forged token fails
     * whatever it is, and the row is read in the store transaction. The
     * MAC's input needs it first, so it is read here; the transaction
     * re-checks everything else. */
    struct kms_link_record pre;
    bool found = false;
    KMS_GUARD_GOTO(kms_store_link_get(kms_service_store(call->svc), k.key_id, t.id, &pre, &found),
                   done);
    m.message_ref = found ? pre.message_ref : "";
    struct p11_key_id hk;
    memcpy(hk.b, v.hsm_id, sizeof(hk.b));
    uint8_t recipient[KMS_LINK_RECIPIENT_LEN], mac[KMS_LINKTOKEN_MAC_LEN], token_hash[32];
    KMS_GUARD_GOTO(hsm_tags(tok, &hk, &m, recipient, mac), done);
    SHA256(raw, sizeof(raw), token_hash);
    struct kms_link_attempt a = {
        .key_id = k.key_id,
        .token_id = t.id,
        .version = t.key_version,
        .expires_at = t.expires_at,
        .token_hash = token_hash,
        .recipient = recipient,
        .purpose = req->purpose,
        .mac_ok = CRYPTO_memcmp(mac, t.mac, sizeof(mac)) == 0,
        .now = kms_links_now(call->svc),
        .skew_s = cfg->link_skew_s,
        .rate_limit = cfg->link_recipient_limit,
        .rate_window_s = cfg->link_recipient_window_s,
    };
    enum kms_link_verdict verdict = KMS_LINK_UNKNOWN;
    struct kms_link_record row;
    KMS_GUARD_GOTO(kms_store_link_redeem(kms_service_store(call->svc), &a, &verdict, &row), done);
    if (early != NULL) { /* the reason of the first step that failed */
        rc = refuse(call, idhex, early);
        goto done;
    }
    if (verdict != KMS_LINK_ACCEPTED) {
        rc = refuse(call, idhex, kms_link_verdict_name(verdict));
        goto done;
    }
    snprintf(call->audit.detail, sizeof(call->audit.detail), "link token %s redeemed", idhex);
    Custos__V1__RedeemLinkTokenResponse resp = CUSTOS__V1__REDEEM_LINK_TOKEN_RESPONSE__INIT;
    resp.token_id = idhex;
    resp.key_version = t.key_version;
    resp.message_ref = row.message_ref;
    resp.expires_at = row.expires_at;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    OPENSSL_cleanse(&bd, sizeof(bd));
    OPENSSL_cleanse(raw, sizeof(raw));
    return rc;
}

/* ---- RevokeLinkTokens ------------------------------------------------------------ */

kms_err kms_rpc_revoke_link_tokens(struct kms_call *call, const ProtobufCMessage *msg,
                                   struct kms_reply *reply)
{
    const Custos__V1__RevokeLinkTokensRequest *req = (const void *)msg;
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    uint8_t(*ids)[KMS_LINK_ID_LEN] = NULL;
    kms_err rc = KMS_OK;

    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_REVOKE_LINK_TOKENS, req->key_id, &k), done);
    KMS_ENSURE_GOTO(k.usage == KMS_KEY_USAGE_LINK_TOKEN, done, KMS_ERR_INVALID_ARGUMENT,
                    "key %s is not a LINK_TOKEN_HMAC key", k.key_id);
    /* A disabled key's tokens can still be revoked: revocation only takes
     * away. The region must be served (its audit log records this). */
    KMS_GUARD_GOTO(kms_keyuse_token(call, &k, &tok), done);
    bool by_ids = req->n_token_ids > 0;
    KMS_ENSURE_GOTO(by_ids != (req->message_ref[0] != '\0'), done, KMS_ERR_INVALID_ARGUMENT,
                    "give token_ids or message_ref, exactly one of them");
    uint32_t revoked = 0;
    if (by_ids) {
        KMS_ENSURE_GOTO(req->n_token_ids <= KMS_LINKS_REVOKE_IDS_MAX, done,
                        KMS_ERR_INVALID_ARGUMENT, "token_ids: 1..%d per request",
                        KMS_LINKS_REVOKE_IDS_MAX);
        ids = calloc(req->n_token_ids, sizeof(*ids));
        KMS_ENSURE_GOTO(ids != NULL, done, KMS_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < req->n_token_ids; i++)
            KMS_ENSURE_GOTO(kms_linktoken_id_parse(req->token_ids[i], ids[i]), done,
                            KMS_ERR_INVALID_ARGUMENT, "token_ids %zu: not 24 lowercase hex digits",
                            i);
        KMS_GUARD_GOTO(kms_store_link_revoke(kms_service_store(call->svc), k.key_id,
                                             (const uint8_t(*)[KMS_LINK_ID_LEN])ids,
                                             req->n_token_ids, NULL, &revoked),
                       done);
        if (req->n_token_ids == 1)
            note(call, "link token %s: %s", req->token_ids[0],
                 revoked ? "revoked" : "not live, unchanged");
    } else {
        KMS_ENSURE_GOTO(charset_ok(req->message_ref, 1, KMS_LINK_REF_MAX, "._:/-", true), done,
                        KMS_ERR_INVALID_ARGUMENT, "message_ref: 1..%d bytes of [A-Za-z0-9._:/-]",
                        KMS_LINK_REF_MAX);
        KMS_GUARD_GOTO(kms_store_link_revoke(kms_service_store(call->svc), k.key_id, NULL, 0,
                                             req->message_ref, &revoked),
                       done);
    }
    if (call->audit.detail[0] == '\0')
        snprintf(call->audit.detail, sizeof(call->audit.detail), "%" PRIu32 " link tokens revoked",
                 revoked);
    Custos__V1__RevokeLinkTokensResponse resp = CUSTOS__V1__REVOKE_LINK_TOKENS_RESPONSE__INIT;
    resp.revoked = revoked;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    free(ids);
    return rc;
}

/* ---- sweep ------------------------------------------------------------------------ */

kms_err kms_links_sweep(struct kms_service *svc, int64_t now, size_t *out_n)
{
    const struct kms_config *cfg = kms_service_config(svc);
    (void)now;
    /* The link clock, not the caller's: a test that moves it forward sees
     * its rows swept. */
    int64_t before = kms_links_now(svc) - (int64_t)cfg->link_keep_expired_s;
    return kms_store_link_sweep(kms_service_store(svc), before, KMS_LINKS_SWEEP_BATCH, out_n);
}
