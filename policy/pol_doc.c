/*
 * pol_doc.c - the loaded policy document: vocabulary, lifetime, indexes,
 * authentication lookups and accessors. Parsing lives in pol_load.c.
 */
#include "pol_doc.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "pol_doc_internal.h"

/* ---- vocabulary ---------------------------------------------------------- */

static const char *const role_names[POL_ROLE__COUNT] = {
    [POL_ROLE_BROKER] = "broker",     [POL_ROLE_KEY_ADMIN] = "key-admin",
    [POL_ROLE_OFFICER] = "officer",   [POL_ROLE_AUDITOR] = "auditor",
    [POL_ROLE_OPERATOR] = "operator",
};

struct op_row {
    const char *name;
    enum pol_role role;
    enum pol_op_target target;
};

static const struct op_row op_table[POL_OP__COUNT] = {
    [POL_OP_ENCRYPT] = {"Encrypt", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_DECRYPT] = {"Decrypt", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_GENERATE_DATA_KEY] = {"GenerateDataKey", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_DECRYPT_DATA_KEY] = {"DecryptDataKey", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_RE_ENCRYPT] = {"ReEncrypt", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_ENCRYPT_FIELDS] = {"EncryptFields", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_DECRYPT_FIELDS] = {"DecryptFields", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_BLIND_INDEX] = {"BlindIndex", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_CREATE_KEY] = {"CreateKey", POL_ROLE_KEY_ADMIN, POL_TARGET_TENANT},
    [POL_OP_GET_IMPORT_PARAMETERS] = {"GetImportParameters", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_IMPORT_KEY_MATERIAL] = {"ImportKeyMaterial", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_ROTATE_KEY] = {"RotateKey", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_ENABLE_KEY] = {"EnableKey", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_DISABLE_KEY] = {"DisableKey", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_SCHEDULE_KEY_DELETION] = {"ScheduleKeyDeletion", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_CANCEL_KEY_DELETION] = {"CancelKeyDeletion", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_DESCRIBE_KEY] = {"DescribeKey", POL_ROLE_KEY_ADMIN, POL_TARGET_KEY},
    [POL_OP_LIST_KEYS] = {"ListKeys", POL_ROLE_KEY_ADMIN, POL_TARGET_TENANT},
    [POL_OP_REQUEST_RECOVERY] = {"RequestRecovery", POL_ROLE_OFFICER, POL_TARGET_KEY},
    [POL_OP_APPROVE_RECOVERY] = {"ApproveRecovery", POL_ROLE_OFFICER, POL_TARGET_KEY},
    [POL_OP_EXECUTE_RECOVERY] = {"ExecuteRecovery", POL_ROLE_OFFICER, POL_TARGET_KEY},
    [POL_OP_CANCEL_RECOVERY] = {"CancelRecovery", POL_ROLE_OFFICER, POL_TARGET_KEY},
    [POL_OP_LIST_RECOVERIES] = {"ListRecoveries", POL_ROLE_OFFICER, POL_TARGET_TENANT},
    [POL_OP_GET_RECOVERY] = {"GetRecovery", POL_ROLE_OFFICER, POL_TARGET_KEY},
    [POL_OP_GET_SIGNED_TREE_HEAD] = {"GetSignedTreeHead", POL_ROLE_AUDITOR, POL_TARGET_REGION},
    [POL_OP_EXPORT_AUDIT_LOG] = {"ExportAuditLog", POL_ROLE_AUDITOR, POL_TARGET_REGION},
    [POL_OP_GET_AUDIT_KEYS] = {"GetAuditKeys", POL_ROLE_AUDITOR, POL_TARGET_REGION},
    [POL_OP_GET_PUBLIC_KEY] = {"GetPublicKey", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_SIGN] = {"Sign", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_VERIFY] = {"Verify", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_MINT_LINK_TOKEN] = {"MintLinkToken", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_REDEEM_LINK_TOKEN] = {"RedeemLinkToken", POL_ROLE_BROKER, POL_TARGET_KEY},
    [POL_OP_REVOKE_LINK_TOKENS] = {"RevokeLinkTokens", POL_ROLE_BROKER, POL_TARGET_KEY},
};

const char *pol_role_name(enum pol_role role)
{
    return (unsigned)role < POL_ROLE__COUNT ? role_names[role] : "?";
}

