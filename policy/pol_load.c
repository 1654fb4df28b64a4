/*
 * pol_load.c - parse and validate a policy document.
 *
 * Validation is complete and strict: any field this build does not know, any
 * malformed value, any reference to something that does not exist is an
 * error, because a typo that silently dropped a restriction would weaken the
 * policy without anyone noticing. Every error names the JSON path of the
 * offending value. Strings are borrowed from the JSON tree, which the
 * document keeps. Principals are read by pol_load_principal.c.
 */
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
#include "pol_load_principal.h"

/* ---- tenants ------------------------------------------------------------- */

static const char *const quorum_fields[] = {"approvals", "officers", "request_ttl_s",
                                            "time_lock_s", NULL};

/* An optional integer field in lo..hi, else def. */
static kms_err opt_uint(const json_t *obj, const char *path, const char *name, json_int_t lo,
                        json_int_t hi, unsigned def, unsigned *out)
{
    json_t *v;
    char fpath[POL_PATH_LEN];
    KMS_GUARD(pol_json_member(obj, path, name, false, JSON_INTEGER, "an integer", fpath, &v));
    *out = def;
    if (v == NULL)
        return KMS_OK;
    json_int_t x = json_integer_value(v);
    KMS_ENSURE(x >= lo && x <= hi, KMS_ERR_CONFIG, "%s: must be %lld..%lld", fpath,
               (long long)lo, (long long)hi);
    *out = (unsigned)x;
    return KMS_OK;
}

