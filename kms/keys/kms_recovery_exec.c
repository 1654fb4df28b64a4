/*
 * kms_recovery_exec.c - EscrowService's ExecuteRecovery: once the quorum
 * holds, restore the escrowed versions into a token of the key's own region,
 * or export them wrapped to a recipient the policy names (kms_recovery.h;
 * docs/escrow-recovery.md). The steps it shares with the other recovery
 * handlers are in kms_recovery_util.c.
 */
#include "kms_recovery.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "audit_event.h"
#include "kms_blob.h"
#include "kms_escrow.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_pbuf.h"
#include "kms_recovery_stmt.h"
#include "p11_crypto.h"
#include "p11_escrow.h"
#include "pol_eval.h"
#include "proto/escrow.pb-c.h"
#include "kms_recovery_internal.h"
#include "kms_rotate.h"
#include "kms_sign.h"

/* ---- ExecuteRecovery ------------------------------------------------------------------ */

/* Policy may have changed since the approvals: count only those of officers
 * who are still on the quorum, and never the requester. */
static kms_err quorum_still_holds(struct kms_call *call, const struct kms_recovery_record *r,
                                  const struct kms_recovery_approval *appr, size_t n)
{
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    unsigned m = pol_tenant_quorum_approvals(t), valid = 0;
    for (size_t i = 0; i < n; i++) {
        const struct pol_principal *p = pol_doc_principal(call->policy, appr[i].officer);
        if (p && pol_tenant_is_quorum_officer(t, p) && strcmp(appr[i].officer, r->requester) != 0)
            valid++;
    }
    if (m == 0 || valid < m)
        call->audit.rule = "quorum";
    KMS_ENSURE(m > 0 && valid >= m, KMS_ERR_FAILED_PRECONDITION,
               "only %u of the %u approvals the current policy requires are from officers "
               "still on the quorum",
               valid, m);
    return KMS_OK;
}

static enum p11_key_kind part_kind(int part)
{
    return part == 0 ? P11_KEY_AES_ENCRYPT : P11_KEY_HMAC_SHA256;
}

/* RESTORE: every blob of the listed versions back into the token under the
 * version's own CKA_ID, then one commit. On any failure the objects made
 * here are destroyed and nothing changes in the store. */
static kms_err restore(struct kms_call *call, struct p11_token *tok,
                       const struct kms_recovery_record *r, const struct kms_escrow_record *blobs,
                       size_t n_blobs)
{
    struct kms_store *st = kms_service_store(call->svc);
    struct p11_key_id made[KMS_RECOVERY_MAX_VERSIONS];
    size_t n_made = 0;
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < r->n_versions && rc == KMS_OK; i++) {
        struct kms_version_record v;
        rc = kms_store_version_get(st, r->key_id, r->versions[i], &v);
        if (rc != KMS_OK)
            break;
        struct p11_key_id id;
        memcpy(id.b, v.hsm_id, sizeof(id.b));
        /* A leftover of the destroyed version (a sweep that crashed
         * midway) would collide with the restored object. */
        bool exists = false;
        rc = p11_key_exists(tok, &id, &exists);
        if (rc == KMS_OK && exists)
            rc = p11_key_destroy(tok, &id);
        made[n_made++] = id;
        char label[80];
        snprintf(label, sizeof(label), KMS_HSM_LABEL_PREFIX "%s:v%" PRIu32, r->key_id,
                 r->versions[i]);
        for (size_t j = 0; j < n_blobs && rc == KMS_OK; j++) {
            if (blobs[j].version != r->versions[i])
                continue;
            struct p11_key_id esc;
            memcpy(esc.b, blobs[j].escrow_hsm_id, sizeof(esc.b));
            KMS_ENSURE_GOTO(strcmp(blobs[j].token, p11_token_label(tok)) == 0, undo,
                            KMS_ERR_FAILED_PRECONDITION,
                            "escrow blob of version %" PRIu32 " was made in token '%s', not '%s'",
                            r->versions[i], blobs[j].token, p11_token_label(tok));
            rc = blobs[j].part == KMS_ESCROW_PART_PAIR
                     ? kms_sign_escrow_restore(call->svc, tok, &blobs[j], &id, label)
                     : p11_kwp_unwrap(tok, &esc, blobs[j].blob, blobs[j].blob_len,
                                      part_kind(blobs[j].part), 0, &id, label);
        }
    }
    if (rc == KMS_OK)
        rc = kms_store_recovery_restore(st, r->recovery_id, kms_recovery_now(),
                                        r->restore_state == 2 ? KMS_KEY_ENABLED
                                                              : KMS_KEY_DISABLED);
    kms_keycache_invalidate(kms_service_keycache(call->svc), r->key_id);
    if (rc == KMS_OK)
        return KMS_OK;
undo:;
    char detail[512];
    snprintf(detail, sizeof(detail), "%s", kms_err_detail());
    for (size_t i = 0; i < n_made; i++)
        p11_key_destroy(tok, &made[i]);
    return kms_err_set(rc, "%s", detail);
}

