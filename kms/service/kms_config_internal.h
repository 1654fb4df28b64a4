/*
 * kms_config_internal.h - what kms_config.c and kms_config_sections.c
 * share: the typed getters every section parser reads kmsd.json through
 * (in kms_config.c), and the section parsers of kms_config_sections.c.
 * Nothing else includes this: the interface is kms_config.h.
 *
 * The getters leave a setting at its default when its key is absent and
 * fail with KMS_ERR_CONFIG naming "<where>.<key>" when it is malformed.
 */
#ifndef KMS_CONFIG_INTERNAL_H
#define KMS_CONFIG_INTERNAL_H

#include <stdbool.h>

#include <jansson.h>

#include "kms_config.h"
#include "kms_error.h"

/* ---- kms_config.c ---- */

/* Refuse keys of obj outside allowed (NULL-terminated). */
kms_err config_check_keys(json_t *obj, const char *where, const char *const *allowed);

/* p relative to base_dir (a "file:" source too); absolute paths and "env:"
 * sources as they are. Caller frees; NULL when out of memory. */
char *config_resolve(const char *base_dir, const char *p);

/* A non-empty string into *out (freeing what was there), resolved against
 * base_dir when is_path. */
kms_err config_get_str(json_t *obj, const char *key, const char *where, bool required,
                       const char *base_dir, bool is_path, char **out);
kms_err config_get_uint(json_t *obj, const char *key, const char *where, unsigned long min,
                        unsigned long max, unsigned long *inout);
kms_err config_get_unsigned(json_t *obj, const char *key, const char *where, unsigned long min,
                            unsigned long max, unsigned *inout);
/* The section root.name in *out (NULL if absent), checked to be an object
 * with no keys but those in k (NULL-terminated). */
kms_err config_get_section(json_t *root, const char *name, const char *const *k, json_t **out);
kms_err config_get_bool(json_t *obj, const char *key, const char *where, bool *inout);

/* ---- kms_config_sections.c ---- */

/* "pkcs11": the module, its initialisation string, one token per region. */
kms_err config_parse_pkcs11(json_t *root, const char *dir, struct kms_config *c);
/* "audit" and "audit.postgresql"; after "pkcs11" (regions are checked
 * against the tokens). */
kms_err config_parse_audit(json_t *root, const char *dir, struct kms_config *c);
/* "import": BYOK import tokens. */
kms_err config_parse_import(json_t *root, struct kms_config *c);
/* "link_tokens": link token bounds. */
kms_err config_parse_links(json_t *root, const char *dir, struct kms_config *c);
/* "store": the SQLite file or the PostgreSQL database. */
kms_err config_parse_store(json_t *root, const char *dir, struct kms_config *c);

#endif
