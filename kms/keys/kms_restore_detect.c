/*
 * kms_restore_detect.c - restore detection at start (kms_reconcile.h):
 * compare the store with the audit logs and the tokens (kms_restore.h),
 * then enter safe mode, print the plan, or apply it.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit_log.h"
#include "audit_merkle.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_reconcile_internal.h"
#include "kms_restore.h"
#include "kms_store_epoch.h"
#include "p11_asym.h"
#include "p11_key.h"
#include "p11_token.h"

/* The audit log of the i-th served token's region, or NULL (audit off or
 * the log could not be opened). */
static struct audit_log *audit_at(struct kms_service *svc, size_t i)
{
    return kms_service_audit_log(svc, p11_token_region(kms_service_token_at(svc, i)));
}

/* The spec of a key from its version's object(s): an AES key and a generic
 * secret under one id are a METADATA version (docs/pkcs11.md). */
static kms_err reattach_spec(struct p11_token *tok, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                             enum kms_key_spec *spec, enum kms_key_usage *usage)
{
    struct p11_key_id id;
    struct p11_key_info info;
    memcpy(id.b, hsm_id, sizeof(id.b));
    bool aes = p11_key_info_kind(tok, &id, P11_KEY_AES_ENCRYPT, &info) == KMS_OK;
    bool hmac = p11_key_info_kind(tok, &id, P11_KEY_HMAC_SHA256, &info) == KMS_OK;
    bool any = aes || hmac || p11_key_info(tok, &id, &info) == KMS_OK;
    kms_err_clear();
    KMS_ENSURE(any, KMS_ERR_NOT_FOUND, "the object is gone from its token");
    *spec = aes && hmac ? KMS_KEY_SPEC_METADATA
            : aes       ? KMS_KEY_SPEC_AES_256
            : hmac      ? KMS_KEY_SPEC_HMAC_256
                        : KMS_KEY_SPEC_EC_P256;
    /* A pair: its size tells an RSA signing key from a P-256 one. */
    struct p11_asym_info ai;
    if (*spec == KMS_KEY_SPEC_EC_P256 && p11_asym_info(tok, &id, &ai) == KMS_OK)
        *spec = ai.bits == 2048   ? KMS_KEY_SPEC_RSA_2048
                : ai.bits == 3072 ? KMS_KEY_SPEC_RSA_3072
                : ai.bits == 4096 ? KMS_KEY_SPEC_RSA_4096
                                  : KMS_KEY_SPEC_EC_P256;
    kms_err_clear();
    *usage = *spec == KMS_KEY_SPEC_AES_256    ? KMS_KEY_USAGE_ENCRYPT_DECRYPT
             : *spec == KMS_KEY_SPEC_METADATA ? KMS_KEY_USAGE_METADATA
             : *spec == KMS_KEY_SPEC_HMAC_256 ? KMS_KEY_USAGE_LINK_TOKEN
                                              : KMS_KEY_USAGE_SIGN_VERIFY;
    return KMS_OK;
}

/* KMS_FIX_STATE: a DESTROYED key recovered after the backup: only the
 * versions whose objects its token holds come back (the token scan's
 * list). */
static kms_err fix_state(struct kms_reconcile_ctx *c, const struct kms_restore_fix *x)
{
    struct kms_service *svc = c->svc;
    struct kms_key_record rec;
    struct kms_hsm_id *present = NULL;
    size_t n_present = 0;
    if (kms_store_key_get(kms_service_store(svc), x->key_id, &rec) == KMS_OK) {
        for (size_t t = 0; t < kms_service_n_tokens(svc); t++) {
            if (!c->have_listed[t] ||
                strcmp(p11_token_label(kms_service_token_at(svc, t)), rec.token) != 0)
                continue;
            present = calloc(c->n_listed[t] ? c->n_listed[t] : 1, sizeof(*present));
            KMS_ENSURE(present != NULL, KMS_ERR_NOMEM, "out of memory");
            for (size_t i = 0; i < c->n_listed[t]; i++)
                memcpy(present[i].bytes, c->listed[t][i].b, sizeof(present[i].bytes));
            n_present = c->n_listed[t];
            break;
        }
    }
    kms_err_clear();
    kms_err src = kms_store_key_force_state(kms_service_store(svc), x->key_id, x->state, present,
                                            n_present);
    free(present);
    return src;
}

