/*
 * kms_envelope.c - the cryptographic RPCs: Encrypt, Decrypt, ReEncrypt,
 * GenerateDataKey, DecryptDataKey. All AES-GCM runs inside the key's HSM;
 * this file builds the public blob around it (kms_blob.h).
 *
 * Plaintext and data keys pass through here only in buffers that are wiped
 * before they are freed; the request message that carried them is the
 * front's, which wipes it when it frees it (kms_call.h).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_envelope.h"

#include "kms_blob.h"
#include "kms_keyuse.h"
#include "kms_log.h"
#include "kms_store.h"
#include "kms_usage.h"
#include "p11_crypto.h"
#include "pol_eval.h"
#include "proto/key.pb-c.h"

static kms_err require_enabled(const struct kms_key_record *k)
{
    /* Key separation at the service level too: a METADATA_AES_HMAC key's AES
     * half serves FieldService's field blobs only (kms_fields.c). */
    KMS_ENSURE(k->usage == KMS_KEY_USAGE_ENCRYPT_DECRYPT, KMS_ERR_INVALID_ARGUMENT,
               "key %s is not an ENCRYPT_DECRYPT key (%s)", k->key_id,
               k->usage == KMS_KEY_USAGE_SIGN_VERIFY   ? "a signing key: use Sign and Verify"
               : k->usage == KMS_KEY_USAGE_LINK_TOKEN ? "a link-token key: use LinkService"
                                                      : "use FieldService");
    KMS_ENSURE(k->state == KMS_KEY_ENABLED, KMS_ERR_FAILED_PRECONDITION,
               "key is %s", kms_key_state_name(k->state));
    return KMS_OK;
}

/* Encrypt pt under the key's current version, as a blob of the given kind
 * (what made pt: the operation that will be allowed to open it). *out_blob
 * is malloc'd. */
static kms_err seal(struct kms_call *call, const struct kms_key_record *k,
                    enum kms_blob_kind kind, size_t n_ctx, void *const *ctx, const uint8_t *pt,
                    size_t pt_len, uint8_t **out_blob, size_t *out_len, uint32_t *out_version)
{
    kms_err rc = KMS_OK;
    uint8_t aad[KMS_BLOB_HEADER_MAX + KMS_CTX_ENCODED_MAX];
    size_t hl = 0, cl = 0, ct_len = 0;
    *out_blob = NULL;
    KMS_ENSURE(pt_len <= KMS_PLAINTEXT_MAX, KMS_ERR_INVALID_ARGUMENT,
               "plaintext longer than %d bytes", KMS_PLAINTEXT_MAX);
    KMS_GUARD(require_enabled(k));
    struct p11_token *tok;
    KMS_GUARD(kms_keyuse_token(call, k, &tok));
    struct kms_version_record v;
    KMS_GUARD(kms_keyuse_version(call, k->key_id, k->current_version, false, &v));
    KMS_GUARD(kms_usage_encrypt(call->svc, k->key_id, v.version, 1)); /* GCM limit: kms_usage.h */

    struct kms_blob_header h;
    memset(&h, 0, sizeof(h));
    h.format = KMS_BLOB_VERSION;
    h.kind = kind;
    size_t rl = strlen(k->region);
    KMS_ENSURE(rl >= 1 && rl <= KMS_BLOB_REGION_MAX, KMS_ERR_INTERNAL, "bad region length");
    memcpy(h.region, k->region, rl + 1);
    KMS_GUARD(kms_key_id_parse(k->key_id, h.key_id));
    h.version = v.version;
    /* A random 96-bit IV per message, from the host DRBG: the NIST bound of
     * 2^32 messages per key version applies (docs/ciphertext-format.md). */
    KMS_ENSURE(RAND_bytes(h.iv, sizeof(h.iv)) == 1, KMS_ERR_INTERNAL, "RNG failure");
    KMS_GUARD(kms_blob_write_header(&h, aad, &hl));
    KMS_GUARD(kms_keyuse_context(n_ctx, ctx, aad + hl, &cl));

    size_t cap = hl + pt_len + KMS_BLOB_TAG_LEN;
    uint8_t *blob = malloc(cap);
    KMS_ENSURE(blob != NULL, KMS_ERR_NOMEM, "out of memory");
    memcpy(blob, aad, hl);
    struct p11_key_id hid;
    memcpy(hid.b, v.hsm_id, 16);
    rc = p11_gcm_encrypt(tok, &hid, h.iv, sizeof(h.iv), aad, hl + cl, pt, pt_len, blob + hl,
                         cap - hl, &ct_len);
    if (rc != KMS_OK) {
        free(blob);
        return rc;
    }
    *out_blob = blob;
    *out_len = hl + ct_len;
    *out_version = v.version;
    call->audit.key_version = v.version;
    return KMS_OK;
}