bool pol_role_from_name(const char *name, enum pol_role *out_role)
{
    for (int r = 0; r < POL_ROLE__COUNT; r++) {
        if (name != NULL && strcmp(name, role_names[r]) == 0) {
            *out_role = (enum pol_role)r;
            return true;
        }
    }
    return false;
}

const char *pol_op_name(enum pol_op op)
{
    return (unsigned)op < POL_OP__COUNT ? op_table[op].name : "?";
}

bool pol_op_from_name(const char *name, enum pol_op *out_op)
{
    for (int o = 0; o < POL_OP__COUNT; o++) {
        if (name != NULL && strcmp(name, op_table[o].name) == 0) {
            *out_op = (enum pol_op)o;
            return true;
        }
    }
    return false;
}

/* An out-of-range op maps to operator, which owns nothing: fails closed. */
enum pol_role pol_op_role(enum pol_op op)
{
    return (unsigned)op < POL_OP__COUNT ? op_table[op].role : POL_ROLE_OPERATOR;
}

bool pol_role_allows(enum pol_role role, enum pol_op op)
{
    if ((unsigned)op >= POL_OP__COUNT || role == POL_ROLE_OPERATOR)
        return false;
    /* A tenant's key administrators may watch recoveries of their keys
     * (during a time lock, that is their chance to object). */
    if (role == POL_ROLE_KEY_ADMIN && (op == POL_OP_LIST_RECOVERIES || op == POL_OP_GET_RECOVERY))
        return true;
    /* ... and read the public key of a signing key they manage (to have a
     * certificate issued for it). */
    if (role == POL_ROLE_KEY_ADMIN && op == POL_OP_GET_PUBLIC_KEY)
        return true;
    return op_table[op].role == role;
}

enum pol_op_target pol_op_target(enum pol_op op)
{
    return (unsigned)op < POL_OP__COUNT ? op_table[op].target : POL_TARGET_KEY;
}

/* ---- lifetime ------------------------------------------------------------ */

struct pol_doc *pol_doc_alloc(void)
{
    struct pol_doc *doc = calloc(1, sizeof(*doc));
    if (doc != NULL)
        atomic_init(&doc->refs, 1);
    return doc;
}

static void doc_free(struct pol_doc *doc)
{
    for (size_t i = 0; i < doc->n_principals; i++) {
        EVP_PKEY_free(doc->principals[i].officer_key);
        free(doc->principals[i].regions);
    }
    for (size_t i = 0; i < doc->n_tenants; i++) {
        struct pol_tenant *t = &doc->tenants[i];
        for (size_t g = 0; g < t->n_grants; g++)
            free(t->grants[g].principals);
        free(t->grants);
        free(t->officers);
        free(t->regions);
        free(t->re_encrypt_routes);
        for (size_t r = 0; r < t->n_recipients; r++)
            EVP_PKEY_free(t->recipients[r].key);
        free(t->recipients);
    }
    /* The hashes are what a bearer key is checked against: no reason to
     * leave them in freed memory. */
    if (doc->creds != NULL)
        OPENSSL_cleanse(doc->creds, doc->n_creds * sizeof(*doc->creds));
    free(doc->creds);
    free(doc->by_subject);
    free(doc->by_id);
    free(doc->principals);
    free(doc->tenants_by_id);
    free(doc->tenants);
    json_decref(doc->root);
    free(doc);
}

struct pol_doc *pol_doc_ref(struct pol_doc *doc)
{
    if (doc != NULL)
        atomic_fetch_add_explicit(&doc->refs, 1, memory_order_relaxed);
    return doc;
}

void pol_doc_unref(struct pol_doc *doc)
{
    if (doc == NULL)
        return;
    /* acq_rel: every holder's reads happen before the free, and the freeing
     * thread sees them. (A release decrement plus an acquire fence would do,
     * but ThreadSanitizer does not model fences and would cry wolf.) */
    if (atomic_fetch_sub_explicit(&doc->refs, 1, memory_order_acq_rel) == 1)
        doc_free(doc);
}

size_t pol_doc_refcount(const struct pol_doc *doc)
{
    return atomic_load_explicit(&((struct pol_doc *)doc)->refs, memory_order_relaxed);
}

const char *pol_doc_digest_hex(const struct pol_doc *doc)
{
    return doc->digest_hex;
}

/* ---- indexes ------------------------------------------------------------- */

