/*
 * test_pol_doc.c - the loaded policy document (policy/pol_doc.c): vocabulary,
 * accessors, authentication lookups, reference counting and reload.
 */
#include <pthread.h>

#include <openssl/evp.h>

#include "pol_doc_internal.h"
#include "pol_fixture.h"

/* ---- vocabulary and accessors -------------------------------------------- */

START_TEST(test_vocabulary)
{
    enum pol_role role;
    enum pol_op op;
    for (int r = 0; r < POL_ROLE__COUNT; r++) {
        ck_assert(pol_role_from_name(pol_role_name((enum pol_role)r), &role));
        ck_assert_int_eq(role, r);
    }
    for (int o = 0; o < POL_OP__COUNT; o++) {
        ck_assert(pol_op_from_name(pol_op_name((enum pol_op)o), &op));
        ck_assert_int_eq(op, o);
        ck_assert(pol_role_allows(pol_op_role(op), op));
        ck_assert(!pol_role_allows(POL_ROLE_OPERATOR, op));
    }
    ck_assert_str_eq(pol_role_name(POL_ROLE_KEY_ADMIN), "key-admin");
    ck_assert_str_eq(pol_op_name(POL_OP_GENERATE_DATA_KEY), "GenerateDataKey");
    ck_assert_int_eq(pol_op_role(POL_OP_BLIND_INDEX), POL_ROLE_BROKER);
    ck_assert_int_eq(pol_op_role(POL_OP_LIST_KEYS), POL_ROLE_KEY_ADMIN);
    ck_assert_int_eq(pol_op_role(POL_OP_GET_RECOVERY), POL_ROLE_OFFICER);
    ck_assert_int_eq(pol_op_role(POL_OP_GET_AUDIT_KEYS), POL_ROLE_AUDITOR);
    ck_assert_int_eq(pol_op_target(POL_OP_CREATE_KEY), POL_TARGET_TENANT);
    ck_assert_int_eq(pol_op_target(POL_OP_DESCRIBE_KEY), POL_TARGET_KEY);
    ck_assert_int_eq(pol_op_target(POL_OP_EXPORT_AUDIT_LOG), POL_TARGET_REGION);
    ck_assert(!pol_role_allows(POL_ROLE_BROKER, POL_OP_CREATE_KEY));
    ck_assert(!pol_role_allows(POL_ROLE_KEY_ADMIN, POL_OP_ENCRYPT));
    ck_assert(!pol_role_allows(POL_ROLE_BROKER, (enum pol_op)POL_OP__COUNT));
    /* Signing keys: broker operations; a key-admin may read a public key
     * (to have a certificate issued) but never sign or verify. */
    ck_assert_str_eq(pol_op_name(POL_OP_SIGN), "Sign");
    ck_assert_int_eq(pol_op_role(POL_OP_GET_PUBLIC_KEY), POL_ROLE_BROKER);
    ck_assert_int_eq(pol_op_target(POL_OP_VERIFY), POL_TARGET_KEY);
    ck_assert(pol_role_allows(POL_ROLE_BROKER, POL_OP_SIGN));
    ck_assert(pol_role_allows(POL_ROLE_KEY_ADMIN, POL_OP_GET_PUBLIC_KEY));
    ck_assert(!pol_role_allows(POL_ROLE_KEY_ADMIN, POL_OP_SIGN));
    ck_assert(!pol_role_allows(POL_ROLE_KEY_ADMIN, POL_OP_VERIFY));
    ck_assert(!pol_role_allows(POL_ROLE_OFFICER, POL_OP_GET_PUBLIC_KEY));
    ck_assert(!pol_role_allows(POL_ROLE_AUDITOR, POL_OP_SIGN));
    /* Names are exact: no case folding, no prefixes. */
    ck_assert(!pol_role_from_name("Broker", &role));
    ck_assert(!pol_role_from_name("keyadmin", &role));
    ck_assert(!pol_op_from_name("encrypt", &op));
    ck_assert(!pol_op_from_name("kms:Encrypt", &op));
    ck_assert(!pol_op_from_name(NULL, &op));
    ck_assert_str_eq(pol_role_name((enum pol_role)99), "?");
    ck_assert_str_eq(pol_op_name((enum pol_op)99), "?");
}
END_TEST

