/*
 * audit_log.h - one region's durable, Merkle-tree, HSM-signed audit log.
 *
 * Files (in the configured audit directory, mode 0600):
 *   <region>.events  one record per event: the leaves of the tree
 *   <region>.heads   signed tree heads, oldest first
 *   <region>.keys    the region's audit signing keys (public halves)
 * Every record is framed as
 *   length (4 bytes, big-endian) || check (8 bytes) || payload
 * where check is the first 8 bytes of SHA-256(0x00 || payload) (for events,
 * the start of the leaf hash). At open a torn last record (a crash during
 * append) is truncated, logged and recorded as an event; anything else that
 * does not verify (a bad record before the end, a seq out of order, a head
 * whose root does not match) refuses the region.
 *
 * Appends are group-committed: callers queue their event and wait; one
 * writer thread writes every queued event, calls fdatasync once for the
 * batch, and releases the waiters. A failed write or fdatasync fails the
 * log closed: every append fails until the log has discarded the
 * unacknowledged batch (truncating the file back to the last durable size)
 * and a new fdatasync of that succeeded. A failed fdatasync is never treated
 * as if it had worked.
 *
 * A region's log may instead live in PostgreSQL, shared by several nodes
 * (audit_log_open_pg, audit_log_pg.h); every function below keeps its
 * contract there, with the differences noted.
 *
 * Tree heads are made every head_every_events events or head_every_ms,
 * whichever comes first, signed by the region's ECDSA P-256 audit key in its
 * HSM token over SHA-256 of the bytes of audit_head_signed_bytes().
 */
#ifndef AUDIT_LOG_H
#define AUDIT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_merkle.h"
#include "kms_error.h"
#include "p11_token.h"
#include "proto/audit.pb-c.h"

#define AUDIT_RECORD_MAX (64 * 1024)
#define AUDIT_HEAD_MAGIC "CUSTOS-STH-V1"

struct audit_log_config {
    uint64_t head_every_events; /* >= 1 */
    unsigned head_every_ms;     /* >= 10 */
    int64_t key_max_age_s;      /* rotate the signing key when older */
    /* Under concurrency (the last batch held more than one event) the
     * writer waits this long before taking a batch, so that one fdatasync
     * covers more events. 0: never wait. */
    unsigned commit_delay_us;
};

struct audit_log;

kms_err audit_log_open(const char *dir, const char *region, struct p11_token *tok,
                       const struct audit_log_config *cfg, struct audit_log **out);

/* The start-up scan of audit_log_open, read-only, on region's files in
 * dir (a backup's copy): KMS_OK when a kmsd would open them (a torn last
 * record, which it would cut, included); *out_events the events, and
 * *out_signed the tree size of the newest signed head. Needs no token and
 * changes nothing. */
kms_err audit_log_check_files(const char *dir, const char *region, uint64_t *out_events,
                              uint64_t *out_signed);

/* Write what is queued, make a final head, stop the writer. NULL ok. */
void audit_log_close(struct audit_log *log);

const char *audit_log_region(const struct audit_log *log);

/* Queue ev (seq and time_ms are set here) and wait until it is durable.
 * KMS_ERR_IO when the log cannot be written (fail closed).
 * PostgreSQL (audit_log_pg.h): durable means committed; time_ms is set
 * here and seq left 0, the sequencer assigns it after the commit. */
kms_err audit_log_append(struct audit_log *log, Custos__V1__AuditEvent *ev);

/* Queue ev without waiting: fn(arg, durable) is called exactly once, on
 * the writer thread, when the batch holding ev is durable (true) or lost
 * (false). An error return means ev was not queued and fn is never called.
 * fn must be quick and must not call into the log: it may run with the
 * log's lock held (failures) or between batches (success). */
typedef void (*audit_done_fn)(void *arg, bool durable);
kms_err audit_log_submit(struct audit_log *log, Custos__V1__AuditEvent *ev, audit_done_fn fn,
                         void *arg);

/* The latest signed head, packed (a Custos__V1__SignedTreeHead). The caller
 * frees *out. KMS_ERR_UNAVAILABLE-ish (KMS_ERR_IO) if none was made yet. */
kms_err audit_log_head(struct audit_log *log, uint8_t **out, size_t *out_len);

/* The stored bytes (the leaf) of event seq; caller frees. */
kms_err audit_log_read(struct audit_log *log, uint64_t seq, uint8_t **out, size_t *out_len);

/* The tree, for proofs. Valid while the log is open. */
struct audit_tree *audit_log_tree(struct audit_log *log);

/* The region's audit keys, packed Custos__V1__AuditKey each, oldest first,
 * with not_after filled from the successor. Caller frees with
 * audit_log_keys_free. */
kms_err audit_log_keys(struct audit_log *log, Custos__V1__AuditKey ***out, size_t *out_n);
void audit_log_keys_free(Custos__V1__AuditKey **keys, size_t n);

/* Make a new signing key now (operator rotation; also done by age).
 * PostgreSQL: refused (KMS_ERR_FAILED_PRECONDITION); the sequencer
 * rotates by age. */
kms_err audit_log_rotate_key(struct audit_log *log);

struct audit_log_stats {
    uint64_t events;   /* durable events written since open */
    uint64_t batches;  /* fdatasync calls for events */
    uint64_t max_batch;
    uint64_t heads;
    bool failed; /* appends fail now; PostgreSQL: or the database was
                  * unreachable at the last poll (readiness) */
};
void audit_log_stats(struct audit_log *log, struct audit_log_stats *out);

/* The bytes a head's signature covers:
 *   "CUSTOS-STH-V1" || len(region) (1 byte) || region || tree_size (8, BE)
 *   || timestamp_ms (8, BE) || root_hash (32)
 * out must hold 13 + 1 + 255 + 48 bytes. */
size_t audit_head_signed_bytes(const char *region, uint64_t tree_size, int64_t timestamp_ms,
                               const uint8_t root[32], uint8_t *out);

#endif
