/*
 * xks_ops.c - GetKeyMetadata, Encrypt and Decrypt of the XKS proxy API on
 * Custos keys (xks_ops.h).
 *
 * Encrypt: the key's current version; a random 96-bit IV from the host
 * DRBG (the same bound of 2^32 messages per version as Encrypt, counted by
 * kms_usage); ciphertextMetadata = format 1 + the key version; the HSM's AAD
 * = len16(aad) || aad || len8(md) || md (spec); with a CDIV request the CDIV
 * is computed first, then the ciphertext is decrypted in the HSM and
 * compared with the plaintext before answering (spec, Appendix C).
 * Decrypt: the version named by ciphertextMetadata; any mismatch (version
 * unknown, metadata altered, AAD, IV, tag) is InvalidCiphertextException.
 */
#include "xks_ops.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_keycache.h"
#include "kms_keyuse.h"
#include "kms_store.h"
#include "kms_usage.h"
#include "p11_crypto.h"

/* Set the spec's error and a client-safe detail. */
static kms_err fail(struct xks_reply *reply, enum xks_error e, kms_err code, const char *msg)
{
    reply->err = e;
    return kms_err_set(code, "%s", msg);
}

/* The spec's error for a failure of the key layer or the HSM. */
static kms_err fail_from(struct xks_reply *reply, kms_err rc)
{
    switch (rc) {
    case KMS_ERR_BAD_CIPHERTEXT:
        reply->err = XKS_E_INVALID_CIPHERTEXT;
        return kms_err_set(rc, "the ciphertext, metadata, IV, tag or AAD does not match");
    case KMS_ERR_FAILED_PRECONDITION:
        reply->err = XKS_E_INVALID_STATE;
        return rc; /* the key layer's detail: region not served, key state */
    case KMS_ERR_RESOURCE_EXHAUSTED:
        reply->err = XKS_E_THROTTLING;
        return rc;
    case KMS_ERR_HSM_UNAVAILABLE:
    case KMS_ERR_HSM_SESSION:
    case KMS_ERR_HSM_PIN:
        reply->err = XKS_E_DEPENDENCY_TIMEOUT;
        return rc;
    default:
        reply->err = XKS_E_INTERNAL;
        return rc;
    }
}

/* The key, if this endpoint may see it: exposed by the endpoints file, of
 * the endpoint's tenant, an AES-256 ENCRYPT_DECRYPT key that exists. */
static kms_err find_key(struct kms_call *call, const struct xks_endpoint *ep,
                        const char *key_id, struct kms_key_record *k, unsigned *usage,
                        struct xks_reply *reply)
{
    if (!xks_endpoint_key(ep, key_id, usage))
        return fail(reply, XKS_E_KEY_NOT_FOUND, KMS_ERR_NOT_FOUND, "no such external key");
    kms_err rc = kms_keycache_key(kms_service_keycache(call->svc), kms_service_store(call->svc),
                                  key_id, k);
    if (rc == KMS_ERR_NOT_FOUND || (rc == KMS_OK && strcmp(k->tenant, xks_endpoint_tenant(ep)) != 0))
        return fail(reply, XKS_E_KEY_NOT_FOUND, KMS_ERR_NOT_FOUND, "no such external key");
    if (rc != KMS_OK)
        return fail_from(reply, rc);
    kms_rpc_audit_key(call, key_id, k->region, k->token);
    /* Residency: an endpoint pinned to a Custos region never serves a key
     * of another, whatever the endpoints file exposes. */
    const char *pin = xks_endpoint_region(ep);
    if (pin != NULL && strcmp(k->region, pin) != 0)
        return fail(reply, XKS_E_ACCESS_DENIED, KMS_ERR_PERMISSION_DENIED,
                    "this external key is not in the endpoint's region");
    if (k->spec != KMS_KEY_SPEC_AES_256 || k->usage != KMS_KEY_USAGE_ENCRYPT_DECRYPT ||
        k->state == KMS_KEY_CREATING || k->state == KMS_KEY_DESTROYED)
        return fail(reply, XKS_E_KEY_NOT_FOUND, KMS_ERR_NOT_FOUND, "no such external key");
    return KMS_OK;
}

