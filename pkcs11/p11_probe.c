/*
 * p11_probe.c - what a token does, found by asking it rather than by its
 * name (docs/pkcs11.md, "Capabilities"): behaviours that C_GetMechanismInfo
 * cannot tell, each probed once per token with throw-away objects.
 *
 * - How it reports a failed integrity check (a GCM tag, RFC 5649): PKCS#11
 *   says CKR_ENCRYPTED_DATA_INVALID / CKR_WRAPPED_KEY_INVALID; SoftHSMv2
 *   2.6.1 says CKR_GENERAL_ERROR. Probed at open with a session key.
 * - Whether it keeps CKA_COPYABLE (PKCS#11 v2.40) on token objects: NSS's
 *   softoken 3.87 does not know the attribute and fails the whole
 *   C_GenerateKey with CKR_GENERAL_ERROR when it is in a token object's
 *   template (it takes it on session objects). Probed before the first key
 *   creation with one token AES key, destroyed at once; on such a token the
 *   attribute is left out of templates (p11_tmpl_fit) and the log and
 *   `kmsctl hsm check` say that keys there can be copied (C_CopyObject).
 * - Whether two secret keys under one CKA_ID stay two objects (NSS: the
 *   second overwrites the first), probed with the above.
 * - Which mechanism does RFC 5649 (p11_probe_kwp, at open).
 * - For kmsctl hsm check only: OAEP with SHA-256, and whether C_WrapKey
 *   refuses a non-extractable key.
 * Token probe objects are labelled custos:probe, usage-free, sensitive and
 * non-extractable; a crash between making and destroying one leaves such
 * an inert object (never a custos:key:, so reconcile ignores it).
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_log.h"
#include "p11_internal.h"

/* Serialises the CKA_COPYABLE probes (of every token: they are rare); not
 * tok->create_lock, which a creation's retries may already hold. */
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;

/* The probes' calls are not the service's: they stay out of the HSM call
 * metrics (custos_hsm_call_duration_seconds counts what requests cost). */
#define P11_PROBE_RV(tok, fn, mech, ...) P11_RV_AT_((tok)->fl, -1, fn, mech, __VA_ARGS__)

static CK_BBOOL yes = CK_TRUE;
static CK_BBOOL no = CK_FALSE;

bool p11_token_mech_has(const struct p11_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS need)
{
    for (size_t i = 0; i < tok->n_mechs; i++)
        if (tok->mechs[i] == mech)
            return (tok->mech_info[i].flags & need) == need;
    return false;
}

const char *p11_token_missing_core(const struct p11_token *tok)
{
    static const enum p11_cap core[] = {P11_CAP_GEN_AES_256, P11_CAP_AES_GCM};
    for (size_t i = 0; i < sizeof(core) / sizeof(core[0]); i++)
        if (!p11_token_has(tok, core[i]))
            return p11_cap_name(core[i]);
    return NULL;
}

void p11_probe_integrity(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    tok->integrity_general = false;
    if (!p11_token_has(tok, P11_CAP_GEN_AES_256) || !p11_token_has(tok, P11_CAP_AES_GCM))
        return;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ENCRYPT, &no, sizeof(no)},     {CKA_DECRYPT, &yes, sizeof(yes)},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    if (P11_PROBE_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, t, sizeof(t) / sizeof(t[0]), &h) !=
        CKR_OK)
        return;
    uint8_t iv[12] = {0}, in[32] = {0}, out[32];
    CK_GCM_PARAMS p = {iv, sizeof(iv), 96, NULL, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof(p)};
    if (P11_PROBE_RV(tok, C_DecryptInit, CKM_AES_GCM, s, &m, h) == CKR_OK) {
        CK_ULONG out_len = sizeof(out);
        /* 16 bytes of data and a tag of zeros: the tag check fails. */
        CK_RV rv = P11_PROBE_RV(tok, C_Decrypt, CKM_AES_GCM, s, in, sizeof(in), out, &out_len);
        tok->integrity_general = rv == CKR_GENERAL_ERROR;
        OPENSSL_cleanse(out, sizeof(out));
    }
    P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, h);
}

