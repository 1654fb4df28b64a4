/*
 * kms_import_material.c - BYOK's ImportKeyMaterial: check the import token,
 * unwrap the tenant's material inside the region's token (never in this
 * process: see kms_import.c for where the key is at every instant), compare
 * its key check value, escrow it at birth where the tenant requires it, and
 * activate the version in one commit that spends the token.
 */
#include "kms_import.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "kms_escrow.h"
#include "kms_keyadmin.h"
#include "kms_keycache.h"
#include "kms_keyuse.h"
#include "kms_log.h"
#include "p11_crypto.h"
#include "pol_eval.h"
#include "proto/key.pb-c.h"
#include "kms_import_internal.h"

/* ---- ImportKeyMaterial ------------------------------------------------------------------ */

/* Everything one import touches, for the unwind. */
struct import {
    struct kms_call *call;
    struct kms_store *st;
    struct p11_token *tok;
    struct kms_key_record key;
    struct kms_import_token_record itok;
    const uint8_t *wrapped; /* KMS_IMPORT_WRAPPED_LEN bytes */
    enum p11_oaep_hash hash;
    bool single_step;
    struct p11_key_id rsa, transport, target;
    bool have_transport;
    uint8_t kcv[KMS_KCV_LEN];
    uint32_t version;
    bool version_is_new; /* CREATING: its escrow blob is still to be stored */
    bool first;
    /* Set when a refusal is the tenant's doing (counts against the token). */
    bool tenant_fault;
};

static kms_err tenant_refusal(struct import *x, kms_err err, const char *msg)
{
    x->tenant_fault = true;
    return kms_err_set(err, "%s", msg);
}

/* RSADP's first step (RFC 8017, 5.1.2): the OAEP block, read as a number,
 * must be below the wrapping key's modulus, else it was made for another
 * key. Checked before the HSM unwraps, because HSMs disagree
 * on what they answer for it: SoftHSMv2 says the data is invalid, NSS's
 * softoken a device error (a 500 for a tenant's mistake, found when the
 * other key's modulus happened to be the larger one). */
static kms_err check_oaep_range(struct import *x)
{
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    EVP_PKEY *pk = NULL;
    BIGNUM *n = NULL, *c = NULL;
    KMS_GUARD(p11_public_key_der(x->tok, &x->rsa, &spki, &spki_len));
    kms_err rc = KMS_OK;
    const unsigned char *p = spki;
    pk = d2i_PUBKEY(NULL, &p, (long)spki_len);
    KMS_ENSURE_GOTO(pk != NULL && EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) == 1, done,
                    KMS_ERR_INTERNAL, "the import token's wrapping key is not an RSA key");
    c = BN_bin2bn(x->wrapped, 384, NULL);
    KMS_ENSURE_GOTO(c != NULL, done, KMS_ERR_RESOURCE_EXHAUSTED, "out of memory");
    if (BN_cmp(c, n) >= 0)
        rc = tenant_refusal(x, KMS_ERR_BAD_CIPHERTEXT,
                            "wrapped_material does not unwrap with this import token's wrapping "
                            "key: its RSA-OAEP block is not below the key's modulus (wrapped "
                            "with another wrapping key, or corrupted)");
done:
    BN_free(c);
    BN_free(n);
    EVP_PKEY_free(pk);
    free(spki);
    return rc;
}

/* Unwrap the tenant's material into a new object `id` of `kind` inside the
 * token. Two-step tokens keep the transport key for the whole import. */
static kms_err unwrap_material(struct import *x, enum p11_key_kind kind, unsigned flags,
                               const struct p11_key_id *id, const char *label)
{
    kms_err rc;
    if (x->single_step) {
        rc = p11_rsa_aes_unwrap(x->tok, &x->rsa, x->hash, x->wrapped, KMS_IMPORT_WRAPPED_LEN,
                                kind, flags, id, label);
    } else {
        if (!x->have_transport) {
            KMS_GUARD(p11_key_id_new(x->tok, &x->transport));
            /* A session object: gone with its session even if we crash. */
            rc = p11_oaep_unwrap(x->tok, &x->rsa, x->hash, x->wrapped, 384,
                                 P11_KEY_AES_TRANSPORT, P11_KEY_EPHEMERAL, &x->transport, NULL);
            if (rc != KMS_OK)
                goto out;
            x->have_transport = true;
        }
        rc = p11_kwp_unwrap(x->tok, &x->transport, x->wrapped + 384, 40, kind, flags, id, label);
    }
out:
    if (rc == KMS_ERR_BAD_CIPHERTEXT)
        return tenant_refusal(x, KMS_ERR_BAD_CIPHERTEXT,
                              "wrapped_material does not unwrap with this import token's "
                              "wrapping key: it is corrupted, or was wrapped with another "
                              "wrapping key (another import token or region) or another "
                              "algorithm");
    return rc;
}

