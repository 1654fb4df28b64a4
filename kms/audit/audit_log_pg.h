/*
 * audit_log_pg.h - a region's audit log in PostgreSQL, shared by several
 * kmsd nodes (docs/audit.md, "The audit log on PostgreSQL"; the log's
 * contract is audit_log.h, which every function there keeps).
 *
 * Tables (in the region's database; every row carries its region):
 *   custos_audit_events  (region, id, seq, event): one row per event. An
 *                        appended event has seq NULL and holds the event
 *                        as made (seq 0); the sequencer sets seq and
 *                        replaces the bytes by the leaf (the same event
 *                        with its seq), once: a trigger refuses any change
 *                        to a sequenced row, and any delete.
 *   custos_audit_tree    (region, size, root, epoch, holder): the tree as
 *                        sequenced so far, and the fencing epoch.
 *   custos_audit_heads   (region, tree_size, timestamp_ms, head): signed
 *                        heads, one per size at most (primary key).
 *   custos_audit_keys    (region, key_id, not_before_ms, record): the
 *                        region's audit keys, public halves (AuditKey).
 *
 * Durability: an append returns once the transaction holding its event
 * (one per group-committed batch, synchronous_commit on) has committed.
 *
 * Sequencing: the node whose dedicated session holds the advisory lock
 * (AUDIT_PG_LOCK_CLASS, hashtext('audit:' || region)) is the sequencer: on
 * winning the lock it bumps the region's epoch, and each round orders
 * committed unsequenced events in one transaction whose first statement is
 * UPDATE custos_audit_tree SET size = new ... WHERE size = old AND
 * epoch = mine. A deposed sequencer (its lock lost while it still thinks it
 * holds it) fails that compare-and-set and gives up: it can never fork the
 * tree. Every node polls every poll_ms: to take the lock when it is free
 * (a dead sequencer's session ends and frees it), and to follow the tree
 * and heads that readers (exports, proofs) are served from.
 */
#ifndef AUDIT_LOG_PG_H
#define AUDIT_LOG_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "audit_log.h"
#include "kms_pgconn.h"

#define AUDIT_PG_POLL_MS_DEFAULT 200
#define AUDIT_PG_POLL_MS_MIN 10
#define AUDIT_PG_POLL_MS_MAX 60000
/* Advisory lock class of the sequencer lock ('CSAU'). */
#define AUDIT_PG_LOCK_CLASS 1129529685

/* Open region's log in the database of t (tables created if missing). The
 * signing key is the region's newest key in custos_audit_keys, which must
 * be in tok (every node sees the same token); the first node makes it.
 * poll_ms: AUDIT_PG_POLL_MS_MIN..MAX. */
kms_err audit_log_open_pg(const struct kms_pg_target *t, const char *region, struct p11_token *tok,
                          const struct audit_log_config *cfg, unsigned poll_ms,
                          struct audit_log **out);

/* Is this node the region's sequencer now (as far as it knows)? */
bool audit_log_is_sequencer(struct audit_log *log);

/* ---- the read side, for kmsd's followers and kmsctl (no log needed) ---- */

/* Create the tables, index and triggers if missing (idempotent; serialised
 * by an advisory lock so that nodes starting together do not race). */
kms_err audit_pg_schema(PGconn *c);

/* An ExportAuditLogResponse of region, exactly as kmsd's ExportAuditLog
 * builds it: the newest signed head; entries [start, start + count)
 * clipped to its tree size (count 1..10000); inclusion proofs when asked;
 * a consistency proof from known (0: none). Read in one snapshot. Errors:
 * KMS_ERR_FAILED_PRECONDITION when known is larger than the head's tree
 * size (the rollback alarm), KMS_ERR_INVALID_ARGUMENT for a start beyond
 * it, KMS_ERR_NOT_FOUND before the first head, KMS_ERR_IO when the leaves
 * do not match the head (the database was altered). *out: caller frees. */
kms_err audit_pg_export(PGconn *c, const char *region, uint64_t start, uint64_t count, bool proofs,
                        uint64_t known, uint8_t **out, size_t *out_len);

/* The keys of region ("" or NULL: every region in the database), oldest
 * first per region, not_after_ms filled from the successor; free with
 * audit_log_keys_free. */
kms_err audit_pg_keys(PGconn *c, const char *region, Custos__V1__AuditKey ***out, size_t *out_n);

/* ---- for tests ---- */

/* The backend pid of the session holding this node's sequencer lock (0:
 * not the sequencer), to end it with pg_terminate_backend. */
int audit_log_pg_lock_pid(struct audit_log *log);

/* Pause (true) or resume the sequencer thread; returns once paused. */
void audit_log_pg_pause(struct audit_log *log, bool pause);

/* One sequencing round now, on the caller's thread, with the state the
 * paused sequencer thread left (it may believe it still holds the lock):
 * KMS_ERR_FAILED_PRECONDITION when its compare-and-set failed (deposed).
 * Only while paused. */
kms_err audit_log_pg_round(struct audit_log *log);

#endif
