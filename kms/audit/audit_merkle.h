/*
 * audit_merkle.h - RFC 9162 Merkle trees: roots, inclusion and consistency
 * proofs, and their verification. Used by kmsd's audit log and by the
 * offline verifier (`kmsctl audit verify`), so both sides share one
 * implementation of the hashing rules:
 *   leaf hash = SHA-256(0x00 || leaf)
 *   node hash = SHA-256(0x01 || left || right)
 *   the tree of n > 1 leaves splits at the largest power of two below n.
 *
 * A full struct audit_tree keeps every complete, aligned subtree hash (about
 * 2n hashes, 64 bytes per leaf), so roots and proofs cost O(log n) hashes.
 * A sparse one (kmsd's logs, which grow for ever) keeps only the subtrees of
 * at least AUDIT_TREE_BLOCK leaves, plus everything of the block being
 * filled: 64 bytes per block, i.e. a quarter of a byte per leaf. When a root
 * or proof needs a smaller subtree of an older block, the tree reads that
 * block's leaf hashes back through a reader (the log's own records), one
 * block at a time, with a one-block cache.
 * Thread-safety: appends and reads may run concurrently (internal rwlock).
 */
#ifndef AUDIT_MERKLE_H
#define AUDIT_MERKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"

#define AUDIT_HASH_LEN 32
/* Longest proof for trees of up to 2^64 leaves. */
#define AUDIT_PROOF_MAX 64

typedef uint8_t audit_hash[AUDIT_HASH_LEN];

void audit_leaf_hash(const uint8_t *leaf, size_t len, audit_hash out);
void audit_node_hash(const audit_hash left, const audit_hash right, audit_hash out);

struct audit_tree;

#define AUDIT_TREE_BLOCK_BITS 8
#define AUDIT_TREE_BLOCK (1u << AUDIT_TREE_BLOCK_BITS)

/* Leaf hashes [start, start + n) of a sparse tree, n = AUDIT_TREE_BLOCK and
 * start a multiple of it, from where the leaves are kept. Called with the
 * tree's read lock held: it must not call back into the tree. */
typedef kms_err (*audit_leaf_reader)(void *ctx, uint64_t start, uint64_t n, audit_hash *out);

kms_err audit_tree_new(struct audit_tree **out);
kms_err audit_tree_new_sparse(audit_leaf_reader reader, void *ctx, struct audit_tree **out);
void audit_tree_free(struct audit_tree *t);
kms_err audit_tree_append(struct audit_tree *t, const audit_hash leaf_hash);
uint64_t audit_tree_size(struct audit_tree *t);

/* Root of the first `size` leaves (size <= tree size; 0 gives SHA-256("")). */
kms_err audit_tree_root(struct audit_tree *t, uint64_t size, audit_hash out);

/* Audit path of leaf `index` in the tree of the first `size` leaves, leaf to
 * root. */
kms_err audit_tree_inclusion(struct audit_tree *t, uint64_t index, uint64_t size,
                             audit_hash out[AUDIT_PROOF_MAX], size_t *out_n);

/* Consistency proof from the first m leaves to the first n (0 < m <= n). */
kms_err audit_tree_consistency(struct audit_tree *t, uint64_t m, uint64_t n,
                               audit_hash out[AUDIT_PROOF_MAX], size_t *out_n);

/* RFC 9162 section 2.1.3.2. */
bool audit_verify_inclusion(uint64_t index, uint64_t size, const audit_hash leaf_hash,
                            const audit_hash *proof, size_t n, const audit_hash root);

/* RFC 9162 section 2.1.4.2; m == n needs an empty proof and equal roots. */
bool audit_verify_consistency(uint64_t m, uint64_t n, const audit_hash root_m,
                              const audit_hash root_n, const audit_hash *proof, size_t np);

#endif
