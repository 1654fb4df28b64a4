/*
 * xks_sigv4.c - AWS Signature Version 4 verification (xks_sigv4.h).
 *
 * The canonical request is, one item a line: method, canonical URI,
 * canonical query, one "name:value" line per signed header, an empty line,
 * the signed header list, the hex SHA-256 of the body. The string to sign is
 * "AWS4-HMAC-SHA256", the request time, the scope DATE/REGION/SERVICE/
 * aws4_request and the hex SHA-256 of the canonical request; the key is
 * HMAC("AWS4" + secret, DATE) -> REGION -> SERVICE -> "aws4_request".
 */
#include "xks_sigv4.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "kms_buf.h"

/* The canonical request never needs more: headers are bounded by the
 * front, the query by XKS_SIGV4_MAX_QUERY_PARAMS. */
#define CANON_MAX (32 * 1024)
#define SIGV4_ALG "AWS4-HMAC-SHA256"

static const char hexd[] = "0123456789abcdef";

static void hex_encode(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[in[i] >> 4];
        out[2 * i + 1] = hexd[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static kms_err unauth(const char *what)
{
    return kms_err_set(KMS_ERR_UNAUTHENTICATED, "signature: %s", what);
}

/* Copy the text of src up to (not including) stop into dst[cap]; the
 * position after it in *end. False when too long or stop is missing. */
static bool take_until(const char *src, char stop, char *dst, size_t cap, const char **end)
{
    const char *p = strchr(src, stop);
    if (p == NULL || (size_t)(p - src) >= cap || p == src)
        return false;
    memcpy(dst, src, (size_t)(p - src));
    dst[p - src] = '\0';
    *end = p + 1;
    return true;
}

static bool all_chars(const char *s, const char *allowed_extra, bool lower_only)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (!lower_only && c >= 'A' && c <= 'Z') || strchr(allowed_extra, c) != NULL;
        if (!ok)
            return false;
    }
    return true;
}

kms_err xks_sigv4_parse(const char *authz, xks_sigv4_auth *out)
{
    memset(out, 0, sizeof(*out));
    if (authz == NULL)
        return unauth("no Authorization header");
    if (strlen(authz) > XKS_SIGV4_MAX_AUTHZ)
        return unauth("Authorization header too long");
    const char *p = authz;
    if (strncmp(p, SIGV4_ALG " ", strlen(SIGV4_ALG) + 1) != 0)
        return unauth("Authorization is not AWS4-HMAC-SHA256");
    p += strlen(SIGV4_ALG) + 1;
    while (*p == ' ')
        p++;
    if (strncmp(p, "Credential=", 11) != 0)
        return unauth("Authorization has no Credential");
    p += 11;
    char term[16];
    if (!take_until(p, '/', out->access_key, sizeof(out->access_key), &p) ||
        !take_until(p, '/', out->date, sizeof(out->date), &p) ||
        !take_until(p, '/', out->region, sizeof(out->region), &p) ||
        !take_until(p, '/', out->service, sizeof(out->service), &p) ||
        !take_until(p, ',', term, sizeof(term), &p) || strcmp(term, "aws4_request") != 0)
        return unauth("malformed Credential scope");
    if (strlen(out->date) != 8 || !all_chars(out->date, "", true) ||
        !all_chars(out->access_key, "", false) || !all_chars(out->region, "-", true) ||
        !all_chars(out->service, "-", true))
        return unauth("malformed Credential scope");
    while (*p == ' ')
        p++;
    if (strncmp(p, "SignedHeaders=", 14) != 0)
        return unauth("Authorization has no SignedHeaders");
    p += 14;
    if (!take_until(p, ',', out->signed_headers, sizeof(out->signed_headers), &p) ||
        !all_chars(out->signed_headers, "-;", true))
        return unauth("malformed SignedHeaders");
    while (*p == ' ')
        p++;
    if (strncmp(p, "Signature=", 10) != 0)
        return unauth("Authorization has no Signature");
    p += 10;
    if (strlen(p) != 64 || !all_chars(p, "", true) || strspn(p, hexd) != 64)
        return unauth("malformed Signature");
    memcpy(out->signature, p, 65);
    return KMS_OK;
}