static kms_err usable(const struct kms_key_record *k, unsigned usage, unsigned need,
                      struct xks_reply *reply)
{
    if ((usage & need) == 0)
        return fail(reply, XKS_E_INVALID_KEY_USAGE, KMS_ERR_PERMISSION_DENIED,
                    need == XKS_USE_ENCRYPT ? "this external key may not encrypt"
                                            : "this external key may not decrypt");
    if (k->state != KMS_KEY_ENABLED)
        return fail(reply, XKS_E_INVALID_STATE, KMS_ERR_FAILED_PRECONDITION,
                    "the external key is not enabled");
    return KMS_OK;
}

static kms_err do_metadata(const struct kms_key_record *k, unsigned usage,
                           struct xks_reply *reply)
{
    reply->body = xks_metadata_body(usage, k->state == KMS_KEY_ENABLED);
    if (reply->body == NULL)
        return fail(reply, XKS_E_INTERNAL, KMS_ERR_NOMEM, "out of memory");
    reply->len = strlen(reply->body);
    return KMS_OK;
}

/* Decrypt out (ct || tag) in the HSM and compare with the plaintext. */
static kms_err test_decrypt(struct p11_token *tok, const struct p11_key_id *hid,
                            const uint8_t *iv, const uint8_t *aad, size_t aad_len,
                            const uint8_t *out, size_t out_len, const struct xks_request *req)
{
    uint8_t *back = malloc(out_len + 1);
    size_t back_len = 0;
    KMS_ENSURE(back != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = p11_gcm_decrypt(tok, hid, iv, 12, aad, aad_len, out, out_len, back, out_len,
                                 &back_len);
    if (rc == KMS_OK && (back_len != req->plaintext_len ||
                         CRYPTO_memcmp(back, req->plaintext, back_len) != 0))
        rc = kms_err_set(KMS_ERR_INTERNAL, "the test decryption did not give the plaintext");
    OPENSSL_cleanse(back, out_len + 1);
    free(back);
    return rc;
}

static kms_err do_encrypt(struct kms_call *call, const struct kms_key_record *k,
                          const struct xks_request *req, struct xks_reply *reply)
{
    struct p11_token *tok;
    struct kms_version_record v;
    kms_err rc = kms_keyuse_token(call, k, &tok);
    if (rc == KMS_OK)
        rc = kms_keyuse_version(call, k->key_id, k->current_version, false, &v);
    if (rc == KMS_OK)
        rc = kms_usage_encrypt(call->svc, k->key_id, v.version, 1);
    if (rc != KMS_OK)
        return fail_from(reply, rc);
    call->audit.key_version = v.version;
    uint8_t md[XKS_MD_LEN], iv[12], cdiv[32];
    uint8_t *gaad = malloc(2 + XKS_AAD_MAX + 1 + XKS_MD_MAX);
    size_t cap = req->plaintext_len + 16, out_len = 0;
    uint8_t *out = malloc(cap);
    if (gaad == NULL || out == NULL) {
        free(gaad);
        free(out);
        return fail(reply, XKS_E_INTERNAL, KMS_ERR_NOMEM, "out of memory");
    }
    xks_md_encode(v.version, md);
    size_t gl = xks_gcm_aad(req->aad, req->aad_len, md, sizeof(md), gaad);
    struct p11_key_id hid;
    memcpy(hid.b, v.hsm_id, sizeof(hid.b));
    if (RAND_bytes(iv, sizeof(iv)) != 1)
        rc = kms_err_set(KMS_ERR_INTERNAL, "RNG failure");
    if (rc == KMS_OK)
        rc = p11_gcm_encrypt(tok, &hid, iv, sizeof(iv), gaad, gl, req->plaintext,
                             req->plaintext_len, out, cap, &out_len);
    if (rc == KMS_OK && out_len != req->plaintext_len + 16)
        rc = kms_err_set(KMS_ERR_INTERNAL, "unexpected GCM output length");
    const uint8_t *tag = out + req->plaintext_len;
    /* Appendix C: the CDIV first, then the test decryption of what it covers. */
    if (rc == KMS_OK && req->want_cdiv)
        rc = xks_cdiv(req->aad, req->aad_len, md, sizeof(md), iv, sizeof(iv), out,
                      req->plaintext_len, tag, cdiv);
    if (rc == KMS_OK && req->want_cdiv)
        rc = test_decrypt(tok, &hid, iv, gaad, gl, out, out_len, req);
    if (rc == KMS_OK) {
        reply->body = xks_encrypt_body(out, req->plaintext_len, md, sizeof(md), iv, sizeof(iv),
                                       tag, req->want_cdiv ? cdiv : NULL);
        if (reply->body == NULL)
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        else
            reply->len = strlen(reply->body);
    }
    free(gaad);
    free(out);
    return rc == KMS_OK ? KMS_OK : fail_from(reply, rc);
}

static kms_err do_decrypt(struct kms_call *call, const struct kms_key_record *k,
                          const struct xks_request *req, struct xks_reply *reply)
{
    uint32_t version = 0;
    if (!req->has_md || xks_md_decode(req->md, req->md_len, &version) != KMS_OK)
        return fail_from(reply, KMS_ERR_BAD_CIPHERTEXT);
    call->audit.key_version = version;
    struct p11_token *tok;
    struct kms_version_record v;
    kms_err rc = kms_keyuse_token(call, k, &tok);
    if (rc == KMS_OK) {
        rc = kms_keyuse_version(call, k->key_id, version, true, &v);
        /* a version the metadata names that is no version of this key (0,
         * or altered) is a ciphertext that is not this key's */
        if (rc == KMS_ERR_NOT_FOUND || rc == KMS_ERR_INVALID_ARGUMENT)
            rc = KMS_ERR_BAD_CIPHERTEXT;
    }
    /* The spec lets an IV be 12 or 16 bytes; Custos only ever makes 12-byte
     * IVs, so any other length is a ciphertext that is not ours, not a
     * request the HSM should be asked (it refuses with an internal error). */
    if (rc == KMS_OK && req->iv_len != P11_GCM_IV_LEN)
        rc = KMS_ERR_BAD_CIPHERTEXT;
    if (rc != KMS_OK)
        return fail_from(reply, rc);
    size_t in_len = req->ciphertext_len + 16, pt_len = 0;
    uint8_t *in = malloc(in_len), *pt = malloc(in_len);
    uint8_t *gaad = malloc(2 + XKS_AAD_MAX + 1 + XKS_MD_MAX);
    if (in == NULL || pt == NULL || gaad == NULL) {
        free(in);
        free(pt);
        free(gaad);
        return fail(reply, XKS_E_INTERNAL, KMS_ERR_NOMEM, "out of memory");
    }
    memcpy(in, req->ciphertext, req->ciphertext_len);
    memcpy(in + req->ciphertext_len, req->tag, 16);
    size_t gl = xks_gcm_aad(req->aad, req->aad_len, req->md, req->md_len, gaad);
    struct p11_key_id hid;
    memcpy(hid.b, v.hsm_id, sizeof(hid.b));
    rc = p11_gcm_decrypt(tok, &hid, req->iv, req->iv_len, gaad, gl, in, in_len, pt, in_len,
                         &pt_len);
    if (rc == KMS_OK) {
        reply->body = xks_decrypt_body(pt, pt_len, &reply->len);
        reply->secret = true;
        if (reply->body == NULL)
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    OPENSSL_cleanse(pt, in_len);
    free(pt);
    free(in);
    free(gaad);
    return rc == KMS_OK ? KMS_OK : fail_from(reply, rc);
}

kms_err xks_ops_run(struct kms_call *call, const struct xks_endpoint *ep, const char *key_id,
                    const struct xks_request *req, struct xks_reply *reply)
{
    memset(reply, 0, sizeof(*reply));
    struct kms_key_record k;
    unsigned usage = 0;
    KMS_GUARD(find_key(call, ep, key_id, &k, &usage, reply));
    switch (req->op) {
    case XKS_OP_METADATA:
        return do_metadata(&k, usage, reply);
    case XKS_OP_ENCRYPT:
        KMS_GUARD(usable(&k, usage, XKS_USE_ENCRYPT, reply));
        return do_encrypt(call, &k, req, reply);
    case XKS_OP_DECRYPT:
        KMS_GUARD(usable(&k, usage, XKS_USE_DECRYPT, reply));
        return do_decrypt(call, &k, req, reply);
    default:
        return fail(reply, XKS_E_INVALID_URI_PATH, KMS_ERR_BAD_ROUTE, "no such operation");
    }
}

void xks_reply_free(struct xks_reply *reply)
{
    if (reply->body != NULL && reply->secret)
        OPENSSL_cleanse(reply->body, reply->len);
    free(reply->body);
    reply->body = NULL;
}
