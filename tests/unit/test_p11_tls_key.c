/*
 * test_p11_tls_key.c - kmsd's TLS key in a token: found by RFC 7512 URI
 * among the open tokens; ECDSA signatures come out as DER that OpenSSL
 * parses and the token verifies; RSA-PSS and PKCS#1 v1.5 signatures verify
 * in the token; a key replaced under the same label is found again (stale
 * handle), as after the pool drops its cached handles; inputs that are not a digest (or DigestInfo) of the named
 * hash, and algorithms the key cannot make, are refused; URIs that name no
 * key, two keys, a public key, or carry a PIN are refused without echoing
 * the PIN.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/rand.h>

#include "kms_error.h"
#include "p11_internal.h"
#include "p11_tls_key.h"
#include "testenv.h"

static struct testenv env;
static char label[64]; /* unique per test: tokens outlive the binary */

static void setup(void)
{
    testenv_open(&env);
    uint8_t r[6];
    ck_assert_int_eq(RAND_bytes(r, sizeof(r)), 1);
    snprintf(label, sizeof(label), "tls-test-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3],
             r[4], r[5]);
}

struct gen_arg {
    bool rsa;
    const char *label;
    uint8_t id[4];
    CK_OBJECT_HANDLE pub, priv;
};

static kms_err do_gen(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct gen_arg *a = varg;
    static const uint8_t p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ULONG bits = 2048;
    uint8_t e[] = {1, 0, 1};
    CK_ATTRIBUTE pub[8] = {
        {CKA_TOKEN, &t, 1}, {CKA_VERIFY, &t, 1}, {CKA_ENCRYPT, &f, 1}, {CKA_WRAP, &f, 1},
        {CKA_LABEL, (void *)a->label, strlen(a->label)}, {CKA_ID, a->id, sizeof(a->id)},
    };
    CK_ULONG npub = 6;
    if (a->rsa) {
        pub[npub++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        pub[npub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, e, sizeof(e)};
    } else {
        pub[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)p256, sizeof(p256)};
    }
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &t, 1},     {CKA_PRIVATE, &t, 1},  {CKA_SENSITIVE, &t, 1},
        {CKA_EXTRACTABLE, &f, 1}, {CKA_SIGN, &t, 1},   {CKA_DECRYPT, &f, 1},
        {CKA_UNWRAP, &f, 1},    {CKA_DERIVE, &f, 1},
        {CKA_LABEL, (void *)a->label, strlen(a->label)}, {CKA_ID, a->id, sizeof(a->id)},
    };
    CK_MECHANISM m = {a->rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_RV rv = tok->fl->C_GenerateKeyPair(s, &m, pub, npub, priv, sizeof(priv) / sizeof(priv[0]),
                                          &a->pub, &a->priv);
    return rv == CKR_OK ? KMS_OK : kms_err_set(KMS_ERR_HSM, "C_GenerateKeyPair: 0x%lx", rv);
}

static struct gen_arg gen(struct p11_token *tok, bool rsa, uint8_t id0)
{
    struct gen_arg a = {.rsa = rsa, .label = label, .id = {0xc0, 0x57, 0x05, id0}};
    ck_assert_msg(p11_with_session(tok, do_gen, &a) == KMS_OK, "%s", kms_err_detail());
    return a;
}

static kms_err do_destroy(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    (void)varg;
    CK_ATTRIBUTE t = {CKA_LABEL, label, strlen(label)};
    CK_OBJECT_HANDLE hs[16];
    CK_ULONG n = 0;
    if (tok->fl->C_FindObjectsInit(s, &t, 1) == CKR_OK) {
        tok->fl->C_FindObjects(s, hs, 16, &n);
        tok->fl->C_FindObjectsFinal(s);
    }
    for (CK_ULONG i = 0; i < n; i++)
        tok->fl->C_DestroyObject(s, hs[i]);
    return KMS_OK;
}

static void teardown(void)
{
    p11_with_session(env.eu, do_destroy, NULL);
    p11_with_session(env.us, do_destroy, NULL);
    testenv_close(&env);
}

struct verify_arg {
    CK_MECHANISM mech;
    const struct gen_arg *key;
    const uint8_t *data, *sig;
    size_t data_len, sig_len;
};

/* Verify with the public half, found by label and id in this session:
 * handles do not outlive the pool's sessions (SoftHSMv2 renumbers them
 * when a slot's last session closes, as after a replaced session). */
