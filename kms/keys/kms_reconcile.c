/*
 * kms_reconcile.c - at start, before serving: restore detection (in
 * kms_restore_detect.c), then reconcile of the store with the tokens
 * (kms_reconcile.h).
 */
#include "kms_reconcile.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "audit_log.h"
#include "audit_merkle.h"
#include "kms_import.h"
#include "kms_log.h"
#include "kms_reconcile_internal.h"
#include "kms_rotate.h"
#include "kms_store_epoch.h"
#include "p11_key.h"
#include "proto/audit.pb-c.h"

static int cmp_hsm_id(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

/* A service event in the audit log of tok's region (reconcile, restore):
 * durable before kmsd goes on. Audit off or region not served: the
 * operational log is all there is. */
kms_err kms_reconcile_event(struct kms_service *svc, struct p11_token *tok, const char *op,
                            const char *key_id, uint32_t version, const char *detail)
{
    struct audit_log *log = kms_service_audit_log(svc, p11_token_region(tok));
    if (log == NULL)
        return KMS_OK;
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.principal = (char *)"kmsd";
    ev.role = (char *)"operator";
    ev.operation = (char *)op;
    ev.key_id = (char *)(key_id ? key_id : "");
    ev.key_version = version;
    ev.region = (char *)p11_token_region(tok);
    ev.token = (char *)p11_token_label(tok);
    ev.outcome = (char *)"ok";
    ev.detail = (char *)(detail ? detail : "");
    struct pol_doc *policy = kms_service_policy(svc);
    ev.policy_sha256 = (char *)pol_doc_digest_hex(policy);
    kms_err rc = audit_log_append(log, &ev);
    pol_doc_unref(policy);
    return rc;
}

/* Does a CREATING or ACTIVE version of tok name id now? */
static kms_err live_id_known(struct kms_service *svc, struct p11_token *tok,
                                          const struct p11_key_id *id, bool *out_known)
{
    struct kms_hsm_id *known = NULL;
    size_t n = 0;
    *out_known = false;
    KMS_GUARD(kms_store_hsm_ids_for_token(kms_service_store(svc), p11_token_label(tok), &known, &n));
    *out_known = n > 0 && bsearch(id->b, known, n, sizeof(*known), cmp_hsm_id) != NULL;
    free(known);
    return KMS_OK;
}

/* An HSM object of ours that no live version names. It is destroyed only
 * when the store remembers its key as DESTROYED (the sweeper crashed between
 * the store and the HSM), kmsd is not in safe mode, and the audit log was
 * there to say that no recovery brought the key back after the store's
 * copy (kms_restore_audit_scan). An object the store has never heard of is
 * left in place and reported: starting on a restored old database must not
 * destroy keys created after the backup. */
static void reconcile_orphan(struct kms_service *svc, struct p11_token *tok,
                             const struct p11_key_id *id)
{
    char hex[33], label[65], key_id[KMS_KEY_ID_SIZE] = "";
    p11_key_id_hex(id, hex);
    if (p11_key_label(tok, id, label) == KMS_OK &&
        strncmp(label, KMS_HSM_LABEL_PREFIX, strlen(KMS_HSM_LABEL_PREFIX)) == 0) {
        const char *k = label + strlen(KMS_HSM_LABEL_PREFIX);
        const char *colon = strchr(k, ':');
        if (colon && colon - k == KMS_KEY_ID_LEN) {
            memcpy(key_id, k, KMS_KEY_ID_LEN);
            key_id[KMS_KEY_ID_LEN] = '\0';
        }
    }
    struct kms_key_record rec;
    if (key_id[0] && kms_store_key_get(kms_service_store(svc), key_id, &rec) == KMS_OK &&
        rec.state == KMS_KEY_DESTROYED) {
        if (kms_service_safe_mode(svc, NULL) || !kms_service_config(svc)->audit_enabled) {
            kms_log_warn("reconcile", "token '%s': object '%s' of key %s, DESTROYED in the "
                         "store, left in place (%s)", p11_token_label(tok), label, key_id,
                         kms_service_safe_mode(svc, NULL) ? "SAFE MODE"
                                        : "audit log off: nothing shows that no recovery "
                                          "brought the key back");
            return;
        }
        /* Another node may be RESTOREing the key right now: its objects
         * exist before its commit makes the key live again. Under the key's
         * lease (kms_rotate.h), and only if the store still says DESTROYED
         * and still names no live version with this id. */
        bool leased = false, known = true;
        kms_rotate_lock(key_id);
        if (kms_key_lease_take(svc, key_id, &leased) != KMS_OK || !leased ||
            kms_store_key_get(kms_service_store(svc), key_id, &rec) != KMS_OK ||
            rec.state != KMS_KEY_DESTROYED ||
            live_id_known(svc, tok, id, &known) != KMS_OK || known) {
            kms_log_warn("reconcile", "token '%s': object '%s' of key %s left in place: the key "
                         "is being changed by another node (or is no longer DESTROYED)",
                         p11_token_label(tok), label, key_id);
            kms_err_clear();
        } else {
            kms_err drc = p11_key_destroy(tok, id);
            kms_log_warn("reconcile", "token '%s': destroyed leftover HSM object %s of destroyed key %s: %s",
                         p11_token_label(tok), hex, key_id, drc == KMS_OK ? "ok" : kms_err_detail());
        }
        if (leased)
            kms_key_lease_give(svc, key_id);
        kms_rotate_unlock(key_id);
        return;
    }
    kms_log_error("reconcile", "token '%s': HSM object %s (label '%s') is unknown to the store; "
                  "left in place (was the store restored from an old backup?)",
                  p11_token_label(tok), hex, label);
}

/* Is the CREATING version's HSM object complete: every object its spec
 * needs exists under its id with this version's label, locked
 * (non-extractable: escrow, when wanted, was sealed before the lock), and
 * its escrow blob is stored when the key wants one? A key created by import
 * is never complete here: its check value is written at activation. */
static kms_err creating_complete(struct kms_service *svc, struct p11_token *tok,
                                 const struct kms_store_creating *c, bool *out_exists,
                                 bool *out_complete)
{
    struct p11_key_id id;
    memcpy(id.b, c->hsm_id, sizeof(id.b));
    *out_complete = false;
    KMS_GUARD(p11_key_exists(tok, &id, out_exists));
    if (!*out_exists)
        return KMS_OK;
    struct kms_store_key_raw k;
    bool found = false;
    KMS_GUARD(kms_store_key_state_any(kms_service_store(svc), c->key_id, &k, &found));
    if (!found || k.origin != KMS_KEY_ORIGIN_HSM)
        return KMS_OK;
    char label[65], want[80];
    snprintf(want, sizeof(want), KMS_HSM_LABEL_PREFIX "%s:v%" PRIu32, c->key_id, c->version);
    if (p11_key_label(tok, &id, label) != KMS_OK || strcmp(label, want) != 0)
        return KMS_OK;
    struct p11_key_info info;
    bool ok = true;
    if (k.spec == KMS_KEY_SPEC_AES_256 || k.spec == KMS_KEY_SPEC_METADATA)
        ok = ok && p11_key_info_kind(tok, &id, P11_KEY_AES_ENCRYPT, &info) == KMS_OK &&
             !info.extractable;
    if (k.spec == KMS_KEY_SPEC_HMAC_256 || k.spec == KMS_KEY_SPEC_METADATA)
        ok = ok && p11_key_info_kind(tok, &id, P11_KEY_HMAC_SHA256, &info) == KMS_OK &&
             !info.extractable;
    if (kms_key_spec_is_pair(k.spec))
        ok = ok && p11_key_info(tok, &id, &info) == KMS_OK && !info.extractable;
    kms_err_clear();
    if (ok && k.escrow_required) {
        struct kms_escrow_record *blobs = NULL;
        size_t n = 0;
        KMS_GUARD((kms_key_spec_is_pair(k.spec) ? kms_store_escrow_pair_list
                                                : kms_store_escrow_list)(kms_service_store(svc),
                                                                         c->key_id, &blobs, &n));
        bool has = false;
        for (size_t i = 0; i < n; i++)
            has |= blobs[i].version == c->version;
        free(blobs);
        ok = has;
    }
    *out_complete = ok;
    return KMS_OK;
}

/* Step 1 of reconcile, for one CREATING version. A crash between "row in
 * CREATING" and "row ACTIVE", or a store restored from a hot backup taken
 * meanwhile, leaves a CREATING version. A complete HSM object may have been
 * acknowledged (the backup case): the version is finished, never
 * destroyed. An absent or incomplete object was never acknowledged
 * (acknowledgement follows completion): the row goes, with the incomplete
 * object, except in safe mode, where nothing is destroyed. *out_gone: the
 * object was destroyed (or never made) here. */
static kms_err reconcile_creating(struct kms_service *svc, const struct kms_store_creating *c,
                                  struct p11_key_id *out_gone, bool *out_is_gone)
{
    *out_is_gone = false;
    struct p11_token *tok = kms_service_token_by_label(svc, c->token);
    if (tok == NULL) {
        kms_log_warn("reconcile", "key %s v%u is half-created in token '%s', which this node does not serve; left alone",
                     c->key_id, c->version, c->token);
        return KMS_OK;
    }
    bool exists = false, complete = false;
    KMS_GUARD(creating_complete(svc, tok, c, &exists, &complete));
    char detail[160];
    if (complete) {
        KMS_GUARD(kms_store_version_activate(kms_service_store(svc), c->key_id, c->version));
        kms_log_warn("reconcile", "finished half-created key %s version %u: its HSM object "
                     "is complete and may have been acknowledged",
                     c->key_id, c->version);
        snprintf(detail, sizeof(detail), "half-created version finished at start: its HSM "
                 "object is complete");
        return kms_reconcile_event(svc, tok, "ReconcileFinished", c->key_id, c->version, detail);
    }
    if (kms_service_safe_mode(svc, NULL)) {
        kms_log_warn("reconcile", "key %s version %u is half-created (HSM object %s); left "
                     "as it is (SAFE MODE)", c->key_id, c->version,
                     exists ? "incomplete" : "absent");
        return KMS_OK;
    }
    struct p11_key_id id;
    memcpy(id.b, c->hsm_id, sizeof(id.b));
    kms_err drc = exists ? p11_key_destroy(tok, &id) : KMS_ERR_NOT_FOUND;
    if (drc != KMS_OK && drc != KMS_ERR_NOT_FOUND)
        return drc;
    *out_gone = id;
    *out_is_gone = true;
    KMS_GUARD(kms_store_creating_discard(kms_service_store(svc), c->key_id, c->version));
    kms_log_warn("reconcile", "removed half-created key %s version %u (HSM object %s)",
                 c->key_id, c->version, drc == KMS_OK ? "incomplete, destroyed" : "never made");
    snprintf(detail, sizeof(detail), "half-created version discarded at start: its HSM "
             "object was %s, so it was never acknowledged",
             drc == KMS_OK ? "incomplete" : "never made");
    return kms_reconcile_event(svc, tok, "ReconcileDiscarded", c->key_id, c->version, detail);
}

/* Objects a crash inside the HSM library left without attributes: never a
 * key anyone was told about (every object of ours carries CKA_ID and a
 * label from its creation). Destroyed, except in safe mode. */
static kms_err reconcile_husks(struct kms_service *svc, struct p11_token *tok)
{
    size_t husks = 0;
    /* With several nodes on one token, an object another node is creating
     * right now may be seen before its attributes are (SoftHSMv2 writes a
     * new object's file, then its attributes): a node starting must not
     * take it for a crash's leftover. Reported only (docs/operations.md,
     * "Empty key objects": they hold nothing, so they may stay). */
    if (kms_service_safe_mode(svc, NULL) || kms_store_is_pg(kms_service_store(svc))) {
        /* Safe mode destroys nothing: the store may be too old to
         * tell what the token's objects are. */
        KMS_GUARD(p11_key_count_husks(tok, &husks));
        if (husks > 0)
            kms_log_warn("reconcile", "token '%s': %zu key object(s) without CKA_ID or "
                         "label left in place (%s)", p11_token_label(tok), husks,
                         kms_service_safe_mode(svc, NULL) ? "SAFE MODE"
                                                          : "shared store: other nodes may be "
                                                            "creating objects");
        return KMS_OK;
    }
    KMS_GUARD(p11_key_destroy_husks(tok, &husks));
    if (husks > 0)
        kms_log_warn("reconcile", "token '%s': destroyed %zu incomplete key object(s) "
                     "without CKA_ID or label (left by a crash during object creation)",
                     p11_token_label(tok), husks);
    return KMS_OK;
}

/* Step 2 of reconcile, for token t: crash leftovers, HSM objects of ours
 * that no live row names (orphans; gone: what step 1 destroyed), and the
 * wrapping keys of import tokens interrupted by a crash. */
static kms_err reconcile_token(struct kms_reconcile_ctx *c, size_t t,
                               const struct p11_key_id *gone, size_t n_gone)
{
    struct kms_service *svc = c->svc;
    struct p11_token *tok = kms_service_token_at(svc, t);
    struct p11_key_id *ids = NULL;
    size_t n_ids = 0;
    struct kms_hsm_id *known = NULL;
    size_t n_known = 0;
    KMS_GUARD(reconcile_husks(svc, tok));
    /* HSM first, store second: see kms_store.h. At start nothing runs
     * concurrently (the store's flock, no listener yet), so the listing
     * the restore check made is as good as a new one, less what step 1
     * destroyed: one walk of a large token, not two. */
    kms_err rc = KMS_OK;
    if (c->have_listed[t]) {
        ids = c->listed[t];
        n_ids = c->n_listed[t];
        c->listed[t] = NULL;
        c->have_listed[t] = false;
    } else {
        rc = p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, &ids, &n_ids);
    }
    if (rc == KMS_OK)
        rc = kms_store_hsm_ids_for_token(kms_service_store(svc), p11_token_label(tok), &known,
                                         &n_known);
    for (size_t i = 0; rc == KMS_OK && i < n_ids; i++) {
        if (n_known > 0 && bsearch(ids[i].b, known, n_known, sizeof(*known), cmp_hsm_id))
            continue;
        bool destroyed = false;
        for (size_t j = 0; j < n_gone && !destroyed; j++)
            destroyed = memcmp(gone[j].b, ids[i].b, sizeof(ids[i].b)) == 0;
        if (!destroyed)
            reconcile_orphan(svc, tok, &ids[i]);
    }
    free(ids);
    free(known);
    /* Wrapping keys of import tokens interrupted by a crash. */
    if (rc == KMS_OK && !kms_service_safe_mode(svc, NULL))
        rc = kms_import_reconcile(svc, tok, NULL);
    return rc;
}