/* KMS_FIX_REATTACH_KEY: version 1 of a key the store lacks, from its
 * object (the spec) and its CreateKey event (tenant, region, origin). */
static kms_err fix_reattach_key(struct kms_service *svc, struct p11_token *tok,
                                const struct kms_restore_fix *x, int64_t now)
{
    struct kms_store *store = kms_service_store(svc);
    KMS_ENSURE(tok != NULL, KMS_ERR_FAILED_PRECONDITION, "token '%s' is not served here",
               x->token);
    struct kms_key_record k = {0};
    struct kms_version_record v1 = {0};
    KMS_GUARD(reattach_spec(tok, x->hsm_id, &k.spec, &k.usage));
    snprintf(k.key_id, sizeof(k.key_id), "%s", x->key_id);
    snprintf(k.tenant, sizeof(k.tenant), "%s", x->tenant);
    snprintf(k.region, sizeof(k.region), "%s", x->region);
    snprintf(k.token, sizeof(k.token), "%s", x->token);
    snprintf(k.description, sizeof(k.description), "reattached after a restore");
    k.origin = x->origin;
    k.state = KMS_KEY_CREATING;
    k.created_at = x->created_at;
    v1.version = 1;
    v1.state = KMS_VERSION_CREATING;
    v1.created_at = x->created_at;
    memcpy(v1.hsm_id, x->hsm_id, sizeof(v1.hsm_id));
    KMS_GUARD(kms_store_unknown_confirm(store, x->hsm_id, now));
    KMS_GUARD(kms_store_key_insert(store, &k, &v1));
    KMS_GUARD(kms_store_version_activate(store, x->key_id, 1));
    KMS_GUARD(kms_store_usage_bound(store, x->key_id, 1, x->encryptions, false));
    /* A disable or deletion acknowledged after its creation is not
     * undone by bringing it back (a deletion rebuilt as DISABLED). */
    if (x->state != KMS_KEY_ENABLED)
        KMS_GUARD(kms_store_key_force_state(store, x->key_id, x->state, NULL, 0));
    return KMS_OK;
}

/* Apply one fix of the plan (kmsd --reconcile --confirm): say so on out,
 * and record it in the audit log of the key's region. */
