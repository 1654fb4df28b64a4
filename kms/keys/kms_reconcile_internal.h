/*
 * kms_reconcile_internal.h - shared by kms_reconcile.c (reconcile) and
 * kms_restore_detect.c (restore detection at start); not an interface.
 */
#ifndef KMS_RECONCILE_INTERNAL_H
#define KMS_RECONCILE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kms_config.h"
#include "kms_reconcile.h"
#include "p11_key.h"

/* One start-up run (kms_reconcile_start). */
struct kms_reconcile_ctx {
    struct kms_service *svc;
    enum kms_restore_mode mode;
    FILE *out; /* where a plan goes */
    /* Each token's key objects as the restore check listed them, by token
     * index, for reconcile to reuse (one walk of a large token, not two). */
    struct p11_key_id *listed[KMS_CONFIG_MAX_TOKENS];
    size_t n_listed[KMS_CONFIG_MAX_TOKENS];
    bool have_listed[KMS_CONFIG_MAX_TOKENS];
};

/* A service event (principal kmsd, role operator) in the audit log of tok's
 * region: durable before kmsd goes on. Audit off or region not served:
 * KMS_OK, the operational log is all there is. */
kms_err kms_reconcile_event(struct kms_service *svc, struct p11_token *tok, const char *op,
                            const char *key_id, uint32_t version, const char *detail);

/* Restore detection; see kms_reconcile_start. *out_exit: the plan was
 * printed or applied, stop. */
kms_err kms_restore_detect(struct kms_reconcile_ctx *c, bool *out_exit);

#endif
