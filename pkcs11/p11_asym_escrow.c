/*
 * p11_asym_escrow.c - the escrow path of a pair's private half: one wrap
 * under the escrow key at birth, the lock that makes it unextractable for
 * good, and the restore of a pair from the wrapped private half and the
 * version's SPKI, with a proof that the two halves belong together.
 */
#include "p11_asym_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_log.h"
#include "p11_rv.h"

/* The fixed digest a restored pair signs and verifies to prove that its
 * two halves belong together. Not secret. */
static const uint8_t pair_probe[32] = "custos restore pair probe v1....";

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
    return p11_kwp_wrap_in(tok, s, hesc, hpriv, "C_WrapKey(private key)", a->out, a->cap, &a->len);
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
    return p11_key_lock_in(tok, s, h, "private key");
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
    struct p11_asym_pub_values pv; /* the public half's, from the SPKI */
};

static kms_err do_restore(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct restore_arg *r = varg;
    kms_err rc = KMS_OK;
    CK_OBJECT_HANDLE hesc, hpriv = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE;
    KMS_GUARD(p11_key_handle(tok, s, r->escrow, CKO_SECRET_KEY, CKK_AES, &hesc));
    KMS_GUARD(p11_asym_refuse_existing(tok, s, r->id));

    struct p11_asym_tmpl priv, pub;
    p11_asym_tmpl_private(&priv, r->kind, r->id, r->label, false, P11_ASYM_FOR_UNWRAP);
    CK_MECHANISM m = {tok->kwp_mech, NULL, 0};
    p11_tmpl_fit(tok, s, priv.a, &priv.n);
    CK_RV rv = P11_RV(tok, C_UnwrapKey, tok->kwp_mech, s, &m, hesc, (CK_BYTE *)r->blob, r->blob_len,
                      priv.a, priv.n, &hpriv);
    /* SoftHSMv2 answers a failed RFC 5649 integrity check with
     * CKR_GENERAL_ERROR (see p11_crypto.c); a blob for another key type
     * fails the PKCS#8 decoding the same way. */
    if (rv == CKR_GENERAL_ERROR && tok->integrity_general)
        rv = CKR_WRAPPED_KEY_INVALID;
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_UnwrapKey(private key)", tok->label), fail);
    KMS_GUARD_GOTO(p11_asym_check_private(tok, s, hpriv, r->kind, false, false), fail);

    p11_asym_tmpl_public(&pub, r->kind, r->id, r->label, P11_ASYM_FOR_UNWRAP);
    /* Before CKA_MODIFIABLE (the template's last attribute): same order rule
     * as for unwraps, harmless elsewhere. */
    CK_ATTRIBUTE last = pub.a[--pub.n];
    if (p11_asym_kind_is_ec(r->kind)) {
        p11_asym_tmpl_add(&pub, CKA_EC_POINT, r->pv.a, r->pv.a_len);
    } else {
        p11_asym_tmpl_add(&pub, CKA_MODULUS, r->pv.a, r->pv.a_len);
        p11_asym_tmpl_add(&pub, CKA_PUBLIC_EXPONENT, r->pv.b, r->pv.b_len);
    }
    pub.a[pub.n++] = last;
    p11_tmpl_fit(tok, s, pub.a, &pub.n);
    rv = P11_RV(tok, C_CreateObject, P11_NO_MECH, s, pub.a, pub.n, &hpub);
    KMS_GUARD_GOTO(p11_rv_err(rv, "C_CreateObject(public key)", tok->label), fail);
    KMS_GUARD_GOTO(p11_asym_check_public(tok, s, hpub, r->kind), fail);

    /* The SPKI is the caller's record; prove it is this private key's. */
    enum p11_sig_alg alg =
        p11_asym_kind_is_ec(r->kind) ? P11_SIG_ECDSA_SHA256 : P11_SIG_RSA_PSS_SHA256;
    uint8_t sig[P11_ASYM_SIG_MAX];
    size_t sig_len = sizeof(sig);
    bool valid = false;
    KMS_GUARD_GOTO(p11_asym_sign_in(tok, s, hpriv, alg, pair_probe, sig, &sig_len), fail);
    KMS_GUARD_GOTO(p11_asym_verify_in(tok, s, hpub, alg, pair_probe, sig, sig_len, &valid), fail);
    KMS_ENSURE_GOTO(valid, fail, KMS_ERR_BAD_CIPHERTEXT,
                    "the escrowed private key does not match the version's public key");
    p11_cache_put(&tok->cache, r->id->b, CKO_PRIVATE_KEY, P11_TYPE_ANY, hpriv);
    p11_cache_put(&tok->cache, r->id->b, CKO_PUBLIC_KEY, P11_TYPE_ANY, hpub);
    return KMS_OK;
fail:
    if (hpub != CK_INVALID_HANDLE)
        (void)P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpub);
    if (hpriv != CK_INVALID_HANDLE)
        (void)P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, hpriv);
    p11_cache_forget(&tok->cache, r->id->b);
    return rc;
}

