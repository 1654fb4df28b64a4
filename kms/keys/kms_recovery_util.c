/*
 * kms_recovery_util.c - the steps EscrowService's handlers share
 * (kms_recovery_internal.h): the Recovery message, loading a recovery the
 * caller may see, lazy expiry, the audit evidence, the export recipient.
 */
#include "kms_recovery_internal.h"

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
#include "kms_sign.h"
#include "p11_crypto.h"
#include "p11_escrow.h"
#include "pol_eval.h"
#include "proto/escrow.pb-c.h"

int64_t kms_recovery_now(void)
{
    return (int64_t)time(NULL);
}

void kms_recovery_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* ---- the Recovery message ---------------------------------------------------- */

kms_err kms_recovery_msg_fill(struct kms_recovery_msg *rm, const struct kms_recovery_record *r,
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

void kms_recovery_msg_release(struct kms_recovery_msg *rm)
{
    free(rm->a);
    free(rm->ap);
    rm->a = NULL;
    rm->ap = NULL;
}


/* ---- shared steps ------------------------------------------------------------------ */

void kms_recovery_note(struct kms_call *call, const char *fmt, const char *id, const char *extra)
{
    snprintf(call->audit.detail, sizeof(call->audit.detail), fmt, id, extra ? extra : "");
}

/* The recovery id a request named, for its audit event: whatever the
 * caller sent, bounded and printable (a probe with junk stays readable). */
void kms_recovery_audit_id(struct kms_call *call, const char *id)
{
    size_t i = 0;
    for (; id && id[i] && i < sizeof(call->audit.recovery_id) - 1; i++)
        call->audit.recovery_id[i] = id[i] > 0x20 && id[i] < 0x7f ? id[i] : '?';
    call->audit.recovery_id[i] = '\0';
}

/* The statement's SHA-256 in the audit event (and, for RequestRecovery,
 * the statement itself): what every approval signs. */
void kms_recovery_audit_statement(struct kms_call *call, const char *stmt, size_t len, bool whole)
{
    uint8_t d[32];
    SHA256((const uint8_t *)stmt, len, d);
    kms_recovery_hex(d, sizeof(d), call->audit.statement_sha256);
    if (whole)
        snprintf(call->audit.statement, sizeof(call->audit.statement), "%s", stmt);
}

/* ApproveRecovery's evidence: the signature as sent and the fingerprint of
 * the officer key it is checked with, so that `openssl pkeyutl -verify`
 * repeats the check (docs/escrow-recovery.md). */
void kms_recovery_audit_approval(struct kms_call *call, EVP_PKEY *officer, const uint8_t *sig,
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
        kms_recovery_hex(d, sizeof(d), call->audit.officer_key_sha256);
    }
    OPENSSL_free(der);
}

/* An open recovery past its expiry becomes EXPIRED, with its own event. */
kms_err kms_recovery_refresh_expiry(struct kms_call *call, struct kms_recovery_record *r)
{
    if ((r->state != KMS_RECOVERY_PENDING && r->state != KMS_RECOVERY_APPROVED) ||
        kms_recovery_now() < r->expires_at)
        return KMS_OK;
    kms_err rc = kms_store_recovery_finish(kms_service_store(call->svc), r->recovery_id, r->state,
                                           KMS_RECOVERY_EXPIRED, kms_recovery_now(), NULL, NULL);
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
    kms_recovery_audit_id(&ev, r->recovery_id);
    KMS_GUARD(kms_audit_request(&ev, "RecoveryExpired", KMS_OK, detail, ""));
    kms_log_info("escrow", "recovery %s expired unexecuted", r->recovery_id);
    return KMS_OK;
}

/* Load a recovery visible to the caller and authorize op on its key. */
kms_err kms_recovery_load(struct kms_call *call, enum pol_op op, const char *id,
                    struct kms_recovery_record *r, struct kms_key_record *k,
                    struct kms_recovery_approval **appr, size_t *n_appr)
{
    /* Auditors see which id was probed, whatever the answer. */
    kms_recovery_audit_id(call, id);
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
        kms_recovery_note(call, "recovery %s%s", r->recovery_id, NULL);
        rc = kms_rpc_authorize_key(call, op, r->key_id, k);
    } else if (rc == KMS_ERR_NOT_FOUND) {
        snprintf(call->audit.detail, sizeof(call->audit.detail), "recovery %s does not exist",
                 call->audit.recovery_id);
    }
    if (rc == KMS_OK)
        rc = kms_recovery_refresh_expiry(call, r);
    if (rc != KMS_OK && appr) {
        free(*appr);
        *appr = NULL;
        *n_appr = 0;
    }
    return rc;
}

kms_err kms_recovery_reply(struct kms_call *call, const char *id,
                              const ProtobufCMessageDescriptor *desc, bool counted,
                              struct kms_reply *reply)
{
    struct kms_recovery_record r;
    struct kms_recovery_approval *appr = NULL;
    size_t n = 0;
    struct kms_recovery_msg rm = {0};
    KMS_GUARD(kms_store_recovery_get(kms_service_store(call->svc), id, &r, &appr, &n));
    kms_err rc = kms_recovery_msg_fill(&rm, &r, appr, n);
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
    kms_recovery_msg_release(&rm);
    free(appr);
    return rc;
}

/* EXPORT_WRAPPED: the recipient must be registered in advance, by policy,
 * for the key's own region. sha_hex receives the SHA-256 of its DER public
 * key; *out_der (may be NULL) the DER itself, freed with OPENSSL_free. */
kms_err kms_recovery_pick_recipient(struct kms_call *call, const struct pol_tenant *t,
                                    const char *id, const char *region, char sha_hex[65],
                                    unsigned char **out_der, size_t *out_len)
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
    kms_recovery_hex(d, sizeof(d), sha_hex);
    if (out_der) {
        *out_der = der;
        *out_len = (size_t)len;
    } else {
        OPENSSL_free(der);
    }
    return KMS_OK;
}

kms_err kms_recovery_escrow_list(struct kms_call *call, const struct kms_key_record *k,
                                 struct kms_escrow_record **out, size_t *out_n)
{
    struct kms_store *st = kms_service_store(call->svc);
    if (kms_key_spec_is_pair(k->spec))
        return kms_store_escrow_pair_list(st, k->key_id, out, out_n);
    return kms_store_escrow_list(st, k->key_id, out, out_n);
}
