/*
 * kmsctl_crypto.c - `kmsctl encrypt|decrypt|re-encrypt` and
 * `kmsctl data-key generate|decrypt`: the broker operations as filters.
 *
 * Inputs are read whole (the service takes at most 64 KiB of plaintext) into
 * buffers that are wiped when freed, plaintext fields of replies are wiped
 * before protobuf-c frees them, and files receiving plaintext or a data key
 * are created 0600 (an existing one is narrowed to 0600 before truncation).
 * The RPC happens before any output file is touched, so a refused request
 * leaves no empty file behind.
 */
#include "kmsctl_crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kmsctl_io.h"
#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

#define MAX_PLAINTEXT 65536u
#define MAX_CIPHERTEXT (65536u + 256u)

enum {
    O_KEY_ID = 0x3000,
    O_IN,
    O_OUT,
    O_CONTEXT,
    O_SOURCE_CONTEXT,
    O_BASE64_IN,
    O_BASE64_OUT,
    O_BYTES,
    O_OUT_PLAINTEXT,
    O_OUT_BLOB,
};
#define F(o) (1u << ((o)-O_KEY_ID))
#define F_IO (F(O_IN) | F(O_OUT) | F(O_BASE64_IN) | F(O_BASE64_OUT))

struct args;
struct cmd {
    const char *name;
    unsigned opts;
    int (*run)(struct kmsctl_rpc *rpc, struct args *a);
};

struct args {
    const struct cmd *cmd;
    const char *key_id, *in, *out, *out_plaintext, *out_blob;
    int b64_in, b64_out, out_given;
    uint32_t bytes;
    struct kmsctl_kv ctx, src_ctx;
};