/* One token AES key with or without CKA_COPYABLE=false; destroyed at once. */
static CK_RV try_token_key(struct p11_token *tok, CK_SESSION_HANDLE s, bool copyable_attr)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG len = 32;
    static const char label[] = "custos:probe";
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_LABEL, (void *)label, sizeof(label) - 1},
        {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ENCRYPT, &no, sizeof(no)},     {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_COPYABLE, &no, sizeof(no)}, /* last: left out by n - 1 */
    };
    CK_ULONG n = sizeof(t) / sizeof(t[0]) - (copyable_attr ? 0 : 1);
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = P11_PROBE_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, t, n, &h);
    if (rv == CKR_OK)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, h);
    return rv;
}

/* Two token secret keys, AES and generic, under one fresh CKA_ID: does the
 * token keep both? PKCS#11 makes every C_GenerateKey a new object and says
 * nothing of CKA_ID being unique; NSS's softoken 3.87 looks the new key up
 * by class and CKA_ID in its database and overwrites the first one (same
 * handle back, the AES key gone). Everything found under the id is
 * destroyed. -1 when the keys could not be made. */
static int try_shared_id(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    uint8_t id[P11_KEY_ID_LEN];
    if (P11_PROBE_RV(tok, C_GenerateRandom, P11_NO_MECH, s, id, sizeof(id)) != CKR_OK)
        return -1;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE types[2] = {CKK_AES, CKK_GENERIC_SECRET};
    CK_MECHANISM_TYPE mechs[2] = {CKM_AES_KEY_GEN, CKM_GENERIC_SECRET_KEY_GEN};
    CK_ULONG len = 32;
    static const char label[] = "custos:probe";
    int made = 0;
    for (int i = 0; i < 2; i++) {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_KEY_TYPE, &types[i], sizeof(types[i])},
            {CKA_VALUE_LEN, &len, sizeof(len)},
            {CKA_ID, id, sizeof(id)},
            {CKA_LABEL, (void *)label, sizeof(label) - 1},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},
            {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_ENCRYPT, &no, sizeof(no)},
            {CKA_DECRYPT, &no, sizeof(no)},
            {CKA_SIGN, &no, sizeof(no)},
        };
        CK_MECHANISM m = {mechs[i], NULL, 0};
        CK_OBJECT_HANDLE h;
        if (P11_PROBE_RV(tok, C_GenerateKey, mechs[i], s, &m, t, sizeof(t) / sizeof(t[0]), &h) == CKR_OK)
            made++;
    }
    CK_ATTRIBUTE ft = {CKA_ID, id, sizeof(id)};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    if (P11_PROBE_RV(tok, C_FindObjectsInit, P11_NO_MECH, s, &ft, 1) == CKR_OK) {
        if (P11_PROBE_RV(tok, C_FindObjects, P11_NO_MECH, s, found, 4, &n) != CKR_OK)
            n = 0;
        P11_PROBE_RV(tok, C_FindObjectsFinal, P11_NO_MECH, s);
    }
    for (CK_ULONG i = 0; i < n; i++)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, found[i]);
    if (made < 2)
        return -1;
    return n >= 2 ? 1 : 0;
}

/* The token-object probes, once per token (tok->copyable, tok->ids_shared). */
static void probe_objects(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    if (atomic_load(&tok->copyable) >= 0 && atomic_load(&tok->ids_shared) >= 0)
        return;
    if (!p11_token_has(tok, P11_CAP_GEN_AES_256)) {
        atomic_store(&tok->copyable, 1); /* nothing to probe with: keep the attribute */
        atomic_store(&tok->ids_shared, 1);
        return;
    }
    pthread_mutex_lock(&probe_lock);
    int known = atomic_load(&tok->copyable);
    if (known < 0) {
        CK_RV with = try_token_key(tok, s, true);
        if (with == CKR_OK) {
            known = 1;
        } else if (with == CKR_ATTRIBUTE_TYPE_INVALID) {
            /* The answer PKCS#11 prescribes for an unknown attribute. */
            known = 0;
        } else if (try_token_key(tok, s, false) == CKR_OK) {
            /* Without the attribute it works; with it, it fails again (not
             * a one-off failure such as SoftHSMv2's concurrent creations):
             * the token does not keep CKA_COPYABLE. */
            known = try_token_key(tok, s, true) == CKR_OK ? 1 : 0;
        }
        if (known == 0)
            kms_log_warn("pkcs11",
                         "token '%s' (region %s) refuses CKA_COPYABLE on token "
                         "objects (%s): its keys are made without it, so C_CopyObject by "
                         "anyone holding the PIN is not prevented by the token",
                         tok->label, tok->region, p11_rv_name(with));
        if (known >= 0)
            atomic_store(&tok->copyable, known);
    }
    if (atomic_load(&tok->ids_shared) < 0 && p11_token_has(tok, P11_CAP_GEN_SECRET_256)) {
        int shared = try_shared_id(tok, s);
        if (shared == 0)
            kms_log_warn("pkcs11",
                         "token '%s' (region %s) keeps one secret key per CKA_ID "
                         "(a second one overwrites the first): METADATA_AES_HMAC keys are "
                         "refused there",
                         tok->label, tok->region);
        if (shared >= 0)
            atomic_store(&tok->ids_shared, shared);
    }
    pthread_mutex_unlock(&probe_lock);
}

