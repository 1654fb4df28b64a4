/*
 * pol_fixture.h - the policy document the policy unit tests start from, and
 * helpers to change it. Included by tests/unit/test_pol_*.c only.
 *
 * JSON here is written with single quotes (jq() turns them into double
 * quotes) to stay readable.
 */
#ifndef POL_FIXTURE_H
#define POL_FIXTURE_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kms_error.h"
#include "pol_doc.h"

#define PEM_HEAD "-----BEGIN PUBLIC KEY-----\n"
#define PEM_TAIL "-----END PUBLIC KEY-----\n"
static const char *const P256[] = {
    PEM_HEAD "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE+RPty0zTZhS7K6pxjVA8hrJhzSuU\n"
             "1zO9uiZGZ4Toh6F5ze9OXOa9bKq1GbM8ixowkq03rSZQXrFkiMEbVQEmIQ==\n" PEM_TAIL,
    PEM_HEAD "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEP+pwBRO6iEsqGxMN3OfO2JMl7X44\n"
             "1q/wi61dES7qi7VLTjLZ/fSqenfw13IHbAB42e6aCkze+0X2bc6M/4+Rxw==\n" PEM_TAIL,
    PEM_HEAD "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaQBxAF2MKBVfHqDmbJAFMaH681cK\n"
             "xvnpAfXKpcnVF77sBYk164p/A/d0t6RjV0Xap3tzmKJ3Xm1yk9S+WgQHPA==\n" PEM_TAIL,
    PEM_HEAD "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFGvs19lcan8p33lsGQEIatRcGv14\n"
             "uXORoTsHuvt4dpLV9dsbty5a9XdwBJRQD/BgbemzowHHbRiNNjbhNM4jPw==\n" PEM_TAIL,
    PEM_HEAD "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELOh6v/K1zb51KpBX5bVbz/Xzu9MP\n"
             "2LqOMc10VK1McZibLODVwSeGFJcQLQP+tr1Qs8KPDLRxH/PSiaWJrQC+Vw==\n" PEM_TAIL,
};
__attribute__((unused)) static const char P384[] =
    PEM_HEAD "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAELe9zeOElFTm+mBiGUIuOSS33pdBacO0W\n"
             "BKBkr/RFXwBzm3AcgdYd94yyO/NqXfI3YITTo3spz2WRWUgZqzSOFFRe1i3mijwn\n"
             "7ErveS0lv2ngmbkRO6INFm7VT0q14sjx\n" PEM_TAIL;
__attribute__((unused)) static const char SECP256K1[] =
    PEM_HEAD "MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAE+E4MZzmGwJCfTMuyH7YWk9SF1z+vST1y\n"
             "SyndyTMQ5TYUZL8wPJKqQfIxdIEOkdwshRtBZKrWC7gR9r7SSD/zDA==\n" PEM_TAIL;
__attribute__((unused)) static const char ED25519[] =
    PEM_HEAD "MCowBQYDK2VwAyEActMaPX4NJXgHw2frhgLXP2y2+iSysS782FK4J2jlh38=\n" PEM_TAIL;
__attribute__((unused)) static const char RSA1024[] =
    PEM_HEAD "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCwNBotiXHosg2aA1gjS6UDcL9M\n"
             "GL/663veFuHiBU7OZmR1PAECkAaGeBjQ2HFbI8TQJdIxFVlCApcLilkO28OOslvy\n"
             "SrS/SwEXRVMyTuyTqjZIB+BbQEyVMYVfNH4qdzwpOSSNTK2zw7URrIkdlxUtAK/G\n"
             "YTuVjR/BAscZgBsxxQIDAQAB\n" PEM_TAIL;

/* sha256 of each principal's API key, computed with `printf %s KEY | sha256sum`. */
#define H_ACME_BROKER "b5b0e098f8ee0c2115cccf7117cc30408f0a5847886ab41efbc9dfc382600a0c"
#define H_ACME_ADMIN "4e1864c3d455d01b83d67590a06fa2ceb6e86b8e944b6b8808eab7ab83b7b721"
#define H_ACME_OFFICER1 "2eb083bd723271f8dd2e13771ad576b6aaf3635fec67daeeabdc9fa7887ae6cc"
#define H_ACME_OFFICER2 "eea7609f7a28620af07e40db8bed529217be3322137e409500a09f6831c275ea"
#define H_ACME_OFFICER3 "76f14d08a985f24f0054dccc19b5a8aafdd240fe8289939a399cc6b011890444"
#define H_ACME_AUDITOR "625e8ad81730527966f12960cf4e0d136c1d4fd8fcae578337b28d1d2a11615a"
#define H_GLOBEX_BROKER "07db1e69c0aae52d242f9b3dfb664420bc9e74e3ab3483d47dd7d2e53b690a56"
#define H_GLOBEX_OFFICER "c1c083b411006304ec993ca5fbdcd40b0dab91332795669429209a44115e4602"
#define H_AUDITOR "4b757dbf2a80635aa58493a3d99640445d25a375b85befb1ea3b7c3c55feabf8"

/* tenants[0] = acme: principals 0 acme-broker, 1 acme-broker-x, 2 acme-admin,
 *   3..5 acme-officer-1..3, 6 acme-auditor; grants 0..1
 * tenants[1] = globex: principals 0 globex-broker, 1 globex-officer
 * principals: 0 auditor, 1 operator */
