/*
 * kms_recovery.c - EscrowService: M-of-N recovery of escrowed keys.
 *
 * proto/escrow.proto is the contract; docs/escrow-recovery.md the officer's
 * walk-through. Every handler answers NOT_FOUND for a recovery of another
 * tenant (as for keys), authorizes on the recovery's key through the policy
 * (which checks the role, the tenant's quorum and, for approvals, that the
 * officer is on it), and notices expiry lazily: the first request that
 * meets an expired open recovery moves it to EXPIRED and writes a
 * RecoveryExpired audit event next to its own.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "audit_event.h"
#include "kms_blob.h"
#include "kms_escrow.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_pbuf.h"
#include "kms_recovery_stmt.h"
#include "kms_rpc.h"
#include "kms_sign.h"
#include "p11_crypto.h"
#include "p11_escrow.h"
#include "pol_eval.h"
#include "proto/escrow.pb-c.h"

#define MAX_SIG 80
/* Open (pending or approved) recoveries per key: each costs a row and the
 * officers' attention; more than this is a mistake or an attack. */
#define MAX_OPEN_PER_KEY 8

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* ---- the Recovery message ---------------------------------------------------- */

struct recovery_msg {
    Custos__V1__Recovery m;
    Custos__V1__RecoveryApproval *a;
    Custos__V1__RecoveryApproval **ap;
    char statement[KMS_RECOVERY_STMT_MAX];
};

static kms_err recovery_msg_fill(struct recovery_msg *rm, const struct kms_recovery_record *r,
                                 const struct kms_recovery_approval *appr, size_t n_appr)
{
    Custos__V1__Recovery *m = &rm->m;
    custos__v1__recovery__init(m);
    size_t len = 0;
    KMS_GUARD(kms_recovery_statement(r, rm->statement, sizeof(rm->statement), &len));
    m->recovery_id = (char *)r->recovery_id;
    m->tenant = (char *)r->tenant;
    m->key_id = (char *)r->key_id;
    m->region = (char *)r->region;
    m->n_versions = r->n_versions;
    m->versions = (uint32_t *)r->versions;
    m->mode = (Custos__V1__RecoveryMode)r->mode;
    m->justification = (Custos__V1__Justification)r->justification;
    m->justification_text = (char *)r->justification_text;
    m->case_reference = (char *)r->case_reference;
    m->restore_state = (Custos__V1__RestoreState)r->restore_state;
    m->recipient = (char *)r->recipient;
    m->recipient_sha256 = (char *)r->recipient_sha256;
    m->requester = (char *)r->requester;
    m->state = (Custos__V1__RecoveryState)r->state;
    m->created_at = r->created_at;
    m->expires_at = r->expires_at;
    m->quorum_at = r->quorum_at;
    m->executable_at = r->executable_at;
    m->executed_at = r->executed_at;
    m->approvals_required = r->approvals_required;
    m->statement = rm->statement;
    m->cancelled_by = (char *)r->cancelled_by;
    m->cancel_reason = (char *)r->cancel_reason;
    rm->a = calloc(n_appr ? n_appr : 1, sizeof(*rm->a));
    rm->ap = calloc(n_appr ? n_appr : 1, sizeof(*rm->ap));
    KMS_ENSURE(rm->a && rm->ap, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n_appr; i++) {
        custos__v1__recovery_approval__init(&rm->a[i]);
        rm->a[i].officer = (char *)appr[i].officer;
        rm->a[i].approved_at = appr[i].approved_at;
        rm->ap[i] = &rm->a[i];
    }
    m->n_approvals = n_appr;
    m->approvals = rm->ap;
    return KMS_OK;
}

static void recovery_msg_release(struct recovery_msg *rm)
{
    free(rm->a);
    free(rm->ap);
    rm->a = NULL;
    rm->ap = NULL;
}

/* ---- shared steps ------------------------------------------------------------------ */

static void note(struct kms_call *call, const char *fmt, const char *id, const char *extra)
{
    snprintf(call->audit.detail, sizeof(call->audit.detail), fmt, id, extra ? extra : "");
}

_Static_assert(KMS_RECOVERY_STMT_MAX <= KMS_AUDIT_STATEMENT_MAX &&
                   MAX_SIG <= KMS_AUDIT_SIGNATURE_MAX,
               "the audit event holds a whole statement and signature");

/* A refusal by a check of this file, after the policy let the call this
 * far: the audit event names that check (docs/audit.md lists them) rather
 * than the rule that allowed the call. The client's message is unchanged. */
#define REFUSE_GOTO(rule_, cond, label, err, ...)                                                 \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            call->audit.rule = (rule_);                                                           \
            rc = kms_err_set((err), __VA_ARGS__);                                                 \
            goto label;                                                                           \
        }                                                                                         \
    } while (0)

/* The recovery id a request named, for its audit event: whatever the
 * caller sent, bounded and printable (a probe with junk stays readable). */
static void audit_recovery_id(struct kms_call *call, const char *id)
{
    size_t i = 0;
    for (; id && id[i] && i < sizeof(call->audit.recovery_id) - 1; i++)
        call->audit.recovery_id[i] = id[i] > 0x20 && id[i] < 0x7f ? id[i] : '?';
    call->audit.recovery_id[i] = '\0';
}

