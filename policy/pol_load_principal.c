/*
 * pol_load_principal.c - the principals of a policy document (global and
 * per tenant): API keys, certificate subjects, officer keys, regions;
 * resolving a principal named elsewhere in the document; public keys in
 * PEM (pol_load_principal.h).
 */
#include "pol_load_principal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "kms_log.h"
#include "pol_doc.h"
#include "pol_doc_internal.h"
#include "pol_json.h"

static bool list_has(const char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0)
            return true;
    return false;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static kms_err add_api_key(struct pol_doc *doc, const struct pol_principal *p, const json_t *v,
                           const char *path, long slot)
{
    KMS_GUARD(pol_json_expect(v, JSON_STRING, "a string", path));
    const char *hex = json_string_value(v);
    KMS_ENSURE(json_string_length(v) == 2 * POL_SHA256_LEN, KMS_ERR_CONFIG,
               "%s: expected 64 hex digits (the SHA-256 of the API key)", path);
    struct pol_cred *cred = &doc->creds[doc->n_creds];
    for (size_t i = 0; i < POL_SHA256_LEN; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        KMS_ENSURE(hi >= 0 && lo >= 0, KMS_ERR_CONFIG,
                   "%s: expected 64 hex digits (the SHA-256 of the API key)", path);
        cred->sha256[i] = (uint8_t)(hi << 4 | lo);
    }
    cred->principal = p;
    cred->slot = slot;
    cred->seq = doc->n_creds++;
    return KMS_OK;
}

static kms_err load_api_keys(struct pol_doc *doc, const struct pol_principal *p, const json_t *v,
                             const char *path)
{
    char item[POL_PATH_LEN];
    if (!json_is_array(v))
        return add_api_key(doc, p, v, path, -1);
    size_t n = json_array_size(v);
    KMS_ENSURE(n > 0, KMS_ERR_CONFIG, "%s: must not be empty", path);
    KMS_ENSURE(n <= POL_MAX_API_KEYS, KMS_ERR_CONFIG, "%s: too many entries (%zu, at most %d)",
               path, n, POL_MAX_API_KEYS);
    for (size_t i = 0; i < n; i++) {
        pol_path_index(item, path, i);
        KMS_GUARD(add_api_key(doc, p, json_array_get(v, i), item, (long)i));
    }
    return KMS_OK;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* One PEM public key, alone: an ECDSA P-256 key (officers) or an RSA key of
 * 2048..4096 bits (recovery recipients). */
kms_err pol_load_public_key(const char *pem, const char *path, bool rsa, EVP_PKEY **out)
{
    kms_err rc = KMS_OK;
    char group[64];
    size_t group_len = 0;
    EVP_PKEY *pkey = NULL;
    BIO *bio = NULL;
    const char *begin = pem + strspn(pem, " \t\r\n");

    /* PEM readers skip blocks with other labels: insist the text *is* one
     * public key, not a certificate or private key followed by one. Never
     * quote the text: a private key pasted by mistake must not reach a log. */
    KMS_ENSURE_GOTO(strncmp(begin, "-----BEGIN PUBLIC KEY-----", 26) == 0, done, KMS_ERR_CONFIG,
                    "%s: expected a PEM public key (-----BEGIN PUBLIC KEY-----)", path);
    bio = BIO_new_mem_buf(begin, -1);
    KMS_ENSURE_GOTO(bio != NULL, done, KMS_ERR_NOMEM, "out of memory");
    pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    KMS_ENSURE_GOTO(pkey != NULL, done, KMS_ERR_CONFIG, "%s: not a valid PEM public key", path);
    char *rest = NULL;
    long rest_len = BIO_get_mem_data(bio, &rest);
    for (long i = 0; i < rest_len; i++)
        KMS_ENSURE_GOTO(rest[i] == ' ' || rest[i] == '\t' || rest[i] == '\r' || rest[i] == '\n',
                        done, KMS_ERR_CONFIG, "%s: unexpected data after the public key", path);
    if (rsa) {
        int bits = EVP_PKEY_get_bits(pkey);
        KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "RSA") && bits >= 2048 && bits <= 4096, done,
                        KMS_ERR_CONFIG, "%s: recipients need an RSA key of 2048..4096 bits", path);
        *out = pkey;
        pkey = NULL;
        goto done;
    }
    KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "EC"), done, KMS_ERR_CONFIG,
                    "%s: %s key; officers need an ECDSA P-256 key", path,
                    EVP_PKEY_get0_type_name(pkey) ? EVP_PKEY_get0_type_name(pkey) : "non-EC");
    KMS_ENSURE_GOTO(EVP_PKEY_get_group_name(pkey, group, sizeof(group), &group_len) == 1, done,
                    KMS_ERR_CONFIG, "%s: EC key without a named curve; officers need P-256", path);
    KMS_ENSURE_GOTO(strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0, done,
                    KMS_ERR_CONFIG, "%s: curve %s; officers need an ECDSA P-256 key", path, group);
    *out = pkey;
    pkey = NULL;
done:
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    if (rc != KMS_OK)
        ERR_clear_error();
    return rc;
}

static const char *const principal_fields[] = {"id",           "description",     "role",
                                               "home_region",  "allowed_regions", "api_key_sha256",
                                               "cert_subject", "public_key_pem",  NULL};

