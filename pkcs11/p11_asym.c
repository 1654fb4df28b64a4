/*
 * p11_asym.c - signing key pairs: capability check, templates (one place
 * per half), generation with read-back, SPKI export, sign and verify of
 * SHA-256 digests, escrow wrap / lock / restore of the private half.
 */
#include "p11_asym.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kms_log.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_rv.h"

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

/* DER OID of prime256v1 / secp256r1: CKA_EC_PARAMS of a P-256 key. */
static CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static CK_BYTE rsa_exponent[] = {0x01, 0x00, 0x01};

/* DER DigestInfo prefix of SHA-256 (RFC 8017 section 9.2, note 1):
 * CKM_RSA_PKCS signs DigestInfo || digest and pads it, nothing more. */
static const uint8_t sha256_digest_info[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                               0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                               0x01, 0x05, 0x00, 0x04, 0x20};

/* The fixed digest a restored pair signs and verifies to prove that its
 * two halves belong together. Not secret. */
static const uint8_t pair_probe[32] = "custos restore pair probe v1....";

const char *p11_asym_kind_name(enum p11_asym_kind kind)
{
    switch (kind) {
    case P11_ASYM_EC_P256:
        return "ECDSA P-256";
    case P11_ASYM_RSA_2048:
        return "RSA-2048";
    case P11_ASYM_RSA_3072:
        return "RSA-3072";
    case P11_ASYM_RSA_4096:
        return "RSA-4096";
    }
    return "unknown";
}

const char *p11_sig_alg_name(enum p11_sig_alg alg)
{
    switch (alg) {
    case P11_SIG_ECDSA_SHA256:
        return "ECDSA_SHA_256";
    case P11_SIG_RSA_PSS_SHA256:
        return "RSASSA_PSS_SHA_256";
    case P11_SIG_RSA_PKCS1_SHA256:
        return "RSASSA_PKCS1_V1_5_SHA_256";
    }
    return "unknown";
}

static bool kind_valid(enum p11_asym_kind kind)
{
    return (unsigned)kind <= (unsigned)P11_ASYM_RSA_4096;
}

static bool alg_valid(enum p11_sig_alg alg)
{
    return (unsigned)alg <= (unsigned)P11_SIG_RSA_PKCS1_SHA256;
}

unsigned p11_asym_kind_bits(enum p11_asym_kind kind)
{
    switch (kind) {
    case P11_ASYM_EC_P256:
        return 256;
    case P11_ASYM_RSA_2048:
        return 2048;
    case P11_ASYM_RSA_3072:
        return 3072;
    case P11_ASYM_RSA_4096:
        return 4096;
    }
    return 0;
}

static bool kind_is_ec(enum p11_asym_kind kind)
{
    return kind == P11_ASYM_EC_P256;
}

bool p11_sig_alg_fits(enum p11_asym_kind kind, enum p11_sig_alg alg)
{
    if (!kind_valid(kind) || !alg_valid(alg))
        return false;
    return kind_is_ec(kind) == (alg == P11_SIG_ECDSA_SHA256);
}

/* ---- capabilities -------------------------------------------------------- */

struct mech_need {
    CK_MECHANISM_TYPE mech;
    CK_FLAGS flags;
    const char *name;
};

/* Is mech listed with every flag of `flags` and a key size range holding
 * `bits`? EC and RSA mechanisms give key sizes in bits (PKCS#11 2.40 s.2). */
static bool mech_ok(const struct p11_token *tok, const struct mech_need *n, unsigned bits)
{
    for (size_t i = 0; i < tok->n_mechs; i++) {
        if (tok->mechs[i] != n->mech)
            continue;
        const CK_MECHANISM_INFO *mi = &tok->mech_info[i];
        if ((mi->flags & n->flags) != n->flags)
            return false;
        /* 0..0 is what a module reports when it does not restrict sizes. */
        if (mi->ulMaxKeySize != 0 && (mi->ulMinKeySize > bits || mi->ulMaxKeySize < bits))
            return false;
        return true;
    }
    return false;
}

kms_err p11_asym_supported(struct p11_token *tok, enum p11_asym_kind kind)
{
    KMS_ENSURE(kind_valid(kind), KMS_ERR_INVALID_ARGUMENT, "unknown key pair kind %d", (int)kind);
    static const struct mech_need ec[] = {
        {CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "CKM_EC_KEY_PAIR_GEN"},
        {CKM_ECDSA, CKF_SIGN | CKF_VERIFY, "CKM_ECDSA sign/verify"},
    };
    static const struct mech_need rsa[] = {
        {CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "CKM_RSA_PKCS_KEY_PAIR_GEN"},
        {CKM_RSA_PKCS_PSS, CKF_SIGN | CKF_VERIFY, "CKM_RSA_PKCS_PSS sign/verify"},
        {CKM_RSA_PKCS, CKF_SIGN | CKF_VERIFY, "CKM_RSA_PKCS sign/verify"},
    };
    const struct mech_need *need = kind_is_ec(kind) ? ec : rsa;
    size_t n = kind_is_ec(kind) ? sizeof(ec) / sizeof(ec[0]) : sizeof(rsa) / sizeof(rsa[0]);
    unsigned bits = p11_asym_kind_bits(kind);
    for (size_t i = 0; i < n; i++)
        KMS_ENSURE(mech_ok(tok, &need[i], bits), KMS_ERR_UNSUPPORTED,
                   "token '%s' cannot serve %s keys: it lacks %s for %u-bit keys", tok->label,
                   p11_asym_kind_name(kind), need[i].name, bits);
    return KMS_OK;
}