/* The statement's SHA-256 in the audit event (and, for RequestRecovery,
 * the statement itself): what every approval signs. */
static void audit_statement(struct kms_call *call, const char *stmt, size_t len, bool whole)
{
    uint8_t d[32];
    SHA256((const uint8_t *)stmt, len, d);
    hex(d, sizeof(d), call->audit.statement_sha256);
    if (whole)
        snprintf(call->audit.statement, sizeof(call->audit.statement), "%s", stmt);
}

/* ApproveRecovery's evidence: the signature as sent and the fingerprint of
 * the officer key it is checked with, so that `openssl pkeyutl -verify`
 * repeats the check (docs/escrow-recovery.md). */
static void audit_approval(struct kms_call *call, EVP_PKEY *officer, const uint8_t *sig,
                           size_t sig_len)
{
    if (sig_len <= sizeof(call->audit.approval_signature)) {
        memcpy(call->audit.approval_signature, sig, sig_len);
        call->audit.approval_signature_len = sig_len;
    }
    unsigned char *der = NULL;
    int len = officer ? i2d_PUBKEY(officer, &der) : -1;
    if (len > 0) {
        uint8_t d[32];
        SHA256(der, (size_t)len, d);
        hex(d, sizeof(d), call->audit.officer_key_sha256);
    }
    OPENSSL_free(der);
}

/* An open recovery past its expiry becomes EXPIRED, with its own event. */
static kms_err refresh_expiry(struct kms_call *call, struct kms_recovery_record *r)
{
    if ((r->state != KMS_RECOVERY_PENDING && r->state != KMS_RECOVERY_APPROVED) ||
        now_s() < r->expires_at)
        return KMS_OK;
    kms_err rc = kms_store_recovery_finish(kms_service_store(call->svc), r->recovery_id, r->state,
                                           KMS_RECOVERY_EXPIRED, now_s(), NULL, NULL);
    if (rc == KMS_ERR_FAILED_PRECONDITION)
        return KMS_OK; /* another request got there first */
    KMS_GUARD(rc);
    r->state = KMS_RECOVERY_EXPIRED;
    char detail[96];
    snprintf(detail, sizeof(detail), "recovery %s expired", r->recovery_id);
    /* The event is the recovery's, in its key's region, whichever request
     * noticed the expiry: ListRecoveries names no key, and its own event
     * goes to the caller's home region. */
    struct kms_call ev = *call;
    memset(&ev.audit, 0, sizeof(ev.audit));
    kms_rpc_audit_key(&ev, r->key_id, r->region, NULL);
    audit_recovery_id(&ev, r->recovery_id);
    KMS_GUARD(kms_audit_request(&ev, "RecoveryExpired", KMS_OK, detail, ""));
    kms_log_info("escrow", "recovery %s expired unexecuted", r->recovery_id);
    return KMS_OK;
}

/* Load a recovery visible to the caller and authorize op on its key. */
static kms_err load(struct kms_call *call, enum pol_op op, const char *id,
                    struct kms_recovery_record *r, struct kms_key_record *k,
                    struct kms_recovery_approval **appr, size_t *n_appr)
{
    /* Auditors see which id was probed, whatever the answer. */
    audit_recovery_id(call, id);
    kms_err rc = kms_store_recovery_get(kms_service_store(call->svc), id, r, appr, n_appr);
    const char *tenant = pol_principal_tenant_id(call->who);
    if (rc == KMS_OK && (tenant == NULL || strcmp(tenant, r->tenant) != 0)) {
        /* As for a key: the caller gets exactly the answer for a missing
         * recovery; the audit event names the recovery's key and the rule. */
        kms_rpc_audit_key(call, r->key_id, r->region, NULL);
        call->audit.rule = "tenant";
        snprintf(call->audit.detail, sizeof(call->audit.detail), "recovery %s of another tenant",
                 r->recovery_id);
        kms_log_info("policy", "request %s: %s on recovery %s refused by rule tenant",
                     call->request_id, pol_op_name(op), r->recovery_id);
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "recovery not found");
    } else if (rc == KMS_OK) {
        note(call, "recovery %s%s", r->recovery_id, NULL);
        rc = kms_rpc_authorize_key(call, op, r->key_id, k);
    } else if (rc == KMS_ERR_NOT_FOUND) {
        snprintf(call->audit.detail, sizeof(call->audit.detail), "recovery %s does not exist",
                 call->audit.recovery_id);
    }
    if (rc == KMS_OK)
        rc = refresh_expiry(call, r);
    if (rc != KMS_OK && appr) {
        free(*appr);
        *appr = NULL;
        *n_appr = 0;
    }
    return rc;
}

