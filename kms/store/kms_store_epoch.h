/*
 * kms_store_epoch.h - what the store remembers about its own place in time,
 * for telling a restored (older) store from the live one.
 *
 *   - a per-region watermark: the audit log size up to which every
 *     acknowledged key event is known to be reflected in this store (a key
 *     operation commits here before its audit event is written, so a size
 *     read from a running log is always safe to record);
 *   - HSM objects an operator confirmed as unknown to the store
 *     (kmsd --reconcile --confirm), so they stop holding kmsd in safe mode;
 *   - raw state lookups (CREATING included) and a version-number floor, so
 *     that a number the token already uses is never handed out again.
 *
 * Everything lives in the `meta` table and existing columns: no schema
 * change. Thread-safety as the rest of the store.
 */
#ifndef KMS_STORE_EPOCH_H
#define KMS_STORE_EPOCH_H

#include <stdbool.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_store.h"

/* Longest meta name and value this module reads or writes. */
#define KMS_STORE_META_MAX 128

/* The audit watermark of region: *out_found false (and *out 0) when this
 * store never recorded one (a store older than this feature, or new). */
kms_err kms_store_audit_mark_get(struct kms_store *store, const char *region, uint64_t *out,
                                 bool *out_found);

/* Record the watermark; never moves it backwards... */
kms_err kms_store_audit_mark_set(struct kms_store *store, const char *region, uint64_t size);
/* ...except when an operator confirmed that the audit log in place is the
 * one to go on with (it was restored older than the store). */
kms_err kms_store_audit_mark_reset(struct kms_store *store, const char *region, uint64_t size);

/* A key row in any state, CREATING included. */
struct kms_store_key_raw {
    enum kms_key_state state;
    enum kms_key_spec spec;
    enum kms_key_origin origin;
    uint32_t last_version;
    uint32_t current_version;
    bool escrow_required;
};

/* *out_found false when there is no row. */
kms_err kms_store_key_state_any(struct kms_store *store, const char *key_id,
                                struct kms_store_key_raw *out, bool *out_found);

/* Restore reconcile, confirmed by an operator, one commit each:
 *   - kms_store_key_force_state: set a key (not CREATING) to `state` as the
 *     audit log last acknowledged it; from DESTROYED to ENABLED/DISABLED
 *     the key's DESTROYED versions whose HSM object is in `present` (the
 *     token scan's listing) become ACTIVE again (a recovery the store
 *     missed); the others stay DESTROYED. deletion_at is kept for
 *     PENDING_DELETION, else 0.
 *   - kms_store_version_reattach: an HSM object labelled as version
 *     `version` of a known key, that the store lacks: inserted ACTIVE,
 *     created at `created_at` (its creating event's time, so that its
 *     rotation period does not restart), last_version and current_version
 *     raised to cover it.
 * FAILED_PRECONDITION when the key is absent or CREATING. */
kms_err kms_store_key_force_state(struct kms_store *store, const char *key_id,
                                  enum kms_key_state state, const struct kms_hsm_id *present,
                                  size_t n_present);
kms_err kms_store_version_reattach(struct kms_store *store, const char *key_id, uint32_t version,
                                   const uint8_t hsm_id[KMS_HSM_ID_LEN], int64_t created_at);

/* GCM encryption counts rebuilt from the audit log (docs/state.md):
 *   - the encryption-count watermark of a region: the audit log size up to
 *     which encrypting events were already added to the store's counts (0
 *     when never recorded);
 *   - kms_store_usage_bound: add n to a version's count (add) or raise it to
 *     at least n (!add); a missing version is KMS_OK (nothing to bound). */
kms_err kms_store_enc_mark_get(struct kms_store *store, const char *region, uint64_t *out);
kms_err kms_store_enc_mark_set(struct kms_store *store, const char *region, uint64_t size);
kms_err kms_store_usage_bound(struct kms_store *store, const char *key_id, uint32_t version,
                              uint64_t n, bool add);

/* State of a version row in any state. *out_found false when there is none. */
kms_err kms_store_version_state_any(struct kms_store *store, const char *key_id,
                                    uint32_t version, enum kms_version_state *out_state,
                                    bool *out_found);

/* True when hsm_id names any version row (any state) of any key. */
kms_err kms_store_hsm_id_known(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                               bool *out_known);

/* Raise the key's last_version to at least `version` (never lowers it), so
 * the next rotation takes a number above one an HSM object already uses. */
kms_err kms_store_key_version_floor(struct kms_store *store, const char *key_id,
                                    uint32_t version);

/* The key and version a hsm_id names (any state); *out_found false if none. */
kms_err kms_store_version_by_hsm_id(struct kms_store *store,
                                    const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                    char out_key_id[KMS_KEY_ID_SIZE], uint32_t *out_version,
                                    bool *out_found);

/* A live version whose HSM object an operator confirmed as lost (no newer
 * token backup holds it): the restore check stops counting it. */
kms_err kms_store_lost_confirm(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                               int64_t now);
kms_err kms_store_lost_confirmed(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                 bool *out_confirmed);

/* An HSM object (by CKA_ID) an operator confirmed as unknown to this store. */
kms_err kms_store_unknown_confirm(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                  int64_t now);
kms_err kms_store_unknown_confirmed(struct kms_store *store,
                                    const uint8_t hsm_id[KMS_HSM_ID_LEN], bool *out_confirmed);

/* ---- backups ---------------------------------------------------------------
 *
 * kms_store_snapshot: a consistent copy of the live store at src (another
 * process, kmsd, may be writing it) into dst, which must not exist: one
 * read transaction (VACUUM INTO), so the copy is one instant of the store,
 * never a torn one; WAL contents included. The copy gets a fresh store_id
 * and remembers the original's (backup_of) and when it was taken
 * (backup_at), so a restored store can always be told from the original.
 * out_store_id / out_backup_of: 33 bytes each (may be NULL).
 */
kms_err kms_store_snapshot(const char *src, const char *dst, int64_t now, char *out_store_id,
                           char *out_backup_of);

/* When this store is a restored backup that kmsd has not yet announced:
 * *out_pending true with what it is a backup of and when it was taken.
 * kms_store_backup_announced marks it announced (once, after the audit
 * event is durable). */
kms_err kms_store_backup_pending(struct kms_store *store, bool *out_pending,
                                 char out_backup_of[KMS_STORE_META_MAX],
                                 char out_backup_at[KMS_STORE_META_MAX]);
kms_err kms_store_backup_announced(struct kms_store *store, int64_t now);

#endif
