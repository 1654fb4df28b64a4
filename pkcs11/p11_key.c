/*
 * p11_key.c - key templates (one place per kind), generation, read-back
 * checks, lookup by CKA_ID, locking and destruction.
 */
#include "p11_key.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_log.h"
#include "p11_crypto.h"
#include "p11_internal.h"
#include "p11_rv.h"

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

static bool kind_is_pair(enum p11_key_kind kind)
{
    return kind == P11_KEY_EC_P256_SIGN || kind == P11_KEY_RSA3072_UNWRAP;
}

void p11_kind_object(enum p11_key_kind kind, CK_OBJECT_CLASS *out_cls, CK_KEY_TYPE *out_type)
{
    if (kind_is_pair(kind)) {
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

    t->cls = kind_is_pair(kind) ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
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
static void tmpl_public(struct p11_tmpl *t, enum p11_key_kind kind, const struct p11_key_id *id,
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
        if (kind_is_pair(kind) && (ty == CKA_ENCRYPT || ty == CKA_WRAP || ty == CKA_VERIFY))
            continue;
        checks[k] = checks[i];
        attrs[k] = (CK_ATTRIBUTE){ty, &vals[k], sizeof(CK_BBOOL)};
        k++;
    }
    n = k;
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, attrs, n);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue", tok->label));
    for (size_t i = 0; i < n; i++) {
        bool have = vals[i] == CK_TRUE;
        KMS_ENSURE(have == checks[i].want, KMS_ERR_HSM,
                   "token '%s' did not honour the %s template: %s is %s", tok->label,
                   p11_key_kind_name(kind), checks[i].name, have ? "true" : "false");
    }
    if (!kind_is_pair(kind)) {
        CK_ULONG len = 0;
        CK_ATTRIBUTE a = {CKA_VALUE_LEN, &len, sizeof(len)};
        rv = tok->fl->C_GetAttributeValue(s, h, &a, 1);
        KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_VALUE_LEN)", tok->label));
        /* SoftHSMv2 leaves CKA_VALUE_LEN at 0 on unwrapped keys; for those
         * the unwrap callers bound the length by the wrapped size instead. */
        bool unreported = !generated && len == 0;
        KMS_ENSURE(len == 32 || unreported, KMS_ERR_HSM,
                   "token '%s': %s key has %lu bytes, want 32", tok->label,
                   p11_key_kind_name(kind), (unsigned long)len);
    }
    return KMS_OK;
}

/* ---- lookup -------------------------------------------------------------- */

static kms_err find_objects(struct p11_token *tok, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                            CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max, CK_ULONG *out_n)
{
    CK_RV rv = tok->fl->C_FindObjectsInit(s, tmpl, n);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    rv = tok->fl->C_FindObjects(s, out, max, out_n);
    CK_RV frv = tok->fl->C_FindObjectsFinal(s);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjects", tok->label));
    return p11_rv_err(frv, "C_FindObjectsFinal", tok->label);
}

kms_err p11_key_handle(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                       CK_OBJECT_CLASS cls, CK_KEY_TYPE type, CK_OBJECT_HANDLE *out)
{
    KMS_ENSURE((cls == CKO_SECRET_KEY) == (type != P11_TYPE_ANY), KMS_ERR_USAGE,
               "secret keys are looked up by key type, pair halves by class alone");
    if (p11_cache_get(&tok->cache, id->b, cls, type, out))
        return KMS_OK;
    CK_ATTRIBUTE t[] = {
        {CKA_ID, (void *)id->b, P11_KEY_ID_LEN},
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
    };
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    KMS_GUARD(find_objects(tok, s, t, type == P11_TYPE_ANY ? 2 : 3, found, 2, &n));
    if (n == 0) {
        /* Counted for the service's object check: a request needed an
         * object that is not there (p11_token_lookups_missed). */
        atomic_fetch_add(&tok->lookups_missed, 1);
        return kms_err_set(KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    }
    /* Ids are random and 16 bytes, and p11_key_generate never makes two
     * objects of one class and type under one id: two mean someone else
     * wrote to this token. Refuse rather than pick one. */
    KMS_ENSURE(n == 1, KMS_ERR_INTERNAL,
               "token '%s' holds two objects of one class and type with one key id", tok->label);
    p11_cache_put(&tok->cache, id->b, cls, type, found[0]);
    *out = found[0];
    return KMS_OK;
}

kms_err p11_key_handle_secret(struct p11_token *tok, CK_SESSION_HANDLE s,
                              const struct p11_key_id *id, CK_OBJECT_HANDLE *out,
                              CK_KEY_TYPE *out_type)
{
    static const CK_KEY_TYPE order[] = {CKK_AES, CKK_GENERIC_SECRET};
    kms_err rc = KMS_ERR_NOT_FOUND;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        rc = p11_key_handle(tok, s, id, CKO_SECRET_KEY, order[i], out);
        if (rc != KMS_ERR_NOT_FOUND) {
            if (rc == KMS_OK && out_type)
                *out_type = order[i];
            return rc;
        }
    }
    return rc;
}

