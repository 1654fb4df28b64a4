/*
 * kms_tls_key.c - the TLS private key in the HSM, as a GnuTLS external key
 * (kms_tls_key.h).
 *
 * GnuTLS calls sign_hash with a digest for ECDSA and RSA-PSS, and with a
 * DER DigestInfo under GNUTLS_SIGN_RSA_RAW for RSA PKCS#1 v1.5 (TLS 1.2);
 * the info callback tells it which signature algorithms the key can make,
 * which is how the handshake settles on one the token serves.
 */
#include "kms_tls_key.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "kms_config.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "p11_tls_key.h"

/* Longest certificate chain accepted in tls.cert. */
#define KMS_TLS_CHAIN_MAX 16

struct kms_tls_key {
    struct p11_tls_key *p11;
    gnutls_pcert_st pcerts[KMS_TLS_CHAIN_MAX];
    unsigned n_pcerts;
    gnutls_privkey_t privkey;
    char uri[P11_TLS_URI_MAX + 1];
    _Atomic uint64_t last_warn_ns; /* monotonic; 0: never warned */
    atomic_ulong failures;         /* signatures failed since the last warning */
};

/* The open key (see the header: MHD's callback has no context). */
static _Atomic(struct kms_tls_key *) active;

static bool sig_hash(gnutls_digest_algorithm_t d, enum p11_tls_hash *out)
{
    switch (d) {
    case GNUTLS_DIG_SHA256: *out = P11_TLS_SHA256; return true;
    case GNUTLS_DIG_SHA384: *out = P11_TLS_SHA384; return true;
    case GNUTLS_DIG_SHA512: *out = P11_TLS_SHA512; return true;
    default: return false;
    }
}

/* Can the key make signature algorithm `algo`? SHA-2 only; ECDSA for the
 * EC key; RSA-PSS with an rsaEncryption certificate (RSAE) and PKCS#1 v1.5
 * for the RSA key. */
static bool key_can(const struct kms_tls_key *k, gnutls_sign_algorithm_t algo)
{
    if (p11_tls_key_type(k->p11) == P11_TLS_KEY_EC_P256)
        return algo == GNUTLS_SIGN_ECDSA_SECP256R1_SHA256 || algo == GNUTLS_SIGN_ECDSA_SHA256 ||
               algo == GNUTLS_SIGN_ECDSA_SHA384 || algo == GNUTLS_SIGN_ECDSA_SHA512;
    return algo == GNUTLS_SIGN_RSA_PSS_RSAE_SHA256 || algo == GNUTLS_SIGN_RSA_PSS_RSAE_SHA384 ||
           algo == GNUTLS_SIGN_RSA_PSS_RSAE_SHA512 || algo == GNUTLS_SIGN_RSA_SHA256 ||
           algo == GNUTLS_SIGN_RSA_SHA384 || algo == GNUTLS_SIGN_RSA_SHA512;
}

static int key_info(gnutls_privkey_t pk, unsigned int flags, void *userdata)
{
    (void)pk;
    const struct kms_tls_key *k = userdata;
    bool ec = p11_tls_key_type(k->p11) == P11_TLS_KEY_EC_P256;
    if (flags & GNUTLS_PRIVKEY_INFO_HAVE_SIGN_ALGO)
        return key_can(k, (gnutls_sign_algorithm_t)GNUTLS_FLAGS_TO_SIGN_ALGO(flags)) ? 1 : 0;
    if (flags == GNUTLS_PRIVKEY_INFO_PK_ALGO)
        return ec ? GNUTLS_PK_ECDSA : GNUTLS_PK_RSA;
    if (flags == GNUTLS_PRIVKEY_INFO_PK_ALGO_BITS)
        return (int)p11_tls_key_bits(k->p11);
    if (flags == GNUTLS_PRIVKEY_INFO_SIGN_ALGO)
        return ec ? GNUTLS_SIGN_ECDSA_SECP256R1_SHA256 : GNUTLS_SIGN_RSA_PSS_RSAE_SHA256;
    return -1;
}

