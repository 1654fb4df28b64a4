/*
 * kmsctl_byok.c - bring your own key from the command line.
 *
 *   kmsctl key import-params KEY_ID --out-public-key pub.pem [--out-token F]
 *   kmsctl key import KEY_ID --token F --wrapped F [--algorithm A] [--new-version]
 *   kmsctl byok wrap --public-key pub.pem --key key.bin --algorithm A --out F
 *
 * `byok wrap` runs on the tenant's machine and talks to no server: it is the
 * `openssl pkeyutl` + `openssl enc -id-aes256-wrap-pad` of docs/byok.md in
 * one step, without the ephemeral key ever touching a file or a command
 * line. The tenant key and the ephemeral key live in one buffer that is
 * wiped on every path out.
 */
#include "kmsctl_byok.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

#define TENANT_KEY_LEN 32
#define OAEP_LEN 384 /* RSA-3072 */
#define KWP_LEN 40   /* RFC 5649 of 32 bytes */
#define WRAPPED_LEN (OAEP_LEN + KWP_LEN)
#define IMPORT_TOKEN_LEN 33
#define MAX_SMALL_FILE 4096

enum {
    O_OUT_PUBLIC_KEY = 0x3000,
    O_OUT_TOKEN,
    O_TOKEN,
    O_WRAPPED,
    O_ALGORITHM,
    O_NEW_VERSION,
    O_JSON,
    O_PUBLIC_KEY,
    O_TENANT_KEY,
    O_OUT,
};

/* ---- small helpers ------------------------------------------------------------ */

static int parse_algorithm(const char *s, Custos__V1__WrappingAlgorithm *out)
{
    if (strcasecmp(s, "RSA_AES_KEY_WRAP_SHA_256") == 0) {
        *out = CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_256;
        return 1;
    }
    if (strcasecmp(s, "RSA_AES_KEY_WRAP_SHA_1") == 0) {
        *out = CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_1;
        return 1;
    }
    return 0;
}

static const char *alg_name(int a)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&custos__v1__wrapping_algorithm__descriptor, a);
    return v ? v->name : "UNKNOWN";
}

