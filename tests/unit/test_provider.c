/*
 * test_provider.c - the custos OpenSSL provider module
 * ($CUSTOS_TEST_BUILD/lib/ossl-modules/custos.so) loaded into a library
 * context of its own, next to the default provider.
 *
 * Without a kmsd: init needs no address; bad URIs are refused before any
 * connection (a listening socket of the test counts connections); the
 * application's own keys keep working with custos loaded first.
 * With a kmsd (CUSTOS_PROVIDER_TEST_EC and _RSA name custos: URIs; set by
 * tests/e2e/test_provider.sh, which runs this binary against its own kmsd):
 * EVP_DigestSign verified by the default provider, the key on an SSL_CTX
 * with a certificate made by X509_sign with the same key, and signing again
 * in a forked child and then in the parent, four threads signing at once.
 */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/evp.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>

static OSSL_LIB_CTX *libctx;
static OSSL_PROVIDER *prov_custos, *prov_default;

static void load(void)
{
    const char *build = getenv("CUSTOS_TEST_BUILD");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/lib/ossl-modules", build ? build : "build");
    libctx = OSSL_LIB_CTX_new();
    ck_assert_ptr_nonnull(libctx);
    ck_assert_int_eq(OSSL_PROVIDER_set_default_search_path(libctx, dir), 1);
    /* custos first: it must not take over what the default provider does. */
    prov_custos = OSSL_PROVIDER_load(libctx, "custos");
    ck_assert_msg(prov_custos != NULL, "custos.so does not load from %s", dir);
    prov_default = OSSL_PROVIDER_load(libctx, "default");
    ck_assert_ptr_nonnull(prov_default);
}

static void unload(void)
{
    OSSL_PROVIDER_unload(prov_custos);
    OSSL_PROVIDER_unload(prov_default);
    OSSL_LIB_CTX_free(libctx);
    libctx = NULL;
}

/* Open uri; returns the key or NULL, with the error queue's text in err. */
static EVP_PKEY *open_key(const char *uri, char *err, size_t errlen)
{
    EVP_PKEY *pk = NULL;
    OSSL_STORE_CTX *sc;
    err[0] = '\0';
    ERR_clear_error();
    sc = OSSL_STORE_open_ex(uri, libctx, NULL, NULL, NULL, NULL, NULL, NULL);
    if (sc != NULL) {
        while (pk == NULL && !OSSL_STORE_eof(sc)) {
            OSSL_STORE_INFO *info = OSSL_STORE_load(sc);
            if (info == NULL)
                break;
            if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
                pk = OSSL_STORE_INFO_get1_PKEY(info);
            OSSL_STORE_INFO_free(info);
        }
        OSSL_STORE_close(sc);
    }
    unsigned long e;
    const char *data = NULL;
    int flags = 0;
    size_t used = 0;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0 && used + 1 < errlen) {
        int n = snprintf(err + used, errlen - used, "%s:%s;", ERR_reason_error_string(e)
                         ? ERR_reason_error_string(e) : "?",
                         (flags & ERR_TXT_STRING) && data ? data : "");
        if (n < 0)
            break;
        used += (size_t)n;
        if (used >= errlen)
            used = errlen - 1;
    }
    return pk;
}

/* ---- without kmsd -------------------------------------------------------- */

START_TEST(init_without_address)
{
    char err[2048];
    unsetenv("CUSTOS_ADDR");
    load(); /* does not fail: no network, no address needed yet */
    EVP_PKEY *pk = open_key("custos:key=0123456789abcdef0123456789abcdef", err, sizeof(err));
    ck_assert_ptr_null(pk);
    ck_assert_msg(strstr(err, "no kmsd address") != NULL, "error: %s", err);
    unload();
}
END_TEST