static kms_err reply_recovery(struct kms_call *call, const char *id,
                              const ProtobufCMessageDescriptor *desc, bool counted,
                              struct kms_reply *reply)
{
    struct kms_recovery_record r;
    struct kms_recovery_approval *appr = NULL;
    size_t n = 0;
    struct recovery_msg rm = {0};
    KMS_GUARD(kms_store_recovery_get(kms_service_store(call->svc), id, &r, &appr, &n));
    kms_err rc = recovery_msg_fill(&rm, &r, appr, n);
    if (rc == KMS_OK) {
        /* Every response of this service starts with {recovery = 1}; the
         * approve response adds counted = 2. */
        if (desc == &custos__v1__approve_recovery_response__descriptor) {
            Custos__V1__ApproveRecoveryResponse resp = CUSTOS__V1__APPROVE_RECOVERY_RESPONSE__INIT;
            resp.recovery = &rm.m;
            resp.counted = counted;
            rc = kms_rpc_pack(&resp.base, reply);
        } else {
            Custos__V1__GetRecoveryResponse resp = CUSTOS__V1__GET_RECOVERY_RESPONSE__INIT;
            _Static_assert(sizeof(Custos__V1__GetRecoveryResponse) ==
                               sizeof(Custos__V1__RequestRecoveryResponse) &&
                               sizeof(Custos__V1__GetRecoveryResponse) ==
                                   sizeof(Custos__V1__CancelRecoveryResponse),
                           "single-field responses share one layout");
            resp.base.descriptor = desc;
            resp.recovery = &rm.m;
            rc = kms_rpc_pack(&resp.base, reply);
        }
    }
    recovery_msg_release(&rm);
    free(appr);
    return rc;
}

/* ---- RequestRecovery ------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The versions to recover: those asked (each must have an escrow blob), or
 * every escrowed one. */
/* The escrowed versions of a key: signing keys keep theirs in their own
 * table (kms_store.h, schema 5). */
static kms_err escrow_list(struct kms_call *call, const struct kms_key_record *k,
                           struct kms_escrow_record **out, size_t *out_n)
{
    struct kms_store *st = kms_service_store(call->svc);
    if (kms_key_spec_is_pair(k->spec))
        return kms_store_escrow_pair_list(st, k->key_id, out, out_n);
    return kms_store_escrow_list(st, k->key_id, out, out_n);
}

static kms_err pick_versions(const Custos__V1__RequestRecoveryRequest *req,
                             const struct kms_escrow_record *blobs, size_t n_blobs,
                             struct kms_recovery_record *r)
{
    KMS_ENSURE(n_blobs > 0, KMS_ERR_FAILED_PRECONDITION,
               "key has no escrow blobs: it was not escrowed at birth (its tenant did not "
               "require escrow then), so it cannot be recovered");
    if (req->n_versions == 0) {
        for (size_t i = 0; i < n_blobs; i++)
            if (r->n_versions == 0 || r->versions[r->n_versions - 1] != blobs[i].version) {
                KMS_ENSURE(r->n_versions < KMS_RECOVERY_MAX_VERSIONS, KMS_ERR_INVALID_ARGUMENT,
                           "key has more than %d escrowed versions: name the versions",
                           KMS_RECOVERY_MAX_VERSIONS);
                r->versions[r->n_versions++] = blobs[i].version;
            }
        return KMS_OK;
    }
    KMS_ENSURE(req->n_versions <= KMS_RECOVERY_MAX_VERSIONS, KMS_ERR_INVALID_ARGUMENT,
               "at most %d versions per recovery", KMS_RECOVERY_MAX_VERSIONS);
    memcpy(r->versions, req->versions, req->n_versions * sizeof(uint32_t));
    r->n_versions = req->n_versions;
    qsort(r->versions, r->n_versions, sizeof(uint32_t), cmp_u32);
    for (size_t i = 0; i < r->n_versions; i++) {
        KMS_ENSURE(i == 0 || r->versions[i] != r->versions[i - 1], KMS_ERR_INVALID_ARGUMENT,
                   "version %" PRIu32 " is listed twice", r->versions[i]);
        bool found = false;
        for (size_t j = 0; j < n_blobs && !found; j++)
            found = blobs[j].version == r->versions[i];
        KMS_ENSURE(found, KMS_ERR_FAILED_PRECONDITION,
                   "key version %" PRIu32 " has no escrow blob", r->versions[i]);
    }
    return KMS_OK;
}

/* EXPORT_WRAPPED: the recipient must be registered in advance, by policy,
 * for the key's own region. sha_hex receives the SHA-256 of its DER public
 * key; *out_der (may be NULL) the DER itself, freed with OPENSSL_free. */
static kms_err pick_recipient(struct kms_call *call, const struct pol_tenant *t, const char *id,
                              const char *region, char sha_hex[65], unsigned char **out_der,
                              size_t *out_len)
{
    KMS_ENSURE(id[0] != '\0', KMS_ERR_INVALID_ARGUMENT, "EXPORT_WRAPPED needs a recipient");
    const struct pol_recipient *rc = pol_tenant_recipient(t, id);
    if (rc == NULL)
        call->audit.rule = "recipient";
    KMS_ENSURE(rc != NULL, KMS_ERR_PERMISSION_DENIED,
               "recipient is not registered in the tenant's policy (recovery_recipients); "
               "keys are exported only to recipients named in advance");
    if (strcmp(pol_recipient_region(rc), region) != 0)
        call->audit.rule = "residency.recipient_region";
    KMS_ENSURE(strcmp(pol_recipient_region(rc), region) == 0, KMS_ERR_PERMISSION_DENIED,
               "recipient %s is registered for region %s, the key lives in %s: a key never "
               "leaves its region",
               id, pol_recipient_region(rc), region);
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(pol_recipient_key(rc), &der);
    KMS_ENSURE(len > 0, KMS_ERR_INTERNAL, "cannot encode the recipient key");
    uint8_t d[32];
    SHA256(der, (size_t)len, d);
    hex(d, sizeof(d), sha_hex);
    if (out_der) {
        *out_der = der;
        *out_len = (size_t)len;
    } else {
        OPENSSL_free(der);
    }
    return KMS_OK;
}

