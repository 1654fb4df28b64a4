/*
 * kms_rotate.h - making a new version of a key, one at a time per key.
 *
 * Every path that adds a version to an HSM-origin key (RotateKey, the
 * sweeper's periodic rotation, the usage counter's rotation before the GCM
 * invocation limit) holds the key's rotation lock from allocating the
 * version number until the reply's snapshot is read. So two rotations of
 * one key never interleave: each caller is told the version it made, and
 * no caller sees a version list with a CREATING hole in it. The lock is
 * per process; see docs/state.md for a fleet.
 */
#ifndef KMS_ROTATE_H
#define KMS_ROTATE_H

#include <stdbool.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_service.h"
#include "kms_store.h"

struct p11_token;

/* The longest rotation period a key may carry: 10 years. */
#define KMS_ROTATION_PERIOD_MAX (10ULL * 365 * 86400)

/* The key's rotation lock (striped by key id; never held across two keys).
 * Also held by ExecuteRecovery from its checks to its commit, and by the
 * sweeper from marking a key DESTROYED to destroying its objects, so a
 * RESTORE never interleaves with another RESTORE or with the destruction. */
void kms_rotate_lock(const char *key_id);
void kms_rotate_unlock(const char *key_id);

/*
 * The key's lease across the nodes of a shared (PostgreSQL) store: the
 * rotation lock is per process, so the paths that touch a key's HSM
 * objects outside a request's own compare-and-set (a RESTORE, the
 * sweeper's destroys after the mark, reconcile's destroy of a DESTROYED
 * key's leftover, an automatic rotation) also take the store lease
 * "key:<key_id>" (kms_store_lease_take), under the rotation lock, and give
 * it back before unlocking. *out_won false: another node has it now; the
 * caller does nothing to the key (docs/state.md "Several nodes"). On
 * SQLite (one process) always won, nothing written. A node that dies
 * holding it delays those paths for that key by KMS_KEY_LEASE_S at most.
 */
#define KMS_KEY_LEASE_S 120
kms_err kms_key_lease_take(struct kms_service *svc, const char *key_id, bool *out_won);
void kms_key_lease_give(struct kms_service *svc, const char *key_id);

/* This process's name as a lease holder: host, pid, a random tag. */
const char *kms_lease_holder(void);

/* Make the HSM object(s) of a version whose CREATING row exists, escrow them
 * when asked, and activate the row; on failure destroy what was made and
 * discard the row, so nothing is left behind. request_id names the request
 * in the operational log. */
kms_err kms_version_make(struct kms_service *svc, const char *request_id, struct p11_token *tok,
                         const char *key_id, uint32_t version, const uint8_t hsm_id[16],
                         enum kms_key_spec spec, bool escrow);

/* Allocate the next version of k and make it (kms_version_make). The
 * caller holds k's rotation lock and has checked that k may rotate. */
kms_err kms_version_add_make(struct kms_service *svc, const char *request_id,
                             struct p11_token *tok, const struct kms_key_record *k, bool escrow,
                             uint32_t *out_version);

/*
 * A rotation the system makes on its own (docs/operations.md): audited as
 * RotateKey by principal "custos:system", role "system", with `reason` as
 * its detail. Only when the key is still ENABLED, of origin HSM, and its
 * current version is still from_version (0: whatever it is) — otherwise
 * KMS_ERR_FAILED_PRECONDITION and nothing happens (someone rotated first,
 * or the key changed state). *out_version (may be NULL) gets the version
 * made.
 */
kms_err kms_rotate_system(struct kms_service *svc, const char *key_id, uint32_t from_version,
                          const char *reason, uint32_t *out_version);

/* The sweeper's part (docs/operations.md): rotate the keys whose rotation
 * period has elapsed, and those whose current version's encryption count
 * reached rotation.usage_rotate_at (a backstop for the inline rotation).
 * *out_n gets how many were rotated. Failures are logged per key. */
kms_err kms_rotate_sweep(struct kms_service *svc, int64_t now, size_t *out_n);

#endif