/* ---- templates ------------------------------------------------------------- */

#define ASYM_TMPL_MAX 24

struct atmpl {
    CK_ATTRIBUTE a[ASYM_TMPL_MAX];
    CK_ULONG n;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_ULONG bits;
};

static void add(struct atmpl *t, CK_ATTRIBUTE_TYPE type, void *value, CK_ULONG len)
{
    /* Fixed by this file; the unit test would catch an overflow. */
    if (t->n < ASYM_TMPL_MAX)
        t->a[t->n++] = (CK_ATTRIBUTE){type, value, len};
}

static void add_bool(struct atmpl *t, CK_ATTRIBUTE_TYPE type, bool v)
{
    add(t, type, v ? &yes : &no, sizeof(CK_BBOOL));
}

enum tmpl_use { FOR_GENERATE, FOR_UNWRAP };

/* Private half: sensitive, CKA_SIGN only; every other usage attribute
 * explicit (SoftHSMv2 defaults unspecified ones to true). Extractable and
 * modifiable only for one escrow wrap and the lock that follows it. */
static void tmpl_private(struct atmpl *t, enum p11_asym_kind kind, const struct p11_key_id *id,
                         const char *label, bool escrow, enum tmpl_use use)
{
    memset(t, 0, sizeof(*t));
    t->cls = CKO_PRIVATE_KEY;
    t->type = kind_is_ec(kind) ? CKK_EC : CKK_RSA;
    add(t, CKA_CLASS, &t->cls, sizeof(t->cls));
    add(t, CKA_KEY_TYPE, &t->type, sizeof(t->type));
    add(t, CKA_ID, (void *)id->b, P11_KEY_ID_LEN);
    if (label)
        add(t, CKA_LABEL, (void *)label, strlen(label));
    add_bool(t, CKA_TOKEN, true);
    add_bool(t, CKA_PRIVATE, true);
    add_bool(t, CKA_SENSITIVE, true);
    add_bool(t, CKA_EXTRACTABLE, escrow);
    /* SoftHSMv2 takes CKA_COPYABLE as read-only in C_UnwrapKey templates. */
    if (use == FOR_GENERATE)
        add_bool(t, CKA_COPYABLE, false);
    add_bool(t, CKA_DECRYPT, false);
    add_bool(t, CKA_UNWRAP, false);
    add_bool(t, CKA_SIGN, true);
    add_bool(t, CKA_SIGN_RECOVER, false);
    add_bool(t, CKA_DERIVE, false);
    /* Last: SoftHSMv2 refuses every attribute after CKA_MODIFIABLE=false in
     * an unwrap template as read-only. */
    add_bool(t, CKA_MODIFIABLE, escrow);
}

/* Public half: CKA_VERIFY only. For generation it names the size (RSA) or
 * the curve (EC); for a restore, the caller adds the key's own values. */
static void tmpl_public(struct atmpl *t, enum p11_asym_kind kind, const struct p11_key_id *id,
                        const char *label, enum tmpl_use use)
{
    memset(t, 0, sizeof(*t));
    t->cls = CKO_PUBLIC_KEY;
    t->type = kind_is_ec(kind) ? CKK_EC : CKK_RSA;
    add(t, CKA_CLASS, &t->cls, sizeof(t->cls));
    add(t, CKA_KEY_TYPE, &t->type, sizeof(t->type));
    add(t, CKA_ID, (void *)id->b, P11_KEY_ID_LEN);
    if (label)
        add(t, CKA_LABEL, (void *)label, strlen(label));
    add_bool(t, CKA_TOKEN, true);
    add_bool(t, CKA_PRIVATE, false);
    add_bool(t, CKA_COPYABLE, false);
    add_bool(t, CKA_ENCRYPT, false);
    add_bool(t, CKA_WRAP, false);
    add_bool(t, CKA_VERIFY, true);
    add_bool(t, CKA_VERIFY_RECOVER, false);
    add_bool(t, CKA_DERIVE, false);
    if (kind_is_ec(kind)) {
        add(t, CKA_EC_PARAMS, p256_params, sizeof(p256_params));
    } else if (use == FOR_GENERATE) {
        t->bits = p11_asym_kind_bits(kind);
        add(t, CKA_MODULUS_BITS, &t->bits, sizeof(t->bits));
        add(t, CKA_PUBLIC_EXPONENT, rsa_exponent, sizeof(rsa_exponent));
    }
    add_bool(t, CKA_MODIFIABLE, false);
}

/* ---- read-back checks --------------------------------------------------------- */

struct bool_check {
    CK_ATTRIBUTE_TYPE type;
    bool want;
    const char *name;
};

