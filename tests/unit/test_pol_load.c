/*
 * test_pol_load.c - validating policy documents (policy/pol_load.c): every
 * refusal with its exact message and JSON path, and the limits.
 *
 * Most cases start from the valid fixture document, change one thing, and
 * expect one error.
 */
#include <sys/stat.h>
#include <unistd.h>

#include "pol_fixture.h"

static void expect_ok(json_t *d)
{
    struct pol_doc *doc = NULL;
    kms_err rc = load(d, &doc);
    ck_assert_msg(rc == KMS_OK, "unexpected error: %s", kms_err_detail());
    ck_assert_ptr_nonnull(doc);
    pol_doc_unref(doc);
}

static void expect_error(json_t *d, const char *msg)
{
    struct pol_doc *doc = (struct pol_doc *)&doc; /* must be reset to NULL */
    kms_err rc = load(d, &doc);
    ck_assert_int_eq(rc, KMS_ERR_CONFIG);
    ck_assert_ptr_null(doc);
    ck_assert_str_eq(kms_err_detail(), msg);
}

static void expect_text_error(const char *text, const char *msg)
{
    struct pol_doc *doc = NULL;
    ck_assert_int_eq(pol_doc_load_buffer(text, strlen(text), &doc), KMS_ERR_CONFIG);
    ck_assert_ptr_null(doc);
    ck_assert_str_eq(kms_err_detail(), msg);
}

/* ---- syntax and structure ------------------------------------------------ */

START_TEST(test_syntax)
{
    expect_text_error("{\"version\": 1,", "JSON syntax error at line 1 column 14: "
                                          "string or '}' expected near end of file");
    expect_text_error("", "JSON syntax error at line 1 column 0: "
                          "'[' or '{' expected near end of file");
    /* A second "role" must not silently replace the first. */
    expect_text_error("{\"version\": 1, \"version\": 1, \"tenants\": []}",
                      "JSON syntax error at line 1 column 24: duplicate object key near "
                      "'\"version\"'");
    expect_text_error("{\"version\": 1, \"tenants\": [], \"description\": \"a\\u0000b\"}",
                      "JSON syntax error at line 1 column 55: \\u0000 is not allowed without "
                      "JSON_ALLOW_NUL near '\"a\\u0000b\"'");
    struct pol_doc *doc = NULL;
    ck_assert_int_eq(pol_doc_load_buffer(NULL, 0, &doc), KMS_ERR_CONFIG);
    ck_assert_int_eq(pol_doc_load_buffer(NULL, 1, &doc), KMS_ERR_USAGE);
    ck_assert_ptr_null(doc);
    expect_text_error("[]", "document: expected an object, got array");
    expect_text_error("{\"version\": 1, \"tenants\": {}}",
                      "tenants: expected an array, got object");
    expect_text_error("{\"version\": 1, \"tenants\": [7]}",
                      "tenants[0]: expected an object, got integer");
}
END_TEST

START_TEST(test_version)
{
    expect_text_error("{\"tenants\": []}", "version: missing required field");
    expect_text_error("{\"version\": \"1\", \"tenants\": []}",
                      "version: expected an integer, got string");
    expect_text_error("{\"version\": 2, \"tenants\": []}",
                      "version: unsupported version 2 (this build reads version 1)");
    expect_text_error("{\"version\": 1}", "tenants: missing required field");
}
END_TEST

START_TEST(test_unknown_fields)
{
    json_t *d = base();
    set(d, "", "tenant", json_array());
    expect_error(d, "tenant: unknown field");

    d = base();
    set(d, "tenants[1]", "escrow_requried", json_true());
    expect_error(d, "tenants[1].escrow_requried: unknown field");

    d = base();
    set(d, "tenants[0].principals[1]", "rol", json_string("broker"));
    expect_error(d, "tenants[0].principals[1].rol: unknown field");

    d = base();
    set(d, "principals[1]", "tenant", json_string("acme"));
    expect_error(d, "principals[1].tenant: unknown field");

    d = base();
    set(d, "tenants[0].quorum", "threshold", json_integer(1));
    expect_error(d, "tenants[0].quorum.threshold: unknown field");

    d = base();
    set(d, "tenants[0].grants[1]", "effect", json_string("Deny"));
    expect_error(d, "tenants[0].grants[1].effect: unknown field");

    /* Names from the document are quoted safely. */
    d = base();
    set(d, "tenants[0]", "bad\nname", json_true());
    expect_error(d, "tenants[0].bad?name: unknown field");
}
END_TEST

