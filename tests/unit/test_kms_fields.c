/*
 * test_kms_fields.c - the FieldService formats and their HSM path.
 *
 *   format:  the field blob header, AAD, deterministic IV input and blind
 *            index input, pinned byte for byte to the worked example of
 *            docs/metadata.md; parsing refuses every malformed
 *            blob; names and truncation follow their rules.
 *   openssl: the worked example decrypts, and its IV and index recompute,
 *            with OpenSSL alone (a tenant needs nothing else).
 *   hsm:     with token keys of known value (made here with C_CreateObject,
 *            the way only a test may), kms_field_seal/open/blind_index give
 *            exactly the documented bytes: the HSM path is the documented
 *            construction. Then the properties brokers rely on: determinism
 *            per (version, field, context, value) and nothing more, fresh
 *            IVs in randomized mode, and every changed byte, name or context
 *            refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "kms_blob.h"
#include "kms_fieldblob.h"
#include "kms_fields.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "testenv.h"

static void unhex(const char *h, uint8_t *out, size_t *out_len)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    *out_len = n;
}

/* ---- the worked example of docs/metadata.md ---- */

/* Keys: AES 00..1f, HMAC 20..3f. Version 1, field "to", context
 * {"tenant": "demo", "conversation": "c-1"}, value "+14155550123",
 * DETERMINISTIC. */
static const char EX_CTX[] =
    "0002000c636f6e766572736174696f6e0003632d31000674656e616e74000464656d6f";
static const char EX_IV_INPUT[] =
    "12637573746f732f6669656c642d69762f76310000000102746f"
    "0002000c636f6e766572736174696f6e0003632d31000674656e616e74000464656d6f"
    "0000000c2b3134313535353530313233";
static const char EX_MAC[] = "753612c982d405296c41bdab5a33d45b588eb54cf8aa54dc22210460a682437e";
static const char EX_HEADER[] = "f10200000001753612c982d405296c41bdab";
static const char EX_AAD[] =
    "f10200000001753612c982d405296c41bdab02746f"
    "0002000c636f6e766572736174696f6e0003632d31000674656e616e74000464656d6f";
static const char EX_BLOB[] = "f10200000001753612c982d405296c41bdab"
                              "1ada3bfb4f35f14a5af0d894"
                              "2aa01ac8b8ef9b0e86ffd8b1f15551c4";
/* Blind index of "+1 (415) 555-0123" under E164 (canonical "+14155550123"). */
static const char EX_INDEX_INPUT[] =
    "15637573746f732f626c696e642d696e6465782f76310202746f0000000c2b3134313535353530313233";
static const char EX_INDEX_256[] =
    "3982f1671300462b076758a6c1a1f0e77459f63db954a4bf872e94fa8555cb5c";
static const char EX_INDEX_128[] = "3982f1671300462b076758a6c1a1f0e7";
static const char EX_INDEX_20[] = "3982f0";

static const char *VALUE = "+14155550123";

static void example_ctx(uint8_t *out, size_t *len)
{
    struct kms_ctx_pair p[] = {{"tenant", "demo"}, {"conversation", "c-1"}};
    ck_assert_int_eq(kms_ctx_encode(p, 2, out, len), KMS_OK);
}

static void assert_hex(const uint8_t *got, size_t got_len, const char *want_hex)
{
    uint8_t want[512];
    size_t n;
    unhex(want_hex, want, &n);
    ck_assert_uint_eq(got_len, n);
    ck_assert_mem_eq(got, want, n);
}

