/*
 * kms_call.c - what every handler shares (kms_call.h): packing a reply,
 * authorizing a key or a tenant operation, recording the audit facts.
 */
#include "kms_call.h"

#include <stdio.h>
#include <stdlib.h>

#include "kms_keycache.h"
#include "kms_keyid.h"
#include "kms_log.h"
#include "kms_store.h"
#include "pol_eval.h"

kms_err kms_rpc_pack(const ProtobufCMessage *m, struct kms_reply *r)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    r->data = malloc(n ? n : 1);
    KMS_ENSURE(r->data != NULL, KMS_ERR_NOMEM, "out of memory");
    r->len = protobuf_c_message_pack(m, r->data);
    return KMS_OK;
}

kms_err kms_rpc_pack_secret(const ProtobufCMessage *m, struct kms_reply *r)
{
    r->secret = true;
    return kms_rpc_pack(m, r);
}

void kms_rpc_audit_key(struct kms_call *call, const char *key_id, const char *region,
                       const char *token)
{
    if (key_id)
        snprintf(call->audit.key_id, sizeof(call->audit.key_id), "%s", key_id);
    if (region)
        snprintf(call->audit.region, sizeof(call->audit.region), "%s", region);
    if (token)
        snprintf(call->audit.token, sizeof(call->audit.token), "%s", token);
}

kms_err kms_rpc_authorize_key(struct kms_call *call, enum pol_op op, const char *key_id,
                              struct kms_key_record *out_key)
{
    uint8_t raw[16];
    KMS_GUARD(kms_key_id_parse(key_id, raw));
    kms_err rc = kms_keycache_key(kms_service_keycache(call->svc), kms_service_store(call->svc),
                                  key_id, out_key);
    if (rc == KMS_ERR_NOT_FOUND) {
        /* Auditors see which ids were probed; the caller learns nothing. */
        kms_rpc_audit_key(call, key_id, NULL, NULL);
        return kms_err_set(KMS_ERR_NOT_FOUND, "key not found");
    }
    KMS_GUARD(rc);
    /* The facts first: the refusal of a region that is not served is an
     * event of that region (so it is never written to another region's
     * log), and the caller is told which region. */
    kms_rpc_audit_key(call, out_key->key_id, out_key->region, out_key->token);
    KMS_GUARD(kms_service_region_check(call->svc, out_key->region));
    struct pol_target t = {out_key->key_id, out_key->tenant, out_key->region};
    struct pol_decision d;
    rc = pol_decide(call->policy, call->who, op, &t, &d);
    /* The audit event names the key even when the tenant rule refused it:
     * the auditor may see what the caller may not. */
    kms_rpc_audit_key(call, out_key->key_id, out_key->region, out_key->token);
    call->audit.rule = d.rule;
    /* Which grant allowed it (docs/policy.md): follows the rule, so a later
     * decision of the same request (ReEncrypt's destination) replaces it. */
    snprintf(call->audit.grant_sid, sizeof(call->audit.grant_sid), "%s",
             rc == KMS_OK && d.grant_sid ? d.grant_sid : "");
    if (rc != KMS_OK)
        kms_log_info("policy", "request %s: %s on key %s refused by rule %s", call->request_id,
                     pol_op_name(op), key_id, d.rule);
    return rc;
}

kms_err kms_rpc_authorize_tenant(struct kms_call *call, enum pol_op op, const char *region)
{
    /* The caller's own tenant is the only one a tenant operation may name;
     * NULL for a global principal, which the policy refuses (role). */
    struct pol_target t = {NULL, pol_principal_tenant_id(call->who), region};
    struct pol_decision d;
    kms_err rc = pol_decide(call->policy, call->who, op, &t, &d);
    if (region)
        kms_rpc_audit_key(call, NULL, region, NULL);
    call->audit.rule = d.rule;
    if (rc != KMS_OK)
        kms_log_info("policy", "request %s: %s%s%s refused by rule %s", call->request_id,
                     pol_op_name(op), region ? " in " : "", region ? region : "", d.rule);
    return rc;
}