static kms_err apply_fix(struct kms_reconcile_ctx *c, const struct kms_restore_fix *x)
{
    struct kms_service *svc = c->svc;
    struct kms_store *store = kms_service_store(svc);
    FILE *out = c->out;
    int64_t now = (int64_t)time(NULL);
    struct p11_token *tok = x->token[0] ? kms_service_token_by_label(svc, x->token) : NULL;
    char detail[160];
    switch (x->kind) {
    case KMS_FIX_STATE:
        KMS_GUARD(fix_state(c, x));
        fprintf(out, "applied: key %s is %s again\n", x->key_id, kms_key_state_name(x->state));
        snprintf(detail, sizeof(detail), "restore reconcile: state rebuilt to %s from the "
                 "audit log", kms_key_state_name(x->state));
        break;
    case KMS_FIX_REATTACH:
        KMS_GUARD(kms_store_unknown_confirm(store, x->hsm_id, now));
        /* Created when its event says (its rotation period runs from then);
         * its count at least the encryptions the audit log saw under it. */
        KMS_GUARD(kms_store_version_reattach(store, x->key_id, x->version, x->hsm_id,
                                             x->created_at > 0 ? x->created_at : now));
        KMS_GUARD(kms_store_usage_bound(store, x->key_id, x->version, x->encryptions, false));
        fprintf(out, "applied: key %s version %u reattached\n", x->key_id, x->version);
        snprintf(detail, sizeof(detail), "restore reconcile: version reattached from token "
                 "'%s'", x->token);
        break;
    case KMS_FIX_LOST:
        KMS_GUARD(kms_store_lost_confirm(store, x->hsm_id, now));
        fprintf(out, "applied: key %s version %u accepted as lost from token '%s'\n",
                x->key_id, x->version, x->token);
        snprintf(detail, sizeof(detail), "restore reconcile: live version accepted as lost: "
                 "its HSM object is in no token");
        break;
    case KMS_FIX_FLOOR:
        KMS_GUARD(kms_store_key_version_floor(store, x->key_id, x->version));
        fprintf(out, "applied: key %s never reissues version %u\n", x->key_id, x->version);
        snprintf(detail, sizeof(detail), "restore reconcile: version number kept taken (the "
                 "audit log acknowledged it)");
        break;
    case KMS_FIX_REATTACH_KEY:
        KMS_GUARD(fix_reattach_key(svc, tok, x, now));
        fprintf(out, "applied: key %s reattached (tenant %s), version 1 %s\n", x->key_id,
                x->tenant, kms_key_state_name(x->state));
        snprintf(detail, sizeof(detail), "restore reconcile: key reattached from token '%s' "
                 "and its CreateKey event", x->token);
        break;
    case KMS_FIX_UNKNOWN:
        KMS_GUARD(kms_store_unknown_confirm(store, x->hsm_id, now));
        if (x->key_id[0] && x->version > 0)
            KMS_GUARD(kms_store_key_version_floor(store, x->key_id, x->version));
        fprintf(out, "applied: object of key %s version %u kept in token '%s', unattached\n",
                x->key_id[0] ? x->key_id : "(unlabelled)", x->version, x->token);
        snprintf(detail, sizeof(detail), "restore reconcile: HSM object unknown to the store "
                 "kept in place, unattached");
        break;
    default:
        return kms_err_set(KMS_ERR_INTERNAL, "unknown fix kind");
    }
    kms_keycache_invalidate(kms_service_keycache(svc), x->key_id);
    struct kms_key_record rec;
    if (tok == NULL && kms_store_key_get(store, x->key_id, &rec) == KMS_OK)
        tok = kms_service_token_by_label(svc, rec.token);
    if (tok == NULL && kms_service_n_tokens(svc) > 0)
        tok = kms_service_token_at(svc, 0);
    return tok ? kms_reconcile_event(svc, tok, "RestoreReconciled", x->key_id, x->version, detail)
               : KMS_OK;
}

/* Scan every region's audit log (from the store's encryption-count
 * watermark; sizes[i]: the log's size) and every token (its listing kept
 * in c for reconcile). */
static kms_err scan(struct kms_reconcile_ctx *c, struct kms_restore_report *r, uint64_t *sizes)
{
    struct kms_service *svc = c->svc;
    struct kms_store *store = kms_service_store(svc);
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        struct audit_log *log = audit_at(svc, i);
        if (log == NULL)
            continue;
        uint64_t enc_from = 0;
        KMS_GUARD(kms_store_enc_mark_get(store, p11_token_region(kms_service_token_at(svc, i)),
                                         &enc_from));
        KMS_GUARD(kms_restore_audit_scan(store, log, r, enc_from, &sizes[i]));
    }
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        kms_err rc = kms_restore_token_scan(store, kms_service_token_at(svc, i), r, &c->listed[i],
                                            &c->n_listed[i]);
        c->have_listed[i] = rc == KMS_OK;
        KMS_GUARD(rc);
    }
    return KMS_OK;
}

/* A store made by kmsctl backup says so: the first start on it is
 * recorded, in the log and in every region's audit log (a plan only says
 * it). */
static kms_err announce_backup(struct kms_reconcile_ctx *c)
{
    struct kms_service *svc = c->svc;
    bool restored = false;
    char of[KMS_STORE_META_MAX], at[KMS_STORE_META_MAX];
    KMS_GUARD(kms_store_backup_pending(kms_service_store(svc), &restored, of, at));
    if (!restored)
        return KMS_OK;
    if (c->mode == KMS_RESTORE_MODE_PLAN) {
        fprintf(c->out, "this store is a restored backup of store %s taken at %s (unix time)\n",
                of, at);
        return KMS_OK;
    }
    char detail[2 * KMS_STORE_META_MAX + 64];
    snprintf(detail, sizeof(detail), "store restored from a backup of store %s taken at %s", of,
             at);
    kms_log_warn("restore", "%s (unix time)", detail);
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++)
        KMS_GUARD(kms_reconcile_event(svc, kms_service_token_at(svc, i), "StoreRestored", NULL, 0,
                                      detail));
    return kms_store_backup_announced(kms_service_store(svc), (int64_t)time(NULL));
}

