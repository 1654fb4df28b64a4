/*
 * audit_event.c - one audit event per request (see audit_event.h).
 */
#include "audit_event.h"

#include <string.h>

#include "audit_log.h"
#include "kms_log.h"
#include "kms_service.h"
#include "pol_doc.h"

const char *kms_audit_region(const struct kms_call *call)
{
    struct kms_service *svc = call->svc;
    const char *region = call->audit.region;
    if (region[0] && kms_service_token(svc, region) != NULL)
        return region;
    region = call->who ? pol_principal_home_region(call->who) : NULL;
    if (region && region[0] && kms_service_token(svc, region) != NULL)
        return region;
    return NULL;
}

/* Build the event of a request and queue it in its region's log: waiting
 * for it when fn is NULL, else handing fn the outcome. */
static kms_err audit_request(struct kms_call *call, const char *operation, kms_err outcome,
                             const char *detail, const char *correlation_id, audit_done_fn fn,
                             void *arg, bool *queued)
{
    *queued = false;
    struct kms_service *svc = call->svc;
    const struct kms_audit_facts *f = &call->audit;
    const char *region = kms_audit_region(call);
    /* The event of a region whose log was refused at start is never
     * written elsewhere: the audit trail stays in its region, so the
     * request fails, and the operational log is its only record. */
    if (region && kms_service_region_check(svc, region) != KMS_OK) {
        kms_log_warn("audit",
                     "request %s %s by %s%s%s (would have been %s) refused unavailable and NOT "
                     "AUDITED: its audit region %s is not served",
                     call->request_id, operation,
                     call->who ? pol_principal_id(call->who) : call->actor ? call->actor : "-",
                     f->key_id[0] ? " on key " : "", f->key_id,
                     outcome == KMS_OK ? "ok" : kms_err_twirp_code(outcome), region);
        return kms_err_set(KMS_ERR_HSM_UNAVAILABLE,
                           "region %s is not served: its audit log failed the start-up check",
                           region);
    }
    /* The first region whose log is served: kms_service_audit_default
     * skips a region refused at start. */
    struct audit_log *log =
        region ? kms_service_audit_log(svc, region) : kms_service_audit_default(svc);
    if (log == NULL)
        return KMS_OK; /* audit is off (dev mode only) */

    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    char *empty = (char *)"";
    ev.request_id = call->request_id;
    ev.principal = call->who      ? (char *)pol_principal_id(call->who)
                   : call->actor ? (char *)call->actor
                                 : empty;
    ev.role = call->who      ? (char *)pol_role_name(pol_principal_role(call->who))
              : call->actor ? (char *)"system"
                            : empty;
    const char *tenant = call->who ? pol_principal_tenant_id(call->who) : call->tenant;
    ev.tenant = tenant ? (char *)tenant : empty;
    ev.operation = (char *)operation;
    ev.key_id = (char *)f->key_id;
    ev.key_version = f->key_version;
    ev.token = (char *)f->token;
    ev.outcome = outcome == KMS_OK ? (char *)"ok" : (char *)kms_err_twirp_code(outcome);
    ev.rule = f->rule ? (char *)f->rule : empty;
    ev.correlation_id = correlation_id ? (char *)correlation_id : empty;
    ev.policy_sha256 = call->policy ? (char *)pol_doc_digest_hex(call->policy) : empty;
    ev.detail = detail ? (char *)detail : empty;
    ev.recovery_id = (char *)f->recovery_id;
    ev.statement = (char *)f->statement;
    ev.statement_sha256 = (char *)f->statement_sha256;
    ev.approval_signature.data = (uint8_t *)f->approval_signature;
    ev.approval_signature.len = f->approval_signature_len;
    ev.officer_key_sha256 = (char *)f->officer_key_sha256;
    /* Only beside the rule it explains: a check after the policy (e.g.
     * rule "state") decided this request, not the grant. */
    ev.grant_sid = f->rule && strcmp(f->rule, "grant") == 0 ? (char *)f->grant_sid : empty;
    Custos__V1__XksRequestMetadata xks = CUSTOS__V1__XKS_REQUEST_METADATA__INIT;
    if (call->xks != NULL) {
        const struct kms_xks_metadata *m = call->xks;
        xks.kms_request_id = (char *)m->kms_request_id;
        xks.kms_operation = (char *)m->kms_operation;
        xks.aws_principal_arn = (char *)m->aws_principal_arn;
        xks.kms_key_arn = (char *)m->kms_key_arn;
        xks.kms_via_service = (char *)m->kms_via_service;
        xks.aws_source_vpc = (char *)m->aws_source_vpc;
        xks.aws_source_vpce = (char *)m->aws_source_vpce;
        ev.xks = &xks;
    }
    if (fn == NULL)
        return audit_log_append(log, &ev);
    kms_err rc = audit_log_submit(log, &ev, fn, arg);
    *queued = rc == KMS_OK;
    return rc;
}

kms_err kms_audit_request(struct kms_call *call, const char *operation, kms_err outcome,
                          const char *detail, const char *correlation_id)
{
    bool queued;
    return audit_request(call, operation, outcome, detail, correlation_id, NULL, NULL, &queued);
}

kms_err kms_audit_request_submit(struct kms_call *call, const char *operation, kms_err outcome,
                                 const char *detail, const char *correlation_id,
                                 audit_done_fn fn, void *arg, bool *queued)
{
    return audit_request(call, operation, outcome, detail, correlation_id, fn, arg, queued);
}
