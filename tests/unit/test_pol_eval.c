/*
 * test_pol_eval.c - authorization decisions (policy/pol_eval.c): each rule,
 * its order, cross-tenant answers, and misuse of the API.
 *
 * The document is the fixture (tests/unit/pol_fixture.h) plus acme-officer-4,
 * an officer of acme who is not in its quorum. Keys named "orders" in acme
 * have grants; every other key falls back to role-based access.
 */
#include <pthread.h>

#include "kms_twirp.h"
#include "pol_eval.h"
#include "pol_fixture.h"

static struct pol_doc *doc;

static void setup(void)
{
    json_t *d = base();
    json_array_append_new(at(d, "tenants[0].principals"),
                          jq("{'id': 'acme-officer-4', 'role': 'officer', 'home_region': 'us-east',"
                             " 'cert_subject': 'CN=acme-officer-4,O=Acme'}"));
    set(d, "tenants[0].principals[7]", "public_key_pem", json_string(P256[4]));
    /* "wraps": acme-broker may only make and unwrap data keys with it. */
    json_array_append_new(at(d, "tenants[0].grants"),
                          jq("{'key_id': 'wraps', 'principals': ['acme-broker', 'acme-broker-x'],"
                             " 'operations': ['GenerateDataKey', 'DecryptDataKey']}"));
    json_array_append_new(at(d, "tenants[0].grants"),
                          jq("{'key_id': 'wraps', 'principals': ['acme-broker-x'],"
                             " 'operations': ['Decrypt']}"));
    set(d, "tenants[0]", "cross_region_re_encrypt", jq("[{'from': 'eu-west', 'to': 'us-east'}]"));
    kms_err rc = load(d, &doc);
    ck_assert_msg(rc == KMS_OK, "eval document: %s", kms_err_detail());
}

static void teardown(void)
{
    pol_doc_unref(doc);
    doc = NULL;
}

static struct pol_decision decide(const char *who, enum pol_op op, const char *key_id,
                                  const char *tenant, const char *region)
{
    const struct pol_principal *p = pol_doc_principal(doc, who);
    ck_assert_msg(p != NULL, "no principal %s", who);
    struct pol_target target = {.key_id = key_id, .tenant = tenant, .region = region};
    struct pol_decision d;
    kms_err rc = pol_decide(doc, p, op, &target, &d);
    ck_assert_int_eq(rc, d.err);
    ck_assert_int_eq(d.allowed, rc == KMS_OK);
    return d;
}

static const char *dash(const char *s)
{
    return s != NULL ? s : "-";
}

/* Macros rather than functions so that a failure names the caller's line. */
#define EXPECT(who, op, key, tenant, region, want_allowed, want_rule, want_err)                    \
    do {                                                                                           \
        struct pol_decision d_ = decide((who), (op), (key), (tenant), (region));                   \
        ck_assert_msg(d_.allowed == (want_allowed) && strcmp(d_.rule, (want_rule)) == 0 &&         \
                          d_.err == (want_err),                                                    \
                      "%s %s %s/%s/%s: got %s rule %s %s", (who), pol_op_name(op), dash(key),      \
                      dash(tenant), dash(region), d_.allowed ? "allow" : "deny", d_.rule,          \
                      kms_strerror(d_.err));                                                       \
    } while (0)
#define ALLOW(who, op, key, tenant, region, rule)                                                  \
    EXPECT(who, op, key, tenant, region, true, rule, KMS_OK)
#define DENY(who, op, key, tenant, region, rule)                                                   \
    EXPECT(who, op, key, tenant, region, false, rule, KMS_ERR_PERMISSION_DENIED)
#define NOT_FOUND(who, op, key, tenant, region)                                                    \
    EXPECT(who, op, key, tenant, region, false, "tenant", KMS_ERR_NOT_FOUND)

/* ---- role ---------------------------------------------------------------- */

/* Every principal against every operation, on a target it could otherwise
 * use: only its role's operations pass. */