/* A blob whose key the caller may use for op, located but not yet opened. */
struct located {
    struct kms_blob_header h;
    size_t hl;
    struct kms_key_record key;
    struct kms_version_record v;
    struct p11_token *tok;
};

/* Parse a blob, authorize op on the key it names and find the key version
 * and token that open it. */
static kms_err locate_blob(struct kms_call *call, enum pol_op op, const ProtobufCBinaryData *blob,
                           const char *expected_key_id, struct located *o)
{
    KMS_GUARD(kms_blob_parse(blob->data, blob->len, &o->h, &o->hl));
    char key_id[33];
    kms_key_id_format(o->h.key_id, key_id);
    call->audit.key_version = o->h.version;
    if (expected_key_id && *expected_key_id)
        KMS_ENSURE(strcmp(expected_key_id, key_id) == 0, KMS_ERR_INVALID_ARGUMENT,
                   "the ciphertext was not made with key_id %.32s", expected_key_id);
    KMS_GUARD(kms_rpc_authorize_key(call, op, key_id, &o->key));
    KMS_GUARD(require_enabled(&o->key));
    /* The region is part of the key's identity: a blob that names another
     * region is not this key's, whatever its id says. */
    KMS_ENSURE(strcmp(o->h.region, o->key.region) == 0, KMS_ERR_BAD_CIPHERTEXT,
               "ciphertext or encryption context does not match");
    KMS_GUARD(kms_keyuse_version(call, key_id, o->h.version, true, &o->v));
    KMS_GUARD(kms_keyuse_token(call, &o->key, &o->tok));
    return KMS_OK;
}

/* Each operation opens only what it is for: Decrypt the output of Encrypt,
 * DecryptDataKey the output of GenerateDataKey. Without this, a principal
 * granted only the data-key operations reads messages through
 * DecryptDataKey. The kind is in the authenticated header, so a blob whose
 * kind byte was changed to pass here fails to decrypt. A blob of unknown
 * kind (format 1, or ReEncrypt's copy of one) needs both operations.
 * ReEncrypt opens every kind and keeps it. */
static kms_err check_kind(struct kms_call *call, enum pol_op op, const struct located *o)
{
    if (op == POL_OP_RE_ENCRYPT)
        return KMS_OK;
    enum kms_blob_kind want = op == POL_OP_DECRYPT ? KMS_BLOB_KIND_DATA : KMS_BLOB_KIND_DATA_KEY;
    if (o->h.kind == want)
        return KMS_OK;
    if (o->h.kind != KMS_BLOB_KIND_LEGACY) {
        call->audit.rule = "ciphertext.kind";
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                           "this ciphertext was made by %s: open it with %s",
                           o->h.kind == KMS_BLOB_KIND_DATA ? "Encrypt" : "GenerateDataKey",
                           o->h.kind == KMS_BLOB_KIND_DATA ? "Decrypt" : "DecryptDataKey");
    }
    struct pol_target t = {o->key.key_id, o->key.tenant, o->key.region};
    struct pol_decision d;
    kms_err rc = pol_decide_untyped_open(call->policy, call->who, &t, &d);
    if (rc != KMS_OK) {
        call->audit.rule = d.rule;
        kms_log_info("policy",
                     "request %s: %s of a ciphertext of unknown kind on key %s refused by rule %s",
                     call->request_id, pol_op_name(op), o->key.key_id, d.rule);
    }
    return rc;
}

/* Authenticate and decrypt a located blob. *out_pt is malloc'd and must be
 * wiped. */
