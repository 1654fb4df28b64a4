/*
 * kmsctl_key_import.c - bring your own key, the server side of it:
 *
 *   kmsctl key import-params KEY_ID --out-public-key pub.pem [--out-token F]
 *   kmsctl key import KEY_ID --token F --wrapped F [--algorithm A] [--new-version]
 *
 * Both are rows of the key group in the verb table; the material is wrapped
 * beforehand by `kmsctl byok wrap` (kmsctl_byok.c), whose file and key
 * helpers these use. docs/byok.md is the user's guide.
 */
#include "kmsctl_key_import.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "kmsctl_byok.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

enum {
    O_OUT_PUBLIC_KEY = 0x3000,
    O_OUT_TOKEN,
    O_TOKEN,
    O_WRAPPED,
    O_ALGORITHM,
    O_NEW_VERSION,
};

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static char *b64(const uint8_t *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    return s;
}

/* ---- kmsctl key import-params / import ------------------------------------------------ */

static void key_byok_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl key import-params KEY_ID --out-public-key PUB.pem [--out-token FILE]\n"
            "                                [--json]\n"
            "       kmsctl key import KEY_ID --token FILE --wrapped FILE [--algorithm ALG]\n"
            "                         [--new-version] [--json]\n"
            "\n"
            "Bring your own key (role key-admin; docs/byok.md). The key was created with\n"
            "`kmsctl key create --origin external`.\n"
            "\n"
            "import-params   get a wrapping public key (RSA-3072, made in the HSM of the key's\n"
            "                region) and a one-use import token that expires (24 h by default)\n"
            "  --out-public-key FILE  write the public key there, PEM\n"
            "  --out-token FILE       write the import token there (raw, mode 0600); without\n"
            "                         it the token is printed in base64\n"
            "import          import the material wrapped for that public key\n"
            "  --token FILE           the import token (raw, or base64 text)\n"
            "  --wrapped FILE         424 bytes: `kmsctl byok wrap` output, or the OAEP block\n"
            "                         followed by the RFC 5649 blob (docs/byok.md)\n"
            "  --algorithm ALG        RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1\n"
            "                         (default: the first that import-params listed)\n"
            "  --new-version          the material is new: make it a new version of the key\n"
            "                         (how an imported key rotates)\n"
            "  --json                 print a JSON object\n"
            "  -h, --help             this text\n"
            "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

struct byok_args {
    const char *verb, *key_id, *out_pub, *out_token, *token, *wrapped;
    Custos__V1__WrappingAlgorithm alg;
    int new_version;
    struct kmsctl_common o; /* connection, --json */
};

