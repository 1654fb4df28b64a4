/*
 * kms_canon.c - canonical forms of phone numbers and email addresses (see
 * kms_canon.h for the rules and why).
 *
 * Every function writes at most as many bytes as it reads, and checks the
 * output capacity anyway; nothing here allocates.
 */
#include "kms_canon.h"

#include <string.h>
#include <strings.h>

#include "kms_utf8.h"

const char *kms_canon_name(enum kms_canon c)
{
    switch (c) {
    case KMS_CANON_RAW:
        return "raw";
    case KMS_CANON_E164:
        return "e164";
    case KMS_CANON_EMAIL:
        return "email";
    case KMS_CANON_EMAIL_CI:
        return "email-ci";
    }
    return "unknown";
}

bool kms_canon_valid(int c)
{
    return c >= KMS_CANON_RAW && c <= KMS_CANON_EMAIL_CI;
}

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void trim(const uint8_t **p, size_t *len)
{
    while (*len > 0 && is_space((*p)[0])) {
        (*p)++;
        (*len)--;
    }
    while (*len > 0 && is_space((*p)[*len - 1]))
        (*len)--;
}

static uint8_t lower(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

/* ---- E.164 ------------------------------------------------------------------ */

static kms_err canon_e164(const uint8_t *p, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    trim(&p, &len);
    if (len >= 4 && strncasecmp((const char *)p, "tel:", 4) == 0) {
        p += 4;
        len -= 4;
    }
    KMS_ENSURE(len >= 1 && p[0] == '+', KMS_ERR_INVALID_ARGUMENT,
               "not an E.164 number: it must start with '+' and the country code");
    KMS_ENSURE(cap >= 1, KMS_ERR_USAGE, "canonical output buffer too small");
    size_t o = 0, digits = 0, in_paren = 0;
    int paren = 0; /* 0 none yet, 1 open, 2 closed */
    out[o++] = '+';
    for (size_t i = 1; i < len; i++) {
        uint8_t c = p[i];
        if (c >= '0' && c <= '9') {
            KMS_ENSURE(digits < KMS_CANON_E164_DIGITS_MAX, KMS_ERR_INVALID_ARGUMENT,
                       "not an E.164 number: more than %d digits", KMS_CANON_E164_DIGITS_MAX);
            KMS_ENSURE(digits > 0 || c != '0', KMS_ERR_INVALID_ARGUMENT,
                       "not an E.164 number: a country code never starts with 0");
            KMS_ENSURE(o < cap, KMS_ERR_USAGE, "canonical output buffer too small");
            out[o++] = c;
            digits++;
            in_paren += paren == 1;
        } else if (c == ' ' || c == '-' || c == '.') {
            continue;
        } else if (c == '(') {
            KMS_ENSURE(paren == 0, KMS_ERR_INVALID_ARGUMENT,
                       "not an E.164 number: at most one pair of parentheses");
            paren = 1;
            in_paren = 0;
        } else if (c == ')') {
            KMS_ENSURE(paren == 1 && in_paren > 0, KMS_ERR_INVALID_ARGUMENT,
                       "not an E.164 number: unbalanced or empty parentheses");
            paren = 2;
        } else {
            return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                               "not an E.164 number: only digits, spaces, '-', '.' and "
                               "parentheses may follow the '+' (no letters, extensions or "
                               "parameters)");
        }
    }
    KMS_ENSURE(paren != 1, KMS_ERR_INVALID_ARGUMENT,
               "not an E.164 number: unbalanced or empty parentheses");
    KMS_ENSURE(digits >= KMS_CANON_E164_DIGITS_MIN, KMS_ERR_INVALID_ARGUMENT,
               "not an E.164 number: fewer than %d digits", KMS_CANON_E164_DIGITS_MIN);
    *out_len = o;
    return KMS_OK;
}

/* ---- email --------------------------------------------------------------------- */

/* RFC 5322 atext, plus every byte of a UTF-8 sequence (RFC 6531
 * UTF8-non-ascii); the sequences themselves are checked separately. */
static bool atext(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80)
        return true;
    return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool dot_atom(const uint8_t *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (s[i - 1] == '.')
                return false;
        } else if (!atext(s[i])) {
            return false;
        }
    }
    return true;
}

static kms_err check_domain(const uint8_t *d, size_t n)
{
    KMS_ENSURE(n >= 1, KMS_ERR_INVALID_ARGUMENT, "not an email address: empty domain");
    KMS_ENSURE(d[0] != '[', KMS_ERR_INVALID_ARGUMENT,
               "not a supported email address: address literals ([...]) are refused");
    KMS_ENSURE(n <= KMS_CANON_EMAIL_DOMAIN_MAX, KMS_ERR_INVALID_ARGUMENT,
               "not an email address: domain longer than %d bytes", KMS_CANON_EMAIL_DOMAIN_MAX);
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || d[i] == '.') {
            KMS_ENSURE(label >= 1 && label <= 63, KMS_ERR_INVALID_ARGUMENT,
                       "not an email address: domain labels must be 1..63 bytes");
            KMS_ENSURE(d[i - label] != '-' && d[i - 1] != '-', KMS_ERR_INVALID_ARGUMENT,
                       "not an email address: a domain label starts or ends with '-'");
            label = 0;
            continue;
        }
        uint8_t c = d[i];
        KMS_ENSURE(c < 0x80, KMS_ERR_INVALID_ARGUMENT,
                   "not a supported email address: give internationalised domains as "
                   "A-labels (xn--...)");
        KMS_ENSURE((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-',
                   KMS_ERR_INVALID_ARGUMENT,
                   "not an email address: the domain may hold only letters, digits, '-' and "
                   "'.'");
        label++;
    }
    return KMS_OK;
}