START_TEST(bad_uris_no_network)
{
    static const char *const bad[][2] = {
        {"custos:key=0123456789abcdef0123456789abcde", "32 hex digits"},     /* short */
        {"custos:key=0123456789abcdef0123456789abcdeg", "not hexadecimal"},  /* non-hex */
        {"custos:key=0123456789abcdef0123456789abcdef;version=0", "from 1"}, /* version 0 */
        {"custos:key=0123456789abcdef0123456789abcdef;version=01", "from 1"},
        {"custos:key=0123456789abcdef0123456789abcdef;version=1x", "after the version"},
        {"custos:key=0123456789abcdef0123456789abcdef;foo=1", "after the key id"},
        {"custos:key=0123456789abcdef0123456789abcdef0", "32 hex digits"},  /* long */
        {"custos:id=0123456789abcdef0123456789abcdef", "expected custos:key="},
    };
    char addr[64], err[2048];
    /* A listener that would see any connection the provider makes. */
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(ls, 8), 0);
    ck_assert_int_eq(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
    snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    setenv("CUSTOS_ADDR", addr, 1);
    load();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        EVP_PKEY *pk = open_key(bad[i][0], err, sizeof(err));
        ck_assert_msg(pk == NULL, "%s accepted", bad[i][0]);
        ck_assert_msg(strstr(err, "bad custos URI") && strstr(err, bad[i][1]),
                      "%s: error %s, want %s", bad[i][0], err, bad[i][1]);
    }
    /* Another scheme is not ours at all. */
    ck_assert_ptr_null(open_key("custosx:key=0123456789abcdef0123456789abcdef", err, sizeof(err)));
    ck_assert_int_eq(accept(ls, NULL, NULL), -1);
    ck_assert_int_eq(errno, EAGAIN);
    close(ls);
    unload();
}
END_TEST

/* An EC P-256 and an RSA key generated and used with custos loaded first:
 * generation, signing, verification and ECDH stay the default provider's. */
START_TEST(plain_keys_pass_through)
{
    static const unsigned char msg[] = "a message";
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    load();
    EVP_PKEY *keys[2] = {EVP_PKEY_Q_keygen(libctx, NULL, "EC", "P-256"),
                         EVP_PKEY_Q_keygen(libctx, NULL, "RSA", (size_t)2048)};
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(keys[i] != NULL, "key generation %d fails with custos loaded", i);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        siglen = sizeof(sig);
        ck_assert_int_eq(EVP_DigestSignInit_ex(md, NULL, "SHA384", libctx, NULL, keys[i], NULL), 1);
        ck_assert_int_eq(EVP_DigestSign(md, sig, &siglen, msg, sizeof(msg)), 1);
        EVP_MD_CTX_free(md);
        md = EVP_MD_CTX_new();
        ck_assert_int_eq(EVP_DigestVerifyInit_ex(md, NULL, "SHA384", libctx, NULL, keys[i], NULL), 1);
        ck_assert_int_eq(EVP_DigestVerify(md, sig, siglen, msg, sizeof(msg)), 1);
        EVP_MD_CTX_free(md);
    }
    EVP_PKEY *peer = EVP_PKEY_Q_keygen(libctx, NULL, "EC", "P-256");
    EVP_PKEY_CTX *dc = EVP_PKEY_CTX_new_from_pkey(libctx, keys[0], NULL);
    size_t slen = 0;
    ck_assert_int_eq(EVP_PKEY_derive_init(dc), 1);
    ck_assert_int_eq(EVP_PKEY_derive_set_peer(dc, peer), 1);
    ck_assert_int_eq(EVP_PKEY_derive(dc, NULL, &slen), 1);
    ck_assert_uint_eq(slen, 32);
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_free(peer);
    EVP_PKEY_free(keys[0]);
    EVP_PKEY_free(keys[1]);
    unload();
}
END_TEST

/* Alone in a library context, custos offers no digest, cipher, MAC, RNG,
 * key exchange or KDF: it cannot take over unrelated operations. */
