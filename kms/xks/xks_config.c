/*
 * xks_config.c - the XKS endpoints file and its live holder (xks_config.h).
 */
#include "xks_config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kms_keyid.h"
#include "kms_secret.h"

#define XKS_TENANT_MAX 128

struct xks_cred {
    char access_key_id[31];
    struct kms_secret secret;
};

struct xks_key {
    char id[33];
    unsigned usage;
};

struct xks_endpoint {
    char prefix[XKS_URI_PATH_MAX + 1];
    char tenant[XKS_TENANT_MAX + 1];
    struct xks_cred creds[XKS_MAX_CREDS];
    size_t ncreds;
    struct xks_key *keys;
    size_t nkeys;
    char aws_region[XKS_AWS_REGION_MAX + 1]; /* "" = any scope region */
    char region[XKS_REGION_MAX + 1];         /* "" = keys of any region */
    bool replay_check;
};

struct xks_config {
    struct xks_endpoint *eps;
    size_t neps;
    int refs; /* guarded by the holder's mutex */
};

void xks_config_free(struct xks_config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->neps; i++) {
        for (size_t j = 0; j < c->eps[i].ncreds; j++)
            kms_secret_wipe(&c->eps[i].creds[j].secret);
        free(c->eps[i].keys);
    }
    free(c->eps);
    free(c);
}

static bool chars_in(const char *s, const char *set)
{
    return strspn(s, set) == strlen(s);
}

#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define LOWER "abcdefghijklmnopqrstuvwxyz"
#define DIGIT "0123456789"

/* "" or "/seg(/seg)*" of [A-Za-z0-9_-], short enough for the spec's 128
 * characters with "/kms/xks/v1", and not itself holding "/kms/xks/v1". */
static kms_err check_prefix(const char *p, size_t i)
{
    size_t n = strlen(p);
    KMS_ENSURE(n + strlen("/kms/xks/v1") <= XKS_URI_PATH_MAX, KMS_ERR_CONFIG,
               "xks: endpoints[%zu].uri_prefix: longer than %d characters with /kms/xks/v1", i,
               XKS_URI_PATH_MAX);
    KMS_ENSURE(n == 0 || (p[0] == '/' && p[n - 1] != '/' && strstr(p, "//") == NULL &&
                          chars_in(p, UPPER LOWER DIGIT "/-_")),
               KMS_ERR_CONFIG,
               "xks: endpoints[%zu].uri_prefix: must be empty or /segments of A-Z a-z 0-9 - _",
               i);
    KMS_ENSURE(strstr(p, "/kms/xks/v1") == NULL, KMS_ERR_CONFIG,
               "xks: endpoints[%zu].uri_prefix: must not contain /kms/xks/v1", i);
    return KMS_OK;
}

static kms_err load_cred(json_t *jc, size_t i, size_t j, struct xks_cred *out)
{
    const char *ak = NULL, *src = NULL;
    json_t *extra = NULL;
    KMS_ENSURE(json_unpack(jc, "{s:s, s:s, s?o}", "access_key_id", &ak, "secret", &src,
                           "comment", &extra) == 0 &&
                   json_object_size(jc) == 2 + (extra != NULL),
               KMS_ERR_CONFIG,
               "xks: endpoints[%zu].credentials[%zu]: needs exactly access_key_id and secret", i,
               j);
    /* AWS KMS's own rules for XksProxyAuthenticationCredentialType */
    KMS_ENSURE(strlen(ak) >= 20 && strlen(ak) <= 30 && chars_in(ak, UPPER "234567"),
               KMS_ERR_CONFIG,
               "xks: endpoints[%zu].credentials[%zu].access_key_id: 20-30 of A-Z 2-7", i, j);
    memcpy(out->access_key_id, ak, strlen(ak) + 1);
    kms_err rc = kms_secret_read_source(src, &out->secret);
    if (rc != KMS_OK) {
        /* kms_err_detail() is the very buffer kms_err_set writes: formatting
         * it into itself is undefined (it garbled the message), so copy it. */
        char why[256];
        snprintf(why, sizeof(why), "%s", kms_err_detail());
        return kms_err_set(KMS_ERR_CONFIG, "xks: endpoints[%zu].credentials[%zu].secret: %s", i,
                           j, why);
    }
    bool ok = out->secret.len >= 43 && out->secret.len <= 64;
    for (size_t k = 0; ok && k < out->secret.len; k++)
        ok = out->secret.data[k] != 0 &&
             strchr(UPPER LOWER DIGIT "/+=", (char)out->secret.data[k]) != NULL;
    if (!ok) {
        kms_secret_wipe(&out->secret);
        return kms_err_set(KMS_ERR_CONFIG,
                           "xks: endpoints[%zu].credentials[%zu].secret: the secret must be "
                           "43-64 of A-Z a-z 0-9 / + =",
                           i, j);
    }
    return KMS_OK;
}