/* Step 0: the material's KCV, from a throw-away session copy, so that a
 * refusal leaves no token object behind. */
static kms_err probe_material(struct import *x)
{
    struct p11_key_id probe;
    KMS_GUARD(p11_key_id_new(x->tok, &probe));
    KMS_GUARD(unwrap_material(x, P11_KEY_AES_ENCRYPT, P11_KEY_EPHEMERAL, &probe, NULL));
    kms_err rc = kms_import_kcv(x->tok, &probe, x->kcv);
    struct kms_import_detail d;
    kms_import_detail_save(&d);
    p11_key_destroy(x->tok, &probe);
    kms_import_detail_restore(&d, rc);
    /* The unwrap took 40 bytes of RFC 5649, i.e. a 25..32-byte key, and a
     * token may not say how long (SoftHSMv2 reports CKA_VALUE_LEN 0 after an
     * unwrap). AES with a key that just unwrapped fails only if its length
     * is not an AES one (SoftHSMv2: CKR_MECHANISM_INVALID at C_EncryptInit);
     * trouble with the token itself comes as the codes passed through. */
    if (rc == KMS_ERR_HSM || rc == KMS_ERR_INVALID_ARGUMENT || rc == KMS_ERR_UNSUPPORTED ||
        rc == KMS_ERR_BAD_CIPHERTEXT)
        return tenant_refusal(x, KMS_ERR_INVALID_ARGUMENT,
                              "the wrapped key is not a 256-bit AES key");
    return rc;
}

/* Escrow at birth (DESIGN.md "Escrow and recovery"). When the key must be
 * escrowed, step 2 unwraps with P11_KEY_ESCROWABLE (the transport key's
 * unwrap template allows an extractable result; the RSA key's does not, so
 * escrowed imports take the two-step path), and this step wraps the new
 * object under the region's escrow key, stores the blob with the CREATING
 * version and locks the object (kms_escrow.h). An object re-made for a
 * version that is already ACTIVE (and so already escrowed) is only locked. */
static bool escrowed(const struct import *x)
{
    const struct pol_tenant *pt = pol_principal_tenant(x->call->who);
    return x->key.escrow_required || (pt != NULL && pol_tenant_escrow_required(pt));
}

static unsigned escrow_flags(const struct import *x)
{
    return escrowed(x) ? P11_KEY_ESCROWABLE : 0;
}

static kms_err escrow_at_birth(struct import *x)
{
    if (!escrowed(x))
        return KMS_OK;
    return kms_escrow_seal(x->call->svc, x->tok, x->key.key_id, x->version, &x->target,
                           KMS_KEY_SPEC_AES_256, x->version_is_new);
}

/* Step 2: the version's object, unwrapped again from the same material into
 * the token under its hsm_id, then checked against the probe's KCV. */
static kms_err make_object(struct import *x, const char *label)
{
    /* If the unwrap fails nothing was made here, and the id may already
     * name an object a concurrent request made: leave it. */
    KMS_GUARD(unwrap_material(x, P11_KEY_AES_ENCRYPT, escrow_flags(x), &x->target, label));
    uint8_t kcv[KMS_KCV_LEN];
    kms_err rc = kms_import_kcv(x->tok, &x->target, kcv);
    if (rc == KMS_OK && CRYPTO_memcmp(kcv, x->kcv, KMS_KCV_LEN) != 0)
        rc = kms_err_set(KMS_ERR_HSM, "the token unwrapped the same material into two keys");
    if (rc == KMS_OK)
        rc = escrow_at_birth(x);
    if (rc != KMS_OK) {
        struct kms_import_detail d;
        kms_import_detail_save(&d);
        p11_key_destroy(x->tok, &x->target);
        kms_import_detail_restore(&d, rc);
    }
    return rc;
}

