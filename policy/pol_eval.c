/*
 * pol_eval.c - authorization decisions. The rules and their order are
 * documented in pol_eval.h and docs/policy.md; keep the three in step.
 */
#include "pol_eval.h"

#include <stdint.h>
#include <string.h>

#include "pol_doc_internal.h"

static kms_err decide(struct pol_decision *out, bool allowed, const char *rule, kms_err err)
{
    out->allowed = allowed;
    out->rule = rule;
    out->err = err;
    return err;
}

/* The client sees only these fixed messages: which rule refused goes to the
 * audit log, never to the caller, or it would tell a probing principal that
 * a key id exists in some other tenant. */
static kms_err deny(struct pol_decision *out, const char *rule, kms_err err)
{
    kms_err_set(err, "%s", err == KMS_ERR_NOT_FOUND ? "key not found" : "permission denied");
    return decide(out, false, rule, err);
}

static kms_err usage(struct pol_decision *out, const char *msg)
{
    kms_err_set(KMS_ERR_USAGE, "pol_decide: %s", msg);
    return decide(out, false, "usage", KMS_ERR_USAGE);
}

static bool from_doc(const struct pol_doc *doc, const struct pol_principal *p)
{
    uintptr_t first = (uintptr_t)doc->principals;
    uintptr_t end = (uintptr_t)(doc->principals + doc->n_principals);
    return (uintptr_t)p >= first && (uintptr_t)p < end;
}

/* Brokers (for keys) and auditors (for logs): home region or allowed_regions. */
static bool region_ok(const struct pol_principal *p, const char *region)
{
    if (strcmp(p->home_region, region) == 0)
        return true;
    for (size_t i = 0; i < p->n_regions; i++)
        if (strcmp(p->regions[i], region) == 0)
            return true;
    return false;
}

static bool grant_names(const struct pol_grant *g, const struct pol_principal *p)
{
    for (size_t i = 0; i < g->n_principals; i++)
        if (g->principals[i] == p)
            return true;
    return false;
}

