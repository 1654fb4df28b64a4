/*
 * kmsctl_byok.c - bring your own key, the tenant's side of it:
 *
 *   kmsctl byok wrap --public-key pub.pem --key key.bin --algorithm A --out F
 *
 * and the small-file and wrapping-key helpers that `kmsctl key import-params`
 * and `kmsctl key import` (kmsctl_key_import.c) use too.
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

#include "kmsctl_rpc.h"
#include "proto/key.pb-c.h"

enum {
    O_ALGORITHM = 0x3000,
    O_PUBLIC_KEY,
    O_TENANT_KEY,
    O_OUT,
};

/* ---- helpers, shared with kmsctl_key_import.c ------------------------------ */

int kmsctl_byok_parse_algorithm(const char *s, Custos__V1__WrappingAlgorithm *out)
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

const char *kmsctl_byok_alg_name(int a)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&custos__v1__wrapping_algorithm__descriptor, a);
    return v ? v->name : "UNKNOWN";
}

/* Read a whole regular file of at most max bytes into buf. */
int kmsctl_byok_read_file(const char *path, const char *what, uint8_t *buf, size_t max,
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
int kmsctl_byok_write_file(const char *path, const char *what, const uint8_t *data, size_t len,
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

/* An RSA-3072 public key from PEM or DER SubjectPublicKeyInfo bytes. */
EVP_PKEY *kmsctl_byok_load_wrapping_key(const uint8_t *data, size_t len, const char *path)
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
    if (kmsctl_byok_read_file(key_path, "key", sec->scratch, TENANT_KEY_LEN, &key_len) !=
        KMSCTL_EXIT_OK)
        goto done;
    if (key_len != TENANT_KEY_LEN) {
        fprintf(stderr, "kmsctl: key %s: must be exactly %d raw bytes (a 256-bit key), it has %s%zu\n",
                key_path, TENANT_KEY_LEN, key_len > TENANT_KEY_LEN ? "more than " : "",
                key_len > TENANT_KEY_LEN ? (size_t)TENANT_KEY_LEN : key_len);
        goto done;
    }
    memcpy(sec->key, sec->scratch, TENANT_KEY_LEN);
    if (kmsctl_byok_read_file(pub_path, "public key", pub, MAX_SMALL_FILE, &pub_len) != KMSCTL_EXIT_OK)
        goto done;
    if (pub_len > MAX_SMALL_FILE) {
        fprintf(stderr, "kmsctl: public key %s: too large\n", pub_path);
        goto done;
    }
    if ((pk = kmsctl_byok_load_wrapping_key(pub, pub_len, pub_path)) == NULL)
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
    ret = kmsctl_byok_write_file(out_path, "output", out, sizeof(out), 0644);
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
    if (!kmsctl_byok_parse_algorithm(alg_s, &alg)) {
        fprintf(stderr, "kmsctl byok wrap: --algorithm must be RSA_AES_KEY_WRAP_SHA_256 or "
                        "RSA_AES_KEY_WRAP_SHA_1\n");
        return KMSCTL_EXIT_USAGE;
    }
    return do_wrap(pub, key, alg, out);
}