/* ---- ids ----------------------------------------------------------------- */

struct random_arg {
    uint8_t *buf;
    size_t len;
};

static kms_err do_random(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct random_arg *a = varg;
    CK_RV rv = tok->fl->C_GenerateRandom(s, a->buf, a->len);
    return p11_rv_err(rv, "C_GenerateRandom", tok->label);
}

kms_err p11_random(struct p11_token *tok, uint8_t *buf, size_t len)
{
    struct random_arg a = {buf, len};
    return p11_with_session(tok, do_random, &a);
}

kms_err p11_key_id_new(struct p11_token *tok, struct p11_key_id *out_id)
{
    return p11_random(tok, out_id->b, sizeof(out_id->b));
}

void p11_key_id_hex(const struct p11_key_id *id, char out[2 * P11_KEY_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < P11_KEY_ID_LEN; i++) {
        out[2 * i] = hex[id->b[i] >> 4];
        out[2 * i + 1] = hex[id->b[i] & 15];
    }
    out[2 * P11_KEY_ID_LEN] = '\0';
}

/* ---- generation ----------------------------------------------------------- */

struct gen_arg {
    enum p11_key_kind kind;
    unsigned flags;
    const struct p11_key_id *id;
    const char *label;
    bool transient; /* out: the token failed the creation in a way worth retrying */
};

/* Object creation failures that say nothing about the request: SoftHSMv2's
 * file store now and then fails one of two concurrent token object
 * creations with CKR_GENERAL_ERROR (tests/bench/bench_mkkeys.c saw it under
 * load, and so did concurrent RotateKey). CKR_FUNCTION_FAILED is the
 * specification's "could not be performed, no detail". Device errors and
 * removals are not here: those are the token's state, not a collision. */
static bool create_rv_transient(CK_RV rv)
{
    return rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
}

/* After a transient failure the token may hold part of what it was asked to
 * make (an object of this class and type under the id, or a pair's public
 * half): remove exactly that, never the other secret key of a metadata
 * version that shares the id. */
static void undo_partial(struct p11_token *tok, CK_SESSION_HANDLE s, const struct gen_arg *a)
{
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(a->kind, &cls, &type);
    if (kind_is_pair(a->kind)) {
        /* A pair never shares its id with anything else. */
        p11_key_destroy_in(tok, s, a->id);
        return;
    }
    CK_ATTRIBUTE t[] = {
        {CKA_ID, (void *)a->id->b, P11_KEY_ID_LEN},
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
    };
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    if (find_objects(tok, s, t, 3, found, 4, &n) == KMS_OK)
        for (CK_ULONG i = 0; i < n; i++)
            tok->fl->C_DestroyObject(s, found[i]);
    p11_cache_forget(&tok->cache, a->id->b);
}