bool p11_token_keeps_copyable(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    probe_objects(tok, s);
    return atomic_load(&tok->copyable) != 0;
}

bool p11_token_shares_ids(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    probe_objects(tok, s);
    return atomic_load(&tok->ids_shared) == 1;
}

static kms_err do_shared_id(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    *(bool *)varg = p11_token_shares_ids(tok, s);
    return KMS_OK;
}

kms_err p11_key_shared_id_supported(struct p11_token *tok)
{
    bool shared = false;
    KMS_GUARD(p11_with_session(tok, do_shared_id, &shared));
    KMS_ENSURE(shared, KMS_ERR_UNSUPPORTED,
               "the HSM of region %s cannot keep an AES key and an HMAC key under one CKA_ID "
               "(a second secret key replaces the first), which METADATA_AES_HMAC keys need",
               tok->region);
    return KMS_OK;
}

int p11_token_copyable_known(const struct p11_token *tok)
{
    return atomic_load(&((struct p11_token *)tok)->copyable);
}

void p11_tmpl_fit(struct p11_token *tok, CK_SESSION_HANDLE s, CK_ATTRIBUTE *a, CK_ULONG *n)
{
    bool has = false;
    for (CK_ULONG i = 0; i < *n && !has; i++)
        has = a[i].type == CKA_COPYABLE;
    if (!has || p11_token_keeps_copyable(tok, s))
        return;
    CK_ULONG k = 0;
    for (CK_ULONG i = 0; i < *n; i++)
        if (a[i].type != CKA_COPYABLE)
            a[k++] = a[i];
    *n = k;
}

/* RFC 5649 (RFC 3394's wrapping process with the alternative IV
 * A65959A6 || 32) of 32 random bytes under the session key hk, computed
 * with the token's CKM_AES_ECB one block at a time, into out. False when
 * the token cannot (no ECB, a refused call). */
static bool kwp_blob(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE hk,
                     uint8_t out[40])
{
    if (!p11_token_mech_has(tok, CKM_AES_ECB, CKF_ENCRYPT))
        return false;
    uint8_t a[8] = {0xA6, 0x59, 0x59, 0xA6, 0, 0, 0, 32}, r[4][8];
    if (RAND_bytes(&r[0][0], sizeof(r)) != 1)
        return false;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    bool ok = true;
    for (unsigned j = 0; j < 6 && ok; j++) {
        for (unsigned i = 0; i < 4 && ok; i++) {
            uint8_t b[16], e[16];
            CK_ULONG e_len = sizeof(e);
            memcpy(b, a, 8);
            memcpy(b + 8, r[i], 8);
            ok = P11_PROBE_RV(tok, C_EncryptInit, CKM_AES_ECB, s, &ecb, hk) == CKR_OK &&
                 P11_PROBE_RV(tok, C_Encrypt, CKM_AES_ECB, s, b, sizeof(b), e, &e_len) == CKR_OK &&
                 e_len == 16;
            unsigned t = 4 * j + i + 1;
            memcpy(a, e, 8);
            a[7] ^= (uint8_t)t; /* t < 256 */
            memcpy(r[i], e + 8, 8);
        }
    }
    memcpy(out, a, 8);
    memcpy(out + 8, r, sizeof(r));
    OPENSSL_cleanse(r, sizeof(r));
    return ok;
}

