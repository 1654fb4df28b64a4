/*
 * xks_replay.h - the signatures of XKS Decrypt requests already served, so
 * that a captured request cannot be sent again to get its plaintext.
 *
 * SigV4 has no nonce: a signed request stays valid while its x-amz-date is
 * within 5 minutes of kmsd's clock (xks_sigv4.h), and whoever holds its
 * bytes (a TLS-terminating middlebox's log, a leaked capture) could replay
 * it in that window. Of the four XKS operations only Decrypt gives a
 * replayer something the request did not already hold (the plaintext):
 * Encrypt's request carries its plaintext, GetKeyMetadata and
 * GetHealthStatus answer public facts. So only Decrypt is checked, which
 * also leaves the spec's own curl troubleshooting (Appendix D: the same
 * encrypt and health request sent twice in a row, often within one second,
 * i.e. with one signature) working. docs/xks.md says why.
 *
 * Bounded: XKS_REPLAY_SLOTS entries in XKS_REPLAY_SHARDS shards, each with
 * its own lock (no global lock on the request path); an entry lives until
 * its request's time + 5 minutes, after which the time check refuses the
 * request anyway and the slot is reused. When no slot is free in a
 * signature's probe window the call is refused (fail closed), never let
 * through unchecked. One kmsd's memory: a fleet behind a balancer checks
 * per node.
 */
#ifndef XKS_REPLAY_H
#define XKS_REPLAY_H

#include <stdint.h>
#include <time.h>

#include "kms_error.h"

/* 2^20 entries of 24 bytes (24 MiB): 1,800 decrypts/s, AWS's default
 * quota, kept 5 minutes fill about half. */
#define XKS_REPLAY_SLOTS (1u << 20)
#define XKS_REPLAY_SHARDS 64
#define XKS_REPLAY_PROBE 32

struct xks_replay;

kms_err xks_replay_new(unsigned slots, struct xks_replay **out);
void xks_replay_free(struct xks_replay *r);

/* Record a verified request's signature (32 bytes), valid until expires
 * (seconds since the epoch). KMS_OK the first time; KMS_ERR_UNAUTHENTICATED
 * when the same signature was recorded before and has not expired (a
 * replay); KMS_ERR_RESOURCE_EXHAUSTED when its probe window is full of live
 * entries. Thread-safe. */
kms_err xks_replay_check(struct xks_replay *r, const uint8_t sig[32], time_t expires,
                         time_t now);

/* The cache is empty when kmsd starts, so a Decrypt served by the kmsd
 * before a restart would be served again. Refuse a signature dated before
 * the second the cache was made (KMS_ERR_UNAUTHENTICATED): AWS KMS
 * signs every call afresh, so it never sends one. A request dated in the
 * future by a client clock ahead of kmsd's is not covered (docs/xks.md). */
kms_err xks_replay_check_time(const struct xks_replay *r, time_t signed_at);

/* The second the cache was made (for tests). */
time_t xks_replay_started(const struct xks_replay *r);

#endif
