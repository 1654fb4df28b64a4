/*
 * kmsctl_fields.c - `kmsctl fields encrypt|decrypt|blind-index`: help and
 * option parsing; the commands themselves are in kmsctl_fields_run.c.
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

#include "kmsctl_fields_run.h"
#include "kmsctl_rpc.h"
#include "proto/fields.pb-c.h"

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

/* ---- options ------------------------------------------------------------------ */

static int add_det(struct kmsctl_fields_args *a, const char *arg)
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
static int fields_option(struct kmsctl_fields_args *a, int c, char *arg)
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

typedef int fields_run_fn(struct kmsctl_rpc *, struct kmsctl_fields_args *);

/* The verb word: its function into *out_run and the options it takes into
 * *out_allowed. Returns -1 to go on, or the exit code (help, usage error). */
static int fields_verb(int argc, char **argv, struct kmsctl_fields_args *a, fields_run_fn **out_run,
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
        *out_run = kmsctl_fields_encrypt;
    } else if (strcmp(a->verb, "decrypt") == 0) {
        *out_allowed = F(O_KEY_ID) | F(O_CONTEXT) | F(O_IN) | F(O_OUT);
        *out_run = kmsctl_fields_decrypt;
    } else if (strcmp(a->verb, "blind-index") == 0) {
        *out_allowed = F(O_KEY_ID) | F(O_CANON) | F(O_IN) | F(O_OUT) | F(O_FIELD) | F(O_BITS) |
                       F(O_ALL_VERSIONS);
        *out_run = kmsctl_fields_blind_index;
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
static int fields_check(struct kmsctl_fields_args *a, fields_run_fn *run, unsigned allowed)
{
    unsigned extra = a->seen & ~allowed;
    if (extra) {
        fprintf(stderr, "kmsctl fields %s: %s does not apply\n", a->verb,
                opt_name(__builtin_ctz(extra)));
        return 0;
    }
    if (run != kmsctl_fields_decrypt && (a->key_id == NULL || *a->key_id == '\0')) {
        fprintf(stderr, "kmsctl fields %s: --key-id is required\n", a->verb);
        return 0;
    }
    if (run == kmsctl_fields_blind_index) {
        if (a->field == NULL || *a->field == '\0' || a->n_canon_arg != 1 ||
            (a->canon_one = kmsctl_fields_parse_canon(a->canon_arg[0])) == 0) {
            fprintf(stderr, "kmsctl fields blind-index: --field NAME and one --canon "
                            "raw|e164|email|email-ci are required\n");
            return 0;
        }
        return 1;
    }
    for (size_t i = 0; i < a->n_canon_arg; i++) {
        char *eq = strchr(a->canon_arg[i], '=');
        if (eq == NULL || kmsctl_fields_parse_canon(eq + 1) == 0) {
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
static int fields_parse(int argc, char **argv, struct kmsctl_conn *conn, struct kmsctl_fields_args *a,
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
    struct kmsctl_fields_args a = {.in = "-", .out = "-"};
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
