/*
 * test_kms_httpreq.c - kms_httpreq_check_framing on header blocks laid out
 * the way libmicrohttpd 0.9.75 leaves them: parsed in place, each separator
 * (request-line spaces, ':', CR, LF) overwritten with NUL, strings measured
 * with strlen, a folded line glued onto the previous name in a copy. The
 * layout helper below is that parse; tests/e2e/test_http_framing.sh checks
 * the same rules against the real libmicrohttpd.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kms_httpreq.h"

struct parsed {
    char *buf;
    char *copies[KMS_HTTP_MAX_FIELDS + 2];
    struct kms_httpreq_field f[KMS_HTTP_MAX_FIELDS + 2];
    struct kms_httpreq_block b;
};

/* libmicrohttpd's in-place parse of raw[0, n) (a complete header block). */
static void parse(struct parsed *p, const char *raw, size_t n)
{
    memset(p, 0, sizeof(*p));
    p->buf = malloc(n + 1);
    ck_assert_ptr_nonnull(p->buf);
    memcpy(p->buf, raw, n);
    p->buf[n] = '\0';
    char *s = p->buf, *end = p->buf + n;
    char *lf = memchr(s, '\n', (size_t)(end - s));
    ck_assert_ptr_nonnull(lf);
    size_t line_len = (size_t)(lf - s) - (lf > s && lf[-1] == '\r');
    if (lf > s && lf[-1] == '\r')
        lf[-1] = '\0';
    *lf = '\0';
    char *sp = memchr(s, ' ', line_len), *last = memrchr(s, ' ', line_len);
    ck_assert(sp != NULL && last != sp);
    *sp = '\0';
    *last = '\0';
    p->b.method = s;
    p->b.url = sp + 1;
    p->b.version = last + 1;
    char *q = strchr(sp + 1, '?');
    if (q)
        *q = '\0';
    s = lf + 1;
    size_t nf = 0;
    for (;;) {
        lf = memchr(s, '\n', (size_t)(end - s));
        ck_assert_ptr_nonnull(lf);
        if (lf > s && lf[-1] == '\r')
            lf[-1] = '\0';
        *lf = '\0';
        if (*s == '\0') {
            s = lf + 1;
            break;
        }
        if (*s == ' ' || *s == '\t') {
            char *t = s;
            while (*t == ' ' || *t == '\t')
                t++;
            size_t a = strlen(p->f[nf - 1].name), c = strlen(t);
            char *copy = malloc(a + c + 1);
            memcpy(copy, p->f[nf - 1].name, a);
            memcpy(copy + a, t, c + 1);
            p->copies[nf - 1] = copy;
            p->f[nf - 1].name = copy;
            p->f[nf - 1].name_len = a + c;
        } else {
            char *colon = strchr(s, ':');
            ck_assert_ptr_nonnull(colon);
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            p->f[nf++] = (struct kms_httpreq_field){s, strlen(s), v, strlen(v)};
        }
        s = lf + 1;
    }
    p->b.start = p->buf;
    p->b.size = (size_t)(s - p->buf);
    p->b.fields = p->f;
    p->b.n_fields = nf;
}

static void release(struct parsed *p)
{
    for (size_t i = 0; i < sizeof(p->copies) / sizeof(p->copies[0]); i++)
        free(p->copies[i]);
    free(p->buf);
}

#define HEAD "POST /twirp/custos.v1.KeyService/Encrypt HTTP/1.1\r\nHost: kms\r\n"

/* Checks raw (n bytes, NULs allowed): refused with a detail containing
 * `want`, or accepted when want is NULL. */
static void expect(const char *raw, size_t n, const char *want)
{
    struct parsed p;
    parse(&p, raw, n);
    kms_err_clear();
    kms_err rc = kms_httpreq_check_framing(&p.b);
    if (want == NULL)
        ck_assert_msg(rc == KMS_OK, "refused: %s", kms_err_detail());
    else
        ck_assert_msg(rc == KMS_ERR_INVALID_ARGUMENT && strstr(kms_err_detail(), want) != NULL,
                      "want a refusal with \"%s\", got %d \"%s\"", want, rc, kms_err_detail());
    release(&p);
}

#define EXPECT(lit, want) expect(lit, sizeof(lit) - 1, want)

START_TEST(honest_requests_pass)
{
    EXPECT(HEAD "Content-Type: application/protobuf\r\nContent-Length: 3\r\n\r\n", NULL);
    EXPECT(HEAD "Transfer-Encoding: chunked\r\n\r\n", NULL);
    EXPECT(HEAD "transfer-encoding:\t CHUNKED\r\n\r\n", NULL);
    EXPECT(HEAD "X-A:a\tb \t\r\nX-Empty:\r\nAccept: a\r\naccept: b\r\n\r\n", NULL);
    EXPECT("GET /livez HTTP/1.0\r\n\r\n", NULL);
}
END_TEST