static kms_err check_bools(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                           const struct bool_check *c, size_t n, const char *what)
{
    CK_BBOOL vals[16];
    CK_ATTRIBUTE at[16];
    KMS_ENSURE(n <= 16, KMS_ERR_USAGE, "too many attribute checks");
    for (size_t i = 0; i < n; i++)
        at[i] = (CK_ATTRIBUTE){c[i].type, &vals[i], sizeof(CK_BBOOL)};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, at, n);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue", tok->label));
    for (size_t i = 0; i < n; i++) {
        bool have = vals[i] == CK_TRUE;
        KMS_ENSURE(have == c[i].want, KMS_ERR_HSM,
                   "token '%s' did not honour the %s template: %s is %s", tok->label, what,
                   c[i].name, have ? "true" : "false");
    }
    return KMS_OK;
}

/* The key's size as the token holds it: modulus length (RSA) or curve
 * (EC), on either half. */
static kms_err check_size(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                          enum p11_asym_kind kind)
{
    if (kind_is_ec(kind)) {
        CK_BYTE params[32];
        CK_ATTRIBUTE at = {CKA_EC_PARAMS, params, sizeof(params)};
        CK_RV rv = tok->fl->C_GetAttributeValue(s, h, &at, 1);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EC_PARAMS)", tok->label));
        KMS_ENSURE(at.ulValueLen == sizeof(p256_params) &&
                       memcmp(params, p256_params, sizeof(p256_params)) == 0,
                   KMS_ERR_HSM, "token '%s' made an EC key on another curve than P-256",
                   tok->label);
        return KMS_OK;
    }
    CK_ATTRIBUTE at = {CKA_MODULUS, NULL, 0};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_MODULUS)", tok->label));
    KMS_ENSURE(at.ulValueLen * 8 == p11_asym_kind_bits(kind), KMS_ERR_HSM,
               "token '%s' made a %lu-bit RSA key, want %u", tok->label,
               (unsigned long)at.ulValueLen * 8, p11_asym_kind_bits(kind));
    return KMS_OK;
}

static kms_err check_private(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                             enum p11_asym_kind kind, bool escrow, bool generated)
{
    const struct bool_check c[] = {
        {CKA_TOKEN, true, "CKA_TOKEN"},
        {CKA_PRIVATE, true, "CKA_PRIVATE"},
        {CKA_SENSITIVE, true, "CKA_SENSITIVE"},
        {CKA_EXTRACTABLE, escrow, "CKA_EXTRACTABLE"},
        {CKA_MODIFIABLE, escrow, "CKA_MODIFIABLE"},
        {CKA_DECRYPT, false, "CKA_DECRYPT"},
        {CKA_UNWRAP, false, "CKA_UNWRAP"},
        {CKA_SIGN, true, "CKA_SIGN"},
        {CKA_SIGN_RECOVER, false, "CKA_SIGN_RECOVER"},
        {CKA_DERIVE, false, "CKA_DERIVE"},
        /* The specification marks unwrapped keys as neither. */
        {CKA_ALWAYS_SENSITIVE, generated, "CKA_ALWAYS_SENSITIVE"},
        {CKA_NEVER_EXTRACTABLE, generated && !escrow, "CKA_NEVER_EXTRACTABLE"},
    };
    char what[48];
    snprintf(what, sizeof(what), "%s private key", p11_asym_kind_name(kind));
    KMS_GUARD(check_bools(tok, s, h, c, sizeof(c) / sizeof(c[0]), what));
    return check_size(tok, s, h, kind);
}

static kms_err check_public(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                            enum p11_asym_kind kind)
{
    const struct bool_check c[] = {
        {CKA_TOKEN, true, "CKA_TOKEN"},
        {CKA_MODIFIABLE, false, "CKA_MODIFIABLE"},
        {CKA_ENCRYPT, false, "CKA_ENCRYPT"},
        {CKA_WRAP, false, "CKA_WRAP"},
        {CKA_VERIFY, true, "CKA_VERIFY"},
        {CKA_VERIFY_RECOVER, false, "CKA_VERIFY_RECOVER"},
        {CKA_DERIVE, false, "CKA_DERIVE"},
    };
    char what[48];
    snprintf(what, sizeof(what), "%s public key", p11_asym_kind_name(kind));
    KMS_GUARD(check_bools(tok, s, h, c, sizeof(c) / sizeof(c[0]), what));
    return check_size(tok, s, h, kind);
}

/* ---- generation ------------------------------------------------------------------ */

struct gen_arg {
    enum p11_asym_kind kind;
    const struct p11_key_id *id;
    const char *label;
    bool escrow;
    bool transient; /* out: worth retrying (see p11_key.c's create_rv_transient) */
};

static kms_err refuse_existing(struct p11_token *tok, CK_SESSION_HANDLE s,
                               const struct p11_key_id *id)
{
    CK_OBJECT_HANDLE h;
    kms_err rc = p11_key_handle(tok, s, id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h);
    if (rc == KMS_OK)
        return kms_err_set(KMS_ERR_ALREADY_EXISTS, "key id already exists in token '%s'",
                           tok->label);
    if (rc != KMS_ERR_NOT_FOUND)
        return rc;
    kms_err_clear();
    return KMS_OK;
}