START_TEST(test_load_valid)
{
    struct pol_doc *doc = load_base();
    ck_assert_uint_eq(pol_doc_tenant_count(doc), 2);
    ck_assert_str_eq(pol_tenant_id(pol_doc_tenant_at(doc, 1)), "globex");
    ck_assert_ptr_null(pol_doc_tenant_at(doc, 2));

    const struct pol_tenant *acme = pol_doc_tenant(doc, "acme");
    ck_assert_ptr_nonnull(acme);
    ck_assert(pol_tenant_escrow_required(acme));
    ck_assert_uint_eq(pol_tenant_region_count(acme), 2);
    ck_assert_str_eq(pol_tenant_region(acme, 1), "us-east");
    ck_assert_ptr_null(pol_tenant_region(acme, 2));
    ck_assert(pol_tenant_region_allowed(acme, "eu-west"));
    ck_assert(!pol_tenant_region_allowed(acme, "ap-south"));
    ck_assert(!pol_tenant_region_allowed(acme, NULL));
    ck_assert_uint_eq(pol_tenant_quorum_approvals(acme), 2);
    ck_assert_uint_eq(pol_tenant_officer_count(acme), 3);
    ck_assert_str_eq(pol_principal_id(pol_tenant_officer(acme, 2)), "acme-officer-3");
    ck_assert_ptr_null(pol_tenant_officer(acme, 3));
    ck_assert(pol_tenant_is_quorum_officer(acme, pol_doc_principal(doc, "acme-officer-1")));
    ck_assert(!pol_tenant_is_quorum_officer(acme, pol_doc_principal(doc, "globex-officer")));

    const struct pol_tenant *globex = pol_doc_tenant(doc, "globex");
    ck_assert(!pol_tenant_escrow_required(globex));
    ck_assert_uint_eq(pol_tenant_quorum_approvals(globex), 0);
    ck_assert_uint_eq(pol_tenant_officer_count(globex), 0);
    ck_assert_ptr_null(pol_doc_tenant(doc, "initech"));
    ck_assert_ptr_null(pol_doc_tenant(doc, NULL));

    const struct pol_principal *p = pol_doc_principal(doc, "acme-officer-2");
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(pol_principal_id(p), "acme-officer-2");
    ck_assert_str_eq(pol_principal_tenant_id(p), "acme");
    ck_assert_ptr_eq(pol_principal_tenant(p), acme);
    ck_assert_int_eq(pol_principal_role(p), POL_ROLE_OFFICER);
    ck_assert_str_eq(pol_principal_home_region(p), "us-east");
    ck_assert_str_eq(pol_principal_officer_key_pem(p), P256[1]);
    EVP_PKEY *key = pol_principal_officer_key(p);
    ck_assert_ptr_nonnull(key);
    ck_assert(EVP_PKEY_is_a(key, "EC"));

    p = pol_doc_principal(doc, "auditor");
    ck_assert_ptr_null(pol_principal_tenant_id(p));
    ck_assert_ptr_null(pol_principal_tenant(p));
    ck_assert_int_eq(pol_principal_role(p), POL_ROLE_AUDITOR);
    ck_assert_ptr_null(pol_principal_officer_key_pem(p));
    ck_assert_ptr_null(pol_principal_officer_key(p));
    ck_assert_str_eq(pol_principal_tenant_id(pol_doc_principal(doc, "acme-auditor")), "acme");
    ck_assert_ptr_null(pol_doc_principal(doc, "nobody"));
    ck_assert_ptr_null(pol_doc_principal(doc, NULL));
    pol_doc_unref(doc);
}
END_TEST