START_TEST(test_required_fields)
{
    static const struct {
        const char *path, *field, *msg;
    } cases[] = {
        {"tenants[0]", "id", "tenants[0].id: missing required field"},
        {"tenants[0]", "allowed_regions", "tenants[0].allowed_regions: missing required field"},
        {"tenants[1]", "escrow_required", "tenants[1].escrow_required: missing required field"},
        {"tenants[0].principals[2]", "id", "tenants[0].principals[2].id: missing required field"},
        {"tenants[0].principals[2]", "role",
         "tenants[0].principals[2].role: missing required field"},
        {"tenants[0].principals[2]", "home_region",
         "tenants[0].principals[2].home_region: missing required field"},
        {"tenants[0].principals[4]", "public_key_pem",
         "tenants[0].principals[4].public_key_pem: missing required field"},
        {"principals[0]", "api_key_sha256",
         "principals[0]: no credential (needs api_key_sha256 or cert_subject)"},
        {"tenants[0].quorum", "approvals", "tenants[0].quorum.approvals: missing required field"},
        {"tenants[0].quorum", "officers", "tenants[0].quorum.officers: missing required field"},
        {"tenants[0]", "quorum",
         "tenants[0].quorum: missing required field (escrow_required is true)"},
        {"tenants[0].grants[0]", "key_id", "tenants[0].grants[0].key_id: missing required field"},
        {"tenants[0].grants[0]", "principals",
         "tenants[0].grants[0].principals: missing required field"},
        {"tenants[0].grants[1]", "operations",
         "tenants[0].grants[1].operations: missing required field"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *d = base();
        del(d, cases[i].path, cases[i].field);
        expect_error(d, cases[i].msg);
    }
    /* Optional fields really are optional. */
    json_t *d = base();
    del(d, "", "principals");
    del(d, "", "description");
    del(d, "tenants[0].grants[0]", "sid");
    del(d, "tenants[0]", "grants");
    del(d, "tenants[1]", "principals");
    expect_ok(d);
}
END_TEST

START_TEST(test_types)
{
    json_t *d = base();
    set(d, "tenants[1]", "escrow_required", json_string("yes"));
    expect_error(d, "tenants[1].escrow_required: expected a boolean, got string");

    d = base();
    set(d, "tenants[0].quorum", "approvals", json_real(2.0));
    expect_error(d, "tenants[0].quorum.approvals: expected an integer, got number");

    d = base();
    set(d, "tenants[0]", "allowed_regions", json_string("eu-west"));
    expect_error(d, "tenants[0].allowed_regions: expected an array, got string");

    d = base();
    json_array_append_new(at(d, "tenants[0].allowed_regions"), json_null());
    expect_error(d, "tenants[0].allowed_regions[2]: expected a string, got null");

    d = base();
    set(d, "tenants[1]", "principals", json_array());
    json_array_append_new(at(d, "tenants[1].principals"), json_string("globex-broker"));
    expect_error(d, "tenants[1].principals[0]: expected an object, got string");

    d = base();
    set(d, "tenants[0].principals[0]", "role", json_integer(1));
    expect_error(d, "tenants[0].principals[0].role: expected a string, got integer");

    d = base();
    set(d, "tenants[0].principals[0]", "id", json_string(""));
    expect_error(d, "tenants[0].principals[0].id: must not be empty");

    d = base();
    set(d, "tenants[0]", "quorum", json_array());
    expect_error(d, "tenants[0].quorum: expected an object, got array");
}
END_TEST

START_TEST(test_roles)
{
    json_t *d = base();
    set(d, "tenants[1].principals[0]", "role", json_string("brokr"));
    expect_error(d, "tenants[1].principals[0].role: unknown role \"brokr\"");

    d = base();
    set(d, "tenants[0].principals[0]", "role", json_string("Broker"));
    expect_error(d, "tenants[0].principals[0].role: unknown role \"Broker\"");

    /* Only auditors and operators may be global. */
    d = base();
    set(d, "principals[0]", "role", json_string("broker"));
    expect_error(d, "principals[0].role: role broker needs a tenant "
                    "(define the principal under tenants[].principals)");
    d = base();
    set(d, "principals[1]", "role", json_string("key-admin"));
    expect_error(d, "principals[1].role: role key-admin needs a tenant "
                    "(define the principal under tenants[].principals)");

    /* ... and may also belong to a tenant. */
    d = base();
    set(d, "tenants[1].principals[0]", "role", json_string("operator"));
    expect_ok(d);
}
END_TEST

START_TEST(test_regions)
{
    json_t *d = base();
    json_array_set_new(at(d, "tenants[0].allowed_regions"), 1, json_string("US-East"));
    expect_error(d, "tenants[0].allowed_regions[1]: invalid region \"US-East\" (lowercase letters, "
                    "digits and '-'; starting with a letter, not ending with '-')");

    d = base();
    json_array_set_new(at(d, "tenants[1].allowed_regions"), 0, json_string("eu-west-"));
    expect_error(d,
                 "tenants[1].allowed_regions[0]: invalid region \"eu-west-\" (lowercase letters, "
                 "digits and '-'; starting with a letter, not ending with '-')");

    d = base();
    json_array_set_new(at(d, "tenants[1].allowed_regions"), 0, json_string("1eu"));
    expect_error(d, "tenants[1].allowed_regions[0]: invalid region \"1eu\" (lowercase letters, "
                    "digits and '-'; starting with a letter, not ending with '-')");

    d = base();
    set(d, "tenants[1]", "allowed_regions", json_array());
    expect_error(d, "tenants[1].allowed_regions: must not be empty");

    d = base();
    json_array_append_new(at(d, "tenants[0].allowed_regions"), json_string("eu-west"));
    expect_error(d, "tenants[0].allowed_regions[2]: \"eu-west\" is listed twice");

    d = base();
    set(d, "tenants[1].principals[0]", "home_region", json_string("us-east"));
    expect_error(d, "tenants[1].principals[0].home_region: region \"us-east\" is not in the "
                    "tenant's allowed_regions");

    d = base();
    set(d, "tenants[0].principals[1]", "allowed_regions", jq("['us-east', 'ap-south']"));
    expect_error(d, "tenants[0].principals[1].allowed_regions[1]: region \"ap-south\" is not in "
                    "the tenant's allowed_regions");

    d = base();
    set(d, "tenants[0].principals[2]", "allowed_regions", jq("['us-east']"));
    expect_error(d, "tenants[0].principals[2].allowed_regions: only brokers and auditors are "
                    "bound to their home region; role key-admin takes no allowed_regions");

    /* Global principals are not bound to any tenant's regions. */
    d = base();
    set(d, "principals[0]", "home_region", json_string("ap-south-1"));
    expect_ok(d);
}
END_TEST

START_TEST(test_ids)
{
    json_t *d = base();
    set(d, "tenants[0]", "id", json_string("ac me"));
    expect_error(d, "tenants[0].id: invalid id \"ac me\" (letters, digits, '.', '_', '-', '@'; "
                    "starting with a letter or digit)");

    d = base();
    set(d, "tenants[0].principals[0]", "id", json_string("-broker"));
    expect_error(d, "tenants[0].principals[0].id: invalid id \"-broker\" (letters, digits, '.', "
                    "'_', '-', '@'; starting with a letter or digit)");

    d = base();
    set(d, "tenants[0].grants[0]", "key_id", json_string("orders key"));
    expect_error(d, "tenants[0].grants[0].key_id: invalid key id \"orders key\" (letters, digits, "
                    "'.', '_', '-', '@', ':', '/'; starting with a letter or digit)");

    /* Emails and ARN-like key ids are fine. */
    d = base();
    set(d, "tenants[0].principals[0]", "id", json_string("broker@acme.example"));
    json_array_set_new(at(d, "tenants[0].grants[0].principals"), 0,
                       json_string("broker@acme.example"));
    set(d, "tenants[0].grants[1]", "key_id", json_string("acme:eu-west/key_01.v2"));
    expect_ok(d);
}
END_TEST

START_TEST(test_duplicates)
{
    json_t *d = base();
    set(d, "tenants[1].principals[1]", "id", json_string("acme-admin"));
    expect_error(d, "tenants[1].principals[1].id: duplicate principal id \"acme-admin\" "
                    "(also at tenants[0].principals[2])");

    d = base();
    set(d, "principals[1]", "id", json_string("acme-broker"));
    expect_error(d, "principals[1].id: duplicate principal id \"acme-broker\" "
                    "(also at tenants[0].principals[0])");

    d = base();
    set(d, "tenants[1]", "id", json_string("acme"));
    expect_error(d, "tenants[1].id: duplicate tenant id \"acme\" (also tenants[0].id)");
}
END_TEST

START_TEST(test_credentials)
{
    json_t *d = base();
    set(d, "tenants[0].principals[0]", "api_key_sha256", json_string("b5b0e098"));
    expect_error(d, "tenants[0].principals[0].api_key_sha256: expected 64 hex digits "
                    "(the SHA-256 of the API key)");

    d = base();
    set(d, "tenants[0].principals[0]", "api_key_sha256",
        json_string("g5b0e098f8ee0c2115cccf7117cc30408f0a5847886ab41efbc9dfc382600a0c"));
    expect_error(d, "tenants[0].principals[0].api_key_sha256: expected 64 hex digits "
                    "(the SHA-256 of the API key)");

    d = base();
    set(d, "tenants[0].principals[0]", "api_key_sha256", json_integer(5));
    expect_error(d, "tenants[0].principals[0].api_key_sha256: expected a string, got integer");

    /* The same API key for two principals, across tenants, even in another case. */
    d = base();
    set(d, "tenants[1].principals[0]", "api_key_sha256",
        json_string("B5B0E098F8EE0C2115CCCF7117CC30408F0A5847886AB41EFBC9DFC382600A0C"));
    expect_error(d, "tenants[1].principals[0].api_key_sha256: API key already used by "
                    "principal \"acme-broker\"");

    d = base();
    set(d, "principals[0]", "api_key_sha256", jq("['" H_GLOBEX_OFFICER "']"));
    expect_error(d, "principals[0].api_key_sha256[0]: API key already used by principal "
                    "\"globex-officer\"");

    d = base();
    set(d, "principals[0]", "api_key_sha256", jq("['" H_AUDITOR "', '" H_AUDITOR "']"));
    expect_error(d, "principals[0].api_key_sha256[1]: API key already used by principal "
                    "\"auditor\"");

    d = base();
    set(d, "principals[0]", "api_key_sha256", json_array());
    expect_error(d, "principals[0].api_key_sha256: must not be empty");

    d = base();
    set(d, "principals[0]", "api_key_sha256",
        jq("['" H_AUDITOR "', '" H_ACME_OFFICER1 "0', '2', '3', '4']"));
    expect_error(d, "principals[0].api_key_sha256: too many entries (5, at most 4)");

    d = base();
    set(d, "tenants[0].principals[0]", "cert_subject", json_string("CN=acme-broker-x,O=Acme"));
    expect_error(d, "tenants[0].principals[1].cert_subject: certificate subject already used by "
                    "principal \"acme-broker\"");

    d = base();
    set(d, "principals[1]", "cert_subject", json_string("CN=operator\n,O=Custos"));
    expect_error(d, "principals[1].cert_subject: contains control characters");
}
END_TEST

START_TEST(test_officer_keys)
{
    static const struct {
        const char *pem, *msg;
    } cases[] = {
        {"not a key", "expected a PEM public key (-----BEGIN PUBLIC KEY-----)"},
        {PEM_HEAD "AAAA\n" PEM_TAIL, "not a valid PEM public key"},
        {P384, "curve secp384r1; officers need an ECDSA P-256 key"},
        {SECP256K1, "curve secp256k1; officers need an ECDSA P-256 key"},
        {ED25519, "ED25519 key; officers need an ECDSA P-256 key"},
        {RSA1024, "RSA key; officers need an ECDSA P-256 key"},
        /* A reader that skips other blocks would take the key after the
         * certificate; the whole text must be one public key. */
        {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" PEM_HEAD
         "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+RPty0zTZhS7K6pxjVA8hrJhzSuU\n"
         "1zO9uiZGZ4Toh6F5ze9OXOa9bKq1GbM8ixowkq03rSZQXrFkiMEbVQEmIQ==\n" PEM_TAIL,
         "expected a PEM public key (-----BEGIN PUBLIC KEY-----)"},
        {"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n",
         "expected a PEM public key (-----BEGIN PUBLIC KEY-----)"},
    };
    char msg[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *d = base();
        set(d, "tenants[0].principals[5]", "public_key_pem", json_string(cases[i].pem));
        snprintf(msg, sizeof(msg), "tenants[0].principals[5].public_key_pem: %s", cases[i].msg);
        expect_error(d, msg);
    }

    char two[1024];
    snprintf(two, sizeof(two), "%s%s", P256[0], P256[1]);
    json_t *d = base();
    set(d, "tenants[0].principals[3]", "public_key_pem", json_string(two));
    expect_error(d,
                 "tenants[0].principals[3].public_key_pem: unexpected data after the public key");

    d = base();
    set(d, "tenants[0].principals[0]", "public_key_pem", json_string(P256[4]));
    expect_error(d, "tenants[0].principals[0].public_key_pem: only officers carry a public key");

    /* Leading and trailing whitespace around one key is fine. */
    snprintf(two, sizeof(two), "\n  %s\n\n", P256[4]);
    d = base();
    set(d, "tenants[0].principals[5]", "public_key_pem", json_string(two));
    expect_ok(d);
}
END_TEST

/* ---- quorum -------------------------------------------------------------- */

START_TEST(test_quorum)
{
    json_t *d = base();
    set(d, "tenants[0].quorum", "approvals", json_integer(4));
    expect_error(d, "tenants[0].quorum.approvals: 4 approvals required but only 3 officers listed");

    d = base();
    set(d, "tenants[0].quorum", "approvals", json_integer(0));
    expect_error(d, "tenants[0].quorum.approvals: must be at least 1");

    d = base();
    set(d, "tenants[0].quorum", "approvals", json_integer(-1));
    expect_error(d, "tenants[0].quorum.approvals: must be at least 1");

    d = base();
    set(d, "tenants[0].quorum", "officers", json_array());
    expect_error(d, "tenants[0].quorum.officers: must not be empty");

    d = base();
    json_array_set_new(at(d, "tenants[0].quorum.officers"), 1, json_string("acme-admin"));
    expect_error(d, "tenants[0].quorum.officers[1]: principal \"acme-admin\" has role key-admin, "
                    "not officer");

    d = base();
    json_array_set_new(at(d, "tenants[0].quorum.officers"), 2, json_string("globex-officer"));
    expect_error(d, "tenants[0].quorum.officers[2]: principal \"globex-officer\" is not in tenant "
                    "\"acme\"");

    d = base();
    json_array_set_new(at(d, "tenants[0].quorum.officers"), 0, json_string("acme-officer-9"));
    expect_error(d, "tenants[0].quorum.officers[0]: unknown principal \"acme-officer-9\"");

    d = base();
    json_array_set_new(at(d, "tenants[0].quorum.officers"), 2, json_string("acme-officer-1"));
    expect_error(d, "tenants[0].quorum.officers[2]: \"acme-officer-1\" is listed twice");

    /* One key shared by two officers would let one person approve twice. */
    d = base();
    set(d, "tenants[0].principals[5]", "public_key_pem", json_string(P256[0]));
    expect_error(d, "tenants[0].quorum.officers[2]: officer \"acme-officer-3\" has the same public "
                    "key as \"acme-officer-1\"");

    /* M = N is legal (a warning is logged), and so is a quorum without escrow. */
    d = base();
    set(d, "tenants[0].quorum", "approvals", json_integer(3));
    expect_ok(d);
    d = base();
    set(d, "tenants[1]", "quorum", jq("{'approvals': 1, 'officers': ['globex-officer']}"));
    expect_ok(d);
}
END_TEST

/* ---- recovery settings --------------------------------------------------- */

static const char RSA2048[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5Z3PSdDUFXMgE+DFj4Ms\n"
    "nMLCLoAi9AbsISd7cuuchRXfj9rfIulE0bCGD8h9jkVGtMKPihJ6iC4MLfgd/Por\n"
    "QoEv/nzRSlt7+JNoO8DIAdc/4e7CddQowp6o0AxjZtZPDssLfcF8EOpSIyKBe5XT\n"
    "kbWl0k995mpqma10qU/i4ctVD/BEHhWkq8XTPKbj8HXUXSKIIhUNie5zmrCo/LEG\n"
    "oRyCaFsb7FcBEExP2I+ymWgX8nB/TnqX8YdD/74y1XcwPa31UBnn7PfnSdK1cXco\n"
    "fvXH9nif7MzCkD7aNbVxBszW0LO7vMiS0nqxYLRzhNRU0MO0Cvmi4hSOicmiAvR5\n"
    "MwIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

static json_t *recipient(const char *id, const char *region, const char *pem)
{
    json_t *r = json_object();
    json_object_set_new(r, "id", json_string(id));
    json_object_set_new(r, "region", json_string(region));
    json_object_set_new(r, "public_key_pem", json_string(pem));
    return r;
}

static json_t *with_recipients(json_t *r0, json_t *r1)
{
    json_t *d = base();
    json_t *arr = json_array();
    json_array_append_new(arr, r0);
    if (r1)
        json_array_append_new(arr, r1);
    set(d, "tenants[0]", "recovery_recipients", arr);
    return d;
}

START_TEST(test_recovery_settings)
{
    /* Defaults, and the values read back. */
    struct pol_doc *doc = NULL;
    json_t *d = with_recipients(recipient("legal-eu", "eu-west", RSA2048), NULL);
    set(d, "tenants[0].quorum", "time_lock_s", json_integer(600));
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    const struct pol_tenant *t = pol_doc_tenant(doc, "acme");
    ck_assert_uint_eq(pol_tenant_recovery_ttl_s(t), 86400);
    ck_assert_uint_eq(pol_tenant_recovery_time_lock_s(t), 600);
    const struct pol_recipient *r = pol_tenant_recipient(t, "legal-eu");
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(pol_recipient_region(r), "eu-west");
    ck_assert_ptr_nonnull(pol_recipient_key(r));
    ck_assert_ptr_null(pol_tenant_recipient(t, "legal-us"));
    pol_doc_unref(doc);

    d = base();
    set(d, "tenants[0].quorum", "request_ttl_s", json_integer(0));
    expect_error(d, "tenants[0].quorum.request_ttl_s: must be 1..2592000");
    d = base();
    set(d, "tenants[0].quorum", "request_ttl_s", json_integer(100));
    set(d, "tenants[0].quorum", "time_lock_s", json_integer(100));
    expect_error(d, "tenants[0].quorum.time_lock_s: must be below request_ttl_s (100), or no "
                    "recovery could ever be executed");
    d = base();
    set(d, "tenants[0].quorum", "time_lock_s", json_string("1h"));
    expect_error(d, "tenants[0].quorum.time_lock_s: expected an integer, got string");

    /* Recipients: in the tenant's regions, RSA 2048..4096, unique, exact fields. */
    d = with_recipients(recipient("legal", "ap-south", RSA2048), NULL);
    expect_error(d, "tenants[0].recovery_recipients[0].region: region \"ap-south\" is not in the "
                    "tenant's allowed_regions");
    d = with_recipients(recipient("legal", "eu-west", RSA1024), NULL);
    expect_error(d, "tenants[0].recovery_recipients[0].public_key_pem: recipients need an RSA key "
                    "of 2048..4096 bits");
    d = with_recipients(recipient("legal", "eu-west", P256[0]), NULL);
    expect_error(d, "tenants[0].recovery_recipients[0].public_key_pem: recipients need an RSA key "
                    "of 2048..4096 bits");
    d = with_recipients(recipient("legal", "eu-west", RSA2048),
                        recipient("legal", "us-east", RSA2048));
    expect_error(d, "tenants[0].recovery_recipients[1].id: duplicate recipient \"legal\"");
    json_t *bad = recipient("legal", "eu-west", RSA2048);
    json_object_set_new(bad, "pem", json_string("x"));
    d = with_recipients(bad, NULL);
    expect_error(d, "tenants[0].recovery_recipients[0].pem: unknown field");
}
END_TEST

/* A tenant's link token bounds (docs/link-tokens.md): read back, 0 when
 * absent, each refused out of range, min above max refused. */
START_TEST(test_link_token_bounds)
{
    struct pol_doc *doc = NULL;
    json_t *d = base();
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    const struct pol_tenant *t = pol_doc_tenant(doc, "acme");
    ck_assert_uint_eq(pol_tenant_link_min_ttl_s(t), 0);
    ck_assert_uint_eq(pol_tenant_link_max_ttl_s(t), 0);
    pol_doc_unref(doc);

    d = base();
    set(d, "tenants[0]", "link_tokens", json_pack("{s:i, s:i}", "min_ttl_s", 300, "max_ttl_s", 600));
    ck_assert_int_eq(load(d, &doc), KMS_OK);
    t = pol_doc_tenant(doc, "acme");
    ck_assert_uint_eq(pol_tenant_link_min_ttl_s(t), 300);
    ck_assert_uint_eq(pol_tenant_link_max_ttl_s(t), 600);
    pol_doc_unref(doc);

    d = base();
    set(d, "tenants[0]", "link_tokens", json_pack("{s:i, s:i}", "min_ttl_s", 601, "max_ttl_s", 600));
    expect_error(d, "tenants[0].link_tokens: min_ttl_s (601) is above max_ttl_s (600)");
    d = base();
    set(d, "tenants[0]", "link_tokens", json_pack("{s:i}", "max_ttl_s", 0));
    expect_error(d, "tenants[0].link_tokens.max_ttl_s: must be 1..86400");
    d = base();
    set(d, "tenants[0]", "link_tokens", json_pack("{s:i}", "ttl_s", 60));
    expect_error(d, "tenants[0].link_tokens.ttl_s: unknown field");
    d = base();
    set(d, "tenants[0]", "link_tokens", json_integer(60));
    expect_error(d, "tenants[0].link_tokens: expected an object, got integer");
}
END_TEST

/* ---- grants -------------------------------------------------------------- */

START_TEST(test_grants)
{
    json_t *d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].principals"), json_string("acme-brokr"));
    expect_error(d, "tenants[0].grants[0].principals[1]: unknown principal \"acme-brokr\"");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].principals"), json_string("globex-broker"));
    expect_error(d, "tenants[0].grants[0].principals[1]: principal \"globex-broker\" is not in "
                    "tenant \"acme\"");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].principals"), json_string("auditor"));
    expect_error(d, "tenants[0].grants[0].principals[1]: principal \"auditor\" is not in tenant "
                    "\"acme\"");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].principals"), json_string("acme-broker"));
    expect_error(d, "tenants[0].grants[0].principals[1]: \"acme-broker\" is listed twice");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].operations"), json_string("Encrpyt"));
    expect_error(d, "tenants[0].grants[0].operations[2]: unknown operation \"Encrpyt\"");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].operations"), json_string("Decrypt"));
    expect_error(d, "tenants[0].grants[0].operations[2]: \"Decrypt\" is listed twice");

    d = base();
    json_array_append_new(at(d, "tenants[0].grants[0].operations"), json_string("DescribeKey"));
    expect_error(d, "tenants[0].grants[0].operations[2]: operation DescribeKey is not allowed for "
                    "principal \"acme-broker\" (role broker)");

    /* Mixed roles in one grant: each operation must suit every principal. */
    d = base();
    json_array_append_new(at(d, "tenants[0].grants[1].principals"), json_string("acme-broker"));
    expect_error(d, "tenants[0].grants[1].operations[0]: operation DescribeKey is not allowed for "
                    "principal \"acme-broker\" (role broker)");

    d = base();
    json_array_set_new(at(d, "tenants[0].grants[1].operations"), 0, json_string("CreateKey"));
    expect_error(d, "tenants[0].grants[1].operations[0]: operation CreateKey does not act on one "
                    "key and cannot be granted per key");

    d = base();
    set(d, "tenants[0].grants[0]", "operations", json_array());
    expect_error(d, "tenants[0].grants[0].operations: must not be empty");

    d = base();
    set(d, "tenants[0].grants[1]", "sid", json_string("orders-broker"));
    expect_error(d, "tenants[0].grants[1].sid: duplicate sid \"orders-broker\" (also "
                    "tenants[0].grants[0])");

    /* Officers may be granted per-key recovery operations. */
    d = base();
    json_array_append_new(at(d, "tenants[0].grants"),
                          jq("{'key_id': 'orders', 'principals': ['acme-officer-1'],"
                             " 'operations': ['RequestRecovery', 'ApproveRecovery']}"));
    expect_ok(d);
}
END_TEST