START_TEST(test_role_matrix)
{
    static const char *const who[] = {"acme-broker",  "acme-admin", "acme-officer-1",
                                      "acme-auditor", "auditor",    "operator"};
    for (size_t w = 0; w < sizeof(who) / sizeof(who[0]); w++) {
        const struct pol_principal *p = pol_doc_principal(doc, who[w]);
        bool global = pol_principal_tenant(p) == NULL;
        for (int o = 0; o < POL_OP__COUNT; o++) {
            enum pol_op op = (enum pol_op)o;
            /* As the handlers ask: a key's own tenant; for tenant
             * operations the caller's own, NULL for a global principal
             * (which must be refused, never a "usage" error). */
            const char *tenant = global ? "acme" : pol_principal_tenant_id(p);
            if (pol_op_target(op) != POL_TARGET_KEY && global)
                tenant = NULL;
            if (pol_op_target(op) == POL_TARGET_KEY && global)
                NOT_FOUND(who[w], op, "k1", tenant, "eu-west");
            else if (pol_role_allows(pol_principal_role(p), op))
                ALLOW(who[w], op, "k1", tenant, "eu-west", "role");
            else
                DENY(who[w], op, "k1", tenant, "eu-west", "role");
        }
    }
    /* Spot checks that the matrix above is not vacuous. */
    ALLOW("acme-broker", POL_OP_BLIND_INDEX, "k1", "acme", "eu-west", "role");
    DENY("acme-broker", POL_OP_CREATE_KEY, NULL, "acme", "eu-west", "role");
    DENY("acme-admin", POL_OP_DECRYPT, "k1", "acme", "eu-west", "role");
    DENY("acme-officer-1", POL_OP_DISABLE_KEY, "k1", "acme", "eu-west", "role");
    DENY("operator", POL_OP_GET_SIGNED_TREE_HEAD, NULL, NULL, "eu-west", "role");
    DENY("operator", POL_OP_LIST_KEYS, NULL, "acme", NULL, "role");
    /* A global principal has no tenant to name: the role refuses it. */
    DENY("auditor", POL_OP_CREATE_KEY, NULL, NULL, "eu-west", "role");
    DENY("auditor", POL_OP_LIST_KEYS, NULL, NULL, NULL, "role");
    DENY("operator", POL_OP_LIST_RECOVERIES, NULL, NULL, NULL, "role");
}
END_TEST

/* ---- tenant -------------------------------------------------------------- */

START_TEST(test_tenant)
{
    NOT_FOUND("acme-broker", POL_OP_ENCRYPT, "k1", "globex", "eu-west");
    NOT_FOUND("acme-broker", POL_OP_DECRYPT, "k1", "ACME", "eu-west");
    NOT_FOUND("globex-broker", POL_OP_DECRYPT_DATA_KEY, "orders", "acme", "eu-west");
    NOT_FOUND("acme-admin", POL_OP_DESCRIBE_KEY, "k1", "globex", "eu-west");
    NOT_FOUND("acme-admin", POL_OP_SCHEDULE_KEY_DELETION, "k1", "no-such-tenant", "eu-west");
    NOT_FOUND("acme-officer-1", POL_OP_REQUEST_RECOVERY, "k1", "globex", "eu-west");
    /* Even an operation the role does not own: a key of another tenant looks
     * missing, never forbidden, so key ids cannot be probed across tenants. */
    NOT_FOUND("acme-admin", POL_OP_ENCRYPT, "k1", "globex", "eu-west");
    NOT_FOUND("acme-broker", POL_OP_ROTATE_KEY, "k1", "globex", "eu-west");
    NOT_FOUND("acme-auditor", POL_OP_DESCRIBE_KEY, "k1", "globex", "eu-west");
    /* Global principals own no key: every key is outside their tenant. */
    NOT_FOUND("auditor", POL_OP_DESCRIBE_KEY, "k1", "acme", "eu-west");
    NOT_FOUND("operator", POL_OP_ENCRYPT, "k1", "acme", "eu-west");
    NOT_FOUND("operator", POL_OP_ENABLE_KEY, "k1", "globex", "eu-west");

    /* Operations on a tenant rather than a key are refused outright. */
    DENY("acme-admin", POL_OP_CREATE_KEY, NULL, "globex", "eu-west", "tenant");
    DENY("acme-admin", POL_OP_LIST_KEYS, NULL, "globex", NULL, "tenant");
    DENY("acme-officer-1", POL_OP_LIST_RECOVERIES, NULL, "globex", NULL, "tenant");
    ALLOW("acme-admin", POL_OP_CREATE_KEY, NULL, "acme", "us-east", "role");
    ALLOW("acme-admin", POL_OP_LIST_KEYS, NULL, "acme", NULL, "role");
}
END_TEST