START_TEST(encodings_match_document)
{
    uint8_t ctx[KMS_CTX_ENCODED_MAX], buf[KMS_FIELD_IV_INPUT_MAX], iv[12], hdr[18];
    size_t cl, n, m;
    example_ctx(ctx, &cl);
    assert_hex(ctx, cl, EX_CTX);

    ck_assert_int_eq(kms_field_iv_input(1, "to", 2, ctx, cl, (const uint8_t *)VALUE,
                                        strlen(VALUE), buf, sizeof(buf), &n),
                     KMS_OK);
    assert_hex(buf, n, EX_IV_INPUT);

    unhex(EX_MAC, buf, &m);
    memcpy(iv, buf, 12);
    kms_field_header_write(KMS_FIELD_DETERMINISTIC, 1, iv, hdr);
    assert_hex(hdr, sizeof(hdr), EX_HEADER);
    ck_assert_int_eq(kms_field_aad(hdr, "to", 2, ctx, cl, buf, sizeof(buf), &n), KMS_OK);
    assert_hex(buf, n, EX_AAD);

    ck_assert_int_eq(kms_field_index_input(2, "to", 2, (const uint8_t *)VALUE, strlen(VALUE), buf,
                                           sizeof(buf), &n),
                     KMS_OK);
    assert_hex(buf, n, EX_INDEX_INPUT);

    /* The two inputs use one key, and never coincide: their first bytes
     * (the label lengths) differ. */
    ck_assert_uint_ne(sizeof(KMS_FIELD_IV_LABEL), sizeof(KMS_FIELD_INDEX_LABEL));
}
END_TEST