void p11_key_destroy_in(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id)
{
    CK_ATTRIBUTE t = {CKA_ID, (void *)id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    if (find_objects(tok, s, &t, 1, found, 4, &n) == KMS_OK)
        for (CK_ULONG i = 0; i < n; i++)
            tok->fl->C_DestroyObject(s, found[i]);
    p11_cache_forget(&tok->cache, id->b);
}

static kms_err do_generate(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct gen_arg *a = varg;
    struct p11_tmpl priv, pub;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    CK_ULONG bits = 0;
    CK_RV rv;

    /* Refuse a second object of this class and type under an existing id.
     * Secret keys of different types may share one (a metadata version's AES
     * and HMAC keys); two AES keys, or two pairs, never do. */
    CK_OBJECT_HANDLE existing;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(a->kind, &cls, &type);
    kms_err rc = p11_key_handle(tok, s, a->id, cls, type, &existing);
    if (rc == KMS_OK)
        return kms_err_set(KMS_ERR_ALREADY_EXISTS, "key id already exists in token '%s'",
                           tok->label);
    if (rc != KMS_ERR_NOT_FOUND)
        return rc;

    p11_tmpl_secret(&priv, a->kind, a->flags, a->id, a->label, false);
    if (kind_is_pair(a->kind)) {
        tmpl_public(&pub, a->kind, a->id, a->label, &bits);
        CK_MECHANISM m = {a->kind == P11_KEY_EC_P256_SIGN ? CKM_EC_KEY_PAIR_GEN
                                                          : CKM_RSA_PKCS_KEY_PAIR_GEN,
                          NULL, 0};
        rv = P11_TIMED(tok, "C_GenerateKeyPair", p11_mech_name(m.mechanism),
                       tok->fl->C_GenerateKeyPair(s, &m, pub.a, pub.n, priv.a, priv.n, &hpub, &h));
        a->transient = create_rv_transient(rv);
        KMS_GUARD(p11_rv_err(rv, "C_GenerateKeyPair", tok->label));
    } else {
        CK_MECHANISM m = {a->kind == P11_KEY_HMAC_SHA256 ? CKM_GENERIC_SECRET_KEY_GEN
                                                         : CKM_AES_KEY_GEN,
                          NULL, 0};
        rv = P11_TIMED(tok, "C_GenerateKey", p11_mech_name(m.mechanism),
                       tok->fl->C_GenerateKey(s, &m, priv.a, priv.n, &h));
        a->transient = create_rv_transient(rv);
        KMS_GUARD(p11_rv_err(rv, "C_GenerateKey", tok->label));
    }
    rc = p11_key_verify(tok, s, h, a->kind, a->flags, true);
    if (rc != KMS_OK) {
        kms_log_error("pkcs11", "%s; destroying the new key", kms_err_detail());
        tok->fl->C_DestroyObject(s, h);
        if (hpub != CK_INVALID_HANDLE)
            tok->fl->C_DestroyObject(s, hpub);
        return rc;
    }
    p11_cache_put(&tok->cache, a->id->b, cls, type, h);
    if (hpub != CK_INVALID_HANDLE)
        p11_cache_put(&tok->cache, a->id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
}

kms_err p11_key_generate(struct p11_token *tok, enum p11_key_kind kind, unsigned flags,
                         const struct p11_key_id *id, const char *label)
{
    KMS_GUARD(p11_key_kind_supported(tok, kind));
    KMS_ENSURE(!(flags & P11_KEY_ESCROWABLE) || !kind_is_pair(kind), KMS_ERR_INVALID_ARGUMENT,
               "only secret keys can be escrowed");
    KMS_ENSURE(label == NULL || strlen(label) <= 64, KMS_ERR_INVALID_ARGUMENT,
               "key label longer than 64 bytes");
    struct gen_arg a = {kind, flags, id, label, false};
    kms_err rc = KMS_OK;
    /* A transient creation failure is retried, after removing whatever the
     * failed call left under the id; the retries run one at a time per
     * token (create_lock), so two retrying creations do not collide again.
     * The first attempt stays concurrent: most tokens never need this. */
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
        kms_log_warn("pkcs11", "token '%s': %s creation failed transiently (attempt %d of %d); "
                     "retrying", tok->label, p11_key_kind_name(kind), attempt,
                     P11_CREATE_ATTEMPTS);
        CK_SESSION_HANDLE s;
        if (p11_session_take(tok, &s) == KMS_OK) {
            undo_partial(tok, s, &a);
            p11_session_give(tok, s, false);
        }
        /* A short pause lets the colliding writer finish. */
        struct timespec pause = {0, 5000000L * attempt};
        nanosleep(&pause, NULL);
    }
    return rc;
}

/* ---- lock, destroy, inspect ------------------------------------------------ */

struct lock_arg {
    const struct p11_key_id *id;
    enum p11_key_kind kind; /* 0: the id's AES key, else its generic secret */
};

static kms_err do_lock(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    const struct lock_arg *la = varg;
    CK_OBJECT_HANDLE h;
    if (la->kind == 0) {
        KMS_GUARD(p11_key_handle_secret(tok, s, la->id, &h, NULL));
    } else {
        CK_OBJECT_CLASS cls;
        CK_KEY_TYPE type;
        p11_kind_object(la->kind, &cls, &type);
        KMS_GUARD(p11_key_handle(tok, s, la->id, cls, type, &h));
    }
    CK_ATTRIBUTE a = {CKA_EXTRACTABLE, &no, sizeof(no)};
    CK_RV rv = tok->fl->C_SetAttributeValue(s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_SetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    CK_BBOOL now = CK_TRUE;
    a.pValue = &now;
    rv = tok->fl->C_GetAttributeValue(s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    KMS_ENSURE(now == CK_FALSE, KMS_ERR_HSM, "token '%s' did not lock the key", tok->label);
    return KMS_OK;
}

kms_err p11_key_lock(struct p11_token *tok, const struct p11_key_id *id)
{
    struct lock_arg la = {id, 0};
    return p11_with_session(tok, do_lock, &la);
}

kms_err p11_key_lock_kind(struct p11_token *tok, const struct p11_key_id *id,
                          enum p11_key_kind kind)
{
    KMS_ENSURE(kind == P11_KEY_AES_ENCRYPT || kind == P11_KEY_HMAC_SHA256, KMS_ERR_USAGE,
               "only AES and HMAC keys are escrowed");
    struct lock_arg la = {id, kind};
    return p11_with_session(tok, do_lock, &la);
}

static kms_err do_destroy(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    const struct p11_key_id *id = varg;
    CK_ATTRIBUTE t = {CKA_ID, (void *)id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    KMS_GUARD(find_objects(tok, s, &t, 1, found, 4, &n));
    /* Forget first: no thread may pick up a handle that is about to die. */
    p11_cache_forget(&tok->cache, id->b);
    KMS_ENSURE(n > 0, KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV rv = tok->fl->C_DestroyObject(s, found[i]);
        KMS_GUARD(p11_rv_err(rv, "C_DestroyObject", tok->label));
    }
    return KMS_OK;
}

kms_err p11_key_destroy(struct p11_token *tok, const struct p11_key_id *id)
{
    return p11_with_session(tok, do_destroy, (void *)id);
}

struct exists_arg {
    const struct p11_key_id *id;
    bool exists;
};

static kms_err do_exists(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct exists_arg *a = varg;
    CK_ATTRIBUTE t = {CKA_ID, (void *)a->id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[1];
    CK_ULONG n = 0;
    KMS_GUARD(find_objects(tok, s, &t, 1, found, 1, &n));
    a->exists = n > 0;
    /* Gone (destroyed behind our back, by another process or an operator):
     * drop any cached handle, or a later create under the same id would be
     * refused as a duplicate by the cache. */
    if (!a->exists)
        p11_cache_forget(&tok->cache, a->id->b);
    return KMS_OK;
}

kms_err p11_key_exists(struct p11_token *tok, const struct p11_key_id *id, bool *out_exists)
{
    struct exists_arg a = {id, false};
    KMS_GUARD(p11_with_session(tok, do_exists, &a));
    *out_exists = a.exists;
    return KMS_OK;
}

struct info_arg {
    const struct p11_key_id *id;
    struct p11_key_info *out;
    int kind; /* 0: any (secret first), else an enum p11_key_kind */
};

static kms_err do_info(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct info_arg *a = varg;
    CK_OBJECT_HANDLE h;
    kms_err rc;
    if (a->kind != 0) {
        CK_OBJECT_CLASS cls;
        CK_KEY_TYPE type;
        p11_kind_object((enum p11_key_kind)a->kind, &cls, &type);
        rc = p11_key_handle(tok, s, a->id, cls, type, &h);
    } else {
        rc = p11_key_handle_secret(tok, s, a->id, &h, NULL);
        if (rc == KMS_ERR_NOT_FOUND)
            rc = p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h);
    }
    KMS_GUARD(rc);

    struct p11_key_info *o = a->out;
    memset(o, 0, sizeof(*o));
    struct {
        CK_ATTRIBUTE_TYPE type;
        bool *dst;
    } flags[] = {
        {CKA_TOKEN, &o->token},          {CKA_PRIVATE, &o->priv},
        {CKA_SENSITIVE, &o->sensitive},  {CKA_EXTRACTABLE, &o->extractable},
        {CKA_ALWAYS_SENSITIVE, &o->always_sensitive},
        {CKA_NEVER_EXTRACTABLE, &o->never_extractable},
        {CKA_MODIFIABLE, &o->modifiable}, {CKA_ENCRYPT, &o->encrypt},
        {CKA_DECRYPT, &o->decrypt},      {CKA_WRAP, &o->wrap},
        {CKA_UNWRAP, &o->unwrap},        {CKA_SIGN, &o->sign},
        {CKA_VERIFY, &o->verify},        {CKA_DERIVE, &o->derive},
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        CK_BBOOL v = CK_FALSE;
        CK_ATTRIBUTE at = {flags[i].type, &v, sizeof(v)};
        /* Attributes a class does not have (CKA_ENCRYPT on a private key)
         * read as false. */
        if (tok->fl->C_GetAttributeValue(s, h, &at, 1) == CKR_OK)
            *flags[i].dst = v == CK_TRUE;
    }
    CK_KEY_TYPE kt = 0;
    CK_ULONG vl = 0;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_KEY_TYPE)", tok->label));
    o->key_type = kt;
    at = (CK_ATTRIBUTE){CKA_VALUE_LEN, &vl, sizeof(vl)};
    if (tok->fl->C_GetAttributeValue(s, h, &at, 1) == CKR_OK)
        o->value_len = vl;
    return KMS_OK;
}

kms_err p11_key_info(struct p11_token *tok, const struct p11_key_id *id,
                     struct p11_key_info *out)
{
    struct info_arg a = {id, out, 0};
    return p11_with_session(tok, do_info, &a);
}

kms_err p11_key_info_kind(struct p11_token *tok, const struct p11_key_id *id,
                          enum p11_key_kind kind, struct p11_key_info *out)
{
    struct info_arg a = {id, out, (int)kind};
    return p11_with_session(tok, do_info, &a);
}

struct list_arg {
    const char *prefix;
    struct p11_key_id *ids;
    size_t n, cap;
};

/* Duplicates (both halves of a pair, a metadata version's two objects) are
 * removed once at the end: a token may hold 100,000 keys. */
static kms_err list_add(struct list_arg *a, const uint8_t *id)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        struct p11_key_id *ni = realloc(a->ids, nc * sizeof(*ni));
        KMS_ENSURE(ni != NULL, KMS_ERR_NOMEM, "out of memory");
        a->ids = ni;
        a->cap = nc;
    }
    memcpy(a->ids[a->n++].b, id, P11_KEY_ID_LEN);
    return KMS_OK;
}

/* Call fn on every object the session sees, inside one C_FindObjects
 * search; stops at the first error fn returns. fn must not create or
 * destroy objects (the search is open). */
static kms_err for_each_object(struct p11_token *tok, CK_SESSION_HANDLE s,
                               kms_err (*fn)(struct p11_token *, CK_SESSION_HANDLE,
                                             CK_OBJECT_HANDLE, void *),
                               void *arg)
{
    CK_RV rv = tok->fl->C_FindObjectsInit(s, NULL, 0);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    kms_err rc = KMS_OK;
    for (;;) {
        CK_OBJECT_HANDLE hs[64];
        CK_ULONG n = 0;
        rv = tok->fl->C_FindObjects(s, hs, 64, &n);
        if ((rc = p11_rv_err(rv, "C_FindObjects", tok->label)) != KMS_OK || n == 0)
            break;
        for (CK_ULONG i = 0; i < n && rc == KMS_OK; i++)
            rc = fn(tok, s, hs[i], arg);
        if (rc != KMS_OK)
            break;
    }
    tok->fl->C_FindObjectsFinal(s);
    return rc;
}

static kms_err list_one(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        void *varg)
{
    struct list_arg *a = varg;
    char label[65] = {0};
    uint8_t id[P11_KEY_ID_LEN];
    CK_ATTRIBUTE at[2] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_ID, id, sizeof(id)}};
    if (tok->fl->C_GetAttributeValue(s, h, at, 2) != CKR_OK)
        return KMS_OK; /* not a key of ours: no id or a longer label */
    size_t plen = strlen(a->prefix);
    if (at[1].ulValueLen != P11_KEY_ID_LEN || at[0].ulValueLen < plen ||
        memcmp(label, a->prefix, plen) != 0)
        return KMS_OK;
    return list_add(a, id);
}