/* ---- limits -------------------------------------------------------------- */

static json_t *many(const char *item, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, jq(item));
    return arr;
}

static json_t *string_of(size_t len, char c)
{
    char *s = malloc(len + 1);
    memset(s, c, len);
    s[len] = '\0';
    json_t *v = json_string(s);
    free(s);
    return v;
}

START_TEST(test_limits_size)
{
    /* Exactly the limit loads; one more byte does not. */
    char *buf = malloc(POL_MAX_DOC_BYTES + 1);
    const char doc[] = "{\"version\": 1, \"tenants\": []}";
    memset(buf, ' ', POL_MAX_DOC_BYTES + 1);
    memcpy(buf, doc, strlen(doc));
    struct pol_doc *out = NULL;
    ck_assert_int_eq(pol_doc_load_buffer(buf, POL_MAX_DOC_BYTES, &out), KMS_OK);
    pol_doc_unref(out);
    ck_assert_int_eq(pol_doc_load_buffer(buf, POL_MAX_DOC_BYTES + 1, &out), KMS_ERR_CONFIG);
    ck_assert_ptr_null(out);
    ck_assert_str_eq(kms_err_detail(), "document: 1048577 bytes, at most 1048576");
    free(buf);
}
END_TEST

START_TEST(test_limits_counts)
{
    json_t *d = jq("{'version': 1}");
    set(d, "", "tenants", many("{}", POL_MAX_TENANTS + 1));
    expect_error(d, "tenants: too many entries (1025, at most 1024)");

    d = jq("{'version': 1, 'tenants': []}");
    set(d, "", "principals", many("{}", POL_MAX_PRINCIPALS + 1));
    expect_error(d, "principals: too many entries (4097, at most 4096)");

    /* The principal limit is for the whole document. */
    d = jq("{'version': 1, 'tenants': [{}, {}]}");
    set(d, "tenants[0]", "principals", many("{}", 2048));
    set(d, "tenants[1]", "principals", many("{}", 2048));
    set(d, "", "principals", many("{}", 1));
    expect_error(d, "document: too many principals (4097, at most 4096)");

    d = jq("{'version': 1, 'tenants': [{}, {}]}");
    set(d, "tenants[0]", "grants", many("{}", 4096));
    set(d, "tenants[1]", "grants", many("{}", 4097));
    expect_error(d, "document: too many grants (8193, at most 8192)");

    d = base();
    json_t *regions = json_array();
    for (int i = 0; i <= POL_MAX_REGIONS; i++) {
        char r[16];
        snprintf(r, sizeof(r), "r%d", i);
        json_array_append_new(regions, json_string(r));
    }
    set(d, "tenants[1]", "allowed_regions", regions);
    expect_error(d, "tenants[1].allowed_regions: too many entries (33, at most 32)");

    d = base();
    set(d, "tenants[0].quorum", "officers", many("'x'", POL_MAX_OFFICERS + 1));
    expect_error(d, "tenants[0].quorum.officers: too many entries (65, at most 64)");

    d = base();
    set(d, "tenants[0].grants[0]", "principals", many("'x'", POL_MAX_GRANT_PRINCIPALS + 1));
    expect_error(d, "tenants[0].grants[0].principals: too many entries (257, at most 256)");
}
END_TEST

