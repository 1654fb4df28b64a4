/*
 * pol_eval.h - authorization decisions against a policy document.
 *
 * Deny by default: a request is allowed only when every rule below passes.
 * Rules, in the order they are evaluated (docs/policy.md says the same):
 *
 *   "usage"                   the call itself is malformed (a caller bug)
 *   "tenant"                  key operations: the key belongs to another
 *                             tenant, or the principal has no tenant
 *                             -> KMS_ERR_NOT_FOUND, exactly like a missing key
 *   "role"                    the principal's role does not own the operation
 *   "tenant"                  other operations: the requested tenant is not
 *                             the principal's
 *   "residency.tenant_region" the region is not one of the tenant's
 *   "residency.home_region"   brokers: the region is neither the home region
 *                             nor in the principal's allowed_regions
 *   "quorum"                  recovery without a quorum in the tenant, or an
 *                             approval by an officer outside the quorum
 *   "grant"                   the key is named by grants of its tenant and
 *                             none grants this principal this operation
 *
 * Two further decisions refine one already allowed by pol_decide (below):
 *
 *   "ciphertext.format1"      Decrypt or DecryptDataKey of a ciphertext that
 *                             does not say which of them it is for (format 1)
 *                             without both operations on its key
 *   "residency.re_encrypt"    ReEncrypt from a key of one region to a key of
 *                             another that the tenant's
 *                             cross_region_re_encrypt does not name
 *
 * The tenant check on keys runs before the role check so that whatever
 * operation is tried, a key of another tenant answers exactly like a key that
 * does not exist. Callers must keep that true on their side: answer with the
 * same message and status as for a missing key, and never send the rule to
 * the client (it goes to the audit log).
 */
#ifndef POL_EVAL_H
#define POL_EVAL_H

#include <stdbool.h>

#include "kms_error.h"
#include "pol_doc.h"

/* What the operation acts on; pol_op_target() says which fields apply.
 * POL_TARGET_KEY:    key_id, tenant and region of the key (all required).
 *                    ReEncrypt is decided twice: for the source key and for
 *                    the destination key.
 * POL_TARGET_TENANT: tenant: the caller's own, NULL for a caller without
 *                    one (refused by "role" or "tenant", never "usage");
 *                    region required for CreateKey, NULL for "every
 *                    region" when listing.
 * POL_TARGET_REGION: region, NULL for every region; tenant NULL asks for the
 *                    whole log, which only a global auditor may read.
 * Fields that do not apply are ignored. */
struct pol_target {
    const char *key_id;
    const char *tenant;
    const char *region;
};

struct pol_decision {
    bool allowed;
    /* Static, stable string for the audit log. On refusal the rule that
     * refused (see above); on success "grant" when a grant allowed it,
     * otherwise "role". */
    const char *rule;
    /* KMS_OK when allowed; otherwise KMS_ERR_NOT_FOUND, KMS_ERR_PERMISSION_DENIED
     * or KMS_ERR_USAGE. */
    kms_err err;
    /* The sid of the grant that allowed the request, when it had one. Borrows
     * from the document. */
    const char *grant_sid;
};

/* Decide whether principal may perform op on target. principal must come
 * from doc (from one of its lookups). Always fills *out; returns out->err.
 * On refusal kms_err_detail() holds a client-safe message:
 * "key not found" for KMS_ERR_NOT_FOUND, "permission denied" for
 * KMS_ERR_PERMISSION_DENIED. */
kms_err pol_decide(const struct pol_doc *doc, const struct pol_principal *principal, enum pol_op op,
                   const struct pol_target *target, struct pol_decision *out);

/* A ciphertext of unknown kind (format 1, docs/ciphertext-format.md) may be
 * the output of Encrypt or of GenerateDataKey, so whoever opens one must be
 * allowed both Decrypt and DecryptDataKey on its key: otherwise a principal
 * granted only the data-key operations would read messages through
 * DecryptDataKey (or the reverse). target as for those operations. Refusal
 * by a grant that gives one of the two but not the other: rule
 * "ciphertext.format1", KMS_ERR_PERMISSION_DENIED; any other refusal
 * (tenant, role, residency) as pol_decide gives it. */
kms_err pol_decide_untyped_open(const struct pol_doc *doc, const struct pol_principal *principal,
                                const struct pol_target *target, struct pol_decision *out);

/* ReEncrypt moves data from a key in src_region to a key in dst_region; both
 * keys have already been decided by pol_decide (ReEncrypt on each). Within
 * one region it is allowed; across regions only when the principal's tenant
 * names the pair src_region -> dst_region in cross_region_re_encrypt. A
 * broker allowed in both regions is not enough: residency is the tenant's
 * decision about its data, not a broker's reach. Refusal: rule
 * "residency.re_encrypt", KMS_ERR_PERMISSION_DENIED. */
kms_err pol_decide_re_encrypt(const struct pol_doc *doc, const struct pol_principal *principal,
                              const char *src_region, const char *dst_region,
                              struct pol_decision *out);

#endif