static kms_err load_quorum(struct pol_doc *doc, struct pol_tenant *t, const json_t *obj,
                           const char *path)
{
    json_t *arr, *v;
    char fpath[POL_PATH_LEN], item[POL_PATH_LEN];
    size_t i;

    KMS_GUARD(pol_json_expect_object(obj, path));
    KMS_GUARD(pol_json_check_fields(obj, path, quorum_fields));

    KMS_GUARD(pol_json_array(obj, path, "officers", true, 1, POL_MAX_OFFICERS, &arr));
    pol_path_join(fpath, path, "officers");
    t->officers = calloc(json_array_size(arr), sizeof(*t->officers));
    KMS_ENSURE(t->officers != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(arr, i, v) {
        const struct pol_principal *p;
        pol_path_index(item, fpath, i);
        KMS_GUARD(pol_load_resolve_principal(doc, t, v, item, &p));
        KMS_ENSURE(p->role == POL_ROLE_OFFICER, KMS_ERR_CONFIG,
                   "%s: principal \"%s\" has role %s, not officer", item, p->id,
                   pol_role_name(p->role));
        KMS_ENSURE(!pol_tenant_is_quorum_officer(t, p), KMS_ERR_CONFIG,
                   "%s: \"%s\" is listed twice", item, p->id);
        /* Two officers with one key are one signer counted twice. */
        for (size_t j = 0; j < t->n_officers; j++)
            KMS_ENSURE(EVP_PKEY_eq(t->officers[j]->officer_key, p->officer_key) != 1,
                       KMS_ERR_CONFIG, "%s: officer \"%s\" has the same public key as \"%s\"", item,
                       p->id, t->officers[j]->id);
        t->officers[t->n_officers++] = p;
    }

    KMS_GUARD(pol_json_member(obj, path, "approvals", true, JSON_INTEGER, "an integer", fpath, &v));
    json_int_t m = json_integer_value(v);
    KMS_ENSURE(m >= 1, KMS_ERR_CONFIG, "%s: must be at least 1", fpath);
    KMS_ENSURE((size_t)m <= t->n_officers, KMS_ERR_CONFIG,
               "%s: %lld approvals required but only %zu officers listed", fpath, (long long)m,
               t->n_officers);
    t->quorum_approvals = (unsigned)m;
    KMS_GUARD(opt_uint(obj, path, "request_ttl_s", 1, POL_MAX_RECOVERY_TTL_S, 86400,
                       &t->recovery_ttl_s));
    KMS_GUARD(opt_uint(obj, path, "time_lock_s", 0, POL_MAX_RECOVERY_TTL_S - 1, 0,
                       &t->recovery_time_lock_s));
    KMS_ENSURE(t->recovery_time_lock_s < t->recovery_ttl_s, KMS_ERR_CONFIG,
               "%s.time_lock_s: must be below request_ttl_s (%u), or no recovery could ever "
               "be executed",
               path, t->recovery_ttl_s);
    /* The requester's own approval does not count, so when every listed
     * officer is needed a request by one of them can never complete. Legal
     * (the requester may be an officer outside the list), but worth saying. */
    if ((size_t)m == t->n_officers)
        kms_log_warn("policy",
                     "%s: equals the number of officers (%zu), so a recovery "
                     "requested by one of them cannot reach quorum",
                     fpath, t->n_officers);
    return KMS_OK;
}

static const char *const grant_fields[] = {"sid",        "description", "key_id",
                                           "principals", "operations",  NULL};

static kms_err load_grant(struct pol_doc *doc, struct pol_tenant *t, const json_t *obj,
                          const char *path, struct pol_grant *g)
{
    json_t *arr, *v;
    char fpath[POL_PATH_LEN], item[POL_PATH_LEN], c[POL_CLIP_LEN];
    const char *s;
    size_t i;

    KMS_GUARD(pol_json_expect_object(obj, path));
    KMS_GUARD(pol_json_check_fields(obj, path, grant_fields));
    KMS_GUARD(pol_json_string(obj, path, "sid", false, POL_STR_ID, &g->sid));
    for (size_t j = 0; g->sid != NULL && j < g->index; j++)
        KMS_ENSURE(t->grants[j].sid == NULL || strcmp(t->grants[j].sid, g->sid) != 0,
                   KMS_ERR_CONFIG, "%s.sid: duplicate sid \"%s\" (also tenants[%zu].grants[%zu])",
                   path, g->sid, t->index, j);
    KMS_GUARD(pol_json_string(obj, path, "description", false, POL_STR_TEXT, &s));
    KMS_GUARD(pol_json_string(obj, path, "key_id", true, POL_STR_KEY_ID, &g->key_id));

    KMS_GUARD(pol_json_array(obj, path, "principals", true, 1, POL_MAX_GRANT_PRINCIPALS, &arr));
    pol_path_join(fpath, path, "principals");
    g->principals = calloc(json_array_size(arr), sizeof(*g->principals));
    KMS_ENSURE(g->principals != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(arr, i, v) {
        const struct pol_principal *p;
        pol_path_index(item, fpath, i);
        KMS_GUARD(pol_load_resolve_principal(doc, t, v, item, &p));
        for (size_t j = 0; j < g->n_principals; j++)
            KMS_ENSURE(g->principals[j] != p, KMS_ERR_CONFIG, "%s: \"%s\" is listed twice", item,
                       p->id);
        g->principals[g->n_principals++] = p;
    }

    KMS_GUARD(pol_json_array(obj, path, "operations", true, 1, POL_OP__COUNT, &arr));
    pol_path_join(fpath, path, "operations");
    json_array_foreach(arr, i, v) {
        enum pol_op op;
        pol_path_index(item, fpath, i);
        KMS_GUARD(pol_json_check_string(v, item, POL_STR_NAME, &s));
        KMS_ENSURE(pol_op_from_name(s, &op), KMS_ERR_CONFIG, "%s: unknown operation \"%s\"", item,
                   pol_json_clip(s, c));
        KMS_ENSURE(!(g->ops & (UINT64_C(1) << op)), KMS_ERR_CONFIG, "%s: \"%s\" is listed twice",
                   item, s);
        KMS_ENSURE(pol_op_target(op) == POL_TARGET_KEY, KMS_ERR_CONFIG,
                   "%s: operation %s does not act on one key and cannot be granted per key", item,
                   s);
        for (size_t j = 0; j < g->n_principals; j++)
            KMS_ENSURE(pol_role_allows(g->principals[j]->role, op), KMS_ERR_CONFIG,
                       "%s: operation %s is not allowed for principal \"%s\" (role %s)", item, s,
                       g->principals[j]->id, pol_role_name(g->principals[j]->role));
        g->ops |= UINT64_C(1) << op;
    }
    return KMS_OK;
}

static int cmp_grant(const void *a, const void *b)
{
    const struct pol_grant *ga = a, *gb = b;
    int c = strcmp(ga->key_id, gb->key_id);
    return c != 0 ? c : (ga->index < gb->index ? -1 : ga->index > gb->index);
}

static const char *const tenant_fields[] = {
    "id",     "description", "allowed_regions", "escrow_required",        "quorum",
    "principals", "grants",  "recovery_recipients", "cross_region_re_encrypt", NULL};

static const char *const route_fields[] = {"from", "to", "description", NULL};

/* cross_region_re_encrypt: the only way data encrypted in one region may be
 * re-encrypted under a key of another (pol_decide_re_encrypt). Each entry
 * is one direction between two of the tenant's own regions. */
static kms_err load_routes(struct pol_tenant *t, const json_t *arr, const char *path)
{
    json_t *v;
    size_t i;
    char item[POL_PATH_LEN], fpath[POL_PATH_LEN];
    const char *s;
    t->re_encrypt_routes =
        calloc(json_array_size(arr) ? json_array_size(arr) : 1, sizeof(*t->re_encrypt_routes));
    KMS_ENSURE(t->re_encrypt_routes != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(arr, i, v) {
        struct pol_region_route *r = &t->re_encrypt_routes[i];
        pol_path_index(item, path, i);
        KMS_GUARD(pol_json_expect_object(v, item));
        KMS_GUARD(pol_json_check_fields(v, item, route_fields));
        KMS_GUARD(pol_json_string(v, item, "from", true, POL_STR_REGION, &r->from));
        KMS_GUARD(pol_json_string(v, item, "to", true, POL_STR_REGION, &r->to));
        KMS_GUARD(pol_json_string(v, item, "description", false, POL_STR_TEXT, &s));
        pol_path_join(fpath, item, "from");
        KMS_ENSURE(pol_tenant_region_allowed(t, r->from), KMS_ERR_CONFIG,
                   "%s: region \"%s\" is not in the tenant's allowed_regions", fpath, r->from);
        pol_path_join(fpath, item, "to");
        KMS_ENSURE(pol_tenant_region_allowed(t, r->to), KMS_ERR_CONFIG,
                   "%s: region \"%s\" is not in the tenant's allowed_regions", fpath, r->to);
        KMS_ENSURE(strcmp(r->from, r->to) != 0, KMS_ERR_CONFIG,
                   "%s: from and to are both \"%s\" (same-region ReEncrypt needs no entry)", item,
                   r->from);
        for (size_t j = 0; j < i; j++)
            KMS_ENSURE(strcmp(t->re_encrypt_routes[j].from, r->from) != 0 ||
                           strcmp(t->re_encrypt_routes[j].to, r->to) != 0,
                       KMS_ERR_CONFIG, "%s: %s -> %s is listed twice", item, r->from, r->to);
        t->n_re_encrypt_routes = i + 1;
    }
    return KMS_OK;
}

static const char *const recipient_fields[] = {"id", "region", "public_key_pem", "description",
                                               NULL};

static kms_err load_recipients(struct pol_tenant *t, const json_t *arr, const char *path)
{
    json_t *v;
    size_t i;
    char item[POL_PATH_LEN], fpath[POL_PATH_LEN];
    const char *s;
    t->recipients = calloc(json_array_size(arr) ? json_array_size(arr) : 1, sizeof(*t->recipients));
    KMS_ENSURE(t->recipients != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(arr, i, v) {
        struct pol_recipient *r = &t->recipients[i];
        const char *pem;
        pol_path_index(item, path, i);
        KMS_GUARD(pol_json_expect_object(v, item));
        KMS_GUARD(pol_json_check_fields(v, item, recipient_fields));
        KMS_GUARD(pol_json_string(v, item, "id", true, POL_STR_ID, &r->id));
        KMS_GUARD(pol_json_string(v, item, "region", true, POL_STR_REGION, &r->region));
        KMS_GUARD(pol_json_string(v, item, "description", false, POL_STR_TEXT, &s));
        KMS_GUARD(pol_json_string(v, item, "public_key_pem", true, POL_STR_PEM, &pem));
        pol_path_join(fpath, item, "region");
        /* A recipient outside the tenant's regions would be a way out of
         * residency. */
        KMS_ENSURE(pol_tenant_region_allowed(t, r->region), KMS_ERR_CONFIG,
                   "%s: region \"%s\" is not in the tenant's allowed_regions", fpath, r->region);
        for (size_t j = 0; j < i; j++)
            KMS_ENSURE(strcmp(t->recipients[j].id, r->id) != 0, KMS_ERR_CONFIG,
                       "%s.id: duplicate recipient \"%s\"", item, r->id);
        pol_path_join(fpath, item, "public_key_pem");
        KMS_GUARD(pol_load_public_key(pem, fpath, true, &r->key));
        t->n_recipients = i + 1;
    }
    return KMS_OK;
}

/* Pass 1: everything but the quorum and the grants, which name principals
 * and so wait until every principal of the document is known. */
static kms_err load_tenant(struct pol_loader *ld, const json_t *obj, const char *path,
                           struct pol_tenant *t)
{
    json_t *v;
    const char *s;
    char fpath[POL_PATH_LEN];

    KMS_GUARD(pol_json_expect_object(obj, path));
    KMS_GUARD(pol_json_check_fields(obj, path, tenant_fields));
    KMS_GUARD(pol_json_string(obj, path, "id", true, POL_STR_ID, &t->id));
    KMS_GUARD(pol_json_string(obj, path, "description", false, POL_STR_TEXT, &s));
    KMS_GUARD(pol_json_string_list(obj, path, "allowed_regions", true, POL_STR_REGION,
                                   POL_MAX_REGIONS, &t->regions, &t->n_regions));
    KMS_GUARD(
        pol_json_member(obj, path, "escrow_required", true, JSON_TRUE, "a boolean", fpath, &v));
    t->escrow_required = json_is_true(v);

    KMS_GUARD(pol_json_array(obj, path, "cross_region_re_encrypt", false, 0,
                             POL_MAX_RE_ENCRYPT_ROUTES, &v));
    pol_path_join(fpath, path, "cross_region_re_encrypt");
    if (v != NULL)
        KMS_GUARD(load_routes(t, v, fpath));

    KMS_GUARD(pol_json_array(obj, path, "recovery_recipients", false, 0, POL_MAX_RECIPIENTS, &v));
    pol_path_join(fpath, path, "recovery_recipients");
    if (v != NULL)
        KMS_GUARD(load_recipients(t, v, fpath));

    KMS_GUARD(pol_json_array(obj, path, "principals", false, 0, POL_MAX_PRINCIPALS, &v));
    pol_path_join(fpath, path, "principals");
    if (v != NULL)
        KMS_GUARD(pol_load_principals(ld, t, v, fpath, (long)t->index));
    return KMS_OK;
}

/* Pass 2: quorum and grants. */
static kms_err load_tenant_rules(struct pol_doc *doc, const json_t *obj, const char *path,
                                 struct pol_tenant *t)
{
    json_t *v, *g;
    char fpath[POL_PATH_LEN], item[POL_PATH_LEN];
    size_t i;

    KMS_GUARD(pol_json_field(obj, path, "quorum", false, &v));
    pol_path_join(fpath, path, "quorum");
    /* Escrow without a quorum would store blobs nobody can ever recover. */
    KMS_ENSURE(v != NULL || !t->escrow_required, KMS_ERR_CONFIG,
               "%s: missing required field (escrow_required is true)", fpath);
    if (v != NULL)
        KMS_GUARD(load_quorum(doc, t, v, fpath));

    KMS_GUARD(pol_json_array(obj, path, "grants", false, 0, POL_MAX_GRANTS, &v));
    if (v == NULL || json_array_size(v) == 0)
        return KMS_OK;
    pol_path_join(fpath, path, "grants");
    t->grants = calloc(json_array_size(v), sizeof(*t->grants));
    KMS_ENSURE(t->grants != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(v, i, g) {
        pol_path_index(item, fpath, i);
        t->grants[i].index = i;
        t->n_grants = i + 1; /* so that a failure frees what this grant holds */
        KMS_GUARD(load_grant(doc, t, g, item, &t->grants[i]));
    }
    qsort(t->grants, t->n_grants, sizeof(*t->grants), cmp_grant);
    return KMS_OK;
}

/* ---- document ------------------------------------------------------------ */

static size_t member_array_size(const json_t *obj, const char *name)
{
    const json_t *v = json_is_object(obj) ? json_object_get(obj, name) : NULL;
    return json_is_array(v) ? json_array_size(v) : 0;
}

/* Size the arrays once, before anything points into them, and refuse a
 * document over the limits before spending work on it. */
static kms_err allocate(struct pol_doc *doc, const json_t *tenants, const json_t *globals)
{
    size_t n_principals = globals != NULL ? json_array_size(globals) : 0;
    size_t n_grants = 0;
    for (size_t i = 0; i < json_array_size(tenants); i++) {
        n_principals += member_array_size(json_array_get(tenants, i), "principals");
        n_grants += member_array_size(json_array_get(tenants, i), "grants");
    }
    KMS_ENSURE(n_principals <= POL_MAX_PRINCIPALS, KMS_ERR_CONFIG,
               "document: too many principals (%zu, at most %d)", n_principals, POL_MAX_PRINCIPALS);
    KMS_ENSURE(n_grants <= POL_MAX_GRANTS, KMS_ERR_CONFIG,
               "document: too many grants (%zu, at most %d)", n_grants, POL_MAX_GRANTS);

    size_t n_tenants = json_array_size(tenants);
    doc->tenants = calloc(n_tenants ? n_tenants : 1, sizeof(*doc->tenants));
    doc->principals = calloc(n_principals ? n_principals : 1, sizeof(*doc->principals));
    doc->creds = calloc(n_principals ? n_principals * POL_MAX_API_KEYS : 1, sizeof(*doc->creds));
    KMS_ENSURE(doc->tenants != NULL && doc->principals != NULL && doc->creds != NULL, KMS_ERR_NOMEM,
               "out of memory");
    /* Counts only once the arrays exist: the free path walks them. */
    doc->n_tenants = n_tenants;
    doc->n_principals = n_principals;
    return KMS_OK;
}

static const char *const doc_fields[] = {"version", "description", "tenants", "principals", NULL};

static kms_err load_root(struct pol_loader *ld, const json_t *root)
{
    struct pol_doc *doc = ld->doc;
    json_t *v, *tenants, *globals;
    const char *s;
    char item[POL_PATH_LEN];

    KMS_GUARD(pol_json_expect_object(root, ""));
    KMS_GUARD(pol_json_check_fields(root, "", doc_fields));
    KMS_GUARD(pol_json_field(root, "", "version", true, &v));
    KMS_GUARD(pol_json_expect(v, JSON_INTEGER, "an integer", "version"));
    KMS_ENSURE(json_integer_value(v) == POL_DOC_VERSION, KMS_ERR_CONFIG,
               "version: unsupported version %lld (this build reads version %d)",
               (long long)json_integer_value(v), POL_DOC_VERSION);
    KMS_GUARD(pol_json_string(root, "", "description", false, POL_STR_TEXT, &s));
    KMS_GUARD(pol_json_array(root, "", "tenants", true, 0, POL_MAX_TENANTS, &tenants));
    KMS_GUARD(pol_json_array(root, "", "principals", false, 0, POL_MAX_PRINCIPALS, &globals));
    KMS_GUARD(allocate(doc, tenants, globals));

    for (size_t i = 0; i < doc->n_tenants; i++) {
        doc->tenants[i].index = i;
        pol_path_index(item, "tenants", i);
        KMS_GUARD(load_tenant(ld, json_array_get(tenants, i), item, &doc->tenants[i]));
    }
    if (globals != NULL)
        KMS_GUARD(pol_load_principals(ld, NULL, globals, "principals", -1));
    KMS_GUARD(pol_doc_index(doc));
    for (size_t i = 0; i < doc->n_tenants; i++) {
        pol_path_index(item, "tenants", i);
        KMS_GUARD(load_tenant_rules(doc, json_array_get(tenants, i), item, &doc->tenants[i]));
    }
    return KMS_OK;
}

kms_err pol_doc_load_buffer(const void *json, size_t len, struct pol_doc **out_doc)
{
    kms_err rc = KMS_OK;
    uint8_t md[POL_SHA256_LEN];
    unsigned int md_len = 0;
    json_error_t jerr;

    *out_doc = NULL;
    KMS_ENSURE(json != NULL || len == 0, KMS_ERR_USAGE, "pol_doc_load_buffer: NULL document");
    if (json == NULL)
        json = "";
    KMS_ENSURE(len <= POL_MAX_DOC_BYTES, KMS_ERR_CONFIG, "document: %zu bytes, at most %d", len,
               POL_MAX_DOC_BYTES);
    struct pol_doc *doc = pol_doc_alloc();
    KMS_ENSURE(doc != NULL, KMS_ERR_NOMEM, "out of memory");
    struct pol_loader ld = {.doc = doc};

    KMS_ENSURE_GOTO(EVP_Digest(json, len, md, &md_len, EVP_sha256(), NULL) == 1, done,
                    KMS_ERR_INTERNAL, "SHA-256 failed");
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(doc->digest_hex + 2 * i, 3, "%02x", md[i]);

    /* Duplicate keys are refused: with "last one wins" a second "role" could
     * quietly override the first. jansson already refuses \u0000 in strings. */
    doc->root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc->root == NULL) {
        char c[POL_CLIP_LEN];
        rc = kms_err_set(KMS_ERR_CONFIG, "JSON syntax error at line %d column %d: %s", jerr.line,
                         jerr.column, pol_json_clip(jerr.text, c));
        goto done;
    }
    KMS_GUARD_GOTO(load_root(&ld, doc->root), done);
    *out_doc = doc;
    doc = NULL;
done:
    pol_doc_unref(doc);
    return rc;
}

kms_err pol_doc_load_file(const char *path, struct pol_doc **out_doc)
{
    kms_err rc = KMS_OK;
    char *buf = NULL;
    size_t len = 0;
    struct stat st;

    *out_doc = NULL;
    KMS_ENSURE(path != NULL, KMS_ERR_USAGE, "pol_doc_load_file: NULL path");
    /* Symlinks are followed: configuration systems commonly publish files
     * through them. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    KMS_ENSURE(fd >= 0, KMS_ERR_CONFIG, "cannot open policy file: %s", strerror(errno));
    KMS_ENSURE_GOTO(fstat(fd, &st) == 0, done, KMS_ERR_CONFIG, "cannot stat policy file: %s",
                    strerror(errno));
    KMS_ENSURE_GOTO(S_ISREG(st.st_mode), done, KMS_ERR_CONFIG, "policy file is not a regular file");
    /* Whoever can write the policy decides who may use every key. Group
     * write is the administrator's choice (an admin group); world write is
     * never right. */
    KMS_ENSURE_GOTO((st.st_mode & S_IWOTH) == 0, done, KMS_ERR_CONFIG,
                    "policy file is writable by others (mode %04o)",
                    (unsigned)(st.st_mode & 07777));
    KMS_ENSURE_GOTO(st.st_size <= POL_MAX_DOC_BYTES, done, KMS_ERR_CONFIG,
                    "document: %lld bytes, at most %d", (long long)st.st_size, POL_MAX_DOC_BYTES);

    /* Read one byte past the limit: the file may have grown since fstat. */
    buf = malloc(POL_MAX_DOC_BYTES + 1);
    KMS_ENSURE_GOTO(buf != NULL, done, KMS_ERR_NOMEM, "out of memory");
    for (;;) {
        ssize_t n = read(fd, buf + len, POL_MAX_DOC_BYTES + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        KMS_ENSURE_GOTO(n >= 0, done, KMS_ERR_CONFIG, "cannot read policy file: %s",
                        strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        KMS_ENSURE_GOTO(len <= POL_MAX_DOC_BYTES, done, KMS_ERR_CONFIG,
                        "document: more than %d bytes", POL_MAX_DOC_BYTES);
    }
    rc = pol_doc_load_buffer(buf, len, out_doc);
done:
    free(buf);
    close(fd);
    return rc;
}