START_TEST(blob_parse_refuses_malformed)
{
    uint8_t blob[KMS_FIELD_BLOB_MAX + 8];
    size_t n;
    unhex(EX_BLOB, blob, &n);
    enum kms_field_mode mode;
    uint32_t v;
    const uint8_t *iv;
    ck_assert_int_eq(kms_field_blob_parse(blob, n, &mode, &v, &iv), KMS_OK);
    ck_assert_int_eq(mode, KMS_FIELD_DETERMINISTIC);
    ck_assert_uint_eq(v, 1);
    ck_assert_ptr_eq(iv, blob + 6);

    /* An empty value makes a 34-byte blob; anything shorter is truncated. */
    ck_assert_int_eq(kms_field_blob_parse(blob, 34, &mode, &v, &iv), KMS_OK);
    ck_assert_int_eq(kms_field_blob_parse(blob, 33, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_field_blob_parse(blob, 0, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    ck_assert_int_eq(kms_field_blob_parse(NULL, 40, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    memset(blob + n, 0, sizeof(blob) - n);
    ck_assert_int_eq(kms_field_blob_parse(blob, KMS_FIELD_BLOB_MAX, &mode, &v, &iv), KMS_OK);
    ck_assert_int_eq(kms_field_blob_parse(blob, KMS_FIELD_BLOB_MAX + 1, &mode, &v, &iv),
                     KMS_ERR_BAD_CIPHERTEXT);

    uint8_t t[64];
    memcpy(t, blob, n);
    t[0] = 0xC5; /* a KeyService blob is not a field blob */
    ck_assert_int_eq(kms_field_blob_parse(t, n, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(t, blob, n);
    t[1] = 0;
    ck_assert_int_eq(kms_field_blob_parse(t, n, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    t[1] = 3;
    ck_assert_int_eq(kms_field_blob_parse(t, n, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(t, blob, n);
    memset(t + 2, 0, 4); /* version 0 */
    ck_assert_int_eq(kms_field_blob_parse(t, n, &mode, &v, &iv), KMS_ERR_BAD_CIPHERTEXT);
    memcpy(t, blob, n);
    t[2] = 0xff; /* big versions are fine */
    ck_assert_int_eq(kms_field_blob_parse(t, n, &mode, &v, &iv), KMS_OK);
    ck_assert_uint_eq(v, 0xff000001u);
}
END_TEST

START_TEST(field_names)
{
    ck_assert_int_eq(kms_field_name_check("to", 2), KMS_OK);
    ck_assert_int_eq(kms_field_name_check("rcs.session_id:v2/a-b", 21), KMS_OK);
    char n[80];
    memset(n, 'x', sizeof(n));
    ck_assert_int_eq(kms_field_name_check(n, 64), KMS_OK);
    ck_assert_int_eq(kms_field_name_check(n, 65), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_field_name_check("", 0), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_field_name_check(NULL, 0), KMS_ERR_INVALID_ARGUMENT);
    const char *bad[] = {"a b", "a\"b", "a\\b", "caf\xc3\xa9", "a\nb", "a,b", "a=b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(kms_field_name_check(bad[i], strlen(bad[i])) == KMS_ERR_INVALID_ARGUMENT,
                      "accepted '%s'", bad[i]);
    /* The encoders check names too, and bound their output. */
    uint8_t small[8];
    size_t len = 1;
    ck_assert_int_eq(kms_field_iv_input(1, "a b", 3, NULL, 0, NULL, 0, small, sizeof(small), &len),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_field_iv_input(1, "ab", 2, NULL, 0, NULL, 0, small, sizeof(small), &len),
                     KMS_ERR_USAGE);
    ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(index_truncation)
{
    uint8_t mac[32], full[32];
    size_t n;
    unhex(EX_INDEX_256, full, &n);
    for (unsigned bits = KMS_INDEX_BITS_MIN; bits <= KMS_INDEX_BITS_MAX; bits++) {
        memcpy(mac, full, 32);
        size_t len = kms_field_index_truncate(mac, bits);
        ck_assert_uint_eq(len, (bits + 7) / 8);
        /* The leftmost `bits` bits survive; every other bit is zero. */
        for (unsigned b = 0; b < 256; b++) {
            int got = mac[b / 8] >> (7 - b % 8) & 1;
            int want = b < bits ? full[b / 8] >> (7 - b % 8) & 1 : 0;
            ck_assert_int_eq(got, want);
        }
    }
    memcpy(mac, full, 32);
    assert_hex(mac, kms_field_index_truncate(mac, 128), EX_INDEX_128);
    memcpy(mac, full, 32);
    assert_hex(mac, kms_field_index_truncate(mac, 20), EX_INDEX_20);
}
END_TEST

/* ---- OpenSSL alone ---- */

static void example_keys(uint8_t aes[32], uint8_t mac[32])
{
    for (int i = 0; i < 32; i++) {
        aes[i] = (uint8_t)i;
        mac[i] = (uint8_t)(0x20 + i);
    }
}

START_TEST(example_with_openssl_alone)
{
    uint8_t aes[32], hk[32], ctx[KMS_CTX_ENCODED_MAX], in[KMS_FIELD_IV_INPUT_MAX], mac[32];
    uint8_t blob[128], aad[KMS_FIELD_AAD_MAX], pt[64];
    size_t cl, n, bl, al;
    unsigned ml = 0;
    example_keys(aes, hk);
    example_ctx(ctx, &cl);
    unhex(EX_BLOB, blob, &bl);

    /* The deterministic IV is HMAC-SHA256 of the IV input, truncated. */
    ck_assert_int_eq(kms_field_iv_input(1, "to", 2, ctx, cl, (const uint8_t *)VALUE,
                                        strlen(VALUE), in, sizeof(in), &n),
                     KMS_OK);
    ck_assert_ptr_nonnull(HMAC(EVP_sha256(), hk, 32, in, n, mac, &ml));
    assert_hex(mac, ml, EX_MAC);
    ck_assert_mem_eq(blob + 6, mac, 12);

    /* GCM with AAD = header || name || context. */
    ck_assert_int_eq(kms_field_aad(blob, "to", 2, ctx, cl, aad, sizeof(aad), &al), KMS_OK);
    size_t ct_len = bl - KMS_FIELD_OVERHEAD;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;
    ck_assert_int_eq(EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, aes, blob + 6), 1);
    ck_assert_int_eq(EVP_DecryptUpdate(c, NULL, &len, aad, (int)al), 1);
    ck_assert_int_eq(EVP_DecryptUpdate(c, pt, &len, blob + 18, (int)ct_len), 1);
    ck_assert_int_eq(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, blob + 18 + ct_len), 1);
    ck_assert_int_eq(EVP_DecryptFinal_ex(c, pt + len, &fin), 1);
    EVP_CIPHER_CTX_free(c);
    ck_assert_uint_eq((size_t)(len + fin), strlen(VALUE));
    ck_assert_mem_eq(pt, VALUE, strlen(VALUE));

    /* The blind index likewise. */
    ck_assert_int_eq(kms_field_index_input(2, "to", 2, (const uint8_t *)VALUE, strlen(VALUE), in,
                                           sizeof(in), &n),
                     KMS_OK);
    ck_assert_ptr_nonnull(HMAC(EVP_sha256(), hk, 32, in, n, mac, &ml));
    assert_hex(mac, 32, EX_INDEX_256);
}
END_TEST

/* ---- the HSM path ---- */

static struct testenv env;
static struct kms_field_key fk;

/* Token objects of known value under one CKA_ID, with the templates Custos
 * gives metadata keys (sensitive, one purpose each). Only a test imports
 * plaintext key material like this. */
static void make_known_key(const struct p11_key_id *id, CK_KEY_TYPE kt, const uint8_t value[32])
{
    CK_SESSION_HANDLE s;
    ck_assert_int_eq(p11_session_take(env.eu, &s), KMS_OK);
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE, aes = kt == CKK_AES;
    CK_BBOOL mac = !aes;
    CK_ATTRIBUTE a[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_VALUE, (void *)value, 32},     {CKA_ID, (void *)id->b, 16},
        {CKA_TOKEN, &t, sizeof(t)},         {CKA_PRIVATE, &t, sizeof(t)},
        {CKA_SENSITIVE, &t, sizeof(t)},     {CKA_EXTRACTABLE, &f, sizeof(f)},
        {CKA_ENCRYPT, &aes, sizeof(aes)},   {CKA_DECRYPT, &aes, sizeof(aes)},
        {CKA_SIGN, &mac, sizeof(mac)},      {CKA_VERIFY, &mac, sizeof(mac)},
        {CKA_WRAP, &f, sizeof(f)},          {CKA_UNWRAP, &f, sizeof(f)},
        {CKA_DERIVE, &f, sizeof(f)},
    };
    CK_OBJECT_HANDLE h;
    CK_RV rv = env.eu->fl->C_CreateObject(s, a, sizeof(a) / sizeof(a[0]), &h);
    p11_session_give(env.eu, s, false);
    ck_assert_msg(rv == CKR_OK, "C_CreateObject: 0x%lx", (unsigned long)rv);
}

static void hsm_setup(void)
{
    testenv_open(&env);
    uint8_t aes[32], hk[32];
    example_keys(aes, hk);
    fk.tok = env.eu;
    fk.version = 1;
    ck_assert_int_eq(p11_key_id_new(env.eu, &fk.hsm_id), KMS_OK);
    make_known_key(&fk.hsm_id, CKK_AES, aes);
    make_known_key(&fk.hsm_id, CKK_GENERIC_SECRET, hk);
}

static void hsm_teardown(void)
{
    p11_key_destroy(env.eu, &fk.hsm_id);
    testenv_close(&env);
}

static size_t seal(enum kms_field_mode mode, const char *name, const uint8_t *ctx, size_t cl,
                   const char *value, uint8_t *out)
{
    size_t n = 0;
    kms_err rc = kms_field_seal(&fk, mode, name, strlen(name), ctx, cl, (const uint8_t *)value,
                                strlen(value), out, KMS_FIELD_BLOB_MAX, &n);
    ck_assert_msg(rc == KMS_OK, "seal: %s", kms_err_detail());
    return n;
}

START_TEST(hsm_matches_document)
{
    uint8_t ctx[KMS_CTX_ENCODED_MAX], blob[KMS_FIELD_BLOB_MAX], pt[KMS_FIELD_VALUE_MAX];
    size_t cl, n, pl;
    example_ctx(ctx, &cl);
    n = seal(KMS_FIELD_DETERMINISTIC, "to", ctx, cl, VALUE, blob);
    assert_hex(blob, n, EX_BLOB);
    enum kms_field_mode mode = 0;
    ck_assert_int_eq(kms_field_open(&fk, "to", 2, ctx, cl, blob, n, pt, sizeof(pt), &pl, &mode),
                     KMS_OK);
    ck_assert_uint_eq(pl, strlen(VALUE));
    ck_assert_mem_eq(pt, VALUE, pl);
    ck_assert_int_eq(mode, KMS_FIELD_DETERMINISTIC);

    uint8_t idx[32];
    size_t il;
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "to", 2, (const uint8_t *)VALUE,
                                           strlen(VALUE), 128, idx, &il),
                     KMS_OK);
    assert_hex(idx, il, EX_INDEX_128);
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "to", 2, (const uint8_t *)VALUE,
                                           strlen(VALUE), 20, idx, &il),
                     KMS_OK);
    assert_hex(idx, il, EX_INDEX_20);
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "to", 2, (const uint8_t *)VALUE,
                                           strlen(VALUE), 7, idx, &il),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "to", 2, (const uint8_t *)VALUE,
                                           strlen(VALUE), 257, idx, &il),
                     KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(hsm_determinism_is_scoped)
{
    uint8_t c1[KMS_CTX_ENCODED_MAX], c2[KMS_CTX_ENCODED_MAX];
    size_t l1, l2;
    example_ctx(c1, &l1);
    struct kms_ctx_pair p2[] = {{"tenant", "demo"}, {"conversation", "c-2"}};
    ck_assert_int_eq(kms_ctx_encode(p2, 2, c2, &l2), KMS_OK);
    uint8_t a[64], b[64];
    size_t na, nb;
    /* Same (version, field, context, value): same blob. */
    na = seal(KMS_FIELD_DETERMINISTIC, "to", c1, l1, VALUE, a);
    nb = seal(KMS_FIELD_DETERMINISTIC, "to", c1, l1, VALUE, b);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(a, b, na);
    /* Another field, context or value: another IV, so unrelated bytes. */
    nb = seal(KMS_FIELD_DETERMINISTIC, "from", c1, l1, VALUE, b);
    ck_assert(memcmp(a + 6, b + 6, 12) != 0 && memcmp(a + 18, b + 18, na - 18) != 0);
    nb = seal(KMS_FIELD_DETERMINISTIC, "to", c2, l2, VALUE, b);
    ck_assert(memcmp(a + 6, b + 6, 12) != 0 && memcmp(a + 18, b + 18, na - 18) != 0);
    nb = seal(KMS_FIELD_DETERMINISTIC, "to", c1, l1, "+14155550124", b);
    ck_assert(memcmp(a + 6, b + 6, 12) != 0);
    /* Another version (same keys here, so only the IV input differs). */
    fk.version = 2;
    nb = seal(KMS_FIELD_DETERMINISTIC, "to", c1, l1, VALUE, b);
    fk.version = 1;
    ck_assert(memcmp(a + 6, b + 6, 12) != 0);
    ck_assert_uint_eq(b[5], 2);
    /* Randomized: a fresh IV every time. */
    na = seal(KMS_FIELD_RANDOMIZED, "to", c1, l1, VALUE, a);
    nb = seal(KMS_FIELD_RANDOMIZED, "to", c1, l1, VALUE, b);
    ck_assert_uint_eq(a[1], KMS_FIELD_RANDOMIZED);
    ck_assert(memcmp(a + 6, b + 6, 12) != 0 && memcmp(a + 18, b + 18, na - 18) != 0);
    /* Blind indexes: per field and per canonicalizer, never across. */
    uint8_t i1[32], i2[32];
    size_t il1, il2;
    const uint8_t *v = (const uint8_t *)VALUE;
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "to", 2, v, 12, 256, i1, &il1),
                     KMS_OK);
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_E164, "from", 4, v, 12, 256, i2, &il2),
                     KMS_OK);
    ck_assert(memcmp(i1, i2, 32) != 0);
    ck_assert_int_eq(kms_field_blind_index(&fk, KMS_CANON_RAW, "to", 2, v, 12, 256, i2, &il2),
                     KMS_OK);
    ck_assert(memcmp(i1, i2, 32) != 0);
    /* And an index is not the deterministic IV of the same value. */
    seal(KMS_FIELD_DETERMINISTIC, "to", NULL, 0, VALUE, a);
    ck_assert(memcmp(i1, a + 6, 12) != 0);
}
END_TEST

