/*
 * kmsctl_key.c - `kmsctl key <verb>`: key lifecycle for tenant key admins.
 *
 * Output is a readable summary by default, `--json` for scripts (one JSON
 * object; times as UTC ISO 8601 strings), or `-q` for key ids only. Every
 * string that came from the server is escaped before it reaches a terminal.
 */
#include "kmsctl_key.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

/* Long-only options of this command (values past the connection ones). */
enum {
    O_REGION = 0x2000,
    O_DESCRIPTION,
    O_ORIGIN,
    O_PAGE_SIZE,
    O_PAGE_TOKEN,
    O_ALL,
    O_DAYS,
    O_PERIOD,
    O_SPEC, /* create only; checked by hand, outside the F_ bits */
};

/* Bits of the options a verb accepts; anything else is a usage error rather
 * than silently ignored. */
#define F_REGION (1u << 0)
#define F_DESCRIPTION (1u << 1)
#define F_ORIGIN (1u << 2)
#define F_PAGE_SIZE (1u << 3)
#define F_PAGE_TOKEN (1u << 4)
#define F_ALL (1u << 5)
#define F_DAYS (1u << 6)
#define F_PERIOD (1u << 7)
#define F_OUT 0 /* --json and -q: every verb */

/* Guard against a server that hands back the same page forever. */
#define MAX_PAGES 100000

struct key_args;
static int do_create(struct kmsctl_rpc *rpc, const struct key_args *a);
static int do_one_key(struct kmsctl_rpc *rpc, const struct key_args *a);
static int do_list(struct kmsctl_rpc *rpc, const struct key_args *a);

struct verb {
    int (*run)(struct kmsctl_rpc *rpc, const struct key_args *a);
    const char *name;
    const char *method;
    const ProtobufCMessageDescriptor *req;
    const ProtobufCMessageDescriptor *resp;
    unsigned opts;
    int needs_id;
};

static const struct verb verbs[] = {
    {do_create, "create", "CreateKey", &custos__v1__create_key_request__descriptor,
     &custos__v1__create_key_response__descriptor,
     F_REGION | F_DESCRIPTION | F_ORIGIN | F_PERIOD, 0},
    {do_one_key, "describe", "DescribeKey", &custos__v1__describe_key_request__descriptor,
     &custos__v1__describe_key_response__descriptor, F_OUT, 1},
    {do_list, "list", "ListKeys", &custos__v1__list_keys_request__descriptor,
     &custos__v1__list_keys_response__descriptor, F_PAGE_SIZE | F_PAGE_TOKEN | F_ALL, 0},
    {do_one_key, "rotate", "RotateKey", &custos__v1__rotate_key_request__descriptor,
     &custos__v1__rotate_key_response__descriptor, F_OUT, 1},
    {do_one_key, "set-rotation", "UpdateKeyRotation",
     &custos__v1__update_key_rotation_request__descriptor,
     &custos__v1__update_key_rotation_response__descriptor, F_PERIOD, 1},
    {do_one_key, "enable", "EnableKey", &custos__v1__enable_key_request__descriptor,
     &custos__v1__enable_key_response__descriptor, F_OUT, 1},
    {do_one_key, "disable", "DisableKey", &custos__v1__disable_key_request__descriptor,
     &custos__v1__disable_key_response__descriptor, F_OUT, 1},
    {do_one_key, "schedule-deletion", "ScheduleKeyDeletion",
     &custos__v1__schedule_key_deletion_request__descriptor,
     &custos__v1__schedule_key_deletion_response__descriptor, F_DAYS, 1},
    {do_one_key, "cancel-deletion", "CancelKeyDeletion",
     &custos__v1__cancel_key_deletion_request__descriptor,
     &custos__v1__cancel_key_deletion_response__descriptor, F_OUT, 1},
};

struct key_args {
    const struct verb *verb;
    const char *key_id, *region, *description, *origin, *page_token, *spec;
    uint32_t page_size, days;
    uint64_t period;
    int all, has_period;
    struct kmsctl_common o; /* connection, --json, -q */
    unsigned seen;          /* F_ bits of the options given */
};

