/*
 * p11_asym.c - signing key pairs: what each kind is (name, size, the
 * algorithms that suit it), the capability check, the templates of both
 * halves (one place per half) and the read-back checks that the token
 * honoured them. Generation, SPKI, signing and escrow are in the other
 * p11_asym_*.c files (see p11_asym_internal.h).
 */
#include "p11_asym_internal.h"

#include <stdio.h>
#include <string.h>

#include "p11_rv.h"

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

/* DER OID of prime256v1 / secp256r1: CKA_EC_PARAMS of a P-256 key. */
static CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static CK_BYTE rsa_exponent[] = {0x01, 0x00, 0x01};

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

bool p11_asym_kind_valid(enum p11_asym_kind kind)
{
    return (unsigned)kind <= (unsigned)P11_ASYM_RSA_4096;
}

bool p11_asym_alg_valid(enum p11_sig_alg alg)
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

bool p11_asym_kind_is_ec(enum p11_asym_kind kind)
{
    return kind == P11_ASYM_EC_P256;
}

bool p11_sig_alg_fits(enum p11_asym_kind kind, enum p11_sig_alg alg)
{
    if (!p11_asym_kind_valid(kind) || !p11_asym_alg_valid(alg))
        return false;
    return p11_asym_kind_is_ec(kind) == (alg == P11_SIG_ECDSA_SHA256);
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
    KMS_ENSURE(p11_asym_kind_valid(kind), KMS_ERR_INVALID_ARGUMENT, "unknown key pair kind %d",
               (int)kind);
    static const struct mech_need ec[] = {
        {CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "CKM_EC_KEY_PAIR_GEN"},
        {CKM_ECDSA, CKF_SIGN | CKF_VERIFY, "CKM_ECDSA sign/verify"},
    };
    static const struct mech_need rsa[] = {
        {CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "CKM_RSA_PKCS_KEY_PAIR_GEN"},
        {CKM_RSA_PKCS_PSS, CKF_SIGN | CKF_VERIFY, "CKM_RSA_PKCS_PSS sign/verify"},
        {CKM_RSA_PKCS, CKF_SIGN | CKF_VERIFY, "CKM_RSA_PKCS sign/verify"},
    };
    bool is_ec = p11_asym_kind_is_ec(kind);
    const struct mech_need *need = is_ec ? ec : rsa;
    size_t n = is_ec ? sizeof(ec) / sizeof(ec[0]) : sizeof(rsa) / sizeof(rsa[0]);
    unsigned bits = p11_asym_kind_bits(kind);
    for (size_t i = 0; i < n; i++)
        KMS_ENSURE(mech_ok(tok, &need[i], bits), KMS_ERR_UNSUPPORTED,
                   "token '%s' cannot serve %s keys: it lacks %s for %u-bit keys", tok->label,
                   p11_asym_kind_name(kind), need[i].name, bits);
    return KMS_OK;
}

/* ---- templates ------------------------------------------------------------- */

void p11_asym_tmpl_add(struct p11_asym_tmpl *t, CK_ATTRIBUTE_TYPE type, void *value,
                       CK_ULONG len)
{
    /* Fixed by this file; the unit test would catch an overflow. */
    if (t->n < P11_ASYM_TMPL_MAX)
        t->a[t->n++] = (CK_ATTRIBUTE){type, value, len};
}

static void add_bool(struct p11_asym_tmpl *t, CK_ATTRIBUTE_TYPE type, bool v)
{
    p11_asym_tmpl_add(t, type, v ? &yes : &no, sizeof(CK_BBOOL));
}

/* What both halves start with: class, type, id, label (if any), a token
 * object, private exactly when it is the private half. */
