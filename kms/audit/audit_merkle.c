/*
 * audit_merkle.c - RFC 9162 tree hashing, proofs and verification.
 */
#include "audit_merkle.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

void audit_leaf_hash(const uint8_t *leaf, size_t len, audit_hash out)
{
    uint8_t stack[4096];
    if (len < sizeof(stack)) {
        stack[0] = 0x00;
        memcpy(stack + 1, leaf, len);
        SHA256(stack, len + 1, out);
        return;
    }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    static const uint8_t prefix = 0x00;
    unsigned int n = 0;
    /* Allocation failure leaves an all-zero hash, which no proof matches. */
    memset(out, 0, AUDIT_HASH_LEN);
    if (c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(c, &prefix, 1) == 1 &&
        EVP_DigestUpdate(c, leaf, len) == 1)
        EVP_DigestFinal_ex(c, out, &n);
    EVP_MD_CTX_free(c);
}

void audit_node_hash(const audit_hash left, const audit_hash right, audit_hash out)
{
    uint8_t buf[1 + 2 * AUDIT_HASH_LEN];
    buf[0] = 0x01;
    memcpy(buf + 1, left, AUDIT_HASH_LEN);
    memcpy(buf + 1 + AUDIT_HASH_LEN, right, AUDIT_HASH_LEN);
    SHA256(buf, sizeof(buf), out);
}

/* levels[k] holds the hashes of the complete subtrees of 2^k leaves that
 * start at multiples of 2^k; level 0 is the leaf hashes. n counts every
 * such subtree so far; the array holds those from index `base` on. A full
 * tree keeps base 0. A sparse tree forgets the levels below AUDIT_TREE_BLOCK
 * once a block of 2^AUDIT_TREE_BLOCK_BITS leaves is complete, and reads the
 * leaves of a block back through its reader when a proof needs them. */
struct level {
    audit_hash *h;
    uint64_t n, cap, base;
};

struct audit_tree {
    pthread_rwlock_t lock;
    struct level levels[64];
    audit_leaf_reader reader; /* NULL: a full tree */
    void *reader_ctx;
    /* The leaves of the last block read back (proofs walk neighbours). */
    pthread_mutex_t cache_lock;
    bool cache_valid;
    uint64_t cache_block;
    audit_hash cache[AUDIT_TREE_BLOCK];
};

kms_err audit_tree_new(struct audit_tree **out)
{
    return audit_tree_new_sparse(NULL, NULL, out);
}

kms_err audit_tree_new_sparse(audit_leaf_reader reader, void *ctx, struct audit_tree **out)
{
    struct audit_tree *t = calloc(1, sizeof(*t));
    KMS_ENSURE(t != NULL, KMS_ERR_NOMEM, "out of memory");
    pthread_rwlock_init(&t->lock, NULL);
    pthread_mutex_init(&t->cache_lock, NULL);
    t->reader = reader;
    t->reader_ctx = ctx;
    *out = t;
    return KMS_OK;
}

void audit_tree_free(struct audit_tree *t)
{
    if (t == NULL)
        return;
    for (int k = 0; k < 64; k++)
        free(t->levels[k].h);
    pthread_rwlock_destroy(&t->lock);
    pthread_mutex_destroy(&t->cache_lock);
    free(t);
}

static kms_err level_push(struct level *l, const audit_hash h)
{
    uint64_t stored = l->n - l->base;
    if (stored == l->cap) {
        uint64_t nc = l->cap ? l->cap * 2 : 1024;
        audit_hash *nh = realloc(l->h, nc * sizeof(audit_hash));
        KMS_ENSURE(nh != NULL, KMS_ERR_NOMEM, "out of memory for the audit tree");
        l->h = nh;
        l->cap = nc;
    }
    memcpy(l->h[stored], h, AUDIT_HASH_LEN);
    l->n++;
    return KMS_OK;
}

static const uint8_t *stored(const struct level *l, uint64_t i)
{
    return l->h[i - l->base];
}

