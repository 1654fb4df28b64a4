/*
 * test_audit_merkle.c - RFC 9162 roots against the Certificate Transparency
 * test vectors, and every inclusion and consistency proof of trees up to 70
 * leaves against a naive, independent recursive implementation; tampered
 * proofs fail.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "audit_merkle.h"

static const char *const CT_ROOTS[] = {
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

static void hex(const audit_hash h, char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* The naive MTH straight from the RFC's definition over leaf hashes. */
static void naive(const audit_hash *leaves, size_t n, audit_hash out)
{
    if (n == 0) {
        SHA256(NULL, 0, out);
        return;
    }
    if (n == 1) {
        memcpy(out, leaves[0], 32);
        return;
    }
    size_t k = 1;
    while (k * 2 < n)
        k *= 2;
    audit_hash l, r;
    naive(leaves, k, l);
    naive(leaves + k, n - k, r);
    audit_node_hash(l, r, out);
}

START_TEST(ct_vectors)
{
    static const uint8_t d5[] = {0x40, 0x41, 0x42, 0x43};
    uint8_t d6[8], d7[16];
    for (int i = 0; i < 8; i++)
        d6[i] = (uint8_t)(0x50 + i);
    for (int i = 0; i < 16; i++)
        d7[i] = (uint8_t)(0x60 + i);
    const struct {
        const uint8_t *p;
        size_t n;
    } leaves[] = {{(const uint8_t *)"", 0},     {(const uint8_t *)"\x00", 1},
                  {(const uint8_t *)"\x10", 1}, {(const uint8_t *)"\x20\x21", 2},
                  {(const uint8_t *)"\x30\x31", 2}, {d5, 4}, {d6, 8}, {d7, 16}};
    struct audit_tree *t;
    ck_assert_int_eq(audit_tree_new(&t), KMS_OK);
    audit_hash root;
    char h[65];
    ck_assert_int_eq(audit_tree_root(t, 0, root), KMS_OK);
    hex(root, h);
    ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    for (int i = 0; i < 8; i++) {
        audit_hash lh;
        audit_leaf_hash(leaves[i].p, leaves[i].n, lh);
        ck_assert_int_eq(audit_tree_append(t, lh), KMS_OK);
        ck_assert_int_eq(audit_tree_root(t, (uint64_t)i + 1, root), KMS_OK);
        hex(root, h);
        ck_assert_str_eq(h, CT_ROOTS[i]);
    }
    /* Older roots stay available after appends. */
    ck_assert_int_eq(audit_tree_root(t, 3, root), KMS_OK);
    hex(root, h);
    ck_assert_str_eq(h, CT_ROOTS[2]);
    ck_assert_int_eq(audit_tree_root(t, 9, root), KMS_ERR_INVALID_ARGUMENT);
    audit_tree_free(t);
}
END_TEST

