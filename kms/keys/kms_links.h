/*
 * kms_links.h - LinkService (proto/links.proto; docs/link-tokens.md):
 * short-lived, single-use link tokens for SMS fallback, keyed by a
 * LINK_TOKEN_HMAC key (spec KMS_KEY_SPEC_HMAC_256, usage LINK_TOKEN): one
 * HMAC-SHA256 key per version in the region's HSM.
 *
 * MintLinkToken binds (tenant, key, version, token id, expiry, purpose,
 * canonical phone, SHA-256 of the device value, message reference) with a
 * MAC computed in the HSM (kms_linktoken.h has the bytes) and records the
 * token's row (kms_store_links.h). RedeemLinkToken recomputes the MAC in
 * the HSM over what the broker presents and lets the store decide, in one
 * transaction, whether this is the one accepted use. Every refusal of a
 * token answers the same (permission_denied "link token not accepted");
 * the audit event's detail names the token id and the true reason.
 *
 * Thread-safety: as every handler.
 */
#ifndef KMS_LINKS_H
#define KMS_LINKS_H

#include <stddef.h>
#include <stdint.h>

#include "kms_call.h"
#include "kms_error.h"

/* The one answer every refused redemption gets. */
#define KMS_LINKS_REFUSED "link token not accepted"
#define KMS_LINKS_DEVICE_MAX 1024
#define KMS_LINKS_PHONE_INPUT_MAX 64
#define KMS_LINKS_REVOKE_IDS_MAX 100
/* Expired rows the sweeper deletes per round. */
#define KMS_LINKS_SWEEP_BATCH 1000

kms_err kms_rpc_mint_link_token(struct kms_call *call, const ProtobufCMessage *msg,
                                struct kms_reply *reply);
kms_err kms_rpc_redeem_link_token(struct kms_call *call, const ProtobufCMessage *msg,
                                  struct kms_reply *reply);
kms_err kms_rpc_revoke_link_tokens(struct kms_call *call, const ProtobufCMessage *msg,
                                   struct kms_reply *reply);

/* The clock link tokens read: time(NULL), plus, in dev mode only, the
 * seconds written in link_tokens.test_clock_file (docs/link-tokens.md). */
int64_t kms_links_now(struct kms_service *svc);

/* The sweeper's part: delete rows that expired more than
 * link_tokens.keep_expired_s before now. */
kms_err kms_links_sweep(struct kms_service *svc, int64_t now, size_t *out_n);

#endif