kms_err kms_rpc_request_recovery(struct kms_call *call, const uint8_t *body, size_t len,
                                 struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    Custos__V1__RequestRecoveryRequest *req =
        kms_pbuf_unpack(&custos__v1__request_recovery_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("RequestRecoveryRequest");
    struct kms_escrow_record *blobs = NULL;
    size_t n_blobs = 0;
    struct kms_recovery_record r;
    memset(&r, 0, sizeof(r));
    struct kms_key_record k;

    KMS_ENSURE_GOTO(req->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE ||
                        req->mode == CUSTOS__V1__RECOVERY_MODE__EXPORT_WRAPPED,
                    done, KMS_ERR_INVALID_ARGUMENT, "mode must be RESTORE or EXPORT_WRAPPED");
    KMS_ENSURE_GOTO(req->justification >= 1 && req->justification <= 5, done,
                    KMS_ERR_INVALID_ARGUMENT,
                    "justification must be one of ACCIDENTAL_DELETION, LAWFUL_REQUEST, "
                    "REGULATORY_EXAMINATION, DISASTER_RECOVERY, TENANT_EXIT");
    KMS_ENSURE_GOTO(kms_recovery_text_ok(req->justification_text, KMS_RECOVERY_TEXT_MAX), done,
                    KMS_ERR_INVALID_ARGUMENT,
                    "justification_text must be 1..%d bytes of UTF-8 without control, "
                    "format (bidi, zero-width) or line separator characters",
                    KMS_RECOVERY_TEXT_MAX);
    KMS_ENSURE_GOTO(kms_recovery_text_ok(req->case_reference, KMS_RECOVERY_CASE_MAX), done,
                    KMS_ERR_INVALID_ARGUMENT,
                    "case_reference must be 1..%d bytes of UTF-8 without control, format "
                    "(bidi, zero-width) or line separator characters",
                    KMS_RECOVERY_CASE_MAX);
    KMS_ENSURE_GOTO(req->restore_state >= 0 && req->restore_state <= 2, done,
                    KMS_ERR_INVALID_ARGUMENT, "restore_state must be DISABLED or ENABLED");
    KMS_ENSURE_GOTO(strlen(req->recipient) <= KMS_RECOVERY_NAME_MAX, done,
                    KMS_ERR_INVALID_ARGUMENT, "recipient longer than %d bytes",
                    KMS_RECOVERY_NAME_MAX);
    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_REQUEST_RECOVERY, req->key_id, &k), done);
    REFUSE_GOTO("residency.key_region",
                req->target_region[0] == '\0' || strcmp(req->target_region, k.region) == 0,
                done, KMS_ERR_PERMISSION_DENIED,
                    "the key lives in region %s: a recovery never targets another region",
                    k.region);
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    KMS_GUARD_GOTO(escrow_list(call, &k, &blobs, &n_blobs), done);
    KMS_GUARD_GOTO(pick_versions(req, blobs, n_blobs, &r), done);
    if (req->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE) {
        REFUSE_GOTO("state", k.state == KMS_KEY_DESTROYED, done, KMS_ERR_FAILED_PRECONDITION,
                        "key is %s; RESTORE brings back a DESTROYED key (a deletion still "
                        "pending is cancelled by the key's administrators)",
                        kms_key_state_name(k.state));
        KMS_ENSURE_GOTO(req->recipient[0] == '\0', done, KMS_ERR_INVALID_ARGUMENT,
                        "a recipient is for EXPORT_WRAPPED only");
    } else {
        KMS_ENSURE_GOTO(k.spec == KMS_KEY_SPEC_AES_256, done, KMS_ERR_FAILED_PRECONDITION,
                        "EXPORT_WRAPPED exports AES_256 keys; restore this key instead");
        KMS_GUARD_GOTO(pick_recipient(call, t, req->recipient, k.region, r.recipient_sha256, NULL,
                                      NULL),
                       done);
        snprintf(r.recipient, sizeof(r.recipient), "%s", req->recipient);
    }
    KMS_ENSURE_GOTO(kms_service_token(call->svc, k.region) != NULL, done,
                    KMS_ERR_FAILED_PRECONDITION, "region %s is not served by this node",
                    k.region);

    uint8_t raw[16];
    KMS_ENSURE_GOTO(RAND_bytes(raw, sizeof(raw)) == 1, done, KMS_ERR_INTERNAL,
                    "random number generator failed");
    hex(raw, sizeof(raw), r.recovery_id);
    snprintf(r.tenant, sizeof(r.tenant), "%s", k.tenant);
    snprintf(r.key_id, sizeof(r.key_id), "%s", k.key_id);
    snprintf(r.region, sizeof(r.region), "%s", k.region);
    r.mode = req->mode;
    r.justification = req->justification;
    snprintf(r.justification_text, sizeof(r.justification_text), "%s", req->justification_text);
    snprintf(r.case_reference, sizeof(r.case_reference), "%s", req->case_reference);
    r.restore_state = req->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE
                          ? (req->restore_state == 2 ? 2 : 1)
                          : 0;
    snprintf(r.requester, sizeof(r.requester), "%s", pol_principal_id(call->who));
    r.state = KMS_RECOVERY_PENDING;
    r.approvals_required = pol_tenant_quorum_approvals(t);
    r.time_lock_s = pol_tenant_recovery_time_lock_s(t);
    r.created_at = now_s();
    r.expires_at = r.created_at + pol_tenant_recovery_ttl_s(t);
    /* The limit is checked where the row is written, in one transaction:
     * a count read here first would let concurrent requests all pass it. */
    size_t n_open = 0;
    rc = kms_store_recovery_insert(kms_service_store(call->svc), &r, MAX_OPEN_PER_KEY, &n_open);
    if (rc == KMS_ERR_RESOURCE_EXHAUSTED)
        call->audit.rule = "limit";
    if (rc != KMS_OK)
        goto done;
    note(call, "recovery %s requested%s", r.recovery_id, NULL);
    audit_recovery_id(call, r.recovery_id);
    {
        char stmt[KMS_RECOVERY_STMT_MAX];
        size_t stmt_len = 0;
        KMS_GUARD_GOTO(kms_recovery_statement(&r, stmt, sizeof(stmt), &stmt_len), done);
        audit_statement(call, stmt, stmt_len, true);
    }
    kms_log_info("escrow", "request %s: recovery %s of key %s (%s) requested by %s",
                 call->request_id, r.recovery_id, r.key_id, kms_recovery_mode_name(r.mode),
                 r.requester);
    rc = reply_recovery(call, r.recovery_id, &custos__v1__request_recovery_response__descriptor,
                        false, reply);
