/*
 * kms_buf.c - a growing byte buffer that never leaves a copy behind
 * (kms_buf.h).
 */
#include "kms_buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

/* The first block: large enough for most requests and replies in one. */
#define KMS_BUF_FIRST 256

void kms_buf_init(struct kms_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

kms_err kms_buf_reserve(struct kms_buf *b, size_t n)
{
    size_t need;
    if (__builtin_add_overflow(b->len, n, &need) || need > b->max)
        return kms_err_set(KMS_ERR_TOO_LARGE, "more than %zu bytes", b->max);
    if (need <= b->cap)
        return KMS_OK;
    size_t nc = b->cap ? b->cap : KMS_BUF_FIRST;
    while (nc < need)
        nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    if (nc > b->max)
        nc = b->max;
    /* Copy and wipe rather than realloc: the old block may hold plaintext. */
    uint8_t *np = malloc(nc);
    if (np == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    if (b->data) {
        memcpy(np, b->data, b->len);
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    b->data = np;
    b->cap = nc;
    return KMS_OK;
}

void kms_buf_commit(struct kms_buf *b, size_t n)
{
    b->len += n;
}

kms_err kms_buf_append(struct kms_buf *b, const void *src, size_t n)
{
    if (n == 0)
        return KMS_OK;
    KMS_GUARD(kms_buf_reserve(b, n));
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return KMS_OK;
}

uint8_t *kms_buf_take(struct kms_buf *b, size_t *out_len)
{
    if (b->data == NULL) {
        b->data = malloc(1);
        if (b->data == NULL)
            return NULL;
        b->cap = 1;
    }
    uint8_t *p = b->data;
    *out_len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void kms_buf_adopt(struct kms_buf *b, uint8_t *p, size_t len)
{
    kms_buf_wipe(b);
    b->data = p;
    b->len = b->cap = len;
}

void kms_buf_wipe(struct kms_buf *b)
{
    if (b->data) {
        OPENSSL_cleanse(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}