static kms_err do_list(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct list_arg *a = varg;
    a->n = 0;
    return for_each_object(tok, s, list_one, a);
}

static int cmp_id(const void *x, const void *y)
{
    return memcmp(x, y, P11_KEY_ID_LEN);
}

kms_err p11_key_list_ids(struct p11_token *tok, const char *label_prefix,
                         struct p11_key_id **out_ids, size_t *out_n)
{
    struct list_arg a = {label_prefix ? label_prefix : "", NULL, 0, 0};
    kms_err rc = p11_with_session(tok, do_list, &a);
    if (rc != KMS_OK) {
        free(a.ids);
        return rc;
    }
    if (a.n > 1) {
        qsort(a.ids, a.n, sizeof(*a.ids), cmp_id);
        size_t k = 1;
        for (size_t i = 1; i < a.n; i++)
            if (memcmp(a.ids[i].b, a.ids[k - 1].b, P11_KEY_ID_LEN) != 0)
                a.ids[k++] = a.ids[i];
        a.n = k;
    }
    *out_ids = a.ids;
    *out_n = a.n;
    return KMS_OK;
}

/* Husks: key objects with neither CKA_ID nor CKA_LABEL. Every key Custos
 * makes has both, set in the same C_GenerateKey / C_UnwrapKey template, so
 * such an object is not a key of ours in any state: it is what SoftHSMv2
 * leaves when the process dies inside object creation (the object file is
 * written with default attributes — CKA_TOKEN false, CKA_SENSITIVE false,
 * every usage true, no value — before the template is applied; found by
 * tests/e2e/test_key_crash.sh and the template scan), or, killed earlier,
 * an object with no readable attribute at all, not even CKA_CLASS. */
