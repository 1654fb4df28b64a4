/*
 * kmsctl_fields_run.c - `kmsctl fields encrypt|decrypt|blind-index` once
 * parsed (kmsctl_fields_run.h): FieldService over kmsctl_rpc.h, JSON in and
 * out. The buffers this code owns are wiped; the JSON library's own copies
 * of strings are not (jansson offers no hook).
 */
#include "kmsctl_fields_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kmsctl_io.h"
#include "kmsctl_print.h"
#include "proto/fields.pb-c.h"

#define FIELD_SERVICE "custos.v1.FieldService"

/* ---- local I/O -------------------------------------------------------------- */

static int read_input(const char *path, struct kms_buf *out)
{
    int ret = kmsctl_io_read(path, FIELDS_INPUT_MAX, out);
    if (ret == KMSCTL_IO_TOO_BIG) {
        fprintf(stderr, "kmsctl: %s: input larger than %u bytes\n", path, FIELDS_INPUT_MAX);
        ret = KMSCTL_EXIT_LOCAL;
    }
    return ret;
}

/* Dump j (ASCII only, so any terminal is safe) and write it. */
static int write_json(const char *path, json_t *j, int secret)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    if (s == NULL) {
        fprintf(stderr, "kmsctl: cannot format JSON output\n");
        return KMSCTL_EXIT_LOCAL;
    }
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (line == NULL) {
        OPENSSL_cleanse(s, n);
        free(s);
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    int ret = kmsctl_io_write(path, line, n + 1, secret);
    OPENSSL_cleanse(line, n + 1);
    free(line);
    return ret;
}

static char *b64_encode(const uint8_t *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    return s;
}

/* Strict base64 (no whitespace); NULL when it is not. */
static uint8_t *b64_decode(const char *s, size_t *out_len)
{
    size_t n = strlen(s);
    if (n % 4 != 0)
        return NULL;
    uint8_t *p = malloc(n / 4 * 3 + 1);
    if (p == NULL)
        return NULL;
    int m = n ? EVP_DecodeBlock(p, (const unsigned char *)s, (int)n) : 0;
    if (m < 0) {
        free(p);
        return NULL;
    }
    size_t pad = n >= 1 && s[n - 1] == '=' ? (n >= 2 && s[n - 2] == '=' ? 2 : 1) : 0;
    *out_len = (size_t)m - pad;
    return p;
}

static const char *canon_names[] = {"", "raw", "e164", "email", "email-ci"};

int kmsctl_fields_parse_canon(const char *s)
{
    for (int i = 1; i <= 4; i++)
        if (strcmp(s, canon_names[i]) == 0)
            return i;
    return 0;
}

static const char *mode_name(Custos__V1__FieldMode m)
{
    return m == CUSTOS__V1__FIELD_MODE__FIELD_MODE_DETERMINISTIC ? "deterministic" : "randomized";
}

/* ---- encrypt ---------------------------------------------------------------- */

/* The input file as a JSON object into *out (the caller's to json_decref).
 * Returns an exit code after its own message. */
static int load_object(const struct kmsctl_fields_args *a, json_t **out)
{
    struct kms_buf raw;
    int ret = read_input(a->in, &raw);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    json_error_t err;
    json_t *in = json_loadb((const char *)raw.data, raw.len, JSON_REJECT_DUPLICATES, &err);
    kms_buf_wipe(&raw);
    if (in == NULL || !json_is_object(in)) {
        fprintf(stderr, "kmsctl: %s: not a JSON object%s%s\n", a->in, in ? "" : ": ",
                in ? "" : err.text);
        json_decref(in);
        return KMSCTL_EXIT_LOCAL;
    }
    *out = in;
    return KMSCTL_EXIT_OK;
}

/* Every name the options mention must be in the input: a typo would
 * otherwise silently encrypt a field in the wrong mode. */