static void usage(FILE *f, const char *name)
{
    if (strcmp(name, "encrypt") == 0)
        fprintf(f, "usage: kmsctl encrypt --key-id KEY_ID [--in FILE|-] [--out FILE|-]\n"
                   "                      [--context K=V]... [--base64-in] [--base64-out]\n\n"
                   "Encrypt at most 65536 bytes under KEY_ID (role broker). The output is a\n"
                   "self-describing ciphertext blob (docs/ciphertext-format.md).\n");
    else if (strcmp(name, "decrypt") == 0)
        fprintf(f, "usage: kmsctl decrypt [--key-id KEY_ID] [--in FILE|-] [--out FILE|-]\n"
                   "                      [--context K=V]... [--base64-in] [--base64-out]\n\n"
                   "Decrypt a blob made by encrypt (role broker); --context must repeat the\n"
                   "encryption context exactly. With --key-id the blob must name that key.\n"
                   "An output file is created with mode 0600.\n");
    else if (strcmp(name, "re-encrypt") == 0)
        fprintf(f, "usage: kmsctl re-encrypt --key-id DEST_KEY_ID [--in FILE|-] [--out FILE|-]\n"
                   "                         [--source-context K=V]... [--context K=V]...\n"
                   "                         [--base64-in] [--base64-out]\n\n"
                   "Decrypt a blob and encrypt it again under DEST_KEY_ID inside the service\n"
                   "(role broker): the plaintext never reaches this host. --source-context is\n"
                   "the blob's context, --context the new one.\n");
    else
        fprintf(f,
                "usage: kmsctl data-key generate --key-id KEY_ID [--bytes N] [--context K=V]...\n"
                "                                --out-plaintext FILE|- --out-blob FILE|-\n"
                "                                [--base64-out]\n"
                "       kmsctl data-key decrypt [--key-id KEY_ID] [--in FILE|-] [--out FILE|-]\n"
                "                               [--context K=V]... [--base64-in] [--base64-out]\n\n"
                "generate: a fresh data key of N bytes (16..64, default 32) from the HSM,\n"
                "  written in plaintext to --out-plaintext (mode 0600; a terminal only with\n"
                "  an explicit '-') and encrypted under KEY_ID to --out-blob (store that).\n"
                "decrypt: the plaintext data key of a blob made by generate, to --out (mode\n"
                "  0600; stdout only if it is not a terminal, or with an explicit --out -).\n");
    fprintf(f, "\noptions:\n"
               "  --key-id KEY_ID           the key (32 hex characters)\n"
               "  --context K=V             encryption context pair, repeatable (split at the\n"
               "                            first '='; K non-empty, unique; at most 64 pairs)\n");
    if (strcmp(name, "re-encrypt") == 0)
        fprintf(f,
                "  --source-context K=V      context the input blob was made with, repeatable\n");
    if (strcmp(name, "data-key") == 0)
        fprintf(f, "  --bytes N                 data key length, 16..64 (generate; default 32)\n"
                   "  --out-plaintext FILE|-    where the plaintext data key goes (generate)\n"
                   "  --out-blob FILE|-         where the encrypted data key goes (generate)\n");
    fprintf(f, "  --in FILE|-               input file, '-' for stdin (default)\n"
               "  --out FILE|-              output file, '-' for stdout (default)\n"
               "  --base64-in               input is base64 (line breaks allowed)\n"
               "  --base64-out              write base64 on one line instead of raw bytes\n"
               "  -h, --help                this text\n"
               "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

/* Base64 with or without line breaks (EVP_Decode skips whitespace). */
static int b64_decode(const struct kms_buf *in, struct kms_buf *out)
{
    EVP_ENCODE_CTX *e = EVP_ENCODE_CTX_new();
    int n = 0, fin = 0, ok = 0;
    size_t cap = (in->len / 4 + 2) * 3; /* 3 bytes per 4 characters, rounded up */
    kms_buf_init(out, cap);
    if (e && kms_buf_reserve(out, cap) == KMS_OK) {
        EVP_DecodeInit(e);
        ok = EVP_DecodeUpdate(e, out->data, &n, in->data, (int)in->len) >= 0 &&
             EVP_DecodeFinal(e, out->data + n, &fin) >= 0;
    }
    EVP_ENCODE_CTX_free(e);
    if (!ok) {
        kms_buf_wipe(out); /* all of it: a failed decode may have written some */
        fprintf(stderr, "kmsctl: input is not valid base64\n");
        return 0;
    }
    kms_buf_commit(out, (size_t)n + (size_t)fin);
    return 1;
}

/* Read all of path ('-' = stdin): what, at most max bytes after base64
 * decoding. Bigger input is refused here rather than by the server after
 * it has travelled. */
static int read_input(const char *path, const char *what, int b64, size_t max,
                      struct kms_buf *out)
{
    /* Base64 is 4/3 of the data plus line breaks; twice is ample. */
    struct kms_buf raw;
    int ret = kmsctl_io_read(path, b64 ? 2 * max + 1024 : max, &raw);
    memset(out, 0, sizeof(*out));
    if (ret == KMSCTL_EXIT_OK && b64) {
        ret = b64_decode(&raw, out) ? KMSCTL_EXIT_OK : KMSCTL_EXIT_LOCAL;
        if (ret == KMSCTL_EXIT_OK && out->len > max) {
            kms_buf_wipe(out);
            ret = KMSCTL_IO_TOO_BIG;
        }
        kms_buf_wipe(&raw);
    } else if (ret == KMSCTL_EXIT_OK) {
        *out = raw;
    }
    if (ret == KMSCTL_IO_TOO_BIG) {
        fprintf(stderr, "kmsctl: %s: %s larger than %zu bytes, the KeyService limit\n", path,
                what, max);
        ret = KMSCTL_EXIT_LOCAL;
    }
    return ret;
}

/* Write data to path ('-' = stdout), base64-encoded if b64. A secret output
 * (plaintext, a data key) gets mode 0600. */
static int write_output(const char *path, const uint8_t *data, size_t len, int b64, int secret)
{
    if (!b64)
        return kmsctl_io_write(path, data, len, secret);
    size_t n = 4 * ((len + 2) / 3);
    struct kms_buf enc;
    kms_buf_init(&enc, n + 2);
    if (kms_buf_reserve(&enc, n + 2) != KMS_OK) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    EVP_EncodeBlock(enc.data, data, (int)len); /* n characters and a NUL */
    enc.data[n] = '\n';
    kms_buf_commit(&enc, n + 1);
    int ret = kmsctl_io_write(path, enc.data, enc.len, secret);
    kms_buf_wipe(&enc);
    return ret;
}

/* Wipe a plaintext field, then free its message. */
static void free_wiped(ProtobufCMessage *m, ProtobufCBinaryData *secret)
{
    if (m && secret && secret->data)
        OPENSSL_cleanse(secret->data, secret->len);
    protobuf_c_message_free_unpacked(m, NULL);
}

static int run_encrypt(struct kmsctl_rpc *rpc, struct args *a)
{
    Custos__V1__EncryptRequest req = CUSTOS__V1__ENCRYPT_REQUEST__INIT;
    Custos__V1__EncryptResponse *resp = NULL;
    struct kms_buf pt = {0};
    ProtobufCMessage **ents = NULL;
    int ret = read_input(a->in, "plaintext", a->b64_in, MAX_PLAINTEXT, &pt);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ents =
        kmsctl_kv_map(&a->ctx, &custos__v1__encrypt_request__encryption_context_entry__descriptor);
    if (ents == NULL) {
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    req.key_id = (char *)a->key_id;
    req.plaintext.data = pt.data;
    req.plaintext.len = pt.len;
    req.n_encryption_context = a->ctx.n;
    req.encryption_context = (Custos__V1__EncryptRequest__EncryptionContextEntry **)ents;
    ret = kmsctl_rpc_call(rpc, "Encrypt", &req.base, &custos__v1__encrypt_response__descriptor,
                          (ProtobufCMessage **)&resp);
    if (ret == KMSCTL_EXIT_OK)
        ret = write_output(a->out, resp->ciphertext.data, resp->ciphertext.len, a->b64_out, 0);
done:
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    kmsctl_rpc_map_free(ents, a->ctx.n);
    kms_buf_wipe(&pt);
    return ret;
}

/* Decrypt and DecryptDataKey share a shape: blob + context + optional key id
 * in, plaintext out. Only the types differ. */
static int run_decrypt_like(struct kmsctl_rpc *rpc, struct args *a, int data_key)
{
    struct kms_buf ct = {0};
    ProtobufCMessage **ents = NULL, *resp = NULL;
    ProtobufCBinaryData *pt = NULL;
    int ret = read_input(a->in, "ciphertext", a->b64_in, MAX_CIPHERTEXT, &ct);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ents = kmsctl_kv_map(
        &a->ctx, data_key
                     ? &custos__v1__decrypt_data_key_request__encryption_context_entry__descriptor
                     : &custos__v1__decrypt_request__encryption_context_entry__descriptor);
    if (ents == NULL) {
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    if (data_key) {
        Custos__V1__DecryptDataKeyRequest req = CUSTOS__V1__DECRYPT_DATA_KEY_REQUEST__INIT;
        req.ciphertext_blob.data = ct.data;
        req.ciphertext_blob.len = ct.len;
        req.n_encryption_context = a->ctx.n;
        req.encryption_context = (Custos__V1__DecryptDataKeyRequest__EncryptionContextEntry **)ents;
        if (a->key_id)
            req.key_id = (char *)a->key_id;
        ret = kmsctl_rpc_call(rpc, "DecryptDataKey", &req.base,
                              &custos__v1__decrypt_data_key_response__descriptor, &resp);
        if (ret == KMSCTL_EXIT_OK)
            pt = &((Custos__V1__DecryptDataKeyResponse *)resp)->plaintext;
    } else {
        Custos__V1__DecryptRequest req = CUSTOS__V1__DECRYPT_REQUEST__INIT;
        req.ciphertext.data = ct.data;
        req.ciphertext.len = ct.len;
        req.n_encryption_context = a->ctx.n;
        req.encryption_context = (Custos__V1__DecryptRequest__EncryptionContextEntry **)ents;
        if (a->key_id)
            req.key_id = (char *)a->key_id;
        ret = kmsctl_rpc_call(rpc, "Decrypt", &req.base, &custos__v1__decrypt_response__descriptor,
                              &resp);
        if (ret == KMSCTL_EXIT_OK)
            pt = &((Custos__V1__DecryptResponse *)resp)->plaintext;
    }
    if (ret == KMSCTL_EXIT_OK)
        ret = write_output(a->out, pt->data, pt->len, a->b64_out, 1);
done:
    free_wiped(resp, pt);
    kmsctl_rpc_map_free(ents, a->ctx.n);
    kms_buf_wipe(&ct);
    return ret;
}

static int run_decrypt(struct kmsctl_rpc *rpc, struct args *a)
{
    return run_decrypt_like(rpc, a, 0);
}

static int run_dk_decrypt(struct kmsctl_rpc *rpc, struct args *a)
{
    return run_decrypt_like(rpc, a, 1);
}

static int run_reencrypt(struct kmsctl_rpc *rpc, struct args *a)
{
    Custos__V1__ReEncryptRequest req = CUSTOS__V1__RE_ENCRYPT_REQUEST__INIT;
    Custos__V1__ReEncryptResponse *resp = NULL;
    struct kms_buf ct = {0};
    ProtobufCMessage **src = NULL, **dst = NULL;
    int ret = read_input(a->in, "ciphertext", a->b64_in, MAX_CIPHERTEXT, &ct);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    src = kmsctl_kv_map(
        &a->src_ctx, &custos__v1__re_encrypt_request__source_encryption_context_entry__descriptor);
    if (src)
        dst = kmsctl_kv_map(
            &a->ctx,
            &custos__v1__re_encrypt_request__destination_encryption_context_entry__descriptor);
    if (src == NULL || dst == NULL) {
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    req.ciphertext.data = ct.data;
    req.ciphertext.len = ct.len;
    req.destination_key_id = (char *)a->key_id;
    req.n_source_encryption_context = a->src_ctx.n;
    req.source_encryption_context =
        (Custos__V1__ReEncryptRequest__SourceEncryptionContextEntry **)src;
    req.n_destination_encryption_context = a->ctx.n;
    req.destination_encryption_context =
        (Custos__V1__ReEncryptRequest__DestinationEncryptionContextEntry **)dst;
    ret = kmsctl_rpc_call(rpc, "ReEncrypt", &req.base, &custos__v1__re_encrypt_response__descriptor,
                          (ProtobufCMessage **)&resp);
    if (ret == KMSCTL_EXIT_OK)
        ret = write_output(a->out, resp->ciphertext.data, resp->ciphertext.len, a->b64_out, 0);
done:
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    kmsctl_rpc_map_free(src, a->src_ctx.n);
    kmsctl_rpc_map_free(dst, a->ctx.n);
    kms_buf_wipe(&ct);
    return ret;
}

static int run_dk_generate(struct kmsctl_rpc *rpc, struct args *a)
{
    Custos__V1__GenerateDataKeyRequest req = CUSTOS__V1__GENERATE_DATA_KEY_REQUEST__INIT;
    Custos__V1__GenerateDataKeyResponse *resp = NULL;
    ProtobufCMessage **ents = kmsctl_kv_map(
        &a->ctx, &custos__v1__generate_data_key_request__encryption_context_entry__descriptor);
    if (ents == NULL)
        return KMSCTL_EXIT_LOCAL;
    req.key_id = (char *)a->key_id;
    req.number_of_bytes = a->bytes;
    req.n_encryption_context = a->ctx.n;
    req.encryption_context = (Custos__V1__GenerateDataKeyRequest__EncryptionContextEntry **)ents;
    int ret = kmsctl_rpc_call(rpc, "GenerateDataKey", &req.base,
                              &custos__v1__generate_data_key_response__descriptor,
                              (ProtobufCMessage **)&resp);
    /* The blob first: a plaintext key without its blob would be useless. */
    if (ret == KMSCTL_EXIT_OK)
        ret = write_output(a->out_blob, resp->ciphertext_blob.data, resp->ciphertext_blob.len,
                           a->b64_out, 0);
    if (ret == KMSCTL_EXIT_OK)
        ret = write_output(a->out_plaintext, resp->plaintext.data, resp->plaintext.len, a->b64_out,
                           1);
    free_wiped(resp ? &resp->base : NULL, resp ? &resp->plaintext : NULL);
    kmsctl_rpc_map_free(ents, a->ctx.n);
    return ret;
}

static const struct cmd cmds[] = {
    {"encrypt", F(O_KEY_ID) | F_IO | F(O_CONTEXT), run_encrypt},
    {"decrypt", F(O_KEY_ID) | F_IO | F(O_CONTEXT), run_decrypt},
    {"re-encrypt", F(O_KEY_ID) | F_IO | F(O_CONTEXT) | F(O_SOURCE_CONTEXT), run_reencrypt},
    {"generate",
     F(O_KEY_ID) | F(O_BYTES) | F(O_CONTEXT) | F(O_OUT_PLAINTEXT) | F(O_OUT_BLOB) | F(O_BASE64_OUT),
     run_dk_generate},
    {"decrypt", F(O_KEY_ID) | F_IO | F(O_CONTEXT), run_dk_decrypt}, /* data-key decrypt */
};

/* Checks that need the command: which options apply, which are required. */
static int check_args(const char *prog, struct args *a, unsigned seen)
{
    static const char *const names[] = {
        "--key-id",    "--in",         "--out",   "--context",       "--source-context",
        "--base64-in", "--base64-out", "--bytes", "--out-plaintext", "--out-blob"};
    unsigned extra = seen & ~a->cmd->opts;
    if (extra) {
        fprintf(stderr, "%s: %s does not apply\n", prog, names[__builtin_ctz(extra)]);
        return 0;
    }
    int need_key = a->cmd->run != run_decrypt && a->cmd->run != run_dk_decrypt;
    if (need_key && (a->key_id == NULL || *a->key_id == '\0')) {
        fprintf(stderr, "%s: --key-id is required\n", prog);
        return 0;
    }
    /* A data key reaches a terminal only when asked for by name ("--out -");
     * checked before the request, so the HSM does no work for nothing. */
    if (a->cmd->run == run_dk_decrypt && !a->out_given && isatty(STDOUT_FILENO)) {
        fprintf(stderr,
                "%s: refusing to write a plaintext data key to a terminal; "
                "give --out FILE (or --out - to insist)\n",
                prog);
        return 0;
    }
    if (a->cmd->run == run_dk_generate) {
        if (!a->out_plaintext || !a->out_blob) {
            fprintf(stderr, "%s: --out-plaintext and --out-blob are required\n", prog);
            return 0;
        }
        if (strcmp(a->out_plaintext, "-") == 0 && strcmp(a->out_blob, "-") == 0) {
            fprintf(stderr, "%s: --out-plaintext and --out-blob cannot both be stdout\n", prog);
            return 0;
        }
    }
    return 1;
}

static const struct option crypto_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"key-id", required_argument, NULL, O_KEY_ID},
    {"in", required_argument, NULL, O_IN},
    {"out", required_argument, NULL, O_OUT},
    {"context", required_argument, NULL, O_CONTEXT},
    {"source-context", required_argument, NULL, O_SOURCE_CONTEXT},
    {"base64-in", no_argument, NULL, O_BASE64_IN},
    {"base64-out", no_argument, NULL, O_BASE64_OUT},
    {"bytes", required_argument, NULL, O_BYTES},
    {"out-plaintext", required_argument, NULL, O_OUT_PLAINTEXT},
    {"out-blob", required_argument, NULL, O_OUT_BLOB},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* One of this command's own options (c in O_KEY_ID..O_OUT_BLOB): record
 * it, or print why not and return 0. */
static int crypto_option(struct args *a, int c, char *arg)
{
    switch (c) {
    case O_KEY_ID:
        a->key_id = arg;
        break;
    case O_IN:
        a->in = arg;
        break;
    case O_OUT:
        a->out = arg;
        a->out_given = 1;
        break;
    case O_CONTEXT:
    case O_SOURCE_CONTEXT:
        return kmsctl_kv_add(c == O_CONTEXT ? &a->ctx : &a->src_ctx,
                             c == O_CONTEXT ? "--context" : "--source-context", arg);
    case O_BASE64_IN:
        a->b64_in = 1;
        break;
    case O_BASE64_OUT:
        a->b64_out = 1;
        break;
    case O_BYTES: {
        char *end = NULL;
        errno = 0;
        unsigned long v = strtoul(arg, &end, 10);
        if (arg[0] < '0' || arg[0] > '9' || errno || *end || v < 16 || v > 64) {
            fprintf(stderr, "kmsctl: --bytes must be 16..64\n");
            return 0;
        }
        a->bytes = (uint32_t)v;
        break;
    }
    case O_OUT_PLAINTEXT:
        a->out_plaintext = arg;
        break;
    default: /* O_OUT_BLOB */
        a->out_blob = arg;
        break;
    }
    return 1;
}

/* The command from argv[0] (and, for data-key, its verb word) into a->cmd
 * and its name for messages into prog. Returns -1 to go on, or the exit
 * code (help, usage error). */
static int crypto_cmd(int argc, char **argv, struct args *a, char prog[64])
{
    if (strcmp(argv[0], "data-key") == 0) {
        const char *verb = optind < argc ? argv[optind++] : "";
        if (strcmp(verb, "help") == 0) {
            usage(stdout, argv[0]);
            return KMSCTL_EXIT_OK;
        }
        if (strcmp(verb, "generate") == 0)
            a->cmd = &cmds[3];
        else if (strcmp(verb, "decrypt") == 0)
            a->cmd = &cmds[4];
        else {
            if (*verb)
                fprintf(stderr, "kmsctl data-key: unknown command '%s'\n", verb);
            else
                fprintf(stderr, "kmsctl data-key: generate or decrypt?\n");
            usage(stderr, argv[0]);
            return KMSCTL_EXIT_USAGE;
        }
        snprintf(prog, 64, "kmsctl data-key %s", verb);
    } else {
        for (size_t i = 0; i < 3; i++)
            if (strcmp(argv[0], cmds[i].name) == 0)
                a->cmd = &cmds[i];
        snprintf(prog, 64, "kmsctl %s", argv[0]);
    }
    if (a->cmd == NULL) { /* the verb table only sends the names above */
        fprintf(stderr, "kmsctl: unknown command '%s'\n", argv[0]);
        return KMSCTL_EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

/* Options, command, checks. Returns -1 to go on, or the exit code. */
static int crypto_parse(int argc, char **argv, struct kmsctl_conn *conn, struct args *a,
                        char prog[64])
{
    unsigned seen = 0;
    int c;
    kmsctl_conn_init(conn);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", crypto_opts, NULL)) != -1) {
        if (kmsctl_conn_option(conn, c, optarg))
            continue;
        if (c >= O_KEY_ID && c <= O_OUT_BLOB) {
            seen |= F(c);
            if (!crypto_option(a, c, optarg))
                return KMSCTL_EXIT_USAGE;
            continue;
        }
        usage(c == 'h' ? stdout : stderr, argv[0]);
        return c == 'h' ? KMSCTL_EXIT_OK : KMSCTL_EXIT_USAGE;
    }
    int ret = crypto_cmd(argc, argv, a, prog);
    if (ret < 0 && !check_args(prog, a, seen))
        ret = KMSCTL_EXIT_USAGE;
    return ret;
}

int kmsctl_crypto_main(int argc, char **argv)
{
    struct kmsctl_conn conn;
    struct args a = {.in = "-", .out = "-"};
    char prog[64];
    int ret = crypto_parse(argc, argv, &conn, &a, prog);
    if (ret < 0) {
        struct kmsctl_rpc *rpc = NULL;
        ret = kmsctl_rpc_open(&conn, &rpc);
        if (ret == KMSCTL_EXIT_OK)
            ret = a.cmd->run(rpc, &a);
        kmsctl_rpc_free(rpc);
    }
    kmsctl_kv_cleanup(&a.ctx);
    kmsctl_kv_cleanup(&a.src_ctx);
    return ret;
}
