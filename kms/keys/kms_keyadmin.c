/*
 * kms_keyadmin.c - key lifecycle RPCs: create, describe, list, rotate,
 * enable, disable, schedule and cancel deletion.
 *
 * Creating a key or a version follows the store's crash-safety protocol
 * (kms_store.h): intent row, HSM object, activation. A failure after the
 * intent row removes the row again, so a refused request changes nothing.
 */
#include "kms_keyadmin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kms_blob.h"
#include "kms_escrow.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_rotate.h"
#include "kms_usage.h"
#include "kms_sign.h"
#include "kms_store.h"
#include "kms_text.h"
#include "p11_crypto.h"
#include "p11_key.h"
#include "pol_eval.h"
#include "proto/key.pb-c.h"

/* KeyMetadata borrows strings from the record; versions are allocated here
 * and released by metadata_release. */
struct metadata {
    Custos__V1__KeyMetadata m;
    Custos__V1__KeyVersion *vs;
    Custos__V1__KeyVersion **vp;
};

/* Fill md from k and, when vr is not NULL, its n versions (borrowed for
 * the call only: the numbers are copied). */
static kms_err metadata_fill(struct kms_call *call, struct kms_key_record *k,
                             const struct kms_version_record *vr, size_t n, struct metadata *md)
{
    (void)call;
    custos__v1__key_metadata__init(&md->m);
    md->vs = NULL;
    md->vp = NULL;
    md->m.key_id = k->key_id;
    md->m.tenant = k->tenant;
    md->m.region = k->region;
    md->m.spec = (Custos__V1__KeySpec)kms_sign_spec_to_proto(k->spec);
    md->m.usage = (Custos__V1__KeyUsage)kms_sign_usage_to_proto(k->usage);
    md->m.origin = k->origin == KMS_KEY_ORIGIN_EXTERNAL ? CUSTOS__V1__KEY_ORIGIN__EXTERNAL
                                                        : CUSTOS__V1__KEY_ORIGIN__HSM;
    /* The proto enum uses the store's numbers on purpose. */
    md->m.state = (Custos__V1__KeyState)k->state;
    md->m.description = k->description;
    md->m.created_at = k->created_at;
    md->m.deletion_at = k->deletion_at;
    md->m.current_version = k->current_version;
    if (vr == NULL)
        return KMS_OK;
    md->vs = calloc(n ? n : 1, sizeof(*md->vs));
    md->vp = calloc(n ? n : 1, sizeof(*md->vp));
    if (md->vs == NULL || md->vp == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        custos__v1__key_version__init(&md->vs[i]);
        md->vs[i].version = vr[i].version;
        md->vs[i].created_at = vr[i].created_at;
        md->vs[i].state = (char *)kms_version_state_name(vr[i].state);
        md->vp[i] = &md->vs[i];
    }
    md->m.n_versions = n;
    md->m.versions = md->vp;
    return KMS_OK;
}

/* The key and its versions from one store snapshot into md, with what is
 * kept beside them: each version's encryption count (kms_usage.h) and the
 * key's rotation period. Counts only grow, so reading them after the
 * snapshot never shows one below what the snapshot's moment had. */
static kms_err metadata_snapshot(struct kms_call *call, const char *key_id,
                                 struct kms_key_record *k, struct metadata *md)
{
    struct kms_version_record *vr = NULL;
    size_t n = 0;
    memset(md, 0, sizeof(*md));
    struct kms_store *st = kms_service_store(call->svc);
    KMS_GUARD(kms_store_key_snapshot(st, key_id, k, &vr, &n));
    kms_err rc = metadata_fill(call, k, vr, n, md);
    uint64_t period = 0;
    if (rc == KMS_OK)
        rc = kms_store_rotation_period_get(st, key_id, &period);
    md->m.rotation_period_s = period;
    for (size_t i = 0; rc == KMS_OK && i < n; i++) {
        uint64_t c = 0;
        rc = kms_usage_count(kms_service_usage(call->svc), key_id, vr[i].version, &c);
        md->vs[i].encryptions = c;
        if (period > 0 && k->state == KMS_KEY_ENABLED && k->origin == KMS_KEY_ORIGIN_HSM &&
            vr[i].version == k->current_version)
            md->m.next_rotation_at = vr[i].created_at + (int64_t)period;
    }
    free(vr);
    return rc;
}

