/*
 * test_p11_key.c - key templates read back from the token, key separation,
 * the one-way extractable lock, identity, destruction, the handle cache.
 */
#include <check.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kms_error.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "testenv.h"

static struct testenv env;

static void setup(void)
{
    testenv_open(&env);
}

static void teardown(void)
{
    testenv_close(&env);
}

static struct p11_key_id gen(struct p11_token *t, enum p11_key_kind kind, unsigned flags)
{
    struct p11_key_id id;
    ck_assert_int_eq(p11_key_id_new(t, &id), KMS_OK);
    kms_err rc = p11_key_generate(t, kind, flags, &id, "custos:test");
    ck_assert_msg(rc == KMS_OK, "generate %s: %s", p11_key_kind_name(kind), kms_err_detail());
    return id;
}

/* Common expectations of every secret half: on the token, private,
 * sensitive, never derivable. */
static void assert_defensive(const struct p11_key_info *i)
{
    ck_assert(i->token);
    ck_assert(i->priv);
    ck_assert(i->sensitive);
    ck_assert(i->always_sensitive);
    ck_assert(!i->derive);
}

START_TEST(aes_encrypt_template)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &i), KMS_OK);
    assert_defensive(&i);
    ck_assert(!i.extractable);
    ck_assert(i.never_extractable);
    ck_assert(!i.modifiable);
    ck_assert(i.encrypt && i.decrypt);
    ck_assert(!i.wrap && !i.unwrap && !i.sign && !i.verify);
    ck_assert_uint_eq(i.key_type, CKK_AES);
    ck_assert_uint_eq(i.value_len, 32);
}
END_TEST

START_TEST(aes_wrap_template)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_AES_WRAP, 0);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &i), KMS_OK);
    assert_defensive(&i);
    ck_assert(!i.extractable);
    ck_assert(i.wrap && i.unwrap);
    ck_assert(!i.encrypt && !i.decrypt && !i.sign && !i.verify);
}
END_TEST

START_TEST(hmac_template)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_HMAC_SHA256, 0);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &i), KMS_OK);
    assert_defensive(&i);
    ck_assert(i.sign && i.verify);
    ck_assert(!i.encrypt && !i.decrypt && !i.wrap && !i.unwrap);
    ck_assert_uint_eq(i.key_type, CKK_GENERIC_SECRET);
    ck_assert_uint_eq(i.value_len, 32);
}
END_TEST

START_TEST(ec_template)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_EC_P256_SIGN, 0);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &i), KMS_OK);
    assert_defensive(&i);
    ck_assert(!i.extractable);
    ck_assert(i.sign);
    ck_assert(!i.decrypt && !i.unwrap);
    ck_assert_uint_eq(i.key_type, CKK_EC);
}
END_TEST

START_TEST(rsa_template)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_RSA3072_UNWRAP, 0);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &i), KMS_OK);
    assert_defensive(&i);
    ck_assert(!i.extractable);
    ck_assert(i.unwrap);
    ck_assert(!i.decrypt && !i.sign);
    ck_assert_uint_eq(i.key_type, CKK_RSA);
    /* Its public half exports as a 3072-bit SubjectPublicKeyInfo. */
    uint8_t *der = NULL;
    size_t len = 0;
    ck_assert_int_eq(p11_public_key_der(env.eu, &id, &der, &len), KMS_OK);
    ck_assert_uint_gt(len, 384);
    free(der);
}
END_TEST

