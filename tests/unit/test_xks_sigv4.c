/*
 * test_xks_sigv4.c - SigV4 verification of the XKS front (kms/xks/xks_sigv4.c)
 * against three independent signers: AWS's published Signature Version 4
 * test suite (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, service
 * "service"), botocore's SigV4Auth and curl --aws-sigv4 (both through
 * tests/e2e/xks_sign.py, service kms-xks-proxy, at the current time). Each
 * accepted request is then altered one way at a time (body, a signed header,
 * path, secret, time, scope) and must be refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "xks_sigv4.h"

#define MAXH 24

struct rawreq {
    char method[16], path[1024], query[1024];
    char names[MAXH][64], values[MAXH][1024];
    int n;
    char body[4096];
    size_t body_len;
};

static const char *lookup(void *ctx, const char *name)
{
    struct rawreq *r = ctx;
    const char *found = NULL;
    for (int i = 0; i < r->n; i++)
        if (strcasecmp(r->names[i], name) == 0) {
            if (found != NULL)
                return NULL; /* sent twice: the front refuses it */
            found = r->values[i];
        }
    return found;
}

static void add_header(struct rawreq *r, const char *name, const char *value)
{
    ck_assert_int_lt(r->n, MAXH);
    snprintf(r->names[r->n], sizeof(r->names[0]), "%s", name);
    snprintf(r->values[r->n], sizeof(r->values[0]), "%s", value);
    r->n++;
}

static void set_header(struct rawreq *r, const char *name, const char *value)
{
    for (int i = 0; i < r->n; i++)
        if (strcasecmp(r->names[i], name) == 0) {
            snprintf(r->values[i], sizeof(r->values[0]), "%s", value);
            return;
        }
    add_header(r, name, value);
}

