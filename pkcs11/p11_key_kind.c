/*
 * p11_key_kind.c - what each key kind is: its usage, the token
 * capabilities it needs, its one attribute template (p11_tmpl_secret, and
 * the public half of a pair), and the read-back check that a made object
 * matches the template (p11_key_verify).
 */
#include <string.h>

#include "p11_internal.h"

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

/* DER OID of prime256v1 / secp256r1, CKA_EC_PARAMS of a P-256 key. */
static CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static CK_BYTE rsa_exponent[] = {0x01, 0x00, 0x01};

const char *p11_key_kind_name(enum p11_key_kind kind)
{
    switch (kind) {
    case P11_KEY_AES_ENCRYPT:
        return "AES-256 encrypt/decrypt";
    case P11_KEY_AES_WRAP:
        return "AES-256 wrap/unwrap";
    case P11_KEY_AES_TRANSPORT:
        return "AES-256 transport (unwrap only)";
    case P11_KEY_HMAC_SHA256:
        return "HMAC-SHA256";
    case P11_KEY_EC_P256_SIGN:
        return "ECDSA P-256";
    case P11_KEY_RSA3072_UNWRAP:
        return "RSA-3072 unwrap";
    case P11_KEY_AES_ESCROW:
        return "AES-256 escrow wrap/unwrap";
    }
    return "unknown key kind";
}

/* What a kind may do; everything not listed is explicitly false. */
struct usage {
    bool encrypt, decrypt, wrap, unwrap, sign, verify;
};

static struct usage kind_usage(enum p11_key_kind kind)
{
    struct usage u = {0};
    switch (kind) {
    case P11_KEY_AES_ENCRYPT:
        u.encrypt = u.decrypt = true;
        break;
    case P11_KEY_AES_WRAP:
    case P11_KEY_AES_ESCROW:
        u.wrap = u.unwrap = true;
        break;
    case P11_KEY_AES_TRANSPORT:
    case P11_KEY_RSA3072_UNWRAP:
        u.unwrap = true;
        break;
    case P11_KEY_HMAC_SHA256:
        u.sign = u.verify = true;
        break;
    case P11_KEY_EC_P256_SIGN:
        u.sign = true;
        break;
    }
    return u;
}

bool p11_kind_is_pair(enum p11_key_kind kind)
{
    return kind == P11_KEY_EC_P256_SIGN || kind == P11_KEY_RSA3072_UNWRAP;
}

void p11_kind_object(enum p11_key_kind kind, CK_OBJECT_CLASS *out_cls, CK_KEY_TYPE *out_type)
{
    if (p11_kind_is_pair(kind)) {
        *out_cls = CKO_PRIVATE_KEY;
        *out_type = P11_TYPE_ANY;
    } else {
        *out_cls = CKO_SECRET_KEY;
        *out_type = kind == P11_KEY_HMAC_SHA256 ? CKK_GENERIC_SECRET : CKK_AES;
    }
}

kms_err p11_key_kind_supported(const struct p11_token *tok, enum p11_key_kind kind)
{
    enum p11_cap need[3];
    size_t n = 0;
    switch (kind) {
    case P11_KEY_AES_ENCRYPT:
        need[n++] = P11_CAP_GEN_AES_256;
        need[n++] = P11_CAP_AES_GCM;
        break;
    case P11_KEY_AES_WRAP:
    case P11_KEY_AES_TRANSPORT:
    case P11_KEY_AES_ESCROW:
        need[n++] = P11_CAP_GEN_AES_256;
        need[n++] = P11_CAP_AES_KWP;
        break;
    case P11_KEY_HMAC_SHA256:
        need[n++] = P11_CAP_GEN_SECRET_256;
        need[n++] = P11_CAP_HMAC_SHA256;
        break;
    case P11_KEY_EC_P256_SIGN:
        need[n++] = P11_CAP_GEN_EC_P256;
        need[n++] = P11_CAP_ECDSA;
        break;
    case P11_KEY_RSA3072_UNWRAP:
        need[n++] = P11_CAP_GEN_RSA_3072;
        need[n++] = P11_CAP_RSA_OAEP_UNWRAP;
        break;
    default:
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "unknown key kind %d", (int)kind);
    }
    for (size_t i = 0; i < n; i++)
        KMS_ENSURE(p11_token_has(tok, need[i]), KMS_ERR_UNSUPPORTED,
                   "token '%s' cannot serve %s keys: it lacks %s", p11_token_label(tok),
                   p11_key_kind_name(kind), p11_cap_name(need[i]));
    return KMS_OK;
}

/* ---- template building ------------------------------------------------ */

static void add(struct p11_tmpl *t, CK_ATTRIBUTE_TYPE type, void *value, CK_ULONG len)
{
    /* Templates are fixed by this file; overflowing one is a programming
     * error caught by the tests, not a runtime condition. */
    if (t->n < P11_TMPL_MAX) {
        t->a[t->n].type = type;
        t->a[t->n].pValue = value;
        t->a[t->n].ulValueLen = len;
        t->n++;
    }
}

