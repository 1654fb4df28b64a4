/*
 * kms_sign.c - asymmetric signing keys: GetPublicKey, Sign, Verify, and the
 * making of a signing key's version (kms_sign.h).
 */
#include "kms_sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kms_escrow.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "p11_token.h"
#include "proto/key.pb-c.h"

/* ---- specs ------------------------------------------------------------------ */

bool kms_sign_spec_from_proto(int proto_spec, enum kms_key_spec *out)
{
    switch (proto_spec) {
    case CUSTOS__V1__KEY_SPEC__EC_P256:
        *out = KMS_KEY_SPEC_EC_P256;
        return true;
    case CUSTOS__V1__KEY_SPEC__RSA_2048:
        *out = KMS_KEY_SPEC_RSA_2048;
        return true;
    case CUSTOS__V1__KEY_SPEC__RSA_3072:
        *out = KMS_KEY_SPEC_RSA_3072;
        return true;
    case CUSTOS__V1__KEY_SPEC__RSA_4096:
        *out = KMS_KEY_SPEC_RSA_4096;
        return true;
    default:
        return false;
    }
}

int kms_sign_spec_to_proto(enum kms_key_spec spec)
{
    switch (spec) {
    case KMS_KEY_SPEC_METADATA:
        return CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC;
    case KMS_KEY_SPEC_EC_P256:
        return CUSTOS__V1__KEY_SPEC__EC_P256;
    case KMS_KEY_SPEC_RSA_2048:
        return CUSTOS__V1__KEY_SPEC__RSA_2048;
    case KMS_KEY_SPEC_RSA_3072:
        return CUSTOS__V1__KEY_SPEC__RSA_3072;
    case KMS_KEY_SPEC_RSA_4096:
        return CUSTOS__V1__KEY_SPEC__RSA_4096;
    default:
        return CUSTOS__V1__KEY_SPEC__AES_256;
    }
}

int kms_sign_usage_to_proto(enum kms_key_usage usage)
{
    switch (usage) {
    case KMS_KEY_USAGE_METADATA:
        return CUSTOS__V1__KEY_USAGE__METADATA_FIELDS;
    case KMS_KEY_USAGE_SIGN_VERIFY:
        return CUSTOS__V1__KEY_USAGE__SIGN_VERIFY;
    default:
        return CUSTOS__V1__KEY_USAGE__ENCRYPT_DECRYPT;
    }
}

enum p11_asym_kind kms_sign_kind(enum kms_key_spec spec)
{
    switch (spec) {
    case KMS_KEY_SPEC_RSA_2048:
        return P11_ASYM_RSA_2048;
    case KMS_KEY_SPEC_RSA_3072:
        return P11_ASYM_RSA_3072;
    case KMS_KEY_SPEC_RSA_4096:
        return P11_ASYM_RSA_4096;
    default:
        return P11_ASYM_EC_P256;
    }
}

kms_err kms_sign_supported(struct p11_token *tok, enum kms_key_spec spec)
{
    KMS_ENSURE(kms_key_spec_is_pair(spec), KMS_ERR_USAGE, "not a key pair spec");
    return p11_asym_supported(tok, kms_sign_kind(spec));
}

/* ---- making a version, escrow ------------------------------------------------------ */

/* Escrow at birth of a pair (kms_escrow.h's protocol): wrap the private
 * half under the region's escrow key inside the HSM, store the blob with
 * the version's public key while the version is CREATING, then lock the
 * private half (one-way). */
