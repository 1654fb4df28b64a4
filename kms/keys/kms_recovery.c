/*
 * kms_recovery.c - EscrowService: M-of-N recovery of escrowed keys; this
 * file requests, reads, approves and cancels recoveries, and
 * kms_recovery_exec.c executes them (shared steps: kms_recovery_util.c).
 *
 * proto/escrow.proto is the contract; docs/escrow-recovery.md the officer's
 * walk-through. Every handler answers NOT_FOUND for a recovery of another
 * tenant (as for keys), authorizes on the recovery's key through the policy
 * (which checks the role, the tenant's quorum and, for approvals, that the
 * officer is on it), and notices expiry lazily: the first request that
 * meets an expired open recovery moves it to EXPIRED and writes a
 * RecoveryExpired audit event next to its own.
 */
#include "kms_recovery.h"

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
#include "p11_crypto.h"
#include "p11_escrow.h"
#include "pol_eval.h"
#include "proto/escrow.pb-c.h"
#include "kms_recovery_internal.h"

/* Open (pending or approved) recoveries per key: each costs a row and the
 * officers' attention; more than this is a mistake or an attack. */
#define MAX_OPEN_PER_KEY 8

/* ---- RequestRecovery ------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The versions to recover: those asked (each must have an escrow blob), or
 * every escrowed one. */
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

/* The request's own fields, before anything is looked up. */
static kms_err check_request(const Custos__V1__RequestRecoveryRequest *req)
{
    KMS_ENSURE(req->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE ||
                   req->mode == CUSTOS__V1__RECOVERY_MODE__EXPORT_WRAPPED,
               KMS_ERR_INVALID_ARGUMENT, "mode must be RESTORE or EXPORT_WRAPPED");
    KMS_ENSURE(req->justification >= 1 && req->justification <= 5, KMS_ERR_INVALID_ARGUMENT,
               "justification must be one of ACCIDENTAL_DELETION, LAWFUL_REQUEST, "
               "REGULATORY_EXAMINATION, DISASTER_RECOVERY, TENANT_EXIT");
    KMS_ENSURE(kms_recovery_text_ok(req->justification_text, KMS_RECOVERY_TEXT_MAX),
               KMS_ERR_INVALID_ARGUMENT,
               "justification_text must be 1..%d bytes of UTF-8 without control, "
               "format (bidi, zero-width) or line separator characters",
               KMS_RECOVERY_TEXT_MAX);
    KMS_ENSURE(kms_recovery_text_ok(req->case_reference, KMS_RECOVERY_CASE_MAX),
               KMS_ERR_INVALID_ARGUMENT,
               "case_reference must be 1..%d bytes of UTF-8 without control, format "
               "(bidi, zero-width) or line separator characters",
               KMS_RECOVERY_CASE_MAX);
    KMS_ENSURE(req->restore_state >= 0 && req->restore_state <= 2, KMS_ERR_INVALID_ARGUMENT,
               "restore_state must be DISABLED or ENABLED");
    KMS_ENSURE(strlen(req->recipient) <= KMS_RECOVERY_NAME_MAX, KMS_ERR_INVALID_ARGUMENT,
               "recipient longer than %d bytes", KMS_RECOVERY_NAME_MAX);
    return KMS_OK;
}