START_TEST(test_not_found_is_indistinguishable)
{
    /* The detail a client may see is the same fixed text for a key of
     * another tenant as kmsd uses for a missing key, and the Twirp code is
     * not_found; the rule goes only to the audit log. */
    struct pol_decision d = decide("acme-admin", POL_OP_ENCRYPT, "k1", "globex", "eu-west");
    ck_assert_int_eq(d.err, KMS_ERR_NOT_FOUND);
    ck_assert_str_eq(kms_err_detail(), "key not found");
    ck_assert_str_eq(kms_err_twirp_code(d.err), "not_found");
    ck_assert_int_eq(kms_twirp_http_status(d.err), 404);
    ck_assert_ptr_null(d.grant_sid);

    d = decide("acme-admin", POL_OP_ENCRYPT, "k1", "acme", "eu-west");
    ck_assert_int_eq(d.err, KMS_ERR_PERMISSION_DENIED);
    ck_assert_str_eq(kms_err_detail(), "permission denied");
    ck_assert_str_eq(kms_err_twirp_code(d.err), "permission_denied");
    ck_assert_int_eq(kms_twirp_http_status(d.err), 403);
}
END_TEST

/* ---- residency ----------------------------------------------------------- */

START_TEST(test_residency_tenant_region)
{
    DENY("acme-admin", POL_OP_DESCRIBE_KEY, "k1", "acme", "ap-south", "residency.tenant_region");
    DENY("acme-admin", POL_OP_CREATE_KEY, NULL, "acme", "ap-south", "residency.tenant_region");
    ALLOW("acme-admin", POL_OP_CREATE_KEY, NULL, "acme", "eu-west", "role");
    ALLOW("acme-admin", POL_OP_CREATE_KEY, NULL, "acme", "us-east", "role");
    DENY("acme-admin", POL_OP_LIST_KEYS, NULL, "acme", "ap-south", "residency.tenant_region");
    ALLOW("acme-admin", POL_OP_LIST_KEYS, NULL, "acme", "eu-west", "role");
    DENY("acme-officer-1", POL_OP_REQUEST_RECOVERY, "k1", "acme", "ap-south",
         "residency.tenant_region");
    DENY("acme-officer-1", POL_OP_LIST_RECOVERIES, NULL, "acme", "ap-south",
         "residency.tenant_region");
    /* globex lives in eu-west only. */
    DENY("globex-broker", POL_OP_ENCRYPT, "k1", "globex", "us-east", "residency.tenant_region");
    ALLOW("globex-broker", POL_OP_ENCRYPT, "k1", "globex", "eu-west", "role");
    /* Region names are exact. */
    DENY("acme-admin", POL_OP_DESCRIBE_KEY, "k1", "acme", "EU-WEST", "residency.tenant_region");
}
END_TEST