static kms_err load_keys(json_t *jk, size_t i, struct xks_endpoint *ep)
{
    KMS_ENSURE(json_is_object(jk) && json_object_size(jk) <= XKS_MAX_KEYS, KMS_ERR_CONFIG,
               "xks: endpoints[%zu].keys: an object of at most %d keys", i, XKS_MAX_KEYS);
    ep->keys = calloc(json_object_size(jk) + 1, sizeof(*ep->keys));
    KMS_ENSURE(ep->keys != NULL, KMS_ERR_NOMEM, "out of memory");
    const char *id;
    json_t *uses;
    json_object_foreach(jk, id, uses) {
        uint8_t raw[16];
        KMS_ENSURE(kms_key_id_parse(id, raw) == KMS_OK, KMS_ERR_CONFIG,
                   "xks: endpoints[%zu].keys: \"%.40s\" is not a key id (32 lowercase hex)", i,
                   id);
        KMS_ENSURE(json_is_array(uses) && json_array_size(uses) <= 2, KMS_ERR_CONFIG,
                   "xks: endpoints[%zu].keys.%s: an array of ENCRYPT and/or DECRYPT", i, id);
        struct xks_key *k = &ep->keys[ep->nkeys++];
        memcpy(k->id, id, 33);
        size_t u;
        json_t *ju;
        json_array_foreach(uses, u, ju) {
            const char *s = json_string_value(ju);
            unsigned bit = s == NULL                  ? 0
                           : strcmp(s, "ENCRYPT") == 0 ? XKS_USE_ENCRYPT
                           : strcmp(s, "DECRYPT") == 0 ? XKS_USE_DECRYPT
                                                       : 0;
            KMS_ENSURE(bit != 0 && (k->usage & bit) == 0, KMS_ERR_CONFIG,
                       "xks: endpoints[%zu].keys.%s[%zu]: ENCRYPT or DECRYPT, once each", i,
                       id, u);
            k->usage |= bit;
        }
    }
    return KMS_OK;
}

/* An AWS region name as AWS writes them ("eu-west-1", "us-gov-west-1",
 * "ap-southeast-3"): lowercase letters, digits and '-', starting with a
 * letter, ending with a digit. */
static bool aws_region_ok(const char *r)
{
    size_t n = strlen(r);
    return n >= 4 && n <= (size_t)XKS_AWS_REGION_MAX && chars_in(r, LOWER DIGIT "-") &&
           strchr(LOWER, r[0]) != NULL && strchr(DIGIT, r[n - 1]) != NULL &&
           strstr(r, "--") == NULL;
}