START_TEST(test_limits_strings)
{
    json_t *d = base();
    set(d, "tenants[0].principals[0]", "id", string_of(POL_MAX_ID_LEN + 1, 'a'));
    expect_error(d, "tenants[0].principals[0].id: longer than 64 bytes");

    d = base();
    set(d, "tenants[1]", "id", string_of(POL_MAX_ID_LEN, 'g'));
    expect_ok(d);

    d = base();
    set(d, "tenants[0].grants[0]", "key_id", string_of(POL_MAX_KEY_ID_LEN + 1, 'k'));
    expect_error(d, "tenants[0].grants[0].key_id: longer than 256 bytes");

    d = base();
    set(d, "tenants[1]", "allowed_regions", json_array());
    json_array_append_new(at(d, "tenants[1].allowed_regions"), string_of(33, 'e'));
    expect_error(d, "tenants[1].allowed_regions[0]: longer than 32 bytes");

    d = base();
    set(d, "principals[1]", "cert_subject", string_of(POL_MAX_SUBJECT_LEN + 1, 'C'));
    expect_error(d, "principals[1].cert_subject: longer than 1024 bytes");

    d = base();
    set(d, "tenants[0].principals[3]", "public_key_pem", string_of(POL_MAX_PEM_LEN + 1, 'P'));
    expect_error(d, "tenants[0].principals[3].public_key_pem: longer than 4096 bytes");

    d = base();
    set(d, "tenants[0]", "description", string_of(POL_MAX_DESCRIPTION_LEN + 1, 'd'));
    expect_error(d, "tenants[0].description: longer than 1024 bytes");

    /* Quoted values are cut short and made printable. */
    d = base();
    set(d, "tenants[0].principals[0]", "role", string_of(200, 'r'));
    expect_error(d, "tenants[0].principals[0].role: unknown role "
                    "\"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr...\"");
}
END_TEST