START_TEST(registers_nothing_else)
{
    const char *build = getenv("CUSTOS_TEST_BUILD");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/lib/ossl-modules", build ? build : "build");
    OSSL_LIB_CTX *lc = OSSL_LIB_CTX_new();
    ck_assert_int_eq(OSSL_PROVIDER_set_default_search_path(lc, dir), 1);
    OSSL_PROVIDER *p = OSSL_PROVIDER_load(lc, "custos");
    ck_assert_ptr_nonnull(p);
    ERR_set_mark();
    EVP_MD *md = EVP_MD_fetch(lc, "SHA2-256", NULL);
    EVP_CIPHER *c = EVP_CIPHER_fetch(lc, "AES-256-GCM", NULL);
    EVP_MAC *mac = EVP_MAC_fetch(lc, "HMAC", NULL);
    EVP_RAND *r = EVP_RAND_fetch(lc, "CTR-DRBG", NULL);
    EVP_KEYEXCH *kx = EVP_KEYEXCH_fetch(lc, "ECDH", NULL);
    EVP_KDF *kdf = EVP_KDF_fetch(lc, "HKDF", NULL);
    EVP_SIGNATURE *sig = EVP_SIGNATURE_fetch(lc, "ECDSA", NULL);
    ERR_pop_to_mark();
    ck_assert_ptr_null(md);
    ck_assert_ptr_null(c);
    ck_assert_ptr_null(mac);
    ck_assert_ptr_null(r);
    ck_assert_ptr_null(kx);
    ck_assert_ptr_null(kdf);
    ck_assert_ptr_nonnull(sig); /* what it does offer */
    EVP_SIGNATURE_free(sig);
    EVP_MD_free(md);
    EVP_CIPHER_free(c);
    EVP_MAC_free(mac);
    EVP_RAND_free(r);
    EVP_KEYEXCH_free(kx);
    EVP_KDF_free(kdf);
    OSSL_PROVIDER_unload(p);
    OSSL_LIB_CTX_free(lc);
}
END_TEST

/* ---- with kmsd ------------------------------------------------------------- */

/* The public half alone, in a context with the default provider only. */
static EVP_PKEY *default_pubkey(OSSL_LIB_CTX *dctx, EVP_PKEY *pk)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(pk, &der);
    ck_assert_int_gt(n, 0);
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY_ex(NULL, &p, n, dctx, NULL);
    OPENSSL_free(der);
    ck_assert_ptr_nonnull(pub);
    return pub;
}

/* Sign msg with pk (custos) and verify with the default provider alone. */
static int sign_and_verify(EVP_PKEY *pk, int pss)
{
    static const unsigned char msg[] = "signed through kmsd";
    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    EVP_PKEY_CTX *pc = NULL;
    OSSL_LIB_CTX *dctx = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *dp = OSSL_PROVIDER_load(dctx, "default");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = EVP_DigestSignInit_ex(md, &pc, "SHA256", libctx, NULL, pk, NULL) == 1 &&
             (!pss || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1) &&
             EVP_DigestSign(md, sig, &siglen, msg, sizeof(msg)) == 1;
    EVP_MD_CTX_free(md);
    if (ok) {
        EVP_PKEY *pub = default_pubkey(dctx, pk);
        md = EVP_MD_CTX_new();
        ok = EVP_DigestVerifyInit_ex(md, &pc, "SHA256", dctx, NULL, pub, NULL) == 1 &&
             (!pss || (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
                       EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, 32) == 1)) &&
             EVP_DigestVerify(md, sig, siglen, msg, sizeof(msg)) == 1;
        /* And a changed message does not verify. */
        if (ok) {
            EVP_MD_CTX_reset(md);
            ok = EVP_DigestVerifyInit_ex(md, &pc, "SHA256", dctx, NULL, pub, NULL) == 1 &&
                 (!pss || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1) &&
                 EVP_DigestVerify(md, sig, siglen, msg, sizeof(msg) - 1) != 1;
        }
        EVP_MD_CTX_free(md);
        EVP_PKEY_free(pub);
    }
    OSSL_PROVIDER_unload(dp);
    OSSL_LIB_CTX_free(dctx);
    return ok;
}

static const char *need_env(const char *name)
{
    const char *v = getenv(name);
    ck_assert_msg(v && *v, "%s not set (tests/e2e/test_provider.sh sets it)", name);
    return v;
}

static void with_key(const char *env, void (*body)(EVP_PKEY *, int))
{
    char err[2048];
    load();
    EVP_PKEY *pk = open_key(need_env(env), err, sizeof(err));
    ck_assert_msg(pk != NULL, "%s does not open: %s", getenv(env), err);
    body(pk, strcmp(env, "CUSTOS_PROVIDER_TEST_RSA") == 0);
    EVP_PKEY_free(pk);
    unload();
}

static void body_sign(EVP_PKEY *pk, int rsa)
{
    ck_assert_msg(sign_and_verify(pk, 0), "EVP_DigestSign / default verify");
    if (rsa)
        ck_assert_msg(sign_and_verify(pk, 1), "PSS: EVP_DigestSign / default verify");
}