static void add_bool(struct p11_tmpl *t, CK_ATTRIBUTE_TYPE type, bool v)
{
    add(t, type, v ? &yes : &no, sizeof(CK_BBOOL));
}

/* Usage attributes of an object class. Each class has its own set: a
 * private key has no CKA_ENCRYPT, a public key no CKA_DECRYPT, and tokens
 * refuse the other class's attributes with CKR_ATTRIBUTE_TYPE_INVALID. */
static void add_usage(struct p11_tmpl *t, CK_OBJECT_CLASS cls, struct usage u)
{
    if (cls != CKO_PRIVATE_KEY) {
        add_bool(t, CKA_ENCRYPT, u.encrypt);
        add_bool(t, CKA_WRAP, u.wrap);
        add_bool(t, CKA_VERIFY, u.verify);
    }
    if (cls != CKO_PUBLIC_KEY) {
        add_bool(t, CKA_DECRYPT, u.decrypt);
        add_bool(t, CKA_UNWRAP, u.unwrap);
        add_bool(t, CKA_SIGN, u.sign);
    }
    if (cls == CKO_PRIVATE_KEY)
        add_bool(t, CKA_SIGN_RECOVER, false);
    if (cls == CKO_PUBLIC_KEY)
        add_bool(t, CKA_VERIFY_RECOVER, false);
    add_bool(t, CKA_DERIVE, false);
}

static void add_unwrap_template(struct p11_tmpl *t, bool force_non_extractable)
{
    t->unwrap_n = 0;
    t->unwrap_tmpl[t->unwrap_n++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(CK_BBOOL)};
    if (force_non_extractable)
        t->unwrap_tmpl[t->unwrap_n++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, sizeof(CK_BBOOL)};
    add(t, CKA_UNWRAP_TEMPLATE, t->unwrap_tmpl, t->unwrap_n * sizeof(CK_ATTRIBUTE));
}

void p11_tmpl_secret(struct p11_tmpl *t, enum p11_key_kind kind, unsigned flags,
                     const struct p11_key_id *id, const char *label, bool for_unwrap)
{
    memset(t, 0, sizeof(*t));
    bool escrowable = (flags & P11_KEY_ESCROWABLE) != 0;
    bool ephemeral = (flags & P11_KEY_EPHEMERAL) != 0;

    t->cls = p11_kind_is_pair(kind) ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
    t->key_type = kind == P11_KEY_HMAC_SHA256     ? CKK_GENERIC_SECRET
                  : kind == P11_KEY_EC_P256_SIGN   ? CKK_EC
                  : kind == P11_KEY_RSA3072_UNWRAP ? CKK_RSA
                                                   : CKK_AES;
    t->value_len = 32;
    add(t, CKA_CLASS, &t->cls, sizeof(t->cls));
    add(t, CKA_KEY_TYPE, &t->key_type, sizeof(t->key_type));
    /* C_UnwrapKey derives the length from the data; SoftHSMv2 refuses
     * CKA_VALUE_LEN there as read-only. */
    if (t->cls == CKO_SECRET_KEY && !for_unwrap)
        add(t, CKA_VALUE_LEN, &t->value_len, sizeof(t->value_len));
    add(t, CKA_ID, (void *)id->b, P11_KEY_ID_LEN);
    if (label)
        add(t, CKA_LABEL, (void *)label, strlen(label));
    add_bool(t, CKA_TOKEN, !ephemeral);
    add_bool(t, CKA_PRIVATE, true);
    add_bool(t, CKA_SENSITIVE, true);
    /* Escrow needs one wrap of the fresh key, then C_SetAttributeValue to
     * lock it, which in turn needs CKA_MODIFIABLE. Other keys are frozen. */
    add_bool(t, CKA_EXTRACTABLE, escrowable);
    /* SoftHSMv2 treats CKA_COPYABLE as read-only in C_UnwrapKey templates
     * (CKR_ATTRIBUTE_READ_ONLY); set it where the token takes it. */
    if (!for_unwrap)
        add_bool(t, CKA_COPYABLE, false);
    add_usage(t, t->cls, kind_usage(kind));
    if (kind == P11_KEY_AES_WRAP || kind == P11_KEY_RSA3072_UNWRAP)
        add_unwrap_template(t, true);
    else if (kind == P11_KEY_AES_TRANSPORT || kind == P11_KEY_AES_ESCROW)
        add_unwrap_template(t, false);
    /* Last: SoftHSMv2 applies a C_UnwrapKey template in order and refuses
     * every attribute after CKA_MODIFIABLE=false as read-only. */
    add_bool(t, CKA_MODIFIABLE, escrowable);
}