#define HUSKS_MAX 256

struct husk_arg {
    CK_OBJECT_HANDLE h[HUSKS_MAX];
    size_t n;
    bool count_only;
};

static kms_err husk_one(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        void *varg)
{
    struct husk_arg *a = varg;
    if (a->n >= HUSKS_MAX)
        return KMS_OK;
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, h, &c, 1);
    /* Every PKCS#11 object has a class: one whose class cannot be read is
     * an object file with no attributes at all (the earliest crash point). */
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        a->h[a->n++] = h;
        return KMS_OK;
    }
    CK_ATTRIBUTE at[2] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    if (rv != CKR_OK || tok->fl->C_GetAttributeValue(s, h, at, 2) != CKR_OK)
        return KMS_OK;
    bool key = cls == CKO_SECRET_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY;
    if (key && at[0].ulValueLen == 0 && at[1].ulValueLen == 0)
        a->h[a->n++] = h;
    return KMS_OK;
}

static kms_err do_find_husks(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct husk_arg *a = varg;
    a->n = 0;
    KMS_GUARD(for_each_object(tok, s, husk_one, a));
    if (a->count_only)
        return KMS_OK;
    /* Destroyed after the search is closed: no handle of the search is
     * invalidated while it runs. */
    for (size_t i = 0; i < a->n; i++) {
        CK_RV rv = tok->fl->C_DestroyObject(s, a->h[i]);
        KMS_GUARD(p11_rv_err(rv, "C_DestroyObject", tok->label));
    }
    return KMS_OK;
}

