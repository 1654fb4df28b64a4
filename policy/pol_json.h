/*
 * pol_json.h - JSON checks for the policy loader, with errors naming the path.
 *
 * Internal to policy/. A path is the JSONPath-like location of a value
 * ("tenants[2].principals[0].role"); "" is the document itself. Every check
 * returns KMS_OK or KMS_ERR_CONFIG (KMS_ERR_NOMEM for allocation) with
 * kms_err_detail() = "<path>: <what is wrong>".
 */
#ifndef POL_JSON_H
#define POL_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "kms_error.h"

/* Longest path: tenants[N].grants[N].principals[N] with the limits' N. */
#define POL_PATH_LEN 160

/* Buffer for pol_json_clip(). */
#define POL_CLIP_LEN 72

/* The kinds of string a policy holds; each has a length limit and a format. */
enum pol_str_kind {
    POL_STR_ID,      /* tenant and principal ids, sids */
    POL_STR_REGION,  /* "eu-west" */
    POL_STR_KEY_ID,  /* ids plus ':' and '/' */
    POL_STR_SUBJECT, /* certificate subject: no control characters */
    POL_STR_PEM,     /* length only; the caller parses it */
    POL_STR_TEXT,    /* descriptions: length only */
    POL_STR_NAME,    /* role and operation names: the caller looks them up */
};

/* s made safe to quote in a message (printable ASCII, at most 64 bytes and
 * "..."), written to buf; returns buf. */
const char *pol_json_clip(const char *s, char buf[static POL_CLIP_LEN]);

/* out = "base.field" (or "field" at the root), out = "base[i]"; out holds
 * POL_PATH_LEN bytes. */
void pol_path_join(char *out, const char *base, const char *field);
void pol_path_index(char *out, const char *base, size_t i);

/* v has the JSON type (JSON_TRUE stands for either boolean); what names it in
 * the message ("an array"). */
kms_err pol_json_expect(const json_t *v, json_type type, const char *what, const char *path);
kms_err pol_json_expect_object(const json_t *v, const char *path);

/* Refuse any member of obj not in the NULL-terminated allowed list. */
kms_err pol_json_check_fields(const json_t *obj, const char *base, const char *const *allowed);

/* Member name of obj into *out: NULL when absent (an error if required). */
kms_err pol_json_field(const json_t *obj, const char *base, const char *name, bool required,
                       json_t **out);

/* The same, with its path joined into path, and (when present) of type
 * (what names it in the error: "an integer"; JSON_TRUE means a boolean). */
kms_err pol_json_member(const json_t *obj, const char *base, const char *name, bool required,
                        json_type type, const char *what, char path[POL_PATH_LEN], json_t **out);

/* The same, and it must be an array of min..max entries. */
kms_err pol_json_array(const json_t *obj, const char *base, const char *name, bool required,
                       size_t min, size_t max, json_t **out);

/* v is a non-empty string of the kind; *out borrows it from the tree. */
kms_err pol_json_check_string(const json_t *v, const char *path, enum pol_str_kind kind,
                              const char **out);
kms_err pol_json_string(const json_t *obj, const char *base, const char *name, bool required,
                        enum pol_str_kind kind, const char **out);

/* A non-empty array of at most max distinct strings of the kind, as a new
 * array of borrowed pointers that the caller frees (NULL when absent). */
kms_err pol_json_string_list(const json_t *obj, const char *base, const char *name, bool required,
                             enum pol_str_kind kind, size_t max, const char ***out, size_t *out_n);

#endif