START_TEST(hsm_every_change_refused)
{
    uint8_t ctx[KMS_CTX_ENCODED_MAX], c2[KMS_CTX_ENCODED_MAX], blob[64], t[64], pt[64];
    size_t cl, l2, pl;
    example_ctx(ctx, &cl);
    ck_assert_int_eq(kms_ctx_encode(NULL, 0, c2, &l2), KMS_OK);
    for (int mode = KMS_FIELD_RANDOMIZED; mode <= KMS_FIELD_DETERMINISTIC; mode++) {
        size_t n = seal((enum kms_field_mode)mode, "to", ctx, cl, VALUE, blob);
        /* Every bit of every byte. */
        for (size_t i = 0; i < n; i++)
            for (int bit = 0; bit < 8; bit++) {
                memcpy(t, blob, n);
                t[i] ^= (uint8_t)(1 << bit);
                kms_err rc = kms_field_open(&fk, "to", 2, ctx, cl, t, n, pt, sizeof(pt), &pl, NULL);
                /* A changed version byte names another version: the caller
                 * (DecryptFields) would look that up; here it is a usage
                 * error. Everything else fails authentication or parsing. */
                ck_assert_msg(rc == KMS_ERR_BAD_CIPHERTEXT || (i >= 2 && i < 6 && rc == KMS_ERR_USAGE),
                              "mode %d byte %zu bit %d: %d", mode, i, bit, rc);
                ck_assert_uint_eq(pl, 0);
            }
        ck_assert_int_eq(kms_field_open(&fk, "to", 2, ctx, cl, blob, n - 1, pt, sizeof(pt), &pl, NULL),
                         KMS_ERR_BAD_CIPHERTEXT);
        ck_assert_int_eq(kms_field_open(&fk, "from", 4, ctx, cl, blob, n, pt, sizeof(pt), &pl, NULL),
                         KMS_ERR_BAD_CIPHERTEXT);
        ck_assert_int_eq(kms_field_open(&fk, "to", 2, c2, l2, blob, n, pt, sizeof(pt), &pl, NULL),
                         KMS_ERR_BAD_CIPHERTEXT);
        ck_assert_str_eq(kms_err_detail(), "ciphertext or encryption context does not match");
        ck_assert_int_eq(kms_field_open(&fk, "to", 2, ctx, cl, blob, n, pt, sizeof(pt), &pl, NULL),
                         KMS_OK);
    }
    /* An empty value and the largest value round-trip. */
    static uint8_t big[KMS_FIELD_VALUE_MAX], bigblob[KMS_FIELD_BLOB_MAX], back[KMS_FIELD_VALUE_MAX];
    memset(big, 0x5a, sizeof(big));
    size_t n = 0;
    ck_assert_int_eq(kms_field_seal(&fk, KMS_FIELD_DETERMINISTIC, "v", 1, NULL, 0, big, sizeof(big),
                                    bigblob, sizeof(bigblob), &n),
                     KMS_OK);
    ck_assert_uint_eq(n, KMS_FIELD_BLOB_MAX);
    ck_assert_int_eq(kms_field_open(&fk, "v", 1, NULL, 0, bigblob, n, back, sizeof(back), &pl, NULL),
                     KMS_OK);
    ck_assert_uint_eq(pl, sizeof(big));
    ck_assert_int_eq(kms_field_seal(&fk, KMS_FIELD_RANDOMIZED, "v", 1, NULL, 0, NULL, 0, bigblob,
                                    sizeof(bigblob), &n),
                     KMS_OK);
    ck_assert_uint_eq(n, KMS_FIELD_OVERHEAD);
    ck_assert_int_eq(kms_field_open(&fk, "v", 1, NULL, 0, bigblob, n, back, sizeof(back), &pl, NULL),
                     KMS_OK);
    ck_assert_uint_eq(pl, 0);
    /* Over the limit, or into too small a buffer: refused, nothing made. */
    static uint8_t over[KMS_FIELD_VALUE_MAX + 1];
    ck_assert_int_eq(kms_field_seal(&fk, KMS_FIELD_RANDOMIZED, "v", 1, NULL, 0, over, sizeof(over),
                                    bigblob, sizeof(bigblob), &n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(kms_field_seal(&fk, KMS_FIELD_RANDOMIZED, "v", 1, NULL, 0, big, 10, bigblob,
                                    10 + KMS_FIELD_OVERHEAD - 1, &n),
                     KMS_ERR_USAGE);
    ck_assert_uint_eq(n, 0);
}
END_TEST

/* The keys are where the store says: under another id the same call finds
 * nothing, and in another region's token nothing either. */
START_TEST(hsm_wrong_key_refused)
{
    uint8_t blob[64], pt[64];
    size_t n = seal(KMS_FIELD_DETERMINISTIC, "to", NULL, 0, VALUE, blob), pl;
    struct kms_field_key other = fk;
    other.tok = env.us;
    ck_assert_int_eq(kms_field_open(&other, "to", 2, NULL, 0, blob, n, pt, sizeof(pt), &pl, NULL),
                     KMS_ERR_NOT_FOUND);
    /* A real metadata version made by the layer, as kmsd makes them. */
    struct kms_field_key gen = {env.eu, {{0}}, 1};
    ck_assert_int_eq(p11_key_id_new(env.eu, &gen.hsm_id), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_AES_ENCRYPT, 0, &gen.hsm_id, NULL), KMS_OK);
    ck_assert_int_eq(p11_key_generate(env.eu, P11_KEY_HMAC_SHA256, 0, &gen.hsm_id, NULL), KMS_OK);
    ck_assert_int_eq(kms_field_open(&gen, "to", 2, NULL, 0, blob, n, pt, sizeof(pt), &pl, NULL),
                     KMS_ERR_BAD_CIPHERTEXT);
    uint8_t b2[64];
    size_t n2 = 0;
    ck_assert_int_eq(kms_field_seal(&gen, KMS_FIELD_DETERMINISTIC, "to", 2, NULL, 0,
                                    (const uint8_t *)VALUE, strlen(VALUE), b2, sizeof(b2), &n2),
                     KMS_OK);
    ck_assert(memcmp(blob + 6, b2 + 6, 12) != 0); /* another key, another IV */
    ck_assert_int_eq(kms_field_open(&gen, "to", 2, NULL, 0, b2, n2, pt, sizeof(pt), &pl, NULL),
                     KMS_OK);
    p11_key_destroy(env.eu, &gen.hsm_id);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_fields");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, encodings_match_document);
    tcase_add_test(tc, blob_parse_refuses_malformed);
    tcase_add_test(tc, field_names);
    tcase_add_test(tc, index_truncation);
    suite_add_tcase(s, tc);

    tc = tcase_create("openssl");
    tcase_add_test(tc, example_with_openssl_alone);
    suite_add_tcase(s, tc);

    tc = tcase_create("hsm");
    tcase_add_checked_fixture(tc, hsm_setup, hsm_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, hsm_matches_document);
    tcase_add_test(tc, hsm_determinism_is_scoped);
    tcase_add_test(tc, hsm_every_change_refused);
    tcase_add_test(tc, hsm_wrong_key_refused);
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
