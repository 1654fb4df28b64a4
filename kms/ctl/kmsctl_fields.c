/*
 * kmsctl_fields.c - `kmsctl fields encrypt|decrypt|blind-index`.
 *
 *   encrypt      JSON object {"name": "value", ...} in; {"key_id": ...,
 *                "key_version": N, "fields": {"name": "<base64 blob>"}} out.
 *   decrypt      that output (or a bare {"name": "<base64 blob>"}) in; the
 *                plaintext object out, to a file created 0600.
 *   blind-index  one value per line in; {"key_id", "field", "length_bits",
 *                "versions": [{"key_version": N, "indexes": ["<hex>"...]}]}.
 *
 * Values are read from files or stdin, never from argv, where ps(1) and
 * shell history would see them. The buffers this code owns are wiped; the
 * JSON library's own copies of strings are not (jansson offers no hook),
 * which is one more reason to keep kmsctl off shared hosts.
 */
#include "kmsctl_fields.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kmsctl_io.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/fields.pb-c.h"

#define FIELD_SERVICE "custos.v1.FieldService"
#define MAX_FIELDS 32
/* JSON of 32 values of 4 KiB, escaped (a \u escape is 6 bytes per input byte). */
#define FIELDS_INPUT_MAX (1u << 20)

enum {
    O_KEY_ID = 0x4000,
    O_CONTEXT,
    O_DETERMINISTIC,
    O_CANON,
    O_IN,
    O_OUT,
    O_FIELD,
    O_BITS,
    O_ALL_VERSIONS,
};
#define F(o) (1u << ((o)-O_KEY_ID))

