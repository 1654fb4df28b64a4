/*
 * kms_import.c - BYOK: GetImportParameters, the key check value, and the
 * cleanup of import tokens and wrapping keys; ImportKeyMaterial is in
 * kms_import_material.c.
 *
 * Where the tenant's key is, at every instant (DESIGN.md "Keys in the HSM":
 * kmsd never holds a tenant key in plaintext):
 *
 *   - On the wire and in this process it exists only wrapped:
 *     RSA-OAEP(ephemeral AES key) || RFC 5649(tenant key, ephemeral key).
 *     The first part opens only with the wrapping key's private half, made
 *     by the token (CKA_SENSITIVE, not extractable, unwrap only), and the
 *     second only with the ephemeral key, which exists only inside the token.
 *   - Both unwraps are C_UnwrapKey calls (p11_oaep_unwrap, p11_kwp_unwrap, or
 *     p11_rsa_aes_unwrap in one step): the token decrypts into new objects
 *     and returns handles, never bytes. The ephemeral key becomes a session
 *     object that can only unwrap; the tenant key a token object that can
 *     only encrypt and decrypt. Both are sensitive and non-extractable by
 *     their templates, and the RSA key's CKA_UNWRAP_TEMPLATE forces that on
 *     anything it unwraps, whatever template a caller passes.
 *   - Two imports are compared by key check value (kms_import_kcv): a digest
 *     of a GCM ciphertext of a constant, computed by the token. It says
 *     "same key or not" and nothing about the key.
 *   - No code here can read key bytes: only pkcs11/ calls PKCS#11, and
 *     pkcs11/ never asks any object for its value attribute and wraps only for escrow
 *     (tests/e2e/test_byok.sh checks both in the source, and runs kmsd
 *     through a PKCS#11 spy that fails the test on either call).
 *
 * Each import follows the store's crash-safety protocol: token CLAIMED,
 * version CREATING with its hsm_id, HSM object, then one commit that
 * activates the version, records its KCV and spends the token. A refused
 * import destroys what it made and gives the token back, so the region's
 * token holds exactly the objects it held before.
 */
#include "kms_import.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
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

static const uint8_t kcv_aad[] = {'c', 'u', 's', 't', 'o', 's', '-', 'k', 'c', 'v', '-', 'v', '1'};

/* ---- key check value ------------------------------------------------------------- */

kms_err kms_import_kcv(struct p11_token *tok, const struct p11_key_id *key,
                       uint8_t out[KMS_KCV_LEN])
{
    static const uint8_t zero_iv[P11_GCM_IV_LEN];
    static const uint8_t zero_block[16];
    uint8_t ct[sizeof(zero_block) + P11_GCM_TAG_LEN];
    size_t ct_len = 0;
    KMS_GUARD(p11_gcm_encrypt(tok, key, zero_iv, sizeof(zero_iv), kcv_aad, sizeof(kcv_aad),
                              zero_block, sizeof(zero_block), ct, sizeof(ct), &ct_len));
    KMS_ENSURE(ct_len == sizeof(ct), KMS_ERR_HSM, "key check value: unexpected GCM output length");
    SHA256(ct, ct_len, out);
    OPENSSL_cleanse(ct, sizeof(ct));
    return KMS_OK;
}

/* ---- shared checks ------------------------------------------------------------------- */

void kms_import_detail_save(struct kms_import_detail *d)
{
    snprintf(d->s, sizeof(d->s), "%s", kms_err_detail());
}

kms_err kms_import_detail_restore(const struct kms_import_detail *d, kms_err rc)
{
    return kms_err_set(rc, "%s", d->s);
}

const char *kms_import_alg_name(Custos__V1__WrappingAlgorithm a)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&custos__v1__wrapping_algorithm__descriptor, (int)a);
    return v ? v->name : "UNKNOWN";
}

/* Whether, and how, this key may receive material. new_version: the caller
 * wants a new version. */