START_TEST(test_residency_home_region)
{
    DENY("acme-broker", POL_OP_ENCRYPT, "k1", "acme", "us-east", "residency.home_region");
    DENY("acme-broker", POL_OP_GENERATE_DATA_KEY, "k1", "acme", "us-east", "residency.home_region");
    ALLOW("acme-broker", POL_OP_ENCRYPT, "k1", "acme", "eu-west", "role");
    /* allowed_regions lets this broker reach us-east as well. */
    ALLOW("acme-broker-x", POL_OP_ENCRYPT, "k1", "acme", "us-east", "role");
    ALLOW("acme-broker-x", POL_OP_DECRYPT, "k1", "acme", "eu-west", "role");
    /* Only brokers are bound to their home region. */
    ALLOW("acme-admin", POL_OP_ROTATE_KEY, "k1", "acme", "us-east", "role");
    ALLOW("acme-officer-1", POL_OP_REQUEST_RECOVERY, "k1", "acme", "us-east", "role");
}
END_TEST

/* ---- quorum -------------------------------------------------------------- */

START_TEST(test_quorum)
{
    static const enum pol_op recovery[] = {
        POL_OP_REQUEST_RECOVERY, POL_OP_APPROVE_RECOVERY, POL_OP_EXECUTE_RECOVERY,
        POL_OP_CANCEL_RECOVERY,  POL_OP_GET_RECOVERY,
    };
    for (size_t i = 0; i < sizeof(recovery) / sizeof(recovery[0]); i++)
        ALLOW("acme-officer-2", recovery[i], "k1", "acme", "eu-west", "role");
    /* An officer outside the quorum may ask, but its approval is refused. */
    ALLOW("acme-officer-4", POL_OP_REQUEST_RECOVERY, "k1", "acme", "eu-west", "role");
    DENY("acme-officer-4", POL_OP_APPROVE_RECOVERY, "k1", "acme", "eu-west", "quorum");
    /* globex has no quorum: nothing can be recovered there. */
    DENY("globex-officer", POL_OP_REQUEST_RECOVERY, "k1", "globex", "eu-west", "quorum");
    DENY("globex-officer", POL_OP_APPROVE_RECOVERY, "k1", "globex", "eu-west", "quorum");
    DENY("globex-officer", POL_OP_EXECUTE_RECOVERY, "k1", "globex", "eu-west", "quorum");
    ALLOW("globex-officer", POL_OP_CANCEL_RECOVERY, "k1", "globex", "eu-west", "role");
    ALLOW("globex-officer", POL_OP_GET_RECOVERY, "k1", "globex", "eu-west", "role");
    ALLOW("globex-officer", POL_OP_LIST_RECOVERIES, NULL, "globex", NULL, "role");
}
END_TEST

/* ---- grants -------------------------------------------------------------- */

START_TEST(test_grants)
{
    struct pol_decision d = decide("acme-broker", POL_OP_ENCRYPT, "orders", "acme", "eu-west");
    ck_assert(d.allowed);
    ck_assert_str_eq(d.rule, "grant");
    ck_assert_str_eq(d.grant_sid, "orders-broker");
    ALLOW("acme-broker", POL_OP_DECRYPT, "orders", "acme", "eu-west", "grant");
    d = decide("acme-admin", POL_OP_DESCRIBE_KEY, "orders", "acme", "eu-west");
    ck_assert_str_eq(d.rule, "grant");
    ck_assert_ptr_null(d.grant_sid); /* that grant has no sid */

    /* Once a key is named by a grant, the grants are the whole list. */
    DENY("acme-broker", POL_OP_GENERATE_DATA_KEY, "orders", "acme", "eu-west", "grant");
    DENY("acme-broker-x", POL_OP_ENCRYPT, "orders", "acme", "eu-west", "grant");
    DENY("acme-admin", POL_OP_ROTATE_KEY, "orders", "acme", "eu-west", "grant");
    DENY("acme-officer-1", POL_OP_REQUEST_RECOVERY, "orders", "acme", "eu-west", "grant");

    /* Other keys, other tenants' keys of the same id: role-based. */
    ALLOW("acme-broker", POL_OP_GENERATE_DATA_KEY, "Orders", "acme", "eu-west", "role");
    ALLOW("acme-broker", POL_OP_GENERATE_DATA_KEY, "orders2", "acme", "eu-west", "role");
    ALLOW("acme-broker", POL_OP_GENERATE_DATA_KEY, "order", "acme", "eu-west", "role");
    ALLOW("globex-broker", POL_OP_GENERATE_DATA_KEY, "orders", "globex", "eu-west", "role");
    /* Grants never widen: a granted broker is still bound to its home region. */
    DENY("acme-broker", POL_OP_ENCRYPT, "orders", "acme", "us-east", "residency.home_region");
}
END_TEST