static int key_sign_hash(gnutls_privkey_t pk, gnutls_sign_algorithm_t algo, void *userdata,
                         unsigned int flags, const gnutls_datum_t *hash, gnutls_datum_t *signature)
{
    (void)pk;
    (void)flags;
    struct kms_tls_key *k = userdata;
    enum p11_tls_sig sig;
    enum p11_tls_hash h;
    if (algo == GNUTLS_SIGN_RSA_RAW) {
        /* PKCS#1 v1.5: a DigestInfo (19-byte header + digest); which hash
         * it holds is told by its length and checked in p11_tls_key_sign.
         * Anything else (TLS 1.0/1.1's MD5+SHA-1) is refused quietly: a
         * client choosing an old protocol is not an HSM problem. */
        sig = P11_TLS_SIG_RSA_PKCS1;
        if (hash->size == 19 + 32)
            h = P11_TLS_SHA256;
        else if (hash->size == 19 + 48)
            h = P11_TLS_SHA384;
        else if (hash->size == 19 + 64)
            h = P11_TLS_SHA512;
        else
            return GNUTLS_E_UNSUPPORTED_SIGNATURE_ALGORITHM;
    } else {
        gnutls_pk_algorithm_t spk = gnutls_sign_get_pk_algorithm(algo);
        if (!key_can(k, algo) || !sig_hash(gnutls_sign_get_hash_algorithm(algo), &h))
            return GNUTLS_E_UNSUPPORTED_SIGNATURE_ALGORITHM;
        if (spk == GNUTLS_PK_ECDSA)
            sig = P11_TLS_SIG_ECDSA;
        else if (spk == GNUTLS_PK_RSA_PSS)
            sig = P11_TLS_SIG_RSA_PSS;
        else
            return GNUTLS_E_UNSUPPORTED_SIGNATURE_ALGORITHM;
    }
    uint8_t out[P11_TLS_SIG_MAX];
    size_t n = sizeof(out);
    kms_err rc = p11_tls_key_sign(k->p11, sig, h, hash->data, hash->size, out, &n);
    if (rc != KMS_OK) {
        /* One line per 10 s at most: while the token is away every client
         * retry fails here, and the token's own state is logged by pkcs11/. */
        uint64_t now = kms_metrics_now_ns();
        uint64_t last = atomic_load(&k->last_warn_ns);
        unsigned long missed = atomic_fetch_add(&k->failures, 1) + 1;
        if ((last == 0 || now - last >= 10ull * 1000000000u) &&
            atomic_compare_exchange_strong(&k->last_warn_ns, &last, now)) {
            atomic_store(&k->failures, 0);
            kms_log_warn("http",
                         "TLS handshake: the key %s did not sign (%s): %s (%lu failed since the "
                         "last such line)",
                         k->uri, gnutls_sign_get_name(algo) ? gnutls_sign_get_name(algo) : "?",
                         kms_err_detail(), missed);
        }
        return GNUTLS_E_PK_SIGN_FAILED;
    }
    signature->data = gnutls_malloc(n);
    if (signature->data == NULL)
        return GNUTLS_E_MEMORY_ERROR;
    memcpy(signature->data, out, n);
    signature->size = (unsigned)n;
    return 0;
}

int kms_tls_key_retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_rdn, int nreqs,
                         const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                         gnutls_pcert_st **pcert, unsigned int *pcert_length,
                         gnutls_privkey_t *privkey)
{
    (void)session;
    (void)req_ca_rdn;
    (void)nreqs;
    (void)pk_algos;
    (void)pk_algos_length;
    struct kms_tls_key *k = atomic_load(&active);
    if (k == NULL)
        return -1;
    /* Owned by k, never released by GnuTLS (retrieve_function2). */
    *pcert = k->pcerts;
    *pcert_length = k->n_pcerts;
    *privkey = k->privkey;
    return 0;
}

static const char *pk_name(gnutls_pk_algorithm_t pk)
{
    const char *n = gnutls_pk_get_name(pk);
    return n ? n : "unknown";
}

/* Sign a random digest with the key in the token, through GnuTLS's own
 * external-key path, and verify it under the certificate's public key. */
static kms_err check_match(struct kms_tls_key *k, gnutls_sign_algorithm_t algo)
{
    uint8_t d[32];
    KMS_ENSURE(gnutls_rnd(GNUTLS_RND_NONCE, d, sizeof(d)) == 0, KMS_ERR_INTERNAL,
               "gnutls_rnd failed");
    gnutls_datum_t hash = {d, sizeof(d)}, sig = {NULL, 0};
    kms_err_clear();
    int grc = gnutls_privkey_sign_hash2(k->privkey, algo, 0, &hash, &sig);
    if (grc < 0)
        return kms_err_set(KMS_ERR_CONFIG, "tls.key_uri '%s': test signature (%s) failed: %s%s%s",
                           k->uri, gnutls_sign_get_name(algo), gnutls_strerror(grc),
                           kms_err_detail()[0] ? ": " : "", kms_err_detail());
    grc = gnutls_pubkey_verify_hash2(k->pcerts[0].pubkey, algo, 0, &hash, &sig);
    gnutls_free(sig.data);
    KMS_ENSURE(grc >= 0, KMS_ERR_CONFIG,
               "tls.key_uri '%s' does not match tls.cert: a signature (%s) made by the key in the "
               "token does not verify under the certificate's public key",
               k->uri, gnutls_sign_get_name(algo));
    return KMS_OK;
}