static kms_err do_generate(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct gen_arg *a = varg;
    struct atmpl priv, pub;
    CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    KMS_GUARD(refuse_existing(tok, s, a->id));

    tmpl_private(&priv, a->kind, a->id, a->label, a->escrow, FOR_GENERATE);
    tmpl_public(&pub, a->kind, a->id, a->label, FOR_GENERATE);
    CK_MECHANISM m = {kind_is_ec(a->kind) ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN,
                      NULL, 0};
    CK_RV rv = P11_TIMED(tok, "C_GenerateKeyPair", p11_mech_name(m.mechanism),
                         tok->fl->C_GenerateKeyPair(s, &m, pub.a, pub.n, priv.a, priv.n, &hpub,
                                                    &hpriv));
    a->transient = rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
    KMS_GUARD(p11_rv_err(rv, "C_GenerateKeyPair", tok->label));
    kms_err rc = check_private(tok, s, hpriv, a->kind, a->escrow, true);
    if (rc == KMS_OK)
        rc = check_public(tok, s, hpub, a->kind);
    if (rc != KMS_OK) {
        kms_log_error("pkcs11", "%s; destroying the new pair", kms_err_detail());
        tok->fl->C_DestroyObject(s, hpriv);
        tok->fl->C_DestroyObject(s, hpub);
        p11_cache_forget(&tok->cache, a->id->b);
        return rc;
    }
    p11_cache_put(&tok->cache, a->id->b, CKO_PRIVATE_KEY, P11_TYPE_ANY, hpriv);
    p11_cache_put(&tok->cache, a->id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
}

kms_err p11_asym_generate(struct p11_token *tok, enum p11_asym_kind kind,
                          const struct p11_key_id *id, const char *label, bool escrow_wrappable)
{
    KMS_GUARD(p11_asym_supported(tok, kind));
    KMS_ENSURE(label == NULL || strlen(label) <= 64, KMS_ERR_INVALID_ARGUMENT,
               "key label longer than 64 bytes");
    struct gen_arg a = {kind, id, label, escrow_wrappable, false};
    kms_err rc = KMS_OK;
    /* As p11_key_generate: a transient creation failure (SoftHSMv2's file
     * store under concurrent creation) is retried after removing what the
     * failed call left under the id; retries are serialised per token. */
    for (int attempt = 1;; attempt++) {
        a.transient = false;
        if (attempt == 1) {
            rc = p11_with_session(tok, do_generate, &a);
        } else {
            pthread_mutex_lock(&tok->create_lock);
            rc = p11_with_session(tok, do_generate, &a);
            pthread_mutex_unlock(&tok->create_lock);
        }
        if (rc == KMS_OK || !a.transient || attempt >= P11_CREATE_ATTEMPTS)
            break;
        kms_log_warn("pkcs11", "token '%s': %s pair creation failed transiently (attempt %d of "
                     "%d); retrying", tok->label, p11_asym_kind_name(kind), attempt,
                     P11_CREATE_ATTEMPTS);
        CK_SESSION_HANDLE s;
        if (p11_session_take(tok, &s) == KMS_OK) {
            /* An id names at most one pair and nothing else. */
            p11_key_destroy_in(tok, s, id);
            p11_session_give(tok, s, false);
        }
        struct timespec pause = {0, 5000000L * attempt};
        nanosleep(&pause, NULL);
    }
    return rc;
}

/* ---- public key ------------------------------------------------------------------- */

kms_err p11_asym_public_spki(struct p11_token *tok, const struct p11_key_id *id,
                             uint8_t **out_der, size_t *out_len)
{
    /* p11_public_key_der reads CKA_EC_POINT or CKA_MODULUS and
     * CKA_PUBLIC_EXPONENT of the public half and encodes them with
     * OpenSSL's i2d_PUBKEY (so the buffer is OpenSSL's). */
    return p11_public_key_der(tok, id, out_der, out_len);
}

/* ---- sign and verify ----------------------------------------------------------------- */

/* Mechanism and the bytes the token signs for alg. `pss` and `buf` are the
 * caller's storage (they must outlive the mechanism's use). */
static CK_ULONG mech_for(enum p11_sig_alg alg, CK_MECHANISM *m, CK_RSA_PKCS_PSS_PARAMS *pss,
                         const uint8_t *digest, uint8_t buf[64], const uint8_t **data)
{
    memset(m, 0, sizeof(*m));
    switch (alg) {
    case P11_SIG_ECDSA_SHA256:
        m->mechanism = CKM_ECDSA;
        *data = digest;
        return 32;
    case P11_SIG_RSA_PSS_SHA256:
        pss->hashAlg = CKM_SHA256;
        pss->mgf = CKG_MGF1_SHA256;
        pss->sLen = 32;
        m->mechanism = CKM_RSA_PKCS_PSS;
        m->pParameter = pss;
        m->ulParameterLen = sizeof(*pss);
        *data = digest;
        return 32;
    case P11_SIG_RSA_PKCS1_SHA256:
        memcpy(buf, sha256_digest_info, sizeof(sha256_digest_info));
        memcpy(buf + sizeof(sha256_digest_info), digest, 32);
        m->mechanism = CKM_RSA_PKCS;
        *data = buf;
        return sizeof(sha256_digest_info) + 32;
    }
    return 0;
}

/* Sign in session s with private handle h; sig holds *sig_len bytes. */
static kms_err sign_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       enum p11_sig_alg alg, const uint8_t *digest, uint8_t *sig, size_t *sig_len)
{
    CK_MECHANISM m;
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t buf[64];
    const uint8_t *data = NULL;
    CK_ULONG data_len = mech_for(alg, &m, &pss, digest, buf, &data);
    uint8_t raw[P11_ASYM_SIG_MAX];
    CK_ULONG raw_len = sizeof(raw);
    CK_RV rv = tok->fl->C_SignInit(s, &m, h);
    KMS_GUARD(p11_rv_err(rv, "C_SignInit", tok->label));
    rv = P11_TIMED(tok, "C_Sign", p11_mech_name(m.mechanism),
                   tok->fl->C_Sign(s, (CK_BYTE *)data, data_len, raw, &raw_len));
    KMS_GUARD(p11_rv_err(rv, "C_Sign", tok->label));
    if (alg == P11_SIG_ECDSA_SHA256) {
        /* CKM_ECDSA answers raw r || s; OpenSSL and X.509 want DER. */
        KMS_ENSURE(raw_len == 64, KMS_ERR_HSM,
                   "token '%s' returned a %lu-byte P-256 signature, want 64", tok->label,
                   (unsigned long)raw_len);
        return p11_ecdsa_raw_to_der(raw, sig, *sig_len, sig_len);
    }
    KMS_ENSURE(raw_len <= *sig_len, KMS_ERR_USAGE, "signature buffer too small");
    memcpy(sig, raw, raw_len);
    *sig_len = raw_len;
    return KMS_OK;
}