kms_err kms_import_check_importable(struct kms_call *call, const struct kms_key_record *k,
                                bool new_version)
{
    KMS_ENSURE(k->origin == KMS_KEY_ORIGIN_EXTERNAL, KMS_ERR_FAILED_PRECONDITION,
               "key material was generated in the HSM (origin HSM); only keys created with "
               "origin EXTERNAL take imported material");
    KMS_ENSURE(k->state == KMS_KEY_PENDING_IMPORT || k->state == KMS_KEY_ENABLED ||
                   k->state == KMS_KEY_DISABLED,
               KMS_ERR_FAILED_PRECONDITION, "key is %s; it takes no material",
               kms_key_state_name(k->state));
    /* A new version encrypts from now on, which a disabled key must not:
     * as with RotateKey, enable it first. */
    KMS_ENSURE(!new_version || k->state != KMS_KEY_DISABLED, KMS_ERR_FAILED_PRECONDITION,
               "key is DISABLED; only an ENABLED key gets a new version");
    /* Escrow at birth is a tenant promise to its regulator: never import a
     * key that skips it; asked before anything is made. */
    const struct pol_tenant *pt = pol_principal_tenant(call->who);
    if (k->escrow_required || (pt != NULL && pol_tenant_escrow_required(pt)))
        KMS_GUARD(kms_escrow_ready(call->svc, k->region));
    return KMS_OK;
}

/* What the token can unwrap with this RSA key, preferred first. */
kms_err kms_import_offered_algorithms(struct p11_token *tok, const struct p11_key_id *rsa,
                                  Custos__V1__WrappingAlgorithm out[2], size_t *out_n)
{
    bool sha256 = false;
    KMS_GUARD(p11_oaep_sha256_supported(tok, rsa, &sha256));
    *out_n = 0;
    if (sha256)
        out[(*out_n)++] = CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_256;
    out[(*out_n)++] = CUSTOS__V1__WRAPPING_ALGORITHM__RSA_AES_KEY_WRAP_SHA_1;
    return KMS_OK;
}

static void wrapping_label(char out[80], const char *key_id)
{
    snprintf(out, 80, KMS_IMPORT_LABEL_PREFIX "%s", key_id);
}

void kms_import_version_label(char out[80], const char *key_id, uint32_t version)
{
    snprintf(out, 80, KMS_HSM_LABEL_PREFIX "%s:v%" PRIu32, key_id, version);
}

/* ---- cleanup ------------------------------------------------------------------------ */

/* The token that holds an import token's wrapping key, if this node serves
 * it. */
static struct p11_token *wrapping_token(struct kms_service *svc,
                                        const struct kms_import_token_record *t)
{
    struct kms_key_record k;
    if (kms_store_key_get(kms_service_store(svc), t->key_id, &k) != KMS_OK)
        return NULL;
    struct p11_token *tok = kms_service_token(svc, k.region);
    if (tok == NULL || strcmp(p11_token_label(tok), t->token) != 0)
        return NULL;
    return tok;
}

/* A SPENT token: destroy its wrapping key, then close it. */
kms_err kms_import_finish_spent(struct kms_service *svc, struct p11_token *tok,
                            const struct kms_import_token_record *t)
{
    struct p11_key_id id;
    memcpy(id.b, t->hsm_id, sizeof(id.b));
    kms_err rc = p11_key_destroy(tok, &id);
    if (rc != KMS_OK && rc != KMS_ERR_NOT_FOUND)
        return rc; /* stays SPENT: the next sweep retries */
    return kms_store_import_token_close(kms_service_store(svc), t->token_id);
}