START_TEST(separation_wrap_key_cannot_encrypt)
{
    struct p11_key_id wrap = gen(env.eu, P11_KEY_AES_WRAP, 0);
    uint8_t iv[12] = {0}, pt[32] = {1}, out[64];
    size_t out_len = 99;
    kms_err rc = p11_gcm_encrypt(env.eu, &wrap, iv, 12, NULL, 0, pt, sizeof(pt), out,
                                 sizeof(out), &out_len);
    ck_assert_int_eq(rc, KMS_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_EncryptInit"));
    /* PKCS#11 names the refusal CKR_KEY_FUNCTION_NOT_PERMITTED; NSS's
     * softoken says CKR_KEY_TYPE_INCONSISTENT (docs/pkcs11.md, "Differences
     * between the tokens"). Both are permission_denied. */
    ck_assert_msg(strstr(kms_err_detail(), "CKR_KEY_FUNCTION_NOT_PERMITTED") != NULL ||
                      strstr(kms_err_detail(), "CKR_KEY_TYPE_INCONSISTENT") != NULL,
                  "%s", kms_err_detail());
    ck_assert_uint_eq(out_len, 0);

    /* The raw call is refused by the token itself, not by this layer. */
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    ck_assert_int_eq(p11_key_handle(env.eu, s, &wrap, CKO_SECRET_KEY, CKK_AES, &h), KMS_OK);
    CK_GCM_PARAMS p = {iv, 12, 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    CK_RV raw = env.eu->fl->C_EncryptInit(s, &m, h);
    ck_assert_msg(raw == CKR_KEY_FUNCTION_NOT_PERMITTED || raw == CKR_KEY_TYPE_INCONSISTENT,
                  "C_EncryptInit: 0x%lx", (unsigned long)raw);
    p11_session_give(env.eu, s, false);
}
END_TEST

START_TEST(separation_encrypt_key_cannot_wrap)
{
    struct p11_key_id enc = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    struct p11_key_id target = gen(env.eu, P11_KEY_AES_ENCRYPT, P11_KEY_ESCROWABLE);
    uint8_t out[64];
    size_t len = 1;
    ck_assert_int_eq(p11_kwp_wrap(env.eu, &enc, &target, out, sizeof(out), &len),
                     KMS_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "C_WrapKey"));
    ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(separation_hmac_cannot_encrypt_ec_cannot_unwrap)
{
    struct p11_key_id mac = gen(env.eu, P11_KEY_HMAC_SHA256, 0);
    uint8_t iv[12] = {0}, pt[16] = {0}, out[64];
    size_t len;
    ck_assert_int_ne(p11_gcm_encrypt(env.eu, &mac, iv, 12, NULL, 0, pt, sizeof(pt), out,
                                     sizeof(out), &len),
                     KMS_OK);
    struct p11_key_id enc = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    uint8_t mac_out[32];
    ck_assert_int_ne(p11_hmac_sha256(env.eu, &enc, pt, sizeof(pt), mac_out), KMS_OK);
}
END_TEST

START_TEST(escrowable_then_locked_one_way)
{
    struct p11_key_id esc = gen(env.eu, P11_KEY_AES_WRAP, 0);
    struct p11_key_id k = gen(env.eu, P11_KEY_AES_ENCRYPT, P11_KEY_ESCROWABLE);
    struct p11_key_info i;
    ck_assert_int_eq(p11_key_info(env.eu, &k, &i), KMS_OK);
    ck_assert(i.extractable);
    ck_assert(i.sensitive);
    ck_assert(!i.never_extractable);

    uint8_t blob[64];
    size_t blob_len = 0;
    ck_assert_int_eq(p11_escrow_and_lock(env.eu, &esc, &k, blob, sizeof(blob), &blob_len),
                     KMS_OK);
    ck_assert_uint_eq(blob_len, 40); /* RFC 5649 of 32 bytes */
    ck_assert_int_eq(p11_key_info(env.eu, &k, &i), KMS_OK);
    ck_assert(!i.extractable);

    /* No second escrow copy can be taken. */
    uint8_t again[64];
    size_t again_len;
    ck_assert_int_eq(p11_kwp_wrap(env.eu, &esc, &k, again, sizeof(again), &again_len),
                     KMS_ERR_PERMISSION_DENIED);

    /* And the token refuses to turn extractability back on. */
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    ck_assert_int_eq(p11_key_handle(env.eu, s, &k, CKO_SECRET_KEY, CKK_AES, &h), KMS_OK);
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE a = {CKA_EXTRACTABLE, &t, sizeof(t)};
    ck_assert_uint_ne(env.eu->fl->C_SetAttributeValue(s, h, &a, 1), CKR_OK);
    p11_session_give(env.eu, s, false);
    ck_assert_int_eq(p11_key_info(env.eu, &k, &i), KMS_OK);
    ck_assert(!i.extractable);

    /* The escrow blob restores a working copy under the escrow key. */
    struct p11_key_id restored;
    ck_assert_int_eq(p11_key_id_new(env.eu, &restored), KMS_OK);
    kms_err rc = p11_kwp_unwrap(env.eu, &esc, blob, blob_len, P11_KEY_AES_ENCRYPT, 0, &restored,
                                "custos:test");
    ck_assert_msg(rc == KMS_OK, "unwrap: %s", kms_err_detail());
    uint8_t iv[12] = {9}, pt[20] = "escrow round trip!!", ct[64], back[64];
    size_t ct_len, back_len;
    ck_assert_int_eq(p11_gcm_encrypt(env.eu, &k, iv, 12, NULL, 0, pt, sizeof(pt), ct, sizeof(ct),
                                     &ct_len),
                     KMS_OK);
    ck_assert_int_eq(p11_gcm_decrypt(env.eu, &restored, iv, 12, NULL, 0, ct, ct_len, back,
                                     sizeof(back), &back_len),
                     KMS_OK);
    ck_assert_mem_eq(back, pt, sizeof(pt));
    /* Unwrapped under the escrow key: sensitive and never extractable. */
    ck_assert_int_eq(p11_key_info(env.eu, &restored, &i), KMS_OK);
    ck_assert(i.sensitive && !i.extractable);
}
END_TEST

START_TEST(non_escrowable_cannot_be_wrapped)
{
    struct p11_key_id esc = gen(env.eu, P11_KEY_AES_WRAP, 0);
    struct p11_key_id k = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    uint8_t blob[64];
    size_t len;
    ck_assert_int_eq(p11_escrow_and_lock(env.eu, &esc, &k, blob, sizeof(blob), &len),
                     KMS_ERR_PERMISSION_DENIED);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "CKR_KEY_UNEXTRACTABLE"));
}
END_TEST

