/*
 * audit_rpc.c - AuditService: signed heads, exports with proofs, audit keys.
 * Role auditor; a global auditor reads every region served here.
 */
#include <stdlib.h>
#include <string.h>

#include "audit_log.h"
#include "audit_proof_pb.h"
#include "audit_rpc.h"
#include "kms_log.h"
#include "pol_eval.h"
#include "proto/audit.pb-c.h"

#define EXPORT_DEFAULT 1000
#define EXPORT_MAX 10000

/* Decide op on region and find its log. */
static kms_err region_log(struct kms_call *call, enum pol_op op, const char *region,
                          struct audit_log **out)
{
    struct pol_target t = {NULL, NULL, region && *region ? region : NULL};
    struct pol_decision d;
    if (region && *region)
        kms_rpc_audit_key(call, NULL, region, NULL);
    kms_err rc = pol_decide(call->policy, call->who, op, &t, &d);
    call->audit.rule = d.rule;
    KMS_GUARD(rc);
    if (out == NULL)
        return KMS_OK;
    KMS_ENSURE(region && *region, KMS_ERR_INVALID_ARGUMENT, "region is required");
    /* A region whose log failed the start-up scan has heads nobody may
     * rely on: unavailable (as for its keys), not "no such log". */
    KMS_GUARD(kms_service_region_check(call->svc, region));
    *out = kms_service_audit_log(call->svc, region);
    KMS_ENSURE(*out != NULL, KMS_ERR_NOT_FOUND, "no audit log for region %.63s on this node",
               region);
    return KMS_OK;
}

/* The auditor's alarm: a head they hold (known_tree_size) is larger than
 * the newest signed head here, so this log is shorter than one they have
 * seen: rolled back (an old copy restored) or forked. failed_precondition,
 * checked before anything else about the request, so that no other
 * complaint (a start beyond the tree, say) hides it. */
static kms_err rollback_check(const char *region, uint64_t known, uint64_t size)
{
    KMS_ENSURE(known <= size, KMS_ERR_FAILED_PRECONDITION,
               "the log of region %.63s is shorter than a head you already hold: its newest "
               "signed head has tree_size %llu, yours %llu (known_tree_size): it was rolled "
               "back or forked",
               region, (unsigned long long)size, (unsigned long long)known);
    return KMS_OK;
}

kms_err kms_rpc_get_signed_tree_head(struct kms_call *call, const ProtobufCMessage *msg,
                                     struct kms_reply *reply)
{
    const Custos__V1__GetSignedTreeHeadRequest *req = (const void *)msg;
    struct audit_log *log = NULL;
    uint8_t *head = NULL;
    size_t head_len = 0;
    kms_err rc = region_log(call, POL_OP_GET_SIGNED_TREE_HEAD, req->region, &log);
    if (rc == KMS_OK)
        rc = audit_log_head(log, &head, &head_len);
    if (rc == KMS_OK) {
        Custos__V1__SignedTreeHead *sth =
            custos__v1__signed_tree_head__unpack(NULL, head_len, head);
        if (sth == NULL) {
            rc = kms_err_set(KMS_ERR_INTERNAL, "stored head does not decode");
        } else if ((rc = rollback_check(req->region, req->known_tree_size, sth->tree_size)) !=
                   KMS_OK) {
            custos__v1__signed_tree_head__free_unpacked(sth, NULL);
        } else {
            Custos__V1__GetSignedTreeHeadResponse resp =
                CUSTOS__V1__GET_SIGNED_TREE_HEAD_RESPONSE__INIT;
            resp.head = sth;
            rc = kms_rpc_pack(&resp.base, reply);
            custos__v1__signed_tree_head__free_unpacked(sth, NULL);
        }
    }
    free(head);
    return rc;
}