/* Parse a raw HTTP/1.1 request (CRLF lines, then the body). */
static void parse_raw(const char *raw, size_t len, struct rawreq *r)
{
    memset(r, 0, sizeof(*r));
    const char *end = strstr(raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(end);
    char target[1024];
    ck_assert_int_eq(sscanf(raw, "%15s %1023s", r->method, target), 2);
    char *q = strchr(target, '?');
    if (q != NULL) {
        *q = '\0';
        snprintf(r->query, sizeof(r->query), "%s", q + 1);
    }
    snprintf(r->path, sizeof(r->path), "%s", target);
    const char *line = strstr(raw, "\r\n") + 2;
    while (line < end) {
        const char *eol = strstr(line, "\r\n");
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        ck_assert_ptr_nonnull(colon);
        char name[64], value[1024];
        snprintf(name, sizeof(name), "%.*s", (int)(colon - line), line);
        snprintf(value, sizeof(value), "%.*s", (int)(eol - colon - 1), colon + 1);
        /* as an HTTP server does (libmicrohttpd too): no leading blanks */
        add_header(r, name, value + strspn(value, " \t"));
        line = eol + 2;
    }
    r->body_len = len - (size_t)(end + 4 - raw);
    ck_assert_uint_lt(r->body_len, sizeof(r->body));
    memcpy(r->body, end + 4, r->body_len);
}

static xks_sigv4_req as_req(struct rawreq *r)
{
    xks_sigv4_req q = {r->method, r->path, r->query, lookup, r,
                       (const uint8_t *)r->body, r->body_len};
    return q;
}

static kms_err verify_raw(struct rawreq *r, const char *service, const char *secret, time_t now)
{
    xks_sigv4_auth a;
    kms_err rc = xks_sigv4_parse(lookup(r, "authorization"), &a);
    if (rc != KMS_OK)
        return rc;
    xks_sigv4_req q = as_req(r);
    return xks_sigv4_verify(&q, &a, service, (const uint8_t *)secret, strlen(secret), now);
}

/* ---- AWS's published suite ---- */

static const char *suite_secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
static const time_t suite_now = 1440938160; /* 2015-08-30T12:36:00Z */

static const struct {
    const char *name, *method, *target, *h1, *v1, *h2, *v2, *signed_h, *sig;
} suite[] = {
    {"get-vanilla", "GET", "/", NULL, NULL, NULL, NULL, "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"post-vanilla", "POST", "/", NULL, NULL, NULL, NULL, "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
    {"get-vanilla-query-order-key-case", "GET", "/?Param2=value2&Param1=value1", NULL, NULL,
     NULL, NULL, "host;x-amz-date",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
    {"post-header-value-case", "POST", "/", "My-Header1", "VALUE1", NULL, NULL,
     "host;my-header1;x-amz-date",
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
    {"get-header-value-trim", "GET", "/", "My-Header1", " value1", "My-Header2",
     "\"a   b   c\"", "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
};

static void suite_request(int i, struct rawreq *r, const char *sig)
{
    char raw[2048];
    int n = snprintf(raw, sizeof(raw),
                     "%s %s HTTP/1.1\r\nHost:example.amazonaws.com\r\n"
                     "X-Amz-Date:20150830T123600Z\r\n",
                     suite[i].method, suite[i].target);
    if (suite[i].h1 != NULL)
        n += snprintf(raw + n, sizeof(raw) - (size_t)n, "%s:%s\r\n", suite[i].h1, suite[i].v1);
    if (suite[i].h2 != NULL)
        n += snprintf(raw + n, sizeof(raw) - (size_t)n, "%s:%s\r\n", suite[i].h2, suite[i].v2);
    n += snprintf(raw + n, sizeof(raw) - (size_t)n,
                  "Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/"
                  "service/aws4_request, SignedHeaders=%s, Signature=%s\r\n\r\n",
                  suite[i].signed_h, sig);
    parse_raw(raw, (size_t)n, r);
}

START_TEST(aws_suite_vectors_verify)
{
    struct rawreq r;
    suite_request(_i, &r, suite[_i].sig);
    ck_assert_msg(verify_raw(&r, "service", suite_secret, suite_now) == KMS_OK, "%s: %s",
                  suite[_i].name, kms_err_detail());
    /* and our signer produces the published signature */
    char out[65];
    xks_sigv4_req q = as_req(&r);
    ck_assert_int_eq(xks_sigv4_sign(&q, suite[_i].signed_h, "20150830T123600Z", "us-east-1",
                                    "service", (const uint8_t *)suite_secret,
                                    strlen(suite_secret), out),
                     KMS_OK);
    ck_assert_str_eq(out, suite[_i].sig);
}
END_TEST

START_TEST(aws_suite_refusals)
{
    struct rawreq r;
    suite_request(_i, &r, suite[_i].sig);
    /* another secret */
    ck_assert_int_eq(verify_raw(&r, "service", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz",
                                suite_now),
                     KMS_ERR_UNAUTHENTICATED);
    /* another service in the scope than the one kmsd serves */
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", suite_secret, suite_now),
                     KMS_ERR_UNAUTHENTICATED);
    /* 5 minutes either way is accepted, one second more is not */
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now + 300), KMS_OK);
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now - 300), KMS_OK);
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now + 301),
                     KMS_ERR_UNAUTHENTICATED);
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now - 301),
                     KMS_ERR_UNAUTHENTICATED);
    /* one flipped signature digit */
    char bad[65];
    memcpy(bad, suite[_i].sig, 65);
    bad[63] = bad[63] == '0' ? '1' : '0';
    suite_request(_i, &r, bad);
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now),
                     KMS_ERR_UNAUTHENTICATED);
    /* a signed header's value changed */
    suite_request(_i, &r, suite[_i].sig);
    set_header(&r, "Host", "example.amazonaws.org");
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now),
                     KMS_ERR_UNAUTHENTICATED);
    /* a body added */
    suite_request(_i, &r, suite[_i].sig);
    r.body_len = 1;
    r.body[0] = 'x';
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now),
                     KMS_ERR_UNAUTHENTICATED);
}
END_TEST

/* ---- the Authorization header's grammar ---- */