/* 0 (none) or rotation.min_period_s .. 10 years; never for a key whose
 * material Custos cannot make. */
static kms_err check_rotation_period(struct kms_call *call, uint64_t period, bool external)
{
    if (period == 0)
        return KMS_OK;
    const struct kms_config *cfg = kms_service_config(call->svc);
    KMS_ENSURE(!external, KMS_ERR_FAILED_PRECONDITION,
               "key has imported material (origin EXTERNAL): it cannot rotate automatically; "
               "import new material with ImportKeyMaterial and new_version set");
    KMS_ENSURE(period >= cfg->rotation_min_period_s && period <= KMS_ROTATION_PERIOD_MAX,
               KMS_ERR_INVALID_ARGUMENT, "rotation_period_s must be 0 (none) or %u..%llu",
               cfg->rotation_min_period_s, (unsigned long long)KMS_ROTATION_PERIOD_MAX);
    return KMS_OK;
}

static void metadata_release(struct metadata *md)
{
    free(md->vs);
    free(md->vp);
}

/* Reply with the key's metadata; used by every single-key admin RPC, whose
 * responses all have the one field `key` (field 1). */
static kms_err reply_key(struct kms_call *call, const char *key_id,
                         const ProtobufCMessageDescriptor *desc, struct kms_reply *reply)
{
    struct kms_key_record k;
    struct metadata md;
    kms_err rc = metadata_snapshot(call, key_id, &k, &md);
    if (rc == KMS_OK) {
        /* Every *KeyResponse is {base; KeyMetadata *key}: build it through
         * the descriptor so one function serves them all. */
        struct {
            ProtobufCMessage base;
            Custos__V1__KeyMetadata *key;
        } resp;
        protobuf_c_message_init(desc, &resp);
        resp.key = &md.m;
        rc = kms_rpc_pack(&resp.base, reply);
    }
    metadata_release(&md);
    return rc;
}

/* ---- CreateKey ---------------------------------------------------------------- */

/* A CreateKey request's own fields, before the policy is asked. */
static kms_err check_create_request(struct kms_call *call,
                                    const Custos__V1__CreateKeyRequest *req)
{
    KMS_ENSURE(req->region[0] != '\0', KMS_ERR_INVALID_ARGUMENT, "region is required");
    bool metadata = req->spec == CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC;
    bool link = req->spec == CUSTOS__V1__KEY_SPEC__LINK_TOKEN_HMAC;
    /* Signing key pairs (kms_sign.h). */
    enum kms_key_spec pair_spec;
    bool pair = kms_sign_spec_from_proto(req->spec, &pair_spec);
    KMS_ENSURE(req->spec == CUSTOS__V1__KEY_SPEC__AES_256 || metadata || pair || link,
               KMS_ERR_INVALID_ARGUMENT,
               "spec must be AES_256, METADATA_AES_HMAC, EC_P256, RSA_2048, RSA_3072, "
               "RSA_4096 or LINK_TOKEN_HMAC");
    KMS_ENSURE(pair       ? req->usage == CUSTOS__V1__KEY_USAGE__SIGN_VERIFY
               : metadata ? req->usage == CUSTOS__V1__KEY_USAGE__METADATA_FIELDS ||
                                req->usage == CUSTOS__V1__KEY_USAGE__KEY_USAGE_UNSPECIFIED
               : link     ? req->usage == CUSTOS__V1__KEY_USAGE__LINK_TOKEN ||
                            req->usage == CUSTOS__V1__KEY_USAGE__KEY_USAGE_UNSPECIFIED
                          : req->usage == CUSTOS__V1__KEY_USAGE__ENCRYPT_DECRYPT,
               KMS_ERR_INVALID_ARGUMENT,
               "usage must be ENCRYPT_DECRYPT for AES_256, METADATA_FIELDS for "
               "METADATA_AES_HMAC, SIGN_VERIFY for EC_P256 and RSA_*, LINK_TOKEN for "
               "LINK_TOKEN_HMAC");
    KMS_ENSURE(!link || req->origin != CUSTOS__V1__KEY_ORIGIN__EXTERNAL,
               KMS_ERR_INVALID_ARGUMENT,
               "LINK_TOKEN_HMAC keys are generated in the HSM; origin EXTERNAL is for AES_256 "
               "keys");
    KMS_ENSURE(!pair || req->origin != CUSTOS__V1__KEY_ORIGIN__EXTERNAL,
               KMS_ERR_INVALID_ARGUMENT,
               "signing keys are generated in the HSM; origin EXTERNAL is for AES_256 keys");
    /* A metadata key is two HSM objects per version; BYOK imports one. */
    KMS_ENSURE(!metadata || req->origin != CUSTOS__V1__KEY_ORIGIN__EXTERNAL,
               KMS_ERR_INVALID_ARGUMENT,
               "METADATA_AES_HMAC keys are generated in the HSM; origin EXTERNAL is for "
               "AES_256 keys");
    KMS_ENSURE(strlen(req->description) <= KMS_DESCRIPTION_MAX, KMS_ERR_INVALID_ARGUMENT,
               "description longer than %d bytes", KMS_DESCRIPTION_MAX);
    KMS_ENSURE(kms_text_ok(req->description, strlen(req->description)),
               KMS_ERR_INVALID_ARGUMENT,
               "description must be UTF-8 text without control, format (bidi, "
               "zero-width) or line separator characters");
    kms_err rc = check_rotation_period(call, req->rotation_period_s,
                                       req->origin == CUSTOS__V1__KEY_ORIGIN__EXTERNAL);
    if (rc == KMS_ERR_FAILED_PRECONDITION)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT, "rotation_period_s is for keys of origin HSM: "
                                                   "Custos cannot make an EXTERNAL key's material");
    return rc;
}