kms_err kms_rpc_export_audit_log(struct kms_call *call, const ProtobufCMessage *msg,
                                 struct kms_reply *reply)
{
    const Custos__V1__ExportAuditLogRequest *req = (const void *)msg;
    struct audit_log *log = NULL;
    uint8_t *head = NULL;
    size_t head_len = 0, n = 0;
    Custos__V1__SignedTreeHead *sth = NULL;
    Custos__V1__AuditEntry *entries = NULL;
    Custos__V1__AuditEntry **ep = NULL;
    Custos__V1__ExportAuditLogResponse resp = CUSTOS__V1__EXPORT_AUDIT_LOG_RESPONSE__INIT;
    kms_err rc = region_log(call, POL_OP_EXPORT_AUDIT_LOG, req->region, &log);
    if (rc != KMS_OK)
        goto done;
    KMS_ENSURE_GOTO(req->count <= EXPORT_MAX, done, KMS_ERR_INVALID_ARGUMENT,
                    "count must be 0..%d", EXPORT_MAX);
    KMS_GUARD_GOTO(audit_log_head(log, &head, &head_len), done);
    sth = custos__v1__signed_tree_head__unpack(NULL, head_len, head);
    KMS_ENSURE_GOTO(sth != NULL, done, KMS_ERR_INTERNAL, "stored head does not decode");
    uint64_t size = sth->tree_size;
    /* First: an auditor resuming from a larger head (kmsctl --known-state
     * starts where it verified, beyond this tree) must get the alarm, not
     * "start is beyond the tree" (issue 14). */
    KMS_GUARD_GOTO(rollback_check(req->region, req->known_tree_size, size), done);
    KMS_ENSURE_GOTO(req->start <= size, done, KMS_ERR_INVALID_ARGUMENT,
                    "start %llu is beyond the signed tree size %llu",
                    (unsigned long long)req->start, (unsigned long long)size);
    uint64_t want = req->count ? req->count : EXPORT_DEFAULT;
    n = (size_t)(size - req->start < want ? size - req->start : want);
    entries = calloc(n ? n : 1, sizeof(*entries));
    ep = calloc(n ? n : 1, sizeof(*ep));
    KMS_ENSURE_GOTO(entries && ep, done, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        custos__v1__audit_entry__init(&entries[i]);
        ep[i] = &entries[i];
        uint64_t seq = req->start + i;
        entries[i].seq = seq;
        KMS_GUARD_GOTO(audit_log_read(log, seq, &entries[i].event.data, &entries[i].event.len),
                       done);
        if (req->inclusion_proofs) {
            audit_hash p[AUDIT_PROOF_MAX];
            size_t np = 0;
            KMS_GUARD_GOTO(audit_tree_inclusion(audit_log_tree(log), seq, size, p, &np), done);
            KMS_GUARD_GOTO(audit_proof_pb(p, np, &entries[i].n_inclusion_proof,
                                       &entries[i].inclusion_proof),
                           done);
        }
    }
    if (req->known_tree_size > 0 && req->known_tree_size < size) {
        audit_hash p[AUDIT_PROOF_MAX];
        size_t np = 0;
        KMS_GUARD_GOTO(audit_tree_consistency(audit_log_tree(log), req->known_tree_size, size, p,
                                              &np),
                       done);
        KMS_GUARD_GOTO(audit_proof_pb(p, np, &resp.n_consistency_proof, &resp.consistency_proof),
                       done);
    }
    resp.head = sth;
    resp.n_entries = n;
    resp.entries = ep;
    resp.known_tree_size = req->known_tree_size;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    for (size_t i = 0; entries && i < n; i++) {
        free(entries[i].event.data);
        audit_proof_pb_free(entries[i].inclusion_proof, entries[i].n_inclusion_proof);
    }
    audit_proof_pb_free(resp.consistency_proof, resp.n_consistency_proof);
    free(entries);
    free(ep);
    if (sth)
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    free(head);
    return rc;
}

kms_err kms_rpc_get_audit_keys(struct kms_call *call, const ProtobufCMessage *msg,
                               struct kms_reply *reply)
{
    const Custos__V1__GetAuditKeysRequest *req = (const void *)msg;
    Custos__V1__AuditKey **all = NULL;
    size_t n_all = 0;
    kms_err rc = region_log(call, POL_OP_GET_AUDIT_KEYS, req->region, NULL);
    const struct kms_config *cfg = kms_service_config(call->svc);
    for (size_t t = 0; rc == KMS_OK && t < cfg->n_tokens; t++) {
        const char *region = cfg->tokens[t].region;
        if (*req->region && strcmp(req->region, region) != 0)
            continue;
        /* Listing every region: only those this auditor may read. */
        struct pol_target rt = {NULL, NULL, region};
        struct pol_decision rd;
        if (pol_decide(call->policy, call->who, POL_OP_GET_AUDIT_KEYS, &rt, &rd) != KMS_OK)
            continue;
        struct audit_log *log = kms_service_audit_log(call->svc, region);
        if (log == NULL)
            continue;
        Custos__V1__AuditKey **keys = NULL;
        size_t n = 0;
        rc = audit_log_keys(log, &keys, &n);
        if (rc != KMS_OK)
            break;
        Custos__V1__AuditKey **grown = realloc(all, (n_all + n + 1) * sizeof(*grown));
        if (grown == NULL) {
            audit_log_keys_free(keys, n);
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
            break;
        }
        all = grown;
        memcpy(all + n_all, keys, n * sizeof(*keys));
        n_all += n;
        free(keys);
    }
    if (rc == KMS_OK && *req->region && n_all == 0)
        rc = kms_service_region_check(call->svc, req->region);
    if (rc == KMS_OK && *req->region && n_all == 0)
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "no audit log for region %.63s on this node",
                         req->region);
    if (rc == KMS_OK) {
        Custos__V1__GetAuditKeysResponse resp = CUSTOS__V1__GET_AUDIT_KEYS_RESPONSE__INIT;
        resp.n_keys = n_all;
        resp.keys = all;
        rc = kms_rpc_pack(&resp.base, reply);
    }
    audit_log_keys_free(all, n_all);
    return rc;
}