static kms_err export_wrapped(struct kms_call *call, struct p11_token *tok,
                              const struct kms_recovery_record *r,
                              const struct kms_escrow_record *blobs, size_t n_blobs,
                              Custos__V1__ExecuteRecoveryResponse *resp)
{
    const struct pol_tenant *t = pol_principal_tenant(call->who);
    /* The recipient the officers approved, and no other: its key must
     * still be the one whose hash they signed. */
    char sha_now[65];
    unsigned char *der = NULL;
    size_t der_len = 0;
    KMS_GUARD(
        kms_recovery_pick_recipient(call, t, r->recipient, r->region, sha_now, &der, &der_len));
    kms_err rc = KMS_OK;
    KMS_RECOVERY_REFUSE_GOTO(
        "recipient", strcmp(sha_now, r->recipient_sha256) == 0, done, KMS_ERR_FAILED_PRECONDITION,
        "recipient %s has a different public key in the policy now than the one the "
        "officers approved; request a new recovery",
        r->recipient);
    resp->wrapped = calloc(r->n_versions, sizeof(*resp->wrapped));
    KMS_ENSURE_GOTO(resp->wrapped != NULL, done, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < r->n_versions && rc == KMS_OK; i++) {
        const struct kms_escrow_record *b = NULL;
        for (size_t j = 0; j < n_blobs && !b; j++)
            if (blobs[j].version == r->versions[i] && blobs[j].part == 0)
                b = &blobs[j];
        KMS_ENSURE_GOTO(b != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                        "version %" PRIu32 " has no escrow blob", r->versions[i]);
        Custos__V1__WrappedKeyVersion *w = calloc(1, sizeof(*w) + P11_EXPORT_MAX);
        KMS_ENSURE_GOTO(w != NULL, done, KMS_ERR_NOMEM, "out of memory");
        custos__v1__wrapped_key_version__init(w);
        resp->wrapped[resp->n_wrapped++] = w;
        uint8_t *buf = (uint8_t *)(w + 1);
        struct p11_key_id esc;
        memcpy(esc.b, b->escrow_hsm_id, sizeof(esc.b));
        size_t out_len = 0;
        enum p11_oaep_hash hash = P11_OAEP_SHA1;
        rc = p11_escrow_export(tok, &esc, b->blob, b->blob_len, der, der_len, buf,
                               P11_EXPORT_MAX, &out_len, &hash);
        w->version = r->versions[i];
        w->wrapped_key.data = buf;
        w->wrapped_key.len = out_len;
        w->algorithm = (char *)(hash == P11_OAEP_SHA256 ? "RSA_AES_KEY_WRAP_SHA_256"
                                                        : "RSA_AES_KEY_WRAP_SHA_1");
    }
    if (rc == KMS_OK)
        rc = kms_store_recovery_finish(kms_service_store(call->svc), r->recovery_id,
                                       KMS_RECOVERY_APPROVED, KMS_RECOVERY_EXECUTED,
                                       kms_recovery_now(), NULL, NULL);
done:
    OPENSSL_free(der);
    return rc;
}

/* Under the key's lock and lease: read the recovery and the key again and
 * check everything that allows the execution (approved, time lock passed,
 * quorum still valid, a RESTORE's key still DESTROYED), so that of two
 * executions only the first passes. The signed statement is audited. */
static kms_err recheck_executable(struct kms_call *call, const char *recovery_id,
                                  struct kms_recovery_record *r, struct kms_key_record *k,
                                  struct kms_recovery_approval **appr, size_t *n_appr)
{
    kms_err rc = KMS_OK;
    free(*appr);
    *appr = NULL;
    *n_appr = 0;
    KMS_GUARD(kms_store_recovery_get(kms_service_store(call->svc), recovery_id, r, appr, n_appr));
    KMS_GUARD(kms_recovery_refresh_expiry(call, r));
    KMS_GUARD(kms_store_key_get(kms_service_store(call->svc), r->key_id, k));
    {
        char stmt[KMS_RECOVERY_STMT_MAX];
        size_t stmt_len = 0;
        KMS_GUARD(kms_recovery_statement(r, stmt, sizeof(stmt), &stmt_len));
        kms_recovery_audit_statement(call, stmt, stmt_len, false);
    }
    KMS_RECOVERY_REFUSE_GOTO(
        "state", r->state == KMS_RECOVERY_APPROVED, out, KMS_ERR_FAILED_PRECONDITION,
        "recovery is %s (%zu of %" PRIu32 " approvals); only an APPROVED recovery "
        "can be executed",
        kms_recovery_state_name(r->state), *n_appr, r->approvals_required);
    int64_t now = kms_recovery_now();
    KMS_RECOVERY_REFUSE_GOTO("time_lock", now >= r->executable_at, out, KMS_ERR_FAILED_PRECONDITION,
                             "time lock: executable from %" PRId64 " (in %" PRId64 " s); the key's "
                             "administrators can see this recovery until then",
                             r->executable_at, r->executable_at - now);
    KMS_GUARD(quorum_still_holds(call, r, *appr, *n_appr));
    if (r->mode == CUSTOS__V1__RECOVERY_MODE__RESTORE)
        KMS_RECOVERY_REFUSE_GOTO("state", k->state == KMS_KEY_DESTROYED, out,
                                 KMS_ERR_FAILED_PRECONDITION,
                                 "key is %s; RESTORE brings back a DESTROYED key",
                                 kms_key_state_name(k->state));
out:
    return rc;
}

