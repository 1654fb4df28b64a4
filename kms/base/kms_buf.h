/*
 * kms_buf.h - a growing byte buffer with an explicit cap that never leaves a
 * copy behind.
 *
 * For bytes that may be secret (a request body with plaintext in it, a
 * reply with a data key, JSON converted to protobuf): the buffer grows by
 * copy-and-wipe, never realloc (which may leave the old block unwiped in
 * the heap), and is wiped with OPENSSL_cleanse when freed. Every buffer has
 * a cap (max) that len never passes; what would pass it is refused whole.
 *
 * The struct is public so that it can live inside another (no allocation of
 * its own); read data and len, change them only through these functions
 * (kms_buf_reserve then kms_buf_commit for writing in place).
 * Thread-safety: none; one owner at a time.
 */
#ifndef KMS_BUF_H
#define KMS_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

struct kms_buf {
    uint8_t *data; /* NULL until the first byte */
    size_t len;    /* bytes held */
    size_t cap;    /* bytes allocated (cap <= max) */
    size_t max;    /* len never passes it */
};

/* An empty buffer that will hold at most max bytes. No allocation. */
void kms_buf_init(struct kms_buf *b, size_t max);

/* Room for n more bytes at data + len. KMS_ERR_TOO_LARGE if len + n would
 * pass max, KMS_ERR_NOMEM if memory runs out; either way b is unchanged. */
kms_err kms_buf_reserve(struct kms_buf *b, size_t n);

/* Count n bytes written at data + len after kms_buf_reserve(b, n). */
void kms_buf_commit(struct kms_buf *b, size_t n);

/* Append src[0..n-1] (kms_buf_reserve's errors; nothing appended then). */
kms_err kms_buf_append(struct kms_buf *b, const void *src, size_t n);

/* Hand the block over: *out_len = len, and the caller owns the returned
 * block (cap bytes, at least 1, so that an empty result is still a
 * buffer) and wipes it. b is left empty. NULL (and b unchanged) when
 * memory runs out. */
uint8_t *kms_buf_take(struct kms_buf *b, size_t *out_len);

/* Wipe what b holds and hold p[0..len-1] instead: p is a malloc'd block
 * (of len bytes, at least 1) whose ownership passes to b, as from
 * kms_buf_take or another producer of wiped-on-free bytes. */
void kms_buf_adopt(struct kms_buf *b, uint8_t *p, size_t len);

/* Wipe and free the block; b is empty again, with the same max. */
void kms_buf_wipe(struct kms_buf *b);

#endif
