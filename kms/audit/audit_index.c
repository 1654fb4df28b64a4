/*
 * audit_index.c - sparse record index of an audit events file.
 */
#include "audit_index.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit_log.h"

struct audit_index {
    int fd;
    const char *path;
    pthread_mutex_t lock; /* guards everything below */
    off_t *block_off;     /* block_off[b]: record b * AUDIT_TREE_BLOCK */
    uint64_t n_blocks, cap_blocks;
    uint64_t count;
    uint64_t cursor_seq; /* a record whose offset is known: where the last read ended */
    off_t cursor_off;
};

kms_err audit_index_new(int fd, const char *path, struct audit_index **out)
{
    struct audit_index *ix = calloc(1, sizeof(*ix));
    KMS_ENSURE(ix != NULL, KMS_ERR_NOMEM, "out of memory");
    ix->fd = fd;
    ix->path = path;
    pthread_mutex_init(&ix->lock, NULL);
    *out = ix;
    return KMS_OK;
}

void audit_index_free(struct audit_index *ix)
{
    if (ix == NULL)
        return;
    pthread_mutex_destroy(&ix->lock);
    free(ix->block_off);
    free(ix);
}

kms_err audit_index_push(struct audit_index *ix, off_t off)
{
    kms_err rc = KMS_OK;
    pthread_mutex_lock(&ix->lock);
    if (ix->count % AUDIT_TREE_BLOCK == 0) {
        if (ix->n_blocks == ix->cap_blocks) {
            uint64_t nc = ix->cap_blocks ? ix->cap_blocks * 2 : 256;
            off_t *nb = realloc(ix->block_off, nc * sizeof(off_t));
            if (nb == NULL) {
                rc = kms_err_set(KMS_ERR_NOMEM, "out of memory for the audit index");
                goto done;
            }
            ix->block_off = nb;
            ix->cap_blocks = nc;
        }
        ix->block_off[ix->n_blocks++] = off;
    }
    ix->count++;
done:
    pthread_mutex_unlock(&ix->lock);
    return rc;
}

uint64_t audit_index_count(struct audit_index *ix)
{
    pthread_mutex_lock(&ix->lock);
    uint64_t n = ix->count;
    pthread_mutex_unlock(&ix->lock);
    return n;
}

size_t audit_index_memory(struct audit_index *ix)
{
    pthread_mutex_lock(&ix->lock);
    size_t n = sizeof(*ix) + ix->cap_blocks * sizeof(off_t);
    pthread_mutex_unlock(&ix->lock);
    return n;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The frame at off: payload length. */
static kms_err frame_at(struct audit_index *ix, off_t off, uint8_t head[AUDIT_FRAME_HEAD],
                        size_t *out_len)
{
    ssize_t r = pread(ix->fd, head, AUDIT_FRAME_HEAD, off);
    KMS_ENSURE(r == AUDIT_FRAME_HEAD, KMS_ERR_IO, "%s: cannot read the record at offset %lld: %s",
               ix->path, (long long)off, r < 0 ? strerror(errno) : "short read");
    *out_len = (size_t)get_be(head, 4);
    KMS_ENSURE(*out_len <= AUDIT_RECORD_MAX, KMS_ERR_IO, "%s: record at offset %lld is damaged",
               ix->path, (long long)off);
    return KMS_OK;
}

/* Offset of record seq (< count). */
static kms_err locate(struct audit_index *ix, uint64_t seq, off_t *out)
{
    pthread_mutex_lock(&ix->lock);
    bool have = seq < ix->count;
    uint64_t at = seq - seq % AUDIT_TREE_BLOCK;
    off_t off = have ? ix->block_off[seq / AUDIT_TREE_BLOCK] : 0;
    if (have && ix->cursor_seq >= at && ix->cursor_seq <= seq && ix->cursor_off > 0) {
        at = ix->cursor_seq;
        off = ix->cursor_off;
    }
    pthread_mutex_unlock(&ix->lock);
    KMS_ENSURE(have, KMS_ERR_NOT_FOUND, "no event %llu", (unsigned long long)seq);
    uint8_t head[AUDIT_FRAME_HEAD];
    for (; at < seq; at++) {
        size_t len = 0;
        KMS_GUARD(frame_at(ix, off, head, &len));
        off += (off_t)(AUDIT_FRAME_HEAD + len);
    }
    *out = off;
    return KMS_OK;
}

kms_err audit_index_offset(struct audit_index *ix, uint64_t seq, off_t *out)
{
    return locate(ix, seq, out);
}

static void remember(struct audit_index *ix, uint64_t seq, off_t off)
{
    pthread_mutex_lock(&ix->lock);
    ix->cursor_seq = seq;
    ix->cursor_off = off;
    pthread_mutex_unlock(&ix->lock);
}

kms_err audit_index_read(struct audit_index *ix, uint64_t seq, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    off_t off = 0;
    size_t len = 0;
    uint8_t head[AUDIT_FRAME_HEAD];
    KMS_GUARD(locate(ix, seq, &off));
    KMS_GUARD(frame_at(ix, off, head, &len));
    uint8_t *p = malloc(len ? len : 1);
    KMS_ENSURE(p != NULL, KMS_ERR_NOMEM, "out of memory");
    if (pread(ix->fd, p, len, off + AUDIT_FRAME_HEAD) != (ssize_t)len) {
        free(p);
        return kms_err_set(KMS_ERR_IO, "audit read: %s", strerror(errno));
    }
    /* The next read is most likely seq + 1. */
    remember(ix, seq + 1, off + (off_t)(AUDIT_FRAME_HEAD + len));
    *out = p;
    *out_len = len;
    return KMS_OK;
}

kms_err audit_index_leaves(void *ctx, uint64_t start, uint64_t n, audit_hash *out)
{
    struct audit_index *ix = ctx;
    KMS_ENSURE(n > 0 && start + n <= audit_index_count(ix), KMS_ERR_INTERNAL,
               "%s: leaves %llu..%llu are not indexed", ix->path, (unsigned long long)start,
               (unsigned long long)(start + n - 1));
    off_t off = 0;
    KMS_GUARD(locate(ix, start, &off));
    uint8_t *buf = malloc(AUDIT_RECORD_MAX);
    KMS_ENSURE(buf != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = KMS_OK;
    for (uint64_t i = 0; i < n && rc == KMS_OK; i++) {
        uint8_t head[AUDIT_FRAME_HEAD];
        size_t len = 0;
        rc = frame_at(ix, off, head, &len);
        if (rc != KMS_OK)
            break;
        if (pread(ix->fd, buf, len, off + AUDIT_FRAME_HEAD) != (ssize_t)len) {
            rc = kms_err_set(KMS_ERR_IO, "audit read: %s", strerror(errno));
            break;
        }
        audit_leaf_hash(buf, len, out[i]);
        /* The file changed under us (or was damaged): a proof from it
         * would be wrong, so there is none. */
        KMS_ENSURE_GOTO(memcmp(out[i], head + 4, 8) == 0, done, KMS_ERR_IO,
                        "%s: record %llu no longer matches its hash", ix->path,
                        (unsigned long long)(start + i));
        off += (off_t)(AUDIT_FRAME_HEAD + len);
    }
done:
    free(buf);
    return rc;
}