START_TEST(escrowable_pairs_refused)
{
    struct p11_key_id id;
    ck_assert_int_eq(p11_key_id_new(env.eu, &id), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_EC_P256_SIGN, P11_KEY_ESCROWABLE, &id, NULL),
                     KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(identity_and_destroy)
{
    struct p11_key_id k = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    /* A second key under the same id is refused. */
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &k, NULL),
                     KMS_ERR_ALREADY_EXISTS);
    bool exists = false;
    ck_assert_int_eq(p11_key_exists(env.eu, &k, &exists), KMS_OK);
    ck_assert(exists);
    /* The key lives in eu-west only: us-east does not know the id. */
    ck_assert_int_eq(p11_key_exists(env.us, &k, &exists), KMS_OK);
    ck_assert(!exists);
    uint8_t iv[12] = {0}, pt[8] = {0}, out[64];
    size_t len;
    ck_assert_int_eq(p11_gcm_encrypt(env.us, &k, iv, 12, NULL, 0, pt, 8, out, sizeof(out), &len),
                     KMS_ERR_NOT_FOUND);

    ck_assert_int_eq(p11_key_destroy(env.eu, &k), KMS_OK);
    ck_assert_int_eq(p11_key_exists(env.eu, &k, &exists), KMS_OK);
    ck_assert(!exists);
    /* The cached handle is gone too: the next use is "not found", not a
     * stale handle. */
    ck_assert_int_eq(p11_gcm_encrypt(env.eu, &k, iv, 12, NULL, 0, pt, 8, out, sizeof(out), &len),
                     KMS_ERR_NOT_FOUND);
    ck_assert_int_eq(p11_key_destroy(env.eu, &k), KMS_ERR_NOT_FOUND);

    /* Both halves of a pair go. */
    struct p11_key_id ec = gen(env.eu, P11_KEY_EC_P256_SIGN, 0);
    ck_assert_int_eq(p11_key_destroy(env.eu, &ec), KMS_OK);
    ck_assert_int_eq(p11_key_exists(env.eu, &ec, &exists), KMS_OK);
    ck_assert(!exists);
}
END_TEST