/* kmsd --reconcile: the findings, and what a normal start would do. */
static void print_plan(struct kms_reconcile_ctx *c, const struct kms_restore_report *r,
                       size_t findings)
{
    struct kms_service *svc = c->svc;
    FILE *out = c->out;
    kms_restore_print(r, out);
    struct kms_store_creating *creating = NULL;
    size_t n = 0;
    if (kms_store_creating_list(kms_service_store(svc), &creating, &n) == KMS_OK)
        for (size_t i = 0; i < n; i++)
            fprintf(out, "  at start: key %s version %u is half-created: finished if its "
                         "HSM object is complete, else discarded (never in safe mode)\n",
                    creating[i].key_id, creating[i].version);
    free(creating);
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        size_t husks = 0;
        struct p11_token *tok = kms_service_token_at(svc, i);
        if (p11_key_count_husks(tok, &husks) == KMS_OK && husks > 0)
            fprintf(out, "  at start: token '%s' has %zu key object(s) without CKA_ID or "
                         "label: destroyed as crash leftovers (never in safe mode)\n",
                    p11_token_label(tok), husks);
    }
    kms_err_clear();
    fprintf(out, findings ? "kmsd would start in SAFE MODE; apply with: kmsctl reconcile "
                            "--confirm (or kmsd --reconcile --confirm)\n"
                          : "the store agrees with the audit log and the tokens\n");
}

/* GCM counts live in the store alone: one restored (or behind its
 * watermark after a crash) would let a version pass the random-IV limit.
 * Every encrypting event after the store's watermark not yet counted adds
 * to its version's count, whether or not anything else is found
 * (docs/state.md "Encryption counts"). */
static kms_err count_encryptions(struct kms_reconcile_ctx *c, const struct kms_restore_report *r,
                                 const uint64_t *sizes)
{
    struct kms_service *svc = c->svc;
    struct kms_store *store = kms_service_store(svc);
    for (size_t i = 0; i < r->cap_enc; i++)
        if (r->enc[i].key_id[0] && r->enc[i].since_count > 0)
            KMS_GUARD(kms_store_usage_bound(store, r->enc[i].key_id, r->enc[i].version,
                                            r->enc[i].since_count, true));
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++)
        if (audit_at(svc, i))
            KMS_GUARD(kms_store_enc_mark_set(
                store, p11_token_region(kms_service_token_at(svc, i)), sizes[i]));
    kms_service_set_enc_counted(svc);
    return KMS_OK;
}

/* kmsd --reconcile --confirm: apply the plan, keys before their later
 * versions. A fix that cannot be applied is reported and skipped: the rest
 * still helps. */
static kms_err confirm(struct kms_reconcile_ctx *c, const struct kms_restore_report *r,
                       size_t findings)
{
    struct kms_service *svc = c->svc;
    FILE *out = c->out;
    kms_restore_print(r, out);
    size_t failed = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < r->n_fixes; i++) {
            if ((r->fixes[i].kind == KMS_FIX_REATTACH_KEY) != (pass == 0))
                continue;
            kms_err frc = apply_fix(c, &r->fixes[i]);
            if (frc == KMS_ERR_NOMEM || frc == KMS_ERR_IO || frc == KMS_ERR_NOSPC)
                return frc;
            if (frc != KMS_OK) {
                failed++;
                fprintf(out, "not applied: key %s version %u: %s\n", r->fixes[i].key_id,
                        r->fixes[i].version, kms_err_detail());
            }
        }
    char detail[160];
    snprintf(detail, sizeof(detail), "operator confirmed the restore reconcile: %zu "
             "finding(s), %zu change(s) applied, %zu not applicable", findings,
             r->n_fixes - failed, failed);
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++)
        KMS_GUARD(kms_reconcile_event(svc, kms_service_token_at(svc, i), "RestoreConfirmed", NULL,
                                      0, detail));
    /* The operator accepted the audit logs in place, even one older
     * than the store's watermark. */
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        struct audit_log *log = audit_at(svc, i);
        if (log)
            KMS_GUARD(kms_store_audit_mark_reset(kms_service_store(svc),
                                                 p11_token_region(kms_service_token_at(svc, i)),
                                                 audit_tree_size(audit_log_tree(log))));
    }
    fprintf(out, "%s; start kmsd normally\n", detail);
    kms_log_warn("restore", "%s", detail);
    return KMS_OK;
}

