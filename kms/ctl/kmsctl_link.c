/*
 * kmsctl_link.c - `kmsctl link ...` (kmsctl_link.h).
 */
#include "kmsctl_link.h"

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kmsctl_io.h"
#include "kmsctl_rpc.h"
#include "proto/links.pb-c.h"

#define LINK_SERVICE "custos.v1.LinkService"
#define DEVICE_MAX 1024
#define TOKEN_FILE_MAX 256
#define IDS_MAX 100

enum { O_PHONE = 0x4000, O_DEVICE_FILE, O_PURPOSE, O_TTL, O_REF, O_TOKEN_FILE, O_TOKEN_ID };

struct link_args {
    const char *verb, *key_id, *phone, *device_file, *purpose, *ref, *token_file;
    const char *ids[IDS_MAX];
    size_t n_ids;
    uint32_t ttl;
    struct kmsctl_common o;
};

static void link_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl link mint KEY_ID --phone E164 --device-file FILE --purpose P\n"
            "                        [--ttl SECONDS] [--message-ref REF] [--json]\n"
            "       kmsctl link redeem KEY_ID --token-file FILE --phone E164\n"
            "                        --device-file FILE --purpose P [--json]\n"
            "       kmsctl link revoke KEY_ID (--token-id ID ... | --message-ref REF) [--json]\n"
            "\n"
            "SMS-fallback link tokens (key spec link-token; role broker;\n"
            "docs/link-tokens.md).\n"
            "\n"
            "mint            a single-use token bound to the phone number, the device value\n"
            "                (the bytes of --device-file) and the purpose; prints token,\n"
            "                token_id and expires_at\n"
            "redeem          the token in --token-file (48 characters) against what the\n"
            "                user presents; exit 0 and 'redeemed: ID' once, exit 1 for every\n"
            "                refusal (one answer: 'link token not accepted')\n"
            "revoke          live tokens by id (repeat --token-id, up to 100) or every token\n"
            "                of one --message-ref\n"
            "  --phone E164           the recipient's number, any common spelling; it is\n"
            "                         visible to ps(1) while kmsctl runs\n"
            "  --ttl SECONDS          life of the token (default: kmsd's default_ttl_s)\n"
            "  --json                 print a JSON object\n"
            "  -h, --help             this text\n"
            "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

static const struct option link_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"json", no_argument, NULL, KMSCTL_OPT_JSON},
    {"phone", required_argument, NULL, O_PHONE},
    {"device-file", required_argument, NULL, O_DEVICE_FILE},
    {"purpose", required_argument, NULL, O_PURPOSE},
    {"ttl", required_argument, NULL, O_TTL},
    {"message-ref", required_argument, NULL, O_REF},
    {"token-file", required_argument, NULL, O_TOKEN_FILE},
    {"token-id", required_argument, NULL, O_TOKEN_ID},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int link_option(struct link_args *a, int c, const char *arg)
{
    switch (c) {
    case O_PHONE:
        a->phone = arg;
        return 1;
    case O_DEVICE_FILE:
        a->device_file = arg;
        return 1;
    case O_PURPOSE:
        a->purpose = arg;
        return 1;
    case O_REF:
        a->ref = arg;
        return 1;
    case O_TOKEN_FILE:
        a->token_file = arg;
        return 1;
    case O_TOKEN_ID:
        if (a->n_ids >= IDS_MAX) {
            fprintf(stderr, "kmsctl link: at most %d --token-id\n", IDS_MAX);
            return -1;
        }
        a->ids[a->n_ids++] = arg;
        return 1;
    case O_TTL: {
        char *end = NULL;
        errno = 0;
        unsigned long v = arg[0] >= '1' && arg[0] <= '9' ? strtoul(arg, &end, 10) : 0;
        if (v == 0 || errno || *end || v > 86400) {
            fprintf(stderr, "kmsctl link: --ttl must be 1..86400 seconds\n");
            return -1;
        }
        a->ttl = (uint32_t)v;
        return 1;
    }
    }
    return 0;
}