done:
    free(blobs);
    custos__v1__request_recovery_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- GetRecovery, ListRecoveries ------------------------------------------------------- */

kms_err kms_rpc_get_recovery(struct kms_call *call, const uint8_t *body, size_t len,
                             struct kms_reply *reply)
{
    Custos__V1__GetRecoveryRequest *req =
        kms_pbuf_unpack(&custos__v1__get_recovery_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("GetRecoveryRequest");
    struct kms_recovery_record r;
    struct kms_key_record k;
    kms_err rc = load(call, POL_OP_GET_RECOVERY, req->recovery_id, &r, &k, NULL, NULL);
    if (rc == KMS_OK)
        rc = reply_recovery(call, r.recovery_id, &custos__v1__get_recovery_response__descriptor,
                            false, reply);
    custos__v1__get_recovery_request__free_unpacked(req, NULL);
    return rc;
}

kms_err kms_rpc_list_recoveries(struct kms_call *call, const uint8_t *body, size_t len,
                                struct kms_reply *reply)
{
    Custos__V1__ListRecoveriesRequest *req =
        kms_pbuf_unpack(&custos__v1__list_recoveries_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("ListRecoveriesRequest");
    kms_err rc = KMS_OK;
    struct kms_recovery_record *rs = NULL;
    size_t n = 0;
    struct recovery_msg *msgs = NULL;
    Custos__V1__Recovery **mp = NULL;
    const char *tenant = pol_principal_tenant_id(call->who);
    KMS_GUARD_GOTO(kms_rpc_authorize_tenant(call, POL_OP_LIST_RECOVERIES, NULL), done);
    if (req->key_id[0] != '\0') {
        uint8_t raw[16];
        KMS_GUARD_GOTO(kms_key_id_parse(req->key_id, raw), done);
    }
    KMS_GUARD_GOTO(kms_store_recovery_list(kms_service_store(call->svc), tenant,
                                           req->key_id[0] ? req->key_id : NULL, req->open_only,
                                           &rs, &n),
                   done);
    msgs = calloc(n ? n : 1, sizeof(*msgs));
    mp = calloc(n ? n : 1, sizeof(*mp));
    KMS_ENSURE_GOTO(msgs && mp, done, KMS_ERR_NOMEM, "out of memory");
    size_t out = 0, hidden = 0;
    for (size_t i = 0; i < n; i++) {
        /* Recoveries of keys in a region not served (its audit log was
         * refused at start) are left out, as GetRecovery of each is
         * refused: not read, not expired, not shown. */
        if (kms_service_region_check(call->svc, rs[i].region) != KMS_OK) {
            kms_err_clear();
            hidden++;
            continue;
        }
        KMS_GUARD_GOTO(refresh_expiry(call, &rs[i]), done);
        if (req->open_only && rs[i].state != KMS_RECOVERY_PENDING &&
            rs[i].state != KMS_RECOVERY_APPROVED)
            continue;
        /* Approvals are in GetRecovery; the list says how many are needed. */
        KMS_GUARD_GOTO(recovery_msg_fill(&msgs[out], &rs[i], NULL, 0), done);
        mp[out] = &msgs[out].m;
        out++;
    }
    if (hidden)
        snprintf(call->audit.detail, sizeof(call->audit.detail),
                 "left out %zu recovery(ies) of regions not served", hidden);
    Custos__V1__ListRecoveriesResponse resp = CUSTOS__V1__LIST_RECOVERIES_RESPONSE__INIT;
    resp.n_recoveries = out;
    resp.recoveries = mp;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    for (size_t i = 0; msgs && i < n; i++)
        recovery_msg_release(&msgs[i]);
    free(msgs);
    free(mp);
    free(rs);
    custos__v1__list_recoveries_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- ApproveRecovery -------------------------------------------------------------------- */

kms_err kms_rpc_approve_recovery(struct kms_call *call, const uint8_t *body, size_t len,
                                 struct kms_reply *reply)
{
    Custos__V1__ApproveRecoveryRequest *req =
        kms_pbuf_unpack(&custos__v1__approve_recovery_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("ApproveRecoveryRequest");
    struct kms_recovery_record r;
    struct kms_key_record k;
    bool counted = false;
    char stmt[KMS_RECOVERY_STMT_MAX];
    size_t stmt_len = 0;
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(req->signature.len >= 8 && req->signature.len <= MAX_SIG, done,
                    KMS_ERR_INVALID_ARGUMENT, "signature must be a DER ECDSA signature (8..%d bytes)",
                    MAX_SIG);
    KMS_GUARD_GOTO(load(call, POL_OP_APPROVE_RECOVERY, req->recovery_id, &r, &k, NULL, NULL),
                   done);
    /* The evidence first: a refused approval is audited with it too. */
    KMS_GUARD_GOTO(kms_recovery_statement(&r, stmt, sizeof(stmt), &stmt_len), done);
    audit_statement(call, stmt, stmt_len, false);
    audit_approval(call, pol_principal_officer_key(call->who), req->signature.data,
                   req->signature.len);
    REFUSE_GOTO("expiry", r.state != KMS_RECOVERY_EXPIRED, done, KMS_ERR_FAILED_PRECONDITION,
                "recovery expired at %" PRId64 "; its approvals are worthless", r.expires_at);
    REFUSE_GOTO("state", r.state == KMS_RECOVERY_PENDING, done, KMS_ERR_FAILED_PRECONDITION,
                "recovery is %s; approvals are taken while it is PENDING_APPROVAL",
                kms_recovery_state_name(r.state));
    /* Two people at least: the one who asks never approves. */
    REFUSE_GOTO("requester", strcmp(r.requester, pol_principal_id(call->who)) != 0, done,
                KMS_ERR_PERMISSION_DENIED,
                "you requested this recovery; the requester's approval does not count");
    rc = kms_recovery_verify(pol_principal_officer_key(call->who), stmt, stmt_len,
                             req->signature.data, req->signature.len);
    if (rc != KMS_OK) {
        call->audit.rule = "signature";
        note(call, "recovery %s: invalid approval signature%s", r.recovery_id, NULL);
        goto done;
    }
    KMS_GUARD_GOTO(kms_store_recovery_approve(kms_service_store(call->svc), r.recovery_id,
                                              pol_principal_id(call->who), req->signature.data,
                                              req->signature.len, now_s(), &counted),
                   done);
    note(call, counted ? "recovery %s approved%s" : "recovery %s: duplicate approval, counted once%s",
         r.recovery_id, NULL);
    rc = reply_recovery(call, r.recovery_id, &custos__v1__approve_recovery_response__descriptor,
                        counted, reply);
done:
    custos__v1__approve_recovery_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- ExecuteRecovery ------------------------------------------------------------------ */

/* Policy may have changed since the approvals: count only those of officers
 * who are still on the quorum, and never the requester. */
static kms_err quorum_still_holds(struct kms_call *call, const struct kms_recovery_record *r,
                                  const struct kms_recovery_approval *appr, size_t n)
{
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    unsigned m = pol_tenant_quorum_approvals(t), valid = 0;
    for (size_t i = 0; i < n; i++) {
        const struct pol_principal *p = pol_doc_principal(call->policy, appr[i].officer);
        if (p && pol_tenant_is_quorum_officer(t, p) && strcmp(appr[i].officer, r->requester) != 0)
            valid++;
    }
    if (m == 0 || valid < m)
        call->audit.rule = "quorum";
    KMS_ENSURE(m > 0 && valid >= m, KMS_ERR_FAILED_PRECONDITION,
               "only %u of the %u approvals the current policy requires are from officers "
               "still on the quorum",
               valid, m);
    return KMS_OK;
}

static enum p11_key_kind part_kind(int part)
{
    return part == 0 ? P11_KEY_AES_ENCRYPT : P11_KEY_HMAC_SHA256;
}

/* RESTORE: every blob of the listed versions back into the token under the
 * version's own CKA_ID, then one commit. On any failure the objects made
 * here are destroyed and nothing changes in the store. */
static kms_err restore(struct kms_call *call, struct p11_token *tok,
                       const struct kms_recovery_record *r, const struct kms_escrow_record *blobs,
                       size_t n_blobs)
{
    struct kms_store *st = kms_service_store(call->svc);
    struct p11_key_id made[KMS_RECOVERY_MAX_VERSIONS];
    size_t n_made = 0;
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < r->n_versions && rc == KMS_OK; i++) {
        struct kms_version_record v;
        rc = kms_store_version_get(st, r->key_id, r->versions[i], &v);
        if (rc != KMS_OK)
            break;
        struct p11_key_id id;
        memcpy(id.b, v.hsm_id, sizeof(id.b));
        /* A leftover of the destroyed version (a sweep that crashed
         * midway) would collide with the restored object. */
        bool exists = false;
        rc = p11_key_exists(tok, &id, &exists);
        if (rc == KMS_OK && exists)
            rc = p11_key_destroy(tok, &id);
        made[n_made++] = id;
        char label[80];
        snprintf(label, sizeof(label), KMS_HSM_LABEL_PREFIX "%s:v%" PRIu32, r->key_id,
                 r->versions[i]);
        for (size_t j = 0; j < n_blobs && rc == KMS_OK; j++) {
            if (blobs[j].version != r->versions[i])
                continue;
            struct p11_key_id esc;
            memcpy(esc.b, blobs[j].escrow_hsm_id, sizeof(esc.b));
            KMS_ENSURE_GOTO(strcmp(blobs[j].token, p11_token_label(tok)) == 0, undo,
                            KMS_ERR_FAILED_PRECONDITION,
                            "escrow blob of version %" PRIu32 " was made in token '%s', not '%s'",
                            r->versions[i], blobs[j].token, p11_token_label(tok));
            rc = blobs[j].part == KMS_ESCROW_PART_PAIR
                     ? kms_sign_escrow_restore(call->svc, tok, &blobs[j], &id, label)
                     : p11_kwp_unwrap(tok, &esc, blobs[j].blob, blobs[j].blob_len,
                                      part_kind(blobs[j].part), 0, &id, label);
        }
    }
    if (rc == KMS_OK)
        rc = kms_store_recovery_restore(st, r->recovery_id, now_s(),
                                        r->restore_state == 2 ? KMS_KEY_ENABLED
                                                              : KMS_KEY_DISABLED);
    kms_keycache_invalidate(kms_service_keycache(call->svc), r->key_id);
    if (rc == KMS_OK)
        return KMS_OK;
undo:;
    char detail[512];
    snprintf(detail, sizeof(detail), "%s", kms_err_detail());
    for (size_t i = 0; i < n_made; i++)
        p11_key_destroy(tok, &made[i]);
    return kms_err_set(rc, "%s", detail);
}

static kms_err export_wrapped(struct kms_call *call, struct p11_token *tok,
                              const struct kms_recovery_record *r,
                              const struct kms_escrow_record *blobs, size_t n_blobs,
                              Custos__V1__ExecuteRecoveryResponse *resp)
{
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    /* The recipient the officers approved, and no other: its key must
     * still be the one whose hash they signed. */
    char sha_now[65];
    unsigned char *der = NULL;
    size_t der_len = 0;
    KMS_GUARD(pick_recipient(call, t, r->recipient, r->region, sha_now, &der, &der_len));
    kms_err rc = KMS_OK;
    REFUSE_GOTO("recipient", strcmp(sha_now, r->recipient_sha256) == 0, done,
                KMS_ERR_FAILED_PRECONDITION,
                    "recipient %s has a different public key in the policy now than the one the "
                    "officers approved; request a new recovery",
                    r->recipient);
    resp->wrapped = calloc(r->n_versions, sizeof(*resp->wrapped));
    KMS_ENSURE_GOTO(resp->wrapped != NULL, done, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < r->n_versions && rc == KMS_OK; i++) {
        const struct kms_escrow_record *b = NULL;
        for (size_t j = 0; j < n_blobs && !b; j++)
            if (blobs[j].version == r->versions[i] && blobs[j].part == 0)
                b = &blobs[j];
        KMS_ENSURE_GOTO(b != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                        "version %" PRIu32 " has no escrow blob", r->versions[i]);
        Custos__V1__WrappedKeyVersion *w = calloc(1, sizeof(*w) + P11_EXPORT_MAX);
        KMS_ENSURE_GOTO(w != NULL, done, KMS_ERR_NOMEM, "out of memory");
        custos__v1__wrapped_key_version__init(w);
        resp->wrapped[resp->n_wrapped++] = w;
        uint8_t *buf = (uint8_t *)(w + 1);
        struct p11_key_id esc;
        memcpy(esc.b, b->escrow_hsm_id, sizeof(esc.b));
        size_t out_len = 0;
        enum p11_oaep_hash hash = P11_OAEP_SHA1;
        rc = p11_escrow_export(tok, &esc, b->blob, b->blob_len, der, der_len, buf,
                               P11_EXPORT_MAX, &out_len, &hash);
        w->version = r->versions[i];
        w->wrapped_key.data = buf;
        w->wrapped_key.len = out_len;
        w->algorithm = (char *)(hash == P11_OAEP_SHA256 ? "RSA_AES_KEY_WRAP_SHA_256"
                                                        : "RSA_AES_KEY_WRAP_SHA_1");
    }
    if (rc == KMS_OK)
        rc = kms_store_recovery_finish(kms_service_store(call->svc), r->recovery_id,
                                       KMS_RECOVERY_APPROVED, KMS_RECOVERY_EXECUTED, now_s(),
                                       NULL, NULL);
done:
    OPENSSL_free(der);
    return rc;
}

kms_err kms_rpc_execute_recovery(struct kms_call *call, const uint8_t *body, size_t len,
                                 struct kms_reply *reply)
{
    Custos__V1__ExecuteRecoveryRequest *req =
        kms_pbuf_unpack(&custos__v1__execute_recovery_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("ExecuteRecoveryRequest");
    struct kms_recovery_record r;
    struct kms_key_record k;
    struct kms_recovery_approval *appr = NULL;
    size_t n_appr = 0;
    struct kms_escrow_record *blobs = NULL;
    size_t n_blobs = 0;
    struct recovery_msg rm = {0};
    Custos__V1__ExecuteRecoveryResponse resp = CUSTOS__V1__EXECUTE_RECOVERY_RESPONSE__INIT;
    kms_err rc = KMS_OK;
    KMS_GUARD_GOTO(load(call, POL_OP_EXECUTE_RECOVERY, req->recovery_id, &r, &k, &appr, &n_appr),
                   done);
    {
        char stmt[KMS_RECOVERY_STMT_MAX];
        size_t stmt_len = 0;
        KMS_GUARD_GOTO(kms_recovery_statement(&r, stmt, sizeof(stmt), &stmt_len), done);
        audit_statement(call, stmt, stmt_len, false);
    }
    REFUSE_GOTO("state", r.state == KMS_RECOVERY_APPROVED, done, KMS_ERR_FAILED_PRECONDITION,
                    "recovery is %s (%zu of %" PRIu32 " approvals); only an APPROVED recovery "
                    "can be executed",
                    kms_recovery_state_name(r.state), n_appr, r.approvals_required);
    int64_t now = now_s();
    REFUSE_GOTO("time_lock", now >= r.executable_at, done, KMS_ERR_FAILED_PRECONDITION,
                    "time lock: executable from %" PRId64 " (in %" PRId64 " s); the key's "
                    "administrators can see this recovery until then",
                    r.executable_at, r.executable_at - now);
    KMS_GUARD_GOTO(quorum_still_holds(call, &r, appr, n_appr), done);
    struct p11_token *tok = kms_service_token(call->svc, r.region);
    KMS_ENSURE_GOTO(tok != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                    "region %s is not served by this node", r.region);
    KMS_GUARD_GOTO(escrow_list(call, &k, &blobs, &n_blobs), done);
    if (r.mode == CUSTOS__V1__RECOVERY_MODE__RESTORE) {
        KMS_GUARD_GOTO(restore(call, tok, &r, blobs, n_blobs), done);
        struct kms_key_record now_k;
        KMS_GUARD_GOTO(kms_store_key_get(kms_service_store(call->svc), r.key_id, &now_k), done);
        resp.key_state = (char *)kms_key_state_name(now_k.state);
        resp.current_version = now_k.current_version;
    } else {
        KMS_GUARD_GOTO(export_wrapped(call, tok, &r, blobs, n_blobs, &resp), done);
        reply->secret = true;
    }
    note(call, "recovery %s executed (%s)", r.recovery_id, kms_recovery_mode_name(r.mode));
    kms_log_warn("escrow", "request %s: recovery %s of key %s EXECUTED (%s) by %s",
                 call->request_id, r.recovery_id, r.key_id, kms_recovery_mode_name(r.mode),
                 pol_principal_id(call->who));
    free(appr);
    appr = NULL;
    KMS_GUARD_GOTO(kms_store_recovery_get(kms_service_store(call->svc), r.recovery_id, &r, &appr,
                                          &n_appr),
                   done);
    KMS_GUARD_GOTO(recovery_msg_fill(&rm, &r, appr, n_appr), done);
    resp.recovery = &rm.m;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    for (size_t i = 0; i < resp.n_wrapped; i++) {
        OPENSSL_cleanse(resp.wrapped[i] + 1, P11_EXPORT_MAX);
        free(resp.wrapped[i]);
    }
    free(resp.wrapped);
    recovery_msg_release(&rm);
    free(appr);
    free(blobs);
    custos__v1__execute_recovery_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- CancelRecovery --------------------------------------------------------------------- */

kms_err kms_rpc_cancel_recovery(struct kms_call *call, const uint8_t *body, size_t len,
                                struct kms_reply *reply)
{
    Custos__V1__CancelRecoveryRequest *req =
        kms_pbuf_unpack(&custos__v1__cancel_recovery_request__descriptor, body, len);
    if (req == NULL)
        return KMS_RPC_MALFORMED("CancelRecoveryRequest");
    struct kms_recovery_record r;
    struct kms_key_record k;
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(req->reason[0] == '\0' || kms_recovery_text_ok(req->reason, KMS_RECOVERY_TEXT_MAX),
                    done, KMS_ERR_INVALID_ARGUMENT,
                    "reason must be up to %d bytes of UTF-8 without control, format (bidi, "
                    "zero-width) or line separator characters",
                    KMS_RECOVERY_TEXT_MAX);
    KMS_GUARD_GOTO(load(call, POL_OP_CANCEL_RECOVERY, req->recovery_id, &r, &k, NULL, NULL), done);
    REFUSE_GOTO("state", r.state == KMS_RECOVERY_PENDING || r.state == KMS_RECOVERY_APPROVED, done,
                    KMS_ERR_FAILED_PRECONDITION, "recovery is %s; only an open one is cancelled",
                    kms_recovery_state_name(r.state));
    KMS_GUARD_GOTO(kms_store_recovery_finish(kms_service_store(call->svc), r.recovery_id, r.state,
                                             KMS_RECOVERY_CANCELLED, now_s(),
                                             pol_principal_id(call->who), req->reason),
                   done);
    note(call, "recovery %s cancelled%s", r.recovery_id, NULL);
    rc = reply_recovery(call, r.recovery_id, &custos__v1__cancel_recovery_response__descriptor,
                        false, reply);
done:
    custos__v1__cancel_recovery_request__free_unpacked(req, NULL);
    return rc;
}