kms_err kms_tls_key_open(struct kms_service *svc, const char *cert_pem, const char *uri,
                         struct kms_tls_key **out)
{
    *out = NULL;
    KMS_ENSURE(atomic_load(&active) == NULL, KMS_ERR_USAGE, "a TLS key is open already");
    const struct kms_config *cfg = kms_service_config(svc);
    struct p11_token *toks[KMS_CONFIG_MAX_TOKENS] = {0};
    for (size_t i = 0; i < cfg->n_tokens && i < KMS_CONFIG_MAX_TOKENS; i++)
        toks[i] = kms_service_token(svc, cfg->tokens[i].region);

    struct kms_tls_key *k = calloc(1, sizeof(*k));
    KMS_ENSURE(k != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = KMS_OK;
    KMS_GUARD_GOTO(p11_tls_key_open(toks, cfg->n_tokens, uri, &k->p11), fail);
    /* Safe to print from here on: p11_tls_key_open refused a URI with a PIN. */
    snprintf(k->uri, sizeof(k->uri), "%s", uri);

    gnutls_datum_t pem = {(unsigned char *)cert_pem, (unsigned)strlen(cert_pem)};
    unsigned n = KMS_TLS_CHAIN_MAX;
    int grc = gnutls_pcert_list_import_x509_raw(k->pcerts, &n, &pem, GNUTLS_X509_FMT_PEM, 0);
    KMS_ENSURE_GOTO(grc >= 0 && n > 0, fail, KMS_ERR_CONFIG,
                    "tls.cert: not a PEM certificate chain of 1..%d certificates: %s",
                    KMS_TLS_CHAIN_MAX, grc < 0 ? gnutls_strerror(grc) : "none found");
    k->n_pcerts = n;

    bool ec = p11_tls_key_type(k->p11) == P11_TLS_KEY_EC_P256;
    unsigned cbits = 0;
    int cpk = gnutls_pubkey_get_pk_algorithm(k->pcerts[0].pubkey, &cbits);
    KMS_ENSURE_GOTO(cpk == (ec ? GNUTLS_PK_ECDSA : GNUTLS_PK_RSA), fail, KMS_ERR_CONFIG,
                    "tls.key_uri '%s' does not match tls.cert: the certificate's key is %s, the "
                    "key in the token is %s",
                    k->uri, cpk < 0 ? "unreadable" : pk_name((gnutls_pk_algorithm_t)cpk),
                    ec ? "EC P-256" : "RSA");

    KMS_ENSURE_GOTO(gnutls_privkey_init(&k->privkey) == 0, fail, KMS_ERR_NOMEM, "out of memory");
    grc = gnutls_privkey_import_ext4(k->privkey, k, NULL, key_sign_hash, NULL, NULL, key_info, 0);
    KMS_ENSURE_GOTO(grc == 0, fail, KMS_ERR_INTERNAL, "gnutls_privkey_import_ext4: %s",
                    gnutls_strerror(grc));
    if (ec) {
        KMS_GUARD_GOTO(check_match(k, GNUTLS_SIGN_ECDSA_SHA256), fail);
    } else {
        /* Both paths a handshake can take: PSS (TLS 1.3) and PKCS#1 v1.5. */
        KMS_GUARD_GOTO(check_match(k, GNUTLS_SIGN_RSA_PSS_RSAE_SHA256), fail);
        KMS_GUARD_GOTO(check_match(k, GNUTLS_SIGN_RSA_SHA256), fail);
    }

    struct p11_token *tok = p11_tls_key_token(k->p11);
    kms_log_info("http", "TLS private key %s: %s%u in token '%s' (region %s), signing in the HSM",
                 k->uri, ec ? "EC P-" : "RSA-", p11_tls_key_bits(k->p11), p11_token_label(tok),
                 p11_token_region(tok));
    atomic_store(&active, k);
    *out = k;
    return KMS_OK;
fail:
    kms_tls_key_free(k);
    return rc;
}

void kms_tls_key_free(struct kms_tls_key *key)
{
    if (key == NULL)
        return;
    struct kms_tls_key *expected = key;
    atomic_compare_exchange_strong(&active, &expected, NULL);
    if (key->privkey)
        gnutls_privkey_deinit(key->privkey);
    for (unsigned i = 0; i < key->n_pcerts; i++)
        gnutls_pcert_deinit(&key->pcerts[i]);
    p11_tls_key_free(key->p11);
    free(key);
}