kms_err p11_key_count_husks(struct p11_token *tok, size_t *out_n)
{
    struct husk_arg *a = calloc(1, sizeof(*a));
    KMS_ENSURE(a != NULL, KMS_ERR_NOMEM, "out of memory");
    a->count_only = true;
    kms_err rc = p11_with_session(tok, do_find_husks, a);
    *out_n = rc == KMS_OK ? a->n : 0;
    free(a);
    return rc;
}

kms_err p11_key_destroy_husks(struct p11_token *tok, size_t *out_n)
{
    struct husk_arg *a = calloc(1, sizeof(*a));
    KMS_ENSURE(a != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = p11_with_session(tok, do_find_husks, a);
    if (out_n)
        *out_n = rc == KMS_OK ? a->n : 0;
    free(a);
    return rc;
}

struct label_arg {
    const struct p11_key_id *id;
    char *out;
};

static kms_err do_label(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct label_arg *a = varg;
    CK_ATTRIBUTE t = {CKA_ID, (void *)a->id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[1];
    CK_ULONG n = 0;
    KMS_GUARD(find_objects(tok, s, &t, 1, found, 1, &n));
    KMS_ENSURE(n > 0, KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    CK_ATTRIBUTE at = {CKA_LABEL, a->out, 64};
    CK_RV rv = tok->fl->C_GetAttributeValue(s, found[0], &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_LABEL)", tok->label));
    a->out[at.ulValueLen <= 64 ? at.ulValueLen : 0] = '\0';
    return KMS_OK;
}

kms_err p11_key_label(struct p11_token *tok, const struct p11_key_id *id, char out[65])
{
    struct label_arg a = {id, out};
    out[0] = '\0';
    return p11_with_session(tok, do_label, &a);
}

/* One pass over the token that fills the handle cache with every key
 * object, so that even the first request for a key finds its handle without
 * C_FindObjects (whose cost grows with the number of objects in the token). */
static kms_err do_warm(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    size_t *count = varg;
    CK_RV rv = tok->fl->C_FindObjectsInit(s, NULL, 0);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    kms_err rc = KMS_OK;
    for (;;) {
        CK_OBJECT_HANDLE hs[256];
        CK_ULONG n = 0;
        rv = tok->fl->C_FindObjects(s, hs, 256, &n);
        if ((rc = p11_rv_err(rv, "C_FindObjects", tok->label)) != KMS_OK || n == 0)
            break;
        for (CK_ULONG i = 0; i < n; i++) {
            uint8_t id[P11_KEY_ID_LEN];
            CK_OBJECT_CLASS cls = 0;
            CK_KEY_TYPE type = 0;
            CK_ATTRIBUTE at[3] = {{CKA_ID, id, sizeof(id)},
                                  {CKA_CLASS, &cls, sizeof(cls)},
                                  {CKA_KEY_TYPE, &type, sizeof(type)}};
            if (tok->fl->C_GetAttributeValue(s, hs[i], at, 3) != CKR_OK ||
                at[0].ulValueLen != P11_KEY_ID_LEN)
                continue; /* not a key object of ours */
            if (cls != CKO_SECRET_KEY)
                type = P11_TYPE_ANY;
            p11_cache_put(&tok->cache, id, cls, type, hs[i]);
            (*count)++;
        }
    }
    tok->fl->C_FindObjectsFinal(s);
    return rc;
}

kms_err p11_token_warm_cache(struct p11_token *tok, size_t *out_count)
{
    size_t n = 0;
    kms_err rc = p11_with_session(tok, do_warm, &n);
    if (out_count)
        *out_count = n;
    return rc;
}
