/*
 * kms_service.h - the running service: configuration, HSM tokens by region,
 * the metadata store, the current policy document, and the background
 * deletion sweeper. One per kmsd process.
 *
 * Thread-safety: everything here may be called from any HTTP worker thread.
 * The policy document is swapped atomically under a mutex on reload; each
 * request takes its own reference (kms_service_policy) and keeps it until
 * the request ends, so a reload never changes a decision mid-request.
 */
#ifndef KMS_SERVICE_H
#define KMS_SERVICE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kms_config.h"
#include "kms_error.h"
#include "kms_store.h"
#include "p11_token.h"
#include "pol_doc.h"

struct kms_service;

/* Load the module, open and log in to every token, open the store, load the
 * policy, reconcile the store with the tokens (removing half-created keys
 * and orphan HSM objects), and start the sweeper. cfg must outlive the
 * service. */
kms_err kms_service_start(const struct kms_config *cfg, struct kms_service **out);

/* Stop the sweeper, close tokens, store and module. NULL is a no-op. */
void kms_service_free(struct kms_service *svc);

/* Re-read the policy file. A bad document is refused (error returned and
 * logged) and the current one stays. */
kms_err kms_service_reload_policy(struct kms_service *svc);

/* A new reference to the current policy; the caller pol_doc_unref()s it. */
struct pol_doc *kms_service_policy(struct kms_service *svc);

/* The token serving region on this node, or NULL. */
struct p11_token *kms_service_token(struct kms_service *svc, const char *region);

struct kms_store *kms_service_store(struct kms_service *svc);

/* The in-memory cache of key records in front of the store. Code that
 * changes a key's record must invalidate it there. */
struct kms_keycache;
struct kms_keycache *kms_service_keycache(struct kms_service *svc);
/* GCM encryption counts per key version (kms_usage.h). */
struct kms_usage *kms_service_usage(struct kms_service *svc);
const struct kms_config *kms_service_config(const struct kms_service *svc);

/* One pass of the deletion sweeper (the background thread calls it every
 * sweep_interval_s): destroys keys whose waiting period is over. Returns the
 * number of keys destroyed in *out_n. */
kms_err kms_service_sweep(struct kms_service *svc, int64_t now, size_t *out_n);

/* The audit log of a region served here, or NULL (audit off, or not
 * served). kms_service_audit_default() is the log for events that name no
 * served region (e.g. a request whose credentials were refused): the first
 * configured region's. */
struct audit_log;
struct audit_log *kms_service_audit_log(struct kms_service *svc, const char *region);
struct audit_log *kms_service_audit_default(struct kms_service *svc);

/* KMS_ERR_HSM_UNAVAILABLE when region is served here but its audit log could
 * not be opened at start (damage inside signed history, a missing audit
 * key): such a region serves nothing until an operator intervenes. */
kms_err kms_service_region_check(struct kms_service *svc, const char *region);

/* The escrow key of a region served here, found at start; false if the
 * region has none (kmsctl hsm init-region was not run). */
struct p11_key_id;
bool kms_service_escrow_key(struct kms_service *svc, const char *region, struct p11_key_id *out);

/* The deep readiness check (/readyz): every configured token answers and
 * has a logged-in session, every region's audit log is open and writable,
 * the store answers a query. The first failure is returned with a detail
 * for the operational log (never sent to clients). May block for as long as
 * one HSM call and one store query take. */
kms_err kms_service_check(struct kms_service *svc);

/* Write the gauges of live state in Prometheus text format: token
 * availability and session pool use, per region and token. */
void kms_service_metrics(struct kms_service *svc, FILE *f);

/* Restore detection (kms_restore.h). kmsd --reconcile sets PLAN (print
 * what would be reattached, rebuilt, kept, then stop) or CONFIRM (apply it,
 * audited, then stop) before kms_service_start, which then returns without
 * serving: the caller frees the service and exits. out: where the plan goes
 * (NULL: stdout). */
enum kms_restore_mode {
    KMS_RESTORE_MODE_SERVE = 0,
    KMS_RESTORE_MODE_PLAN,
    KMS_RESTORE_MODE_CONFIRM,
};
void kms_service_set_restore_mode(enum kms_restore_mode mode, FILE *out);

/* Check every answering token for live versions (per the store) whose
 * object it does not hold: one walk of the token's key objects each. Logs
 * each change (naming the keys, at most 20 per region) and keeps the count
 * for readiness. Run by the sweeper thread every sweep interval, and early
 * (at most every 5 s) after a key lookup found no object. */
void kms_service_check_objects(struct kms_service *svc);

/* The count of region's live versions without object, as of the last
 * kms_service_check_objects; 0 for an unknown region. */
size_t kms_service_missing_objects(struct kms_service *svc, const char *region);

/* True when kmsd started in SAFE MODE: its store is older than the audit
 * log or the tokens. Then no key is created, rotated, changed, swept or
 * destroyed; decrypt and read paths serve. *out_reason (may be NULL): why,
 * for /readyz and the log (no secrets). */
bool kms_service_safe_mode(const struct kms_service *svc, const char **out_reason);

/* Label prefix of every HSM object the service creates; reconcile treats
 * objects with this prefix that the store does not know as orphans. */
#define KMS_HSM_LABEL_PREFIX "custos:key:"

#endif
