/*
 * kms_restore.h - knowing when the store (or a token) went back in time.
 *
 * A restored backup is older than what tenants were told. kmsd compares
 * three witnesses at start, before anything is destroyed:
 *   - the audit log: every acknowledged key event since the store's
 *     watermark (kms_store_epoch.h) must be reflected in the store (the
 *     version exists, the key's state is what the last event left);
 *   - the tokens: every HSM key object labelled custos:key: must be known
 *     to the store (else the store is older than the token), and every
 *     live version the store names must have its object (else the token is
 *     older than the store).
 * Any finding puts kmsd in SAFE MODE (kms_service.h): nothing is created,
 * rotated, deleted, swept or destroyed; decrypt and read paths serve. An
 * operator reads the plan (kmsd --reconcile) and applies it with
 * kmsd --reconcile --confirm, which is audited.
 */
#ifndef KMS_RESTORE_H
#define KMS_RESTORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kms_error.h"
#include "kms_store.h"
#include "p11_key.h"

struct audit_log;
struct p11_token;

/* Findings beyond these are counted but not kept. */
#define KMS_RESTORE_LINES_MAX 64
#define KMS_RESTORE_FIXES_MAX 4096
/* State events remembered per scan (explicit bound on the scan's memory):
 * a scan that sees more stops and reports it, which is itself a finding. */
#define KMS_RESTORE_TRACK_MAX 200000

enum kms_restore_fix_kind {
    KMS_FIX_STATE = 1, /* set the key's state to the audit log's (`state`) */
    KMS_FIX_REATTACH,  /* insert version `version` (hsm_id) of a known key */
    KMS_FIX_UNKNOWN,   /* an object no row names: keep it, confirm, raise the
                          key's version floor when the key is known */
    KMS_FIX_FLOOR,     /* the audit log acknowledged version `version` of a
                          known key that neither the store nor the token has:
                          raise the key's last_version so it is not reissued */
    KMS_FIX_LOST,      /* a live version whose object no token has: accept it
                          as lost (only when no newer token backup exists) */
    KMS_FIX_REATTACH_KEY, /* version 1 of a key the store lacks but the audit
                             log saw created: insert the key (tenant, region,
                             origin from its CreateKey event; spec from the
                             object), in `state`: ENABLED, or DISABLED when
                             the log's last state event for it disabled it or
                             scheduled its deletion */
};

struct kms_restore_fix {
    enum kms_restore_fix_kind kind;
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    enum kms_key_state state;
    uint8_t hsm_id[KMS_HSM_ID_LEN];
    char token[KMS_TOKEN_LABEL_MAX + 1];
    /* KMS_FIX_REATTACH_KEY: from the key's CreateKey event */
    char tenant[KMS_TENANT_MAX + 1];
    char region[KMS_REGION_MAX + 1];
    enum kms_key_origin origin;
    int64_t created_at; /* REATTACH(_KEY): the creating event's time, 0 unknown */
    uint64_t encryptions; /* REATTACH(_KEY): encrypting events the log has for it */
};

/* A CreateKey the audit log acknowledged for a key the store lacks, and the
 * state its last acknowledged state event left it in (ENABLED when none). */
struct kms_restore_birth {
    char key_id[KMS_KEY_ID_SIZE];
    char tenant[KMS_TENANT_MAX + 1];
    char region[KMS_REGION_MAX + 1];
    char token[KMS_TOKEN_LABEL_MAX + 1];
    enum kms_key_origin origin;
    int64_t created_at;
    enum kms_key_state state;
};

/* A version-making event (CreateKey, RotateKey, ImportKeyMaterial) for a
 * version the store lacks: when it was made. */
struct kms_restore_vtime {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    int64_t created_at;
};

/* Encrypting events of one key version after the store's audit watermark:
 * `since_mark` all of them, `since_count` those after the encryption-count
 * watermark too (not yet added to the store's count). */
struct kms_restore_enc {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
    uint64_t since_mark;
    uint64_t since_count;
};

struct kms_restore_report {
    size_t store_behind; /* acknowledged changes the store lacks */
    size_t token_behind; /* live versions without their HSM object */
    size_t unknown;      /* HSM objects the store does not know */
    size_t audit_behind; /* regions whose audit log is older than the store */
    char lines[KMS_RESTORE_LINES_MAX][200];
    size_t n_lines;
    struct kms_restore_fix *fixes;
    size_t n_fixes;
    size_t fixes_dropped;
    struct kms_restore_birth *births;
    size_t n_births;
    struct kms_restore_vtime *vtimes;
    size_t n_vtimes;
    /* Open-addressed table (cap slots, a power of two; key_id "" = free). */
    struct kms_restore_enc *enc;
    size_t n_enc, cap_enc;
};

/* Encryptions an audit event spends under (key_id, key_version): 1 for
 * Encrypt, GenerateDataKey, ReEncrypt; for EncryptFields the per-request
 * maximum (the event does not record how many fields), so the count is
 * never below the encryptions made; 0 for any other event. */
uint64_t kms_restore_event_encryptions(const char *operation);

/* The tally of (key_id, version), or NULL. */
const struct kms_restore_enc *kms_restore_enc_find(const struct kms_restore_report *r,
                                                   const char *key_id, uint32_t version);

/* Free the report's fix list (the struct itself is the caller's). */
void kms_restore_report_release(struct kms_restore_report *r);

size_t kms_restore_findings(const struct kms_restore_report *r);

/* Scan region's audit log from the store's watermark to its end;
 * *out_size receives the log size scanned to. Encrypting events are
 * tallied per key version (r->enc); those at or after enc_from are the
 * ones not yet added to the store's counts. */
kms_err kms_restore_audit_scan(struct kms_store *store, struct audit_log *log,
                               struct kms_restore_report *r, uint64_t enc_from,
                               uint64_t *out_size);

/* Compare the token's key objects with the store. CREATING versions are
 * reconcile's business and ignored here. out_ids (may be NULL) receives the
 * sorted CKA_IDs of the token's key objects for reconcile to reuse (one walk
 * of a large token instead of two); the caller frees them. */
kms_err kms_restore_token_scan(struct kms_store *store, struct p11_token *tok,
                               struct kms_restore_report *r, struct p11_key_id **out_ids,
                               size_t *out_n);

/* A live version whose object its token does not hold. */
struct kms_restore_missing {
    char key_id[KMS_KEY_ID_SIZE];
    uint32_t version;
};

/* The live versions the store names for tok whose object the token does not
 * hold, while kmsd runs (CREATING versions and versions accepted as lost are
 * left out). Costs one walk of the token's key objects (C_FindObjects) and
 * three store reads. The first `max` are copied to out; *out_n counts all. */
kms_err kms_restore_token_missing(struct kms_store *store, struct p11_token *tok,
                                  struct kms_restore_missing *out, size_t max, size_t *out_n);

/* Print the report as a plan, one line per finding and per fix. */
void kms_restore_print(const struct kms_restore_report *r, FILE *f);

/* True for the RPC methods that change keys or recoveries, or encrypt
 * under a key whose state may be stale: refused in safe mode. */
bool kms_restore_refused_op(const char *method);

#endif