static kms_err do_import(struct import *x, bool new_version)
{
    KMS_GUARD(probe_material(x));

    /* Which version does this material belong to? */
    struct kms_kcv_record *kcvs = NULL;
    size_t n = 0;
    uint32_t match = 0;
    KMS_GUARD(kms_store_key_check_values(x->st, x->key.key_id, &kcvs, &n));
    for (size_t i = 0; i < n; i++)
        if (CRYPTO_memcmp(kcvs[i].kcv, x->kcv, KMS_KCV_LEN) == 0)
            match = kcvs[i].version;
    free(kcvs);

    char label[80];
    if (match != 0) {
        /* The same material again. */
        if (new_version) {
            char msg[160];
            snprintf(msg, sizeof(msg),
                     "this material is already version %" PRIu32
                     " of the key; a new version needs new material",
                     match);
            return tenant_refusal(x, KMS_ERR_FAILED_PRECONDITION, msg);
        }
        struct kms_version_record v;
        KMS_GUARD(kms_store_version_get(x->st, x->key.key_id, match, &v));
        memcpy(x->target.b, v.hsm_id, sizeof(x->target.b));
        x->version = match;
        bool exists = true;
        KMS_GUARD(p11_key_exists(x->tok, &x->target, &exists));
        if (!exists) {
            /* The version's object is gone from the token (material
             * deleted, token replaced): put the tenant's copy back under
             * the same CKA_ID, so every ciphertext decrypts again. */
            kms_import_version_label(label, x->key.key_id, match);
            KMS_GUARD(make_object(x, label));
            kms_log_warn("import", "request %s: key %s v%" PRIu32
                         ": HSM object was missing, restored from re-imported material",
                         x->call->request_id, x->key.key_id, match);
        }
        return kms_store_import_commit(x->st, x->itok.token_id, x->key.key_id, match, x->kcv,
                                       false);
    }
    if (n > 0 && !new_version)
        return tenant_refusal(x, KMS_ERR_FAILED_PRECONDITION,
                              "the wrapped material is not this key's material (key check "
                              "values differ); to add new material as a new version, set "
                              "new_version");

    /* New material: a new version, by the create protocol. */
    x->first = n == 0;
    KMS_GUARD(p11_key_id_new(x->tok, &x->target));
    KMS_GUARD(kms_store_version_add(x->st, x->key.key_id, x->target.b, (int64_t)time(NULL),
                                    &x->version));
    x->version_is_new = true;
    kms_import_version_label(label, x->key.key_id, x->version);
    kms_err rc = make_object(x, label);
    if (rc == KMS_OK)
        rc = kms_store_import_commit(x->st, x->itok.token_id, x->key.key_id, x->version, x->kcv,
                                     x->first);
    if (rc != KMS_OK) {
        struct kms_import_detail d;
        kms_import_detail_save(&d);
        p11_key_destroy(x->tok, &x->target);
        kms_store_creating_discard(x->st, x->key.key_id, x->version);
        kms_import_detail_restore(&d, rc);
        /* Two imports raced for one key: the loser's material was fine. */
        if (rc == KMS_ERR_FAILED_PRECONDITION)
            x->tenant_fault = false;
    }
    return rc;
}

/* The import token as presented, checked against the store: clear errors
 * for each way it can be unusable. Never trusts anything in the token but
 * its hash. */
kms_err kms_import_token_parse(const uint8_t *token, size_t len,
                               uint8_t out_id[KMS_IMPORT_TOKEN_ID_LEN])
{
    /* Only the length and the format byte can be checked without the
     * store: the rest is 32 random bytes, known by their hash. */
    KMS_ENSURE(token != NULL && len == KMS_IMPORT_TOKEN_LEN && token[0] == KMS_IMPORT_TOKEN_FORMAT,
               KMS_ERR_INVALID_ARGUMENT, "%s", KMS_IMPORT_TOKEN_INVALID);
    SHA256(token, len, out_id);
    return KMS_OK;
}