kms_err kms_import_sweep(struct kms_service *svc, int64_t now, size_t limit, size_t *out_n)
{
    struct kms_store *st = kms_service_store(svc);
    struct kms_import_token_record *due = NULL;
    size_t n = 0, closed = 0;
    if (out_n)
        *out_n = 0;
    KMS_GUARD(kms_store_import_tokens_due(st, now, KMS_IMPORT_GRACE_S, limit, &due, &n));
    for (size_t i = 0; i < n; i++) {
        const struct kms_import_token_record *t = &due[i];
        struct p11_token *tok = wrapping_token(svc, t);
        if (tok == NULL)
            continue; /* another node's region */
        if (t->state != KMS_IMPORT_SPENT) {
            enum kms_import_end why =
                t->state == KMS_IMPORT_CREATING ? KMS_IMPORT_END_ABANDONED : KMS_IMPORT_END_EXPIRED;
            /* Store first: once SPENT no import can claim it, so the
             * wrapping key can go. A claim that won the race keeps it. */
            kms_err rc = kms_store_import_token_retire(st, t->token_id, t->state, why);
            if (rc == KMS_ERR_FAILED_PRECONDITION)
                continue;
            if (rc != KMS_OK) {
                kms_log_error("import", "key %s: import token not retired: %s", t->key_id,
                              kms_err_detail());
                continue;
            }
        }
        kms_err rc = kms_import_finish_spent(svc, tok, t);
        if (rc != KMS_OK) {
            kms_log_error("import", "key %s: wrapping key not destroyed (%s); will retry",
                          t->key_id, kms_err_detail());
            continue;
        }
        closed++;
        kms_log_info("import", "key %s: import token %s, wrapping key destroyed", t->key_id,
                     t->state == KMS_IMPORT_SPENT    ? "spent"
                     : t->state == KMS_IMPORT_CREATING ? "abandoned while being issued"
                                                       : "expired");
    }
    free(due);
    size_t purged = 0;
    kms_err rc = kms_store_import_tokens_purge(st, now - KMS_IMPORT_PURGE_AFTER_S, &purged);
    if (out_n)
        *out_n = closed;
    return rc;
}