/* ---- files --------------------------------------------------------------- */

static char *write_temp(const char *text, mode_t mode)
{
    char *path = strdup("/tmp/test_pol_doc.XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

START_TEST(test_load_file)
{
    struct pol_doc *doc = NULL;
    char *path = write_temp("{\"version\": 1, \"tenants\": []}", 0644);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_OK);
    pol_doc_unref(doc);

    /* Whoever can write the policy controls every key: not everyone. */
    ck_assert_int_eq(chmod(path, 0666), 0);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_ERR_CONFIG);
    ck_assert_ptr_null(doc);
    ck_assert_str_eq(kms_err_detail(), "policy file is writable by others (mode 0666)");
    ck_assert_int_eq(chmod(path, 0602), 0);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_ERR_CONFIG);
    /* An administrators' group may be allowed to edit it. */
    ck_assert_int_eq(chmod(path, 0664), 0);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_OK);
    pol_doc_unref(doc);
    unlink(path);
    free(path);

    path = write_temp("{\"version\": 1, \"tenants\": [", 0600);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_ERR_CONFIG);
    ck_assert_ptr_null(doc);
    ck_assert_str_eq(kms_err_detail(), "JSON syntax error at line 1 column 27: "
                                       "']' expected near end of file");
    ck_assert_int_eq(truncate(path, POL_MAX_DOC_BYTES + 1), 0);
    ck_assert_int_eq(pol_doc_load_file(path, &doc), KMS_ERR_CONFIG);
    ck_assert_str_eq(kms_err_detail(), "document: 1048577 bytes, at most 1048576");
    unlink(path);
    free(path);

    ck_assert_int_eq(pol_doc_load_file("/nonexistent/policy.json", &doc), KMS_ERR_CONFIG);
    ck_assert_str_eq(kms_err_detail(), "cannot open policy file: No such file or directory");
    ck_assert_int_eq(pol_doc_load_file("/tmp", &doc), KMS_ERR_CONFIG);
    ck_assert_str_eq(kms_err_detail(), "policy file is not a regular file");
    ck_assert_ptr_null(doc);
}
END_TEST