static kms_err seal_pair(struct kms_service *svc, struct p11_token *tok, const char *key_id,
                         uint32_t version, const struct p11_key_id *id)
{
    const char *region = p11_token_region(tok);
    struct p11_key_id escrow;
    KMS_GUARD(kms_escrow_ready(svc, region));
    kms_service_escrow_key(svc, region, &escrow);
    kms_err rc = KMS_OK;
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    struct kms_escrow_pair_record *r = calloc(1, sizeof(*r));
    KMS_ENSURE(r != NULL, KMS_ERR_NOMEM, "out of memory");
    snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
    r->version = version;
    snprintf(r->token, sizeof(r->token), "%s", p11_token_label(tok));
    memcpy(r->escrow_hsm_id, escrow.b, sizeof(r->escrow_hsm_id));
    r->created_at = (int64_t)time(NULL);
    KMS_GUARD_GOTO(p11_asym_public_spki(tok, id, &spki, &spki_len), done);
    KMS_ENSURE_GOTO(spki_len <= sizeof(r->public_key), done, KMS_ERR_INTERNAL,
                    "public key of %zu bytes does not fit the escrow row", spki_len);
    memcpy(r->public_key, spki, spki_len);
    r->public_key_len = spki_len;
    KMS_GUARD_GOTO(p11_asym_escrow_wrap(tok, &escrow, id, r->blob, sizeof(r->blob), &r->blob_len),
                   done);
    KMS_GUARD_GOTO(kms_store_escrow_pair_put(kms_service_store(svc), r), done);
    /* Locked only once the blob is durable: a crash in between leaves a
     * CREATING version, discarded at start. */
    rc = p11_asym_lock(tok, id);
done:
    /* The key under the escrow key, not the key: still, no second copy in
     * freed memory. */
    OPENSSL_cleanse(r->blob, sizeof(r->blob));
    free(r);
    OPENSSL_free(spki);
    return rc;
}