/* The path is canonical as it is (xks_sigv4.h): refuse anything else. */
static kms_err append_path(struct kms_buf *b, const char *path)
{
    if (path == NULL || path[0] != '/')
        return unauth("path must be absolute");
    if (!all_chars(path, "-._~/", false))
        return unauth("path has characters outside the unreserved set");
    for (const char *s = path; *s; s++) {
        if (*s != '/')
            continue;
        const char *seg = s + 1;
        size_t n = strcspn(seg, "/");
        bool last = seg[n] == '\0';
        if ((n == 0 && !last) || (n == 1 && seg[0] == '.') ||
            (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return unauth("path has an empty, '.' or '..' segment");
    }
    return kms_buf_append(b, path, strlen(path));
}

struct qparam {
    char *name, *value;
};

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decode src[0..n-1] and re-encode it the SigV4 way (unreserved
 * characters as is, everything else %XX in upper case). NULL on a bad
 * escape or when memory runs out. */
static char *query_encode(const char *src, size_t n)
{
    char *out = malloc(3 * n + 1);
    size_t o = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n || hexval(src[i + 1]) < 0 || hexval(src[i + 2]) < 0) {
                free(out);
                return NULL;
            }
            c = hexval(src[i + 1]) * 16 + hexval(src[i + 2]);
            i += 2;
        }
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = "0123456789ABCDEF"[c >> 4];
            out[o++] = "0123456789ABCDEF"[c & 0xf];
        }
    }
    out[o] = '\0';
    return out;
}

static int qparam_cmp(const void *a, const void *b)
{
    const struct qparam *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    return r != 0 ? r : strcmp(x->value, y->value);
}

/* Split query on '&', each part on its first '=', sort by name then value. */
static kms_err append_query(struct kms_buf *b, const char *query)
{
    struct qparam ps[XKS_SIGV4_MAX_QUERY_PARAMS];
    size_t n = 0;
    kms_err rc = KMS_OK;
    for (const char *q = query; q != NULL && *q;) {
        size_t len = strcspn(q, "&");
        if (len > 0) {
            KMS_ENSURE_GOTO(n < XKS_SIGV4_MAX_QUERY_PARAMS, out, KMS_ERR_UNAUTHENTICATED,
                            "signature: too many query parameters");
            const char *eq = memchr(q, '=', len);
            size_t nl = eq != NULL ? (size_t)(eq - q) : len;
            ps[n].name = query_encode(q, nl);
            ps[n].value = eq != NULL ? query_encode(eq + 1, len - nl - 1) : strdup("");
            n++;
            KMS_ENSURE_GOTO(ps[n - 1].name != NULL && ps[n - 1].value != NULL, out,
                            KMS_ERR_UNAUTHENTICATED, "signature: malformed query");
        }
        q += len;
        if (*q == '&')
            q++;
    }
    qsort(ps, n, sizeof(ps[0]), qparam_cmp);
    for (size_t i = 0; i < n; i++) {
        KMS_GUARD_GOTO(i > 0 ? kms_buf_append(b, "&", 1) : KMS_OK, out);
        KMS_GUARD_GOTO(kms_buf_append(b, ps[i].name, strlen(ps[i].name)), out);
        KMS_GUARD_GOTO(kms_buf_append(b, "=", 1), out);
        KMS_GUARD_GOTO(kms_buf_append(b, ps[i].value, strlen(ps[i].value)), out);
    }
out:
    for (size_t i = 0; i < n; i++) {
        free(ps[i].name);
        free(ps[i].value);
    }
    return rc;
}

/* "name:value\n" with the value trimmed and its runs of blanks collapsed. */
static kms_err append_header(struct kms_buf *b, const char *name, const char *value)
{
    KMS_GUARD(kms_buf_append(b, name, strlen(name)));
    KMS_GUARD(kms_buf_append(b, ":", 1));
    const char *v = value;
    while (*v == ' ' || *v == '\t')
        v++;
    bool pending_space = false;
    for (; *v; v++) {
        if (*v == ' ' || *v == '\t') {
            pending_space = true;
            continue;
        }
        if ((unsigned char)*v < 0x20 || *v == 0x7f)
            return unauth("control character in a signed header");
        if (pending_space)
            KMS_GUARD(kms_buf_append(b, " ", 1));
        pending_space = false;
        KMS_GUARD(kms_buf_append(b, v, 1));
    }
    return kms_buf_append(b, "\n", 1);
}