/* Half-created versions (step 1), then each token's objects (step 2). */
static kms_err reconcile(struct kms_reconcile_ctx *c)
{
    struct kms_service *svc = c->svc;
    struct kms_store_creating *creating = NULL;
    size_t n = 0;
    KMS_GUARD(kms_store_creating_list(kms_service_store(svc), &creating, &n));
    kms_err rc = KMS_OK;
    /* Objects step 1 destroys: the token listing below may predate it. */
    struct p11_key_id *gone = n ? calloc(n, sizeof(*gone)) : NULL;
    size_t n_gone = 0;
    if (n && gone == NULL) {
        free(creating);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        bool is_gone = false;
        rc = reconcile_creating(svc, &creating[i], &gone[n_gone], &is_gone);
        if (is_gone)
            n_gone++;
    }
    free(creating);
    for (size_t t = 0; t < kms_service_n_tokens(svc) && rc == KMS_OK; t++)
        rc = reconcile_token(c, t, gone, n_gone);
    free(gone);
    return rc;
}

kms_err kms_reconcile_start(struct kms_service *svc, enum kms_restore_mode mode, FILE *out,
                            bool *out_exit)
{
    struct kms_reconcile_ctx c = {.svc = svc, .mode = mode, .out = out ? out : stdout};
    *out_exit = false;
    /* Before anything is destroyed: is the store older than the audit log
     * or the tokens (a restore)? Then reconcile destroys nothing. The audit
     * logs are open first (kms_service_start) so that what reconcile does
     * is recorded. */
    kms_err rc = kms_restore_detect(&c, out_exit);
    if (rc == KMS_OK && !*out_exit)
        rc = reconcile(&c);
    if (rc == KMS_OK && !*out_exit && !kms_service_safe_mode(svc, NULL))
        kms_reconcile_mark_audit(svc);
    for (size_t i = 0; i < KMS_CONFIG_MAX_TOKENS; i++)
        free(c.listed[i]);
    return rc;
}

/* Record, for every region, that the store reflects its audit log up to
 * now: a key operation commits in the store before its event is queued,
 * so every event below the current size is in the store. */
void kms_reconcile_mark_audit(struct kms_service *svc)
{
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        const char *region = p11_token_region(kms_service_token_at(svc, i));
        struct audit_log *log = kms_service_audit_log(svc, region);
        if (log == NULL)
            continue;
        uint64_t size = audit_tree_size(audit_log_tree(log));
        if (kms_store_audit_mark_set(kms_service_store(svc), region, size) != KMS_OK)
            kms_log_warn("restore", "region %s: audit watermark not recorded: %s", region,
                         kms_err_detail());
        /* An encryption is reserved in the store before its event is
         * written: the store's counts cover every event below size. */
        if (kms_store_enc_mark_set(kms_service_store(svc), region, size) != KMS_OK)
            kms_log_warn("restore", "region %s: encryption-count watermark not recorded: %s",
                         region, kms_err_detail());
    }
}

