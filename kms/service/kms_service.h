/*
 * kms_service.h - the registry of the running service: configuration, HSM
 * tokens by region, the metadata store, the key cache, the GCM usage
 * counts, the current policy document, the audit logs, the escrow keys, and
 * the state the key layer records here (safe mode, missing objects). One
 * per kmsd process.
 *
 * It starts nothing of the key layer: kmsd_main runs restore detection and
 * reconcile (kms_reconcile.h) after kms_service_start, then starts the
 * background sweeper (kms_sweeper.h), and stops it before kms_service_free.
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

/* Load the policy and the module, open and log in to every token, open the
 * store, the key cache and the usage counts, warm each token's handle
 * cache, find each region's escrow key, open the audit logs. No key, version
 * or HSM object is changed here (that is kms_reconcile_start's, after it).
 * cfg must outlive the service. */
kms_err kms_service_start(const struct kms_config *cfg, struct kms_service **out);

/* Close audit logs, usage counts, store, tokens and module (the sweeper must
 * be stopped first). NULL is a no-op. */
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
/* GCM encryption counts per key version (kms_usage_count.h). */
struct kms_usage *kms_service_usage(struct kms_service *svc);
const struct kms_config *kms_service_config(const struct kms_service *svc);

/* The served tokens in configuration order: i < kms_service_n_tokens. */
size_t kms_service_n_tokens(const struct kms_service *svc);
struct p11_token *kms_service_token_at(struct kms_service *svc, size_t i);

/* The served token with this label, or NULL. */
struct p11_token *kms_service_token_by_label(struct kms_service *svc, const char *label);

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

/* The count of region's live versions without object, as of the last
 * object check (kms_sweeper_check_objects); 0 for an unknown region.
 * The setter records a new count and returns the one it replaces. */
size_t kms_service_missing_objects(struct kms_service *svc, const char *region);
size_t kms_service_set_missing_objects(struct kms_service *svc, const char *region, size_t n);

/* True when kmsd started in SAFE MODE: its store is older than the audit
 * log or the tokens. Then no key is created, rotated, changed, swept or
 * destroyed; decrypt and read paths serve. *out_reason (may be NULL): why,
 * for /readyz and the log (no secrets). */
bool kms_service_safe_mode(const struct kms_service *svc, const char **out_reason);

/* Enter safe mode with the reason given (copied, cut at 399 bytes). Only
 * at start, before any request or the sweeper runs (kms_reconcile_start):
 * the flag is read without a lock afterwards. */
void kms_service_set_safe_mode(struct kms_service *svc, const char *reason);

/* The audit logs' encrypting events are now in the store's counts (restore
 * detection added them at start): kms_service_free may then move each
 * region's encryption-count watermark to its log's size. */
void kms_service_set_enc_counted(struct kms_service *svc);

/* Label prefix of every HSM object the service creates; reconcile treats
 * objects with this prefix that the store does not know as orphans. */
#define KMS_HSM_LABEL_PREFIX "custos:key:"

#endif