kms_err kms_rpc_execute_recovery(struct kms_call *call, const ProtobufCMessage *msg,
                                 struct kms_reply *reply)
{
    const Custos__V1__ExecuteRecoveryRequest *req = (const void *)msg;
    struct kms_recovery_record r;
    struct kms_key_record k;
    struct kms_recovery_approval *appr = NULL;
    size_t n_appr = 0;
    struct kms_escrow_record *blobs = NULL;
    size_t n_blobs = 0;
    struct kms_recovery_msg rm = {0};
    Custos__V1__ExecuteRecoveryResponse resp = CUSTOS__V1__EXECUTE_RECOVERY_RESPONSE__INIT;
    kms_err rc = KMS_OK;
    char locked_key[KMS_KEY_ID_SIZE] = "";
    bool leased = false;
    KMS_GUARD_GOTO(
        kms_recovery_load(call, POL_OP_EXECUTE_RECOVERY, req->recovery_id, &r, &k, &appr, &n_appr),
        done);
    /* Executions of one key are serialized by the key's rotation lock, and
     * everything decided below is read again under it: two executions (one
     * recovery sent twice, or two recoveries of one key) must never both
     * pass the state checks, or the loser would unwrap under the winner's
     * CKA_ID and its rollback destroy the winner's objects. The lock is
     * held until the store's commit, so the loser sees EXECUTED (or the
     * key no longer DESTROYED) and is refused before it touches the HSM. */
    snprintf(locked_key, sizeof(locked_key), "%s", r.key_id);
    kms_rotate_lock(locked_key);
    /* The lock is per process: with several nodes the key's lease is what
     * keeps an execution on another node (or its sweeper's destroys) out
     * of this one's way. Held elsewhere: refused before anything is read
     * or made; the client may send it again. */
    {
        bool won = false;
        KMS_GUARD_GOTO(kms_key_lease_take(call->svc, locked_key, &won), done);
        leased = won;
        KMS_RECOVERY_REFUSE_GOTO("busy", won, done, KMS_ERR_FAILED_PRECONDITION,
                                 "key %s is being changed by another kmsd node (a recovery "
                                 "executing or a deletion); try again",
                                 locked_key);
    }
    KMS_GUARD_GOTO(recheck_executable(call, req->recovery_id, &r, &k, &appr, &n_appr), done);
    struct p11_token *tok = kms_service_token(call->svc, r.region);
    KMS_ENSURE_GOTO(tok != NULL, done, KMS_ERR_FAILED_PRECONDITION,
                    "region %s is not served by this node", r.region);
    KMS_GUARD_GOTO(kms_recovery_escrow_list(call, &k, &blobs, &n_blobs), done);
    if (r.mode == CUSTOS__V1__RECOVERY_MODE__RESTORE) {
        KMS_GUARD_GOTO(restore(call, tok, &r, blobs, n_blobs), done);
        struct kms_key_record now_k;
        KMS_GUARD_GOTO(kms_store_key_get(kms_service_store(call->svc), r.key_id, &now_k), done);
        resp.key_state = (char *)kms_key_state_name(now_k.state);
        resp.current_version = now_k.current_version;
    } else {
        KMS_GUARD_GOTO(export_wrapped(call, tok, &r, blobs, n_blobs, &resp), done);
        reply->secret = true;
    }
    kms_recovery_note(call, "recovery %s executed (%s)", r.recovery_id,
                      kms_recovery_mode_name(r.mode));
    kms_log_warn("escrow", "request %s: recovery %s of key %s EXECUTED (%s) by %s",
                 call->request_id, r.recovery_id, r.key_id, kms_recovery_mode_name(r.mode),
                 pol_principal_id(call->who));
    free(appr);
    appr = NULL;
    KMS_GUARD_GOTO(kms_store_recovery_get(kms_service_store(call->svc), r.recovery_id, &r, &appr,
                                          &n_appr),
                   done);
    KMS_GUARD_GOTO(kms_recovery_msg_fill(&rm, &r, appr, n_appr), done);
    resp.recovery = &rm.m;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    if (leased)
        kms_key_lease_give(call->svc, locked_key);
    if (locked_key[0] != '\0')
        kms_rotate_unlock(locked_key);
    for (size_t i = 0; i < resp.n_wrapped; i++) {
        OPENSSL_cleanse(resp.wrapped[i] + 1, P11_EXPORT_MAX);
        free(resp.wrapped[i]);
    }
    free(resp.wrapped);
    kms_recovery_msg_release(&rm);
    free(appr);
    free(blobs);
    return rc;
}