kms_err kms_rpc_request_recovery(struct kms_call *call, const ProtobufCMessage *msg,
                                 struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__RequestRecoveryRequest *req = (const void *)msg;
    struct kms_escrow_record *blobs = NULL;
    size_t n_blobs = 0;
    struct kms_recovery_record r;
    memset(&r, 0, sizeof(r));
    struct kms_key_record k;

    KMS_GUARD_GOTO(check_request(req), done);
    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_REQUEST_RECOVERY, req->key_id, &k), done);
    KMS_RECOVERY_REFUSE_GOTO("residency.key_region",
                             req->target_region[0] == '\0' ||
                                 strcmp(req->target_region, k.region) == 0,
                             done, KMS_ERR_PERMISSION_DENIED,
                             "the key lives in region %s: a recovery never targets another "
                             "region",
                             k.region);
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    KMS_GUARD_GOTO(kms_recovery_escrow_list(call, &k, &blobs, &n_blobs), done);
    KMS_GUARD_GOTO(pick_versions(req, blobs, n_blobs, &r), done);
    if (req->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE) {
        KMS_RECOVERY_REFUSE_GOTO("state", k.state == KMS_KEY_DESTROYED, done,
                                 KMS_ERR_FAILED_PRECONDITION,
                                 "key is %s; RESTORE brings back a DESTROYED key (a deletion still "
                                 "pending is cancelled by the key's administrators)",
                                 kms_key_state_name(k.state));
        KMS_ENSURE_GOTO(req->recipient[0] == '\0', done, KMS_ERR_INVALID_ARGUMENT,
                        "a recipient is for EXPORT_WRAPPED only");
    } else {
        KMS_ENSURE_GOTO(k.spec == KMS_KEY_SPEC_AES_256, done, KMS_ERR_FAILED_PRECONDITION,
                        "EXPORT_WRAPPED exports AES_256 keys; restore this key instead");
        KMS_GUARD_GOTO(kms_recovery_pick_recipient(call, t, req->recipient, k.region,
                                                   r.recipient_sha256, NULL, NULL),
                       done);
        snprintf(r.recipient, sizeof(r.recipient), "%s", req->recipient);
    }
    KMS_ENSURE_GOTO(kms_service_token(call->svc, k.region) != NULL, done,
                    KMS_ERR_FAILED_PRECONDITION, "region %s is not served by this node",
                    k.region);

    uint8_t raw[16];
    KMS_ENSURE_GOTO(RAND_bytes(raw, sizeof(raw)) == 1, done, KMS_ERR_INTERNAL,
                    "random number generator failed");
    kms_recovery_hex(raw, sizeof(raw), r.recovery_id);
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
    r.created_at = kms_recovery_now();
    r.expires_at = r.created_at + pol_tenant_recovery_ttl_s(t);
    /* The limit is checked where the row is written, in one transaction:
     * a count read here first would let concurrent requests all pass it. */
    size_t n_open = 0;
    rc = kms_store_recovery_insert(kms_service_store(call->svc), &r, MAX_OPEN_PER_KEY, &n_open);
    if (rc == KMS_ERR_RESOURCE_EXHAUSTED)
        call->audit.rule = "limit";
    if (rc != KMS_OK)
        goto done;
    kms_recovery_note(call, "recovery %s requested%s", r.recovery_id, NULL);
    kms_recovery_audit_id(call, r.recovery_id);
    {
        char stmt[KMS_RECOVERY_STMT_MAX];
        size_t stmt_len = 0;
        KMS_GUARD_GOTO(kms_recovery_statement(&r, stmt, sizeof(stmt), &stmt_len), done);
        kms_recovery_audit_statement(call, stmt, stmt_len, true);
    }
    kms_log_info("escrow", "request %s: recovery %s of key %s (%s) requested by %s",
                 call->request_id, r.recovery_id, r.key_id, kms_recovery_mode_name(r.mode),
                 r.requester);
    rc = kms_recovery_reply(call, r.recovery_id,
                            &custos__v1__request_recovery_response__descriptor, false, reply);
done:
    free(blobs);
    return rc;
}

/* ---- GetRecovery, ListRecoveries ------------------------------------------------------- */

kms_err kms_rpc_get_recovery(struct kms_call *call, const ProtobufCMessage *msg,
                             struct kms_reply *reply)
{
    const Custos__V1__GetRecoveryRequest *req = (const void *)msg;
    struct kms_recovery_record r;
    struct kms_key_record k;
    kms_err rc = kms_recovery_load(call, POL_OP_GET_RECOVERY, req->recovery_id, &r, &k, NULL, NULL);
    if (rc == KMS_OK)
        rc = kms_recovery_reply(call, r.recovery_id, &custos__v1__get_recovery_response__descriptor,
                            false, reply);
    return rc;
}

kms_err kms_rpc_list_recoveries(struct kms_call *call, const ProtobufCMessage *msg,
                                struct kms_reply *reply)
{
    const Custos__V1__ListRecoveriesRequest *req = (const void *)msg;
    kms_err rc = KMS_OK;
    struct kms_recovery_record *rs = NULL;
    size_t n = 0;
    struct kms_recovery_msg *msgs = NULL;
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
        KMS_GUARD_GOTO(kms_recovery_refresh_expiry(call, &rs[i]), done);
        if (req->open_only && rs[i].state != KMS_RECOVERY_PENDING &&
            rs[i].state != KMS_RECOVERY_APPROVED)
            continue;
        /* Approvals are in GetRecovery; the list says how many are needed. */
        KMS_GUARD_GOTO(kms_recovery_msg_fill(&msgs[out], &rs[i], NULL, 0), done);
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
        kms_recovery_msg_release(&msgs[i]);
    free(msgs);
    free(mp);
    free(rs);
    return rc;
}

/* ---- ApproveRecovery -------------------------------------------------------------------- */