static void key_usage(FILE *f)
{
    fprintf(f, "usage: kmsctl key <command> [options]\n"
               "\n"
               "Key lifecycle (role key-admin). Options may come before or after the command.\n"
               "\n"
               "commands:\n"
               "  create --region R [--description D] [--origin hsm|external]\n"
               "         [--spec aes-256|metadata|ec-p256|rsa-2048|rsa-3072|rsa-4096|link-token]\n"
               "         [--rotation-period P]\n"
               "                            create a key in region R: aes-256 (default) for\n"
               "                            encrypt/decrypt, metadata for kmsctl fields, a\n"
               "                            key pair for sign/verify (docs/signing.md),\n"
               "                            link-token for kmsctl link (docs/link-tokens.md);\n"
               "                            rotated automatically every P (seconds, or with\n"
               "                            s, m, h, d: 90d)\n"
               "  describe KEY_ID           show a key\n"
               "  list [--page-size N] [--page-token T] [--all]\n"
               "                            list the tenant's keys, oldest first; N is 1..1000;\n"
               "                            --all follows every page\n"
               "  rotate KEY_ID             add a version that encrypts from now on\n"
               "  set-rotation KEY_ID --rotation-period P\n"
               "                            rotate automatically every P (0: never again)\n"
               "  enable KEY_ID             DISABLED -> ENABLED\n"
               "  disable KEY_ID            ENABLED -> DISABLED (no encrypt or decrypt)\n"
               "  schedule-deletion KEY_ID [--days N]\n"
               "                            destroy after N days (default: the server's, 30)\n"
               "  cancel-deletion KEY_ID    PENDING_DELETION -> DISABLED\n"
               "  import-params KEY_ID --out-public-key F [--out-token F]\n"
               "                            BYOK: a wrapping public key and an import token\n"
               "  import KEY_ID --token F --wrapped F [--algorithm A] [--new-version]\n"
               "                            BYOK: import wrapped key material (docs/byok.md)\n"               "  public-key KEY_ID [--version N] [--pem] [--out F]\n"
               "  sign KEY_ID --alg A (--in F | --digest HEX) [--version N] [--out F]\n"
               "  verify KEY_ID --alg A (--in F | --digest HEX) --signature F [--version N]\n"
               "                            signing keys (role broker): see\n"
               "                            `kmsctl key sign --help`\n"
               "\n"
               "output options:\n"
               "  --json                    print a JSON object (list: {\"keys\": [...],\n"
               "                            \"next_page_token\": \"...\"})\n"
               "  -q, --quiet               print only the key id (list: one per line)\n"
               "  -h, --help                this text\n"
               "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

static int parse_u32(const char *s, unsigned long min, unsigned long max, uint32_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* Seconds, or a number with one of s, m, h, d; at most 10 years. */
static int parse_period(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mul = 1;
    if (*end == 'm')
        mul = 60;
    else if (*end == 'h')
        mul = 3600;
    else if (*end == 'd')
        mul = 86400;
    else if (*end != 's' && *end != '\0')
        return 0;
    if (errno || (*end && end[1]) || v > 10ULL * 365 * 86400 / mul)
        return 0;
    *out = v * mul;
    return 1;
}

static int print_key(const struct key_args *a, const Custos__V1__KeyMetadata *k)
{
    if (k == NULL) {
        fprintf(stderr, "kmsctl: reply carries no key\n");
        return KMSCTL_EXIT_TRANSPORT;
    }
    if (a->o.json)
        return kmsctl_print_json(kmsctl_key_json(k));
    if (a->o.quiet) {
        kmsctl_print_safe(stdout, k->key_id);
        putchar('\n');
    } else {
        kmsctl_print_key_text(k);
    }
    return KMSCTL_EXIT_OK;
}

/* Every response but ListKeys is { KeyMetadata key = 1; }. */
static const Custos__V1__KeyMetadata *resp_key(const ProtobufCMessage *m)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, "key");
    return f ? *(Custos__V1__KeyMetadata *const *)((const char *)m + f->offset) : NULL;
}

static int do_create(struct kmsctl_rpc *rpc, const struct key_args *a)
{
    Custos__V1__CreateKeyRequest req = CUSTOS__V1__CREATE_KEY_REQUEST__INIT;
    req.region = (char *)a->region;
    int metadata = a->spec && strcasecmp(a->spec, "metadata") == 0;
    req.spec = metadata ? CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC : CUSTOS__V1__KEY_SPEC__AES_256;
    req.usage = metadata ? CUSTOS__V1__KEY_USAGE__METADATA_FIELDS
                         : CUSTOS__V1__KEY_USAGE__ENCRYPT_DECRYPT;
    /* Signing keys (docs/signing.md). */
    static const struct {
        const char *name;
        Custos__V1__KeySpec spec;
    } pairs[] = {{"ec-p256", CUSTOS__V1__KEY_SPEC__EC_P256},
                 {"rsa-2048", CUSTOS__V1__KEY_SPEC__RSA_2048},
                 {"rsa-3072", CUSTOS__V1__KEY_SPEC__RSA_3072},
                 {"rsa-4096", CUSTOS__V1__KEY_SPEC__RSA_4096}};
    for (size_t i = 0; a->spec && i < sizeof(pairs) / sizeof(pairs[0]); i++)
        if (strcasecmp(a->spec, pairs[i].name) == 0) {
            req.spec = pairs[i].spec;
            req.usage = CUSTOS__V1__KEY_USAGE__SIGN_VERIFY;
        }
    /* Link tokens (docs/link-tokens.md). */
    if (a->spec && strcasecmp(a->spec, "link-token") == 0) {
        req.spec = CUSTOS__V1__KEY_SPEC__LINK_TOKEN_HMAC;
        req.usage = CUSTOS__V1__KEY_USAGE__LINK_TOKEN;
    }
    if (a->description)
        req.description = (char *)a->description;
    req.origin = a->origin && strcasecmp(a->origin, "external") == 0
                     ? CUSTOS__V1__KEY_ORIGIN__EXTERNAL
                     : CUSTOS__V1__KEY_ORIGIN__HSM;
    req.rotation_period_s = a->period;
    ProtobufCMessage *resp = NULL;
    int ret = kmsctl_rpc_call(rpc, a->verb->method, &req.base, a->verb->resp, &resp);
    if (ret == KMSCTL_EXIT_OK)
        ret = print_key(a, resp_key(resp));
    protobuf_c_message_free_unpacked(resp, NULL);
    return ret;
}

/* describe, rotate, enable, disable, schedule-deletion, cancel-deletion:
 * each request is { string key_id = 1; } (plus the window for scheduling),
 * so one builder serves them through the descriptors. */
static int do_one_key(struct kmsctl_rpc *rpc, const struct key_args *a)
{
    const ProtobufCMessageDescriptor *d = a->verb->req;
    ProtobufCMessage *req = calloc(1, d->sizeof_message), *resp = NULL;
    if (req == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    protobuf_c_message_init(d, req);
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(d, "key_id");
    *(char **)((char *)req + f->offset) = (char *)a->key_id;
    f = protobuf_c_message_descriptor_get_field_by_name(d, "pending_window_days");
    if (f)
        *(uint32_t *)((char *)req + f->offset) = a->days;
    f = protobuf_c_message_descriptor_get_field_by_name(d, "rotation_period_s");
    if (f)
        *(uint64_t *)((char *)req + f->offset) = a->period;
    int ret = kmsctl_rpc_call(rpc, a->verb->method, req, a->verb->resp, &resp);
    if (ret == KMSCTL_EXIT_OK)
        ret = print_key(a, resp_key(resp));
    protobuf_c_message_free_unpacked(resp, NULL);
    free(req); /* its strings belong to argv */
    return ret;
}

static int do_list(struct kmsctl_rpc *rpc, const struct key_args *a)
{
    json_t *keys = a->o.json ? json_array() : NULL;
    char *token = strdup(a->page_token ? a->page_token : "");
    size_t total = 0;
    int ret = KMSCTL_EXIT_OK;

    if (token == NULL || (a->o.json && keys == NULL)) {
        fprintf(stderr, "kmsctl: out of memory\n");
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    for (int page = 0;; page++) {
        Custos__V1__ListKeysRequest req = CUSTOS__V1__LIST_KEYS_REQUEST__INIT;
        Custos__V1__ListKeysResponse *resp = NULL;
        req.page_size = a->page_size;
        req.page_token = token;
        ret = kmsctl_rpc_call(rpc, a->verb->method, &req.base, a->verb->resp,
                              (ProtobufCMessage **)&resp);
        if (ret != KMSCTL_EXIT_OK)
            goto done;
        if (!a->o.json && !a->o.quiet && total == 0 && resp->n_keys > 0)
            kmsctl_print_key_header();
        for (size_t i = 0; i < resp->n_keys; i++) {
            if (a->o.json) {
                json_array_append_new(keys, kmsctl_key_json(resp->keys[i]));
            } else if (a->o.quiet) {
                kmsctl_print_safe(stdout, resp->keys[i]->key_id);
                putchar('\n');
            } else {
                kmsctl_print_key_row(resp->keys[i]);
            }
        }
        total += resp->n_keys;
        const char *next = resp->next_page_token ? resp->next_page_token : "";
        int again = a->all && *next && strcmp(next, token) != 0;
        if (a->all && *next && !again) {
            fprintf(stderr, "kmsctl: server repeated page token; stopping\n");
            ret = KMSCTL_EXIT_TRANSPORT;
        }
        free(token);
        token = strdup(next);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        if (token == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            ret = KMSCTL_EXIT_LOCAL;
            goto done;
        }
        if (!again || ret != KMSCTL_EXIT_OK)
            break;
        if (page + 1 >= MAX_PAGES) {
            fprintf(stderr, "kmsctl: more than %d pages; stopping\n", MAX_PAGES);
            ret = KMSCTL_EXIT_TRANSPORT;
            goto done;
        }
    }
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    if (a->o.json) {
        json_t *o = json_object();
        json_object_set_new(o, "keys", keys);
        keys = NULL;
        json_object_set_new(o, "next_page_token", kmsctl_jstr(token));
        ret = kmsctl_print_json(o);
    } else {
        if (total == 0 && !a->o.quiet)
            fprintf(stderr, "no keys\n");
        if (*token) {
            fputs("kmsctl: more keys: run again with --page-token ", stderr);
            kmsctl_print_safe(stderr, token);
            fputc('\n', stderr);
        }
    }
done:
    json_decref(keys);
    free(token);
    return ret;
}

static const char *option_name(int c)
{
    switch (c) {
    case O_REGION:
        return "--region";
    case O_DESCRIPTION:
        return "--description";
    case O_ORIGIN:
        return "--origin";
    case O_PAGE_SIZE:
        return "--page-size";
    case O_PAGE_TOKEN:
        return "--page-token";
    case O_ALL:
        return "--all";
    case O_PERIOD:
        return "--rotation-period";
    default:
        return "--days";
    }
}

static const struct option key_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    KMSCTL_OUT_LONGOPTS,
    {"region", required_argument, NULL, O_REGION},
    {"description", required_argument, NULL, O_DESCRIPTION},
    {"origin", required_argument, NULL, O_ORIGIN},
    {"spec", required_argument, NULL, O_SPEC},
    {"page-size", required_argument, NULL, O_PAGE_SIZE},
    {"page-token", required_argument, NULL, O_PAGE_TOKEN},
    {"all", no_argument, NULL, O_ALL},
    {"days", required_argument, NULL, O_DAYS},
    {"rotation-period", required_argument, NULL, O_PERIOD},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* One of this command's own options: record it, or print why not and
 * return 0. */
static int key_option(struct key_args *a, int c, const char *arg)
{
    switch (c) {
    case O_REGION:
        a->region = arg;
        break;
    case O_SPEC:
        a->spec = arg;
        if (strcasecmp(arg, "aes-256") != 0 && strcasecmp(arg, "metadata") != 0 &&
            strcasecmp(arg, "ec-p256") != 0 && strcasecmp(arg, "rsa-2048") != 0 &&
            strcasecmp(arg, "rsa-3072") != 0 && strcasecmp(arg, "rsa-4096") != 0 &&
            strcasecmp(arg, "link-token") != 0) {
            fprintf(stderr, "kmsctl key: --spec must be aes-256, metadata, ec-p256, rsa-2048, "
                            "rsa-3072, rsa-4096 or link-token\n");
            return 0;
        }
        return 1;
    case O_DESCRIPTION:
        a->description = arg;
        break;
    case O_ORIGIN:
        a->origin = arg;
        if (strcasecmp(arg, "hsm") != 0 && strcasecmp(arg, "external") != 0) {
            fprintf(stderr, "kmsctl key: --origin must be hsm or external\n");
            return 0;
        }
        break;
    case O_PAGE_SIZE:
        if (!parse_u32(arg, 1, 1000, &a->page_size)) {
            fprintf(stderr, "kmsctl key: --page-size must be 1..1000\n");
            return 0;
        }
        break;
    case O_PAGE_TOKEN:
        a->page_token = arg;
        break;
    case O_ALL:
        a->all = 1;
        break;
    case O_DAYS:
        if (!parse_u32(arg, 1, UINT32_MAX, &a->days)) {
            fprintf(stderr, "kmsctl key: --days must be a positive number of days\n");
            return 0;
        }
        break;
    default: /* O_PERIOD */
        if (!parse_period(arg, &a->period)) {
            fprintf(stderr, "kmsctl key: --rotation-period must be seconds, or a number "
                            "with s, m, h or d, at most 10 years\n");
            return 0;
        }
        a->has_period = 1;
        break;
    }
    a->seen |= 1u << (c - O_REGION);
    return 1;
}

/* The options, then the verb word and KEY_ID. Returns -1 to go on, or the
 * exit code (help, usage error). */
static int key_parse(int argc, char **argv, struct key_args *a)
{
    int c, bad_opt = 0;
    kmsctl_common_init(&a->o);
    optind = 1;
    /* GNU getopt permutes, so options may sit before or after the verb. */
    while ((c = getopt_long(argc, argv, "qh", key_opts, NULL)) != -1) {
        if (kmsctl_common_option(&a->o, c, optarg))
            continue;
        if (c == 'h') {
            key_usage(stdout);
            return KMSCTL_EXIT_OK;
        }
        if (c < O_REGION || c > O_SPEC) {
            bad_opt = 1;
            continue;
        }
        if (!key_option(a, c, optarg))
            return KMSCTL_EXIT_USAGE;
    }
    if (bad_opt || optind >= argc) {
        key_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    const char *name = argv[optind++];
    if (strcmp(name, "help") == 0) {
        key_usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(name, verbs[i].name) == 0)
            a->verb = &verbs[i];
    if (a->verb == NULL) {
        fprintf(stderr, "kmsctl key: unknown command '%s'\n", name);
        key_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (a->verb->needs_id) {
        if (optind >= argc || argv[optind][0] == '\0') {
            fprintf(stderr, "kmsctl key %s: KEY_ID is required\n", name);
            return KMSCTL_EXIT_USAGE;
        }
        a->key_id = argv[optind++];
    }
    if (optind < argc) {
        fprintf(stderr, "kmsctl key %s: unexpected argument '%s'\n", name, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

/* Checks that need the verb; 0 after printing why not. */
static int key_check(const struct key_args *a)
{
    const char *name = a->verb->name;
    unsigned extra = a->seen & ~a->verb->opts;
    if (extra) {
        int bit = __builtin_ctz(extra);
        fprintf(stderr, "kmsctl key %s: %s does not apply\n", name, option_name(O_REGION + bit));
        return 0;
    }
    if (a->o.json && a->o.quiet) {
        fprintf(stderr, "kmsctl key %s: --json and --quiet exclude each other\n", name);
        return 0;
    }
    if (a->spec && strcmp(name, "create") != 0) {
        fprintf(stderr, "kmsctl key %s: --spec does not apply\n", name);
        return 0;
    }
    if (a->all && a->page_token) {
        fprintf(stderr, "kmsctl key list: --all starts at the first page; drop --page-token\n");
        return 0;
    }
    if (strcmp(name, "set-rotation") == 0 && !a->has_period) {
        fprintf(stderr, "kmsctl key set-rotation: --rotation-period is required (0: none)\n");
        return 0;
    }
    if (strcmp(name, "create") == 0 && (a->region == NULL || *a->region == '\0')) {
        fprintf(stderr, "kmsctl key create: --region is required\n");
        return 0;
    }
    return 1;
}

int kmsctl_key_main(int argc, char **argv)
{
    struct key_args a = {0};
    int ret = key_parse(argc, argv, &a);
    if (ret >= 0)
        return ret;
    if (!key_check(&a))
        return KMSCTL_EXIT_USAGE;
    struct kmsctl_rpc *rpc = NULL;
    ret = kmsctl_rpc_open(&a.o.conn, &rpc);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = a.verb->run(rpc, &a);
    kmsctl_rpc_free(rpc);
    return kmsctl_flush_stdout(ret);
}