/* Public half of a pair. */
void p11_tmpl_public(struct p11_tmpl *t, enum p11_key_kind kind, const struct p11_key_id *id,
                        const char *label, CK_ULONG *bits)
{
    memset(t, 0, sizeof(*t));
    t->cls = CKO_PUBLIC_KEY;
    t->key_type = kind == P11_KEY_EC_P256_SIGN ? CKK_EC : CKK_RSA;
    add(t, CKA_CLASS, &t->cls, sizeof(t->cls));
    add(t, CKA_KEY_TYPE, &t->key_type, sizeof(t->key_type));
    add(t, CKA_ID, (void *)id->b, P11_KEY_ID_LEN);
    if (label)
        add(t, CKA_LABEL, (void *)label, strlen(label));
    add_bool(t, CKA_TOKEN, true);
    add_bool(t, CKA_PRIVATE, false);
    add_bool(t, CKA_MODIFIABLE, false);
    add_bool(t, CKA_COPYABLE, false);
    struct usage u = {0};
    if (kind == P11_KEY_EC_P256_SIGN) {
        u.verify = true;
        add(t, CKA_EC_PARAMS, p256_params, sizeof(p256_params));
    } else {
        /* The public half only exists to be exported for tenants to wrap
         * with; inside the HSM it may wrap, never encrypt. */
        u.wrap = true;
        *bits = 3072;
        add(t, CKA_MODULUS_BITS, bits, sizeof(*bits));
        add(t, CKA_PUBLIC_EXPONENT, rsa_exponent, sizeof(rsa_exponent));
    }
    add_usage(t, CKO_PUBLIC_KEY, u);
}

/* ---- read-back checks --------------------------------------------------- */

kms_err p11_key_verify(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       enum p11_key_kind kind, unsigned flags, bool generated)
{
    struct usage u = kind_usage(kind);
    bool escrowable = (flags & P11_KEY_ESCROWABLE) != 0;
    struct {
        CK_ATTRIBUTE_TYPE type;
        bool want;
        const char *name;
    } checks[] = {
        {CKA_TOKEN, !(flags & P11_KEY_EPHEMERAL), "CKA_TOKEN"},
        {CKA_PRIVATE, true, "CKA_PRIVATE"},
        {CKA_SENSITIVE, true, "CKA_SENSITIVE"},
        {CKA_EXTRACTABLE, escrowable, "CKA_EXTRACTABLE"},
        {CKA_ENCRYPT, u.encrypt, "CKA_ENCRYPT"},
        {CKA_DECRYPT, u.decrypt, "CKA_DECRYPT"},
        {CKA_WRAP, u.wrap, "CKA_WRAP"},
        {CKA_UNWRAP, u.unwrap, "CKA_UNWRAP"},
        {CKA_SIGN, u.sign, "CKA_SIGN"},
        {CKA_VERIFY, u.verify, "CKA_VERIFY"},
        {CKA_DERIVE, false, "CKA_DERIVE"},
        {CKA_ALWAYS_SENSITIVE, generated, "CKA_ALWAYS_SENSITIVE"},
        {CKA_NEVER_EXTRACTABLE, generated && !escrowable, "CKA_NEVER_EXTRACTABLE"},
    };
    enum { N = sizeof(checks) / sizeof(checks[0]) };
    CK_BBOOL vals[N];
    CK_ATTRIBUTE attrs[N];
    size_t n = N;
    /* A private key has no CKA_ENCRYPT/CKA_WRAP/CKA_VERIFY in PKCS#11 (they
     * belong to the public half), so they are not asked. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        CK_ATTRIBUTE_TYPE ty = checks[i].type;
        if (p11_kind_is_pair(kind) && (ty == CKA_ENCRYPT || ty == CKA_WRAP || ty == CKA_VERIFY))
            continue;
        checks[k] = checks[i];
        attrs[k] = (CK_ATTRIBUTE){ty, &vals[k], sizeof(CK_BBOOL)};
        k++;
    }
    n = k;
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, attrs, n);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue", tok->label));
    for (size_t i = 0; i < n; i++) {
        bool have = vals[i] == CK_TRUE;
        KMS_ENSURE(have == checks[i].want, KMS_ERR_HSM,
                   "token '%s' did not honour the %s template: %s is %s", tok->label,
                   p11_key_kind_name(kind), checks[i].name, have ? "true" : "false");
    }
    if (!p11_kind_is_pair(kind)) {
        CK_ULONG len = 0;
        CK_ATTRIBUTE a = {CKA_VALUE_LEN, &len, sizeof(len)};
        rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &a, 1);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_VALUE_LEN)", tok->label));
        /* SoftHSMv2 leaves CKA_VALUE_LEN at 0 on unwrapped keys; for those
         * the unwrap callers bound the length by the wrapped size instead. */
        bool unreported = !generated && len == 0;
        /* A token that does report it (NSS's softoken) shows a wrapped key
         * of the wrong length here: the caller's data, not the token's
         * fault (p11_key_admit destroys the object). */
        KMS_ENSURE(len == 32 || unreported || generated, KMS_ERR_INVALID_ARGUMENT,
                   "the unwrapped key has %lu bytes: not a 256-bit AES key", (unsigned long)len);
        KMS_ENSURE(len == 32 || unreported, KMS_ERR_HSM,
                   "token '%s': %s key has %lu bytes, want 32", tok->label,
                   p11_key_kind_name(kind), (unsigned long)len);
    }
    return KMS_OK;
}