START_TEST(list_ids_by_label_prefix)
{
    struct p11_key_id a, b;
    char prefix[64], la[80], lb[80];
    /* Unique per run, so leftovers of an earlier run cannot count. */
    snprintf(prefix, sizeof(prefix), "custos:list%d:", (int)getpid());
    snprintf(la, sizeof(la), "%sx", prefix);
    snprintf(lb, sizeof(lb), "%sy", prefix);
    ck_assert_int_eq(p11_key_id_new(env.us, &a), KMS_OK);
    ck_assert_int_eq(p11_key_id_new(env.us, &b), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.us, P11_KEY_AES_ENCRYPT, 0, &a, la), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.us, P11_KEY_EC_P256_SIGN, 0, &b, lb), KMS_OK);
    struct p11_key_id *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(p11_key_list_ids(env.us, prefix, &ids, &n), KMS_OK);
    /* The pair shares one id: two ids, not three. */
    ck_assert_uint_eq(n, 2);
    bool seen_a = false, seen_b = false;
    for (size_t i = 0; i < n; i++) {
        seen_a |= memcmp(ids[i].b, a.b, 16) == 0;
        seen_b |= memcmp(ids[i].b, b.b, 16) == 0;
    }
    ck_assert(seen_a && seen_b);
    free(ids);
    p11_key_destroy(env.us, &a);
    p11_key_destroy(env.us, &b);
    ck_assert_int_eq(p11_key_list_ids(env.us, prefix, &ids, &n), KMS_OK);
    ck_assert_uint_eq(n, 0);
    free(ids);
}
END_TEST

START_TEST(warm_cache_finds_every_key)
{
    struct p11_key_id a = gen(env.eu, P11_KEY_AES_ENCRYPT, 0);
    struct p11_key_id b = gen(env.eu, P11_KEY_EC_P256_SIGN, 0);
    p11_cache_clear(&env.eu->cache);
    CK_OBJECT_HANDLE h;
    ck_assert(!p11_cache_get(&env.eu->cache, a.b, CKO_SECRET_KEY, CKK_AES, &h));
    size_t n = 0;
    ck_assert_int_eq(p11_token_warm_cache(env.eu, &n), KMS_OK);
    ck_assert_uint_ge(n, 3); /* at least the AES key and both halves of the pair */
    ck_assert(p11_cache_get(&env.eu->cache, a.b, CKO_SECRET_KEY, CKK_AES, &h));
    ck_assert(p11_cache_get(&env.eu->cache, b.b, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h));
    ck_assert(p11_cache_get(&env.eu->cache, b.b, CKO_PUBLIC_KEY, P11_TYPE_ANY, &h));
    /* The warmed handle is the right one: the key encrypts through it. */
    uint8_t iv[12] = {0}, pt[16] = {1}, ct[32];
    size_t len;
    ck_assert_int_eq(p11_gcm_encrypt(env.eu, &a, iv, 12, NULL, 0, pt, 16, ct, sizeof(ct), &len),
                     KMS_OK);
}
END_TEST

/* An object destroyed outside the layer (another process, an operator):
 * p11_key_exists sees it gone and forgets its cached handle, so the id can
 * be used again (BYOK re-import restores a deleted version this way). */
START_TEST(exists_forgets_destroyed_behind_our_back)
{
    struct p11_key_id id;
    ck_assert_int_eq(p11_key_id_new(env.eu, &id), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, "custos:test"), KMS_OK);
    /* Destroy it on a session of our own, behind the cache's back. */
    CK_SESSION_HANDLE s;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    CK_ATTRIBUTE t = {CKA_ID, id.b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0;
    ck_assert_int_eq(env.eu->fl->C_FindObjectsInit(s, &t, 1), CKR_OK);
    ck_assert_int_eq(env.eu->fl->C_FindObjects(s, h, 2, &n), CKR_OK);
    ck_assert_int_eq(env.eu->fl->C_FindObjectsFinal(s), CKR_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(env.eu->fl->C_DestroyObject(s, h[0]), CKR_OK);
    p11_session_give(env.eu, s, false);
    /* The cache still names it: a create under the id would be refused. */
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, "custos:test"),
                     KMS_ERR_ALREADY_EXISTS);
    bool exists = true;
    ck_assert_int_eq(p11_key_exists(env.eu, &id, &exists), KMS_OK);
    ck_assert(!exists);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, "custos:test"), KMS_OK);
    ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_OK);
}
END_TEST

START_TEST(id_hex)
{
    struct p11_key_id id;
    for (int i = 0; i < 16; i++)
        id.b[i] = (uint8_t)(i * 17);
    char hex[33];
    p11_key_id_hex(&id, hex);
    ck_assert_str_eq(hex, "00112233445566778899aabbccddeeff");
}
END_TEST