kms_err kms_rpc_create_key(struct kms_call *call, const ProtobufCMessage *msg,
                           struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__CreateKeyRequest *req = (const void *)msg;

    const char *tenant = pol_principal_tenant_id(call->who);
    KMS_GUARD_GOTO(check_create_request(call, req), done);
    bool metadata = req->spec == CUSTOS__V1__KEY_SPEC__METADATA_AES_HMAC;
    bool link = req->spec == CUSTOS__V1__KEY_SPEC__LINK_TOKEN_HMAC;
    enum kms_key_spec pair_spec = KMS_KEY_SPEC_AES_256;
    bool pair = kms_sign_spec_from_proto(req->spec, &pair_spec);
    KMS_GUARD_GOTO(kms_rpc_authorize_tenant(call, POL_OP_CREATE_KEY, req->region), done);
    const struct pol_tenant *pt = pol_principal_tenant(call->who);
    bool escrow = pt != NULL && pol_tenant_escrow_required(pt);
    struct p11_token *tok = kms_service_token(call->svc, req->region);
    KMS_ENSURE_GOTO(tok != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                    "region %s is not served by this node", req->region);
    /* Escrow at birth is a tenant promise to its regulator: never create a
     * key that skips it. Asked before anything is made. */
    if (escrow)
        KMS_GUARD_GOTO(kms_escrow_ready(call->svc, req->region), done);
    KMS_GUARD_GOTO(kms_service_region_check(call->svc, req->region), done);
    rc = pair   ? kms_sign_supported(tok, pair_spec)
         : link ? p11_key_kind_supported(tok, P11_KEY_HMAC_SHA256)
                : p11_key_kind_supported(tok, P11_KEY_AES_ENCRYPT);
    if (rc == KMS_OK && metadata)
        rc = p11_key_kind_supported(tok, P11_KEY_HMAC_SHA256);
    if (rc == KMS_OK && metadata)
        rc = p11_key_shared_id_supported(tok);
    /* An escrowed signing key that the token could never restore would
     * break the escrow promise: refused before anything is made. */
    if (rc == KMS_OK && pair && escrow) {
        struct p11_key_id esc;
        if (kms_service_escrow_key(call->svc, req->region, &esc))
            rc = p11_asym_restore_supported(tok, &esc, kms_sign_kind(pair_spec));
    }
    if (rc != KMS_OK)
        goto done;

    struct kms_key_record k;
    memset(&k, 0, sizeof(k));
    uint8_t raw_id[16];
    KMS_ENSURE_GOTO(RAND_bytes(raw_id, sizeof(raw_id)) == 1, done, KMS_ERR_INTERNAL,
                    "random number generator failed");
    kms_key_id_format(raw_id, k.key_id);
    snprintf(k.tenant, sizeof(k.tenant), "%s", tenant);
    snprintf(k.region, sizeof(k.region), "%s", req->region);
    snprintf(k.token, sizeof(k.token), "%s", p11_token_label(tok));
    snprintf(k.description, sizeof(k.description), "%s", req->description);
    k.spec = pair       ? pair_spec
             : metadata ? KMS_KEY_SPEC_METADATA
             : link     ? KMS_KEY_SPEC_HMAC_256
                        : KMS_KEY_SPEC_AES_256;
    k.usage = pair       ? KMS_KEY_USAGE_SIGN_VERIFY
              : metadata ? KMS_KEY_USAGE_METADATA
              : link     ? KMS_KEY_USAGE_LINK_TOKEN
                         : KMS_KEY_USAGE_ENCRYPT_DECRYPT;
    k.created_at = (int64_t)time(NULL);
    k.escrow_required = escrow;
    struct kms_store *st = kms_service_store(call->svc);

    if (req->origin == CUSTOS__V1__KEY_ORIGIN__EXTERNAL) {
        /* BYOK: no material until ImportKeyMaterial. */
        k.origin = KMS_KEY_ORIGIN_EXTERNAL;
        k.state = KMS_KEY_PENDING_IMPORT;
        KMS_GUARD_GOTO(kms_store_key_insert(st, &k, NULL), done);
    } else {
        k.origin = KMS_KEY_ORIGIN_HSM;
        k.state = KMS_KEY_CREATING;
        struct kms_version_record v1;
        memset(&v1, 0, sizeof(v1));
        struct p11_key_id hid;
        KMS_GUARD_GOTO(p11_key_id_new(tok, &hid), done);
        memcpy(v1.hsm_id, hid.b, 16);
        v1.version = 1;
        v1.state = KMS_VERSION_CREATING;
        v1.created_at = k.created_at;
        KMS_GUARD_GOTO(kms_store_key_insert(st, &k, &v1), done);
        /* Set while the key is still CREATING: a crash before activation
         * discards the key and its period together. */
        if (req->rotation_period_s > 0) {
            rc = kms_store_rotation_period_set(st, k.key_id, req->rotation_period_s);
            if (rc != KMS_OK) {
                kms_store_creating_discard(st, k.key_id, 1);
                goto done;
            }
        }
        KMS_GUARD_GOTO(kms_version_make(call->svc, call->request_id, tok, k.key_id, 1, v1.hsm_id,
                                        k.spec, escrow),
                       done);
    }
    kms_rpc_audit_key(call, k.key_id, k.region, k.token);
    call->audit.key_version = k.origin == KMS_KEY_ORIGIN_HSM ? 1 : 0;
    kms_log_info("keys", "request %s: key %s created in %s for tenant %s", call->request_id,
                 k.key_id, k.region, k.tenant);
    rc = reply_key(call, k.key_id, &custos__v1__create_key_response__descriptor, reply);
done:
    return rc;
}