/* t is NULL for a global principal. */
static kms_err load_principal(struct pol_loader *ld, const struct pol_tenant *t, const json_t *obj,
                              const char *path, struct pol_principal *p)
{
    const char *s;
    json_t *v;
    char fpath[POL_PATH_LEN], c[POL_CLIP_LEN];

    KMS_GUARD(pol_json_expect_object(obj, path));
    KMS_GUARD(pol_json_check_fields(obj, path, principal_fields));
    KMS_GUARD(pol_json_string(obj, path, "id", true, POL_STR_ID, &p->id));
    KMS_GUARD(pol_json_string(obj, path, "description", false, POL_STR_TEXT, &s));

    pol_path_join(fpath, path, "role");
    KMS_GUARD(pol_json_field(obj, path, "role", true, &v));
    KMS_GUARD(pol_json_expect(v, JSON_STRING, "a string", fpath));
    KMS_ENSURE(pol_role_from_name(json_string_value(v), &p->role), KMS_ERR_CONFIG,
               "%s: unknown role \"%s\"", fpath, pol_json_clip(json_string_value(v), c));
    KMS_ENSURE(t != NULL || p->role == POL_ROLE_AUDITOR || p->role == POL_ROLE_OPERATOR,
               KMS_ERR_CONFIG,
               "%s: role %s needs a tenant (define the principal under tenants[].principals)",
               fpath, pol_role_name(p->role));

    pol_path_join(fpath, path, "home_region");
    KMS_GUARD(pol_json_string(obj, path, "home_region", true, POL_STR_REGION, &p->home_region));
    KMS_ENSURE(t == NULL || list_has(t->regions, t->n_regions, p->home_region), KMS_ERR_CONFIG,
               "%s: region \"%s\" is not in the tenant's allowed_regions", fpath, p->home_region);

    KMS_GUARD(pol_json_string_list(obj, path, "allowed_regions", false, POL_STR_REGION,
                                   POL_MAX_REGIONS, &p->regions, &p->n_regions));
    pol_path_join(fpath, path, "allowed_regions");
    /* Brokers use keys, auditors read logs: both are bound to their home
     * region unless allowed_regions names more. */
    KMS_ENSURE(p->regions == NULL || p->role == POL_ROLE_BROKER || p->role == POL_ROLE_AUDITOR,
               KMS_ERR_CONFIG,
               "%s: only brokers and auditors are bound to their home region; role %s takes no "
               "allowed_regions",
               fpath, pol_role_name(p->role));
    for (size_t i = 0; t != NULL && i < p->n_regions; i++)
        KMS_ENSURE(list_has(t->regions, t->n_regions, p->regions[i]), KMS_ERR_CONFIG,
                   "%s[%zu]: region \"%s\" is not in the tenant's allowed_regions", fpath, i,
                   p->regions[i]);

    KMS_GUARD(pol_json_field(obj, path, "api_key_sha256", false, &v));
    pol_path_join(fpath, path, "api_key_sha256");
    if (v != NULL)
        KMS_GUARD(load_api_keys(ld->doc, p, v, fpath));
    KMS_GUARD(pol_json_string(obj, path, "cert_subject", false, POL_STR_SUBJECT, &p->cert_subject));
    KMS_ENSURE(v != NULL || p->cert_subject != NULL, KMS_ERR_CONFIG,
               "%s: no credential (needs api_key_sha256 or cert_subject)", path);

    pol_path_join(fpath, path, "public_key_pem");
    KMS_GUARD(pol_json_string(obj, path, "public_key_pem", p->role == POL_ROLE_OFFICER, POL_STR_PEM,
                              &p->officer_pem));
    if (p->role != POL_ROLE_OFFICER)
        KMS_ENSURE(p->officer_pem == NULL, KMS_ERR_CONFIG, "%s: only officers carry a public key",
                   fpath);
    else
        KMS_GUARD(pol_load_public_key(p->officer_pem, fpath, false, &p->officer_key));
    return KMS_OK;
}

kms_err pol_load_principals(struct pol_loader *ld, const struct pol_tenant *t, const json_t *arr,
                            const char *path, long tenant_index)
{
    char item[POL_PATH_LEN];
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        struct pol_principal *p = &ld->doc->principals[ld->next_principal++];
        p->tenant = t;
        p->tenant_index = tenant_index;
        p->index = i;
        pol_path_index(item, path, i);
        KMS_GUARD(load_principal(ld, t, v, item, p));
    }
    return KMS_OK;
}

/* A principal of tenant t named by the string at path, for quorums and grants. */
kms_err pol_load_resolve_principal(const struct pol_doc *doc, const struct pol_tenant *t,
                                   const json_t *v, const char *path,
                                   const struct pol_principal **out)
{
    const char *id;
    char c[POL_CLIP_LEN];
    KMS_GUARD(pol_json_check_string(v, path, POL_STR_ID, &id));
    *out = pol_doc_principal(doc, id);
    KMS_ENSURE(*out != NULL, KMS_ERR_CONFIG, "%s: unknown principal \"%s\"", path,
               pol_json_clip(id, c));
    KMS_ENSURE((*out)->tenant == t, KMS_ERR_CONFIG, "%s: principal \"%s\" is not in tenant \"%s\"",
               path, id, t->id);
    return KMS_OK;
}
