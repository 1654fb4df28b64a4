/*
 * kms_sweeper.h - the background sweeper: keys destroyed at the end of
 * their deletion waiting period, expired BYOK import tokens cleaned,
 * automatic rotations (period elapsed, usage threshold reached), and the
 * check that every live key version still has its object in its token
 * (readiness reads the count: kms_service_missing_objects).
 *
 * kmsd_main starts it after kms_reconcile_start and stops it before
 * kms_service_free. In safe mode (kms_service_safe_mode) the thread still
 * runs and checks objects but destroys, cleans and rotates nothing.
 */
#ifndef KMS_SWEEPER_H
#define KMS_SWEEPER_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_service.h"

struct kms_sweeper;

/* Start the thread: one round every sweep_interval_s (configuration), and
 * an early object check (at most every 5 s) after a request's key lookup
 * found no object. */
kms_err kms_sweeper_start(struct kms_service *svc, struct kms_sweeper **out);

/* Stop the thread and wait for it. NULL is a no-op. */
void kms_sweeper_stop(struct kms_sweeper *sw);

/* One round of the thread's work at time now: the deletion sweep, then
 * (not in safe mode) expired import tokens and automatic rotations. Each
 * step's failure is logged and the next step still runs. */
void kms_sweeper_round(struct kms_service *svc, int64_t now);

/* The deletion sweep: destroy the keys whose waiting period is over at
 * now (store first, then their HSM objects). *out_n: keys destroyed.
 * Nothing in safe mode. */
kms_err kms_sweeper_delete_due(struct kms_service *svc, int64_t now, size_t *out_n);

/* Check every answering token for live versions (per the store) whose
 * object it does not hold: one walk of the token's key objects each. Logs
 * each change (naming the keys, at most 20 per region) and records the
 * count for readiness (kms_service_set_missing_objects). */
void kms_sweeper_check_objects(struct kms_service *svc);

#endif
