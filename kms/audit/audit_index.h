/*
 * audit_index.h - where each event of a region's audit log lives in its
 * events file, without an offset per event in memory.
 *
 * The index remembers the file offset of every AUDIT_TREE_BLOCK-th record
 * (8 bytes per 256 events) and walks forward from there, frame by frame,
 * to reach any other; a cursor makes sequential reads (exports) cost one
 * step each. It also serves a sparse audit tree the leaf hashes of a block
 * (audit_index_leaves is an audit_leaf_reader), recomputed from the records
 * and checked against the hash prefix in each frame.
 *
 * Record framing (audit_log.c): 4-byte big-endian payload length, the first
 * 8 bytes of the payload's leaf hash, the payload.
 *
 * Thread-safety: every function may be called from any thread; the index
 * has its own lock, never held while calling out (so a tree reader callback
 * can use it under the tree's lock).
 */
#ifndef AUDIT_INDEX_H
#define AUDIT_INDEX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "audit_merkle.h"
#include "kms_error.h"

#define AUDIT_FRAME_HEAD 12

struct audit_index;

/* fd: the events file, opened for reading (not owned); path for messages. */
kms_err audit_index_new(int fd, const char *path, struct audit_index **out);
void audit_index_free(struct audit_index *ix);

/* The next event's record starts at off (called in sequence order, once the
 * record is durable). */
kms_err audit_index_push(struct audit_index *ix, off_t off);

/* Where the record of event seq starts in the file (walked from its
 * block's offset, reading frame heads). KMS_ERR_NOT_FOUND if not indexed. */
kms_err audit_index_offset(struct audit_index *ix, uint64_t seq, off_t *out);

/* Events indexed so far. */
uint64_t audit_index_count(struct audit_index *ix);

/* The payload of event seq; the caller frees *out. KMS_ERR_NOT_FOUND if
 * seq is not indexed, KMS_ERR_IO if the file disagrees with its framing. */
kms_err audit_index_read(struct audit_index *ix, uint64_t seq, uint8_t **out, size_t *out_len);

/* audit_leaf_reader over the events file: ctx is the struct audit_index. */
kms_err audit_index_leaves(void *ctx, uint64_t start, uint64_t n, audit_hash *out);

/* Heap bytes the index holds (for tests and memory reports). */
size_t audit_index_memory(struct audit_index *ix);

#endif
