/*
 * kmsctl_sign.c - signing keys from the command line (docs/signing.md):
 *
 *   kmsctl key public-key KEY_ID [--version N] [--pem] [--out FILE] [--json]
 *   kmsctl key sign KEY_ID --alg A (--in FILE | --digest HEX) [--version N]
 *                   [--out FILE] [--json]
 *   kmsctl key verify KEY_ID --alg A (--in FILE | --digest HEX) --signature FILE
 *                   [--version N] [--json]
 *
 * The key is named positionally, as by every `kmsctl key` verb: `--key` is
 * the connection option for a TLS client key. The message never leaves
 * this process unhashed unless it is sent RAW (--in, <= 64 KiB): kmsd hashes
 * it; --digest sends its SHA-256 only.
 */
#include "kmsctl_sign.h"

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kmsctl_io.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

#define MESSAGE_MAX 65536
#define SIGNATURE_MAX 512
/* A signature file: raw bytes, or their base64 (what sign prints). */
#define SIGNATURE_FILE_MAX 1024

enum {
    O_VERSION = 0x4000,
    O_IN,
    O_DIGEST,
    O_ALG,
    O_OUT,
    O_SIGNATURE,
    O_PEM,
};

struct sign_args {
    const char *verb, *key_id, *in, *digest, *alg_s, *out, *signature;
    uint32_t version;
    int pem;
    Custos__V1__SigningAlgorithm alg;
    struct kmsctl_common o; /* connection, --json */
};

static void sign_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl key public-key KEY_ID [--version N] [--pem] [--out FILE] [--json]\n"
            "       kmsctl key sign KEY_ID --alg ALG (--in FILE | --digest HEX)\n"
            "                       [--version N] [--out FILE] [--json]\n"
            "       kmsctl key verify KEY_ID --alg ALG (--in FILE | --digest HEX)\n"
            "                       --signature FILE [--version N] [--json]\n"
            "\n"
            "Signing keys (spec ec-p256, rsa-2048, rsa-3072, rsa-4096; role broker, and\n"
            "key-admin for public-key; docs/signing.md).\n"
            "\n"
            "public-key      the version's public key (SubjectPublicKeyInfo): DER, or PEM\n"
            "                with --pem, to --out FILE or stdout\n"
            "sign            sign a message (--in, at most 64 KiB; kmsd hashes it with\n"
            "                SHA-256) or its SHA-256 digest (--digest, 64 hex digits); the\n"
            "                signature (ECDSA: DER) goes raw to --out FILE, else base64 to\n"
            "                stdout\n"
            "verify          check a signature in the HSM; exit 0 when it verifies, 1 when\n"
            "                it does not. Without --version, the key's current version\n"
            "  --alg ALG              ecdsa-sha256 (EC keys), rsa-pss-sha256 or\n"
            "                         rsa-pkcs1-sha256 (RSA keys)\n"
            "  --in FILE              the message ('-': stdin)\n"
            "  --digest HEX           its SHA-256 instead (openssl dgst -sha256 -hex)\n"
            "  --signature FILE       raw signature bytes, or their base64\n"
            "  --version N            a version of the key (default: the current one)\n"
            "  --pem                  public-key: PEM instead of DER\n"
            "  --out FILE             write the result there ('-': stdout)\n"
            "  --json                 print a JSON object\n"
            "  -h, --help             this text\n"
            "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