kms_err kms_rpc_approve_recovery(struct kms_call *call, const ProtobufCMessage *msg,
                                 struct kms_reply *reply)
{
    const Custos__V1__ApproveRecoveryRequest *req = (const void *)msg;
    struct kms_recovery_record r;
    struct kms_key_record k;
    bool counted = false;
    char stmt[KMS_RECOVERY_STMT_MAX];
    size_t stmt_len = 0;
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(req->signature.len >= 8 && req->signature.len <= KMS_RECOVERY_MAX_SIG, done,
                    KMS_ERR_INVALID_ARGUMENT,
                    "signature must be a DER ECDSA signature (8..%d bytes)", KMS_RECOVERY_MAX_SIG);
    KMS_GUARD_GOTO(
        kms_recovery_load(call, POL_OP_APPROVE_RECOVERY, req->recovery_id, &r, &k, NULL, NULL),
        done);
    /* The evidence first: a refused approval is audited with it too. */
    KMS_GUARD_GOTO(kms_recovery_statement(&r, stmt, sizeof(stmt), &stmt_len), done);
    kms_recovery_audit_statement(call, stmt, stmt_len, false);
    kms_recovery_audit_approval(call, pol_principal_officer_key(call->who), req->signature.data,
                                req->signature.len);
    KMS_RECOVERY_REFUSE_GOTO(
        "expiry", r.state != KMS_RECOVERY_EXPIRED, done, KMS_ERR_FAILED_PRECONDITION,
        "recovery expired at %" PRId64 "; its approvals are worthless", r.expires_at);
    KMS_RECOVERY_REFUSE_GOTO("state", r.state == KMS_RECOVERY_PENDING, done,
                             KMS_ERR_FAILED_PRECONDITION,
                             "recovery is %s; approvals are taken while it is PENDING_APPROVAL",
                             kms_recovery_state_name(r.state));
    /* Two people at least: the one who asks never approves. */
    KMS_RECOVERY_REFUSE_GOTO(
        "requester", strcmp(r.requester, pol_principal_id(call->who)) != 0, done,
        KMS_ERR_PERMISSION_DENIED,
        "you requested this recovery; the requester's approval does not count");
    rc = kms_recovery_verify(pol_principal_officer_key(call->who), stmt, stmt_len,
                             req->signature.data, req->signature.len);
    if (rc != KMS_OK) {
        call->audit.rule = "signature";
        kms_recovery_note(call, "recovery %s: invalid approval signature%s", r.recovery_id, NULL);
        goto done;
    }
    KMS_GUARD_GOTO(kms_store_recovery_approve(kms_service_store(call->svc), r.recovery_id,
                                              pol_principal_id(call->who), req->signature.data,
                                              req->signature.len, kms_recovery_now(), &counted),
                   done);
    kms_recovery_note(call,
                      counted ? "recovery %s approved%s"
                              : "recovery %s: duplicate approval, counted once%s",
                      r.recovery_id, NULL);
    rc = kms_recovery_reply(call, r.recovery_id, &custos__v1__approve_recovery_response__descriptor,
                            counted, reply);
done:
    return rc;
}

/* ---- CancelRecovery --------------------------------------------------------------------- */

kms_err kms_rpc_cancel_recovery(struct kms_call *call, const ProtobufCMessage *msg,
                                struct kms_reply *reply)
{
    const Custos__V1__CancelRecoveryRequest *req = (const void *)msg;
    struct kms_recovery_record r;
    struct kms_key_record k;
    kms_err rc = KMS_OK;
    KMS_ENSURE_GOTO(req->reason[0] == '\0' ||
                        kms_recovery_text_ok(req->reason, KMS_RECOVERY_TEXT_MAX),
                    done, KMS_ERR_INVALID_ARGUMENT,
                    "reason must be up to %d bytes of UTF-8 without control, format (bidi, "
                    "zero-width) or line separator characters",
                    KMS_RECOVERY_TEXT_MAX);
    KMS_GUARD_GOTO(
        kms_recovery_load(call, POL_OP_CANCEL_RECOVERY, req->recovery_id, &r, &k, NULL, NULL),
        done);
    KMS_RECOVERY_REFUSE_GOTO(
        "state", r.state == KMS_RECOVERY_PENDING || r.state == KMS_RECOVERY_APPROVED, done,
        KMS_ERR_FAILED_PRECONDITION, "recovery is %s; only an open one is cancelled",
        kms_recovery_state_name(r.state));
    KMS_GUARD_GOTO(kms_store_recovery_finish(kms_service_store(call->svc), r.recovery_id, r.state,
                                             KMS_RECOVERY_CANCELLED, kms_recovery_now(),
                                             pol_principal_id(call->who), req->reason),
                   done);
    kms_recovery_note(call, "recovery %s cancelled%s", r.recovery_id, NULL);
    rc = kms_recovery_reply(call, r.recovery_id, &custos__v1__cancel_recovery_response__descriptor,
                        false, reply);
done:
    return rc;
}