static int do_import_params(struct kmsctl_rpc *rpc, const struct byok_args *a)
{
    Custos__V1__GetImportParametersRequest req = CUSTOS__V1__GET_IMPORT_PARAMETERS_REQUEST__INIT;
    Custos__V1__GetImportParametersResponse *resp = NULL;
    EVP_PKEY *pk = NULL;
    BIO *bio = NULL;
    char *pem = NULL, *tok_b64 = NULL;
    long pem_len = 0;
    char t[32];
    req.key_id = (char *)a->key_id;
    int ret = kmsctl_rpc_call(rpc, "GetImportParameters", &req.base,
                              &custos__v1__get_import_parameters_response__descriptor,
                              (ProtobufCMessage **)&resp);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = KMSCTL_EXIT_TRANSPORT;
    if ((pk = kmsctl_byok_load_wrapping_key(resp->public_key.data, resp->public_key.len,
                                "server's public key")) == NULL ||
        resp->import_token.len != IMPORT_TOKEN_LEN)
        goto done;
    ret = KMSCTL_EXIT_LOCAL;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_PUBKEY(bio, pk) != 1 ||
        (pem_len = BIO_get_mem_data(bio, &pem)) <= 0) {
        fprintf(stderr, "kmsctl: cannot encode the public key as PEM\n");
        goto done;
    }
    if ((ret = kmsctl_byok_write_file(a->out_pub, "public key", (const uint8_t *)pem, (size_t)pem_len,
                          0644)) != KMSCTL_EXIT_OK)
        goto done;
    if (a->out_token) {
        /* A capability: with a key admin's credentials it imports into this
         * key until it is used or expires. */
        if ((ret = kmsctl_byok_write_file(a->out_token, "import token", resp->import_token.data,
                              resp->import_token.len, 0600)) != KMSCTL_EXIT_OK)
            goto done;
    } else if ((tok_b64 = b64(resp->import_token.data, resp->import_token.len)) == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    if (a->o.json) {
        json_t *o = json_object(), *algs = json_array();
        json_object_set_new(o, "key_id", json_string(resp->key_id));
        json_object_set_new(o, "region", json_string(resp->region));
        json_object_set_new(o, "public_key_file", json_string(a->out_pub));
        json_object_set_new(o, "public_key_pem", json_stringn(pem, (size_t)pem_len));
        if (a->out_token)
            json_object_set_new(o, "import_token_file", json_string(a->out_token));
        else
            json_object_set_new(o, "import_token", json_string(tok_b64));
        json_object_set_new(o, "expires_at", json_string(kmsctl_iso8601(resp->expires_at, t)));
        for (size_t i = 0; i < resp->n_wrapping_algorithms; i++)
            json_array_append_new(algs, json_string(kmsctl_byok_alg_name((int)resp->wrapping_algorithms[i])));
        json_object_set_new(o, "wrapping_algorithms", algs);
        ret = kmsctl_print_json(o);
    } else {
        printf("key_id: ");
        kmsctl_print_safe(stdout, resp->key_id);
        printf("\nregion: ");
        kmsctl_print_safe(stdout, resp->region);
        printf("\npublic_key: %s (RSA-3072, PEM)\n", a->out_pub);
        if (a->out_token)
            printf("import_token: %s\n", a->out_token);
        else
            printf("import_token: %s\n", tok_b64);
        printf("expires: %s\n", kmsctl_iso8601(resp->expires_at, t));
        printf("wrapping_algorithms:");
        for (size_t i = 0; i < resp->n_wrapping_algorithms; i++)
            printf(" %s", kmsctl_byok_alg_name((int)resp->wrapping_algorithms[i]));
        putchar('\n');
        ret = KMSCTL_EXIT_OK;
    }
done:
    if (tok_b64) {
        OPENSSL_cleanse(tok_b64, strlen(tok_b64));
        free(tok_b64);
    }
    BIO_free(bio);
    EVP_PKEY_free(pk);
    if (resp && resp->import_token.data)
        OPENSSL_cleanse(resp->import_token.data, resp->import_token.len);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* An import token file: the 33 raw bytes, or their base64 (as printed by
 * import-params without --out-token). */
static int read_token(const char *path, uint8_t out[IMPORT_TOKEN_LEN])
{
    uint8_t buf[MAX_SMALL_FILE + 1], dec[MAX_SMALL_FILE];
    size_t n = 0;
    int ret = kmsctl_byok_read_file(path, "import token", buf, MAX_SMALL_FILE, &n);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = KMSCTL_EXIT_LOCAL;
    if (n == IMPORT_TOKEN_LEN) {
        memcpy(out, buf, IMPORT_TOKEN_LEN);
        ret = KMSCTL_EXIT_OK;
    } else if (n <= MAX_SMALL_FILE) {
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
            n--;
        /* 33 bytes are 44 base64 characters, no padding. */
        if (n == 44 && EVP_DecodeBlock(dec, buf, (int)n) == 33) {
            memcpy(out, dec, IMPORT_TOKEN_LEN);
            ret = KMSCTL_EXIT_OK;
        }
    }
    if (ret != KMSCTL_EXIT_OK)
        fprintf(stderr, "kmsctl: import token %s: not an import token (%d raw bytes, or their "
                        "base64)\n",
                path, IMPORT_TOKEN_LEN);
    OPENSSL_cleanse(buf, sizeof(buf));
    OPENSSL_cleanse(dec, sizeof(dec));
    return ret;
}

static int do_import(struct kmsctl_rpc *rpc, const struct byok_args *a)
{
    Custos__V1__ImportKeyMaterialRequest req = CUSTOS__V1__IMPORT_KEY_MATERIAL_REQUEST__INIT;
    Custos__V1__ImportKeyMaterialResponse *resp = NULL;
    uint8_t token[IMPORT_TOKEN_LEN], wrapped[WRAPPED_LEN + 1];
    size_t wrapped_len = 0;
    int ret = read_token(a->token, token);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = kmsctl_byok_read_file(a->wrapped, "wrapped key", wrapped, WRAPPED_LEN, &wrapped_len);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    if (wrapped_len != WRAPPED_LEN) {
        fprintf(stderr,
                "kmsctl: wrapped key %s: must be %d bytes (384-byte RSA-OAEP block, then the "
                "40-byte RFC 5649 wrap of a 32-byte key), it has %s%zu\n",
                a->wrapped, WRAPPED_LEN, wrapped_len > WRAPPED_LEN ? "more than " : "",
                wrapped_len > WRAPPED_LEN ? (size_t)WRAPPED_LEN : wrapped_len);
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    req.key_id = (char *)a->key_id;
    req.import_token.data = token;
    req.import_token.len = sizeof(token);
    req.algorithm = a->alg;
    req.wrapped_material.data = wrapped;
    req.wrapped_material.len = wrapped_len;
    req.new_version = a->new_version != 0;
    ret = kmsctl_rpc_call(rpc, "ImportKeyMaterial", &req.base,
                          &custos__v1__import_key_material_response__descriptor,
                          (ProtobufCMessage **)&resp);
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    if (resp->key == NULL) {
        fprintf(stderr, "kmsctl: reply carries no key\n");
        ret = KMSCTL_EXIT_TRANSPORT;
        goto done;
    }
    char kcv[2 * 32 + 1] = "";
    if (resp->key_check_value.len == 32)
        hex(resp->key_check_value.data, 32, kcv);
    if (a->o.json) {
        json_t *o = kmsctl_key_json(resp->key);
        if (o) {
            json_object_set_new(o, "imported_version", json_integer(resp->key_version));
            json_object_set_new(o, "key_check_value", json_string(kcv));
        }
        ret = kmsctl_print_json(o);
    } else {
        kmsctl_print_key_text(resp->key);
        printf("imported_version: %" PRIu32 "\n", resp->key_version);
        printf("key_check_value: %s\n", kcv);
    }
done:
    OPENSSL_cleanse(token, sizeof(token));
    protobuf_c_message_free_unpacked((ProtobufCMessage *)resp, NULL);
    return ret;
}

static const struct option import_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"json", no_argument, NULL, KMSCTL_OPT_JSON},
    {"out-public-key", required_argument, NULL, O_OUT_PUBLIC_KEY},
    {"out-token", required_argument, NULL, O_OUT_TOKEN},
    {"token", required_argument, NULL, O_TOKEN},
    {"wrapped", required_argument, NULL, O_WRAPPED},
    {"algorithm", required_argument, NULL, O_ALGORITHM},
    {"new-version", no_argument, NULL, O_NEW_VERSION},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The options, then the verb word and KEY_ID. Returns -1 to go on, or the
 * exit code (help, usage error). */
static int import_parse(int argc, char **argv, struct byok_args *a)
{
    int c;
    kmsctl_common_init(&a->o);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", import_opts, NULL)) != -1) {
        if (kmsctl_common_option(&a->o, c, optarg))
            continue;
        switch (c) {
        case O_OUT_PUBLIC_KEY:
            a->out_pub = optarg;
            break;
        case O_OUT_TOKEN:
            a->out_token = optarg;
            break;
        case O_TOKEN:
            a->token = optarg;
            break;
        case O_WRAPPED:
            a->wrapped = optarg;
            break;
        case O_ALGORITHM:
            if (!kmsctl_byok_parse_algorithm(optarg, &a->alg)) {
                fprintf(stderr, "kmsctl key: --algorithm must be RSA_AES_KEY_WRAP_SHA_256 or "
                                "RSA_AES_KEY_WRAP_SHA_1\n");
                return KMSCTL_EXIT_USAGE;
            }
            break;
        case O_NEW_VERSION:
            a->new_version = 1;
            break;
        case 'h':
            key_byok_usage(stdout);
            return KMSCTL_EXIT_OK;
        default:
            key_byok_usage(stderr);
            return KMSCTL_EXIT_USAGE;
        }
    }
    /* GNU getopt has moved the operands to the end: verb, then KEY_ID. */
    if (optind >= argc || strcmp(argv[optind], a->verb) != 0) {
        key_byok_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    optind++;
    if (optind >= argc || argv[optind][0] == '\0') {
        fprintf(stderr, "kmsctl key %s: KEY_ID is required\n", a->verb);
        return KMSCTL_EXIT_USAGE;
    }
    a->key_id = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "kmsctl key %s: unexpected argument '%s'\n", a->verb, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

/* Which options belong to which verb; 0 after printing why not. */
static int import_check(const struct byok_args *a, int params)
{
    if (params) {
        if (a->out_pub == NULL) {
            fprintf(stderr, "kmsctl key import-params: --out-public-key is required\n");
            return 0;
        }
        if (a->token || a->wrapped || a->alg || a->new_version) {
            fprintf(stderr, "kmsctl key import-params: --token, --wrapped, --algorithm and "
                            "--new-version belong to `key import`\n");
            return 0;
        }
    } else {
        if (a->token == NULL || a->wrapped == NULL) {
            fprintf(stderr, "kmsctl key import: --token and --wrapped are required\n");
            return 0;
        }
        if (a->out_pub || a->out_token) {
            fprintf(stderr, "kmsctl key import: --out-public-key and --out-token belong to "
                            "`key import-params`\n");
            return 0;
        }
    }
    return 1;
}

/* `kmsctl key import-params` and `kmsctl key import`: verb is which. */
static int import_main(int argc, char **argv, const char *verb)
{
    struct byok_args a = {.verb = verb};
    int params = strcmp(verb, "import-params") == 0;
    int ret = import_parse(argc, argv, &a);
    if (ret >= 0)
        return ret;
    if (!import_check(&a, params))
        return KMSCTL_EXIT_USAGE;
    struct kmsctl_rpc *rpc = NULL;
    ret = kmsctl_rpc_open(&a.o.conn, &rpc);
    if (ret == KMSCTL_EXIT_OK) {
        ret = params ? do_import_params(rpc, &a) : do_import(rpc, &a);
        kmsctl_rpc_free(rpc);
    }
    return kmsctl_flush_stdout(ret);
}

int kmsctl_key_import_params_main(int argc, char **argv)
{
    return import_main(argc, argv, "import-params");
}

int kmsctl_key_import_main(int argc, char **argv)
{
    return import_main(argc, argv, "import");
}
