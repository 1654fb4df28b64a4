/*
 * pol_doc.h - the policy document: load, validate, look up.
 *
 * A struct pol_doc is built from JSON (docs/policy.md describes the format),
 * validated completely, and is immutable from then on. It is shared between
 * threads by reference counting: pol_doc_load_*() returns a document holding
 * one reference; every holder takes its own with pol_doc_ref() and drops it
 * with pol_doc_unref(); the last unref frees it. There is no global state, so
 * reloading is: load a new document; if that fails keep the old one; if it
 * succeeds publish the new pointer and unref the old one. Requests that took
 * a reference before the swap finish on the document they started with.
 *
 * pol_doc_ref() only makes sharing safe once you already hold a reference:
 * reading a shared slot and taking a reference must happen under the lock
 * (or equivalent) that the publisher holds when it swaps the slot and drops
 * the old reference.
 *
 * Every pointer returned by a lookup or accessor (principals, tenants,
 * strings, keys) borrows from the document and is valid while the caller
 * holds a reference to it. Lookups and accessors are thread-safe.
 */
#ifndef POL_DOC_H
#define POL_DOC_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/types.h>

#include "kms_error.h"

/* Limits. A document beyond any of them is refused with KMS_ERR_CONFIG. The
 * API-key lookup compares against every stored hash, so POL_MAX_PRINCIPALS
 * and POL_MAX_API_KEYS also bound the cost of authenticating one request. */
#define POL_MAX_DOC_BYTES (1024 * 1024)
#define POL_MAX_TENANTS 1024
#define POL_MAX_PRINCIPALS 4096      /* in the whole document */
#define POL_MAX_GRANTS 8192          /* in the whole document */
#define POL_MAX_REGIONS 32           /* in one allowed_regions list */
#define POL_MAX_OFFICERS 64          /* in one quorum */
#define POL_MAX_RECIPIENTS 16        /* recovery recipients per tenant */
#define POL_MAX_RE_ENCRYPT_ROUTES 64 /* cross_region_re_encrypt entries per tenant */
#define POL_MAX_RECOVERY_TTL_S 2592000 /* 30 days */
#define POL_MAX_GRANT_PRINCIPALS 256 /* in one grant */
#define POL_MAX_API_KEYS 4           /* per principal, for rotation */
#define POL_MAX_ID_LEN 64            /* tenant and principal ids, sids */
#define POL_MAX_REGION_LEN 32
#define POL_MAX_KEY_ID_LEN 256
#define POL_MAX_SUBJECT_LEN 1024
#define POL_MAX_PEM_LEN 4096
#define POL_MAX_DESCRIPTION_LEN 1024

/* The policy document version this build reads. */
#define POL_DOC_VERSION 1

enum pol_role {
    POL_ROLE_BROKER,
    POL_ROLE_KEY_ADMIN,
    POL_ROLE_OFFICER,
    POL_ROLE_AUDITOR,
    POL_ROLE_OPERATOR,
    POL_ROLE__COUNT
};

/* Operations are the RPC method names. Each belongs to exactly one role;
 * operators own none of them. */