START_TEST(test_digest)
{
    const char text[] = "{\"version\": 1, \"tenants\": []}";
    uint8_t md[32];
    unsigned int len;
    char hex[65];
    ck_assert_int_eq(EVP_Digest(text, strlen(text), md, &len, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    struct pol_doc *doc = NULL;
    ck_assert_int_eq(pol_doc_load_buffer(text, strlen(text), &doc), KMS_OK);
    ck_assert_str_eq(pol_doc_digest_hex(doc), hex);
    ck_assert_uint_eq(pol_doc_tenant_count(doc), 0);
    pol_doc_unref(doc);
}
END_TEST

START_TEST(test_sample_file)
{
    /* The sample shipped in deploy/ must load, and say what the docs say. */
    struct pol_doc *doc = NULL;
    kms_err rc = pol_doc_load_file("deploy/examples/policy.json", &doc);
    ck_assert_msg(rc == KMS_OK, "sample policy: %s", kms_err_detail());
    const struct pol_tenant *t = pol_doc_tenant(doc, "demo");
    ck_assert_ptr_nonnull(t);
    ck_assert(pol_tenant_region_allowed(t, "eu-west") && pol_tenant_region_allowed(t, "us-east"));
    ck_assert_uint_eq(pol_tenant_officer_count(t), 3);
    static const struct {
        const char *id, *key;
        enum pol_role role;
        bool global;
    } want[] = {
        {"demo-broker", "dev-demo-broker-key", POL_ROLE_BROKER, false},
        {"demo-admin", "dev-demo-admin-key", POL_ROLE_KEY_ADMIN, false},
        {"officer-1", "dev-officer-1-key", POL_ROLE_OFFICER, false},
        {"officer-2", "dev-officer-2-key", POL_ROLE_OFFICER, false},
        {"officer-3", "dev-officer-3-key", POL_ROLE_OFFICER, false},
        {"auditor", "dev-auditor-key", POL_ROLE_AUDITOR, true},
        {"operator", "dev-operator-key", POL_ROLE_OPERATOR, true},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct pol_principal *p;
        ck_assert_int_eq(pol_doc_auth_api_key(doc, want[i].key, strlen(want[i].key), &p), KMS_OK);
        ck_assert_str_eq(pol_principal_id(p), want[i].id);
        ck_assert_int_eq(pol_principal_role(p), want[i].role);
        ck_assert_int_eq(pol_principal_tenant(p) == NULL, want[i].global);
    }
    ck_assert_str_eq(pol_principal_home_region(pol_doc_principal(doc, "demo-broker")), "eu-west");
    pol_doc_unref(doc);
}
END_TEST

/* ---- authentication ------------------------------------------------------ */

static const struct {
    const char *key, *id;
} base_keys[] = {
    {"acme-broker-key", "acme-broker"},
    {"acme-admin-key", "acme-admin"},
    {"acme-officer-1-key", "acme-officer-1"},
    {"acme-officer-2-key", "acme-officer-2"},
    {"acme-officer-3-key", "acme-officer-3"},
    {"acme-auditor-key", "acme-auditor"},
    {"globex-broker-key", "globex-broker"},
    {"globex-officer-key", "globex-officer"},
    {"auditor-key", "auditor"},
};

static void expect_unknown_key(const struct pol_doc *doc, const void *key, size_t len)
{
    const struct pol_principal *p = pol_doc_principal(doc, "acme-broker"); /* must be reset */
    ck_assert_int_eq(pol_doc_auth_api_key(doc, key, len, &p), KMS_ERR_UNAUTHENTICATED);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(kms_err_detail(), "unknown credential");
}

START_TEST(test_auth_api_key)
{
    struct pol_doc *doc = load_base();
    for (size_t i = 0; i < sizeof(base_keys) / sizeof(base_keys[0]); i++) {
        const struct pol_principal *p = NULL;
        const char *key = base_keys[i].key;
        ck_assert_int_eq(pol_doc_auth_api_key(doc, key, strlen(key), &p), KMS_OK);
        ck_assert_ptr_eq(p, pol_doc_principal(doc, base_keys[i].id));
    }
    /* `echo $KEY | sha256sum` hashes a trailing newline: that key is not this one. */
    expect_unknown_key(doc, "acme-broker-key\n", 16);
    expect_unknown_key(doc, "acme-broker-ke", 14);
    expect_unknown_key(doc, "Acme-broker-key", 15);
    expect_unknown_key(doc, "acme-broker-key", 0);
    expect_unknown_key(doc, NULL, 0);
    /* The stored hash is not a credential. */
    expect_unknown_key(doc, H_ACME_BROKER, strlen(H_ACME_BROKER));
    /* Lengths are honoured: bytes after key_len do not count. */
    const struct pol_principal *p = NULL;
    ck_assert_int_eq(pol_doc_auth_api_key(doc, "auditor-key-and-more", 11, &p), KMS_OK);
    ck_assert_str_eq(pol_principal_id(p), "auditor");
    pol_doc_unref(doc);
}
END_TEST

static void hex_sha256(const char *s, char hex[65])
{
    uint8_t md[32];
    unsigned int len = 0;
    ck_assert_int_eq(EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02X", md[i]); /* upper case is accepted too */
}

/* Many principals, some with two keys (rotation): every key finds exactly
 * its own principal, whichever position it holds. The lookup selects the
 * match with masks rather than an early exit, which is where an off-by-one
 * or a wrong mask would show. */
START_TEST(test_auth_api_key_many)
{
    enum { N = 300 };
    json_t *d = jq("{'version': 1, 'tenants': [{'id': 't', 'allowed_regions': ['eu-west'],"
                   " 'escrow_required': false, 'principals': []}]}");
    json_t *ps = at(d, "tenants[0].principals");
    char id[32], key[32], key2[32], hex[65], hex2[65];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "p%03d", i);
        snprintf(key, sizeof(key), "key-%03d", i);
        hex_sha256(key, hex);
        json_t *p =
            json_pack("{s:s, s:s, s:s}", "id", id, "role", "broker", "home_region", "eu-west");
        if (i % 7 == 3) {
            snprintf(key2, sizeof(key2), "next-key-%03d", i);
            hex_sha256(key2, hex2);
            json_object_set_new(p, "api_key_sha256", json_pack("[s, s]", hex, hex2));
        } else {
            json_object_set_new(p, "api_key_sha256", json_string(hex));
        }
        json_array_append_new(ps, p);
    }
    struct pol_doc *doc = NULL;
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    for (int i = 0; i < N; i++) {
        const struct pol_principal *p = NULL;
        snprintf(id, sizeof(id), "p%03d", i);
        snprintf(key, sizeof(key), "key-%03d", i);
        ck_assert_int_eq(pol_doc_auth_api_key(doc, key, strlen(key), &p), KMS_OK);
        ck_assert_str_eq(pol_principal_id(p), id);
        if (i % 7 == 3) {
            snprintf(key2, sizeof(key2), "next-key-%03d", i);
            ck_assert_int_eq(pol_doc_auth_api_key(doc, key2, strlen(key2), &p), KMS_OK);
            ck_assert_str_eq(pol_principal_id(p), id);
        }
    }
    expect_unknown_key(doc, "key-300", 7);
    expect_unknown_key(doc, "next-key-004", 12);
    pol_doc_unref(doc);

    /* A document without any API key refuses every key. */
    d = jq("{'version': 1, 'tenants': [], 'principals': [{'id': 'op', 'role': 'operator',"
           " 'home_region': 'eu-west', 'cert_subject': 'CN=op'}]}");
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    expect_unknown_key(doc, "key-000", 7);
    pol_doc_unref(doc);
}
END_TEST

START_TEST(test_auth_cert_subject)
{
    struct pol_doc *doc = load_base();
    const struct pol_principal *p = NULL;
    ck_assert_int_eq(pol_doc_auth_cert_subject(doc, "CN=acme-broker-x,O=Acme", &p), KMS_OK);
    ck_assert_str_eq(pol_principal_id(p), "acme-broker-x");
    ck_assert_int_eq(pol_doc_auth_cert_subject(doc, "CN=operator,O=Custos", &p), KMS_OK);
    ck_assert_str_eq(pol_principal_id(p), "operator");

    /* Exact match only: no case folding, no trimming, no prefixes. */
    static const char *const wrong[] = {"CN=ACME-broker-x,O=Acme", "CN=acme-broker-x,O=Acme ",
                                        "CN=acme-broker-x",        "CN=acme-broker-x, O=Acme",
                                        "O=Acme,CN=acme-broker-x", ""};
    for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++) {
        p = pol_doc_principal(doc, "acme-broker");
        ck_assert_int_eq(pol_doc_auth_cert_subject(doc, wrong[i], &p), KMS_ERR_UNAUTHENTICATED);
        ck_assert_ptr_null(p);
        ck_assert_str_eq(kms_err_detail(), "unknown credential");
    }
    ck_assert_int_eq(pol_doc_auth_cert_subject(doc, NULL, &p), KMS_ERR_USAGE);
    ck_assert_ptr_null(p);
    pol_doc_unref(doc);
}
END_TEST