/* Many keys with grants, in no particular order, several grants per key:
 * the lookup must find all of a key's grants and only them. */
START_TEST(test_grants_many)
{
    json_t *d = base();
    json_t *grants = at(d, "tenants[0].grants");
    char key[32], sid[32];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "key-%02d", (i * 17) % 40);
        snprintf(sid, sizeof(sid), "s%02d-broker", i);
        json_array_append_new(grants,
                              json_pack("{s:s, s:s, s:[s], s:[s]}", "sid", sid, "key_id", key,
                                        "principals", "acme-broker", "operations", "Encrypt"));
        snprintf(sid, sizeof(sid), "s%02d-brokx", i);
        json_array_append_new(grants,
                              json_pack("{s:s, s:s, s:[s], s:[s]}", "sid", sid, "key_id", key,
                                        "principals", "acme-broker-x", "operations", "Decrypt"));
    }
    pol_doc_unref(doc);
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    for (int k = 0; k < 40; k++) {
        snprintf(key, sizeof(key), "key-%02d", k);
        int i = (k * 33) % 40; /* 17 * 33 = 561 = 1 mod 40: the grant index for key k */
        struct pol_decision dec = decide("acme-broker", POL_OP_ENCRYPT, key, "acme", "eu-west");
        snprintf(sid, sizeof(sid), "s%02d-broker", i);
        ck_assert_str_eq(dec.rule, "grant");
        ck_assert_str_eq(dec.grant_sid, sid);
        dec = decide("acme-broker-x", POL_OP_DECRYPT, key, "acme", "eu-west");
        snprintf(sid, sizeof(sid), "s%02d-brokx", i);
        ck_assert_str_eq(dec.grant_sid, sid);
        DENY("acme-broker", POL_OP_DECRYPT, key, "acme", "eu-west", "grant");
        DENY("acme-broker-x", POL_OP_ENCRYPT, key, "acme", "eu-west", "grant");
    }
    ALLOW("acme-broker", POL_OP_DECRYPT, "key-40", "acme", "eu-west", "role");
    ALLOW("acme-broker", POL_OP_DECRYPT, "key-0", "acme", "eu-west", "role");
    ALLOW("acme-broker", POL_OP_ENCRYPT, "orders", "acme", "eu-west", "grant");
}
END_TEST

/* ---- audit --------------------------------------------------------------- */

