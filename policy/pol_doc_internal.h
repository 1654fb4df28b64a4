/*
 * pol_doc_internal.h - the layout of a loaded policy document.
 *
 * Shared by the policy/ sources and by the unit tests; nothing else
 * includes it. Every string points into the parsed JSON tree that the
 * document keeps until it is freed, so nothing here owns a string.
 */
#ifndef POL_DOC_INTERNAL_H
#define POL_DOC_INTERNAL_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

#include "pol_doc.h"

#define POL_SHA256_LEN 32

struct pol_principal {
    const char *id;
    const struct pol_tenant *tenant; /* NULL for global principals */
    enum pol_role role;
    const char *home_region;
    const char **regions; /* brokers: regions allowed besides home_region */
    size_t n_regions;
    const char *cert_subject; /* NULL when the principal has none */
    const char *officer_pem;  /* officers only */
    EVP_PKEY *officer_key;    /* officers only; owned */
    /* Where it sits in the document, for error messages: tenants[tenant_index]
     * .principals[index], or principals[index] when tenant_index is -1. */
    long tenant_index;
    size_t index;
};

struct pol_grant {
    const char *sid; /* NULL when the grant has none */
    const char *key_id;
    uint64_t ops; /* bit (1 << enum pol_op) */
    const struct pol_principal **principals;
    size_t n_principals;
    size_t index; /* position in the tenant's grants array */
};

struct pol_recipient {
    const char *id;
    const char *region;
    EVP_PKEY *key; /* owned */
};

/* One allowed cross-region ReEncrypt: data of a key in `from` may be
 * re-encrypted under a key in `to` (one direction only). */
struct pol_region_route {
    const char *from;
    const char *to;
};

struct pol_tenant {
    const char *id;
    const char **regions;
    size_t n_regions;
    struct pol_region_route *re_encrypt_routes; /* cross_region_re_encrypt */
    size_t n_re_encrypt_routes;
    bool escrow_required;
    unsigned quorum_approvals; /* 0: no quorum */
    const struct pol_principal **officers;
    size_t n_officers;
    unsigned recovery_ttl_s;
    unsigned recovery_time_lock_s;
    unsigned link_min_ttl_s, link_max_ttl_s; /* link_tokens; 0: the service's */
    struct pol_recipient *recipients;
    size_t n_recipients;
    struct pol_grant *grants; /* sorted by key_id, then document order */
    size_t n_grants;
    size_t index;
};

/* One stored API-key hash. */
struct pol_cred {
    uint8_t sha256[POL_SHA256_LEN];
    const struct pol_principal *principal;
    long slot;  /* index in an api_key_sha256 array, -1 for a plain string */
    size_t seq; /* order of appearance, for deterministic error messages */
};

struct pol_doc {
    atomic_size_t refs;
    json_t *root; /* owns every string below */
    char digest_hex[2 * POL_SHA256_LEN + 1];

    struct pol_tenant *tenants; /* document order */
    size_t n_tenants;
    const struct pol_tenant **tenants_by_id;

    struct pol_principal *principals; /* tenants' first, then global ones */
    size_t n_principals;
    const struct pol_principal **by_id;
    const struct pol_principal **by_subject;
    size_t n_subjects;

    struct pol_cred *creds;
    size_t n_creds;
};

/* Allocated empty document with one reference, for the loader. */
struct pol_doc *pol_doc_alloc(void);

/* Build the lookup indexes once every principal and tenant is in place and
 * report duplicate tenant ids, principal ids and credentials. */
kms_err pol_doc_index(struct pol_doc *doc);

/* "tenants[1].principals[0]" or "principals[3]". */
void pol_principal_path(const struct pol_principal *p, char *buf, size_t size);

/* Current number of references (for tests). */
size_t pol_doc_refcount(const struct pol_doc *doc);

#endif