static kms_err canon_email(const uint8_t *p, size_t len, bool fold_local, uint8_t *out,
                           size_t cap, size_t *out_len)
{
    trim(&p, &len);
    size_t at = len;
    for (size_t i = len; i > 0; i--)
        if (p[i - 1] == '@') {
            at = i - 1;
            break;
        }
    KMS_ENSURE(at < len, KMS_ERR_INVALID_ARGUMENT, "not an email address: no '@'");
    const uint8_t *local = p, *dom = p + at + 1;
    size_t ll = at, dl = len - at - 1;
    if (dl > 0 && dom[dl - 1] == '.')
        dl--; /* the root label: "example.com." is "example.com" */
    KMS_GUARD(check_domain(dom, dl));
    KMS_ENSURE(ll >= 1, KMS_ERR_INVALID_ARGUMENT, "not an email address: empty local part");
    KMS_ENSURE(cap >= len, KMS_ERR_USAGE, "canonical output buffer too small");

    /* The local part's content, unquoted, is built in out first; it is never
     * longer than the local part as given. */
    size_t cl = 0;
    bool quoted = local[0] == '"';
    if (quoted) {
        KMS_ENSURE(ll >= 2 && local[ll - 1] == '"', KMS_ERR_INVALID_ARGUMENT,
                   "not an email address: unterminated quoted local part");
        for (size_t i = 1; i < ll - 1; i++) {
            uint8_t c = local[i];
            if (c == '\\') {
                KMS_ENSURE(i + 1 < ll - 1 && local[i + 1] >= 32 && local[i + 1] <= 126,
                           KMS_ERR_INVALID_ARGUMENT,
                           "not an email address: bad escape in quoted local part");
                c = local[++i];
            } else {
                KMS_ENSURE(c != '"' && (c >= 32 && c != 127), KMS_ERR_INVALID_ARGUMENT,
                           "not an email address: bad character in quoted local part");
            }
            out[cl++] = c;
        }
    } else {
        KMS_ENSURE(dot_atom(local, ll), KMS_ERR_INVALID_ARGUMENT,
                   "not an email address: the local part is neither a dot-atom nor quoted");
        memcpy(out, local, ll);
        cl = ll;
    }
    KMS_ENSURE(kms_utf8_valid_nonul(out, cl), KMS_ERR_INVALID_ARGUMENT,
               "not an email address: the local part is not valid UTF-8");
    if (fold_local) {
        for (size_t i = 0; i < cl; i++) {
            KMS_ENSURE(out[i] < 0x80, KMS_ERR_INVALID_ARGUMENT,
                       "case-insensitive matching needs an ASCII local part; use EMAIL");
            out[i] = lower(out[i]);
        }
    }

    size_t o;
    if (!quoted || dot_atom(out, cl)) {
        o = cl;
    } else {
        /* Requote, escaping only what must be escaped. Each escape stands
         * for one that the input had, so this still fits in cap >= len;
         * build it from the end so the content is not overwritten. */
        size_t esc = 0;
        for (size_t i = 0; i < cl; i++)
            esc += out[i] == '"' || out[i] == '\\';
        o = cl + esc + 2;
        KMS_ENSURE(o <= cap, KMS_ERR_USAGE, "canonical output buffer too small");
        size_t w = o;
        out[--w] = '"';
        for (size_t i = cl; i > 0; i--) {
            uint8_t c = out[i - 1];
            out[--w] = c;
            if (c == '"' || c == '\\')
                out[--w] = '\\';
        }
        out[--w] = '"';
    }
    KMS_ENSURE(o <= KMS_CANON_EMAIL_LOCAL_MAX, KMS_ERR_INVALID_ARGUMENT,
               "not an email address: local part longer than %d bytes",
               KMS_CANON_EMAIL_LOCAL_MAX);
    KMS_ENSURE(o + 1 + dl <= KMS_CANON_EMAIL_MAX && o + 1 + dl <= cap, KMS_ERR_INVALID_ARGUMENT,
               "not an email address: longer than %d bytes", KMS_CANON_EMAIL_MAX);
    out[o++] = '@';
    for (size_t i = 0; i < dl; i++)
        out[o++] = lower(dom[i]);
    *out_len = o;
    return KMS_OK;
}

kms_err kms_canon_apply(enum kms_canon c, const uint8_t *in, size_t len, uint8_t *out,
                        size_t out_cap, size_t *out_len)
{
    *out_len = 0;
    static const uint8_t empty[1];
    if (in == NULL)
        in = empty;
    kms_err rc;
    switch (c) {
    case KMS_CANON_RAW:
        KMS_ENSURE(out_cap >= len, KMS_ERR_USAGE, "canonical output buffer too small");
        if (len)
            memcpy(out, in, len);
        *out_len = len;
        return KMS_OK;
    case KMS_CANON_E164:
        rc = canon_e164(in, len, out, out_cap, out_len);
        break;
    case KMS_CANON_EMAIL:
    case KMS_CANON_EMAIL_CI:
        rc = canon_email(in, len, c == KMS_CANON_EMAIL_CI, out, out_cap, out_len);
        break;
    default:
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "unknown canonicalizer %d", (int)c);
    }
    if (rc != KMS_OK)
        *out_len = 0;
    return rc;
}