/* ---- DescribeKey, ListKeys ------------------------------------------------------- */

kms_err kms_rpc_describe_key(struct kms_call *call, const ProtobufCMessage *msg,
                             struct kms_reply *reply)
{
    const Custos__V1__DescribeKeyRequest *req = (const void *)msg;
    struct kms_key_record k;
    kms_err rc = kms_rpc_authorize_key(call, POL_OP_DESCRIBE_KEY, req->key_id, &k);
    if (rc == KMS_OK)
        rc = reply_key(call, k.key_id, &custos__v1__describe_key_response__descriptor, reply);
    return rc;
}

kms_err kms_rpc_list_keys(struct kms_call *call, const ProtobufCMessage *msg,
                          struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__ListKeysRequest *req = (const void *)msg;
    struct kms_key_record *keys = NULL;
    size_t n = 0;
    struct metadata *mds = NULL;
    Custos__V1__KeyMetadata **mp = NULL;
    char next[KMS_PAGE_TOKEN_SIZE] = "";

    const char *tenant = pol_principal_tenant_id(call->who);
    KMS_GUARD_GOTO(kms_rpc_authorize_tenant(call, POL_OP_LIST_KEYS, NULL), done);
    KMS_ENSURE_GOTO(req->page_size <= KMS_PAGE_SIZE_MAX, done, KMS_ERR_INVALID_ARGUMENT,
                    "page_size must be 1..%d", KMS_PAGE_SIZE_MAX);
    size_t page = req->page_size ? req->page_size : 100;
    rc = kms_store_keys_list(kms_service_store(call->svc), tenant, req->page_token, page, &keys,
                             &n, next);
    /* The tenant and page size are checked above: what the store refuses
     * as invalid here is the token, which only a client can get wrong. */
    if (rc == KMS_ERR_INVALID_ARGUMENT)
        rc = kms_err_set(KMS_ERR_INVALID_ARGUMENT,
                         "page_token is not one this server issued: pass the next_page_token "
                         "of the previous ListKeys reply, or none for the first page");
    if (rc != KMS_OK)
        goto done;
    mds = calloc(n ? n : 1, sizeof(*mds));
    mp = calloc(n ? n : 1, sizeof(*mp));
    KMS_ENSURE_GOTO(mds && mp, done, KMS_ERR_NOMEM, "out of memory");
    /* Keys of a region not served (its audit log was refused at start) are
     * left out, as DescribeKey of each is refused: what is known of them is
     * that region's business, and its log cannot record this read. The
     * page token still moves past them; the audit event says how many. */
    size_t out = 0, hidden = 0;
    for (size_t i = 0; i < n; i++) {
        if (kms_service_region_check(call->svc, keys[i].region) != KMS_OK) {
            hidden++;
            continue;
        }
        metadata_fill(call, &keys[i], NULL, 0, &mds[out]);
        mp[out] = &mds[out].m;
        out++;
    }
    kms_err_clear();
    if (hidden)
        snprintf(call->audit.detail, sizeof(call->audit.detail),
                 "left out %zu key(s) of regions not served", hidden);
    Custos__V1__ListKeysResponse resp = CUSTOS__V1__LIST_KEYS_RESPONSE__INIT;
    resp.n_keys = out;
    resp.keys = mp;
    resp.next_page_token = next;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    free(mds);
    free(mp);
    free(keys);
    return rc;
}