kms_err audit_tree_append(struct audit_tree *t, const audit_hash leaf_hash)
{
    kms_err rc = KMS_OK;
    pthread_rwlock_wrlock(&t->lock);
    rc = level_push(&t->levels[0], leaf_hash);
    for (int k = 0; rc == KMS_OK && k < 63 && t->levels[k].n % 2 == 0; k++) {
        audit_hash parent;
        uint64_t n = t->levels[k].n;
        audit_node_hash(stored(&t->levels[k], n - 2), stored(&t->levels[k], n - 1), parent);
        rc = level_push(&t->levels[k + 1], parent);
    }
    /* A block is complete: its lower levels can be read back from the log
     * when needed, so they leave memory (the arrays keep their capacity). */
    if (rc == KMS_OK && t->reader != NULL && t->levels[0].n % AUDIT_TREE_BLOCK == 0)
        for (int k = 0; k < AUDIT_TREE_BLOCK_BITS; k++)
            t->levels[k].base = t->levels[k].n;
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

uint64_t audit_tree_size(struct audit_tree *t)
{
    pthread_rwlock_rdlock(&t->lock);
    uint64_t n = t->levels[0].n;
    pthread_rwlock_unlock(&t->lock);
    return n;
}

static uint64_t split_point(uint64_t n) /* largest power of two < n, n >= 2 */
{
    uint64_t k = 1;
    while (k * 2 < n)
        k *= 2;
    return k;
}

static int log2u(uint64_t x)
{
    int k = 0;
    while ((1ULL << k) < x)
        k++;
    return k;
}

/* Hash of the complete subtree of 2^k leaves starting at leaf `start`
 * (aligned): from memory, or from the leaves of its block, read back. */
static kms_err subtree(struct audit_tree *t, int k, uint64_t start, audit_hash out)
{
    const struct level *l = &t->levels[k];
    uint64_t idx = start >> k;
    if (idx >= l->base) {
        memcpy(out, stored(l, idx), AUDIT_HASH_LEN);
        return KMS_OK;
    }
    uint64_t block = start / AUDIT_TREE_BLOCK;
    pthread_mutex_lock(&t->cache_lock);
    kms_err rc = KMS_OK;
    if (!t->cache_valid || t->cache_block != block) {
        t->cache_valid = false;
        rc = t->reader(t->reader_ctx, block * AUDIT_TREE_BLOCK, AUDIT_TREE_BLOCK, t->cache);
        t->cache_valid = rc == KMS_OK;
        t->cache_block = block;
    }
    if (rc == KMS_OK) {
        /* Fold the 2^k leaves pairwise, in place in a scratch copy. */
        audit_hash scratch[AUDIT_TREE_BLOCK];
        uint64_t n = 1ULL << k, off = start % AUDIT_TREE_BLOCK;
        memcpy(scratch, t->cache[off], n * AUDIT_HASH_LEN);
        for (; n > 1; n /= 2)
            for (uint64_t i = 0; i < n / 2; i++)
                audit_node_hash(scratch[2 * i], scratch[2 * i + 1], scratch[i]);
        memcpy(out, scratch[0], AUDIT_HASH_LEN);
    }
    pthread_mutex_unlock(&t->cache_lock);
    return rc;
}

/* MTH of leaves [start, start+size); start is aligned to the size's split
 * structure, which holds for every range the RFC algorithms ask for. Caller
 * holds the lock. */
static kms_err mth(struct audit_tree *t, uint64_t start, uint64_t size, audit_hash out)
{
    if (size == 0) {
        SHA256(NULL, 0, out);
        return KMS_OK;
    }
    if ((size & (size - 1)) == 0 && start % size == 0)
        return subtree(t, log2u(size), start, out);
    uint64_t k = split_point(size);
    audit_hash l, r;
    KMS_GUARD(mth(t, start, k, l));
    KMS_GUARD(mth(t, start + k, size - k, r));
    audit_node_hash(l, r, out);
    return KMS_OK;
}

kms_err audit_tree_root(struct audit_tree *t, uint64_t size, audit_hash out)
{
    pthread_rwlock_rdlock(&t->lock);
    kms_err rc = KMS_OK;
    if (size > t->levels[0].n)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "tree has %llu leaves, not %llu",
                         (unsigned long long)t->levels[0].n, (unsigned long long)size);
    else
        rc = mth(t, 0, size, out);
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

/* PATH(m, D[start:start+n]) of RFC 9162 2.1.3.1, appended to out. */
static kms_err path(struct audit_tree *t, uint64_t m, uint64_t start, uint64_t n,
                    audit_hash *out, size_t *len)
{
    if (n <= 1)
        return KMS_OK;
    uint64_t k = split_point(n);
    if (m < k) {
        KMS_GUARD(path(t, m, start, k, out, len));
        return mth(t, start + k, n - k, out[(*len)++]);
    }
    KMS_GUARD(path(t, m - k, start + k, n - k, out, len));
    return mth(t, start, k, out[(*len)++]);
}

kms_err audit_tree_inclusion(struct audit_tree *t, uint64_t index, uint64_t size,
                             audit_hash out[AUDIT_PROOF_MAX], size_t *out_n)
{
    *out_n = 0;
    pthread_rwlock_rdlock(&t->lock);
    kms_err rc = KMS_OK;
    if (size > t->levels[0].n || index >= size)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "no leaf %llu in a tree of %llu",
                         (unsigned long long)index, (unsigned long long)size);
    else
        rc = path(t, index, 0, size, out, out_n);
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

/* SUBPROOF(m, D[start:start+n], b) of RFC 9162 2.1.4.1. */
static kms_err subproof(struct audit_tree *t, uint64_t m, uint64_t start, uint64_t n, bool b,
                        audit_hash *out, size_t *len)
{
    if (m == n)
        return b ? KMS_OK : mth(t, start, n, out[(*len)++]);
    uint64_t k = split_point(n);
    if (m <= k) {
        KMS_GUARD(subproof(t, m, start, k, b, out, len));
        return mth(t, start + k, n - k, out[(*len)++]);
    }
    KMS_GUARD(subproof(t, m - k, start + k, n - k, false, out, len));
    return mth(t, start, k, out[(*len)++]);
}

kms_err audit_tree_consistency(struct audit_tree *t, uint64_t m, uint64_t n,
                               audit_hash out[AUDIT_PROOF_MAX], size_t *out_n)
{
    *out_n = 0;
    pthread_rwlock_rdlock(&t->lock);
    kms_err rc = KMS_OK;
    if (n > t->levels[0].n || m == 0 || m > n)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "no consistency proof from %llu to %llu",
                         (unsigned long long)m, (unsigned long long)n);
    else
        rc = subproof(t, m, 0, n, true, out, out_n);
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

bool audit_verify_inclusion(uint64_t index, uint64_t size, const audit_hash leaf_hash,
                            const audit_hash *proof, size_t n, const audit_hash root)
{
    if (index >= size)
        return false;
    uint64_t fn = index, sn = size - 1;
    audit_hash r;
    memcpy(r, leaf_hash, AUDIT_HASH_LEN);
    for (size_t i = 0; i < n; i++) {
        if (sn == 0)
            return false;
        if ((fn & 1) || fn == sn) {
            audit_node_hash(proof[i], r, r);
            if (!(fn & 1))
                while (!(fn & 1) && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
        } else {
            audit_node_hash(r, proof[i], r);
        }
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && memcmp(r, root, AUDIT_HASH_LEN) == 0;
}

bool audit_verify_consistency(uint64_t m, uint64_t n, const audit_hash root_m,
                              const audit_hash root_n, const audit_hash *proof, size_t np)
{
    if (m > n || m == 0)
        return false;
    if (m == n)
        return np == 0 && memcmp(root_m, root_n, AUDIT_HASH_LEN) == 0;
    if (np == 0 || np > AUDIT_PROOF_MAX)
        return false;
    /* When m is a power of two, the old root itself starts the path. */
    audit_hash path_buf[AUDIT_PROOF_MAX + 1];
    size_t len = 0;
    if ((m & (m - 1)) == 0)
        memcpy(path_buf[len++], root_m, AUDIT_HASH_LEN);
    for (size_t i = 0; i < np; i++)
        memcpy(path_buf[len++], proof[i], AUDIT_HASH_LEN);
    uint64_t fn = m - 1, sn = n - 1;
    while (fn & 1) {
        fn >>= 1;
        sn >>= 1;
    }
    audit_hash fr, sr;
    memcpy(fr, path_buf[0], AUDIT_HASH_LEN);
    memcpy(sr, path_buf[0], AUDIT_HASH_LEN);
    for (size_t i = 1; i < len; i++) {
        if (sn == 0)
            return false;
        if ((fn & 1) || fn == sn) {
            audit_node_hash(path_buf[i], fr, fr);
            audit_node_hash(path_buf[i], sr, sr);
            if (!(fn & 1))
                while (!(fn & 1) && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
        } else {
            audit_node_hash(sr, path_buf[i], sr);
        }
        fn >>= 1;
        sn >>= 1;
    }
    return sn == 0 && memcmp(fr, root_m, AUDIT_HASH_LEN) == 0 &&
           memcmp(sr, root_n, AUDIT_HASH_LEN) == 0;
}