struct fargs {
    const char *verb;
    const char *key_id, *in, *out, *field;
    struct kmsctl_kv ctx;
    /* encrypt: names to encrypt deterministically, and NAME=KIND pairs;
     * blind-index: the one canonicalizer. */
    char *det[MAX_FIELDS];
    size_t n_det;
    struct kmsctl_kv canon;
    int canon_one;
    uint32_t bits;
    int all_versions;
    /* Parsing only: the --canon arguments as given, and F() bits seen. */
    char *canon_arg[MAX_FIELDS];
    size_t n_canon_arg;
    unsigned seen;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl fields encrypt --key-id KEY_ID [--context K=V]...\n"
            "                             [--deterministic NAME[,NAME]...]...\n"
            "                             [--canon NAME=raw|e164|email|email-ci]...\n"
            "                             [--in FILE|-] [--out FILE|-]\n"
            "       kmsctl fields decrypt [--key-id KEY_ID] [--context K=V]... [--in FILE|-]\n"
            "                             [--out FILE|-]\n"
            "       kmsctl fields blind-index --key-id KEY_ID --field NAME\n"
            "                             --canon raw|e164|email|email-ci [--bits N]\n"
            "                             [--all-versions] [--in FILE|-] [--out FILE|-]\n"
            "\n"
            "Field-level encryption and blind indexes with a METADATA_AES_HMAC key (role\n"
            "broker; docs/metadata.md).\n"
            "\n"
            "encrypt: reads a JSON object of at most 32 fields, {\"to\": \"+1 415 555 0123\"},\n"
            "  string values of at most 4096 bytes; writes {\"key_id\", \"key_version\",\n"
            "  \"fields\": {\"to\": \"<base64 blob>\"}}. Fields are RANDOMIZED unless named\n"
            "  by --deterministic (equal values of that field, key version and context\n"
            "  then give equal blobs). --canon NAME=KIND canonicalises a field before it\n"
            "  is encrypted (decrypt then returns the canonical form).\n"
            "decrypt: reads the output of encrypt (or a bare {\"to\": \"<base64 blob>\"});\n"
            "  writes the plaintext object to --out (created 0600). --key-id defaults to\n"
            "  the input's \"key_id\"; --context must repeat the encryption context.\n"
            "blind-index: reads up to 32 values, one per line (empty lines skipped);\n"
            "  writes {\"key_id\", \"field\", \"length_bits\", \"versions\": [{\"key_version\",\n"
            "  \"indexes\": [\"<hex>\", ...]}]}, one index per value in input order.\n"
            "\n"
            "options:\n"
            "  --key-id KEY_ID           the metadata key (32 hex characters)\n"
            "  --context K=V             encryption context pair, repeatable (encrypt and\n"
            "                            decrypt; at most 64 pairs)\n"
            "  --deterministic NAMES     fields to encrypt deterministically, comma-separated,\n"
            "                            repeatable\n"
            "  --canon NAME=KIND | KIND  canonicalizer: raw, e164 (+14155550123), email\n"
            "                            (domain lowercased), email-ci (all lowercased)\n"
            "  --field NAME              the field a blind index is for\n"
            "  --bits N                  index length in bits, 8..256 (default 128)\n"
            "  --all-versions            an index under every active key version (rotation)\n"
            "  --in FILE|-               input, '-' for stdin (default)\n"
            "  --out FILE|-              output, '-' for stdout (default)\n"
            "  -h, --help                this text\n"
            "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

/* ---- local I/O -------------------------------------------------------------- */

static int read_input(const char *path, struct kmsctl_sbuf *out)
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

static int parse_canon(const char *s)
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
static int load_object(const struct fargs *a, json_t **out)
{
    struct kmsctl_sbuf raw;
    int ret = read_input(a->in, &raw);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    json_error_t err;
    json_t *in = json_loadb((const char *)raw.data, raw.len, JSON_REJECT_DUPLICATES, &err);
    kmsctl_sbuf_wipe(&raw);
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
static int encrypt_names_given(const struct fargs *a, json_t *in)
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
static int encrypt_output(const struct fargs *a, const Custos__V1__EncryptFieldsResponse *resp)
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
static int decrypt_output(const struct fargs *a, const Custos__V1__DecryptFieldsResponse *resp)
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

static int run_encrypt(struct kmsctl_rpc *rpc, struct fargs *a)
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
                fs[i].canonicalizer = (Custos__V1__Canonicalizer)parse_canon(a->canon.value[c]);
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

static int run_decrypt(struct kmsctl_rpc *rpc, struct fargs *a)
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

static int run_blind_index(struct kmsctl_rpc *rpc, struct fargs *a)
{
    struct kmsctl_sbuf raw;
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
    kmsctl_sbuf_wipe(&raw);
    return ret;
}

/* ---- options ------------------------------------------------------------------ */

static int add_det(struct fargs *a, const char *arg)
{
    char *copy = strdup(arg), *save = NULL;
    if (copy == NULL)
        return 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (a->n_det == MAX_FIELDS) {
            fprintf(stderr, "kmsctl fields: more than %d --deterministic names\n", MAX_FIELDS);
            free(copy);
            return 0;
        }
        a->det[a->n_det] = strdup(t);
        if (a->det[a->n_det] == NULL) {
            free(copy);
            return 0;
        }
        a->n_det++;
    }
    free(copy);
    return 1;
}

static const char *opt_name(int bit)
{
    static const char *names[] = {"--key-id", "--context", "--deterministic", "--canon", "--in",
                                  "--out", "--field", "--bits", "--all-versions"};
    return names[bit];
}

static const struct option fields_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"key-id", required_argument, NULL, O_KEY_ID},
    {"context", required_argument, NULL, O_CONTEXT},
    {"deterministic", required_argument, NULL, O_DETERMINISTIC},
    {"canon", required_argument, NULL, O_CANON},
    {"in", required_argument, NULL, O_IN},
    {"out", required_argument, NULL, O_OUT},
    {"field", required_argument, NULL, O_FIELD},
    {"bits", required_argument, NULL, O_BITS},
    {"all-versions", no_argument, NULL, O_ALL_VERSIONS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* One of this command's own options (c in O_KEY_ID..O_ALL_VERSIONS):
 * record it, or print why not and return 0. */
static int fields_option(struct fargs *a, int c, char *arg)
{
    a->seen |= F(c);
    switch (c) {
    case O_KEY_ID:
        a->key_id = arg;
        return 1;
    case O_CONTEXT:
        return kmsctl_kv_add(&a->ctx, "--context", arg);
    case O_DETERMINISTIC:
        return add_det(a, arg);
    case O_CANON:
        if (a->n_canon_arg == MAX_FIELDS) {
            fprintf(stderr, "kmsctl fields: more than %d --canon options\n", MAX_FIELDS);
            return 0;
        }
        a->canon_arg[a->n_canon_arg++] = arg;
        return 1;
    case O_IN:
        a->in = arg;
        return 1;
    case O_OUT:
        a->out = arg;
        return 1;
    case O_FIELD:
        a->field = arg;
        return 1;
    case O_BITS: {
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(arg, &end, 10);
        if (arg[0] < '0' || arg[0] > '9' || errno || *end || v < 8 || v > 256) {
            fprintf(stderr, "kmsctl fields: --bits must be 8..256\n");
            return 0;
        }
        a->bits = (uint32_t)v;
        return 1;
    }
    default: /* O_ALL_VERSIONS */
        a->all_versions = 1;
        return 1;
    }
}

typedef int fields_run_fn(struct kmsctl_rpc *, struct fargs *);

/* The verb word: its function into *out_run and the options it takes into
 * *out_allowed. Returns -1 to go on, or the exit code (help, usage error). */
static int fields_verb(int argc, char **argv, struct fargs *a, fields_run_fn **out_run,
                       unsigned *out_allowed)
{
    a->verb = optind < argc ? argv[optind++] : "";
    if (strcmp(a->verb, "help") == 0) {
        usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    if (strcmp(a->verb, "encrypt") == 0) {
        *out_allowed =
            F(O_KEY_ID) | F(O_CONTEXT) | F(O_DETERMINISTIC) | F(O_CANON) | F(O_IN) | F(O_OUT);
        *out_run = run_encrypt;
    } else if (strcmp(a->verb, "decrypt") == 0) {
        *out_allowed = F(O_KEY_ID) | F(O_CONTEXT) | F(O_IN) | F(O_OUT);
        *out_run = run_decrypt;
    } else if (strcmp(a->verb, "blind-index") == 0) {
        *out_allowed = F(O_KEY_ID) | F(O_CANON) | F(O_IN) | F(O_OUT) | F(O_FIELD) | F(O_BITS) |
                       F(O_ALL_VERSIONS);
        *out_run = run_blind_index;
    } else {
        if (*a->verb)
            fprintf(stderr, "kmsctl fields: unknown command '%s'\n", a->verb);
        else
            fprintf(stderr, "kmsctl fields: encrypt, decrypt or blind-index?\n");
        usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "kmsctl fields %s: unexpected argument '%s' (values are read from "
                        "--in, never from the command line)\n", a->verb, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

/* Checks that need the verb, and the --canon arguments turned into
 * a->canon_one or a->canon; 0 after printing why not. */
static int fields_check(struct fargs *a, fields_run_fn *run, unsigned allowed)
{
    unsigned extra = a->seen & ~allowed;
    if (extra) {
        fprintf(stderr, "kmsctl fields %s: %s does not apply\n", a->verb,
                opt_name(__builtin_ctz(extra)));
        return 0;
    }
    if (run != run_decrypt && (a->key_id == NULL || *a->key_id == '\0')) {
        fprintf(stderr, "kmsctl fields %s: --key-id is required\n", a->verb);
        return 0;
    }
    if (run == run_blind_index) {
        if (a->field == NULL || *a->field == '\0' || a->n_canon_arg != 1 ||
            (a->canon_one = parse_canon(a->canon_arg[0])) == 0) {
            fprintf(stderr, "kmsctl fields blind-index: --field NAME and one --canon "
                            "raw|e164|email|email-ci are required\n");
            return 0;
        }
        return 1;
    }
    for (size_t i = 0; i < a->n_canon_arg; i++) {
        char *eq = strchr(a->canon_arg[i], '=');
        if (eq == NULL || parse_canon(eq + 1) == 0) {
            fprintf(stderr, "kmsctl fields encrypt: --canon takes NAME=raw|e164|email|"
                            "email-ci\n");
            return 0;
        }
        if (!kmsctl_kv_add(&a->canon, "--canon", a->canon_arg[i]))
            return 0;
    }
    return 1;
}

/* Options, verb, checks. Returns -1 to go on, or the exit code. */
static int fields_parse(int argc, char **argv, struct kmsctl_conn *conn, struct fargs *a,
                        fields_run_fn **out_run)
{
    unsigned allowed = 0;
    int c;
    kmsctl_conn_init(conn);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", fields_opts, NULL)) != -1) {
        if (kmsctl_conn_option(conn, c, optarg))
            continue;
        if (c >= O_KEY_ID && c <= O_ALL_VERSIONS) {
            if (!fields_option(a, c, optarg))
                return KMSCTL_EXIT_USAGE;
            continue;
        }
        usage(c == 'h' ? stdout : stderr);
        return c == 'h' ? KMSCTL_EXIT_OK : KMSCTL_EXIT_USAGE;
    }
    int ret = fields_verb(argc, argv, a, out_run, &allowed);
    if (ret < 0 && !fields_check(a, *out_run, allowed))
        ret = KMSCTL_EXIT_USAGE;
    return ret;
}

int kmsctl_fields_main(int argc, char **argv)
{
    struct kmsctl_conn conn;
    struct fargs a = {.in = "-", .out = "-"};
    fields_run_fn *run = NULL;
    int ret = fields_parse(argc, argv, &conn, &a, &run);
    if (ret < 0) {
        struct kmsctl_rpc *rpc = NULL;
        ret = kmsctl_rpc_open(&conn, &rpc);
        if (ret == KMSCTL_EXIT_OK)
            ret = run(rpc, &a);
        kmsctl_rpc_free(rpc);
    }
    kmsctl_kv_cleanup(&a.ctx);
    kmsctl_kv_cleanup(&a.canon);
    for (size_t i = 0; i < a.n_det; i++)
        free(a.det[i]);
    return ret;
}