/* Strict DER Ecdsa-Sig-Value to raw r || s (32 bytes each). False for
 * anything that is not the one canonical encoding of two integers below
 * 2^256: a signature is valid in one encoding only. */
static bool ecdsa_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[64])
{
    bool ok = false;
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    uint8_t *again = NULL;
    if (sig == NULL || (size_t)(p - der) != len)
        goto done;
    int n = i2d_ECDSA_SIG(sig, &again);
    if (n <= 0 || (size_t)n != len || memcmp(again, der, len) != 0)
        goto done;
    const BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_is_negative(r) || BN_is_negative(s) || BN_bn2binpad(r, raw, 32) != 32 ||
        BN_bn2binpad(s, raw + 32, 32) != 32)
        goto done;
    ok = true;
done:
    OPENSSL_free(again);
    ECDSA_SIG_free(sig);
    return ok;
}

static kms_err verify_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                         enum p11_sig_alg alg, const uint8_t *digest, const uint8_t *sig,
                         size_t sig_len, bool *out_valid)
{
    *out_valid = false;
    uint8_t raw[64];
    if (alg == P11_SIG_ECDSA_SHA256) {
        if (!ecdsa_der_to_raw(sig, sig_len, raw))
            return KMS_OK;
        sig = raw;
        sig_len = sizeof(raw);
    }
    CK_MECHANISM m;
    CK_RSA_PKCS_PSS_PARAMS pss;
    uint8_t buf[64];
    const uint8_t *data = NULL;
    CK_ULONG data_len = mech_for(alg, &m, &pss, digest, buf, &data);
    CK_RV rv = tok->fl->C_VerifyInit(s, &m, h);
    KMS_GUARD(p11_rv_err(rv, "C_VerifyInit", tok->label));
    rv = P11_TIMED(tok, "C_Verify", p11_mech_name(m.mechanism),
                   tok->fl->C_Verify(s, (CK_BYTE *)data, data_len, (CK_BYTE *)sig, sig_len));
    /* C_Verify ends the operation whatever it answers (PKCS#11 5.13). */
    if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
        return KMS_OK;
    KMS_GUARD(p11_rv_err(rv, "C_Verify", tok->label));
    *out_valid = true;
    return KMS_OK;
}

struct sig_arg {
    const struct p11_key_id *id;
    enum p11_sig_alg alg;
    const uint8_t *digest;
    const uint8_t *sig_in;
    size_t sig_in_len;
    uint8_t *sig;
    size_t sig_len;
    bool valid;
};

/* The algorithm must suit the key's type before the token sees it:
 * SoftHSMv2 2.6.1 accepts C_SignInit(CKM_RSA_PKCS_PSS) with an EC key and
 * then crashes the process inside C_Sign (found by test_p11_asym). One
 * attribute read per call. */
static kms_err check_alg_type(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                              enum p11_sig_alg alg)
{
    CK_KEY_TYPE kt = CK_UNAVAILABLE_INFORMATION;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_KEY_TYPE)", tok->label));
    CK_KEY_TYPE want = alg == P11_SIG_ECDSA_SHA256 ? CKK_EC : CKK_RSA;
    KMS_ENSURE(kt == want, KMS_ERR_INVALID_ARGUMENT, "%s does not suit this key's type",
               p11_sig_alg_name(alg));
    return KMS_OK;
}