static kms_err do_verify(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct verify_arg *a = varg;
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[3] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_LABEL, (void *)a->key->label, strlen(a->key->label)},
                         {CKA_ID, (void *)a->key->id, sizeof(a->key->id)}};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    if (tok->fl->C_FindObjectsInit(s, t, 3) == CKR_OK) {
        tok->fl->C_FindObjects(s, &pub, 1, &n);
        tok->fl->C_FindObjectsFinal(s);
    }
    if (n != 1)
        return kms_err_set(KMS_ERR_NOT_FOUND, "public key not found");
    CK_RV rv = tok->fl->C_VerifyInit(s, &a->mech, pub);
    if (rv == CKR_OK)
        rv = tok->fl->C_Verify(s, (CK_BYTE_PTR)a->data, a->data_len, (CK_BYTE_PTR)a->sig,
                               a->sig_len);
    return rv == CKR_OK ? KMS_OK : kms_err_set(KMS_ERR_BAD_CIPHERTEXT, "C_Verify: 0x%lx", rv);
}

static struct p11_tls_key *open_ok(const char *fmt)
{
    char uri[256];
    snprintf(uri, sizeof(uri), fmt, label);
    struct p11_token *toks[2] = {env.eu, env.us};
    struct p11_tls_key *k = NULL;
    kms_err rc = p11_tls_key_open(toks, 2, uri, &k);
    ck_assert_msg(rc == KMS_OK, "%s: %s", uri, kms_err_detail());
    return k;
}

static const char *open_err(const char *fmt)
{
    char uri[256];
    snprintf(uri, sizeof(uri), fmt, label);
    struct p11_token *toks[2] = {env.eu, env.us};
    struct p11_tls_key *k = NULL;
    kms_err_clear();
    ck_assert_int_eq(p11_tls_key_open(toks, 2, uri, &k), KMS_ERR_CONFIG);
    ck_assert_ptr_null(k);
    return kms_err_detail();
}

START_TEST(ecdsa_der_verifies)
{
    struct gen_arg g = gen(env.eu, false, 1);
    struct p11_tls_key *k = open_ok("pkcs11:token=custos-eu-west;object=%s;type=private");
    ck_assert_int_eq(p11_tls_key_type(k), P11_TLS_KEY_EC_P256);
    ck_assert_uint_eq(p11_tls_key_bits(k), 256);
    ck_assert_ptr_eq(p11_tls_key_token(k), env.eu);
    /* Enough signatures that r or s with the top bit set (a DER 0x00 pad)
     * comes up, and each must parse as DER and verify in the token. */
    for (int i = 0; i < 24; i++) {
        uint8_t d[32], sig[P11_TLS_SIG_MAX];
        size_t n = sizeof(sig);
        ck_assert_int_eq(RAND_bytes(d, sizeof(d)), 1);
        ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_ECDSA, P11_TLS_SHA256, d, 32, sig, &n),
                         KMS_OK);
        const uint8_t *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
        ck_assert_ptr_nonnull(es);
        ck_assert_ptr_eq(p, sig + n); /* exactly one DER value, nothing after it */
        uint8_t rs[64];
        ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, 32), 32);
        ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + 32, 32), 32);
        ECDSA_SIG_free(es);
        struct verify_arg v = {{CKM_ECDSA, NULL, 0}, &g, d, rs, 32, 64};
        ck_assert_int_eq(p11_with_session(env.eu, do_verify, &v), KMS_OK);
    }
    /* The pair replaced under the same label and id (the old handle now
     * names nothing): the stale handle is dropped, the new key found and
     * used, its signature verifying under the new public key. */
    p11_with_session(env.eu, do_destroy, NULL);
    struct gen_arg g2 = gen(env.eu, false, 1);
    for (int i = 0; i < 2; i++) {
        uint8_t d[32] = {(uint8_t)i}, sig[P11_TLS_SIG_MAX], rs[64];
        size_t n = sizeof(sig);
        ck_assert_msg(p11_tls_key_sign(k, P11_TLS_SIG_ECDSA, P11_TLS_SHA256, d, 32, sig, &n) ==
                          KMS_OK,
                      "%s", kms_err_detail());
        const uint8_t *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
        ck_assert_ptr_nonnull(es);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + 32, 32);
        ECDSA_SIG_free(es);
        struct verify_arg v = {{CKM_ECDSA, NULL, 0}, &g2, d, rs, 32, 64};
        ck_assert_msg(p11_with_session(env.eu, do_verify, &v) == KMS_OK, "round %d", i);
        /* Second round: after the pool dropped every cached handle. */
        p11_cache_clear(&env.eu->cache);
    }
    /* SHA-384 digests are signed too (TLS 1.2 may ask for them). */
    uint8_t d48[48] = {1}, sig[P11_TLS_SIG_MAX];
    size_t n = sizeof(sig);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_ECDSA, P11_TLS_SHA384, d48, 48, sig, &n),
                     KMS_OK);
    /* Not a digest of the hash named; algorithms an EC key cannot make. */
    n = sizeof(sig);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_ECDSA, P11_TLS_SHA256, d48, 20, sig, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PSS, P11_TLS_SHA256, d48, 32, sig, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PKCS1, P11_TLS_SHA256, d48, 32, sig, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    p11_tls_key_free(k);
}
END_TEST

