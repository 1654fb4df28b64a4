/*
 * p11_asym_gen.c - generating a signing key pair in the token, with the
 * read-back of both halves and the retry of a transient failure, and
 * reading a pair's attributes back for inspection.
 */
#include "p11_asym_internal.h"

#include <stdio.h>
#include <string.h>

#include "kms_log.h"
#include "p11_rv.h"

struct gen_arg {
    enum p11_asym_kind kind;
    const struct p11_key_id *id;
    const char *label;
    bool escrow;
    bool transient; /* out: worth retrying (see p11_key.c's create_rv_transient) */
};

kms_err p11_asym_refuse_existing(struct p11_token *tok, CK_SESSION_HANDLE s,
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
    struct p11_asym_tmpl priv, pub;
    CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    KMS_GUARD(p11_asym_refuse_existing(tok, s, a->id));

    p11_asym_tmpl_private(&priv, a->kind, a->id, a->label, a->escrow, P11_ASYM_FOR_GENERATE);
    p11_asym_tmpl_public(&pub, a->kind, a->id, a->label, P11_ASYM_FOR_GENERATE);
    CK_MECHANISM m = {
        p11_asym_kind_is_ec(a->kind) ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    p11_tmpl_fit(tok, s, pub.a, &pub.n);
    p11_tmpl_fit(tok, s, priv.a, &priv.n);
    CK_RV rv = P11_RV(tok, C_GenerateKeyPair, m.mechanism, s, &m, pub.a, pub.n, priv.a, priv.n,
                      &hpub, &hpriv);
    a->transient = rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
    KMS_GUARD(p11_rv_err(rv, "C_GenerateKeyPair", tok->label));
    kms_err rc = p11_asym_check_private(tok, s, hpriv, a->kind, a->escrow, true);
    if (rc == KMS_OK)
        rc = p11_asym_check_public(tok, s, hpub, a->kind);
    if (rc != KMS_OK) {
        kms_log_error("pkcs11", "%s; destroying the new pair", kms_err_detail());
        (void)P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpriv);
        (void)P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpub);
        p11_cache_forget(&tok->cache, a->id->b);
        return rc;
    }
    p11_cache_put(&tok->cache, a->id->b, CKO_PRIVATE_KEY, P11_TYPE_ANY, hpriv);
    p11_cache_put(&tok->cache, a->id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
}

/* An id names at most one pair and nothing else. */
static void undo_generate(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    const struct gen_arg *a = varg;
    p11_key_destroy_in(tok, s, a->id);
}

kms_err p11_asym_generate(struct p11_token *tok, enum p11_asym_kind kind,
                          const struct p11_key_id *id, const char *label, bool escrow_wrappable)
{
    KMS_GUARD(p11_asym_supported(tok, kind));
    KMS_ENSURE(label == NULL || strlen(label) <= 64, KMS_ERR_INVALID_ARGUMENT,
               "key label longer than 64 bytes");
    struct gen_arg a = {kind, id, label, escrow_wrappable, false};
    /* As p11_key_generate: a transient creation failure (SoftHSMv2's file
     * store under concurrent creation) is retried after removing what the
     * failed call left under the id; retries are serialised per token. */
    char what[48];
    snprintf(what, sizeof(what), "%s pair", p11_asym_kind_name(kind));
    return p11_create_retrying(tok, do_generate, undo_generate, &a, &a.transient, what);
}

/* ---- inspection -------------------------------------------------------------------- */

/* The flags every key reports (p11_key_read_flags), and the key type. */
static void read_flags(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       struct p11_key_info *o)
{
    p11_key_read_flags(tok, s, h, o);
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1) == CKR_OK)
        o->key_type = kt;
}

static bool read_bool(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                      CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE at = {type, &v, sizeof(v)};
    return P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1) == CKR_OK && v == CK_TRUE;
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
        if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, hpub, &at, 1) == CKR_OK)
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