/* Findings on a normal start: SAFE MODE, logged and audited. */
static kms_err enter_safe_mode(struct kms_reconcile_ctx *c, const struct kms_restore_report *r)
{
    struct kms_service *svc = c->svc;
    char reason[400];
    snprintf(reason, sizeof(reason),
             "SAFE MODE: the store does not match the audit log and the tokens (%zu "
             "acknowledged change(s) missing from the store, %zu live version(s) without "
             "HSM object, %zu HSM object(s) unknown to the store, %zu audit log(s) older "
             "than the store); see the log, then kmsctl reconcile",
             r->store_behind, r->token_behind, r->unknown, r->audit_behind);
    kms_service_set_safe_mode(svc, reason);
    const char *safe = NULL;
    kms_service_safe_mode(svc, &safe);
    kms_log_error("restore", "%s", safe);
    for (size_t i = 0; i < r->n_lines; i++)
        kms_log_error("restore", "finding: %s", r->lines[i]);
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++)
        KMS_GUARD(kms_reconcile_event(svc, kms_service_token_at(svc, i), "RestoreDetected", NULL,
                                      0, safe));
    return KMS_OK;
}

/* A shared (PostgreSQL) store: other nodes keep serving while this one
 * starts, and what they do is seen half-done by the scans: a store change
 * whose audit event is not sequenced yet (the store commits first), the
 * store's audit watermark set by a node whose view of the log is a poll
 * ahead of this one's. Such a finding is about one change in flight and is
 * gone a moment later, while other nodes' next changes may show up as new
 * ones; a store, log or token that is really behind shows the *same*
 * finding every time. So on a shared store the scan is made
 * RESTORE_SCANS_SHARED times, RESTORE_RESCAN_MS apart (well over a
 * request's time from its store commit to its sequenced event at the
 * default audit.sequencer_poll_ms), and the findings count only if one of
 * them is in every scan: the same fix (kind, key, version, object), the
 * same finding line, or an audit log behind the store each time. More than
 * RESTORE_CONFIRM_MAX fixes in one scan is no change in flight: counted at
 * once. */
#define RESTORE_SCANS_SHARED 3
#define RESTORE_RESCAN_MS 1000
#define RESTORE_CONFIRM_MAX 256
#define FINDING_ID_LEN 200

static void forget_listings(struct kms_reconcile_ctx *c)
{
    for (size_t i = 0; i < KMS_CONFIG_MAX_TOKENS; i++) {
        free(c->listed[i]);
        c->listed[i] = NULL;
        c->n_listed[i] = 0;
        c->have_listed[i] = false;
    }
}

/* What identifies each finding of r, into ids (n_fixes + n_lines + 1). */
static size_t finding_ids(const struct kms_restore_report *r, char (*ids)[FINDING_ID_LEN])
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_fixes; i++) {
        const struct kms_restore_fix *f = &r->fixes[i];
        char hex[2 * KMS_HSM_ID_LEN + 1];
        for (size_t j = 0; j < KMS_HSM_ID_LEN; j++)
            snprintf(hex + 2 * j, 3, "%02x", f->hsm_id[j]);
        snprintf(ids[n++], FINDING_ID_LEN, "fix %d %s v%u %s %s", (int)f->kind, f->key_id,
                 f->version, hex, f->token);
    }
    for (size_t i = 0; i < r->n_lines; i++)
        snprintf(ids[n++], FINDING_ID_LEN, "line %s", r->lines[i]);
    if (r->audit_behind > 0)
        snprintf(ids[n++], FINDING_ID_LEN, "audit log behind the store");
    return n;
}

