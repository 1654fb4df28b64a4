/*
 * kms_secret.h - secrets in memory (PINs, data keys) and where they come from.
 *
 * A kms_secret owns a heap buffer that is wiped with OPENSSL_cleanse when it
 * is freed. Secrets are read from a *source*, never from argv:
 *   "file:/path"  a file that must be a regular file of mode 0600 or 0400
 *                 (no group/other bits); one trailing newline is stripped
 *   "env:NAME"    the environment variable NAME
 */
#ifndef KMS_SECRET_H
#define KMS_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

/* Longest secret a source may hold (PINs and API keys are far shorter). */
#define KMS_SECRET_MAX 4096

struct kms_secret {
    uint8_t *data;
    size_t len;
};

/* Read the secret named by source into out (which the caller later passes to
 * kms_secret_wipe). Errors name the source, never its content. */
kms_err kms_secret_read_source(const char *source, struct kms_secret *out);

/* Copy len bytes into a new secret. */
kms_err kms_secret_from(const void *data, size_t len, struct kms_secret *out);

/* Wipe and free; safe on a zeroed or already-wiped secret. */
void kms_secret_wipe(struct kms_secret *s);

/* A malloc/free pair that wipes every block when it is freed (the size is
 * kept in a header in front of the block). kmsd hands it to jansson
 * (json_set_alloc_funcs) at start: a JSON request body's plaintext passes
 * through jansson's lexer buffer and hashtable key copies, which jansson
 * frees without wiping. */
void *kms_secret_alloc(size_t n);
void kms_secret_free(void *p);

#endif