static void tmpl_start(struct p11_asym_tmpl *t, CK_OBJECT_CLASS cls, enum p11_asym_kind kind,
                       const struct p11_key_id *id, const char *label)
{
    memset(t, 0, sizeof(*t));
    t->cls = cls;
    t->type = p11_asym_kind_is_ec(kind) ? CKK_EC : CKK_RSA;
    p11_asym_tmpl_add(t, CKA_CLASS, &t->cls, sizeof(t->cls));
    p11_asym_tmpl_add(t, CKA_KEY_TYPE, &t->type, sizeof(t->type));
    p11_asym_tmpl_add(t, CKA_ID, (void *)id->b, P11_KEY_ID_LEN);
    if (label)
        p11_asym_tmpl_add(t, CKA_LABEL, (void *)label, strlen(label));
    add_bool(t, CKA_TOKEN, true);
    add_bool(t, CKA_PRIVATE, cls == CKO_PRIVATE_KEY);
}

/* Private half: sensitive, CKA_SIGN only; every other usage attribute
 * explicit (SoftHSMv2 defaults unspecified ones to true). Extractable and
 * modifiable only for one escrow wrap and the lock that follows it. */
void p11_asym_tmpl_private(struct p11_asym_tmpl *t, enum p11_asym_kind kind,
                           const struct p11_key_id *id, const char *label, bool escrow,
                           enum p11_asym_tmpl_use use)
{
    tmpl_start(t, CKO_PRIVATE_KEY, kind, id, label);
    add_bool(t, CKA_SENSITIVE, true);
    add_bool(t, CKA_EXTRACTABLE, escrow);
    /* SoftHSMv2 takes CKA_COPYABLE as read-only in C_UnwrapKey templates. */
    if (use == P11_ASYM_FOR_GENERATE)
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
void p11_asym_tmpl_public(struct p11_asym_tmpl *t, enum p11_asym_kind kind,
                          const struct p11_key_id *id, const char *label,
                          enum p11_asym_tmpl_use use)
{
    tmpl_start(t, CKO_PUBLIC_KEY, kind, id, label);
    add_bool(t, CKA_COPYABLE, false);
    add_bool(t, CKA_ENCRYPT, false);
    add_bool(t, CKA_WRAP, false);
    add_bool(t, CKA_VERIFY, true);
    add_bool(t, CKA_VERIFY_RECOVER, false);
    add_bool(t, CKA_DERIVE, false);
    if (p11_asym_kind_is_ec(kind)) {
        p11_asym_tmpl_add(t, CKA_EC_PARAMS, p256_params, sizeof(p256_params));
    } else if (use == P11_ASYM_FOR_GENERATE) {
        t->bits = p11_asym_kind_bits(kind);
        p11_asym_tmpl_add(t, CKA_MODULUS_BITS, &t->bits, sizeof(t->bits));
        p11_asym_tmpl_add(t, CKA_PUBLIC_EXPONENT, rsa_exponent, sizeof(rsa_exponent));
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
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, at, n);
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
    if (p11_asym_kind_is_ec(kind)) {
        CK_BYTE params[32];
        CK_ATTRIBUTE at = {CKA_EC_PARAMS, params, sizeof(params)};
        CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EC_PARAMS)", tok->label));
        KMS_ENSURE(at.ulValueLen == sizeof(p256_params) &&
                       memcmp(params, p256_params, sizeof(p256_params)) == 0,
                   KMS_ERR_HSM, "token '%s' made an EC key on another curve than P-256",
                   tok->label);
        return KMS_OK;
    }
    CK_ATTRIBUTE at = {CKA_MODULUS, NULL, 0};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_MODULUS)", tok->label));
    KMS_ENSURE(at.ulValueLen * 8 == p11_asym_kind_bits(kind), KMS_ERR_HSM,
               "token '%s' made a %lu-bit RSA key, want %u", tok->label,
               (unsigned long)at.ulValueLen * 8, p11_asym_kind_bits(kind));
    return KMS_OK;
}

kms_err p11_asym_check_private(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
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

kms_err p11_asym_check_public(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
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