static kms_err do_sign(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sig_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h));
    KMS_GUARD(check_alg_type(tok, s, h, a->alg));
    return sign_in(tok, s, h, a->alg, a->digest, a->sig, &a->sig_len);
}

static kms_err do_verify(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct sig_arg *a = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PUBLIC_KEY, P11_TYPE_ANY, &h));
    KMS_GUARD(check_alg_type(tok, s, h, a->alg));
    return verify_in(tok, s, h, a->alg, a->digest, a->sig_in, a->sig_in_len, &a->valid);
}

kms_err p11_asym_sign_digest(struct p11_token *tok, const struct p11_key_id *id,
                             enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                             uint8_t *sig, size_t *sig_len)
{
    size_t cap = *sig_len;
    *sig_len = 0;
    KMS_ENSURE(alg_valid(alg), KMS_ERR_INVALID_ARGUMENT, "unknown signing algorithm %d",
               (int)alg);
    KMS_ENSURE(digest_len == P11_ASYM_DIGEST_LEN, KMS_ERR_INVALID_ARGUMENT,
               "a SHA-256 digest is 32 bytes, got %zu", digest_len);
    struct sig_arg a = {id, alg, digest, NULL, 0, sig, cap, false};
    kms_err rc = p11_with_session(tok, do_sign, &a);
    if (rc != KMS_OK) {
        OPENSSL_cleanse(sig, cap);
        return rc;
    }
    *sig_len = a.sig_len;
    return KMS_OK;
}

kms_err p11_asym_verify_digest(struct p11_token *tok, const struct p11_key_id *id,
                               enum p11_sig_alg alg, const uint8_t *digest, size_t digest_len,
                               const uint8_t *sig, size_t sig_len, bool *out_valid)
{
    *out_valid = false;
    KMS_ENSURE(alg_valid(alg), KMS_ERR_INVALID_ARGUMENT, "unknown signing algorithm %d",
               (int)alg);
    KMS_ENSURE(digest_len == P11_ASYM_DIGEST_LEN, KMS_ERR_INVALID_ARGUMENT,
               "a SHA-256 digest is 32 bytes, got %zu", digest_len);
    /* No key here makes a longer signature: it cannot verify. */
    if (sig_len == 0 || sig_len > P11_ASYM_SIG_MAX)
        return KMS_OK;
    struct sig_arg a = {id, alg, digest, sig, sig_len, NULL, 0, false};
    KMS_GUARD(p11_with_session(tok, do_verify, &a));
    *out_valid = a.valid;
    return KMS_OK;
}

/* ---- escrow ------------------------------------------------------------------------ */

struct wrap_arg {
    const struct p11_key_id *escrow, *id;
    uint8_t *out;
    size_t cap, len;
};

static kms_err do_wrap(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct wrap_arg *a = varg;
    CK_OBJECT_HANDLE hesc, hpriv;
    KMS_GUARD(p11_key_handle(tok, s, a->escrow, CKO_SECRET_KEY, CKK_AES, &hesc));
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &hpriv));
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ULONG len = a->cap;
    CK_RV rv = P11_TIMED(tok, "C_WrapKey", "CKM_AES_KEY_WRAP_PAD",
                         tok->fl->C_WrapKey(s, &m, hesc, hpriv, a->out, &len));
    KMS_GUARD(p11_rv_err(rv, "C_WrapKey(private key)", tok->label));
    a->len = len;
    return KMS_OK;
}

kms_err p11_asym_escrow_wrap(struct p11_token *tok, const struct p11_key_id *escrow,
                             const struct p11_key_id *id, uint8_t *out, size_t out_cap,
                             size_t *out_len)
{
    *out_len = 0;
    struct wrap_arg a = {escrow, id, out, out_cap, 0};
    kms_err rc = p11_with_session(tok, do_wrap, &a);
    if (rc != KMS_OK) {
        OPENSSL_cleanse(out, out_cap);
        return rc;
    }
    *out_len = a.len;
    return KMS_OK;
}