START_TEST(handle_cache_behaviour)
{
    struct p11_handle_cache c;
    ck_assert_int_eq(p11_cache_init(&c), KMS_OK);
    enum { N = 5000 };
    uint8_t (*ids)[16] = calloc(N, 16);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 16; j++)
            ids[i][j] = (uint8_t)rand();
        p11_cache_put(&c, ids[i], CKO_SECRET_KEY, CKK_AES, (CK_OBJECT_HANDLE)i + 1);
    }
    CK_OBJECT_HANDLE h;
    for (int i = 0; i < N; i++) {
        ck_assert(p11_cache_get(&c, ids[i], CKO_SECRET_KEY, CKK_AES, &h));
        ck_assert_uint_eq(h, (CK_OBJECT_HANDLE)i + 1);
        ck_assert(!p11_cache_get(&c, ids[i], CKO_PRIVATE_KEY, P11_TYPE_ANY, &h));
        ck_assert(!p11_cache_get(&c, ids[i], CKO_SECRET_KEY, CKK_GENERIC_SECRET, &h));
    }
    /* Forget every other entry; the rest must all still be found (this is
     * what backward-shift deletion has to get right). */
    for (int i = 0; i < N; i += 2)
        p11_cache_forget(&c, ids[i]);
    for (int i = 0; i < N; i++) {
        bool found = p11_cache_get(&c, ids[i], CKO_SECRET_KEY, CKK_AES, &h);
        ck_assert_int_eq(found, i % 2 == 1);
        if (found)
            ck_assert_uint_eq(h, (CK_OBJECT_HANDLE)i + 1);
    }
    p11_cache_clear(&c);
    ck_assert(!p11_cache_get(&c, ids[1], CKO_SECRET_KEY, CKK_AES, &h));
    free(ids);
    p11_cache_cleanup(&c);
}
END_TEST

/* Several objects under one id (a metadata version's AES and HMAC keys, a
 * pair's halves) are distinct entries; forgetting the id drops all of them
 * and nothing else, however the entries of many ids interleave in the
 * table. */
START_TEST(handle_cache_several_objects_per_id)
{
    struct p11_handle_cache c;
    ck_assert_int_eq(p11_cache_init(&c), KMS_OK);
    enum { N = 3000 };
    static const struct {
        CK_OBJECT_CLASS cls;
        CK_KEY_TYPE type;
    } kinds[] = {{CKO_SECRET_KEY, CKK_AES},
                 {CKO_SECRET_KEY, CKK_GENERIC_SECRET},
                 {CKO_PRIVATE_KEY, P11_TYPE_ANY},
                 {CKO_PUBLIC_KEY, P11_TYPE_ANY}};
    uint8_t (*ids)[16] = calloc(N, 16);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 16; j++)
            ids[i][j] = (uint8_t)rand();
        /* Id i holds 1 + i % 4 objects. */
        for (int k = 0; k <= i % 4; k++)
            p11_cache_put(&c, ids[i], kinds[k].cls, kinds[k].type,
                          (CK_OBJECT_HANDLE)(i * 4 + k + 1));
    }
    /* Re-putting replaces, it does not add. */
    size_t before = c.count;
    p11_cache_put(&c, ids[3], CKO_SECRET_KEY, CKK_GENERIC_SECRET, 99999);
    ck_assert_uint_eq(c.count, before);
    CK_OBJECT_HANDLE h;
    ck_assert(p11_cache_get(&c, ids[3], CKO_SECRET_KEY, CKK_GENERIC_SECRET, &h));
    ck_assert_uint_eq(h, 99999);
    p11_cache_put(&c, ids[3], CKO_SECRET_KEY, CKK_GENERIC_SECRET, 3 * 4 + 1 + 1);

    for (int i = 0; i < N; i += 3)
        p11_cache_forget(&c, ids[i]);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 4; k++) {
            bool want = i % 3 != 0 && k <= i % 4;
            bool found = p11_cache_get(&c, ids[i], kinds[k].cls, kinds[k].type, &h);
            ck_assert_msg(found == want, "id %d kind %d: found %d", i, k, found);
            if (found)
                ck_assert_uint_eq(h, (CK_OBJECT_HANDLE)(i * 4 + k + 1));
        }
    free(ids);
    p11_cache_cleanup(&c);
}
END_TEST