/* ---- RotateKey -------------------------------------------------------------------- */

kms_err kms_rpc_rotate_key(struct kms_call *call, const ProtobufCMessage *msg,
                           struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__RotateKeyRequest *req = (const void *)msg;
    struct kms_key_record k;
    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_ROTATE_KEY, req->key_id, &k), done);
    KMS_ENSURE_GOTO(k.state == KMS_KEY_ENABLED, done, KMS_ERR_FAILED_PRECONDITION,
                    "key is %s; only an ENABLED key can be rotated", kms_key_state_name(k.state));
    /* BYOK: Custos must not make material the tenant does not hold, or the
     * tenant could no longer leave with its own copy (docs/byok.md). */
    KMS_ENSURE_GOTO(k.origin != KMS_KEY_ORIGIN_EXTERNAL, done, KMS_ERR_FAILED_PRECONDITION,
                    "key has imported material (origin EXTERNAL): rotate it by importing new "
                    "material with ImportKeyMaterial and new_version set (docs/byok.md)");
    struct p11_token *tok = kms_service_token(call->svc, k.region);
    KMS_ENSURE_GOTO(tok != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                    "region %s is not served by this node", k.region);
    /* A tenant that turned escrow on after the key was born escrows its
     * new versions from now on. */
    const struct pol_tenant *pt = pol_principal_tenant(call->who);
    bool escrow = k.escrow_required || (pt != NULL && pol_tenant_escrow_required(pt));
    if (escrow)
        KMS_GUARD_GOTO(kms_escrow_ready(call->svc, k.region), done);
    /* One rotation of a key at a time, from allocating the number to
     * reading the reply's snapshot: the caller is told the version it made,
     * in a dense list that ends with it (kms_rotate.h). */
    uint32_t version = 0;
    kms_rotate_lock(k.key_id);
    rc = kms_version_add_make(call->svc, call->request_id, tok, &k, escrow, &version);
    /* A number spent by a failed creation is named in the audit event. */
    call->audit.key_version = version;
    struct metadata md;
    memset(&md, 0, sizeof(md));
    struct kms_key_record now;
    if (rc == KMS_OK)
        rc = metadata_snapshot(call, k.key_id, &now, &md);
    kms_rotate_unlock(k.key_id);
    if (rc == KMS_OK) {
        kms_log_info("keys", "request %s: key %s rotated to version %u", call->request_id,
                     k.key_id, version);
        Custos__V1__RotateKeyResponse resp = CUSTOS__V1__ROTATE_KEY_RESPONSE__INIT;
        resp.key = &md.m;
        resp.new_version = version;
        rc = kms_rpc_pack(&resp.base, reply);
    }
    metadata_release(&md);