START_TEST(a_nul_anywhere_is_refused)
{
    EXPECT(HEAD "Authorization: Bearer key\0junk\r\nContent-Length: 0\r\n\r\n",
           "NUL byte in or after the value of Authorization");
    EXPECT(HEAD "Content-Length: 0\r\nX-Correlation-Id: corr\0hidden\r\n\r\n", "NUL");
    EXPECT(HEAD "X-A: v\0\r\nContent-Length: 0\r\n\r\n", "NUL");
    EXPECT(HEAD "X-A: v\0\0\0\r\n\r\n", "NUL");
    EXPECT("POST /twirp/custos.v1.KeyService/Encrypt\0x HTTP/1.1\r\nHost: kms\r\n\r\n",
           "request target");
    EXPECT("PO\0ST /x HTTP/1.1\r\nHost: kms\r\n\r\n", "request line");
}
END_TEST

/* The documented limit: a NUL in place of the CR of a bare-LF line end
 * looks exactly like that CR. Pinned so that a change is noticed. */
START_TEST(a_nul_in_place_of_a_cr_is_the_documented_limit)
{
    EXPECT(HEAD "X-A: v\0\nContent-Length: 0\r\n\r\n", NULL);
}
END_TEST

START_TEST(line_ends_folds_and_names)
{
    EXPECT(HEAD "X-A: v\nContent-Length: 0\r\n\r\n", "bare LF");
    EXPECT(HEAD "Content-Length: 0\r\n\n", "bare LF");
    EXPECT(HEAD "X-A: v\r\n w\r\nContent-Length: 0\r\n\r\n", "obs-fold");
    EXPECT(HEAD "Content-Length: 0\r\nTransfer-Encoding: gzip\r\n chunked\r\n\r\n", "obs-fold");
    EXPECT(HEAD "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n", "token");
    EXPECT(HEAD "X-A: a\rb\r\n\r\n", "control character (0x0d)");
    EXPECT(HEAD "X-A: a\x7f\r\n\r\n", "control character (0x7f)");
    EXPECT(HEAD "X-A: a\x01\r\n\r\n", "control character (0x01)");
    EXPECT("GET /livez?x=1 HTTP/1.1\r\nHost: kms\r\n\r\n", "request target");
    EXPECT("GET  /livez HTTP/1.1\r\nHost: kms\r\n\r\n", "request line");
    EXPECT("GET /li\x01vez HTTP/1.1\r\nHost: kms\r\n\r\n", "request line");
}
END_TEST

START_TEST(framing_has_one_reading)
{
    EXPECT(HEAD "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length");
    EXPECT(HEAD "TRANSFER-ENCODING: Chunked\r\ncontent-length: 0\r\n\r\n", "both Content-Length");
    const char *const bad_te[] = {"chunked ", "xchunked", "gzip, chunked", "chunked;q=1",
                                  "identity", "", "chunked,"};
    for (size_t i = 0; i < sizeof(bad_te) / sizeof(bad_te[0]); i++) {
        char raw[256];
        int n = snprintf(raw, sizeof(raw), HEAD "Transfer-Encoding: %s\r\n\r\n", bad_te[i]);
        expect(raw, (size_t)n, "exactly \"chunked\"");
    }
    EXPECT("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1");
    EXPECT(HEAD "Content-Length: +5\r\n\r\n", "digits");
    EXPECT(HEAD "Content-Length: 12345678901234567890\r\n\r\n", "digits");
}
END_TEST

START_TEST(singletons_appear_once)
{
    EXPECT(HEAD "Authorization: Bearer a\r\nauthorization: Bearer a\r\n\r\n",
           "more than one Authorization header");
    EXPECT(HEAD "Content-Length: 1\r\nContent-Length: 1\r\n\r\n",
           "more than one Content-Length header");
    EXPECT(HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
           "more than one Transfer-Encoding header");
    EXPECT(HEAD "X-Correlation-Id: a\r\nX-CORRELATION-ID: b\r\n\r\n",
           "more than one X-Correlation-Id header");
    EXPECT(HEAD "Content-Type: a/b\r\nContent-Type: a/b\r\n\r\n",
           "more than one Content-Type header");
    EXPECT(HEAD "host: other\r\n\r\n", "more than one Host header");
}
END_TEST

START_TEST(at_most_100_fields)
{
    char raw[4096];
    size_t n = (size_t)snprintf(raw, sizeof(raw), "GET /livez HTTP/1.1\r\n");
    for (int i = 0; i < KMS_HTTP_MAX_FIELDS; i++)
        n += (size_t)snprintf(raw + n, sizeof(raw) - n, "X-%d: v\r\n", i);
    memcpy(raw + n, "\r\n", 2);
    expect(raw, n + 2, NULL);
    n += (size_t)snprintf(raw + n, sizeof(raw) - n, "X-last: v\r\n\r\n");
    expect(raw, n, "more than 100 header fields");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_httpreq");
    TCase *tc = tcase_create("framing");
    tcase_add_test(tc, honest_requests_pass);
    tcase_add_test(tc, a_nul_anywhere_is_refused);
    tcase_add_test(tc, a_nul_in_place_of_a_cr_is_the_documented_limit);
    tcase_add_test(tc, line_ends_folds_and_names);
    tcase_add_test(tc, framing_has_one_reading);
    tcase_add_test(tc, singletons_appear_once);
    tcase_add_test(tc, at_most_100_fields);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