START_TEST(all_proofs_up_to_70)
{
    enum { N = 70 };
    audit_hash leaves[N];
    struct audit_tree *t;
    ck_assert_int_eq(audit_tree_new(&t), KMS_OK);
    for (int i = 0; i < N; i++) {
        uint8_t d[8];
        memcpy(d, &i, sizeof(i));
        memcpy(d + 4, "leaf", 4);
        audit_leaf_hash(d, sizeof(d), leaves[i]);
        ck_assert_int_eq(audit_tree_append(t, leaves[i]), KMS_OK);
    }
    audit_hash roots[N + 1];
    for (int n = 0; n <= N; n++) {
        audit_hash r;
        naive(leaves, (size_t)n, roots[n]);
        ck_assert_int_eq(audit_tree_root(t, (uint64_t)n, r), KMS_OK);
        ck_assert_mem_eq(r, roots[n], 32);
    }
    for (int n = 1; n <= N; n++) {
        for (int i = 0; i < n; i++) {
            audit_hash proof[AUDIT_PROOF_MAX];
            size_t np;
            ck_assert_int_eq(audit_tree_inclusion(t, (uint64_t)i, (uint64_t)n, proof, &np), KMS_OK);
            ck_assert(audit_verify_inclusion((uint64_t)i, (uint64_t)n, leaves[i], proof, np,
                                             roots[n]));
            /* The wrong leaf, the wrong index, a flipped proof byte fail. */
            ck_assert(!audit_verify_inclusion((uint64_t)i, (uint64_t)n, leaves[(i + 1) % N], proof,
                                              np, roots[n]));
            if (n > 1)
                ck_assert(!audit_verify_inclusion((uint64_t)((i + 1) % n), (uint64_t)n, leaves[i],
                                                  proof, np, roots[n]));
            if (np > 0) {
                proof[np - 1][5] ^= 1;
                ck_assert(!audit_verify_inclusion((uint64_t)i, (uint64_t)n, leaves[i], proof, np,
                                                  roots[n]));
            }
        }
        for (int m = 1; m <= n; m++) {
            audit_hash proof[AUDIT_PROOF_MAX];
            size_t np;
            ck_assert_int_eq(audit_tree_consistency(t, (uint64_t)m, (uint64_t)n, proof, &np), KMS_OK);
            ck_assert_msg(audit_verify_consistency((uint64_t)m, (uint64_t)n, roots[m], roots[n],
                                                   proof, np),
                          "consistency %d -> %d", m, n);
            if (m < n) {
                ck_assert(!audit_verify_consistency((uint64_t)m, (uint64_t)n, roots[m],
                                                    roots[n - 1], proof, np));
                proof[0][0] ^= 1;
                ck_assert(!audit_verify_consistency((uint64_t)m, (uint64_t)n, roots[m], roots[n],
                                                    proof, np));
            }
        }
    }
    audit_hash p[AUDIT_PROOF_MAX];
    size_t np;
    ck_assert_int_eq(audit_tree_inclusion(t, N, N, p, &np), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(audit_tree_consistency(t, 0, 5, p, &np), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(audit_tree_consistency(t, 6, 5, p, &np), KMS_ERR_INVALID_ARGUMENT);
    audit_tree_free(t);
}
END_TEST

START_TEST(large_tree)
{
    struct audit_tree *t;
    ck_assert_int_eq(audit_tree_new(&t), KMS_OK);
    audit_hash h, first;
    for (uint32_t i = 0; i < 200000; i++) {
        audit_leaf_hash((const uint8_t *)&i, sizeof(i), h);
        if (i == 0)
            memcpy(first, h, 32);
        ck_assert_int_eq(audit_tree_append(t, h), KMS_OK);
    }
    audit_hash root, proof[AUDIT_PROOF_MAX];
    size_t np;
    ck_assert_int_eq(audit_tree_root(t, 200000, root), KMS_OK);
    ck_assert_int_eq(audit_tree_inclusion(t, 0, 200000, proof, &np), KMS_OK);
    ck_assert_uint_eq(np, 18);
    ck_assert(audit_verify_inclusion(0, 200000, first, proof, np, root));
    audit_tree_free(t);
}
END_TEST

/* A sparse tree answers every root and proof exactly as a full one, reading
 * older blocks back through its reader; a failing reader fails the proof
 * instead of producing a wrong one. */
struct leaf_store {
    audit_hash *h;
    size_t n;
    unsigned reads;
    bool fail;
};

static kms_err store_reader(void *ctx, uint64_t start, uint64_t n, audit_hash *out)
{
    struct leaf_store *ls = ctx;
    ls->reads++;
    ck_assert_uint_eq(start % AUDIT_TREE_BLOCK, 0);
    ck_assert_uint_eq(n, AUDIT_TREE_BLOCK);
    ck_assert_uint_le(start + n, ls->n);
    if (ls->fail)
        return kms_err_set(KMS_ERR_IO, "reader failed");
    memcpy(out, ls->h + start, n * sizeof(audit_hash));
    return KMS_OK;
}

START_TEST(sparse_matches_full)
{
    enum { N = 5 * AUDIT_TREE_BLOCK + 37 };
    struct leaf_store ls = {calloc(N, sizeof(audit_hash)), 0, 0, false};
    struct audit_tree *full, *sparse;
    ck_assert_int_eq(audit_tree_new(&full), KMS_OK);
    ck_assert_int_eq(audit_tree_new_sparse(store_reader, &ls, &sparse), KMS_OK);
    for (uint32_t i = 0; i < N; i++) {
        audit_leaf_hash((const uint8_t *)&i, sizeof(i), ls.h[i]);
        ls.n++;
        ck_assert_int_eq(audit_tree_append(full, ls.h[i]), KMS_OK);
        ck_assert_int_eq(audit_tree_append(sparse, ls.h[i]), KMS_OK);
    }
    uint64_t sizes[] = {1, 2, 255, 256, 257, 511, 512, 700, 1024, 1025, N - 1, N};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        uint64_t n = sizes[si];
        audit_hash a, b, pa[AUDIT_PROOF_MAX], pb[AUDIT_PROOF_MAX];
        size_t na, nb;
        ck_assert_int_eq(audit_tree_root(full, n, a), KMS_OK);
        ck_assert_int_eq(audit_tree_root(sparse, n, b), KMS_OK);
        ck_assert_mem_eq(a, b, 32);
        for (uint64_t i = 0; i < n; i += (n > 300 ? 97 : 1)) {
            ck_assert_int_eq(audit_tree_inclusion(full, i, n, pa, &na), KMS_OK);
            ck_assert_int_eq(audit_tree_inclusion(sparse, i, n, pb, &nb), KMS_OK);
            ck_assert_uint_eq(na, nb);
            ck_assert_mem_eq(pa, pb, na * sizeof(audit_hash));
        }
        for (uint64_t m = 1; m <= n; m += (n > 300 ? 131 : 7)) {
            ck_assert_int_eq(audit_tree_consistency(full, m, n, pa, &na), KMS_OK);
            ck_assert_int_eq(audit_tree_consistency(sparse, m, n, pb, &nb), KMS_OK);
            ck_assert_uint_eq(na, nb);
            ck_assert_mem_eq(pa, pb, na * sizeof(audit_hash));
        }
    }
    ck_assert_uint_gt(ls.reads, 0); /* older blocks really came from the reader */
    /* A failing reader: an error, never a wrong proof. (First make block 4
     * the cached one, so that leaf 3's block must be read.) */
    audit_hash p[AUDIT_PROOF_MAX];
    size_t np = 0;
    ck_assert_int_eq(audit_tree_inclusion(sparse, 4 * AUDIT_TREE_BLOCK + 3, N, p, &np), KMS_OK);
    ls.fail = true;
    kms_err rc = audit_tree_inclusion(sparse, 3, N, p, &np);
    ck_assert_int_eq(rc, KMS_ERR_IO);
    audit_tree_free(full);
    audit_tree_free(sparse);
    free(ls.h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("audit_merkle");
    TCase *tc = tcase_create("rfc9162");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ct_vectors);
    tcase_add_test(tc, all_proofs_up_to_70);
    tcase_add_test(tc, large_tree);
    tcase_add_test(tc, sparse_matches_full);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