/* Grants are sorted by key id: find the first one for key_id, or NULL. */
static const struct pol_grant *first_grant(const struct pol_tenant *t, const char *key_id)
{
    size_t lo = 0, hi = t->n_grants;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(t->grants[mid].key_id, key_id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n_grants && strcmp(t->grants[lo].key_id, key_id) == 0 ? &t->grants[lo] : NULL;
}

static kms_err check_grants(const struct pol_tenant *t, const struct pol_principal *p,
                            enum pol_op op, const char *key_id, struct pol_decision *out)
{
    const struct pol_grant *g = first_grant(t, key_id);
    if (g == NULL) /* no grant names the key: the role decides */
        return decide(out, true, "role", KMS_OK);
    for (const struct pol_grant *end = t->grants + t->n_grants;
         g < end && strcmp(g->key_id, key_id) == 0; g++) {
        if ((g->ops & (UINT64_C(1) << op)) && grant_names(g, p)) {
            out->grant_sid = g->sid;
            return decide(out, true, "grant", KMS_OK);
        }
    }
    return deny(out, "grant", KMS_ERR_PERMISSION_DENIED);
}

kms_err pol_decide(const struct pol_doc *doc, const struct pol_principal *p, enum pol_op op,
                   const struct pol_target *target, struct pol_decision *out)
{
    if (out == NULL)
        return kms_err_set(KMS_ERR_USAGE, "pol_decide: NULL decision");
    *out = (struct pol_decision){.allowed = false, .rule = "usage", .err = KMS_ERR_USAGE};
    if (doc == NULL || p == NULL || target == NULL || (unsigned)op >= POL_OP__COUNT)
        return usage(out, "NULL argument or unknown operation");
    if (!from_doc(doc, p))
        return usage(out, "principal does not belong to this document");

    const struct pol_tenant *t = p->tenant; /* NULL: global principal */
    enum pol_op_target scope = pol_op_target(op);

    if (scope == POL_TARGET_KEY) {
        if (target->key_id == NULL || target->tenant == NULL || target->region == NULL)
            return usage(out, "a key operation needs key_id, tenant and region");
        /* Before the role check, so that no operation can tell a key of
         * another tenant from a key that does not exist. */
        if (t == NULL || strcmp(target->tenant, t->id) != 0)
            return deny(out, "tenant", KMS_ERR_NOT_FOUND);
    } else if (scope == POL_TARGET_TENANT) {
        /* A NULL tenant is a caller without one (a global auditor or
         * operator asking for "its" keys): a refusal by the rules below
         * (role, then tenant), never a malformed call. */
        if (op == POL_OP_CREATE_KEY && target->region == NULL)
            return usage(out, "CreateKey needs a region");
    }

    if (!pol_role_allows(p->role, op))
        return deny(out, "role", KMS_ERR_PERMISSION_DENIED);

    /* Global principals reach this point only for their own (audit)
     * operations, which span tenants. */
    if (scope != POL_TARGET_KEY && t != NULL &&
        (target->tenant == NULL || strcmp(target->tenant, t->id) != 0))
        return deny(out, "tenant", KMS_ERR_PERMISSION_DENIED);
    if (scope == POL_TARGET_TENANT && t == NULL)
        return deny(out, "tenant", KMS_ERR_PERMISSION_DENIED);

    if (t != NULL && target->region != NULL && !pol_tenant_region_allowed(t, target->region))
        return deny(out, "residency.tenant_region", KMS_ERR_PERMISSION_DENIED);
    if (p->role == POL_ROLE_BROKER &&
        (target->region == NULL || !region_ok(p, target->region)))
        return deny(out, "residency.home_region", KMS_ERR_PERMISSION_DENIED);
    /* An audit trail stays in its region: an auditor reads the logs of its
     * home region and of its allowed_regions. A NULL region (listing audit
     * keys of every region) is allowed here; the caller asks again for
     * each region it would return. */
    if (p->role == POL_ROLE_AUDITOR && target->region != NULL && !region_ok(p, target->region))
        return deny(out, "residency.home_region", KMS_ERR_PERMISSION_DENIED);

    if (op == POL_OP_REQUEST_RECOVERY || op == POL_OP_APPROVE_RECOVERY ||
        op == POL_OP_EXECUTE_RECOVERY) {
        if (t == NULL || t->quorum_approvals == 0)
            return deny(out, "quorum", KMS_ERR_PERMISSION_DENIED);
        if (op == POL_OP_APPROVE_RECOVERY && !pol_tenant_is_quorum_officer(t, p))
            return deny(out, "quorum", KMS_ERR_PERMISSION_DENIED);
    }

    if (scope == POL_TARGET_KEY)
        return check_grants(t, p, op, target->key_id, out);
    return decide(out, true, "role", KMS_OK);
}

kms_err pol_decide_untyped_open(const struct pol_doc *doc, const struct pol_principal *p,
                                const struct pol_target *target, struct pol_decision *out)
{
    if (out == NULL)
        return kms_err_set(KMS_ERR_USAGE, "pol_decide_untyped_open: NULL decision");
    struct pol_decision a;
    kms_err rc = pol_decide(doc, p, POL_OP_DECRYPT, target, &a);
    if (rc == KMS_OK)
        rc = pol_decide(doc, p, POL_OP_DECRYPT_DATA_KEY, target, out);
    else
        *out = a;
    /* Refusals that do not depend on which of the two operations is asked
     * (tenant, role, residency) keep their rule; a grant that gives one
     * operation but not the other is this rule's case. */
    if (rc == KMS_OK || strcmp(out->rule, "grant") != 0)
        return rc;
    return deny(out, "ciphertext.format1", KMS_ERR_PERMISSION_DENIED);
}

kms_err pol_decide_re_encrypt(const struct pol_doc *doc, const struct pol_principal *p,
                              const char *src_region, const char *dst_region,
                              struct pol_decision *out)
{
    if (out == NULL)
        return kms_err_set(KMS_ERR_USAGE, "pol_decide_re_encrypt: NULL decision");
    *out = (struct pol_decision){.allowed = false, .rule = "usage", .err = KMS_ERR_USAGE};
    if (doc == NULL || p == NULL || src_region == NULL || dst_region == NULL)
        return usage(out, "NULL argument");
    if (!from_doc(doc, p))
        return usage(out, "principal does not belong to this document");
    if (strcmp(src_region, dst_region) == 0)
        return decide(out, true, "residency.re_encrypt", KMS_OK);
    if (p->tenant == NULL || !pol_tenant_re_encrypt_route(p->tenant, src_region, dst_region))
        return deny(out, "residency.re_encrypt", KMS_ERR_PERMISSION_DENIED);
    return decide(out, true, "residency.re_encrypt", KMS_OK);
}
