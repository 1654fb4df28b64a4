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
 * start at multiples of 2^k; level 0 is the leaf hashes. */
struct level {
    audit_hash *h;
    uint64_t n, cap;
};

struct audit_tree {
    pthread_rwlock_t lock;
    struct level levels[64];
};

kms_err audit_tree_new(struct audit_tree **out)
{
    struct audit_tree *t = calloc(1, sizeof(*t));
    KMS_ENSURE(t != NULL, KMS_ERR_NOMEM, "out of memory");
    pthread_rwlock_init(&t->lock, NULL);
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
    free(t);
}

static kms_err level_push(struct level *l, const audit_hash h)
{
    if (l->n == l->cap) {
        uint64_t nc = l->cap ? l->cap * 2 : 1024;
        audit_hash *nh = realloc(l->h, nc * sizeof(audit_hash));
        KMS_ENSURE(nh != NULL, KMS_ERR_NOMEM, "out of memory for the audit tree");
        l->h = nh;
        l->cap = nc;
    }
    memcpy(l->h[l->n++], h, AUDIT_HASH_LEN);
    return KMS_OK;
}

kms_err audit_tree_append(struct audit_tree *t, const audit_hash leaf_hash)
{
    kms_err rc = KMS_OK;
    pthread_rwlock_wrlock(&t->lock);
    rc = level_push(&t->levels[0], leaf_hash);
    for (int k = 0; rc == KMS_OK && k < 63 && t->levels[k].n % 2 == 0; k++) {
        audit_hash parent;
        uint64_t n = t->levels[k].n;
        audit_node_hash(t->levels[k].h[n - 2], t->levels[k].h[n - 1], parent);
        rc = level_push(&t->levels[k + 1], parent);
    }
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

/* MTH of leaves [start, start+size); start is aligned to the size's split
 * structure, which holds for every range the RFC algorithms ask for. Caller
 * holds the lock. */
static void mth(struct audit_tree *t, uint64_t start, uint64_t size, audit_hash out)
{
    if (size == 0) {
        SHA256(NULL, 0, out);
        return;
    }
    if ((size & (size - 1)) == 0 && start % size == 0) {
        int k = log2u(size);
        memcpy(out, t->levels[k].h[start >> k], AUDIT_HASH_LEN);
        return;
    }
    uint64_t k = split_point(size);
    audit_hash l, r;
    mth(t, start, k, l);
    mth(t, start + k, size - k, r);
    audit_node_hash(l, r, out);
}

kms_err audit_tree_root(struct audit_tree *t, uint64_t size, audit_hash out)
{
    pthread_rwlock_rdlock(&t->lock);
    kms_err rc = KMS_OK;
    if (size > t->levels[0].n)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "tree has %llu leaves, not %llu",
                         (unsigned long long)t->levels[0].n, (unsigned long long)size);
    else
        mth(t, 0, size, out);
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

/* PATH(m, D[start:start+n]) of RFC 9162 2.1.3.1, appended to out. */
static void path(struct audit_tree *t, uint64_t m, uint64_t start, uint64_t n, audit_hash *out,
                 size_t *len)
{
    if (n <= 1)
        return;
    uint64_t k = split_point(n);
    if (m < k) {
        path(t, m, start, k, out, len);
        mth(t, start + k, n - k, out[(*len)++]);
    } else {
        path(t, m - k, start + k, n - k, out, len);
        mth(t, start, k, out[(*len)++]);
    }
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
        path(t, index, 0, size, out, out_n);
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

/* SUBPROOF(m, D[start:start+n], b) of RFC 9162 2.1.4.1. */
static void subproof(struct audit_tree *t, uint64_t m, uint64_t start, uint64_t n, bool b,
                     audit_hash *out, size_t *len)
{
    if (m == n) {
        if (!b)
            mth(t, start, n, out[(*len)++]);
        return;
    }
    uint64_t k = split_point(n);
    if (m <= k) {
        subproof(t, m, start, k, b, out, len);
        mth(t, start + k, n - k, out[(*len)++]);
    } else {
        subproof(t, m - k, start + k, n - k, false, out, len);
        mth(t, start, k, out[(*len)++]);
    }
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
        subproof(t, m, 0, n, true, out, out_n);
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