START_TEST(rsa_pss_and_pkcs1_verify)
{
    struct gen_arg g = gen(env.us, true, 2);
    /* By id alone (percent-encoded bytes), in whichever token holds it. */
    struct p11_tls_key *k = open_ok("pkcs11:id=%%c0%%57%%05%%02;object=%s");
    ck_assert_int_eq(p11_tls_key_type(k), P11_TLS_KEY_RSA);
    ck_assert_uint_eq(p11_tls_key_bits(k), 2048);
    ck_assert_ptr_eq(p11_tls_key_token(k), env.us);
    uint8_t d[32], sig[P11_TLS_SIG_MAX];
    ck_assert_int_eq(RAND_bytes(d, sizeof(d)), 1);
    size_t n = sizeof(sig);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PSS, P11_TLS_SHA256, d, 32, sig, &n),
                     KMS_OK);
    ck_assert_uint_eq(n, 256);
    CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    struct verify_arg v = {{CKM_RSA_PKCS_PSS, &pss, sizeof(pss)}, &g, d, sig, 32, n};
    ck_assert_int_eq(p11_with_session(env.us, do_verify, &v), KMS_OK);

    uint8_t di[51] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                      0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    memcpy(di + 19, d, 32);
    n = sizeof(sig);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PKCS1, P11_TLS_SHA256, di, 51, sig, &n),
                     KMS_OK);
    struct verify_arg v1 = {{CKM_RSA_PKCS, NULL, 0}, &g, di, sig, 51, n};
    ck_assert_int_eq(p11_with_session(env.us, do_verify, &v1), KMS_OK);

    /* A DigestInfo of another hash (SHA-1's OID), or one of the right
     * length under another prefix, is not signed: the raw mechanism would
     * sign anything. */
    uint8_t sha1_di[35] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                           0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
    n = sizeof(sig);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PKCS1, P11_TLS_SHA256, sha1_di, 35, sig,
                                      &n),
                     KMS_ERR_INVALID_ARGUMENT);
    di[14] = 0x02; /* SHA-384's OID with SHA-256's length */
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_RSA_PKCS1, P11_TLS_SHA256, di, 51, sig, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(p11_tls_key_sign(k, P11_TLS_SIG_ECDSA, P11_TLS_SHA256, d, 32, sig, &n),
                     KMS_ERR_INVALID_ARGUMENT);
    p11_tls_key_free(k);
}
END_TEST

START_TEST(uri_refusals)
{
    gen(env.eu, false, 3);
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:token=custos-eu-west;object=%s-not"),
                                 "no private key matches it"));
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:token=custos-mars;object=%s"),
                                 "no configured token matches it"));
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:object=%s;type=public"),
                                 "type= must be private"));
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:token=custos-eu-west"), "names no object"));
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:object=%%zz%s"), "not a valid PKCS#11 URI"));
    ck_assert_ptr_nonnull(strstr(open_err("object=%s"), "must be a pkcs11: URI"));
    const char *d = open_err("pkcs11:object=%s;pin-value=s3cr3t-PIN");
    ck_assert_ptr_nonnull(strstr(d, "must not carry a PIN"));
    ck_assert_ptr_null(strstr(d, "s3cr3t-PIN"));
    d = open_err("pkcs11:object=%s?pin-value=s3cr3t-PIN");
    ck_assert_ptr_null(strstr(d, "s3cr3t-PIN"));
    /* A second pair under the same label, in the other token: ambiguous
     * until the URI names the token. */
    gen(env.us, false, 4);
    ck_assert_ptr_nonnull(strstr(open_err("pkcs11:object=%s"), "more than one private key"));
    p11_tls_key_free(open_ok("pkcs11:token=custos-us-east;object=%s"));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("p11_tls_key");
    TCase *tc = tcase_create("tls_key");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, ecdsa_der_verifies);
    tcase_add_test(tc, rsa_pss_and_pkcs1_verify);
    tcase_add_test(tc, uri_refusals);
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
