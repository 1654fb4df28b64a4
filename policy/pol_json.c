/*
 * pol_json.c - walking a JSON document with errors that name the path.
 *
 * Every check here reports KMS_ERR_CONFIG with a detail that starts with the
 * JSON path of the offending value ("tenants[0].principals[1].role: ...").
 */
#include "pol_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pol_doc.h"

/* A value from the document made safe to quote in a message: printable ASCII
 * only, cut at 64 bytes, so a hostile or broken document cannot inject
 * control characters into logs or hide the end of the message. */
const char *pol_json_clip(const char *s, char buf[static POL_CLIP_LEN])
{
    size_t i = 0;
    for (; i < 64 && s[i] != '\0'; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (s[i] != '\0') {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "?";
}

/* Paths are bounded by the limits and POL_PATH_LEN fits the longest; should
 * one ever be cut, it ends in "..." so the message does not mislead. */
static void path_done(char *out, int n)
{
    if (n < 0 || n >= POL_PATH_LEN)
        memcpy(out + POL_PATH_LEN - 4, "...", 4);
}

void pol_path_join(char *out, const char *base, const char *field)
{
    if (base[0] == '\0')
        path_done(out, snprintf(out, POL_PATH_LEN, "%s", field));
    else
        path_done(out, snprintf(out, POL_PATH_LEN, "%s.%s", base, field));
}

void pol_path_index(char *out, const char *base, size_t i)
{
    path_done(out, snprintf(out, POL_PATH_LEN, "%s[%zu]", base, i));
}

kms_err pol_json_expect(const json_t *v, json_type type, const char *what, const char *path)
{
    if (json_typeof(v) == type || (type == JSON_TRUE && json_is_boolean(v)))
        return KMS_OK;
    return kms_err_set(KMS_ERR_CONFIG, "%s: expected %s, got %s", path, what, json_type_name(v));
}

kms_err pol_json_expect_object(const json_t *v, const char *path)
{
    return pol_json_expect(v, JSON_OBJECT, "an object", path[0] ? path : "document");
}

kms_err pol_json_check_fields(const json_t *obj, const char *base, const char *const *allowed)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        bool known = false;
        for (size_t i = 0; allowed[i] != NULL && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (!known) {
            char path[POL_PATH_LEN], c[POL_CLIP_LEN];
            pol_path_join(path, base, pol_json_clip(key, c));
            return kms_err_set(KMS_ERR_CONFIG, "%s: unknown field", path);
        }
    }
    return KMS_OK;
}

/* The member name of obj, or NULL (and an error if required). */
kms_err pol_json_field(const json_t *obj, const char *base, const char *name, bool required,
                       json_t **out)
{
    *out = json_object_get(obj, name);
    if (*out == NULL && required) {
        char path[POL_PATH_LEN];
        pol_path_join(path, base, name);
        return kms_err_set(KMS_ERR_CONFIG, "%s: missing required field", path);
    }
    return KMS_OK;
}

kms_err pol_json_member(const json_t *obj, const char *base, const char *name, bool required,
                        json_type type, const char *what, char path[POL_PATH_LEN], json_t **out)
{
    pol_path_join(path, base, name);
    KMS_GUARD(pol_json_field(obj, base, name, required, out));
    if (*out == NULL)
        return KMS_OK;
    return pol_json_expect(*out, type, what, path);
}

kms_err pol_json_array(const json_t *obj, const char *base, const char *name, bool required,
                       size_t min, size_t max, json_t **out)
{
    char path[POL_PATH_LEN];
    KMS_GUARD(pol_json_member(obj, base, name, required, JSON_ARRAY, "an array", path, out));
    if (*out == NULL)
        return KMS_OK;
    size_t n = json_array_size(*out);
    KMS_ENSURE(n >= min, KMS_ERR_CONFIG, "%s: must not be empty", path);
    KMS_ENSURE(n <= max, KMS_ERR_CONFIG, "%s: too many entries (%zu, at most %zu)", path, n, max);
    return KMS_OK;
}

/* ---- strings ------------------------------------------------------------- */

static const size_t str_max[] = {
    [POL_STR_ID] = POL_MAX_ID_LEN,         [POL_STR_REGION] = POL_MAX_REGION_LEN,
    [POL_STR_KEY_ID] = POL_MAX_KEY_ID_LEN, [POL_STR_SUBJECT] = POL_MAX_SUBJECT_LEN,
    [POL_STR_PEM] = POL_MAX_PEM_LEN,       [POL_STR_TEXT] = POL_MAX_DESCRIPTION_LEN,
    [POL_STR_NAME] = POL_MAX_ID_LEN,
};

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Ids: [A-Za-z0-9][A-Za-z0-9._@-]*; key ids also allow ':' and '/'. */
static bool valid_id(const char *s, const char *extra)
{
    if (!is_alnum(s[0]))
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!is_alnum(*p) && strchr(extra, *p) == NULL)
            return false;
    return true;
}