/* ---- lifetime ------------------------------------------------------------ */

START_TEST(test_refcount)
{
    struct pol_doc *doc = load_base();
    ck_assert_uint_eq(pol_doc_refcount(doc), 1);
    ck_assert_ptr_eq(pol_doc_ref(doc), doc);
    ck_assert_uint_eq(pol_doc_refcount(doc), 2);
    pol_doc_unref(doc);
    ck_assert_uint_eq(pol_doc_refcount(doc), 1);
    /* Still whole after dropping the extra reference. */
    ck_assert_str_eq(pol_tenant_id(pol_doc_tenant(doc, "acme")), "acme");
    ck_assert_ptr_null(pol_doc_ref(NULL));
    pol_doc_unref(NULL);
    pol_doc_unref(doc); /* freed here: ASan reports a leak otherwise */
}
END_TEST

enum { THREADS = 8, ROUNDS = 20000 };

static void *ref_worker(void *arg)
{
    struct pol_doc *doc = arg;
    for (int i = 0; i < ROUNDS; i++) {
        struct pol_doc *mine = pol_doc_ref(doc);
        if (pol_doc_tenant(mine, "acme") == NULL)
            return (void *)1;
        pol_doc_unref(mine);
    }
    return NULL;
}

START_TEST(test_refcount_threads)
{
    struct pol_doc *doc = load_base();
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, ref_worker, doc), 0);
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        ck_assert_int_eq(pthread_join(th[i], &ret), 0);
        ck_assert_ptr_null(ret);
    }
    /* A lost update would leave the count off by some. */
    ck_assert_uint_eq(pol_doc_refcount(doc), 1);
    pol_doc_unref(doc);
}
END_TEST