kms_err kms_sign_escrow_restore(struct kms_service *svc, struct p11_token *tok,
                                const struct kms_escrow_record *entry,
                                const struct p11_key_id *id, const char *label)
{
    struct kms_store *st = kms_service_store(svc);
    struct kms_key_record k;
    KMS_GUARD(kms_store_key_get(st, entry->key_id, &k));
    KMS_ENSURE(kms_key_spec_is_pair(k.spec), KMS_ERR_INTERNAL,
               "key %s has a pair's escrow but is not a signing key", k.key_id);
    struct kms_escrow_pair_record *r = calloc(1, sizeof(*r));
    KMS_ENSURE(r != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = kms_store_escrow_pair_get(st, entry->key_id, entry->version, r);
    if (rc == KMS_OK) {
        struct p11_key_id esc;
        memcpy(esc.b, r->escrow_hsm_id, sizeof(esc.b));
        rc = p11_asym_restore(tok, &esc, r->blob, r->blob_len, kms_sign_kind(k.spec), id, label,
                              r->public_key, r->public_key_len);
    }
    OPENSSL_cleanse(r->blob, sizeof(r->blob));
    free(r);
    return rc;
}

kms_err kms_sign_version_make(struct kms_service *svc, struct p11_token *tok, const char *key_id,
                              uint32_t version, const struct p11_key_id *id,
                              enum kms_key_spec spec, const char *label, bool escrow)
{
    KMS_ENSURE(kms_key_spec_is_pair(spec), KMS_ERR_USAGE, "not a key pair spec");
    KMS_GUARD(p11_asym_generate(tok, kms_sign_kind(spec), id, label, escrow));
    if (!escrow)
        return KMS_OK;
    return seal_pair(svc, tok, key_id, version, id);
}

/* ---- shared request checks --------------------------------------------------------- */

static const char *alg_name(int alg)
{
    switch (alg) {
    case CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256:
        return "ECDSA_SHA_256";
    case CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256:
        return "RSASSA_PSS_SHA_256";
    case CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256:
        return "RSASSA_PKCS1_V1_5_SHA_256";
    }
    return "SIGNING_ALGORITHM_UNSPECIFIED";
}

/* The key named by a request, authorized for op, a signing key, and the
 * token of its region. */
static kms_err signing_key(struct kms_call *call, enum pol_op op, const char *key_id,
                           struct kms_key_record *k, struct p11_token **out_tok)
{
    KMS_GUARD(kms_rpc_authorize_key(call, op, key_id, k));
    /* Key separation at the service level: a signing key never encrypts,
     * and an encryption key never signs. */
    KMS_ENSURE(k->usage == KMS_KEY_USAGE_SIGN_VERIFY && kms_key_spec_is_pair(k->spec),
               KMS_ERR_INVALID_ARGUMENT,
               "key %s is not a SIGN_VERIFY key (spec EC_P256 or RSA_*); %s needs one",
               k->key_id, pol_op_name(op));
    *out_tok = kms_service_token(call->svc, k->region);
    KMS_ENSURE(*out_tok != NULL, KMS_ERR_FAILED_PRECONDITION,
               "region %s is not served by this node", k->region);
    return KMS_OK;
}

/* The version a request names (0: the key's current one), which must be
 * ACTIVE: a destroyed version has no key pair any more. */
static kms_err pick_version(struct kms_call *call, const struct kms_key_record *k,
                            uint32_t asked, struct kms_version_record *v)
{
    uint32_t version = asked ? asked : k->current_version;
    KMS_ENSURE(version != 0, KMS_ERR_FAILED_PRECONDITION, "key %s has no version yet",
               k->key_id);
    kms_err rc = kms_keycache_version(kms_service_keycache(call->svc),
                                      kms_service_store(call->svc), k->key_id, version, v);
    if (rc == KMS_ERR_NOT_FOUND || (rc == KMS_OK && v->state == KMS_VERSION_CREATING))
        return kms_err_set(KMS_ERR_NOT_FOUND, "key %s has no version %u", k->key_id, version);
    KMS_GUARD(rc);
    KMS_ENSURE(v->state == KMS_VERSION_ACTIVE, KMS_ERR_FAILED_PRECONDITION,
               "version %u of key %s is %s", version, k->key_id,
               kms_version_state_name(v->state));
    call->audit.key_version = version;
    return KMS_OK;
}

/* The algorithm a Sign or Verify names, checked against the key. */
static kms_err pick_alg(const struct kms_key_record *k, int alg, enum p11_sig_alg *out)
{
    switch (alg) {
    case CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256:
        *out = P11_SIG_ECDSA_SHA256;
        break;
    case CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256:
        *out = P11_SIG_RSA_PSS_SHA256;
        break;
    case CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256:
        *out = P11_SIG_RSA_PKCS1_SHA256;
        break;
    default:
        return kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                           "algorithm is required: ECDSA_SHA_256 for EC_P256 keys, "
                           "RSASSA_PSS_SHA_256 or RSASSA_PKCS1_V1_5_SHA_256 for RSA keys");
    }
    KMS_ENSURE(p11_sig_alg_fits(kms_sign_kind(k->spec), *out), KMS_ERR_INVALID_ARGUMENT,
               "algorithm %s does not suit key %s (%s): use %s", alg_name(alg), k->key_id,
               p11_asym_kind_name(kms_sign_kind(k->spec)),
               k->spec == KMS_KEY_SPEC_EC_P256
                   ? "ECDSA_SHA_256"
                   : "RSASSA_PSS_SHA_256 or RSASSA_PKCS1_V1_5_SHA_256");
    return KMS_OK;
}

/* The SHA-256 the HSM signs: of a RAW message (hashed here), or the
 * DIGEST the caller sent. */
static kms_err message_digest(const ProtobufCBinaryData *msg, int type, uint8_t out[32])
{
    if (type == CUSTOS__V1__MESSAGE_TYPE__DIGEST) {
        KMS_ENSURE(msg->len == P11_ASYM_DIGEST_LEN, KMS_ERR_INVALID_ARGUMENT,
                   "message_type DIGEST needs a 32-byte SHA-256 digest in message, got %zu "
                   "bytes",
                   msg->len);
        memcpy(out, msg->data, 32);
        return KMS_OK;
    }
    /* MESSAGE_TYPE_UNSPECIFIED means RAW (key.proto). */
    KMS_ENSURE(msg->len <= KMS_SIGN_MESSAGE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "message longer than %d bytes: send its SHA-256 with message_type DIGEST",
               KMS_SIGN_MESSAGE_MAX);
    unsigned int n = 32;
    KMS_ENSURE(EVP_Digest(msg->len ? msg->data : (const uint8_t *)"", msg->len, out, &n,
                          EVP_sha256(), NULL) == 1 &&
                   n == 32,
               KMS_ERR_INTERNAL, "SHA-256 failed");
    return KMS_OK;
}