void pol_principal_path(const struct pol_principal *p, char *buf, size_t size)
{
    if (p->tenant_index < 0)
        snprintf(buf, size, "principals[%zu]", p->index);
    else
        snprintf(buf, size, "tenants[%ld].principals[%zu]", p->tenant_index, p->index);
}

/* Ties are broken by position in the document (principals and tenants sit in
 * one array each, in document order) so that of two duplicates the later one
 * is reported, whatever order qsort leaves equal keys in. */
static int cmp_principal_id(const void *a, const void *b)
{
    const struct pol_principal *pa = *(const struct pol_principal *const *)a;
    const struct pol_principal *pb = *(const struct pol_principal *const *)b;
    int c = strcmp(pa->id, pb->id);
    return c != 0 ? c : (pa < pb ? -1 : pa > pb);
}

static int cmp_principal_subject(const void *a, const void *b)
{
    const struct pol_principal *pa = *(const struct pol_principal *const *)a;
    const struct pol_principal *pb = *(const struct pol_principal *const *)b;
    int c = strcmp(pa->cert_subject, pb->cert_subject);
    return c != 0 ? c : (pa < pb ? -1 : pa > pb);
}

static int cmp_tenant_id(const void *a, const void *b)
{
    const struct pol_tenant *ta = *(const struct pol_tenant *const *)a;
    const struct pol_tenant *tb = *(const struct pol_tenant *const *)b;
    int c = strcmp(ta->id, tb->id);
    return c != 0 ? c : (ta < tb ? -1 : ta > tb);
}

static int cmp_cred(const void *a, const void *b)
{
    const struct pol_cred *ca = a, *cb = b;
    int c = memcmp(ca->sha256, cb->sha256, POL_SHA256_LEN);
    return c != 0 ? c : (ca->seq < cb->seq ? -1 : ca->seq > cb->seq);
}

static kms_err index_tenants(struct pol_doc *doc)
{
    doc->tenants_by_id = calloc(doc->n_tenants ? doc->n_tenants : 1, sizeof(*doc->tenants_by_id));
    KMS_ENSURE(doc->tenants_by_id != NULL, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < doc->n_tenants; i++)
        doc->tenants_by_id[i] = &doc->tenants[i];
    qsort(doc->tenants_by_id, doc->n_tenants, sizeof(*doc->tenants_by_id), cmp_tenant_id);
    for (size_t i = 1; i < doc->n_tenants; i++) {
        const struct pol_tenant *a = doc->tenants_by_id[i - 1], *b = doc->tenants_by_id[i];
        if (strcmp(a->id, b->id) == 0)
            return kms_err_set(KMS_ERR_CONFIG,
                               "tenants[%zu].id: duplicate tenant id \"%s\" (also tenants[%zu].id)",
                               b->index, b->id, a->index);
    }
    return KMS_OK;
}

static kms_err index_principals(struct pol_doc *doc)
{
    char pa[64], pb[64];
    size_t n = doc->n_principals ? doc->n_principals : 1;
    doc->by_id = calloc(n, sizeof(*doc->by_id));
    doc->by_subject = calloc(n, sizeof(*doc->by_subject));
    KMS_ENSURE(doc->by_id != NULL && doc->by_subject != NULL, KMS_ERR_NOMEM, "out of memory");

    for (size_t i = 0; i < doc->n_principals; i++) {
        doc->by_id[i] = &doc->principals[i];
        if (doc->principals[i].cert_subject != NULL)
            doc->by_subject[doc->n_subjects++] = &doc->principals[i];
    }
    qsort(doc->by_id, doc->n_principals, sizeof(*doc->by_id), cmp_principal_id);
    for (size_t i = 1; i < doc->n_principals; i++) {
        const struct pol_principal *a = doc->by_id[i - 1], *b = doc->by_id[i];
        if (strcmp(a->id, b->id) == 0) {
            pol_principal_path(a, pa, sizeof(pa));
            pol_principal_path(b, pb, sizeof(pb));
            return kms_err_set(KMS_ERR_CONFIG, "%s.id: duplicate principal id \"%s\" (also at %s)",
                               pb, b->id, pa);
        }
    }

    qsort(doc->creds, doc->n_creds, sizeof(*doc->creds), cmp_cred);
    for (size_t i = 1; i < doc->n_creds; i++) {
        const struct pol_cred *a = &doc->creds[i - 1], *b = &doc->creds[i];
        if (CRYPTO_memcmp(a->sha256, b->sha256, POL_SHA256_LEN) != 0)
            continue;
        pol_principal_path(b->principal, pb, sizeof(pb));
        if (b->slot >= 0)
            return kms_err_set(KMS_ERR_CONFIG,
                               "%s.api_key_sha256[%ld]: API key already used by principal \"%s\"",
                               pb, b->slot, a->principal->id);
        return kms_err_set(KMS_ERR_CONFIG,
                           "%s.api_key_sha256: API key already used by principal \"%s\"", pb,
                           a->principal->id);
    }

    qsort(doc->by_subject, doc->n_subjects, sizeof(*doc->by_subject), cmp_principal_subject);
    for (size_t i = 1; i < doc->n_subjects; i++) {
        const struct pol_principal *a = doc->by_subject[i - 1], *b = doc->by_subject[i];
        if (strcmp(a->cert_subject, b->cert_subject) == 0) {
            pol_principal_path(b, pb, sizeof(pb));
            return kms_err_set(
                KMS_ERR_CONFIG,
                "%s.cert_subject: certificate subject already used by principal \"%s\"", pb, a->id);
        }
    }
    return KMS_OK;
}