static kms_err check_import_token(struct import *x, const ProtobufCBinaryData *token,
                                  int64_t now)
{
    static const char invalid[] = KMS_IMPORT_TOKEN_INVALID;
    uint8_t id[KMS_IMPORT_TOKEN_ID_LEN];
    KMS_GUARD(kms_import_token_parse(token->data, token->len, id));
    kms_err rc = kms_store_import_token_get(x->st, id, &x->itok);
    KMS_ENSURE(rc != KMS_ERR_NOT_FOUND, KMS_ERR_INVALID_ARGUMENT, "%s", invalid);
    KMS_GUARD(rc);
    KMS_ENSURE(strcmp(x->itok.key_id, x->key.key_id) == 0, KMS_ERR_INVALID_ARGUMENT,
               "import token was issued for another key; call GetImportParameters for this "
               "one");
    KMS_ENSURE(strcmp(x->itok.token, x->key.token) == 0, KMS_ERR_FAILED_PRECONDITION,
               "import token's wrapping key is not in the HSM token of the key's region");
    switch (x->itok.state) {
    case KMS_IMPORT_ISSUED:
        break;
    case KMS_IMPORT_CLAIMED:
        return kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                           "import token is being used by another request");
    case KMS_IMPORT_CREATING:
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT, "%s", invalid);
    case KMS_IMPORT_SPENT:
    case KMS_IMPORT_CLOSED:
        switch (x->itok.end) {
        case KMS_IMPORT_END_USED:
            return kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                               "import token was already used: a token imports once; call "
                               "GetImportParameters for a new one");
        case KMS_IMPORT_END_FAILURES:
            return kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                               "import token is void after %d refused attempts; call "
                               "GetImportParameters for a new one",
                               KMS_IMPORT_MAX_FAILURES);
        default:
            break;
        }
        break;
    }
    if (x->itok.state != KMS_IMPORT_ISSUED || x->itok.expires_at <= now) {
        char when[32] = "";
        time_t tt = (time_t)x->itok.expires_at;
        struct tm tm;
        if (gmtime_r(&tt, &tm))
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        return kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                           "import token expired at %s; call GetImportParameters for a new one",
                           when);
    }
    memcpy(x->rsa.b, x->itok.hsm_id, sizeof(x->rsa.b));
    return KMS_OK;
}

static kms_err choose_algorithm(struct import *x, Custos__V1__WrappingAlgorithm asked)
{
    Custos__V1__WrappingAlgorithm algs[2];
    size_t n = 0;
    KMS_GUARD(kms_import_offered_algorithms(x->tok, &x->rsa, algs, &n));
    Custos__V1__WrappingAlgorithm a =
        asked == CUSTOS__V1__WRAPPING_ALGORITHM__WRAPPING_ALGORITHM_UNSPECIFIED ? algs[0] : asked;
    bool ok = false;
    for (size_t i = 0; i < n; i++)
        ok |= algs[i] == a;
    KMS_ENSURE(ok, KMS_ERR_FAILED_PRECONDITION,
               "the HSM of region %s cannot unwrap %s; it offers %s", x->key.region,
               kms_import_alg_name(a), kms_import_alg_name(algs[0]));
    x->hash = a == CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_256 ? P11_OAEP_SHA256
                                                                            : P11_OAEP_SHA1;
    x->single_step = p11_token_has(x->tok, P11_CAP_RSA_AES_KEY_WRAP) && escrow_flags(x) == 0;
    return KMS_OK;
}