void p11_probe_kwp(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    tok->kwp_mech = (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION;
    if (p11_token_mech_has(tok, CKM_AES_KEY_WRAP_KWP, CKF_WRAP | CKF_UNWRAP)) {
        tok->kwp_mech = CKM_AES_KEY_WRAP_KWP;
        return;
    }
    if (!p11_token_mech_has(tok, CKM_AES_KEY_WRAP_PAD, CKF_WRAP | CKF_UNWRAP) ||
        !p11_token_has(tok, P11_CAP_GEN_AES_256))
        return;
    /* PKCS#11 3.0 defines CKM_AES_KEY_WRAP_PAD as RFC 3394 over PKCS#7
     * padding (deprecated in 3.1), but some tokens (SoftHSMv2 2.6.1, see
     * its issue 726) do RFC 5649 under it. Asked by unwrapping, not by
     * wrapping (an HSM's policy may refuse extractable keys; no key
     * material leaves the token for a probe): an RFC 5649 blob of a random
     * 32-byte value is made under a session KEK with the token's own
     * AES-ECB (kwp_blob), and C_UnwrapKey with _PAD takes it only where
     * _PAD is RFC 5649 (a PKCS#7 + RFC 3394 token finds padding that does
     * not check). */
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE kt[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},   {CKA_UNWRAP, &yes, sizeof(yes)},
    };
    CK_ATTRIBUTE ut[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &no, sizeof(no)},       {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_HANDLE hk = CK_INVALID_HANDLE, hu = CK_INVALID_HANDLE;
    uint8_t blob[40];
    if (P11_PROBE_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, kt, sizeof(kt) / sizeof(kt[0]), &hk) ==
            CKR_OK &&
        kwp_blob(tok, s, hk, blob) &&
        P11_PROBE_RV(tok, C_UnwrapKey, CKM_AES_KEY_WRAP_PAD, s, &m, hk, blob, sizeof(blob), ut,
               sizeof(ut) / sizeof(ut[0]), &hu) == CKR_OK)
        tok->kwp_mech = CKM_AES_KEY_WRAP_PAD;
    else
        kms_log_warn("pkcs11",
                     "token '%s': CKM_AES_KEY_WRAP_PAD does not unwrap RFC 5649 here "
                     "(PKCS#11 3.0 defines it as PKCS#7 + RFC 3394) and the token has no "
                     "CKM_AES_KEY_WRAP_KWP: no RFC 5649 wrapping",
                     tok->label);
    if (hu != CK_INVALID_HANDLE)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hu);
    if (hk != CK_INVALID_HANDLE)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hk);
}

/* ---- the capability report (kmsctl hsm check) ---------------------------- */

/* Does C_WrapKey refuse a key whose CKA_EXTRACTABLE is false, as PKCS#11
 * says? Two session keys. -1: could not tell. */
static int probe_wrap_extractable(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    if (tok->kwp_mech == (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION)
        return -1;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE wt[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
        {CKA_WRAP, &yes, sizeof(yes)},      {CKA_EXTRACTABLE, &no, sizeof(no)},
    };
    CK_ATTRIBUTE kt[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_VALUE_LEN, &len, sizeof(len)}, {CKA_TOKEN, &no, sizeof(no)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
    };
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE hw = CK_INVALID_HANDLE, hk = CK_INVALID_HANDLE;
    int r = -1;
    if (P11_PROBE_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, wt, 6, &hw) == CKR_OK &&
        P11_PROBE_RV(tok, C_GenerateKey, CKM_AES_KEY_GEN, s, &gen, kt, 6, &hk) == CKR_OK) {
        uint8_t out[64];
        CK_ULONG out_len = sizeof(out);
        CK_MECHANISM m = {tok->kwp_mech, NULL, 0};
        CK_RV rv = P11_PROBE_RV(tok, C_WrapKey, tok->kwp_mech, s, &m, hw, hk, out, &out_len);
        OPENSSL_cleanse(out, sizeof(out));
        r = rv == CKR_OK ? 0 : 1;
    }
    if (hk != CK_INVALID_HANDLE)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hk);
    if (hw != CK_INVALID_HANDLE)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hw);
    return r;
}