static kms_err load_endpoint(json_t *je, size_t i, struct xks_endpoint *ep)
{
    const char *prefix = NULL, *tenant = NULL, *aws_region = NULL, *region = NULL;
    json_t *creds = NULL, *keys = NULL, *comment = NULL, *replay = NULL;
    KMS_ENSURE(json_unpack(je, "{s:s, s:s, s:o, s:o, s?o, s?s, s?s, s?o}", "uri_prefix", &prefix,
                           "tenant", &tenant, "credentials", &creds, "keys", &keys, "comment",
                           &comment, "aws_region", &aws_region, "region", &region,
                           "replay_check", &replay) == 0 &&
                   json_object_size(je) == 4u + (comment != NULL) + (aws_region != NULL) +
                                               (region != NULL) + (replay != NULL),
               KMS_ERR_CONFIG,
               "xks: endpoints[%zu]: needs exactly uri_prefix, tenant, credentials, keys "
               "(and optional comment, aws_region, region, replay_check)",
               i);
    KMS_ENSURE(aws_region == NULL || aws_region_ok(aws_region), KMS_ERR_CONFIG,
               "xks: endpoints[%zu].aws_region: an AWS region name such as eu-west-1", i);
    KMS_ENSURE(region == NULL || (region[0] != '\0' && strlen(region) <= (size_t)XKS_REGION_MAX),
               KMS_ERR_CONFIG, "xks: endpoints[%zu].region: 1-%d characters (a Custos region)",
               i, XKS_REGION_MAX);
    KMS_ENSURE(replay == NULL || json_is_boolean(replay), KMS_ERR_CONFIG,
               "xks: endpoints[%zu].replay_check: true or false", i);
    snprintf(ep->aws_region, sizeof(ep->aws_region), "%s", aws_region ? aws_region : "");
    snprintf(ep->region, sizeof(ep->region), "%s", region ? region : "");
    ep->replay_check = replay == NULL || json_is_true(replay);
    KMS_GUARD(check_prefix(prefix, i));
    memcpy(ep->prefix, prefix, strlen(prefix) + 1);
    KMS_ENSURE(tenant[0] != '\0' && strlen(tenant) <= XKS_TENANT_MAX, KMS_ERR_CONFIG,
               "xks: endpoints[%zu].tenant: 1-%d characters", i, XKS_TENANT_MAX);
    memcpy(ep->tenant, tenant, strlen(tenant) + 1);
    KMS_ENSURE(json_is_array(creds) && json_array_size(creds) >= 1 &&
                   json_array_size(creds) <= XKS_MAX_CREDS,
               KMS_ERR_CONFIG, "xks: endpoints[%zu].credentials: 1 or %d credential sets", i,
               XKS_MAX_CREDS);
    for (size_t j = 0; j < json_array_size(creds); j++) {
        KMS_GUARD(load_cred(json_array_get(creds, j), i, j, &ep->creds[j]));
        ep->ncreds++;
    }
    return load_keys(keys, i, ep);
}

/* Prefixes unique in the file; access key ids unique in the file (one
 * credential never opens two tenants' endpoints). */
static kms_err check_unique(const struct xks_config *c)
{
    for (size_t i = 0; i < c->neps; i++)
        for (size_t j = 0; j < i; j++) {
            KMS_ENSURE(strcmp(c->eps[i].prefix, c->eps[j].prefix) != 0, KMS_ERR_CONFIG,
                       "xks: endpoints[%zu].uri_prefix: same as endpoints[%zu]", i, j);
            for (size_t a = 0; a < c->eps[i].ncreds; a++)
                for (size_t b = 0; b < c->eps[j].ncreds; b++)
                    KMS_ENSURE(strcmp(c->eps[i].creds[a].access_key_id,
                                      c->eps[j].creds[b].access_key_id) != 0,
                               KMS_ERR_CONFIG,
                               "xks: endpoints[%zu].credentials[%zu]: access key id already "
                               "used by endpoints[%zu]",
                               i, a, j);
        }
    for (size_t i = 0; i < c->neps; i++)
        if (c->eps[i].ncreds == 2)
            KMS_ENSURE(strcmp(c->eps[i].creds[0].access_key_id,
                              c->eps[i].creds[1].access_key_id) != 0,
                       KMS_ERR_CONFIG, "xks: endpoints[%zu].credentials: the same access key id twice",
                       i);
    return KMS_OK;
}

kms_err xks_config_load(const char *path, struct xks_config **out)
{
    kms_err rc = KMS_OK;
    json_error_t jerr;
    *out = NULL;
    struct xks_config *c = calloc(1, sizeof(*c));
    KMS_ENSURE(c != NULL, KMS_ERR_NOMEM, "out of memory");
    c->refs = 1;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    KMS_ENSURE_GOTO(root != NULL, out, KMS_ERR_CONFIG, "xks: %s line %d: %s", path, jerr.line,
                    jerr.text);
    json_t *eps = json_object_get(root, "endpoints");
    KMS_ENSURE_GOTO(json_is_object(root) && json_object_size(root) == 1 && json_is_array(eps) &&
                        json_array_size(eps) <= XKS_MAX_ENDPOINTS,
                    out, KMS_ERR_CONFIG,
                    "xks: %s: the document is {\"endpoints\": [at most %d endpoints]}", path,
                    XKS_MAX_ENDPOINTS);
    c->eps = calloc(json_array_size(eps) + 1, sizeof(*c->eps));
    KMS_ENSURE_GOTO(c->eps != NULL, out, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < json_array_size(eps); i++) {
        c->neps++;
        KMS_GUARD_GOTO(load_endpoint(json_array_get(eps, i), i, &c->eps[i]), out);
    }
    KMS_GUARD_GOTO(check_unique(c), out);
    *out = c;
    c = NULL;
out:
    json_decref(root);
    xks_config_free(c);
    return rc;
}