kms_err kms_rpc_import_key_material(struct kms_call *call, const ProtobufCMessage *msg,
                                    struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__ImportKeyMaterialRequest *req = (const void *)msg;
    struct import x;
    memset(&x, 0, sizeof(x));
    x.call = call;
    x.st = kms_service_store(call->svc);
    bool claimed = false;
    Custos__V1__KeyMetadata *md = NULL;

    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_IMPORT_KEY_MATERIAL, req->key_id, &x.key),
                   done);
    KMS_GUARD_GOTO(kms_import_check_importable(call, &x.key, req->new_version), done);
    KMS_GUARD_GOTO(kms_keyuse_token(call, &x.key, &x.tok), done);
    int64_t now = (int64_t)time(NULL);
    KMS_GUARD_GOTO(check_import_token(&x, &req->import_token, now), done);
    KMS_ENSURE_GOTO(req->wrapped_material.len == KMS_IMPORT_WRAPPED_LEN, done,
                    KMS_ERR_INVALID_ARGUMENT,
                    "wrapped_material must be %d bytes (the 384-byte RSA-OAEP block of the "
                    "ephemeral AES-256 key, then the 40-byte RFC 5649 wrap of a 32-byte key), "
                    "got %zu",
                    KMS_IMPORT_WRAPPED_LEN, req->wrapped_material.len);
    x.wrapped = req->wrapped_material.data;
    /* What the request alone decides is refused before the claim, so that
     * it never holds the token against a good request. */
    KMS_ENSURE_GOTO(req->algorithm ==
                            CUSTOS__V1__WRAPPING_ALGORITHM__WRAPPING_ALGORITHM_UNSPECIFIED ||
                        req->algorithm == CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_256 ||
                        req->algorithm == CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_1,
                    done, KMS_ERR_INVALID_ARGUMENT, "algorithm %d is not a wrapping algorithm",
                    (int)req->algorithm);

    /* 1. One import per token at a time, and only before it expires. */
    rc = kms_store_import_token_claim(x.st, x.itok.token_id, x.key.key_id, now);
    if (rc == KMS_ERR_FAILED_PRECONDITION)
        rc = kms_err_set(rc, "import token was used or expired meanwhile");
    if (rc != KMS_OK)
        goto done;
    claimed = true;
    /* Only now is the wrapping key ours to read: before the claim another
     * node may be importing with this token and destroy the key under us
     * (its loser then saw "not found" instead of the token's refusal). */
    KMS_GUARD_GOTO(choose_algorithm(&x, req->algorithm), done);
    KMS_GUARD_GOTO(check_oaep_range(&x), done);
    /* 2-3. Unwrap, check, make the version's object, commit. */
    KMS_GUARD_GOTO(do_import(&x, req->new_version), done);
    claimed = false; /* spent by the commit */
    call->audit.key_version = x.version;
    kms_log_info("import", "request %s: key %s: material imported as version %" PRIu32,
                 call->request_id, x.key.key_id, x.version);
    /* Used: the wrapping key goes now (a failure here leaves the token
     * SPENT, and the sweep destroys the key later). */
    if (kms_import_finish_spent(call->svc, x.tok, &x.itok) != KMS_OK)
        kms_log_error("import", "request %s: wrapping key not destroyed yet: %s",
                      call->request_id, kms_err_detail());
    kms_import_sweep(call->svc, now, KMS_IMPORT_SWEEP_BATCH, NULL);

    KMS_GUARD_GOTO(kms_rpc_key_metadata_new(call, x.key.key_id, &md), done);
    Custos__V1__ImportKeyMaterialResponse resp = CUSTOS__V1__IMPORT_KEY_MATERIAL_RESPONSE__INIT;
    resp.key = md;
    resp.key_version = x.version;
    resp.key_check_value.data = x.kcv;
    resp.key_check_value.len = sizeof(x.kcv);
    rc = kms_rpc_pack(&resp.base, reply);
done:;
    struct kms_import_detail d;
    kms_import_detail_save(&d);
    bool burnt = false;
    if (claimed) {
        /* Not imported: the token is usable again, unless this refusal was
         * the tenant's last allowed one. */
        kms_err rrc = kms_store_import_token_release(x.st, x.itok.token_id, x.tenant_fault,
                                                     KMS_IMPORT_MAX_FAILURES, &burnt);
        if (rrc != KMS_OK)
            kms_log_error("import", "request %s: import token not released: %s",
                          call->request_id, kms_err_detail());
        if (burnt && kms_import_finish_spent(call->svc, x.tok, &x.itok) != KMS_OK)
            kms_log_error("import", "request %s: wrapping key not destroyed yet: %s",
                          call->request_id, kms_err_detail());
    }
    /* Whatever happened to the key's versions, this node's cache must not
     * serve what it knew before (an import is rare; be blunt). */
    if (x.key.key_id[0])
        kms_keycache_invalidate(kms_service_keycache(call->svc), x.key.key_id);
    /* The ephemeral key dies with its session anyway; do not wait. */
    if (x.have_transport)
        p11_key_destroy(x.tok, &x.transport);
    if (rc != KMS_OK) {
        if (burnt)
            kms_err_set(rc, "%s; the import token is now void after %d refused attempts", d.s,
                        KMS_IMPORT_MAX_FAILURES);
        else
            kms_import_detail_restore(&d, rc);
        if (x.key.key_id[0])
            kms_log_info("import", "request %s: import into key %s refused: %s",
                         call->request_id, x.key.key_id, kms_err_detail());
    }
    kms_rpc_key_metadata_free(md);
    if (req->import_token.data)
        OPENSSL_cleanse(req->import_token.data, req->import_token.len);
    return rc;
}