/* What kmsd does on SIGHUP: readers take a reference under the slot's lock and
 * use the document without it; the reloader publishes a new document and
 * drops the old one. A bad document never replaces a good one. */
static struct {
    pthread_mutex_t lock;
    struct pol_doc *current;
    int stop;
} slot = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *reader(void *arg)
{
    (void)arg;
    long uses = 0;
    for (;;) {
        pthread_mutex_lock(&slot.lock);
        int stop = slot.stop;
        struct pol_doc *doc = pol_doc_ref(slot.current);
        pthread_mutex_unlock(&slot.lock);
        if (stop) {
            pol_doc_unref(doc);
            break;
        }
        const struct pol_principal *p = NULL;
        if (pol_doc_auth_api_key(doc, "acme-admin-key", 14, &p) != KMS_OK ||
            strcmp(pol_principal_tenant_id(p), "acme") != 0) {
            pol_doc_unref(doc);
            return (void *)1;
        }
        uses++;
        pol_doc_unref(doc);
    }
    return uses > 0 ? NULL : (void *)2;
}

START_TEST(test_reload)
{
    slot.current = load_base();
    slot.stop = 0;
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, reader, NULL), 0);

    for (int round = 0; round < 50; round++) {
        struct pol_doc *next = NULL;
        json_t *d = base();
        if (round % 5 == 4) /* a broken edit */
            set(d, "tenants[0].principals[2]", "role", json_string("admin"));
        kms_err rc = load(d, &next);
        if (rc != KMS_OK) {
            ck_assert_ptr_null(next);
            continue; /* keep serving the old document */
        }
        pthread_mutex_lock(&slot.lock);
        struct pol_doc *old = slot.current;
        slot.current = next;
        pthread_mutex_unlock(&slot.lock);
        pol_doc_unref(old);
    }
    pthread_mutex_lock(&slot.lock);
    slot.stop = 1;
    pthread_mutex_unlock(&slot.lock);
    for (int i = 0; i < 4; i++) {
        void *ret;
        ck_assert_int_eq(pthread_join(th[i], &ret), 0);
        ck_assert_ptr_null(ret);
    }
    ck_assert_uint_eq(pol_doc_refcount(slot.current), 1);
    pol_doc_unref(slot.current);
}
END_TEST

static Suite *pol_doc_suite(void)
{
    Suite *s = suite_create("pol_doc");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"vocabulary", test_vocabulary},
        {"load_valid", test_load_valid},
        {"digest", test_digest},
        {"sample_file", test_sample_file},
        {"auth_api_key", test_auth_api_key},
        {"auth_api_key_many", test_auth_api_key_many},
        {"auth_cert_subject", test_auth_cert_subject},
        {"refcount", test_refcount},
        {"refcount_threads", test_refcount_threads},
        {"reload", test_reload},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pol_doc_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