static int encrypt_names_given(const struct kmsctl_fields_args *a, json_t *in)
{
    for (size_t i = 0; i < a->n_det; i++)
        if (json_object_get(in, a->det[i]) == NULL) {
            fprintf(stderr, "kmsctl fields encrypt: --deterministic names '%s', which the "
                            "input does not have\n", a->det[i]);
            return KMSCTL_EXIT_USAGE;
        }
    for (size_t i = 0; i < a->canon.n; i++)
        if (json_object_get(in, a->canon.key[i]) == NULL) {
            fprintf(stderr, "kmsctl fields encrypt: --canon names '%s', which the input "
                            "does not have\n", a->canon.key[i]);
            return KMSCTL_EXIT_USAGE;
        }
    return KMSCTL_EXIT_OK;
}

/* {"key_id", "key_version", "fields": {name: base64 blob}} to --out. */
static int encrypt_output(const struct kmsctl_fields_args *a, const Custos__V1__EncryptFieldsResponse *resp)
{
    int ret = KMSCTL_EXIT_LOCAL;
    json_t *fields = json_object(), *out = json_object();
    if (fields == NULL || out == NULL) {
        json_decref(fields);
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    json_object_set_new(out, "key_id", json_string(resp->key_id));
    json_object_set_new(out, "key_version", json_integer(resp->key_version));
    json_object_set_new(out, "fields", fields);
    for (size_t k = 0; k < resp->n_fields; k++) {
        char *b = b64_encode(resp->fields[k]->ciphertext.data, resp->fields[k]->ciphertext.len);
        if (b == NULL || json_object_set_new(fields, resp->fields[k]->name, json_string(b)) != 0) {
            free(b);
            fprintf(stderr, "kmsctl: cannot format JSON output\n");
            goto done;
        }
        free(b);
    }
    ret = write_json(a->out, out, 0);
done:
    json_decref(out);
    return ret;
}

/* The plaintext object to --out (created 0600). */
static int decrypt_output(const struct kmsctl_fields_args *a, const Custos__V1__DecryptFieldsResponse *resp)
{
    int ret = KMSCTL_EXIT_LOCAL;
    json_t *out = json_object();
    if (out == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return ret;
    }
    for (size_t k = 0; k < resp->n_fields; k++) {
        const Custos__V1__DecryptedField *f = resp->fields[k];
        json_t *s = json_stringn((const char *)f->value.data, f->value.len);
        if (s == NULL) {
            fprintf(stderr, "kmsctl: field '");
            kmsctl_print_safe(stderr, f->name);
            fprintf(stderr, "' (%s, key version %u) is not UTF-8 text; use the API for binary "
                            "values\n", mode_name(f->mode), f->key_version);
            goto done;
        }
        json_object_set_new(out, f->name, s);
    }
    ret = write_json(a->out, out, 1);
done:
    json_decref(out);
    return ret;
}

int kmsctl_fields_encrypt(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a)
{
    json_t *in = NULL;
    int ret = load_object(a, &in);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__PlaintextField *fs = NULL, **fp = NULL;
    ProtobufCMessage **ents = NULL;
    Custos__V1__EncryptFieldsResponse *resp = NULL;
    size_t n = json_object_size(in);
    ret = KMSCTL_EXIT_LOCAL;
    if (n < 1 || n > MAX_FIELDS) {
        fprintf(stderr, "kmsctl: %s: 1..%d fields per call\n", a->in, MAX_FIELDS);
        goto done;
    }
    if ((ret = encrypt_names_given(a, in)) != KMSCTL_EXIT_OK)
        goto done;
    ret = KMSCTL_EXIT_LOCAL;
    fs = calloc(n, sizeof(*fs));
    fp = calloc(n, sizeof(*fp));
    ents = kmsctl_kv_map(&a->ctx, &custos__v1__encrypt_fields_request__encryption_context_entry__descriptor);
    if (fs == NULL || fp == NULL || ents == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    const char *name;
    json_t *v;
    size_t i = 0;
    json_object_foreach(in, name, v)
    {
        if (!json_is_string(v)) {
            fprintf(stderr, "kmsctl: %s: field '", a->in);
            kmsctl_print_safe(stderr, name);
            fprintf(stderr, "': the value must be a string\n");
            goto done;
        }
        custos__v1__plaintext_field__init(&fs[i]);
        fs[i].name = (char *)name;
        fs[i].value.data = (uint8_t *)json_string_value(v);
        fs[i].value.len = json_string_length(v);
        fs[i].mode = CUSTOS__V1__FIELD_MODE__FIELD_MODE_RANDOMIZED;
        for (size_t d = 0; d < a->n_det; d++)
            if (strcmp(a->det[d], name) == 0)
                fs[i].mode = CUSTOS__V1__FIELD_MODE__FIELD_MODE_DETERMINISTIC;
        for (size_t c = 0; c < a->canon.n; c++)
            if (strcmp(a->canon.key[c], name) == 0)
                fs[i].canonicalizer = (Custos__V1__Canonicalizer)kmsctl_fields_parse_canon(a->canon.value[c]);
        fp[i] = &fs[i];
        i++;
    }
    Custos__V1__EncryptFieldsRequest req = CUSTOS__V1__ENCRYPT_FIELDS_REQUEST__INIT;
    req.key_id = (char *)a->key_id;
    req.n_encryption_context = a->ctx.n;
    req.encryption_context = (Custos__V1__EncryptFieldsRequest__EncryptionContextEntry **)ents;
    req.n_fields = n;
    req.fields = fp;
    ret = kmsctl_rpc_call_service(rpc, FIELD_SERVICE, "EncryptFields", &req.base,
                                  &custos__v1__encrypt_fields_response__descriptor,
                                  (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret == KMSCTL_EXIT_OK)
        ret = encrypt_output(a, resp);
done:
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    kmsctl_rpc_map_free(ents, a->ctx.n);
    free(fs);
    free(fp);
    json_decref(in);
    return ret;
}

/* ---- decrypt ---------------------------------------------------------------- */

int kmsctl_fields_decrypt(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a)
{
    json_t *in = NULL;
    int ret = load_object(a, &in);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__EncryptedField *fs = NULL, **fp = NULL;
    ProtobufCMessage **ents = NULL;
    Custos__V1__DecryptFieldsResponse *resp = NULL;
    size_t n = 0, i = 0;
    ret = KMSCTL_EXIT_LOCAL;
    /* The output of encrypt, or a bare map of blobs. */
    json_t *fields = json_object_get(in, "fields");
    const char *key_id = a->key_id;
    if (fields && json_is_object(fields)) {
        const char *in_key = json_string_value(json_object_get(in, "key_id"));
        if (key_id == NULL)
            key_id = in_key;
        else if (in_key && strcmp(in_key, key_id) != 0) {
            fprintf(stderr, "kmsctl fields decrypt: the input was made with another key than "
                            "--key-id\n");
            ret = KMSCTL_EXIT_USAGE;
            goto done;
        }
    } else {
        fields = in;
    }
    if (key_id == NULL || *key_id == '\0') {
        fprintf(stderr, "kmsctl fields decrypt: --key-id is required (the input names no key)\n");
        ret = KMSCTL_EXIT_USAGE;
        goto done;
    }
    n = json_object_size(fields);
    if (n < 1 || n > MAX_FIELDS) {
        fprintf(stderr, "kmsctl: %s: 1..%d fields per call\n", a->in, MAX_FIELDS);
        goto done;
    }
    fs = calloc(n, sizeof(*fs));
    fp = calloc(n, sizeof(*fp));
    ents = kmsctl_kv_map(&a->ctx, &custos__v1__decrypt_fields_request__encryption_context_entry__descriptor);
    if (fs == NULL || fp == NULL || ents == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(fields, name, v)
    {
        custos__v1__encrypted_field__init(&fs[i]);
        fs[i].name = (char *)name;
        fp[i] = &fs[i];
        const char *s = json_string_value(v);
        if (s == NULL || (fs[i].ciphertext.data = b64_decode(s, &fs[i].ciphertext.len)) == NULL) {
            fprintf(stderr, "kmsctl: %s: field '", a->in);
            kmsctl_print_safe(stderr, name);
            fprintf(stderr, "': not a base64 string\n");
            i++;
            goto done;
        }
        i++;
    }
    Custos__V1__DecryptFieldsRequest req = CUSTOS__V1__DECRYPT_FIELDS_REQUEST__INIT;
    req.key_id = (char *)key_id;
    req.n_encryption_context = a->ctx.n;
    req.encryption_context = (Custos__V1__DecryptFieldsRequest__EncryptionContextEntry **)ents;
    req.n_fields = n;
    req.fields = fp;
    ret = kmsctl_rpc_call_service(rpc, FIELD_SERVICE, "DecryptFields", &req.base,
                                  &custos__v1__decrypt_fields_response__descriptor,
                                  (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret == KMSCTL_EXIT_OK)
        ret = decrypt_output(a, resp);
done:
    if (resp)
        for (size_t k = 0; k < resp->n_fields; k++)
            OPENSSL_cleanse(resp->fields[k]->value.data, resp->fields[k]->value.len);
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    kmsctl_rpc_map_free(ents, a->ctx.n);
    for (size_t k = 0; fs && k < i; k++)
        free(fs[k].ciphertext.data);
    free(fs);
    free(fp);
    json_decref(in);
    return ret;
}

/* ---- blind-index ------------------------------------------------------------- */

int kmsctl_fields_blind_index(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a)
{
    struct kms_buf raw;
    int ret = read_input(a->in, &raw);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ProtobufCBinaryData vals[MAX_FIELDS];
    size_t n = 0;
    Custos__V1__BlindIndexResponse *resp = NULL;
    json_t *out = NULL;
    ret = KMSCTL_EXIT_LOCAL;
    /* Lines of the buffer, in place: values point into it. */
    for (size_t start = 0; start < raw.len;) {
        uint8_t *nl = memchr(raw.data + start, '\n', raw.len - start);
        size_t end = nl ? (size_t)(nl - raw.data) : raw.len, e = end;
        if (e > start && raw.data[e - 1] == '\r')
            e--;
        if (e > start) {
            if (n == MAX_FIELDS) {
                fprintf(stderr, "kmsctl: %s: more than %d values\n", a->in, MAX_FIELDS);
                goto done;
            }
            vals[n].data = raw.data + start;
            vals[n].len = e - start;
            n++;
        }
        start = end + 1;
    }
    if (n == 0) {
        fprintf(stderr, "kmsctl: %s: no values (one per line)\n", a->in);
        goto done;
    }
    Custos__V1__BlindIndexRequest req = CUSTOS__V1__BLIND_INDEX_REQUEST__INIT;
    req.key_id = (char *)a->key_id;
    req.field = (char *)a->field;
    req.canonicalizer = (Custos__V1__Canonicalizer)a->canon_one;
    req.n_values = n;
    req.values = vals;
    req.length_bits = a->bits;
    req.all_versions = a->all_versions;
    ret = kmsctl_rpc_call_service(rpc, FIELD_SERVICE, "BlindIndex", &req.base,
                                  &custos__v1__blind_index_response__descriptor,
                                  (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    ret = KMSCTL_EXIT_LOCAL;
    json_t *versions = json_array();
    out = json_object();
    if (versions == NULL || out == NULL) {
        json_decref(versions);
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    json_object_set_new(out, "key_id", json_string(resp->key_id));
    json_object_set_new(out, "field", json_string(a->field));
    json_object_set_new(out, "length_bits", json_integer(resp->length_bits));
    json_object_set_new(out, "versions", versions);
    for (size_t v = 0; v < resp->n_versions; v++) {
        const Custos__V1__VersionIndexes *vi = resp->versions[v];
        json_t *o = json_object(), *list = json_array();
        json_object_set_new(o, "key_version", json_integer(vi->key_version));
        json_object_set_new(o, "indexes", list);
        json_array_append_new(versions, o);
        for (size_t k = 0; k < vi->n_indexes; k++) {
            char hex[65];
            size_t len = vi->indexes[k].len > 32 ? 32 : vi->indexes[k].len;
            for (size_t b = 0; b < len; b++)
                snprintf(hex + 2 * b, 3, "%02x", vi->indexes[k].data[b]);
            hex[2 * len] = '\0';
            json_array_append_new(list, json_string(hex));
        }
    }
    ret = write_json(a->out, out, 0);
done:
    json_decref(out);
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    kms_buf_wipe(&raw);
    return ret;
}