kms_err p11_asym_restore(struct p11_token *tok, const struct p11_key_id *escrow,
                         const uint8_t *blob, size_t blob_len, enum p11_asym_kind kind,
                         const struct p11_key_id *id, const char *label, const uint8_t *spki,
                         size_t spki_len)
{
    KMS_ENSURE(p11_asym_kind_valid(kind), KMS_ERR_INVALID_ARGUMENT, "unknown key pair kind %d",
               (int)kind);
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
    kms_err rc = p11_asym_spki_values(kind, spki, spki_len, &r->pv);
    if (rc == KMS_OK)
        rc = p11_with_session(tok, do_restore, r);
    free(r);
    return rc;
}

kms_err p11_asym_restore_supported(struct p11_token *tok, const struct p11_key_id *escrow,
                                   enum p11_asym_kind kind)
{
    KMS_ENSURE((unsigned)kind < sizeof(tok->asym_restore) / sizeof(tok->asym_restore[0]),
               KMS_ERR_INVALID_ARGUMENT, "unknown key pair kind %d", (int)kind);
    int known = atomic_load(&tok->asym_restore[kind]);
    if (known < 0) {
        struct p11_key_id a, b;
        uint8_t *blob = malloc(P11_ASYM_ESCROW_MAX), *spki = NULL;
        size_t blob_len = 0, spki_len = 0;
        kms_err rc = blob != NULL ? KMS_OK : kms_err_set(KMS_ERR_NOMEM, "out of memory");
        if (rc == KMS_OK)
            rc = p11_key_id_new(tok, &a);
        if (rc == KMS_OK)
            rc = p11_key_id_new(tok, &b);
        bool made = false;
        if (rc == KMS_OK)
            made = (rc = p11_asym_generate(tok, kind, &a, "custos:probe", true)) == KMS_OK;
        if (rc == KMS_OK)
            rc = p11_asym_public_spki(tok, &a, &spki, &spki_len);
        if (rc == KMS_OK)
            rc = p11_asym_escrow_wrap(tok, escrow, &a, blob, P11_ASYM_ESCROW_MAX, &blob_len);
        if (rc == KMS_OK) {
            known = p11_asym_restore(tok, escrow, blob, blob_len, kind, &b, "custos:probe", spki,
                                     spki_len) == KMS_OK;
            if (!known)
                kms_log_warn("pkcs11",
                             "token '%s' cannot restore an escrowed %s private key "
                             "(%s): such keys are refused where escrow is required",
                             tok->label, p11_asym_kind_name(kind), kms_err_detail());
            atomic_store(&tok->asym_restore[kind], known);
            p11_key_destroy(tok, &b);
        }
        if (made)
            p11_key_destroy(tok, &a);
        if (blob != NULL)
            OPENSSL_cleanse(blob, P11_ASYM_ESCROW_MAX);
        free(blob);
        OPENSSL_free(spki);
        KMS_GUARD(rc);
        kms_err_clear();
    }
    /* Worded for the client (no token label: kms_err_client_msg keeps
     * details that name one for the log). */
    KMS_ENSURE(known == 1, KMS_ERR_UNSUPPORTED,
               "the HSM of region %s cannot restore an escrowed %s private key, so it cannot "
               "keep the escrow promise for one",
               tok->region, p11_asym_kind_name(kind));
    return KMS_OK;
}