/* ---- cross_region_re_encrypt --------------------------------------------- */

START_TEST(test_re_encrypt_routes)
{
    /* Valid: both directions listed separately, with a description; the
     * accessor answers per direction and never for a same-region pair. */
    json_t *d = base();
    set(d, "tenants[0]", "cross_region_re_encrypt",
        jq("[{'from': 'eu-west', 'to': 'us-east', 'description': 'DR copy'}]"));
    struct pol_doc *doc = NULL;
    kms_err rc = load(d, &doc);
    ck_assert_msg(rc == KMS_OK, "unexpected error: %s", kms_err_detail());
    const struct pol_tenant *acme = pol_doc_tenant(doc, "acme");
    const struct pol_tenant *globex = pol_doc_tenant(doc, "globex");
    ck_assert(pol_tenant_re_encrypt_route(acme, "eu-west", "us-east"));
    ck_assert(!pol_tenant_re_encrypt_route(acme, "us-east", "eu-west"));
    ck_assert(!pol_tenant_re_encrypt_route(acme, "eu-west", "eu-west"));
    ck_assert(!pol_tenant_re_encrypt_route(acme, NULL, "us-east"));
    ck_assert(!pol_tenant_re_encrypt_route(globex, "eu-west", "us-east"));
    pol_doc_unref(doc);

    /* Absent and empty both mean: no cross-region ReEncrypt. */
    doc = load_base();
    ck_assert(!pol_tenant_re_encrypt_route(pol_doc_tenant(doc, "acme"), "eu-west", "us-east"));
    pol_doc_unref(doc);
    d = base();
    set(d, "tenants[0]", "cross_region_re_encrypt", json_array());
    expect_ok(d);

    static const struct {
        const char *value;
        const char *msg;
    } bad[] = {
        {"'eu-west->us-east'",
         "tenants[0].cross_region_re_encrypt: expected an array, got string"},
        {"{'from': 'eu-west', 'to': 'us-east'}",
         "tenants[0].cross_region_re_encrypt: expected an array, got object"},
        {"['eu-west', 'us-east']",
         "tenants[0].cross_region_re_encrypt[0]: expected an object, got string"},
        {"[['eu-west', 'us-east']]",
         "tenants[0].cross_region_re_encrypt[0]: expected an object, got array"},
        {"[{'from': 'eu-west'}]",
         "tenants[0].cross_region_re_encrypt[0].to: missing required field"},
        {"[{'to': 'us-east'}]",
         "tenants[0].cross_region_re_encrypt[0].from: missing required field"},
        {"[{'from': 'eu-west', 'to': 'us-east', 'dest': 'us-east'}]",
         "tenants[0].cross_region_re_encrypt[0].dest: unknown field"},
        {"[{'from': 'eu-west', 'to': 7}]",
         "tenants[0].cross_region_re_encrypt[0].to: expected a string, got integer"},
        {"[{'from': 'eu-west', 'to': ''}]",
         "tenants[0].cross_region_re_encrypt[0].to: must not be empty"},
        {"[{'from': 'eu-west', 'to': 'US-East'}]",
         "tenants[0].cross_region_re_encrypt[0].to: invalid region \"US-East\" (lowercase "
         "letters, digits and '-'; starting with a letter, not ending with '-')"},
        {"[{'from': '*', 'to': 'us-east'}]",
         "tenants[0].cross_region_re_encrypt[0].from: invalid region \"*\" (lowercase "
         "letters, digits and '-'; starting with a letter, not ending with '-')"},
        {"[{'from': 'eu-west', 'to': 'ap-south'}]",
         "tenants[0].cross_region_re_encrypt[0].to: region \"ap-south\" is not in the tenant's "
         "allowed_regions"},
        {"[{'from': 'ap-south', 'to': 'eu-west'}]",
         "tenants[0].cross_region_re_encrypt[0].from: region \"ap-south\" is not in the "
         "tenant's allowed_regions"},
        {"[{'from': 'eu-west', 'to': 'eu-west'}]",
         "tenants[0].cross_region_re_encrypt[0]: from and to are both \"eu-west\" (same-region "
         "ReEncrypt needs no entry)"},
        {"[{'from': 'eu-west', 'to': 'us-east'}, {'from': 'us-east', 'to': 'eu-west'},"
         " {'from': 'eu-west', 'to': 'us-east'}]",
         "tenants[0].cross_region_re_encrypt[2]: eu-west -> us-east is listed twice"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d = base();
        set(d, "tenants[0]", "cross_region_re_encrypt", jq(bad[i].value));
        expect_error(d, bad[i].msg);
    }

    /* A route out of the tenant's regions is refused in a one-region tenant
     * too: globex has only eu-west. */
    d = base();
    set(d, "tenants[1]", "cross_region_re_encrypt", jq("[{'from': 'eu-west', 'to': 'us-east'}]"));
    expect_error(d, "tenants[1].cross_region_re_encrypt[0].to: region \"us-east\" is not in the "
                    "tenant's allowed_regions");

    /* The limit. */
    d = base();
    json_t *many = json_array();
    for (int i = 0; i <= POL_MAX_RE_ENCRYPT_ROUTES; i++)
        json_array_append_new(many, jq("{'from': 'eu-west', 'to': 'us-east'}"));
    set(d, "tenants[0]", "cross_region_re_encrypt", many);
    expect_error(d, "tenants[0].cross_region_re_encrypt: too many entries (65, at most 64)");
}
END_TEST

static Suite *pol_load_suite(void)
{
    Suite *s = suite_create("pol_load");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"syntax", test_syntax},
        {"version", test_version},
        {"unknown_fields", test_unknown_fields},
        {"required_fields", test_required_fields},
        {"types", test_types},
        {"roles", test_roles},
        {"regions", test_regions},
        {"ids", test_ids},
        {"duplicates", test_duplicates},
        {"credentials", test_credentials},
        {"officer_keys", test_officer_keys},
        {"quorum", test_quorum},
        {"recovery_settings", test_recovery_settings},
        {"link_token_bounds", test_link_token_bounds},
        {"grants", test_grants},
        {"re_encrypt_routes", test_re_encrypt_routes},
        {"limits_size", test_limits_size},
        {"limits_counts", test_limits_counts},
        {"limits_strings", test_limits_strings},
        {"load_file", test_load_file},
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
    SRunner *sr = srunner_create(pol_load_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