/* A metadata key version: an AES key and an HMAC generic secret under one
 * CKA_ID. Each is found by its type, with its own template and usages; a
 * second key of either type under the id is refused; listing sees one id;
 * destroying the id removes both, and neither is then served from a stale
 * cached handle. */
START_TEST(aes_and_hmac_share_an_id)
{
    struct p11_key_id id;
    ck_assert_int_eq(p11_key_id_new(env.eu, &id), KMS_OK);
    char label[64];
    snprintf(label, sizeof(label), "custos:pair%d:", (int)getpid());
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, label), KMS_OK);
    if (p11_key_shared_id_supported(env.eu) != KMS_OK) {
        /* NSS's softoken keeps one secret key per CKA_ID: a second one would
         * overwrite the AES key. The layer refuses it, and the AES key
         * still works afterwards. */
        ck_assert_ptr_nonnull(strstr(kms_err_detail(), "one CKA_ID"));
        ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_HMAC_SHA256, 0, &id, label),
                         KMS_ERR_ALREADY_EXISTS);
        uint8_t iv[12] = {0}, pt[16] = {1}, ct[64];
        size_t ct_len = 0;
        ck_assert_int_eq(
            p11_gcm_encrypt(env.eu, &id, iv, 12, NULL, 0, pt, sizeof(pt), ct, sizeof(ct), &ct_len),
            KMS_OK);
        struct p11_key_info only;
        ck_assert_int_eq(p11_key_info(env.eu, &id, &only), KMS_OK);
        ck_assert_uint_eq(only.key_type, CKK_AES);
        ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_OK);
        return;
    }
    kms_err rc = p11_key_generate(env.eu, P11_KEY_HMAC_SHA256, 0, &id, label);
    ck_assert_msg(rc == KMS_OK, "%s", kms_err_detail());
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &id, label),
                     KMS_ERR_ALREADY_EXISTS);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_HMAC_SHA256, 0, &id, label),
                     KMS_ERR_ALREADY_EXISTS);
    /* An AES key of another kind is still an AES key: refused too. */
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_WRAP, 0, &id, label),
                     KMS_ERR_ALREADY_EXISTS);

    /* Each half keeps its own template: key separation holds per object. */
    struct p11_key_info ai, hi;
    ck_assert_int_eq(p11_key_info_kind(env.eu, &id, P11_KEY_AES_ENCRYPT, &ai), KMS_OK);
    ck_assert_int_eq(p11_key_info_kind(env.eu, &id, P11_KEY_HMAC_SHA256, &hi), KMS_OK);
    ck_assert_uint_eq(ai.key_type, CKK_AES);
    ck_assert(ai.encrypt && ai.decrypt && !ai.sign && !ai.verify && !ai.wrap && !ai.unwrap);
    ck_assert_uint_eq(hi.key_type, CKK_GENERIC_SECRET);
    ck_assert(hi.sign && hi.verify && !hi.encrypt && !hi.decrypt && !hi.wrap && !hi.unwrap);
    assert_defensive(&ai);
    assert_defensive(&hi);
    ck_assert(!ai.extractable && !hi.extractable);
    /* By id alone, the AES key answers. */
    struct p11_key_info any;
    ck_assert_int_eq(p11_key_info(env.eu, &id, &any), KMS_OK);
    ck_assert_uint_eq(any.key_type, CKK_AES);

    /* Both work, in either order, from a cold cache too. */
    uint8_t iv[12] = {1}, pt[16] = {2}, ct[32], back[16], mac1[32], mac2[32];
    size_t ct_len, back_len;
    for (int round = 0; round < 2; round++) {
        p11_cache_clear(&env.eu->cache);
        if (round == 0)
            ck_assert_int_eq(p11_hmac_sha256(env.eu, &id, pt, sizeof(pt), mac1), KMS_OK);
        ck_assert_int_eq(p11_gcm_encrypt(env.eu, &id, iv, 12, NULL, 0, pt, sizeof(pt), ct,
                                         sizeof(ct), &ct_len),
                         KMS_OK);
        ck_assert_int_eq(p11_gcm_decrypt(env.eu, &id, iv, 12, NULL, 0, ct, ct_len, back,
                                         sizeof(back), &back_len),
                         KMS_OK);
        ck_assert_mem_eq(back, pt, sizeof(pt));
        if (round == 1) {
            ck_assert_int_eq(p11_hmac_sha256(env.eu, &id, pt, sizeof(pt), mac2), KMS_OK);
            ck_assert_mem_eq(mac1, mac2, 32);
        }
    }

    struct p11_key_id *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(p11_key_list_ids(env.eu, label, &ids, &n), KMS_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_mem_eq(ids[0].b, id.b, 16);
    free(ids);
    char got[65];
    ck_assert_int_eq(p11_key_label(env.eu, &id, got), KMS_OK);
    ck_assert_str_eq(got, label);

    ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_OK);
    bool exists = true;
    ck_assert_int_eq(p11_key_exists(env.eu, &id, &exists), KMS_OK);
    ck_assert(!exists);
    ck_assert_int_eq(p11_gcm_encrypt(env.eu, &id, iv, 12, NULL, 0, pt, sizeof(pt), ct, sizeof(ct),
                                     &ct_len),
                     KMS_ERR_NOT_FOUND);
    ck_assert_int_eq(p11_hmac_sha256(env.eu, &id, pt, sizeof(pt), mac1), KMS_ERR_NOT_FOUND);
    ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_ERR_NOT_FOUND);
}
END_TEST