/* One line per signed header; the list must be sorted, unique, and name
 * host and x-amz-date. */
static kms_err append_headers(struct kms_buf *b, const xks_sigv4_req *req, const char *signed_h)
{
    char prev[128] = "", name[128];
    bool host = false, date = false;
    size_t count = 0;
    for (const char *s = signed_h; *s;) {
        size_t n = strcspn(s, ";");
        if (n == 0 || n >= sizeof(name))
            return unauth("malformed SignedHeaders");
        memcpy(name, s, n);
        name[n] = '\0';
        if (++count > XKS_SIGV4_MAX_SIGNED)
            return unauth("too many signed headers");
        if (prev[0] != '\0' && strcmp(prev, name) >= 0)
            return unauth("SignedHeaders not sorted or repeated");
        const char *value = req->header(req->header_ctx, name);
        if (value == NULL)
            return kms_err_set(KMS_ERR_UNAUTHENTICATED, "signature: signed header %s is absent",
                               name);
        KMS_GUARD(append_header(b, name, value));
        host |= strcmp(name, "host") == 0;
        date |= strcmp(name, "x-amz-date") == 0;
        memcpy(prev, name, n + 1);
        s += n;
        if (*s == ';' && *++s == '\0')
            return unauth("malformed SignedHeaders");
    }
    if (!host || !date)
        return unauth("SignedHeaders must include host and x-amz-date");
    return KMS_OK;
}

static kms_err sha256_hex(const void *data, size_t n, char out[65])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    if (EVP_Digest(data, n, md, NULL, EVP_sha256(), NULL) != 1)
        return kms_err_set(KMS_ERR_INTERNAL, "SHA-256 failed");
    hex_encode(md, sizeof(md), out);
    return KMS_OK;
}

static kms_err canonical_request(const xks_sigv4_req *req, const char *signed_h,
                                 const char *body_hash, struct kms_buf *b)
{
    KMS_GUARD(kms_buf_append(b, req->method, strlen(req->method)));
    KMS_GUARD(kms_buf_append(b, "\n", 1));
    KMS_GUARD(append_path(b, req->path));
    KMS_GUARD(kms_buf_append(b, "\n", 1));
    KMS_GUARD(append_query(b, req->query));
    KMS_GUARD(kms_buf_append(b, "\n", 1));
    KMS_GUARD(append_headers(b, req, signed_h));
    KMS_GUARD(kms_buf_append(b, "\n", 1));
    KMS_GUARD(kms_buf_append(b, signed_h, strlen(signed_h)));
    KMS_GUARD(kms_buf_append(b, "\n", 1));
    return kms_buf_append(b, body_hash, 64);
}

static bool hmac(const uint8_t *key, size_t klen, const char *msg, size_t mlen,
                 uint8_t out[32])
{
    unsigned int olen = 32;
    return HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, out, &olen) !=
               NULL &&
           olen == 32;
}

/* The signing key chain and the final HMAC over the string to sign. */
static kms_err signature_of(const char *sts, const char *date, const char *region,
                            const char *service, const uint8_t *secret, size_t secret_len,
                            char out[65])
{
    kms_err rc = KMS_OK;
    uint8_t k[32], sig[32];
    size_t klen = secret_len + 4;
    uint8_t *k0 = malloc(klen);
    KMS_ENSURE(k0 != NULL, KMS_ERR_NOMEM, "out of memory");
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, secret, secret_len);
    bool ok = hmac(k0, klen, date, strlen(date), k) &&
              hmac(k, 32, region, strlen(region), k) &&
              hmac(k, 32, service, strlen(service), k) &&
              hmac(k, 32, "aws4_request", 12, k) && hmac(k, 32, sts, strlen(sts), sig);
    if (ok)
        hex_encode(sig, 32, out);
    else
        rc = kms_err_set(KMS_ERR_INTERNAL, "HMAC-SHA256 failed");
    OPENSSL_cleanse(k0, klen);
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(sig, sizeof(sig));
    free(k0);
    return rc;
}