static kms_err decrypt_blob(const struct located *o, const ProtobufCBinaryData *blob,
                            size_t n_ctx, void *const *ctx, uint8_t **out_pt, size_t *out_len)
{
    size_t cl = 0;
    uint8_t aad[KMS_BLOB_HEADER_MAX + KMS_CTX_ENCODED_MAX];
    *out_pt = NULL;
    *out_len = 0;
    memcpy(aad, blob->data, o->hl);
    KMS_GUARD(kms_keyuse_context(n_ctx, ctx, aad + o->hl, &cl));
    size_t body = blob->len - o->hl;
    uint8_t *pt = malloc(body ? body : 1);
    KMS_ENSURE(pt != NULL, KMS_ERR_NOMEM, "out of memory");
    struct p11_key_id hid;
    memcpy(hid.b, o->v.hsm_id, 16);
    kms_err rc = p11_gcm_decrypt(o->tok, &hid, o->h.iv, sizeof(o->h.iv), aad, o->hl + cl,
                                 blob->data + o->hl, body, pt, body, out_len);
    if (rc != KMS_OK) {
        OPENSSL_cleanse(pt, body);
        free(pt);
        /* One message for tag, context and tampering alike: the caller
         * learns only that this blob and context do not belong together. */
        if (rc == KMS_ERR_BAD_CIPHERTEXT)
            kms_err_set(rc, "ciphertext or encryption context does not match");
        return rc;
    }
    *out_pt = pt;
    return KMS_OK;
}

/* ---- Encrypt / Decrypt ---------------------------------------------------- */

kms_err kms_rpc_encrypt(struct kms_call *call, const ProtobufCMessage *msg, struct kms_reply *reply)
{
    const Custos__V1__EncryptRequest *req = (const void *)msg;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    uint32_t version = 0;
    struct kms_key_record k;
    kms_err rc = kms_rpc_authorize_key(call, POL_OP_ENCRYPT, req->key_id, &k);
    if (rc == KMS_OK)
        rc = seal(call, &k, KMS_BLOB_KIND_DATA, req->n_encryption_context,
                  (void *const *)req->encryption_context,
                  req->plaintext.data, req->plaintext.len, &blob, &blob_len, &version);
    if (rc == KMS_OK) {
        Custos__V1__EncryptResponse resp = CUSTOS__V1__ENCRYPT_RESPONSE__INIT;
        resp.ciphertext.data = blob;
        resp.ciphertext.len = blob_len;
        resp.key_id = k.key_id;
        resp.key_version = version;
        rc = kms_rpc_pack(&resp.base, reply);
    }
    free(blob);
    return rc;
}

/* Decrypt and DecryptDataKey answer with the same shape, {plaintext, key_id,
 * key_version}: one function builds either through its descriptor. */
static kms_err open_and_reply(struct kms_call *call, enum pol_op op,
                              const ProtobufCBinaryData *blob, const char *key_id, size_t n_ctx,
                              void *const *ctx, const ProtobufCMessageDescriptor *desc,
                              struct kms_reply *reply)
{
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    uint32_t version = 0;
    struct located o;
    kms_err rc = locate_blob(call, op, blob, key_id, &o);
    if (rc == KMS_OK)
        rc = check_kind(call, op, &o);
    if (rc == KMS_OK)
        rc = decrypt_blob(&o, blob, n_ctx, ctx, &pt, &pt_len);
    if (rc == KMS_OK) {
        version = o.v.version;
        struct {
            ProtobufCMessage base;
            ProtobufCBinaryData plaintext;
            char *key_id;
            uint32_t key_version;
        } resp;
        _Static_assert(sizeof(resp) == sizeof(Custos__V1__DecryptResponse) &&
                           sizeof(resp) == sizeof(Custos__V1__DecryptDataKeyResponse),
                       "Decrypt and DecryptDataKey responses must keep one layout");
        protobuf_c_message_init(desc, &resp);
        resp.plaintext.data = pt;
        resp.plaintext.len = pt_len;
        resp.key_id = o.key.key_id;
        resp.key_version = version;
        rc = kms_rpc_pack_secret(&resp.base, reply);
    }
    kms_keyuse_free_secret(pt, pt_len);
    return rc;
}

kms_err kms_rpc_decrypt(struct kms_call *call, const ProtobufCMessage *msg, struct kms_reply *reply)
{
    const Custos__V1__DecryptRequest *req = (const void *)msg;
    kms_err rc = open_and_reply(call, POL_OP_DECRYPT, &req->ciphertext, req->key_id,
                                req->n_encryption_context,
                                (void *const *)req->encryption_context,
                                &custos__v1__decrypt_response__descriptor, reply);
    return rc;
}

/* ---- ReEncrypt --------------------------------------------------------------- */