done:
    return rc;
}

/* ---- UpdateKeyRotation -------------------------------------------------------------- */

kms_err kms_rpc_update_key_rotation(struct kms_call *call, const ProtobufCMessage *msg,
                                    struct kms_reply *reply)
{
    kms_err rc = KMS_OK;
    const Custos__V1__UpdateKeyRotationRequest *req = (const void *)msg;
    struct kms_key_record k;
    /* The same grant as RotateKey: whoever may rotate a key may have the
     * system rotate it. */
    KMS_GUARD_GOTO(kms_rpc_authorize_key(call, POL_OP_ROTATE_KEY, req->key_id, &k), done);
    KMS_ENSURE_GOTO(k.state == KMS_KEY_ENABLED || k.state == KMS_KEY_DISABLED ||
                        k.state == KMS_KEY_PENDING_IMPORT,
                    done, KMS_ERR_FAILED_PRECONDITION,
                    "key is %s; a rotation period is set on ENABLED or DISABLED keys",
                    kms_key_state_name(k.state));
    KMS_GUARD_GOTO(check_rotation_period(call, req->rotation_period_s,
                                         k.origin == KMS_KEY_ORIGIN_EXTERNAL),
                   done);
    KMS_GUARD_GOTO(kms_store_rotation_period_set(kms_service_store(call->svc), k.key_id,
                                                 req->rotation_period_s),
                   done);
    snprintf(call->audit.detail, sizeof(call->audit.detail), "rotation_period_s=%llu",
             (unsigned long long)req->rotation_period_s);
    kms_log_info("keys", "request %s: key %s rotation period %llu s", call->request_id, k.key_id,
                 (unsigned long long)req->rotation_period_s);
    rc = reply_key(call, k.key_id, &custos__v1__update_key_rotation_response__descriptor, reply);
done:
    return rc;
}

/* ---- state changes ------------------------------------------------------------------ */

/* The four state RPCs share one shape: {key_id [, days]} -> {key}. */
struct transition {
    enum pol_op op;
    enum kms_key_state from[2];
    size_t n_from;
    enum kms_key_state to;
    const ProtobufCMessageDescriptor *resp;
};

static kms_err change_state(struct kms_call *call, const char *key_id, const struct transition *tr,
                            int64_t deletion_at, struct kms_reply *reply)
{
    struct kms_key_record k;
    KMS_GUARD(kms_rpc_authorize_key(call, tr->op, key_id, &k));
    bool ok = false;
    for (size_t i = 0; i < tr->n_from; i++)
        ok |= k.state == tr->from[i];
    KMS_ENSURE(ok, KMS_ERR_FAILED_PRECONDITION, "key is %s; %s needs %s%s%s",
               kms_key_state_name(k.state), pol_op_name(tr->op), kms_key_state_name(tr->from[0]),
               tr->n_from > 1 ? " or " : "", tr->n_from > 1 ? kms_key_state_name(tr->from[1]) : "");
    /* Compare-and-set: a concurrent change makes this fail cleanly. */
    kms_err src = kms_store_key_set_state(kms_service_store(call->svc), k.key_id, k.state, tr->to,
                                          deletion_at);
    kms_keycache_invalidate(kms_service_keycache(call->svc), k.key_id);
    KMS_GUARD(src);
    kms_log_info("keys", "request %s: key %s %s -> %s", call->request_id, k.key_id,
                 kms_key_state_name(k.state), kms_key_state_name(tr->to));
    return reply_key(call, k.key_id, tr->resp, reply);
}