static const char BASE[] =
    "{'version': 1, 'description': 'test document',"
    " 'tenants': ["
    "  {'id': 'acme', 'allowed_regions': ['eu-west', 'us-east'], 'escrow_required': true,"
    "   'quorum': {'approvals': 2,"
    "              'officers': ['acme-officer-1', 'acme-officer-2', 'acme-officer-3']},"
    "   'principals': ["
    "    {'id': 'acme-broker', 'role': 'broker', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_ACME_BROKER "'},"
    "    {'id': 'acme-broker-x', 'role': 'broker', 'home_region': 'eu-west',"
    "     'allowed_regions': ['us-east'], 'cert_subject': 'CN=acme-broker-x,O=Acme'},"
    "    {'id': 'acme-admin', 'role': 'key-admin', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_ACME_ADMIN "'},"
    "    {'id': 'acme-officer-1', 'role': 'officer', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_ACME_OFFICER1 "'},"
    "    {'id': 'acme-officer-2', 'role': 'officer', 'home_region': 'us-east',"
    "     'api_key_sha256': '" H_ACME_OFFICER2 "'},"
    "    {'id': 'acme-officer-3', 'role': 'officer', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_ACME_OFFICER3 "'},"
    "    {'id': 'acme-auditor', 'role': 'auditor', 'home_region': 'eu-west',"
    "     'allowed_regions': ['us-east'], 'api_key_sha256': '" H_ACME_AUDITOR "'}],"
    "   'grants': ["
    "    {'sid': 'orders-broker', 'key_id': 'orders', 'principals': ['acme-broker'],"
    "     'operations': ['Encrypt', 'Decrypt']},"
    "    {'key_id': 'orders', 'principals': ['acme-admin'], 'operations': ['DescribeKey']}]},"
    "  {'id': 'globex', 'allowed_regions': ['eu-west'], 'escrow_required': false,"
    "   'principals': ["
    "    {'id': 'globex-broker', 'role': 'broker', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_GLOBEX_BROKER "'},"
    "    {'id': 'globex-officer', 'role': 'officer', 'home_region': 'eu-west',"
    "     'api_key_sha256': '" H_GLOBEX_OFFICER "'}]}],"
    " 'principals': ["
    "  {'id': 'auditor', 'role': 'auditor', 'home_region': 'eu-west',"
    "   'allowed_regions': ['us-east', 'ap-south'], 'api_key_sha256': '" H_AUDITOR "'},"
    "  {'id': 'operator', 'role': 'operator', 'home_region': 'eu-west',"
    "   'cert_subject': 'CN=operator,O=Custos'}]}";

/* ---- helpers ------------------------------------------------------------- */

/* Parse JSON written with single quotes. */
__attribute__((unused)) static json_t *jq(const char *text)
{
    char *s = strdup(text);
    ck_assert_ptr_nonnull(s);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t err;
    json_t *v = json_loads(s, JSON_DECODE_ANY, &err);
    ck_assert_msg(v != NULL, "test JSON: %s: %s", err.text, s);
    free(s);
    return v;
}

/* The value at a path like "tenants[0].principals[2]". */
__attribute__((unused)) static json_t *at(json_t *root, const char *path)
{
    json_t *cur = root;
    const char *p = path;
    while (*p != '\0' && cur != NULL) {
        if (*p == '.')
            p++;
        if (*p == '[') {
            char *end;
            cur = json_array_get(cur, strtoul(p + 1, &end, 10));
            p = end + 1;
        } else {
            size_t n = strcspn(p, ".[");
            char key[64];
            ck_assert_uint_lt(n, sizeof(key));
            memcpy(key, p, n);
            key[n] = '\0';
            cur = json_object_get(cur, key);
            p += n;
        }
    }
    ck_assert_msg(cur != NULL, "test document has no %s", path);
    return cur;
}

__attribute__((unused)) static void set(json_t *root, const char *path, const char *field,
                                        json_t *value)
{
    ck_assert_int_eq(json_object_set_new(at(root, path), field, value), 0);
}

__attribute__((unused)) static void del(json_t *root, const char *path, const char *field)
{
    ck_assert_int_eq(json_object_del(at(root, path), field), 0);
}

__attribute__((unused)) static json_t *base(void)
{
    json_t *d = jq(BASE);
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof(path), "tenants[0].principals[%d]", 3 + i);
        set(d, path, "public_key_pem", json_string(P256[i]));
    }
    set(d, "tenants[1].principals[1]", "public_key_pem", json_string(P256[3]));
    return d;
}

/* Serialise d (consumed) and load it. */
__attribute__((unused)) static kms_err load(json_t *d, struct pol_doc **out)
{
    char *text = json_dumps(d, JSON_COMPACT);
    ck_assert_ptr_nonnull(text);
    json_decref(d);
    kms_err rc = pol_doc_load_buffer(text, strlen(text), out);
    free(text);
    return rc;
}

__attribute__((unused)) static struct pol_doc *load_base(void)
{
    struct pol_doc *doc = NULL;
    kms_err rc = load(base(), &doc);
    ck_assert_msg(rc == KMS_OK, "base document: %s", kms_err_detail());
    return doc;
}

#endif