/* RSA-OAEP with SHA-256 and MGF1-SHA-256 in C_UnwrapKey, with a session
 * RSA-2048 pair and an all-zero block: a token that takes the parameters
 * fails on the data, one that does not fails on them. -1: could not tell. */
static int probe_oaep_sha256(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    if (!p11_token_mech_has(tok, CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) ||
        !p11_token_mech_has(tok, CKM_RSA_PKCS_OAEP, CKF_UNWRAP))
        return -1;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &no, sizeof(no)},
                          {CKA_MODULUS_BITS, &bits, sizeof(bits)},
                          {CKA_PUBLIC_EXPONENT, e, sizeof(e)},
                          {CKA_WRAP, &yes, sizeof(yes)}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &no, sizeof(no)},
                           {CKA_SENSITIVE, &yes, sizeof(yes)},
                           {CKA_UNWRAP, &yes, sizeof(yes)}};
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    if (P11_PROBE_RV(tok, C_GenerateKeyPair, CKM_RSA_PKCS_KEY_PAIR_GEN, s, &gen, pub, 4, priv, 3, &hpub,
               &hpriv) != CKR_OK)
        return -1;
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &type, sizeof(type)},
                        {CKA_TOKEN, &no, sizeof(no)}};
    uint8_t zero[256] = {0};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv =
        P11_PROBE_RV(tok, C_UnwrapKey, CKM_RSA_PKCS_OAEP, s, &m, hpriv, zero, sizeof(zero), t, 3, &h);
    if (rv == CKR_OK)
        P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, h);
    P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpriv);
    P11_PROBE_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpub);
    return rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID ||
                   rv == CKR_MECHANISM_INVALID
               ? 0
               : 1;
}

struct report_arg {
    struct p11_cap_report *out;
    size_t max, n;
};

static void row(struct report_arg *a, const char *name, bool ok, const char *value)
{
    if (a->n >= a->max)
        return;
    a->out[a->n].name = name;
    a->out[a->n].ok = ok;
    snprintf(a->out[a->n].value, sizeof(a->out[a->n].value), "%s", value);
    a->n++;
}

static const char *tri(int v, const char *yes_s, const char *no_s)
{
    return v < 0 ? "unknown" : v ? yes_s : no_s;
}

static kms_err do_report(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct report_arg *a = varg;
    for (int c = 0; c < P11_CAP_COUNT; c++) {
        bool has = p11_token_has(tok, (enum p11_cap)c);
        row(a, p11_cap_name((enum p11_cap)c), has, has ? "yes" : "no");
    }
    row(a, "RFC 5649 wrap mechanism",
        tok->kwp_mech != (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION,
        tok->kwp_mech == (CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION
            ? "none"
            : p11_mech_name(tok->kwp_mech));
    int oaep = probe_oaep_sha256(tok, s);
    row(a, "RSA-OAEP with SHA-256 (unwrap)", oaep == 1, tri(oaep, "yes", "no: BYOK offers SHA-1"));
    row(a, "failed GCM tag reported as", !tok->integrity_general,
        tok->integrity_general ? "CKR_GENERAL_ERROR" : "the standard code");
    probe_objects(tok, s);
    int cp = atomic_load(&tok->copyable), ids = atomic_load(&tok->ids_shared);
    row(a, "CKA_COPYABLE on token objects", cp == 1, tri(cp, "yes", "no: left out"));
    row(a, "two secret keys under one CKA_ID", ids == 1,
        tri(ids, "yes", "no: METADATA_AES_HMAC refused"));
    int we = probe_wrap_extractable(tok, s);
    row(a, "C_WrapKey refuses non-extractable", we == 1, tri(we, "yes", "no: Custos checks first"));
    return KMS_OK;
}

kms_err p11_token_report(struct p11_token *tok, struct p11_cap_report *out, size_t max,
                         size_t *out_n)
{
    struct report_arg a = {out, max, 0};
    kms_err rc = p11_with_session(tok, do_report, &a);
    *out_n = a.n;
    return rc;
}