kms_err kms_rpc_enable_key(struct kms_call *call, const ProtobufCMessage *msg,
                           struct kms_reply *reply)
{
    const Custos__V1__EnableKeyRequest *req = (const void *)msg;
    static const struct transition tr = {POL_OP_ENABLE_KEY, {KMS_KEY_DISABLED, KMS_KEY_ENABLED}, 1,
                                         KMS_KEY_ENABLED,
                                         &custos__v1__enable_key_response__descriptor};
    kms_err rc = change_state(call, req->key_id, &tr, 0, reply);
    return rc;
}

kms_err kms_rpc_disable_key(struct kms_call *call, const ProtobufCMessage *msg,
                            struct kms_reply *reply)
{
    const Custos__V1__DisableKeyRequest *req = (const void *)msg;
    static const struct transition tr = {POL_OP_DISABLE_KEY, {KMS_KEY_ENABLED, KMS_KEY_ENABLED}, 1,
                                         KMS_KEY_DISABLED,
                                         &custos__v1__disable_key_response__descriptor};
    kms_err rc = change_state(call, req->key_id, &tr, 0, reply);
    return rc;
}

kms_err kms_rpc_schedule_key_deletion(struct kms_call *call, const ProtobufCMessage *msg,
                                      struct kms_reply *reply)
{
    const Custos__V1__ScheduleKeyDeletionRequest *req = (const void *)msg;
    const struct kms_config *cfg = kms_service_config(call->svc);
    kms_err rc = KMS_OK;
    unsigned days = req->pending_window_days ? req->pending_window_days
                                             : cfg->deletion_default_days;
    KMS_ENSURE_GOTO(days >= cfg->deletion_min_days && days <= 3650, done,
                    KMS_ERR_INVALID_ARGUMENT, "pending_window_days must be %u..3650",
                    cfg->deletion_min_days);
    static const struct transition tr = {POL_OP_SCHEDULE_KEY_DELETION,
                                         {KMS_KEY_ENABLED, KMS_KEY_DISABLED},
                                         2,
                                         KMS_KEY_PENDING_DELETION,
                                         &custos__v1__schedule_key_deletion_response__descriptor};
    int64_t at = (int64_t)time(NULL) + (int64_t)days * cfg->deletion_day_seconds;
    rc = change_state(call, req->key_id, &tr, at, reply);
done:
    return rc;
}

kms_err kms_rpc_cancel_key_deletion(struct kms_call *call, const ProtobufCMessage *msg,
                                    struct kms_reply *reply)
{
    const Custos__V1__CancelKeyDeletionRequest *req = (const void *)msg;
    /* As in AWS KMS, a cancelled deletion leaves the key disabled: someone
     * meant to delete it, so a human re-enables it on purpose. */
    static const struct transition tr = {POL_OP_CANCEL_KEY_DELETION,
                                         {KMS_KEY_PENDING_DELETION, KMS_KEY_PENDING_DELETION},
                                         1,
                                         KMS_KEY_DISABLED,
                                         &custos__v1__cancel_key_deletion_response__descriptor};
    kms_err rc = change_state(call, req->key_id, &tr, 0, reply);
    return rc;
}

/* ---- metadata for other handler files ------------------------------------------------ */

/* The record the metadata borrows its strings from lives beside it. */
struct owned_metadata {
    struct metadata md; /* first: md.m is what callers hold */
    struct kms_key_record k;
};

kms_err kms_rpc_key_metadata_new(struct kms_call *call, const char *key_id,
                                 Custos__V1__KeyMetadata **out)
{
    *out = NULL;
    struct owned_metadata *o = calloc(1, sizeof(*o));
    KMS_ENSURE(o != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = metadata_snapshot(call, key_id, &o->k, &o->md);
    if (rc != KMS_OK) {
        metadata_release(&o->md);
        free(o);
        return rc;
    }
    *out = &o->md.m;
    return KMS_OK;
}

void kms_rpc_key_metadata_free(Custos__V1__KeyMetadata *m)
{
    if (m == NULL)
        return;
    struct owned_metadata *o = (struct owned_metadata *)(void *)m;
    metadata_release(&o->md);
    free(o);
}