kms_err xks_sigv4_sign(const xks_sigv4_req *req, const char *signed_headers,
                       const char *amz_date, const char *region, const char *service,
                       const uint8_t *secret, size_t secret_len, char out[65])
{
    kms_err rc;
    struct kms_buf b;
    char body_hash[65], creq_hash[65], date[9], sts[512];
    kms_buf_init(&b, CANON_MAX);
    KMS_GUARD_GOTO(sha256_hex(req->body != NULL ? (const void *)req->body : "", req->body_len,
                              body_hash),
                   out);
    KMS_GUARD_GOTO(canonical_request(req, signed_headers, body_hash, &b), out);
    KMS_GUARD_GOTO(sha256_hex(b.data, b.len, creq_hash), out);
    KMS_ENSURE_GOTO(strlen(amz_date) == 16, out, KMS_ERR_UNAUTHENTICATED,
                    "signature: malformed x-amz-date");
    memcpy(date, amz_date, 8);
    date[8] = '\0';
    int n = snprintf(sts, sizeof(sts), SIGV4_ALG "\n%s\n%s/%s/%s/aws4_request\n%s", amz_date,
                     date, region, service, creq_hash);
    KMS_ENSURE_GOTO(n > 0 && (size_t)n < sizeof(sts), out, KMS_ERR_UNAUTHENTICATED,
                    "signature: scope too long");
    rc = signature_of(sts, date, region, service, secret, secret_len, out);
out:
    kms_buf_wipe(&b);
    return rc;
}

/* YYYYMMDDTHHMMSSZ to seconds since the epoch; -1 when malformed. */
static time_t parse_amz_date(const char *s)
{
    if (s == NULL || strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
        return -1;
    for (int i = 0; i < 15; i++)
        if (i != 8 && !isdigit((unsigned char)s[i]))
            return -1;
    struct tm tm = {0};
    tm.tm_year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0') - 1900;
    tm.tm_mon = (s[4] - '0') * 10 + (s[5] - '0') - 1;
    tm.tm_mday = (s[6] - '0') * 10 + (s[7] - '0');
    tm.tm_hour = (s[9] - '0') * 10 + (s[10] - '0');
    tm.tm_min = (s[11] - '0') * 10 + (s[12] - '0');
    tm.tm_sec = (s[13] - '0') * 10 + (s[14] - '0');
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
        return -1;
    return timegm(&tm);
}

time_t xks_sigv4_request_time(const xks_sigv4_req *req)
{
    return parse_amz_date(req->header(req->header_ctx, "x-amz-date"));
}

kms_err xks_sigv4_verify(const xks_sigv4_req *req, const xks_sigv4_auth *auth,
                         const char *service, const uint8_t *secret, size_t secret_len,
                         time_t now)
{
    char want[65], body_hash[65];
    if (strcmp(auth->service, service) != 0)
        return unauth("credential scope names another service");
    const char *amz_date = req->header(req->header_ctx, "x-amz-date");
    time_t t = parse_amz_date(amz_date);
    if (t < 0)
        return unauth("missing or malformed x-amz-date");
    if (strncmp(amz_date, auth->date, 8) != 0)
        return unauth("x-amz-date is not on the credential scope's date");
    if (t > now + XKS_SIGV4_MAX_SKEW_SECONDS || t < now - XKS_SIGV4_MAX_SKEW_SECONDS)
        return unauth("request time is more than 5 minutes from the server's clock");
    const char *sent_hash = req->header(req->header_ctx, "x-amz-content-sha256");
    if (sent_hash != NULL) {
        KMS_GUARD(sha256_hex(req->body != NULL ? (const void *)req->body : "", req->body_len,
                             body_hash));
        if (strcmp(sent_hash, body_hash) != 0)
            return unauth("x-amz-content-sha256 is not the body's hash");
    }
    KMS_GUARD(xks_sigv4_sign(req, auth->signed_headers, amz_date, auth->region, service, secret,
                             secret_len, want));
    bool same = CRYPTO_memcmp(want, auth->signature, 64) == 0;
    OPENSSL_cleanse(want, sizeof(want));
    return same ? KMS_OK : unauth("signature does not match");
}