START_TEST(digest_sign_ec)
{
    with_key("CUSTOS_PROVIDER_TEST_EC", body_sign);
}
END_TEST

START_TEST(digest_sign_rsa)
{
    with_key("CUSTOS_PROVIDER_TEST_RSA", body_sign);
}
END_TEST

static void body_ssl(EVP_PKEY *pk, int rsa)
{
    (void)rsa;
    X509 *x = X509_new_ex(libctx, NULL);
    X509_NAME *n = X509_NAME_new();
    ck_assert_int_eq(X509_set_version(x, X509_VERSION_3), 1);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"custos-test", -1, -1,
                               0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    ck_assert_int_eq(X509_set_pubkey(x, pk), 1);
    ck_assert_int_gt(X509_sign(x, pk, EVP_sha256()), 0);
    /* The certificate verifies with its own (public) key... */
    ck_assert_int_eq(X509_verify(x, X509_get0_pubkey(x)), 1);
    ck_assert_int_eq(X509_check_private_key(x, pk), 1);
    /* ... and the key goes on an SSL_CTX with it. */
    SSL_CTX *sctx = SSL_CTX_new_ex(libctx, NULL, TLS_server_method());
    ck_assert_ptr_nonnull(sctx);
    ck_assert_int_eq(SSL_CTX_use_certificate(sctx, x), 1);
    ck_assert_int_eq(SSL_CTX_use_PrivateKey(sctx, pk), 1);
    ck_assert_int_eq(SSL_CTX_check_private_key(sctx), 1);
    SSL_CTX_free(sctx);
    X509_NAME_free(n);
    X509_free(x);
}

START_TEST(ssl_ctx_ec)
{
    with_key("CUSTOS_PROVIDER_TEST_EC", body_ssl);
}
END_TEST

START_TEST(ssl_ctx_rsa)
{
    with_key("CUSTOS_PROVIDER_TEST_RSA", body_ssl);
}
END_TEST

/* The parent signs (a pooled connection), forks; the child signs on a
 * connection of its own; then the parent signs again on its own. */
static void body_fork(EVP_PKEY *pk, int rsa)
{
    (void)rsa;
    ck_assert_msg(sign_and_verify(pk, 0), "parent, before fork");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(sign_and_verify(pk, 0) && sign_and_verify(pk, 0) ? 0 : 1);
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "signing in the forked child failed");
    ck_assert_msg(sign_and_verify(pk, 0), "parent, after fork");
}

/* Four threads sign at once: each takes its own pooled connection. */
static void *sign_thread(void *pk)
{
    int ok = 1;
    for (int i = 0; i < 3; i++)
        ok &= sign_and_verify(pk, 0);
    return ok ? pk : NULL;
}

static void body_threads(EVP_PKEY *pk, int rsa)
{
    pthread_t t[4];
    (void)rsa;
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, sign_thread, pk), 0);
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        ck_assert_int_eq(pthread_join(t[i], &r), 0);
        ck_assert_msg(r == pk, "thread %d: a signature failed", i);
    }
}

START_TEST(threads_ec)
{
    with_key("CUSTOS_PROVIDER_TEST_EC", body_threads);
}
END_TEST

START_TEST(fork_ec)
{
    with_key("CUSTOS_PROVIDER_TEST_EC", body_fork);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("provider");
    TCase *tc = tcase_create("no kmsd");
    tcase_add_test(tc, init_without_address);
    tcase_add_test(tc, bad_uris_no_network);
    tcase_add_test(tc, plain_keys_pass_through);
    tcase_add_test(tc, registers_nothing_else);
    suite_add_tcase(s, tc);
    /* The kmsd cases run when tests/e2e/test_provider.sh runs this binary
     * against its kmsd; run-tests.sh's own pass covers the rest. */
    if (getenv("CUSTOS_PROVIDER_TEST_EC")) {
        tc = tcase_create("kmsd");
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, digest_sign_ec);
        tcase_add_test(tc, digest_sign_rsa);
        tcase_add_test(tc, ssl_ctx_ec);
        tcase_add_test(tc, ssl_ctx_rsa);
        tcase_add_test(tc, fork_ec);
        tcase_add_test(tc, threads_ec);
        suite_add_tcase(s, tc);
    } else {
        printf("test_provider: kmsd cases run from tests/e2e/test_provider.sh\n");
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