static kms_err do_lock(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    const struct p11_key_id *id = varg;
    CK_OBJECT_HANDLE h;
    KMS_GUARD(p11_key_handle(tok, s, id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h));
    CK_ATTRIBUTE a = {CKA_EXTRACTABLE, &no, sizeof(no)};
    CK_RV rv = tok->fl->C_SetAttributeValue(s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_SetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    CK_BBOOL now = CK_TRUE;
    a.pValue = &now;
    rv = tok->fl->C_GetAttributeValue(s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    KMS_ENSURE(now == CK_FALSE, KMS_ERR_HSM, "token '%s' did not lock the private key",
               tok->label);
    return KMS_OK;
}

kms_err p11_asym_lock(struct p11_token *tok, const struct p11_key_id *id)
{
    return p11_with_session(tok, do_lock, (void *)id);
}

struct restore_arg {
    const struct p11_key_id *escrow, *id;
    const uint8_t *blob;
    size_t blob_len;
    enum p11_asym_kind kind;
    const char *label;
    /* The public half's values, from the SPKI. */
    uint8_t a[600], b[16]; /* DER EC point (OCTET STRING) or modulus; exponent */
    size_t a_len, b_len;
};

static kms_err do_restore(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct restore_arg *r = varg;
    kms_err rc = KMS_OK;
    CK_OBJECT_HANDLE hesc, hpriv = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    KMS_GUARD(p11_key_handle(tok, s, r->escrow, CKO_SECRET_KEY, CKK_AES, &hesc));
    KMS_GUARD(refuse_existing(tok, s, r->id));

    struct atmpl priv, pub;
    tmpl_private(&priv, r->kind, r->id, r->label, false, FOR_UNWRAP);
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_RV rv = P11_TIMED(tok, "C_UnwrapKey", "CKM_AES_KEY_WRAP_PAD",
                         tok->fl->C_UnwrapKey(s, &m, hesc, (CK_BYTE *)r->blob, r->blob_len,
                                              priv.a, priv.n, &hpriv));
    /* SoftHSMv2 answers a failed RFC 5649 integrity check with
     * CKR_GENERAL_ERROR (see p11_crypto.c); a blob for another key type
     * fails the PKCS#8 decoding the same way. */
    if (rv == CKR_GENERAL_ERROR && strncmp(tok->manufacturer, "SoftHSM", 7) == 0)
        rv = CKR_WRAPPED_KEY_INVALID;
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_UnwrapKey(private key)", tok->label), fail);
    KMS_GUARD_GOTO(check_private(tok, s, hpriv, r->kind, false, false), fail);

    tmpl_public(&pub, r->kind, r->id, r->label, FOR_UNWRAP);
    /* Before CKA_MODIFIABLE (the template's last attribute): same order rule
     * as for unwraps, harmless elsewhere. */
    CK_ATTRIBUTE last = pub.a[--pub.n];
    if (kind_is_ec(r->kind)) {
        add(&pub, CKA_EC_POINT, r->a, r->a_len);
    } else {
        add(&pub, CKA_MODULUS, r->a, r->a_len);
        add(&pub, CKA_PUBLIC_EXPONENT, r->b, r->b_len);
    }
    pub.a[pub.n++] = last;
    rv = tok->fl->C_CreateObject(s, pub.a, pub.n, &hpub);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_CreateObject(public key)", tok->label), fail);
    KMS_GUARD_GOTO(check_public(tok, s, hpub, r->kind), fail);

    /* The SPKI is the caller's record; prove it is this private key's. */
    enum p11_sig_alg alg = kind_is_ec(r->kind) ? P11_SIG_ECDSA_SHA256 : P11_SIG_RSA_PSS_SHA256;
    uint8_t sig[P11_ASYM_SIG_MAX];
    size_t sig_len = sizeof(sig);
    bool valid = false;
    KMS_GUARD_GOTO(sign_in(tok, s, hpriv, alg, pair_probe, sig, &sig_len), fail);
    KMS_GUARD_GOTO(verify_in(tok, s, hpub, alg, pair_probe, sig, sig_len, &valid), fail);
    KMS_ENSURE_GOTO(valid, fail, KMS_ERR_BAD_CIPHERTEXT,
                    "the escrowed private key does not match the version's public key");
    p11_cache_put(&tok->cache, r->id->b, CKO_PRIVATE_KEY, P11_TYPE_ANY, hpriv);
    p11_cache_put(&tok->cache, r->id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
fail:
    if (hpub != CK_INVALID_HANDLE)
        tok->fl->C_DestroyObject(s, hpub);
    if (hpriv != CK_INVALID_HANDLE)
        tok->fl->C_DestroyObject(s, hpriv);
    p11_cache_forget(&tok->cache, r->id->b);
    return rc;
}

/* The public values of spki, checked against kind, into r->a / r->b. */
static kms_err spki_values(struct restore_arg *r, const uint8_t *spki, size_t spki_len)
{
    kms_err rc = KMS_OK;
    BIGNUM *n = NULL, *e = NULL;
    const uint8_t *p = spki;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    KMS_ENSURE_GOTO(pkey != NULL && (size_t)(p - spki) == spki_len, done,
                    KMS_ERR_INVALID_ARGUMENT, "the version's public key does not parse");
    if (kind_is_ec(r->kind)) {
        char group[32] = "";
        uint8_t pt[65];
        size_t pt_len = 0;
        KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "EC") &&
                            EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                           sizeof(group), NULL) == 1 &&
                            strcmp(group, "prime256v1") == 0,
                        done, KMS_ERR_INVALID_ARGUMENT, "the version's public key is not P-256");
        KMS_ENSURE_GOTO(EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                                        pt, sizeof(pt), &pt_len) == 1 &&
                            pt_len == 65,
                        done, KMS_ERR_INVALID_ARGUMENT, "cannot read the P-256 public point");
        /* CKA_EC_POINT is the DER OCTET STRING of the uncompressed point. */
        r->a[0] = 0x04;
        r->a[1] = 65;
        memcpy(r->a + 2, pt, 65);
        r->a_len = 67;
    } else {
        KMS_ENSURE_GOTO(EVP_PKEY_is_a(pkey, "RSA") &&
                            (unsigned)EVP_PKEY_get_bits(pkey) == p11_asym_kind_bits(r->kind),
                        done, KMS_ERR_INVALID_ARGUMENT,
                        "the version's public key is not %s", p11_asym_kind_name(r->kind));
        KMS_ENSURE_GOTO(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                            EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
                            BN_num_bytes(n) <= (int)sizeof(r->a) &&
                            BN_num_bytes(e) <= (int)sizeof(r->b),
                        done, KMS_ERR_INVALID_ARGUMENT, "cannot read the RSA public key");
        r->a_len = (size_t)BN_bn2bin(n, r->a);
        r->b_len = (size_t)BN_bn2bin(e, r->b);
    }