kms_err pol_doc_index(struct pol_doc *doc)
{
    KMS_GUARD(index_tenants(doc));
    return index_principals(doc);
}

/* ---- lookups ------------------------------------------------------------- */

static int key_vs_principal_id(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct pol_principal *const *)elem)->id);
}

static int key_vs_principal_subject(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct pol_principal *const *)elem)->cert_subject);
}

static int key_vs_tenant_id(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct pol_tenant *const *)elem)->id);
}

const struct pol_principal *pol_doc_principal(const struct pol_doc *doc, const char *id)
{
    if (doc == NULL || id == NULL)
        return NULL;
    const struct pol_principal *const *p =
        bsearch(id, doc->by_id, doc->n_principals, sizeof(*doc->by_id), key_vs_principal_id);
    return p != NULL ? *p : NULL;
}

const struct pol_tenant *pol_doc_tenant(const struct pol_doc *doc, const char *id)
{
    if (doc == NULL || id == NULL)
        return NULL;
    const struct pol_tenant *const *t = bsearch(id, doc->tenants_by_id, doc->n_tenants,
                                                sizeof(*doc->tenants_by_id), key_vs_tenant_id);
    return t != NULL ? *t : NULL;
}

size_t pol_doc_tenant_count(const struct pol_doc *doc)
{
    return doc->n_tenants;
}

const struct pol_tenant *pol_doc_tenant_at(const struct pol_doc *doc, size_t i)
{
    return i < doc->n_tenants ? &doc->tenants[i] : NULL;
}

kms_err pol_doc_auth_api_key(const struct pol_doc *doc, const void *key, size_t key_len,
                             const struct pol_principal **out_principal)
{
    *out_principal = NULL;
    KMS_ENSURE(doc != NULL && (key != NULL || key_len == 0), KMS_ERR_USAGE,
               "pol_doc_auth_api_key: NULL argument");
    if (key_len == 0)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED, "unknown credential");

    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(key, key_len, md, &md_len, EVP_sha256(), NULL) != 1 ||
        md_len != POL_SHA256_LEN) {
        OPENSSL_cleanse(md, sizeof(md));
        return kms_err_set(KMS_ERR_INTERNAL, "SHA-256 failed");
    }

    /* Visit every stored hash and select the match with a mask instead of a
     * branch, so neither the time taken nor the memory touched depends on
     * which entry (if any) matched. Duplicate hashes are refused at load, so
     * at most one entry matches. */
    size_t found = 0;
    size_t any = 0;
    for (size_t i = 0; i < doc->n_creds; i++) {
        size_t diff = (size_t)(unsigned)CRYPTO_memcmp(md, doc->creds[i].sha256, POL_SHA256_LEN);
        /* diff is 0 or small and positive; all-ones when it is 0. */
        size_t mask = ((diff | (0 - diff)) >> (sizeof(size_t) * 8 - 1)) - 1;
        found |= i & mask;
        any |= mask;
    }
    OPENSSL_cleanse(md, sizeof(md));
    if (any == 0)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED, "unknown credential");
    *out_principal = doc->creds[found].principal;
    return KMS_OK;
}