static int link_parse(int argc, char **argv, struct link_args *a)
{
    int c;
    kmsctl_common_init(&a->o);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", link_opts, NULL)) != -1) {
        if (kmsctl_common_option(&a->o, c, optarg))
            continue;
        if (c == 'h') {
            link_usage(stdout);
            return KMSCTL_EXIT_OK;
        }
        int r = link_option(a, c, optarg);
        if (r == 1)
            continue;
        if (r == 0)
            link_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (optind + 2 != argc) {
        link_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    a->verb = argv[optind];
    a->key_id = argv[optind + 1];
    bool mint = strcmp(a->verb, "mint") == 0, redeem = strcmp(a->verb, "redeem") == 0,
         revoke = strcmp(a->verb, "revoke") == 0;
    const char *why = NULL;
    if (!mint && !redeem && !revoke)
        why = "unknown command";
    else if (a->key_id[0] == '\0')
        why = "KEY_ID is required";
    else if ((mint || redeem) && (!a->phone || !a->device_file || !a->purpose))
        why = "--phone, --device-file and --purpose are required";
    else if (redeem && !a->token_file)
        why = "--token-file is required";
    else if (revoke && (a->n_ids > 0) == (a->ref != NULL))
        why = "give --token-id or --message-ref, exactly one of them";
    else if (!mint && a->ttl)
        why = "--ttl is for mint";
    if (why) {
        fprintf(stderr, "kmsctl link %s: %s\n", a->verb, why);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

static int read_file(const char *path, size_t max, const char *what, struct kms_buf *out)
{
    int ret = kmsctl_io_read(path, max, out);
    if (ret == KMSCTL_IO_TOO_BIG) {
        fprintf(stderr, "kmsctl link: %s is over %zu bytes\n", what, max);
        return KMSCTL_EXIT_USAGE;
    }
    return ret;
}

static int do_mint(struct kmsctl_rpc *rpc, const struct link_args *a, struct kms_buf *dev)
{
    Custos__V1__MintLinkTokenRequest req = CUSTOS__V1__MINT_LINK_TOKEN_REQUEST__INIT;
    req.key_id = (char *)a->key_id;
    req.phone = (char *)a->phone;
    req.device_value.data = dev->data;
    req.device_value.len = dev->len;
    req.purpose = (char *)a->purpose;
    req.ttl_s = a->ttl;
    req.message_ref = a->ref ? (char *)a->ref : (char *)"";
    ProtobufCMessage *resp = NULL;
    int ret = kmsctl_rpc_call_service(rpc, LINK_SERVICE, "MintLinkToken", &req.base,
                                      &custos__v1__mint_link_token_response__descriptor, &resp,
                                      NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__MintLinkTokenResponse *r = (void *)resp;
    if (a->o.json)
        printf("{\"token\": \"%s\", \"token_id\": \"%s\", \"expires_at\": %lld, "
               "\"key_version\": %u}\n",
               r->token, r->token_id, (long long)r->expires_at, r->key_version);
    else
        printf("token: %s\ntoken_id: %s\nexpires_at: %lld\nkey_version: %u\n", r->token,
               r->token_id, (long long)r->expires_at, r->key_version);
    OPENSSL_cleanse(r->token, strlen(r->token));
    protobuf_c_message_free_unpacked(resp, NULL);
    return KMSCTL_EXIT_OK;
}

static int do_redeem(struct kmsctl_rpc *rpc, const struct link_args *a, struct kms_buf *dev)
{
    struct kms_buf tok;
    kms_buf_init(&tok, TOKEN_FILE_MAX);
    int ret = read_file(a->token_file, TOKEN_FILE_MAX - 1, "--token-file", &tok);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    char text[TOKEN_FILE_MAX];
    size_t n = tok.len;
    memcpy(text, tok.data ? (const char *)tok.data : "", n);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    text[n] = '\0';
    kms_buf_wipe(&tok);
    Custos__V1__RedeemLinkTokenRequest req = CUSTOS__V1__REDEEM_LINK_TOKEN_REQUEST__INIT;
    req.key_id = (char *)a->key_id;
    req.token = text;
    req.phone = (char *)a->phone;
    req.device_value.data = dev->data;
    req.device_value.len = dev->len;
    req.purpose = (char *)a->purpose;
    ProtobufCMessage *resp = NULL;
    ret = kmsctl_rpc_call_service(rpc, LINK_SERVICE, "RedeemLinkToken", &req.base,
                                  &custos__v1__redeem_link_token_response__descriptor, &resp,
                                  NULL, NULL);
    OPENSSL_cleanse(text, sizeof(text));
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__RedeemLinkTokenResponse *r = (void *)resp;
    if (a->o.json)
        printf("{\"redeemed\": \"%s\", \"key_version\": %u, \"message_ref\": \"%s\"}\n",
               r->token_id, r->key_version, r->message_ref);
    else
        printf("redeemed: %s\nkey_version: %u\nmessage_ref: %s\n", r->token_id, r->key_version,
               r->message_ref);
    protobuf_c_message_free_unpacked(resp, NULL);
    return KMSCTL_EXIT_OK;
}

static int do_revoke(struct kmsctl_rpc *rpc, const struct link_args *a)
{
    Custos__V1__RevokeLinkTokensRequest req = CUSTOS__V1__REVOKE_LINK_TOKENS_REQUEST__INIT;
    req.key_id = (char *)a->key_id;
    req.n_token_ids = a->n_ids;
    req.token_ids = (char **)a->ids;
    req.message_ref = a->ref ? (char *)a->ref : (char *)"";
    ProtobufCMessage *resp = NULL;
    int ret = kmsctl_rpc_call_service(rpc, LINK_SERVICE, "RevokeLinkTokens", &req.base,
                                      &custos__v1__revoke_link_tokens_response__descriptor,
                                      &resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__RevokeLinkTokensResponse *r = (void *)resp;
    printf(a->o.json ? "{\"revoked\": %u}\n" : "revoked: %u\n", r->revoked);
    protobuf_c_message_free_unpacked(resp, NULL);
    return KMSCTL_EXIT_OK;
}

int kmsctl_link_main(int argc, char **argv)
{
    struct link_args a;
    memset(&a, 0, sizeof(a));
    int ret = link_parse(argc, argv, &a);
    if (ret >= 0)
        return ret;
    struct kms_buf dev;
    kms_buf_init(&dev, DEVICE_MAX + 1);
    if (a.device_file) {
        ret = read_file(a.device_file, DEVICE_MAX, "--device-file", &dev);
        if (ret != KMSCTL_EXIT_OK)
            return ret;
    }
    struct kmsctl_rpc *rpc = NULL;
    ret = kmsctl_rpc_open(&a.o.conn, &rpc);
    if (ret == KMSCTL_EXIT_OK) {
        if (strcmp(a.verb, "mint") == 0)
            ret = do_mint(rpc, &a, &dev);
        else if (strcmp(a.verb, "redeem") == 0)
            ret = do_redeem(rpc, &a, &dev);
        else
            ret = do_revoke(rpc, &a);
    }
    kmsctl_rpc_free(rpc);
    kms_buf_wipe(&dev);
    return kmsctl_flush_stdout(ret);
}