kms_err kms_rpc_re_encrypt(struct kms_call *call, const ProtobufCMessage *msg,
                           struct kms_reply *reply)
{
    const Custos__V1__ReEncryptRequest *req = (const void *)msg;
    uint8_t *pt = NULL, *blob = NULL;
    size_t pt_len = 0, blob_len = 0;
    uint32_t dst_version = 0;
    struct located src;
    struct kms_key_record dst;
    /* Both keys are decided separately: the caller needs ReEncrypt on the
     * source and on the destination. Then residency: data leaves its region
     * only where the tenant's policy names the route. All before the source
     * is decrypted. */
    kms_err rc = locate_blob(call, POL_OP_RE_ENCRYPT, &req->ciphertext, NULL, &src);
    if (rc == KMS_OK)
        rc = kms_rpc_authorize_key(call, POL_OP_RE_ENCRYPT, req->destination_key_id, &dst);
    if (rc == KMS_OK) {
        struct pol_decision d;
        rc = pol_decide_re_encrypt(call->policy, call->who, src.key.region, dst.region, &d);
        if (rc != KMS_OK) {
            call->audit.rule = d.rule;
            kms_log_info("policy", "request %s: ReEncrypt from %s to %s refused by rule %s",
                         call->request_id, src.key.region, dst.region, d.rule);
        }
    }
    if (rc == KMS_OK)
        rc = decrypt_blob(&src, &req->ciphertext, req->n_source_encryption_context,
                          (void *const *)req->source_encryption_context, &pt, &pt_len);
    /* The copy is of the same kind: ReEncrypt never turns a message into
     * something DecryptDataKey opens, nor the reverse. A blob of unknown
     * kind stays of unknown kind, now in the current format. */
    if (rc == KMS_OK)
        rc = seal(call, &dst, src.h.kind, req->n_destination_encryption_context,
                  (void *const *)req->destination_encryption_context, pt, pt_len, &blob,
                  &blob_len, &dst_version);
    kms_keyuse_free_secret(pt, pt_len);
    if (rc == KMS_OK) {
        Custos__V1__ReEncryptResponse resp = CUSTOS__V1__RE_ENCRYPT_RESPONSE__INIT;
        resp.ciphertext.data = blob;
        resp.ciphertext.len = blob_len;
        resp.source_key_id = src.key.key_id;
        resp.source_key_version = src.v.version;
        resp.key_id = dst.key_id;
        resp.key_version = dst_version;
        rc = kms_rpc_pack(&resp.base, reply);
    }
    free(blob);
    return rc;
}

/* ---- data keys ---------------------------------------------------------------- */

kms_err kms_rpc_generate_data_key(struct kms_call *call, const ProtobufCMessage *msg,
                                  struct kms_reply *reply)
{
    const Custos__V1__GenerateDataKeyRequest *req = (const void *)msg;
    uint8_t dk[64];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    uint32_t version = 0;
    struct kms_key_record k;
    size_t n = req->number_of_bytes ? req->number_of_bytes : 32;
    kms_err rc = KMS_OK;
    struct p11_token *tok = NULL;
    KMS_ENSURE_GOTO(n >= 16 && n <= sizeof(dk), done, KMS_ERR_INVALID_ARGUMENT,
                    "number_of_bytes must be 16..64");
    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_GENERATE_DATA_KEY, req->key_id, &k), done);
    KMS_GUARD_GOTO(require_enabled(&k), done);
    KMS_GUARD_GOTO(kms_keyuse_token(call, &k, &tok), done);
    /* Data keys come from the HSM's RNG. */
    KMS_GUARD_GOTO(p11_random(tok, dk, n), done);
    KMS_GUARD_GOTO(seal(call, &k, KMS_BLOB_KIND_DATA_KEY, req->n_encryption_context,
                        (void *const *)req->encryption_context, dk, n, &blob, &blob_len,
                        &version),
                   done);
    Custos__V1__GenerateDataKeyResponse resp = CUSTOS__V1__GENERATE_DATA_KEY_RESPONSE__INIT;
    resp.plaintext.data = dk;
    resp.plaintext.len = n;
    resp.ciphertext_blob.data = blob;
    resp.ciphertext_blob.len = blob_len;
    resp.key_id = k.key_id;
    resp.key_version = version;
    rc = kms_rpc_pack_secret(&resp.base, reply);
done:
    OPENSSL_cleanse(dk, sizeof(dk));
    free(blob);
    return rc;
}

kms_err kms_rpc_decrypt_data_key(struct kms_call *call, const ProtobufCMessage *msg,
                                 struct kms_reply *reply)
{
    const Custos__V1__DecryptDataKeyRequest *req = (const void *)msg;
    kms_err rc = open_and_reply(call, POL_OP_DECRYPT_DATA_KEY, &req->ciphertext_blob, req->key_id,
                                req->n_encryption_context,
                                (void *const *)req->encryption_context,
                                &custos__v1__decrypt_data_key_response__descriptor, reply);
    return rc;
}