/* Two objects of one class and type under one id are never made by this
 * layer; if someone else put them there, lookups refuse rather than pick
 * one. */
START_TEST(foreign_duplicate_refused)
{
    struct p11_key_id id = gen(env.eu, P11_KEY_HMAC_SHA256, 0);
    CK_SESSION_HANDLE s;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    if (!p11_token_shares_ids(env.eu, s)) {
        /* A token that keeps one secret key per CKA_ID cannot hold the
         * duplicate (the C_GenerateKey below would replace the key). */
        p11_session_give(env.eu, s, false);
        ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_OK);
        return;
    }
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len = 32;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},   {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_ID, id.b, 16},
                        {CKA_TOKEN, &yes, sizeof(yes)},   {CKA_SIGN, &yes, sizeof(yes)}};
    CK_MECHANISM m = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE h;
    ck_assert_uint_eq(env.eu->fl->C_GenerateKey(s, &m, t, 6, &h), CKR_OK);
    p11_session_give(env.eu, s, false);
    p11_cache_clear(&env.eu->cache);
    uint8_t mac[32];
    ck_assert_int_eq(p11_hmac_sha256(env.eu, &id, mac, 8, mac), KMS_ERR_INTERNAL);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "two objects"));
    ck_assert_int_eq(p11_key_destroy(env.eu, &id), KMS_OK);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_key");
    TCase *tc = tcase_create("templates");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, aes_encrypt_template);
    tcase_add_test(tc, aes_wrap_template);
    tcase_add_test(tc, hmac_template);
    tcase_add_test(tc, ec_template);
    tcase_add_test(tc, rsa_template);
    suite_add_tcase(s, tc);

    tc = tcase_create("separation");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, separation_wrap_key_cannot_encrypt);
    tcase_add_test(tc, separation_encrypt_key_cannot_wrap);
    tcase_add_test(tc, separation_hmac_cannot_encrypt_ec_cannot_unwrap);
    suite_add_tcase(s, tc);

    tc = tcase_create("escrow_lock");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, escrowable_then_locked_one_way);
    tcase_add_test(tc, non_escrowable_cannot_be_wrapped);
    tcase_add_test(tc, escrowable_pairs_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("identity");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, identity_and_destroy);
    tcase_add_test(tc, list_ids_by_label_prefix);
    tcase_add_test(tc, warm_cache_finds_every_key);
    tcase_add_test(tc, id_hex);
    tcase_add_test(tc, exists_forgets_destroyed_behind_our_back);
    tcase_add_test(tc, handle_cache_behaviour);
    tcase_add_test(tc, handle_cache_several_objects_per_id);
    suite_add_tcase(s, tc);

    tc = tcase_create("shared_id");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, aes_and_hmac_share_an_id);
    tcase_add_test(tc, foreign_duplicate_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
