/*
 * audit_keyset.c - trusted audit public keys: key files in, lookups and
 * signature checks out (see the header for the format).
 */
#include "audit_keyset.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

struct audit_keyset {
    struct audit_key *k;
    size_t n, cap;
};

static const char PEM_BEGIN[] = "-----BEGIN PUBLIC KEY-----";
static const char PEM_END[] = "-----END PUBLIC KEY-----";

kms_err audit_keyset_new(struct audit_keyset **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? KMS_OK : kms_err_set(KMS_ERR_NOMEM, "out of memory");
}

void audit_keyset_free(struct audit_keyset *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->n; i++) {
        EVP_PKEY_free(ks->k[i].pk);
        free(ks->k[i].source);
    }
    free(ks->k);
    free(ks);
}

static bool is_p256(EVP_PKEY *pk)
{
    char group[64];
    size_t gl = 0;
    return EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                          &gl) == 1 &&
           strcmp(group, "prime256v1") == 0;
}

kms_err audit_keyset_add(struct audit_keyset *ks, const struct audit_key *k)
{
    const char *src = k->source ? k->source : "";
    kms_err rc = KMS_OK;
    if (k->pk == NULL || !is_p256(k->pk)) {
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: key %s is not an ECDSA P-256 public key",
                         src, k->key_id);
        goto drop;
    }
    if (!audit_region_ok(k->region) || !audit_key_id_ok(k->key_id)) {
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: malformed region or key id", src);
        goto drop;
    }
    for (size_t i = 0; i < ks->n; i++) {
        struct audit_key *o = &ks->k[i];
        if (strcmp(o->region, k->region) != 0 || strcmp(o->key_id, k->key_id) != 0)
            continue;
        if (EVP_PKEY_eq(o->pk, k->pk) != 1) {
            rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                             "%s: key %s of region %s differs from the one in %s", src, k->key_id,
                             k->region, o->source);
            goto drop;
        }
        /* The same key twice (an old and a new copy): the newer file has
         * the end of its validity filled in. */
        if (k->not_after_ms != 0 && (o->not_after_ms == 0 || k->not_after_ms < o->not_after_ms))
            o->not_after_ms = k->not_after_ms;
        goto drop;
    }
    struct audit_key *grown = audit_grow(ks->k, &ks->cap, ks->n, sizeof(*grown), 8);
    if (grown == NULL)
        goto nomem;
    ks->k = grown;
    struct audit_key *dst = &ks->k[ks->n];
    *dst = *k;
    if ((dst->source = strdup(src)) == NULL)
        goto nomem;
    ks->n++;
    return KMS_OK;
nomem:
    rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
drop:
    EVP_PKEY_free(k->pk);
    return rc;
}

/* The value of header `name` if the line (len bytes) is one. */
static const char *header_value(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len > n + 1 && strncasecmp(line, name, n) == 0 && line[n] == ':') {
        const char *v = line + n + 1;
        while (v < line + len && (*v == ' ' || *v == '\t'))
            v++;
        return v;
    }
    return NULL;
}

/* One header line into k; which bit of `have` it sets. 0: not a header
 * line; -1: a header line with a bad value. */
static int parse_header(struct audit_key *k, const char *p, size_t ll)
{
    static const char *const names[] = {"Custos-Audit-Region", "Custos-Audit-Key-Id",
                                        "Custos-Audit-Not-Before-Ms", "Custos-Audit-Not-After-Ms"};
    for (int i = 0; i < 4; i++) {
        const char *v = header_value(p, ll, names[i]);
        if (v == NULL)
            continue;
        char val[AUDIT_REGION_MAX + 2];
        size_t vl = ll - (size_t)(v - p);
        if (vl >= sizeof(val))
            return -2;
        memcpy(val, v, vl);
        val[vl] = '\0';
        bool ok;
        if (i == 0) {
            ok = audit_region_ok(val);
            snprintf(k->region, sizeof(k->region), "%.*s", AUDIT_REGION_MAX, val);
        } else if (i == 1) {
            ok = audit_key_id_ok(val);
            snprintf(k->key_id, sizeof(k->key_id), "%.*s", AUDIT_KEY_ID_MAX, val);
        } else {
            ok = audit_parse_i64(val, i == 2 ? &k->not_before_ms : &k->not_after_ms);
        }
        return ok ? 1 << i : -1;
    }
    return 0;
}