/* Read a whole regular file of at most max bytes into buf. */
static int read_small_file(const char *path, const char *what, uint8_t *buf, size_t max,
                           size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    size_t n = 0;
    *out_len = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return KMSCTL_EXIT_LOCAL;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "kmsctl: %s %s: not a regular file\n", what, path);
        close(fd);
        return KMSCTL_EXIT_LOCAL;
    }
    /* One byte of room past max tells "too long" from "exactly max". */
    for (;;) {
        uint8_t *dst = buf + n;
        size_t room = max + 1 - n;
        if (room == 0)
            break;
        ssize_t r = read(fd, dst, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
            OPENSSL_cleanse(buf, n);
            close(fd);
            return KMSCTL_EXIT_LOCAL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *out_len = n;
    return KMSCTL_EXIT_OK;
}

/* Create or replace path with data; mode applies to a new file, and an
 * existing one is narrowed to it first. */
static int write_file(const char *path, const char *what, const uint8_t *data, size_t len,
                      mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return KMSCTL_EXIT_LOCAL;
    }
    if (S_ISREG(st.st_mode) &&
        (((st.st_mode & 0777 & ~mode) && fchmod(fd, mode) != 0) || ftruncate(fd, 0) != 0)) {
        fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
        close(fd);
        return KMSCTL_EXIT_LOCAL;
    }
    while (len > 0) {
        ssize_t w = write(fd, data, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
            close(fd);
            return KMSCTL_EXIT_LOCAL;
        }
        data += w;
        len -= (size_t)w;
    }
    if (close(fd) != 0) {
        fprintf(stderr, "kmsctl: %s %s: %s\n", what, path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

static char *b64(const uint8_t *p, size_t n)
{
    char *s = malloc(4 * ((n + 2) / 3) + 1);
    if (s)
        EVP_EncodeBlock((unsigned char *)s, p, (int)n);
    return s;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* An RSA-3072 public key from PEM or DER SubjectPublicKeyInfo bytes. */
static EVP_PKEY *load_wrapping_key(const uint8_t *data, size_t len, const char *path)
{
    EVP_PKEY *pk = NULL;
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    if (bio)
        pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pk == NULL) {
        const uint8_t *p = data;
        pk = d2i_PUBKEY(NULL, &p, (long)len);
    }
    if (pk == NULL) {
        fprintf(stderr, "kmsctl: %s: not a PEM or DER public key\n", path);
        return NULL;
    }
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA || EVP_PKEY_get_bits(pk) != 3072) {
        fprintf(stderr,
                "kmsctl: %s: not an RSA-3072 key (Custos wrapping keys are RSA-3072; use the "
                "one `kmsctl key import-params` wrote)\n",
                path);
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

/* ---- kmsctl byok wrap ------------------------------------------------------------------ */

static void wrap_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl byok wrap --public-key PUB.pem --key KEY.bin --algorithm ALG --out FILE\n"
            "\n"
            "Wrap a 256-bit key for `kmsctl key import`, locally with OpenSSL (no server):\n"
            "RSAES-OAEP of a fresh ephemeral AES-256 key under the wrapping public key, then\n"
            "AES key wrap with padding (RFC 5649) of the key under the ephemeral key. The\n"
            "output is the 384-byte OAEP block followed by the 40-byte wrapped key.\n"
            "\n"
            "  --public-key FILE   the wrapping public key (PEM or DER), from import-params\n"
            "  --key FILE          your key: exactly 32 bytes, raw (keep it mode 0600)\n"
            "  --algorithm ALG     RSA_AES_KEY_WRAP_SHA_256 or RSA_AES_KEY_WRAP_SHA_1: one\n"
            "                      that import-params listed for the key's region\n"
            "  --out FILE          where the 424 wrapped bytes go\n"
            "  -h, --help          this text\n"
            "\n"
            "exit codes: 0 success; 2 usage error; 4 local file or crypto error\n");
}

/* Key and ephemeral key in one page, locked so it is not swapped out. */
struct wrap_secrets {
    uint8_t key[TENANT_KEY_LEN];
    uint8_t ephemeral[32];
    uint8_t scratch[TENANT_KEY_LEN + 1];
};

static int do_wrap(const char *pub_path, const char *key_path, Custos__V1__WrappingAlgorithm alg,
                   const char *out_path)
{
    int ret = KMSCTL_EXIT_LOCAL;
    uint8_t pub[MAX_SMALL_FILE + 1], out[WRAPPED_LEN];
    size_t pub_len = 0, key_len = 0, oaep_len = sizeof(out);
    int kwp_len = 0, fin = 0;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_CIPHER_CTX *cctx = NULL;
    struct wrap_secrets *sec = OPENSSL_secure_zalloc(sizeof(*sec));
    if (sec == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    (void)mlock(sec, sizeof(*sec)); /* best effort: RLIMIT_MEMLOCK may forbid it */

    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077))
        fprintf(stderr, "kmsctl: warning: %s is readable by group or others (chmod 600 it)\n",
                key_path);
    if (read_small_file(key_path, "key", sec->scratch, TENANT_KEY_LEN, &key_len) !=
        KMSCTL_EXIT_OK)
        goto done;
    if (key_len != TENANT_KEY_LEN) {
        fprintf(stderr, "kmsctl: key %s: must be exactly %d raw bytes (a 256-bit key), it has %s%zu\n",
                key_path, TENANT_KEY_LEN, key_len > TENANT_KEY_LEN ? "more than " : "",
                key_len > TENANT_KEY_LEN ? (size_t)TENANT_KEY_LEN : key_len);
        goto done;
    }
    memcpy(sec->key, sec->scratch, TENANT_KEY_LEN);
    if (read_small_file(pub_path, "public key", pub, MAX_SMALL_FILE, &pub_len) != KMSCTL_EXIT_OK)
        goto done;
    if (pub_len > MAX_SMALL_FILE) {
        fprintf(stderr, "kmsctl: public key %s: too large\n", pub_path);
        goto done;
    }
    if ((pk = load_wrapping_key(pub, pub_len, pub_path)) == NULL)
        goto done;
    if (RAND_priv_bytes(sec->ephemeral, sizeof(sec->ephemeral)) != 1) {
        fprintf(stderr, "kmsctl: random number generator failed\n");
        goto done;
    }

    /* 1. RSAES-OAEP of the ephemeral key; the MGF1 hash is the OAEP hash. */
    const EVP_MD *md = alg == CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_256
                           ? EVP_sha256()
                           : EVP_sha1();
    pctx = EVP_PKEY_CTX_new(pk, NULL);
    if (pctx == NULL || EVP_PKEY_encrypt_init(pctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1 ||
        EVP_PKEY_encrypt(pctx, out, &oaep_len, sec->ephemeral, sizeof(sec->ephemeral)) != 1 ||
        oaep_len != OAEP_LEN) {
        fprintf(stderr, "kmsctl: RSA-OAEP encryption failed\n");
        goto done;
    }
    /* 2. RFC 5649 of the key under the ephemeral key. */
    cctx = EVP_CIPHER_CTX_new();
    if (cctx == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    EVP_CIPHER_CTX_set_flags(cctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (EVP_EncryptInit_ex(cctx, EVP_aes_256_wrap_pad(), NULL, sec->ephemeral, NULL) != 1 ||
        EVP_EncryptUpdate(cctx, out + OAEP_LEN, &kwp_len, sec->key, TENANT_KEY_LEN) != 1 ||
        EVP_EncryptFinal_ex(cctx, out + OAEP_LEN + kwp_len, &fin) != 1 ||
        kwp_len + fin != KWP_LEN) {
        fprintf(stderr, "kmsctl: AES key wrap failed\n");
        goto done;
    }
    ret = write_file(out_path, "output", out, sizeof(out), 0644);
done:
    EVP_CIPHER_CTX_free(cctx); /* frees, and wipes, the key schedule */
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(pk);
    OPENSSL_cleanse(sec, sizeof(*sec));
    munlock(sec, sizeof(*sec));
    OPENSSL_secure_clear_free(sec, sizeof(*sec));
    return ret;
}

int kmsctl_byok_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"public-key", required_argument, NULL, O_PUBLIC_KEY},
        {"key", required_argument, NULL, O_TENANT_KEY},
        {"algorithm", required_argument, NULL, O_ALGORITHM},
        {"out", required_argument, NULL, O_OUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *pub = NULL, *key = NULL, *out = NULL, *alg_s = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_PUBLIC_KEY:
            pub = optarg;
            break;
        case O_TENANT_KEY:
            key = optarg;
            break;
        case O_ALGORITHM:
            alg_s = optarg;
            break;
        case O_OUT:
            out = optarg;
            break;
        case 'h':
            wrap_usage(stdout);
            return KMSCTL_EXIT_OK;
        default:
            wrap_usage(stderr);
            return KMSCTL_EXIT_USAGE;
        }
    }
    if (optind >= argc || strcmp(argv[optind], "wrap") != 0) {
        if (optind < argc && strcmp(argv[optind], "help") == 0) {
            wrap_usage(stdout);
            return KMSCTL_EXIT_OK;
        }
        fprintf(stderr, "kmsctl byok: the only command is 'wrap'\n");
        wrap_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (optind + 1 < argc) {
        fprintf(stderr, "kmsctl byok wrap: unexpected argument '%s'\n", argv[optind + 1]);
        return KMSCTL_EXIT_USAGE;
    }
    Custos__V1__WrappingAlgorithm alg;
    if (pub == NULL || key == NULL || out == NULL || alg_s == NULL) {
        fprintf(stderr, "kmsctl byok wrap: --public-key, --key, --algorithm and --out are "
                        "required\n");
        return KMSCTL_EXIT_USAGE;
    }
    if (!parse_algorithm(alg_s, &alg)) {
        fprintf(stderr, "kmsctl byok wrap: --algorithm must be RSA_AES_KEY_WRAP_SHA_256 or "
                        "RSA_AES_KEY_WRAP_SHA_1\n");
        return KMSCTL_EXIT_USAGE;
    }
    return do_wrap(pub, key, alg, out);
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
    int new_version, json;
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
    if ((pk = load_wrapping_key(resp->public_key.data, resp->public_key.len,
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
    if ((ret = write_file(a->out_pub, "public key", (const uint8_t *)pem, (size_t)pem_len,
                          0644)) != KMSCTL_EXIT_OK)
        goto done;
    if (a->out_token) {
        /* A capability: with a key admin's credentials it imports into this
         * key until it is used or expires. */
        if ((ret = write_file(a->out_token, "import token", resp->import_token.data,
                              resp->import_token.len, 0600)) != KMSCTL_EXIT_OK)
            goto done;
    } else if ((tok_b64 = b64(resp->import_token.data, resp->import_token.len)) == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    if (a->json) {
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
            json_array_append_new(algs, json_string(alg_name((int)resp->wrapping_algorithms[i])));
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
            printf(" %s", alg_name((int)resp->wrapping_algorithms[i]));
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
    int ret = read_small_file(path, "import token", buf, MAX_SMALL_FILE, &n);
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
    ret = read_small_file(a->wrapped, "wrapped key", wrapped, WRAPPED_LEN, &wrapped_len);
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
    if (a->json) {
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

/* `kmsctl key import-params` and `kmsctl key import`: verb is which. */
static int key_import_main(int argc, char **argv, const char *verb, int *out_rc)
{
    static const struct option opts[] = {
        KMSCTL_CONN_LONGOPTS,
        {"out-public-key", required_argument, NULL, O_OUT_PUBLIC_KEY},
        {"out-token", required_argument, NULL, O_OUT_TOKEN},
        {"token", required_argument, NULL, O_TOKEN},
        {"wrapped", required_argument, NULL, O_WRAPPED},
        {"algorithm", required_argument, NULL, O_ALGORITHM},
        {"new-version", no_argument, NULL, O_NEW_VERSION},
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct kmsctl_conn conn;
    struct byok_args a = {0};
    int c, params = strcmp(verb, "import-params") == 0;
    *out_rc = KMSCTL_EXIT_USAGE;
    kmsctl_conn_init(&conn);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (kmsctl_conn_option(&conn, c, optarg))
            continue;
        switch (c) {
        case O_OUT_PUBLIC_KEY:
            a.out_pub = optarg;
            break;
        case O_OUT_TOKEN:
            a.out_token = optarg;
            break;
        case O_TOKEN:
            a.token = optarg;
            break;
        case O_WRAPPED:
            a.wrapped = optarg;
            break;
        case O_ALGORITHM:
            if (!parse_algorithm(optarg, &a.alg)) {
                fprintf(stderr, "kmsctl key: --algorithm must be RSA_AES_KEY_WRAP_SHA_256 or "
                                "RSA_AES_KEY_WRAP_SHA_1\n");
                return 1;
            }
            break;
        case O_NEW_VERSION:
            a.new_version = 1;
            break;
        case O_JSON:
            a.json = 1;
            break;
        case 'h':
            key_byok_usage(stdout);
            *out_rc = KMSCTL_EXIT_OK;
            return 1;
        default:
            key_byok_usage(stderr);
            return 1;
        }
    }
    /* GNU getopt has moved the operands to the end: verb, then KEY_ID. */
    if (optind >= argc || strcmp(argv[optind], verb) != 0) {
        key_byok_usage(stderr);
        return 1;
    }
    optind++;
    if (optind >= argc || argv[optind][0] == '\0') {
        fprintf(stderr, "kmsctl key %s: KEY_ID is required\n", verb);
        return 1;
    }
    a.key_id = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "kmsctl key %s: unexpected argument '%s'\n", verb, argv[optind]);
        return 1;
    }
    if (params) {
        if (a.out_pub == NULL) {
            fprintf(stderr, "kmsctl key import-params: --out-public-key is required\n");
            return 1;
        }
        if (a.token || a.wrapped || a.alg || a.new_version) {
            fprintf(stderr, "kmsctl key import-params: --token, --wrapped, --algorithm and "
                            "--new-version belong to `key import`\n");
            return 1;
        }
    } else {
        if (a.token == NULL || a.wrapped == NULL) {
            fprintf(stderr, "kmsctl key import: --token and --wrapped are required\n");
            return 1;
        }
        if (a.out_pub || a.out_token) {
            fprintf(stderr, "kmsctl key import: --out-public-key and --out-token belong to "
                            "`key import-params`\n");
            return 1;
        }
    }
    struct kmsctl_rpc *rpc = NULL;
    int ret = kmsctl_rpc_open(&conn, &rpc);
    if (ret == KMSCTL_EXIT_OK) {
        ret = params ? do_import_params(rpc, &a) : do_import(rpc, &a);
        kmsctl_rpc_free(rpc);
    }
    if (fflush(stdout) != 0 && ret == KMSCTL_EXIT_OK) {
        fprintf(stderr, "kmsctl: cannot write output: %s\n", strerror(errno));
        ret = KMSCTL_EXIT_LOCAL;
    }
    *out_rc = ret;
    return 1;
}

int kmsctl_key_import_params_main(int argc, char **argv)
{
    int rc = KMSCTL_EXIT_USAGE;
    key_import_main(argc, argv, "import-params", &rc);
    return rc;
}

int kmsctl_key_import_main(int argc, char **argv)
{
    int rc = KMSCTL_EXIT_USAGE;
    key_import_main(argc, argv, "import", &rc);
    return rc;
}