static const struct option sign_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"json", no_argument, NULL, KMSCTL_OPT_JSON},
    {"version", required_argument, NULL, O_VERSION},
    {"in", required_argument, NULL, O_IN},
    {"digest", required_argument, NULL, O_DIGEST},
    {"alg", required_argument, NULL, O_ALG},
    {"out", required_argument, NULL, O_OUT},
    {"signature", required_argument, NULL, O_SIGNATURE},
    {"pem", no_argument, NULL, O_PEM},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int parse_alg(const char *s, Custos__V1__SigningAlgorithm *out)
{
    static const struct {
        const char *name;
        Custos__V1__SigningAlgorithm alg;
    } t[] = {
        {"ecdsa-sha256", CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256},
        {"rsa-pss-sha256", CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256},
        {"rsa-pkcs1-sha256", CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcasecmp(s, t[i].name) == 0) {
            *out = t[i].alg;
            return 1;
        }
    return 0;
}

static const char *alg_label(int alg)
{
    return alg == CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256       ? "ecdsa-sha256"
           : alg == CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256 ? "rsa-pss-sha256"
           : alg == CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256
               ? "rsa-pkcs1-sha256"
               : "unspecified";
}

static int parse_hex32(const char *s, uint8_t out[32])
{
    if (strlen(s) != 64)
        return 0;
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = s[2 * i + (size_t)j];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                         : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                : 16u;
            if (d > 15)
                return 0;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    return 1;
}

static char *b64(const uint8_t *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    return s;
}

/* The message of sign/verify: RAW from --in, or DIGEST from --digest. The
 * buffer is wiped when freed (a message may be sensitive). */
static int load_message(const struct sign_args *a, struct kmsctl_sbuf *buf,
                        ProtobufCBinaryData *msg, Custos__V1__MessageType *type)
{
    if (a->digest) {
        buf->data = malloc(32);
        buf->cap = 32;
        if (buf->data == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            return KMSCTL_EXIT_LOCAL;
        }
        if (!parse_hex32(a->digest, buf->data)) {
            fprintf(stderr, "kmsctl key %s: --digest must be 64 hex digits (a SHA-256)\n",
                    a->verb);
            return KMSCTL_EXIT_USAGE;
        }
        buf->len = 32;
        *type = CUSTOS__V1__MESSAGE_TYPE__DIGEST;
    } else {
        int ret = kmsctl_io_read(a->in, MESSAGE_MAX, buf);
        if (ret == KMSCTL_IO_TOO_BIG) {
            fprintf(stderr, "kmsctl key %s: %s holds more than %d bytes: sign its SHA-256 "
                            "with --digest\n",
                    a->verb, a->in, MESSAGE_MAX);
            return KMSCTL_EXIT_USAGE;
        }
        if (ret != KMSCTL_EXIT_OK)
            return ret;
        *type = CUSTOS__V1__MESSAGE_TYPE__RAW;
    }
    msg->data = buf->data;
    msg->len = buf->len;
    return KMSCTL_EXIT_OK;
}

static int do_public_key(struct kmsctl_rpc *rpc, const struct sign_args *a)
{
    Custos__V1__GetPublicKeyRequest req = CUSTOS__V1__GET_PUBLIC_KEY_REQUEST__INIT;
    Custos__V1__GetPublicKeyResponse *resp = NULL;
    EVP_PKEY *pk = NULL;
    BIO *bio = NULL;
    char *text = NULL;
    req.key_id = (char *)a->key_id;
    req.version = a->version;
    int ret = kmsctl_rpc_call(rpc, "GetPublicKey", &req.base,
                              &custos__v1__get_public_key_response__descriptor,
                              (ProtobufCMessage **)&resp);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    const uint8_t *p = resp->public_key.data;
    pk = d2i_PUBKEY(NULL, &p, (long)resp->public_key.len);
    if (pk == NULL || p != resp->public_key.data + resp->public_key.len) {
        fprintf(stderr, "kmsctl: the server's public key does not parse\n");
        ret = KMSCTL_EXIT_TRANSPORT;
        goto done;
    }
    if (a->o.json) {
        json_t *o = json_object(), *algs = json_array();
        text = b64(resp->public_key.data, resp->public_key.len);
        json_object_set_new(o, "key_id", kmsctl_jstr(resp->key_id));
        json_object_set_new(o, "version", json_integer(resp->version));
        json_object_set_new(o, "spec", kmsctl_jstr(kmsctl_enum_name(
                                           &custos__v1__key_spec__descriptor, resp->spec)));
        for (size_t i = 0; i < resp->n_signing_algorithms; i++)
            json_array_append_new(algs, kmsctl_jstr(alg_label(resp->signing_algorithms[i])));
        json_object_set_new(o, "signing_algorithms", algs);
        json_object_set_new(o, "public_key", kmsctl_jstr(text ? text : ""));
        ret = kmsctl_print_json(o);
        goto done;
    }
    const char *out = a->out ? a->out : "-";
    if (a->pem) {
        char *pem = NULL;
        long n = 0;
        bio = BIO_new(BIO_s_mem());
        if (bio == NULL || PEM_write_bio_PUBKEY(bio, pk) != 1 ||
            (n = BIO_get_mem_data(bio, &pem)) <= 0) {
            fprintf(stderr, "kmsctl: cannot encode the public key as PEM\n");
            ret = KMSCTL_EXIT_LOCAL;
            goto done;
        }
        ret = kmsctl_io_write(out, pem, (size_t)n, 0);
    } else {
        ret = kmsctl_io_write(out, resp->public_key.data, resp->public_key.len, 0);
    }
    if (ret == KMSCTL_EXIT_OK && a->out && strcmp(a->out, "-") != 0)
        fprintf(stderr, "key %s version %u public key written to %s\n", resp->key_id,
                resp->version, a->out);
done:
    free(text);
    BIO_free(bio);
    EVP_PKEY_free(pk);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

static int do_sign(struct kmsctl_rpc *rpc, const struct sign_args *a)
{
    struct kmsctl_sbuf buf = {0};
    Custos__V1__SignRequest req = CUSTOS__V1__SIGN_REQUEST__INIT;
    Custos__V1__SignResponse *resp = NULL;
    char *text = NULL;
    int ret = load_message(a, &buf, &req.message, &req.message_type);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    req.key_id = (char *)a->key_id;
    req.version = a->version;
    req.algorithm = a->alg;
    ret = kmsctl_rpc_call(rpc, "Sign", &req.base, &custos__v1__sign_response__descriptor,
                          (ProtobufCMessage **)&resp);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    if (a->out && !a->o.json) {
        ret = kmsctl_io_write(a->out, resp->signature.data, resp->signature.len, 0);
        if (ret == KMSCTL_EXIT_OK && strcmp(a->out, "-") != 0)
            fprintf(stderr, "signed with key %s version %u (%s): %zu bytes written to %s\n",
                    resp->key_id, resp->version, alg_label(resp->algorithm),
                    resp->signature.len, a->out);
        goto done;
    }
    text = b64(resp->signature.data, resp->signature.len);
    if (text == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    if (a->o.json) {
        if (a->out)
            ret = kmsctl_io_write(a->out, resp->signature.data, resp->signature.len, 0);
        json_t *o = json_object();
        json_object_set_new(o, "key_id", kmsctl_jstr(resp->key_id));
        json_object_set_new(o, "version", json_integer(resp->version));
        json_object_set_new(o, "algorithm", kmsctl_jstr(alg_label(resp->algorithm)));
        json_object_set_new(o, "signature", kmsctl_jstr(text));
        if (ret == KMSCTL_EXIT_OK)
            ret = kmsctl_print_json(o);
        else
            json_decref(o);
    } else {
        printf("%s\n", text);
    }
done:
    free(text);
    kmsctl_sbuf_wipe(&buf);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* The signature file: raw bytes, or base64 text of them. */
static int load_signature(const char *path, uint8_t *out, size_t *out_len)
{
    struct kmsctl_sbuf f = {0};
    int ret = kmsctl_io_read(path, SIGNATURE_FILE_MAX, &f);
    if (ret == KMSCTL_IO_TOO_BIG) {
        fprintf(stderr, "kmsctl key verify: %s is not a signature (over %d bytes)\n", path,
                SIGNATURE_FILE_MAX);
        return KMSCTL_EXIT_USAGE;
    }
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    size_t n = f.len;
    while (n > 0 && (f.data[n - 1] == '\n' || f.data[n - 1] == '\r'))
        n--;
    bool text = n > 0 && n % 4 == 0;
    for (size_t i = 0; text && i < n; i++) {
        uint8_t c = f.data[i];
        text = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '/' || (c == '=' && i + 2 >= n);
    }
    if (text) {
        uint8_t tmp[SIGNATURE_FILE_MAX];
        int m = EVP_DecodeBlock(tmp, f.data, (int)n);
        size_t pad = (f.data[n - 1] == '=') + (n > 1 && f.data[n - 2] == '=');
        if (m < 0 || (size_t)m < pad || (size_t)m - pad > SIGNATURE_MAX) {
            fprintf(stderr, "kmsctl key verify: %s: bad base64\n", path);
            kmsctl_sbuf_wipe(&f);
            return KMSCTL_EXIT_USAGE;
        }
        *out_len = (size_t)m - pad;
        memcpy(out, tmp, *out_len);
    } else {
        if (f.len == 0 || f.len > SIGNATURE_MAX) {
            fprintf(stderr, "kmsctl key verify: %s: a signature is 1..%d bytes\n", path,
                    SIGNATURE_MAX);
            kmsctl_sbuf_wipe(&f);
            return KMSCTL_EXIT_USAGE;
        }
        memcpy(out, f.data, f.len);
        *out_len = f.len;
    }
    kmsctl_sbuf_wipe(&f);
    return KMSCTL_EXIT_OK;
}

/* Verify needs a version: without --version, the current one, as
 * GetPublicKey (allowed to brokers) names it. */
static int current_version(struct kmsctl_rpc *rpc, const char *key_id, uint32_t *out)
{
    Custos__V1__GetPublicKeyRequest req = CUSTOS__V1__GET_PUBLIC_KEY_REQUEST__INIT;
    Custos__V1__GetPublicKeyResponse *resp = NULL;
    req.key_id = (char *)key_id;
    int ret = kmsctl_rpc_call(rpc, "GetPublicKey", &req.base,
                              &custos__v1__get_public_key_response__descriptor,
                              (ProtobufCMessage **)&resp);
    if (ret == KMSCTL_EXIT_OK) {
        *out = resp->version;
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return ret;
}

static int do_verify(struct kmsctl_rpc *rpc, const struct sign_args *a)
{
    struct kmsctl_sbuf buf = {0};
    uint8_t sig[SIGNATURE_MAX];
    size_t sig_len = 0;
    Custos__V1__VerifyRequest req = CUSTOS__V1__VERIFY_REQUEST__INIT;
    Custos__V1__VerifyResponse *resp = NULL;
    int ret = load_signature(a->signature, sig, &sig_len);
    if (ret == KMSCTL_EXIT_OK)
        ret = load_message(a, &buf, &req.message, &req.message_type);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    req.key_id = (char *)a->key_id;
    req.version = a->version;
    if (req.version == 0 && (ret = current_version(rpc, a->key_id, &req.version)) != 0)
        goto done;
    req.algorithm = a->alg;
    req.signature.data = sig;
    req.signature.len = sig_len;
    ret = kmsctl_rpc_call(rpc, "Verify", &req.base, &custos__v1__verify_response__descriptor,
                          (ProtobufCMessage **)&resp);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    if (a->o.json) {
        json_t *o = json_object();
        json_object_set_new(o, "key_id", kmsctl_jstr(resp->key_id));
        json_object_set_new(o, "version", json_integer(resp->version));
        json_object_set_new(o, "algorithm", kmsctl_jstr(alg_label(resp->algorithm)));
        json_object_set_new(o, "valid", json_boolean(resp->valid));
        ret = kmsctl_print_json(o);
    } else {
        printf("%s\n", resp->valid ? "Verified OK" : "Verification failure");
    }
    if (ret == KMSCTL_EXIT_OK && !resp->valid)
        ret = KMSCTL_EXIT_REFUSED;
done:
    kmsctl_sbuf_wipe(&buf);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

static int sign_parse(int argc, char **argv, struct sign_args *a)
{
    int c;
    kmsctl_common_init(&a->o);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", sign_opts, NULL)) != -1) {
        if (kmsctl_common_option(&a->o, c, optarg))
            continue;
        switch (c) {
        case 'h':
            sign_usage(stdout);
            return KMSCTL_EXIT_OK;
        case O_VERSION: {
            char *end = NULL;
            errno = 0;
            unsigned long v = optarg[0] >= '1' && optarg[0] <= '9' ? strtoul(optarg, &end, 10) : 0;
            if (v == 0 || errno || *end || v > UINT32_MAX) {
                fprintf(stderr, "kmsctl key: --version must be 1, 2, ...\n");
                return KMSCTL_EXIT_USAGE;
            }
            a->version = (uint32_t)v;
            break;
        }
        case O_IN:
            a->in = optarg;
            break;
        case O_DIGEST:
            a->digest = optarg;
            break;
        case O_ALG:
            a->alg_s = optarg;
            if (!parse_alg(optarg, &a->alg)) {
                fprintf(stderr, "kmsctl key: --alg must be ecdsa-sha256, rsa-pss-sha256 or "
                                "rsa-pkcs1-sha256\n");
                return KMSCTL_EXIT_USAGE;
            }
            break;
        case O_OUT:
            a->out = optarg;
            break;
        case O_SIGNATURE:
            a->signature = optarg;
            break;
        case O_PEM:
            a->pem = 1;
            break;
        default:
            sign_usage(stderr);
            return KMSCTL_EXIT_USAGE;
        }
    }
    if (optind + 2 > argc) {
        sign_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    a->verb = argv[optind++];
    a->key_id = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "kmsctl key %s: unexpected argument '%s'\n", a->verb, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    bool pub = strcmp(a->verb, "public-key") == 0, sign = strcmp(a->verb, "sign") == 0,
         verify = strcmp(a->verb, "verify") == 0;
    const char *why = NULL;
    if (!pub && !sign && !verify)
        why = "unknown command";
    else if (a->key_id[0] == '\0')
        why = "KEY_ID is required";
    else if (pub && (a->in || a->digest || a->alg_s || a->signature))
        why = "--in, --digest, --alg and --signature are for sign and verify";
    else if (!pub && (!a->alg_s || (!a->in == !a->digest)))
        why = "--alg and one of --in or --digest are required";
    else if (!pub && a->pem)
        why = "--pem is for public-key";
    else if (verify && (!a->signature || a->out))
        why = "--signature FILE is required (and --out does not apply)";
    else if (sign && a->signature)
        why = "--signature is for verify";
    if (why) {
        fprintf(stderr, "kmsctl key %s: %s\n", a->verb, why);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

int kmsctl_sign_main(int argc, char **argv)
{
    struct sign_args a;
    memset(&a, 0, sizeof(a));
    int ret = sign_parse(argc, argv, &a);
    if (ret >= 0)
        return ret;
    struct kmsctl_rpc *rpc = NULL;
    ret = kmsctl_rpc_open(&a.o.conn, &rpc);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    if (strcmp(a.verb, "public-key") == 0)
        ret = do_public_key(rpc, &a);
    else if (strcmp(a.verb, "sign") == 0)
        ret = do_sign(rpc, &a);
    else
        ret = do_verify(rpc, &a);
    kmsctl_rpc_free(rpc);
    return kmsctl_flush_stdout(ret);
}