START_TEST(test_audit)
{
    /* A global auditor reads the whole log of its home region and of its
     * allowed_regions, or one tenant's part; no other region's. */
    ALLOW("auditor", POL_OP_GET_SIGNED_TREE_HEAD, NULL, NULL, "eu-west", "role");
    ALLOW("auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, NULL, "ap-south", "role");
    ALLOW("auditor", POL_OP_GET_AUDIT_KEYS, NULL, NULL, NULL, "role");
    ALLOW("auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, "globex", "eu-west", "role");
    /* A tenant's auditor reads only its tenant, in the tenant's regions. */
    ALLOW("acme-auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, "acme", "us-east", "role");
    ALLOW("acme-auditor", POL_OP_GET_AUDIT_KEYS, NULL, "acme", NULL, "role");
    DENY("acme-auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, NULL, "eu-west", "tenant");
    DENY("acme-auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, "globex", "eu-west", "tenant");
    DENY("acme-auditor", POL_OP_GET_SIGNED_TREE_HEAD, NULL, "acme", "ap-south",
         "residency.tenant_region");
    DENY("acme-broker", POL_OP_EXPORT_AUDIT_LOG, NULL, "acme", "eu-west", "role");
    DENY("auditor", POL_OP_EXPORT_AUDIT_LOG, NULL, NULL, "sa-east", "residency.home_region");
    DENY("auditor", POL_OP_GET_SIGNED_TREE_HEAD, NULL, NULL, "sa-east", "residency.home_region");
    DENY("auditor", POL_OP_GET_AUDIT_KEYS, NULL, NULL, "sa-east", "residency.home_region");
    DENY("operator", POL_OP_GET_AUDIT_KEYS, NULL, NULL, NULL, "role");
}
END_TEST

/* ---- order --------------------------------------------------------------- */

START_TEST(test_rule_order)
{
    /* When several rules fail, the first in the documented order reports. */
    NOT_FOUND("acme-admin", POL_OP_ENCRYPT, "orders", "globex", "ap-south");
    DENY("acme-admin", POL_OP_ENCRYPT, "k1", "acme", "ap-south", "role");
    DENY("acme-broker", POL_OP_ENCRYPT, "k1", "acme", "ap-south", "residency.tenant_region");
    DENY("acme-broker", POL_OP_ENCRYPT, "orders", "acme", "us-east", "residency.home_region");
    DENY("globex-officer", POL_OP_APPROVE_RECOVERY, "k1", "globex", "us-east",
         "residency.tenant_region");
    DENY("acme-officer-4", POL_OP_APPROVE_RECOVERY, "orders", "acme", "eu-west", "quorum");
    DENY("acme-broker", POL_OP_CREATE_KEY, NULL, "globex", "ap-south", "role");
}
END_TEST

/* ---- misuse -------------------------------------------------------------- */

static void expect_usage(const struct pol_doc *d, const struct pol_principal *p, enum pol_op op,
                         const struct pol_target *target)
{
    struct pol_decision out = {.allowed = true, .rule = "x", .err = KMS_OK};
    ck_assert_int_eq(pol_decide(d, p, op, target, &out), KMS_ERR_USAGE);
    ck_assert(!out.allowed);
    ck_assert_str_eq(out.rule, "usage");
    ck_assert_int_eq(out.err, KMS_ERR_USAGE);
}

START_TEST(test_usage)
{
    const struct pol_principal *broker = pol_doc_principal(doc, "acme-broker");
    const struct pol_principal *admin = pol_doc_principal(doc, "acme-admin");
    struct pol_target ok = {.key_id = "k1", .tenant = "acme", .region = "eu-west"};
    struct pol_decision out;

    ck_assert_int_eq(pol_decide(doc, broker, POL_OP_ENCRYPT, &ok, NULL), KMS_ERR_USAGE);
    expect_usage(NULL, broker, POL_OP_ENCRYPT, &ok);
    expect_usage(doc, NULL, POL_OP_ENCRYPT, &ok);
    expect_usage(doc, broker, POL_OP_ENCRYPT, NULL);
    expect_usage(doc, broker, POL_OP__COUNT, &ok);
    expect_usage(doc, broker, (enum pol_op) - 1, &ok);

    /* A principal must come from the document it is judged by. */
    struct pol_doc *other = NULL;
    ck_assert_int_eq(load(base(), &other), KMS_OK);
    expect_usage(doc, pol_doc_principal(other, "acme-broker"), POL_OP_ENCRYPT, &ok);
    ck_assert_int_eq(
        pol_decide(other, pol_doc_principal(other, "acme-broker"), POL_OP_ENCRYPT, &ok, &out),
        KMS_OK);
    pol_doc_unref(other);

    expect_usage(doc, broker, POL_OP_ENCRYPT, &(struct pol_target){NULL, "acme", "eu-west"});
    expect_usage(doc, broker, POL_OP_ENCRYPT, &(struct pol_target){"k1", NULL, "eu-west"});
    expect_usage(doc, broker, POL_OP_ENCRYPT, &(struct pol_target){"k1", "acme", NULL});
    /* No tenant named for a tenant operation is a refusal, not misuse. */
    DENY("acme-admin", POL_OP_LIST_KEYS, NULL, NULL, NULL, "tenant");
    expect_usage(doc, admin, POL_OP_CREATE_KEY, &(struct pol_target){NULL, "acme", NULL});
    /* Fields that do not apply are ignored. */
    ALLOW("acme-admin", POL_OP_CREATE_KEY, "ignored", "acme", "eu-west", "role");
}
END_TEST

/* ---- threads ------------------------------------------------------------- */

static void *decider(void *arg)
{
    (void)arg;
    const struct pol_principal *p = pol_doc_principal(doc, "acme-broker");
    struct pol_target t = {.key_id = "orders", .tenant = "acme", .region = "eu-west"};
    for (int i = 0; i < 20000; i++) {
        struct pol_decision d;
        if (pol_decide(doc, p, (i & 1) ? POL_OP_ENCRYPT : POL_OP_GENERATE_DATA_KEY, &t, &d) !=
            ((i & 1) ? KMS_OK : KMS_ERR_PERMISSION_DENIED))
            return (void *)1;
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, decider, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *ret;
        ck_assert_int_eq(pthread_join(th[i], &ret), 0);
        ck_assert_ptr_null(ret);
    }
}
END_TEST

/* ---- ciphertexts of unknown kind -------------------------------------------------- */

static struct pol_decision untyped(const char *who, const char *key_id, const char *tenant,
                                   const char *region)
{
    const struct pol_principal *p = pol_doc_principal(doc, who);
    ck_assert_msg(p != NULL, "no principal %s", who);
    struct pol_target target = {.key_id = key_id, .tenant = tenant, .region = region};
    struct pol_decision d;
    kms_err rc = pol_decide_untyped_open(doc, p, &target, &d);
    ck_assert_int_eq(rc, d.err);
    ck_assert_int_eq(d.allowed, rc == KMS_OK);
    return d;
}

/* A format 1 ciphertext may hold a message or a data key: opening it takes
 * both Decrypt and DecryptDataKey, whichever of the two is asked for. */
START_TEST(test_untyped_open)
{
    /* Role only (no grant names k1): a broker has both. */
    struct pol_decision d = untyped("acme-broker", "k1", "acme", "eu-west");
    ck_assert(d.allowed);
    /* "orders": acme-broker has Decrypt but not DecryptDataKey. */
    d = untyped("acme-broker", "orders", "acme", "eu-west");
    ck_assert(!d.allowed);
    ck_assert_str_eq(d.rule, "ciphertext.format1");
    ck_assert_int_eq(d.err, KMS_ERR_PERMISSION_DENIED);
    ck_assert_str_eq(kms_err_detail(), "permission denied");
    /* "wraps": acme-broker has DecryptDataKey but not Decrypt (the bypass
     * this rule closes); acme-broker-x has both through two grants. */
    d = untyped("acme-broker", "wraps", "acme", "eu-west");
    ck_assert(!d.allowed);
    ck_assert_str_eq(d.rule, "ciphertext.format1");
    d = untyped("acme-broker-x", "wraps", "acme", "eu-west");
    ck_assert(d.allowed);
    ck_assert_str_eq(d.rule, "grant");
    /* The other rules still come first: another tenant's key is not found,
     * a region outside the broker's is residency, a key admin has no role. */
    d = untyped("globex-broker", "k1", "acme", "eu-west");
    ck_assert_int_eq(d.err, KMS_ERR_NOT_FOUND);
    ck_assert_str_eq(d.rule, "tenant");
    d = untyped("acme-broker", "k1", "acme", "us-east");
    ck_assert_int_eq(d.err, KMS_ERR_PERMISSION_DENIED);
    ck_assert_str_eq(d.rule, "residency.home_region");
    d = untyped("acme-admin", "k1", "acme", "eu-west");
    ck_assert_int_eq(d.err, KMS_ERR_PERMISSION_DENIED);
    ck_assert_str_eq(d.rule, "role");
    /* acme-broker-x: no grant gives it anything on "orders". */
    d = untyped("acme-broker-x", "orders", "acme", "eu-west");
    ck_assert_str_eq(d.rule, "ciphertext.format1");
    /* Misuse. */
    struct pol_target t = {.key_id = "k1", .tenant = "acme", .region = "eu-west"};
    ck_assert_int_eq(pol_decide_untyped_open(doc, pol_doc_principal(doc, "acme-broker"), &t, NULL),
                     KMS_ERR_USAGE);
}
END_TEST

/* ---- ReEncrypt across regions ---------------------------------------------------- */

static struct pol_decision route(const char *who, const char *from, const char *to)
{
    const struct pol_principal *p = pol_doc_principal(doc, who);
    ck_assert_msg(p != NULL, "no principal %s", who);
    struct pol_decision d;
    kms_err rc = pol_decide_re_encrypt(doc, p, from, to, &d);
    ck_assert_int_eq(rc, d.err);
    ck_assert_int_eq(d.allowed, rc == KMS_OK);
    return d;
}

START_TEST(test_re_encrypt_route)
{
    /* Same region: always. */
    ck_assert(route("acme-broker-x", "eu-west", "eu-west").allowed);
    ck_assert(route("acme-broker-x", "us-east", "us-east").allowed);
    ck_assert(route("globex-broker", "eu-west", "eu-west").allowed);
    /* Across: only the direction the tenant names. */
    struct pol_decision d = route("acme-broker-x", "eu-west", "us-east");
    ck_assert(d.allowed);
    ck_assert_str_eq(d.rule, "residency.re_encrypt");
    d = route("acme-broker-x", "us-east", "eu-west");
    ck_assert(!d.allowed);
    ck_assert_str_eq(d.rule, "residency.re_encrypt");
    ck_assert_int_eq(d.err, KMS_ERR_PERMISSION_DENIED);
    ck_assert_str_eq(kms_err_detail(), "permission denied");
    /* Another tenant's routes are not this one's: globex names none. */
    d = route("globex-broker", "eu-west", "us-east");
    ck_assert(!d.allowed);
    ck_assert_str_eq(d.rule, "residency.re_encrypt");
    /* A global principal has no tenant, hence no routes. */
    ck_assert(!route("auditor", "eu-west", "us-east").allowed);
    /* Misuse. */
    const struct pol_principal *p = pol_doc_principal(doc, "acme-broker-x");
    d = (struct pol_decision){0};
    ck_assert_int_eq(pol_decide_re_encrypt(doc, p, NULL, "us-east", &d), KMS_ERR_USAGE);
    ck_assert(!d.allowed);
    ck_assert_int_eq(pol_decide_re_encrypt(doc, p, "eu-west", "us-east", NULL), KMS_ERR_USAGE);
    ck_assert_int_eq(pol_decide_re_encrypt(NULL, p, "eu-west", "us-east", &d), KMS_ERR_USAGE);
}
END_TEST

static Suite *pol_eval_suite(void)
{
    Suite *s = suite_create("pol_eval");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"role_matrix", test_role_matrix},
        {"tenant", test_tenant},
        {"not_found_is_indistinguishable", test_not_found_is_indistinguishable},
        {"residency_tenant_region", test_residency_tenant_region},
        {"residency_home_region", test_residency_home_region},
        {"quorum", test_quorum},
        {"grants", test_grants},
        {"grants_many", test_grants_many},
        {"audit", test_audit},
        {"rule_order", test_rule_order},
        {"usage", test_usage},
        {"untyped_open", test_untyped_open},
        {"re_encrypt_route", test_re_encrypt_route},
        {"concurrent", test_concurrent},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pol_eval_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
