/*
 * pol_load_principal.h - reading the principals of a policy document, for
 * the loader (pol_load.c). Errors are KMS_ERR_CONFIG naming the JSON path.
 */
#ifndef POL_LOAD_PRINCIPAL_H
#define POL_LOAD_PRINCIPAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "kms_error.h"
#include "pol_doc_internal.h"

/* The document being loaded, and where its next principal goes. */
struct pol_loader {
    struct pol_doc *doc;
    size_t next_principal;
};

/* The principals of array arr at path, of tenant t (NULL: global ones;
 * tenant_index -1), into ld->doc from ld->next_principal on. */
kms_err pol_load_principals(struct pol_loader *ld, const struct pol_tenant *t, const json_t *arr,
                            const char *path, long tenant_index);

/* A principal of tenant t named by the string at path, for quorums and
 * grants. */
kms_err pol_load_resolve_principal(const struct pol_doc *doc, const struct pol_tenant *t,
                                   const json_t *v, const char *path,
                                   const struct pol_principal **out);

/* A public key from PEM (path for errors): an EC P-256 key (officers) or,
 * rsa, an RSA key of 2048..4096 bits (recovery recipients). */
kms_err pol_load_public_key(const char *pem, const char *path, bool rsa, EVP_PKEY **out);

#endif