/* Keep in ids (n of them) only those r also has; the count kept. */
static size_t keep_common(char (*ids)[FINDING_ID_LEN], size_t n,
                          const struct kms_restore_report *r, char (*now)[FINDING_ID_LEN])
{
    size_t m = finding_ids(r, now), kept = 0;
    for (size_t i = 0; i < n; i++) {
        bool both = false;
        for (size_t j = 0; j < m && !both; j++)
            both = strcmp(ids[i], now[j]) == 0;
        if (both && kept != i)
            memcpy(ids[kept], ids[i], FINDING_ID_LEN);
        kept += both;
    }
    return kept;
}

/* Scan; on a shared store with findings, scan again until none is left or
 * one has been in every scan. *out_confirmed: the findings of the last
 * scan (r) count. */
static kms_err scan_settled(struct kms_reconcile_ctx *c, struct kms_restore_report *r,
                            uint64_t *sizes, bool *out_confirmed)
{
    kms_err rc = scan(c, r, sizes);
    *out_confirmed = true;
    if (rc != KMS_OK || !kms_store_is_pg(kms_service_store(c->svc)) ||
        kms_restore_findings(r) == 0 || r->n_fixes > RESTORE_CONFIRM_MAX)
        return rc;
    size_t cap = RESTORE_CONFIRM_MAX + KMS_RESTORE_LINES_MAX + 1;
    char(*ids)[FINDING_ID_LEN] = calloc(cap, FINDING_ID_LEN);
    char(*now)[FINDING_ID_LEN] = calloc(cap, FINDING_ID_LEN);
    if (ids == NULL || now == NULL) {
        free(ids);
        free(now);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    size_t n = finding_ids(r, ids);
    for (int i = 1; i < RESTORE_SCANS_SHARED && n > 0; i++) {
        kms_log_info("restore", "shared store: %zu finding(s), scanning again in %d ms (other "
                     "nodes may be in the middle of changes)",
                     kms_restore_findings(r), RESTORE_RESCAN_MS);
        for (size_t j = 0; j < r->n_lines; j++)
            kms_log_info("restore", "finding, to be confirmed: %s", r->lines[j]);
        struct timespec ts = {RESTORE_RESCAN_MS / 1000, (RESTORE_RESCAN_MS % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        kms_restore_report_release(r);
        memset(r, 0, sizeof(*r));
        forget_listings(c);
        memset(sizes, 0, KMS_CONFIG_MAX_TOKENS * sizeof(*sizes));
        rc = scan(c, r, sizes);
        if (rc != KMS_OK || kms_restore_findings(r) == 0)
            break;
        if (r->n_fixes > RESTORE_CONFIRM_MAX) {
            n = 1;
            break;
        }
        n = keep_common(ids, n, r, now);
    }
    if (rc == KMS_OK && kms_restore_findings(r) > 0 && n == 0) {
        *out_confirmed = false;
        kms_log_info("restore", "shared store: no finding was in every scan: changes of other "
                     "nodes in flight, not a restore");
    }
    free(ids);
    free(now);
    return rc;
}

kms_err kms_restore_detect(struct kms_reconcile_ctx *c, bool *out_exit)
{
    struct kms_restore_report r = {0};
    uint64_t sizes[KMS_CONFIG_MAX_TOKENS] = {0};
    *out_exit = false;
    bool confirmed = true;
    kms_err rc = scan_settled(c, &r, sizes, &confirmed);
    size_t findings = confirmed ? kms_restore_findings(&r) : 0;
    /* Fixes for changes in flight must never be applied (--confirm). */
    if (!confirmed)
        r.n_fixes = 0;
    if (rc == KMS_OK)
        rc = announce_backup(c);
    if (rc == KMS_OK && c->mode == KMS_RESTORE_MODE_PLAN) {
        print_plan(c, &r, findings);
        *out_exit = true;
    } else if (rc == KMS_OK) {
        rc = count_encryptions(c, &r, sizes);
        if (rc == KMS_OK && c->mode == KMS_RESTORE_MODE_CONFIRM) {
            rc = confirm(c, &r, findings);
            *out_exit = rc == KMS_OK;
        } else if (rc == KMS_OK && findings > 0) {
            rc = enter_safe_mode(c, &r);
        }
    }
    kms_restore_report_release(&r);
    return rc;
}