enum pol_op {
    /* broker */
    POL_OP_ENCRYPT,
    POL_OP_DECRYPT,
    POL_OP_GENERATE_DATA_KEY,
    POL_OP_DECRYPT_DATA_KEY,
    POL_OP_RE_ENCRYPT,
    POL_OP_ENCRYPT_FIELDS,
    POL_OP_DECRYPT_FIELDS,
    POL_OP_BLIND_INDEX,
    /* key-admin */
    POL_OP_CREATE_KEY,
    POL_OP_GET_IMPORT_PARAMETERS,
    POL_OP_IMPORT_KEY_MATERIAL,
    POL_OP_ROTATE_KEY,
    POL_OP_ENABLE_KEY,
    POL_OP_DISABLE_KEY,
    POL_OP_SCHEDULE_KEY_DELETION,
    POL_OP_CANCEL_KEY_DELETION,
    POL_OP_DESCRIBE_KEY,
    POL_OP_LIST_KEYS,
    /* officer */
    POL_OP_REQUEST_RECOVERY,
    POL_OP_APPROVE_RECOVERY,
    POL_OP_EXECUTE_RECOVERY,
    POL_OP_CANCEL_RECOVERY,
    POL_OP_LIST_RECOVERIES,
    POL_OP_GET_RECOVERY,
    /* auditor */
    POL_OP_GET_SIGNED_TREE_HEAD,
    POL_OP_EXPORT_AUDIT_LOG,
    POL_OP_GET_AUDIT_KEYS,
    /* broker: asymmetric signing keys (docs/signing.md); GetPublicKey is
     * also allowed to key-admin (pol_role_allows) */
    POL_OP_GET_PUBLIC_KEY,
    POL_OP_SIGN,
    POL_OP_VERIFY,
    /* broker: link tokens (docs/link-tokens.md) */
    POL_OP_MINT_LINK_TOKEN,
    POL_OP_REDEEM_LINK_TOKEN,
    POL_OP_REVOKE_LINK_TOKENS,
    POL_OP__COUNT
};

/* What an operation acts on, hence which fields of struct pol_target
 * (pol_eval.h) the caller must fill. */
enum pol_op_target {
    POL_TARGET_KEY,    /* one key: key_id, tenant, region of that key */
    POL_TARGET_TENANT, /* a tenant: tenant; region (required for CreateKey,
                        * optional for ListKeys and ListRecoveries) */
    POL_TARGET_REGION, /* a region's audit log: region and tenant optional */
};

/* Exact strings used in documents: "broker", "key-admin", "officer",
 * "auditor", "operator". Never NULL ("?" for an out-of-range value). */
const char *pol_role_name(enum pol_role role);
bool pol_role_from_name(const char *name, enum pol_role *out_role);

/* RPC names: "Encrypt", "CreateKey", ... Never NULL. */
const char *pol_op_name(enum pol_op op);
bool pol_op_from_name(const char *name, enum pol_op *out_op);

/* The role an operation belongs to; pol_role_allows() is the role rule. */
enum pol_role pol_op_role(enum pol_op op);
bool pol_role_allows(enum pol_role role, enum pol_op op);
enum pol_op_target pol_op_target(enum pol_op op);

struct pol_doc;
struct pol_tenant;
struct pol_principal;
struct pol_recipient;

/* Parse and validate len bytes of JSON. On success *out_doc holds one
 * reference. On failure *out_doc is NULL and the error is KMS_ERR_CONFIG
 * (KMS_ERR_NOMEM when memory runs out) with kms_err_detail() naming the
 * offending JSON path, e.g.
 *   tenants[2].principals[0].role: unknown role "brokr"                     */
kms_err pol_doc_load_buffer(const void *json, size_t len, struct pol_doc **out_doc);

/* Read a regular file of at most POL_MAX_DOC_BYTES and load it as above.
 * Details do not repeat the path; the caller names the file in its log. */
kms_err pol_doc_load_file(const char *path, struct pol_doc **out_doc);

/* Take another reference; returns doc (NULL-safe). */
struct pol_doc *pol_doc_ref(struct pol_doc *doc);

/* Drop a reference; the last one frees the document. NULL is a no-op. */
void pol_doc_unref(struct pol_doc *doc);

/* Lowercase hex SHA-256 of the exact bytes that were loaded, so the audit log
 * and the operator can tell which document made a decision. */
const char *pol_doc_digest_hex(const struct pol_doc *doc);

/* Authenticate a bearer API key: hashes it with SHA-256 and compares the hash
 * with every stored hash in constant time, whichever one matches. On success
 * *out_principal is set; otherwise it is NULL and the error is
 * KMS_ERR_UNAUTHENTICATED with a detail that says nothing about why. */
kms_err pol_doc_auth_api_key(const struct pol_doc *doc, const void *key, size_t key_len,
                             const struct pol_principal **out_principal);

