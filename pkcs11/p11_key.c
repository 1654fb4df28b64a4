/*
 * p11_key.c - a key's life in the token: fresh ids, generation (with the
 * retry of a transiently failed creation), escrow lock, destruction.
 * Templates are in p11_key_kind.c, lookups in p11_key_find.c.
 */
#include "p11_key.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_log.h"
#include "p11_internal.h"

static CK_BBOOL no = CK_FALSE;

/* ---- ids ----------------------------------------------------------------- */

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

/* After a transient failure the token may hold part of what it was asked to
 * make (an object of this class and type under the id, or a pair's public
 * half): remove exactly that, never the other secret key of a metadata
 * version that shares the id. */
static void undo_partial(struct p11_token *tok, CK_SESSION_HANDLE s, const struct gen_arg *a)
{
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(a->kind, &cls, &type);
    if (p11_kind_is_pair(a->kind)) {
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
    if (p11_find_objects(tok, s, t, 3, found, 4, &n) == KMS_OK)
        for (CK_ULONG i = 0; i < n; i++)
            P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, found[i]);
    p11_cache_forget(&tok->cache, a->id->b);
}

void p11_key_destroy_in(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id)
{
    CK_ATTRIBUTE t = {CKA_ID, (void *)id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    if (p11_find_objects(tok, s, &t, 1, found, 4, &n) == KMS_OK)
        for (CK_ULONG i = 0; i < n; i++)
            P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, found[i]);
    p11_cache_forget(&tok->cache, id->b);
}

kms_err p11_key_admit(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                      enum p11_key_kind kind, unsigned flags, bool generated, CK_OBJECT_HANDLE h,
                      CK_OBJECT_HANDLE hpub, const char *what)
{
    kms_err rc = p11_key_verify(tok, s, h, kind, flags, generated);
    if (rc != KMS_OK) {
        kms_log_error("pkcs11", "%s; destroying the %s", kms_err_detail(), what);
        P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, h);
        if (hpub != CK_INVALID_HANDLE)
            P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpub);
        return rc;
    }
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(kind, &cls, &type);
    p11_cache_put(&tok->cache, id->b, cls, type, h);
    if (hpub != CK_INVALID_HANDLE)
        p11_cache_put(&tok->cache, id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
}

static kms_err do_generate(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct gen_arg *a = varg;
    struct p11_tmpl priv, pub;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    CK_ULONG bits = 0;
    CK_RV rv;

    KMS_GUARD(p11_key_refuse_existing(tok, s, a->id, a->kind));

    p11_tmpl_secret(&priv, a->kind, a->flags, a->id, a->label, false);
    if (p11_kind_is_pair(a->kind)) {
        p11_tmpl_public(&pub, a->kind, a->id, a->label, &bits);
        CK_MECHANISM m = {a->kind == P11_KEY_EC_P256_SIGN ? CKM_EC_KEY_PAIR_GEN
                                                          : CKM_RSA_PKCS_KEY_PAIR_GEN,
                          NULL, 0};
        CK_ULONG npub = pub.n, npriv = priv.n;
        p11_tmpl_fit(tok, s, pub.a, &npub);
        p11_tmpl_fit(tok, s, priv.a, &npriv);
        rv = P11_RV(tok, C_GenerateKeyPair, m.mechanism, s, &m, pub.a, npub, priv.a, npriv, &hpub,
                    &h);
        a->transient = p11_rv_transient(rv);
        KMS_GUARD(p11_rv_err(rv, "C_GenerateKeyPair", tok->label));
    } else {
        CK_MECHANISM m = {a->kind == P11_KEY_HMAC_SHA256 ? CKM_GENERIC_SECRET_KEY_GEN
                                                         : CKM_AES_KEY_GEN,
                          NULL, 0};
        CK_ULONG npriv = priv.n;
        p11_tmpl_fit(tok, s, priv.a, &npriv);
        rv = P11_RV(tok, C_GenerateKey, m.mechanism, s, &m, priv.a, npriv, &h);
        a->transient = p11_rv_transient(rv);
        KMS_GUARD(p11_rv_err(rv, "C_GenerateKey", tok->label));
    }
    return p11_key_admit(tok, s, a->id, a->kind, a->flags, true, h, hpub, "new key");
}

static void undo_generate(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    undo_partial(tok, s, varg);
}

kms_err p11_key_generate(struct p11_token *tok, enum p11_key_kind kind, unsigned flags,
                         const struct p11_key_id *id, const char *label)
{
    KMS_GUARD(p11_key_kind_supported(tok, kind));
    KMS_ENSURE(!(flags & P11_KEY_ESCROWABLE) || !p11_kind_is_pair(kind), KMS_ERR_INVALID_ARGUMENT,
               "only secret keys can be escrowed");
    KMS_ENSURE(label == NULL || strlen(label) <= 64, KMS_ERR_INVALID_ARGUMENT,
               "key label longer than 64 bytes");
    struct gen_arg a = {kind, flags, id, label, false};
    return p11_create_retrying(tok, do_generate, undo_generate, &a, &a.transient,
                               p11_key_kind_name(kind));
}

kms_err p11_create_retrying(struct p11_token *tok, p11_session_fn create,
                            void (*undo)(struct p11_token *, CK_SESSION_HANDLE, void *),
                            void *arg, bool *transient, const char *what)
{
    kms_err rc = KMS_OK;
    /* A transient creation failure is retried, after removing whatever the
     * failed call left under the id; the retries run one at a time per
     * token (create_lock), so two retrying creations do not collide again.
     * The first attempt stays concurrent: most tokens never need this. */
    for (int attempt = 1;; attempt++) {
        *transient = false;
        if (attempt == 1) {
            rc = p11_with_session(tok, create, arg);
        } else {
            pthread_mutex_lock(&tok->create_lock);
            rc = p11_with_session(tok, create, arg);
            pthread_mutex_unlock(&tok->create_lock);
        }
        if (rc == KMS_OK || !*transient || attempt >= P11_CREATE_ATTEMPTS)
            break;
        kms_log_warn("pkcs11", "token '%s': %s creation failed transiently (attempt %d of %d); "
                     "retrying", tok->label, what, attempt, P11_CREATE_ATTEMPTS);
        CK_SESSION_HANDLE s;
        if (p11_session_take(tok, &s) == KMS_OK) {
            undo(tok, s, arg);
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
    KMS_GUARD(p11_key_handle_kind(tok, s, la->id, la->kind, &h));
    return p11_key_lock_in(tok, s, h, "key");
}

kms_err p11_key_lock_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        const char *what)
{
    CK_ATTRIBUTE a = {CKA_EXTRACTABLE, &no, sizeof(no)};
    CK_RV rv = P11_RV(tok, C_SetAttributeValue, P11_NO_MECH, s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_SetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    CK_BBOOL now = CK_TRUE;
    a.pValue = &now;
    rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &a, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_EXTRACTABLE)", tok->label));
    KMS_ENSURE(now == CK_FALSE, KMS_ERR_HSM, "token '%s' did not lock the %s", tok->label, what);
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
    KMS_GUARD(p11_find_objects(tok, s, &t, 1, found, 4, &n));
    /* Forget first: no thread may pick up a handle that is about to die. */
    p11_cache_forget(&tok->cache, id->b);
    KMS_ENSURE(n > 0, KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_RV rv = P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, found[i]);
        KMS_GUARD(p11_rv_err(rv, "C_DestroyObject", tok->label));
    }
    return KMS_OK;
}

kms_err p11_key_destroy(struct p11_token *tok, const struct p11_key_id *id)
{
    return p11_with_session(tok, do_destroy, (void *)id);
}