START_TEST(authorization_malformed)
{
    static const char *bad[] = {
        NULL,
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA1 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws5_request, SignedHeaders=host, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=A/2015083/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=Host, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf3",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s, SignedHeaders=host, Signature=00",
    };
    xks_sigv4_auth a;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(xks_sigv4_parse(bad[i], &a) == KMS_ERR_UNAUTHENTICATED, "case %zu", i);
    char huge[XKS_SIGV4_MAX_AUTHZ + 64];
    memset(huge, 'A', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    ck_assert_int_eq(xks_sigv4_parse(huge, &a), KMS_ERR_UNAUTHENTICATED);
}
END_TEST

/* SignedHeaders must name host and x-amz-date, sorted and once each, and
 * the path must be in the restricted form. */
START_TEST(signed_headers_and_path_rules)
{
    struct rawreq r;
    static const char *lists[] = {"x-amz-date", "host", "x-amz-date;host",
                                  "host;host;x-amz-date", "host;x-amz-date;", "host;my-absent;x-amz-date"};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        suite_request(1, &r, suite[1].sig);
        char out[65];
        xks_sigv4_req q = as_req(&r);
        ck_assert_msg(xks_sigv4_sign(&q, lists[i], "20150830T123600Z", "us-east-1", "service",
                                     (const uint8_t *)suite_secret, strlen(suite_secret),
                                     out) == KMS_ERR_UNAUTHENTICATED,
                      "%s", lists[i]);
    }
    static const char *paths[] = {"/a//b", "/a/./b", "/a/../b", "/a%2Fb", "a/b", "/a b"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        suite_request(1, &r, suite[1].sig);
        snprintf(r.path, sizeof(r.path), "%s", paths[i]);
        ck_assert_msg(verify_raw(&r, "service", suite_secret, suite_now) ==
                          KMS_ERR_UNAUTHENTICATED,
                      "%s", paths[i]);
    }
    /* a header sent twice is not taken (the lookup answers NULL) */
    suite_request(3, &r, suite[3].sig);
    add_header(&r, "My-Header1", "VALUE1");
    ck_assert_int_eq(verify_raw(&r, "service", suite_secret, suite_now),
                     KMS_ERR_UNAUTHENTICATED);
}
END_TEST

/* ---- botocore and curl, service kms-xks-proxy ---- */

static const char *xks_secret = "K7MDENG+bPxRfiCYtestsecretXKS0123456789/ab";

static void signed_by(const char *mode, struct rawreq *r)
{
    char cmd[1024];
    const char *where = strcmp(mode, "botocore") == 0
                            ? "http://xks.example.com:8443/tenant-a/kms/xks/v1/keys/k1/encrypt"
                            : "/tenant-a/kms/xks/v1/keys/k1/encrypt";
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 tests/e2e/xks_sign.py %s AKIAXKSTEST '%s' eu-west-1 '%s' "
             "'{\"requestMetadata\":{\"awsPrincipalArn\":\"arn:aws:iam::1:root\"},"
             "\"plaintext\":\"aGVsbG8=\"}'",
             mode, xks_secret, where);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    static char raw[8192];
    size_t n = fread(raw, 1, sizeof(raw) - 1, p);
    ck_assert_int_eq(pclose(p), 0);
    raw[n] = '\0';
    parse_raw(raw, n, r);
}

START_TEST(independent_signers_verify)
{
    const char *mode = _i == 0 ? "botocore" : "curl";
    struct rawreq r;
    signed_by(mode, &r);
    time_t now = time(NULL);
    ck_assert_msg(verify_raw(&r, "kms-xks-proxy", xks_secret, now) == KMS_OK, "%s: %s", mode,
                  kms_err_detail());
    xks_sigv4_auth a;
    ck_assert_int_eq(xks_sigv4_parse(lookup(&r, "authorization"), &a), KMS_OK);
    ck_assert_str_eq(a.access_key, "AKIAXKSTEST");
    ck_assert_str_eq(a.region, "eu-west-1");
    /* curl and botocore both sign content-type: changing it breaks it */
    ck_assert_ptr_nonnull(strstr(a.signed_headers, "content-type"));
    set_header(&r, "Content-Type", "text/plain");
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", xks_secret, now), KMS_ERR_UNAUTHENTICATED);
    /* the body is bound */
    signed_by(mode, &r);
    r.body[r.body_len - 3] ^= 1;
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", xks_secret, now), KMS_ERR_UNAUTHENTICATED);
    /* the path is bound */
    signed_by(mode, &r);
    memcpy(strstr(r.path, "encrypt"), "decrypt", 7);
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", xks_secret, now), KMS_ERR_UNAUTHENTICATED);
    /* the secret matters */
    signed_by(mode, &r);
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", "K7MDENG+other", now),
                     KMS_ERR_UNAUTHENTICATED);
    /* replayed ten minutes later */
    ck_assert_int_eq(verify_raw(&r, "kms-xks-proxy", xks_secret, now + 600),
                     KMS_ERR_UNAUTHENTICATED);
}
END_TEST

static Suite *sigv4_suite(void)
{
    Suite *s = suite_create("xks_sigv4");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    int nsuite = (int)(sizeof(suite) / sizeof(suite[0]));
    tcase_add_loop_test(tc, aws_suite_vectors_verify, 0, nsuite);
    tcase_add_loop_test(tc, aws_suite_refusals, 0, nsuite);
    tcase_add_test(tc, authorization_malformed);
    tcase_add_test(tc, signed_headers_and_path_rules);
    tcase_add_loop_test(tc, independent_signers_verify, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sigv4_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