static int cmp_hsm_id(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

kms_err kms_import_reconcile(struct kms_service *svc, struct p11_token *tok, size_t *out_n)
{
    struct p11_key_id *ids = NULL;
    struct kms_hsm_id *known = NULL;
    size_t n_ids = 0, n_known = 0, destroyed = 0;
    if (out_n)
        *out_n = 0;
    /* HSM first, store second: a wrapping key made meanwhile has its row
     * committed before it exists, so it is in `known`. */
    KMS_GUARD(p11_key_list_ids(tok, KMS_IMPORT_LABEL_PREFIX, &ids, &n_ids));
    kms_err rc = kms_store_import_hsm_ids_for_token(kms_service_store(svc), p11_token_label(tok),
                                                    &known, &n_known);
    for (size_t i = 0; rc == KMS_OK && i < n_ids; i++) {
        if (n_known > 0 && bsearch(ids[i].b, known, n_known, sizeof(*known), cmp_hsm_id))
            continue;
        /* A wrapping key has no tenant material; one no token names can
         * never be used again, so destroying it is always safe. */
        char hex[33];
        p11_key_id_hex(&ids[i], hex);
        kms_err drc = p11_key_destroy(tok, &ids[i]);
        if (drc == KMS_OK)
            destroyed++;
        kms_log_warn("import", "token '%s': wrapping key %s unknown to the store: %s",
                     p11_token_label(tok), hex, drc == KMS_OK ? "destroyed" : kms_err_detail());
    }
    free(ids);
    free(known);
    if (out_n)
        *out_n = destroyed;
    return rc;
}

/* ---- GetImportParameters ------------------------------------------------------------ */

kms_err kms_rpc_get_import_parameters(struct kms_call *call, const ProtobufCMessage *msg,
                                      struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__GetImportParametersRequest *req = (const void *)msg;
    struct kms_store *st = kms_service_store(call->svc);
    uint8_t secret[KMS_IMPORT_TOKEN_LEN];
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    bool inserted = false;
    struct kms_import_token_record t;
    struct p11_key_id hid;
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    memset(&t, 0, sizeof(t));

    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_GET_IMPORT_PARAMETERS, req->key_id, &k),
                   done);
    KMS_GUARD_GOTO(kms_import_check_importable(call, &k, false), done);
    KMS_GUARD_GOTO(kms_keyuse_token(call, &k, &tok), done);
    /* Refuse a token that cannot do the import before making anything. */
    KMS_GUARD_GOTO(p11_key_kind_supported(tok, P11_KEY_RSA3072_UNWRAP), done);
    if (!p11_token_has(tok, P11_CAP_RSA_AES_KEY_WRAP))
        KMS_GUARD_GOTO(p11_key_kind_supported(tok, P11_KEY_AES_TRANSPORT), done);

    int64_t now = (int64_t)time(NULL);
    /* Old tokens go first, so that expired ones free their places. */
    if (kms_import_sweep(call->svc, now, KMS_IMPORT_SWEEP_BATCH, NULL) != KMS_OK)
        kms_log_error("import", "request %s: sweep failed: %s", call->request_id,
                      kms_err_detail());

    /* The token is a random secret; the store keeps only its hash, so a
     * copy of the database imports nothing. The format byte lets a later
     * format coexist. */
    secret[0] = KMS_IMPORT_TOKEN_FORMAT;
    KMS_ENSURE_GOTO(RAND_priv_bytes(secret + 1, sizeof(secret) - 1) == 1, done, KMS_ERR_INTERNAL,
                    "random number generator failed");
    SHA256(secret, sizeof(secret), t.token_id);
    KMS_GUARD_GOTO(p11_key_id_new(tok, &hid), done);
    snprintf(t.key_id, sizeof(t.key_id), "%s", k.key_id);
    snprintf(t.token, sizeof(t.token), "%s", k.token);
    memcpy(t.hsm_id, hid.b, sizeof(t.hsm_id));
    t.state = KMS_IMPORT_CREATING;
    t.created_at = now;
    t.expires_at = now + (int64_t)kms_service_config(call->svc)->import_token_ttl_s;

    /* 1. The intent row, durable before the wrapping key exists. */
    rc = kms_store_import_token_insert(st, &t, KMS_IMPORT_MAX_LIVE, now);
    if (rc == KMS_ERR_RESOURCE_EXHAUSTED)
        rc = kms_err_set(rc,
                         "key already has %d unexpired, unused import tokens (each holds an "
                         "RSA key in the HSM): use one, or wait until they expire",
                         KMS_IMPORT_MAX_LIVE);
    if (rc != KMS_OK)
        goto done;
    inserted = true;
    /* 2. The wrapping key pair: private half unwrap-only, and everything it
     * unwraps sensitive and non-extractable (p11_key.c). */
    char label[80];
    wrapping_label(label, k.key_id);
    KMS_GUARD_GOTO(p11_key_generate(tok, P11_KEY_RSA3072_UNWRAP, 0, &hid, label), done);
    KMS_GUARD_GOTO(p11_public_key_der(tok, &hid, &spki, &spki_len), done);
    Custos__V1__WrappingAlgorithm algs[2];
    size_t n_algs = 0;
    KMS_GUARD_GOTO(kms_import_offered_algorithms(tok, &hid, algs, &n_algs), done);
    /* 3. Usable from now on. */
    KMS_GUARD_GOTO(kms_store_import_token_issue(st, t.token_id), done);

    Custos__V1__GetImportParametersResponse resp = CUSTOS__V1__GET_IMPORT_PARAMETERS_RESPONSE__INIT;
    resp.key_id = k.key_id;
    resp.region = k.region;
    resp.public_key.data = spki;
    resp.public_key.len = spki_len;
    resp.import_token.data = secret;
    resp.import_token.len = sizeof(secret);
    resp.expires_at = t.expires_at;
    resp.n_wrapping_algorithms = n_algs;
    resp.wrapping_algorithms = algs;
    /* secret: the reply carries the import token; it is wiped after sending. */
    rc = kms_rpc_pack_secret(&resp.base, reply);
    if (rc == KMS_OK)
        kms_log_info("import", "request %s: key %s: import token issued, expires at %" PRId64,
                     call->request_id, k.key_id, t.expires_at);
done:
    if (rc != KMS_OK && inserted) {
        /* Nothing was handed out: undo in reverse order. If the wrapping key
         * cannot be destroyed now, the row stays CREATING and the sweep
         * retires it after the grace period. */
        struct kms_import_detail d;
        kms_import_detail_save(&d);
        kms_err drc = p11_key_destroy(tok, &hid);
        if (drc == KMS_OK || drc == KMS_ERR_NOT_FOUND)
            kms_store_import_token_discard(st, t.token_id);
        kms_import_detail_restore(&d, rc);
    }
    OPENSSL_cleanse(secret, sizeof(secret));
    free(spki);
    return rc;
}