/* Regions: [a-z][a-z0-9-]*, not ending in '-' ("eu-west", "us-east-1"). */
static bool valid_region(const char *s)
{
    if (!(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    const char *p = s + 1;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return false;
    return p[-1] != '-';
}

static bool has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

kms_err pol_json_check_string(const json_t *v, const char *path, enum pol_str_kind kind,
                              const char **out)
{
    char c[POL_CLIP_LEN];
    KMS_GUARD(pol_json_expect(v, JSON_STRING, "a string", path));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    KMS_ENSURE(len > 0, KMS_ERR_CONFIG, "%s: must not be empty", path);
    KMS_ENSURE(len <= str_max[kind], KMS_ERR_CONFIG, "%s: longer than %zu bytes", path,
               str_max[kind]);
    switch (kind) {
    case POL_STR_ID:
        KMS_ENSURE(valid_id(s, "._@-"), KMS_ERR_CONFIG,
                   "%s: invalid id \"%s\" (letters, digits, '.', '_', '-', '@'; "
                   "starting with a letter or digit)",
                   path, pol_json_clip(s, c));
        break;
    case POL_STR_KEY_ID:
        KMS_ENSURE(valid_id(s, "._@-:/"), KMS_ERR_CONFIG,
                   "%s: invalid key id \"%s\" (letters, digits, '.', '_', '-', '@', ':', '/'; "
                   "starting with a letter or digit)",
                   path, pol_json_clip(s, c));
        break;
    case POL_STR_REGION:
        KMS_ENSURE(valid_region(s), KMS_ERR_CONFIG,
                   "%s: invalid region \"%s\" (lowercase letters, digits and '-'; "
                   "starting with a letter, not ending with '-')",
                   path, pol_json_clip(s, c));
        break;
    case POL_STR_SUBJECT:
    case POL_STR_NAME:
        KMS_ENSURE(!has_control(s), KMS_ERR_CONFIG, "%s: contains control characters", path);
        break;
    case POL_STR_PEM:
    case POL_STR_TEXT:
        break;
    }
    *out = s;
    return KMS_OK;
}

kms_err pol_json_string(const json_t *obj, const char *base, const char *name, bool required,
                        enum pol_str_kind kind, const char **out)
{
    json_t *v;
    char path[POL_PATH_LEN];
    *out = NULL;
    KMS_GUARD(pol_json_member(obj, base, name, required, JSON_STRING, "a string", path, &v));
    return v == NULL ? KMS_OK : pol_json_check_string(v, path, kind, out);
}

/* A non-empty array of distinct strings of one kind, copied into a new
 * array of pointers (NULL when the field is absent). */
kms_err pol_json_string_list(const json_t *obj, const char *base, const char *name, bool required,
                             enum pol_str_kind kind, size_t max, const char ***out, size_t *out_n)
{
    json_t *arr, *v;
    char path[POL_PATH_LEN], item[POL_PATH_LEN], c[POL_CLIP_LEN];
    const char *s = "";
    size_t i;

    *out = NULL;
    *out_n = 0;
    KMS_GUARD(pol_json_array(obj, base, name, required, 1, max, &arr));
    if (arr == NULL)
        return KMS_OK;
    pol_path_join(path, base, name);
    json_array_foreach(arr, i, v) {
        pol_path_index(item, path, i);
        KMS_GUARD(pol_json_check_string(v, item, kind, &s));
        for (size_t j = 0; j < i; j++)
            KMS_ENSURE(strcmp(json_string_value(json_array_get(arr, j)), s) != 0, KMS_ERR_CONFIG,
                       "%s: \"%s\" is listed twice", item, pol_json_clip(s, c));
    }

    const char **list = calloc(json_array_size(arr), sizeof(*list));
    KMS_ENSURE(list != NULL, KMS_ERR_NOMEM, "out of memory");
    json_array_foreach(arr, i, v)
        list[i] = json_string_value(v);
    *out = list;
    *out_n = json_array_size(arr);
    return KMS_OK;
}