/* Authenticate by the certificate subject the TLS layer verified: an exact,
 * byte-for-byte match against a principal's cert_subject. Same contract as
 * pol_doc_auth_api_key. Subjects are not secret, so this is a plain search. */
kms_err pol_doc_auth_cert_subject(const struct pol_doc *doc, const char *subject,
                                  const struct pol_principal **out_principal);

/* A principal or tenant by id; NULL if there is none. */
const struct pol_principal *pol_doc_principal(const struct pol_doc *doc, const char *id);
const struct pol_tenant *pol_doc_tenant(const struct pol_doc *doc, const char *id);

/* Tenants in document order, for listing. */
size_t pol_doc_tenant_count(const struct pol_doc *doc);
const struct pol_tenant *pol_doc_tenant_at(const struct pol_doc *doc, size_t i);

const char *pol_principal_id(const struct pol_principal *p);
/* Tenant id, or NULL for a global principal (auditor or operator). */
const char *pol_principal_tenant_id(const struct pol_principal *p);
const struct pol_tenant *pol_principal_tenant(const struct pol_principal *p);
enum pol_role pol_principal_role(const struct pol_principal *p);
const char *pol_principal_home_region(const struct pol_principal *p);
/* Officers: the ECDSA P-256 public key that verifies their approvals, as the
 * PEM text of the document and parsed. NULL for every other role. The
 * EVP_PKEY is shared: use it (OpenSSL up-references it), never free it. */
const char *pol_principal_officer_key_pem(const struct pol_principal *p);
EVP_PKEY *pol_principal_officer_key(const struct pol_principal *p);

const char *pol_tenant_id(const struct pol_tenant *t);
bool pol_tenant_escrow_required(const struct pol_tenant *t);
size_t pol_tenant_region_count(const struct pol_tenant *t);
const char *pol_tenant_region(const struct pol_tenant *t, size_t i);
bool pol_tenant_region_allowed(const struct pol_tenant *t, const char *region);
/* Whether the tenant's cross_region_re_encrypt names the pair from -> to
 * (directional). Same-region ReEncrypt needs no entry and is not asked
 * about here: this answers false for from == to. */
bool pol_tenant_re_encrypt_route(const struct pol_tenant *t, const char *from, const char *to);
/* Recovery quorum: M approvals out of the N listed officers. M is 0 when the
 * tenant has no quorum, and then no recovery may proceed. */
unsigned pol_tenant_quorum_approvals(const struct pol_tenant *t);
size_t pol_tenant_officer_count(const struct pol_tenant *t);
const struct pol_principal *pol_tenant_officer(const struct pol_tenant *t, size_t i);
bool pol_tenant_is_quorum_officer(const struct pol_tenant *t, const struct pol_principal *p);
/* How long a recovery request collects approvals and stays executable
 * (quorum.request_ttl_s, default 86400), and how long after quorum it
 * becomes executable (quorum.time_lock_s, default 0; < request_ttl_s). */
unsigned pol_tenant_recovery_ttl_s(const struct pol_tenant *t);
unsigned pol_tenant_recovery_time_lock_s(const struct pol_tenant *t);
/* The tenant's own bounds on a link token's life (link_tokens.min_ttl_s,
 * max_ttl_s; docs/link-tokens.md), inside the service's; 0 where the
 * tenant sets none. */
unsigned pol_tenant_link_min_ttl_s(const struct pol_tenant *t);
unsigned pol_tenant_link_max_ttl_s(const struct pol_tenant *t);

/* Recipients of EXPORT_WRAPPED recoveries, registered per tenant and region
 * in advance: an RSA public key (2048..4096 bits). NULL if the tenant has
 * no recipient with that id. The EVP_PKEY is shared, never freed. */
const struct pol_recipient *pol_tenant_recipient(const struct pol_tenant *t, const char *id);
const char *pol_recipient_id(const struct pol_recipient *r);
const char *pol_recipient_region(const struct pol_recipient *r);
EVP_PKEY *pol_recipient_key(const struct pol_recipient *r);

#endif