done:
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(pkey);
    return rc;
}

kms_err p11_asym_restore(struct p11_token *tok, const struct p11_key_id *escrow,
                         const uint8_t *blob, size_t blob_len, enum p11_asym_kind kind,
                         const struct p11_key_id *id, const char *label, const uint8_t *spki,
                         size_t spki_len)
{
    KMS_ENSURE(kind_valid(kind), KMS_ERR_INVALID_ARGUMENT, "unknown key pair kind %d", (int)kind);
    KMS_ENSURE(blob_len >= 16 && blob_len <= P11_ASYM_ESCROW_MAX && blob_len % 8 == 0,
               KMS_ERR_BAD_CIPHERTEXT, "an escrowed private key is 16..%d bytes in steps of 8",
               P11_ASYM_ESCROW_MAX);
    KMS_ENSURE(label == NULL || strlen(label) <= 64, KMS_ERR_INVALID_ARGUMENT,
               "key label longer than 64 bytes");
    KMS_GUARD(p11_asym_supported(tok, kind));
    struct restore_arg *r = calloc(1, sizeof(*r));
    KMS_ENSURE(r != NULL, KMS_ERR_NOMEM, "out of memory");
    r->escrow = escrow;
    r->id = id;
    r->blob = blob;
    r->blob_len = blob_len;
    r->kind = kind;
    r->label = label;
    kms_err rc = spki_values(r, spki, spki_len);
    if (rc == KMS_OK)
        rc = p11_with_session(tok, do_restore, r);
    free(r);
    return rc;
}

/* ---- inspection -------------------------------------------------------------------- */

static void read_flags(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       struct p11_key_info *o)
{
    struct {
        CK_ATTRIBUTE_TYPE type;
        bool *dst;
    } f[] = {
        {CKA_TOKEN, &o->token},          {CKA_PRIVATE, &o->priv},
        {CKA_SENSITIVE, &o->sensitive},  {CKA_EXTRACTABLE, &o->extractable},
        {CKA_ALWAYS_SENSITIVE, &o->always_sensitive},
        {CKA_NEVER_EXTRACTABLE, &o->never_extractable},
        {CKA_MODIFIABLE, &o->modifiable}, {CKA_ENCRYPT, &o->encrypt},
        {CKA_DECRYPT, &o->decrypt},      {CKA_WRAP, &o->wrap},
        {CKA_UNWRAP, &o->unwrap},        {CKA_SIGN, &o->sign},
        {CKA_VERIFY, &o->verify},        {CKA_DERIVE, &o->derive},
    };
    memset(o, 0, sizeof(*o));
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        CK_BBOOL v = CK_FALSE;
        CK_ATTRIBUTE at = {f[i].type, &v, sizeof(v)};
        /* An attribute the class does not have reads as false. */
        if (tok->fl->C_GetAttributeValue(s, h, &at, 1) == CKR_OK)
            *f[i].dst = v == CK_TRUE;
    }
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    if (tok->fl->C_GetAttributeValue(s, h, &at, 1) == CKR_OK)
        o->key_type = kt;
}

static bool read_bool(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                      CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE at = {type, &v, sizeof(v)};
    return tok->fl->C_GetAttributeValue(s, h, &at, 1) == CKR_OK && v == CK_TRUE;
}

struct info_arg {
    const struct p11_key_id *id;
    struct p11_asym_info *out;
};

static kms_err do_info(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct info_arg *a = varg;
    CK_OBJECT_HANDLE hpriv, hpub;
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &hpriv));
    KMS_GUARD(p11_key_handle(tok, s, a->id, CKO_PUBLIC_KEY, P11_TYPE_ANY, &hpub));
    read_flags(tok, s, hpriv, &a->out->priv);
    read_flags(tok, s, hpub, &a->out->pub);
    a->out->priv_sign_recover = read_bool(tok, s, hpriv, CKA_SIGN_RECOVER);
    a->out->pub_verify_recover = read_bool(tok, s, hpub, CKA_VERIFY_RECOVER);
    a->out->bits = 256;
    if (a->out->pub.key_type == CKK_RSA) {
        CK_ATTRIBUTE at = {CKA_MODULUS, NULL, 0};
        if (tok->fl->C_GetAttributeValue(s, hpub, &at, 1) == CKR_OK)
            a->out->bits = at.ulValueLen * 8;
    }
    return KMS_OK;
}

kms_err p11_asym_info(struct p11_token *tok, const struct p11_key_id *id,
                      struct p11_asym_info *out)
{
    memset(out, 0, sizeof(*out));
    struct info_arg a = {id, out};
    return p11_with_session(tok, do_info, &a);
}