kms_err pol_doc_auth_cert_subject(const struct pol_doc *doc, const char *subject,
                                  const struct pol_principal **out_principal)
{
    *out_principal = NULL;
    KMS_ENSURE(doc != NULL && subject != NULL, KMS_ERR_USAGE,
               "pol_doc_auth_cert_subject: NULL argument");
    const struct pol_principal *const *p =
        bsearch(subject, doc->by_subject, doc->n_subjects, sizeof(*doc->by_subject),
                key_vs_principal_subject);
    if (p == NULL)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED, "unknown credential");
    *out_principal = *p;
    return KMS_OK;
}

/* ---- accessors ----------------------------------------------------------- */

const char *pol_principal_id(const struct pol_principal *p)
{
    return p->id;
}

const char *pol_principal_tenant_id(const struct pol_principal *p)
{
    return p->tenant != NULL ? p->tenant->id : NULL;
}

const struct pol_tenant *pol_principal_tenant(const struct pol_principal *p)
{
    return p->tenant;
}

enum pol_role pol_principal_role(const struct pol_principal *p)
{
    return p->role;
}

const char *pol_principal_home_region(const struct pol_principal *p)
{
    return p->home_region;
}

const char *pol_principal_officer_key_pem(const struct pol_principal *p)
{
    return p->role == POL_ROLE_OFFICER ? p->officer_pem : NULL;
}

EVP_PKEY *pol_principal_officer_key(const struct pol_principal *p)
{
    return p->role == POL_ROLE_OFFICER ? p->officer_key : NULL;
}

const char *pol_tenant_id(const struct pol_tenant *t)
{
    return t->id;
}

bool pol_tenant_escrow_required(const struct pol_tenant *t)
{
    return t->escrow_required;
}

size_t pol_tenant_region_count(const struct pol_tenant *t)
{
    return t->n_regions;
}

const char *pol_tenant_region(const struct pol_tenant *t, size_t i)
{
    return i < t->n_regions ? t->regions[i] : NULL;
}

bool pol_tenant_region_allowed(const struct pol_tenant *t, const char *region)
{
    for (size_t i = 0; region != NULL && i < t->n_regions; i++)
        if (strcmp(t->regions[i], region) == 0)
            return true;
    return false;
}

bool pol_tenant_re_encrypt_route(const struct pol_tenant *t, const char *from, const char *to)
{
    for (size_t i = 0; from != NULL && to != NULL && i < t->n_re_encrypt_routes; i++)
        if (strcmp(t->re_encrypt_routes[i].from, from) == 0 &&
            strcmp(t->re_encrypt_routes[i].to, to) == 0)
            return true;
    return false;
}

unsigned pol_tenant_quorum_approvals(const struct pol_tenant *t)
{
    return t->quorum_approvals;
}

size_t pol_tenant_officer_count(const struct pol_tenant *t)
{
    return t->n_officers;
}

const struct pol_principal *pol_tenant_officer(const struct pol_tenant *t, size_t i)
{
    return i < t->n_officers ? t->officers[i] : NULL;
}

bool pol_tenant_is_quorum_officer(const struct pol_tenant *t, const struct pol_principal *p)
{
    for (size_t i = 0; p != NULL && i < t->n_officers; i++)
        if (t->officers[i] == p)
            return true;
    return false;
}

unsigned pol_tenant_recovery_ttl_s(const struct pol_tenant *t)
{
    return t->recovery_ttl_s;
}

unsigned pol_tenant_recovery_time_lock_s(const struct pol_tenant *t)
{
    return t->recovery_time_lock_s;
}

unsigned pol_tenant_link_min_ttl_s(const struct pol_tenant *t)
{
    return t->link_min_ttl_s;
}

unsigned pol_tenant_link_max_ttl_s(const struct pol_tenant *t)
{
    return t->link_max_ttl_s;
}

const struct pol_recipient *pol_tenant_recipient(const struct pol_tenant *t, const char *id)
{
    for (size_t i = 0; id != NULL && i < t->n_recipients; i++)
        if (strcmp(t->recipients[i].id, id) == 0)
            return &t->recipients[i];
    return NULL;
}

const char *pol_recipient_id(const struct pol_recipient *r)
{
    return r->id;
}

const char *pol_recipient_region(const struct pol_recipient *r)
{
    return r->region;
}

EVP_PKEY *pol_recipient_key(const struct pol_recipient *r)
{
    return r->key;
}