const struct xks_endpoint *xks_config_endpoint(const struct xks_config *c, const char *prefix,
                                               size_t len)
{
    for (size_t i = 0; c != NULL && i < c->neps; i++)
        if (strlen(c->eps[i].prefix) == len && memcmp(c->eps[i].prefix, prefix, len) == 0)
            return &c->eps[i];
    return NULL;
}

const char *xks_endpoint_tenant(const struct xks_endpoint *ep)
{
    return ep->tenant;
}

const char *xks_endpoint_prefix(const struct xks_endpoint *ep)
{
    return ep->prefix;
}

const char *xks_endpoint_aws_region(const struct xks_endpoint *ep)
{
    return ep->aws_region[0] ? ep->aws_region : NULL;
}

const char *xks_endpoint_region(const struct xks_endpoint *ep)
{
    return ep->region[0] ? ep->region : NULL;
}

bool xks_endpoint_replay_check(const struct xks_endpoint *ep)
{
    return ep->replay_check;
}

bool xks_endpoint_secret(const struct xks_endpoint *ep, const char *access_key_id,
                         const uint8_t **secret, size_t *secret_len)
{
    for (size_t i = 0; i < ep->ncreds; i++)
        if (strcmp(ep->creds[i].access_key_id, access_key_id) == 0) {
            *secret = ep->creds[i].secret.data;
            *secret_len = ep->creds[i].secret.len;
            return true;
        }
    return false;
}

bool xks_endpoint_key(const struct xks_endpoint *ep, const char *key_id, unsigned *usage)
{
    for (size_t i = 0; i < ep->nkeys; i++)
        if (strcmp(ep->keys[i].id, key_id) == 0) {
            *usage = ep->keys[i].usage;
            return true;
        }
    return false;
}

/* ---- holder ---- */

struct xks_config_holder {
    pthread_mutex_t mu;
    char *path;
    struct xks_config *cur;
};

kms_err xks_config_holder_open(const char *path, struct xks_config_holder **out)
{
    struct xks_config *c;
    *out = NULL;
    KMS_GUARD(xks_config_load(path, &c));
    struct xks_config_holder *h = calloc(1, sizeof(*h));
    if (h == NULL || (h->path = strdup(path)) == NULL) {
        free(h);
        xks_config_free(c);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&h->mu, NULL);
    h->cur = c;
    *out = h;
    return KMS_OK;
}

kms_err xks_config_holder_reload(struct xks_config_holder *h)
{
    struct xks_config *c;
    KMS_GUARD(xks_config_load(h->path, &c));
    pthread_mutex_lock(&h->mu);
    struct xks_config *old = h->cur;
    h->cur = c;
    bool last = --old->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last)
        xks_config_free(old);
    return KMS_OK;
}

const struct xks_config *xks_config_holder_acquire(struct xks_config_holder *h)
{
    pthread_mutex_lock(&h->mu);
    struct xks_config *c = h->cur;
    c->refs++;
    pthread_mutex_unlock(&h->mu);
    return c;
}

void xks_config_holder_release(struct xks_config_holder *h, const struct xks_config *cc)
{
    struct xks_config *c = (struct xks_config *)cc;
    pthread_mutex_lock(&h->mu);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last)
        xks_config_free(c);
}

void xks_config_holder_free(struct xks_config_holder *h)
{
    if (h == NULL)
        return;
    xks_config_holder_release(h, h->cur);
    pthread_mutex_destroy(&h->mu);
    free(h->path);
    free(h);
}
