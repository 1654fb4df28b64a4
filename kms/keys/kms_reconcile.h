/*
 * kms_reconcile.h - what kmsd does at start, after the registry is up and
 * before it serves: restore detection (is the store older than the audit
 * logs or the tokens? then SAFE MODE), and reconcile (half-created
 * versions finished or discarded, crash leftovers and orphan HSM objects
 * dealt with, interrupted import tokens cleaned). kmsd_main calls
 * kms_reconcile_start after kms_service_start and before the sweeper
 * (kms_sweeper.h) and the HTTP front start; nothing else runs meanwhile.
 *
 * docs/state.md and docs/operations.md ("Backup and restore") describe
 * what an operator sees.
 */
#ifndef KMS_RECONCILE_H
#define KMS_RECONCILE_H

#include <stdbool.h>
#include <stdio.h>

#include "kms_error.h"
#include "kms_service.h"

/* kmsd --reconcile: PLAN prints what would be reattached, rebuilt, kept,
 * then stops; CONFIRM applies it, audited, then stops. SERVE is a normal
 * start. */
enum kms_restore_mode {
    KMS_RESTORE_MODE_SERVE = 0,
    KMS_RESTORE_MODE_PLAN,
    KMS_RESTORE_MODE_CONFIRM,
};

/* Compare the store with the audit logs and the tokens before anything is
 * destroyed; enter safe mode when they disagree (kms_service_set_safe_mode),
 * or print (PLAN) or apply (CONFIRM) the plan to out (NULL: stdout) and set
 * *out_exit: the caller then frees the service and exits without serving.
 * Otherwise reconcile, then record the audit watermarks (not in safe
 * mode). */
kms_err kms_reconcile_start(struct kms_service *svc, enum kms_restore_mode mode, FILE *out,
                            bool *out_exit);

/* Record, for every region, that the store reflects its audit log up to
 * now (the restore watermark and the encryption-count watermark). At start
 * after reconcile, and before each deletion sweep. */
void kms_reconcile_mark_audit(struct kms_service *svc);

#endif
