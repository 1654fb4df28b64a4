/*
 * kmsctl_byok.h - `kmsctl byok wrap`, which wraps a key on the tenant's
 * machine with OpenSSL alone and talks to no server, and the helpers the
 * BYOK key verbs (kmsctl_key_import.h) share with it. docs/byok.md is the
 * user's guide.
 */
#ifndef KMSCTL_BYOK_H
#define KMSCTL_BYOK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "proto/key.pb-c.h"

#define TENANT_KEY_LEN 32
#define OAEP_LEN 384 /* RSA-3072 */
#define KWP_LEN 40   /* RFC 5649 of 32 bytes */
#define WRAPPED_LEN (OAEP_LEN + KWP_LEN)
#define IMPORT_TOKEN_LEN 33
#define MAX_SMALL_FILE 4096

/* argv[0] is "byok". Returns the process exit code (enum kmsctl_exit). */
int kmsctl_byok_main(int argc, char **argv);

/* RSA_AES_KEY_WRAP_SHA_256 or _SHA_1 (any case) into *out; 0 if neither. */
int kmsctl_byok_parse_algorithm(const char *s, Custos__V1__WrappingAlgorithm *out);

/* The name of a wrapping algorithm, "UNKNOWN" for a value this build lacks. */
const char *kmsctl_byok_alg_name(int a);

/* Read a whole regular file of at most max bytes into buf, which has room
 * for max + 1 (*out_len == max + 1 means "too long"). what names the file
 * in messages. Returns an exit code. */
int kmsctl_byok_read_file(const char *path, const char *what, uint8_t *buf, size_t max,
                          size_t *out_len);

/* Create or replace path with data; mode applies to a new file, and an
 * existing one is narrowed to it first. Returns an exit code. */
int kmsctl_byok_write_file(const char *path, const char *what, const uint8_t *data, size_t len,
                           mode_t mode);

/* An RSA-3072 public key from PEM or DER SubjectPublicKeyInfo bytes; NULL
 * after a message naming path. */
EVP_PKEY *kmsctl_byok_load_wrapping_key(const uint8_t *data, size_t len, const char *path);

#endif
