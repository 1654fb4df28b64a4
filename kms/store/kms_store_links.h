/*
 * kms_store_links.h - link tokens in the store (docs/link-tokens.md): one
 * row per minted token, the per-recipient redemption counters, and the
 * sweep of expired rows. In kms_store_links.c.
 *
 * Nothing personal is stored: a recipient is a 16-byte blind index (an HMAC
 * the caller made in the HSM), a token only as its SHA-256, the device
 * value not at all. The single use of a token is a compare-and-set on its
 * row's state inside one store transaction (store_tx_run), so that of any
 * number of concurrent redemptions -- on one kmsd or on several sharing a
 * database -- exactly one succeeds; no in-process lock is part of that
 * guarantee.
 *
 * Thread-safety and errors as kms_store.h.
 */
#ifndef KMS_STORE_LINKS_H
#define KMS_STORE_LINKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_store.h"

#define KMS_LINK_ID_LEN 12
#define KMS_LINK_RECIPIENT_LEN 16
#define KMS_LINK_HASH_LEN 32
#define KMS_LINK_PURPOSE_MAX 64
#define KMS_LINK_REF_MAX 128

/* Numeric values are stored: never renumber. */
enum kms_link_state {
    KMS_LINK_LIVE = 0,
    KMS_LINK_USED = 1,
    KMS_LINK_REVOKED = 2,
    KMS_LINK_VOID = 3, /* its attempts are exhausted */
};

struct kms_link_record {
    char key_id[KMS_KEY_ID_SIZE];
    uint8_t token_id[KMS_LINK_ID_LEN];
    uint32_t version;
    char region[KMS_REGION_MAX + 1];
    char tenant[KMS_TENANT_MAX + 1];
    int64_t expires_at;
    int64_t created_at;
    enum kms_link_state state;
    uint32_t attempts;
    uint32_t max_attempts;
    uint8_t recipient[KMS_LINK_RECIPIENT_LEN];
    uint8_t token_hash[KMS_LINK_HASH_LEN];
    char purpose[KMS_LINK_PURPOSE_MAX + 1];
    char message_ref[KMS_LINK_REF_MAX + 1];
};

/* A new live row (state, attempts ignored). KMS_ERR_ALREADY_EXISTS for a
 * duplicate (key_id, token_id). */
kms_err kms_store_link_insert(struct kms_store *store, const struct kms_link_record *r);

/* Why a redemption was refused (or not). Names are for the audit log:
 * kms_link_verdict_name. */
enum kms_link_verdict {
    KMS_LINK_ACCEPTED = 0,
    KMS_LINK_RATE_LIMITED, /* the recipient had too many attempts this window */
    KMS_LINK_UNKNOWN,      /* no such token for this key (or swept) */
    KMS_LINK_ALREADY_USED,
    KMS_LINK_WAS_REVOKED,
    KMS_LINK_EXHAUSTED, /* void: its attempts were used up before */
    KMS_LINK_FORGED,    /* the token's bytes are not the ones minted */
    KMS_LINK_EXPIRED,
    KMS_LINK_WRONG_RECIPIENT,
    KMS_LINK_WRONG_PURPOSE,
    KMS_LINK_WRONG_DEVICE, /* the MAC over the presented binding differs */
};
const char *kms_link_verdict_name(enum kms_link_verdict v);

/* One redemption attempt. The caller has parsed the token and computed, in
 * the HSM, the presented recipient's index and whether the MAC over the
 * presented binding equals the token's (mac_ok). In one write transaction:
 * the recipient's counter is advanced (refused past rate_limit attempts per
 * rate_window_s seconds); the token's row is found; every attempt on a live
 * row counts, and the row becomes USED on success, or VOID when a failure
 * reaches its max_attempts. out_verdict says which; out_row (may be NULL)
 * gets the row as it was found (zeroed if none). A refusal is KMS_OK with
 * its verdict: the counters it advanced are committed. */
struct kms_link_attempt {
    const char *key_id;
    const uint8_t *token_id;
    uint32_t version;   /* from the token */
    int64_t expires_at; /* from the token */
    const uint8_t *token_hash;
    const uint8_t *recipient;
    const char *purpose;
    bool mac_ok;
    int64_t now;
    uint32_t skew_s;
    uint32_t rate_limit;
    uint32_t rate_window_s;
};
kms_err kms_store_link_redeem(struct kms_store *store, const struct kms_link_attempt *a,
                              enum kms_link_verdict *out_verdict, struct kms_link_record *out_row);

/* Revoke live tokens of key_id: the n ids, or (ids NULL) every token of
 * message_ref. *out_revoked gets how many changed. One transaction. */
kms_err kms_store_link_revoke(struct kms_store *store, const char *key_id,
                              const uint8_t (*ids)[KMS_LINK_ID_LEN], size_t n,
                              const char *message_ref, uint32_t *out_revoked);

/* Delete at most max token rows that expired before `before`, and
 * recipient counters whose window started before it. *out_n (may be NULL)
 * gets the token rows deleted. */
kms_err kms_store_link_sweep(struct kms_store *store, int64_t before, size_t max, size_t *out_n);

/* The row of a token, for tests and kmsctl's offline readers; *out_found
 * false when there is none. */
kms_err kms_store_link_get(struct kms_store *store, const char *key_id,
                           const uint8_t token_id[KMS_LINK_ID_LEN], struct kms_link_record *out,
                           bool *out_found);

#endif