/* The audit event's note: what was signed or checked, by its hash and
 * lengths only (never the message, never the signature). */
static void audit_note(struct kms_call *call, int alg, int type, size_t msg_len,
                       const uint8_t digest[32], const char *extra)
{
    char hex[65];
    for (size_t i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    snprintf(call->audit.detail, sizeof(call->audit.detail), "%s %s len=%zu sha256=%s%s",
             alg_name(alg), type == CUSTOS__V1__MESSAGE_TYPE__DIGEST ? "DIGEST" : "RAW", msg_len,
             hex, extra ? extra : "");
}

/* ---- GetPublicKey ---------------------------------------------------------------------- */

kms_err kms_rpc_get_public_key(struct kms_call *call, const ProtobufCMessage *msg,
                               struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    uint8_t *der = NULL;
    size_t der_len = 0;
    const Custos__V1__GetPublicKeyRequest *req = (const void *)msg;
    struct kms_key_record k;
    struct p11_token *tok;
    KMS_GUARD_GOTO(signing_key(call, POL_OP_GET_PUBLIC_KEY, req->key_id, &k, &tok), done);
    /* Any state where the pairs exist: a certificate may need the public
     * key of a disabled key, or of one pending deletion. */
    KMS_ENSURE_GOTO(k.state == KMS_KEY_ENABLED || k.state == KMS_KEY_DISABLED ||
                        k.state == KMS_KEY_PENDING_DELETION,
                    done, KMS_ERR_FAILED_PRECONDITION, "key is %s", kms_key_state_name(k.state));
    struct kms_version_record v;
    KMS_GUARD_GOTO(pick_version(call, &k, req->version, &v), done);
    struct p11_key_id id;
    memcpy(id.b, v.hsm_id, sizeof(id.b));
    KMS_GUARD_GOTO(p11_asym_public_spki(tok, &id, &der, &der_len), done);

    Custos__V1__SigningAlgorithm ec[] = {CUSTOS__V1__SIGNING_ALGORITHM__ECDSA_SHA_256};
    /* PSS first: the modern choice, and the one TLS 1.3 requires. */
    Custos__V1__SigningAlgorithm rsa[] = {CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PSS_SHA_256,
                                          CUSTOS__V1__SIGNING_ALGORITHM__RSASSA_PKCS1_V1_5_SHA_256};
    bool is_ec = k.spec == KMS_KEY_SPEC_EC_P256;
    Custos__V1__GetPublicKeyResponse resp = CUSTOS__V1__GET_PUBLIC_KEY_RESPONSE__INIT;
    resp.key_id = k.key_id;
    resp.version = v.version;
    resp.spec = (Custos__V1__KeySpec)kms_sign_spec_to_proto(k.spec);
    resp.public_key.data = der;
    resp.public_key.len = der_len;
    resp.n_signing_algorithms = is_ec ? 1 : 2;
    resp.signing_algorithms = is_ec ? ec : rsa;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    OPENSSL_free(der);
    return rc;
}

/* ---- Sign and Verify --------------------------------------------------------------------- */

/* What Sign and Verify both establish before the HSM signs or verifies. */
struct sign_step {
    struct kms_key_record k;
    struct p11_token *tok;
    uint8_t digest[32];
    enum p11_sig_alg alg;
    struct kms_version_record v;
    struct p11_key_id id;
};

/* The key (for op) and the message's digest. What was asked is noted in
 * the audit event before any refusal, so that the event of a refused call
 * says what it would have signed or verified. */
static kms_err sign_step_key(struct kms_call *call, enum pol_op op, const char *key_id,
                             const ProtobufCBinaryData *message, int type, int algorithm,
                             struct sign_step *st)
{
    KMS_GUARD(signing_key(call, op, key_id, &st->k, &st->tok));
    KMS_GUARD(message_digest(message, type, st->digest));
    audit_note(call, algorithm, type, message->len, st->digest, NULL);
    return KMS_OK;
}

/* The algorithm, and the version whose HSM object does the work. */
static kms_err sign_step_version(struct kms_call *call, int algorithm, uint32_t version,
                                 struct sign_step *st)
{
    KMS_GUARD(pick_alg(&st->k, algorithm, &st->alg));
    KMS_GUARD(pick_version(call, &st->k, version, &st->v));
    memcpy(st->id.b, st->v.hsm_id, sizeof(st->id.b));
    return KMS_OK;
}

kms_err kms_rpc_sign(struct kms_call *call, const ProtobufCMessage *msg, struct kms_reply *reply)
{
    const Custos__V1__SignRequest *req = (const void *)msg;
    struct sign_step st;
    KMS_GUARD(sign_step_key(call, POL_OP_SIGN, req->key_id, &req->message, req->message_type,
                            req->algorithm, &st));
    KMS_ENSURE(st.k.state == KMS_KEY_ENABLED, KMS_ERR_FAILED_PRECONDITION,
               "key is %s; only an ENABLED key signs", kms_key_state_name(st.k.state));
    KMS_GUARD(sign_step_version(call, req->algorithm, req->version, &st));
    uint8_t sig[P11_ASYM_SIG_MAX];
    size_t sig_len = sizeof(sig);
    KMS_GUARD(
        p11_asym_sign_digest(st.tok, &st.id, st.alg, st.digest, sizeof(st.digest), sig, &sig_len));
    char extra[32];
    snprintf(extra, sizeof(extra), " sig_len=%zu", sig_len);
    audit_note(call, req->algorithm, req->message_type, req->message.len, st.digest, extra);

    Custos__V1__SignResponse resp = CUSTOS__V1__SIGN_RESPONSE__INIT;
    resp.key_id = st.k.key_id;
    resp.version = st.v.version;
    resp.signature.data = sig;
    resp.signature.len = sig_len;
    resp.algorithm = req->algorithm;
    return kms_rpc_pack(&resp.base, reply);
}

/* ---- Verify ------------------------------------------------------------------------------ */

kms_err kms_rpc_verify(struct kms_call *call, const ProtobufCMessage *msg,
                       struct kms_reply *reply)
{
    const Custos__V1__VerifyRequest *req = (const void *)msg;
    struct sign_step st;
    KMS_GUARD(sign_step_key(call, POL_OP_VERIFY, req->key_id, &req->message, req->message_type,
                            req->algorithm, &st));
    KMS_ENSURE(st.k.state == KMS_KEY_ENABLED, KMS_ERR_FAILED_PRECONDITION,
               "key is %s; only an ENABLED key verifies (GetPublicKey works in any state "
               "and lets anyone verify with OpenSSL)",
               kms_key_state_name(st.k.state));
    /* A signature belongs to one key pair: the caller says which. */
    KMS_ENSURE(req->version != 0, KMS_ERR_INVALID_ARGUMENT,
               "version is required in Verify (SignResponse.version names it)");
    KMS_ENSURE(req->signature.len >= 1 && req->signature.len <= KMS_SIGN_SIGNATURE_MAX,
               KMS_ERR_INVALID_ARGUMENT, "signature must be 1..%d bytes, got %zu",
               KMS_SIGN_SIGNATURE_MAX, req->signature.len);
    KMS_GUARD(sign_step_version(call, req->algorithm, req->version, &st));
    bool valid = false;
    KMS_GUARD(p11_asym_verify_digest(st.tok, &st.id, st.alg, st.digest, sizeof(st.digest),
                                     req->signature.data, req->signature.len, &valid));
    char extra[40];
    snprintf(extra, sizeof(extra), " sig_len=%zu valid=%s", req->signature.len,
             valid ? "true" : "false");
    audit_note(call, req->algorithm, req->message_type, req->message.len, st.digest, extra);

    Custos__V1__VerifyResponse resp = CUSTOS__V1__VERIFY_RESPONSE__INIT;
    resp.key_id = st.k.key_id;
    resp.version = st.v.version;
    resp.valid = valid;
    resp.algorithm = req->algorithm;
    return kms_rpc_pack(&resp.base, reply);
}