kms_err audit_keyset_parse(struct audit_keyset *ks, const char *source, const char *text,
                           size_t len)
{
    const char *p = text, *end = text + len;
    struct audit_key k;
    int have = 0; /* bits: region, key id, not before, not after */
    size_t found = 0;
    memset(&k, 0, sizeof(k));
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        int bit = parse_header(&k, p, ll);
        if (bit == -2)
            return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: header value too long", source);
        if (bit == -1)
            return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: bad header line '%.*s'", source,
                               (int)ll, p);
        if (bit > 0) {
            have |= bit;
        } else if (ll == sizeof(PEM_BEGIN) - 1 && memcmp(p, PEM_BEGIN, ll) == 0) {
            /* As strstr would on the file read as a string: up to a NUL. */
            const char *stop = memmem(p, strnlen(p, (size_t)(end - p)), PEM_END,
                                      sizeof(PEM_END) - 1);
            if (stop == NULL)
                return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: unterminated PEM block",
                                   source);
            stop += sizeof(PEM_END) - 1;
            if (have != 15)
                return kms_err_set(
                    KMS_ERR_INVALID_ARGUMENT,
                    "%s: a public key without its Custos-Audit-Region, -Key-Id,\n"
                    "  -Not-Before-Ms and -Not-After-Ms lines (write keys with\n"
                    "  `kmsctl audit keys --out-dir DIR`)",
                    source);
            BIO *bio = BIO_new_mem_buf(p, (int)(stop - p));
            k.pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
            BIO_free(bio);
            ERR_clear_error();
            k.source = (char *)source;
            KMS_GUARD(audit_keyset_add(ks, &k));
            found++;
            memset(&k, 0, sizeof(k));
            have = 0;
            nl = memchr(stop, '\n', (size_t)(end - stop));
        }
        p = nl ? nl + 1 : end;
    }
    if (found == 0)
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s: no audit public key in it", source);
    return KMS_OK;
}

static kms_err load_file(struct audit_keyset *ks, const char *path)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    KMS_GUARD(audit_file_read(path, AUDIT_TEXT_FILE_MAX, &buf, &len));
    kms_err rc = audit_keyset_parse(ks, path, (const char *)buf, len);
    free(buf);
    return rc;
}

static int pem_name(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".pem") == 0;
}

kms_err audit_keyset_load(struct audit_keyset *ks, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return load_file(ks, path);
    struct dirent **list = NULL;
    int n = scandir(path, &list, pem_name, alphasort);
    if (n < 0)
        return kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
    kms_err rc = KMS_OK;
    if (n == 0)
        rc = kms_err_set(KMS_ERR_NOT_FOUND, "%s: no .pem files", path);
    for (int i = 0; i < n; i++) {
        char *f = NULL;
        if (rc == KMS_OK) {
            if (asprintf(&f, "%s/%s", path, list[i]->d_name) < 0) {
                f = NULL;
                rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
            } else {
                rc = load_file(ks, f);
            }
        }
        free(f);
        free(list[i]);
    }
    free(list);
    return rc;
}

const struct audit_key *audit_keyset_find(const struct audit_keyset *ks, const char *region,
                                          const char *key_id)
{
    for (size_t i = 0; i < ks->n; i++)
        if (strcmp(ks->k[i].region, region) == 0 && strcmp(ks->k[i].key_id, key_id) == 0)
            return &ks->k[i];
    return NULL;
}

bool audit_key_verify(const struct audit_key *k, const uint8_t *msg, size_t len,
                      const uint8_t *sig, size_t sig_len)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = c && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, k->pk) == 1 &&
              EVP_DigestVerify(c, sig, sig_len, msg, len) == 1;
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    return ok;
}

bool audit_key_pem_ok(const char *pem)
{
    if (strncmp(pem, PEM_BEGIN, sizeof(PEM_BEGIN) - 1) != 0 || pem[sizeof(PEM_BEGIN) - 1] != '\n')
        return false;
    const char *p = pem + sizeof(PEM_BEGIN);
    while (*p && *p != '-') {
        size_t n = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=");
        if (n == 0 || n > 76 || p[n] != '\n')
            return false;
        p += n + 1;
    }
    if (strncmp(p, PEM_END, sizeof(PEM_END) - 1) != 0)
        return false;
    p += sizeof(PEM_END) - 1;
    return strcmp(p, "") == 0 || strcmp(p, "\n") == 0;
}

char *audit_key_file_text(const Custos__V1__AuditKey *k)
{
    char *s = NULL;
    if (asprintf(&s,
                 "Custos-Audit-Region: %s\n"
                 "Custos-Audit-Key-Id: %s\n"
                 "Custos-Audit-Not-Before-Ms: %" PRId64 "\n"
                 "Custos-Audit-Not-After-Ms: %" PRId64 "\n"
                 "%s%s",
                 k->region, k->key_id, k->not_before_ms, k->not_after_ms, k->public_key_pem,
                 strchr(k->public_key_pem, '\0')[-1] == '\n' ? "" : "\n") < 0)
        return NULL;
    return s;
}
