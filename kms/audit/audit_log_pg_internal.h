/*
 * audit_log_pg_internal.h - what the files of the PostgreSQL backend of the
 * audit log share (the contract is audit_log_pg.h; the design is in
 * docs/audit.md, "The audit log on PostgreSQL"). Not for use outside them.
 *
 *   audit_log_pg.c        open, close, connections, readers, test hooks
 *   audit_pg_key.c        the region's signing key in custos_audit_keys
 *   audit_pg_writer.c     the writer thread: group commit, recovery
 *   audit_pg_sequencer.c  the sequencer thread: poll, election, takeover
 *   audit_pg_round.c      one sequencing round, fenced by (size, epoch)
 *   audit_pg_follow.c     this node's copy of the tree and newest head
 * and, below them and shared with kmsctl (audit_pg_internal.h):
 *   audit_pg_db.c         statements, binary columns, the schema
 *   audit_pg_read.c       exports and keys straight from the database
 *
 * Threads and connections (each connection has one user):
 *   writer     wconn  inserts queued events, one transaction per batch
 *   sequencer  lconn  the dedicated session holding the advisory lock
 *              sconn  sequencing transactions, following the tree
 *   readers    rconn  audit_log_read / audit_log_keys, under rlock
 */
#ifndef AUDIT_LOG_PG_INTERNAL_H
#define AUDIT_LOG_PG_INTERNAL_H

#include "audit_log_internal.h"

#include <inttypes.h>

#include "audit_log_pg.h"
#include "audit_pg_internal.h"

/* Events ordered per sequencing round. */
#define AUDIT_PG_SEQ_BATCH 1000

struct audit_pg {
    char conninfo[KMS_PG_CONNINFO_MAX + 1];
    char *password_source;
    unsigned poll_ms;

    PGconn *wconn; /* writer thread only */
    PGconn *lconn; /* sequencer thread only (or a test while paused) */
    PGconn *sconn; /* sequencer thread only (or a test while paused) */
    pthread_mutex_t rlock;
    PGconn *rconn; /* guarded by rlock */

    pthread_t seq_thread;
    bool seq_running;

    /* Sequencer state: its thread's (or a test's while it is paused). */
    bool holder;
    int64_t epoch;
    struct audit_tree *stree; /* every sequenced leaf, as this holder made them */
    bool have_head;
    uint64_t s_head_size;
    int64_t s_head_time;
    int64_t next_conn_warn_ms;

    /* Guarded by log->lock. */
    pthread_cond_t wake;
    bool kick;
    bool stop; /* set once the writer has stopped: a last round, then exit */
    bool pause, paused;
    bool is_seq;
    int lock_pid;
};

/* ---- audit_log_pg.c ---- */

/* (Re)connect *c unless it is alive: durable commits whatever the server's
 * default (an acknowledged event must survive a crash of PostgreSQL). */
kms_err audit_pg_connect(struct audit_pg *pg, PGconn **c);

/* Roll back c's open transaction, if any. */
void audit_pg_rollback(PGconn *c);

/* ---- audit_pg_key.c ---- */

/* Make a signing key in the token and insert its public record into
 * custos_audit_keys on c (in the caller's transaction, if one is open).
 * If the insert fails the key is destroyed; the caller destroys it if its
 * transaction does not commit. */
kms_err audit_pg_insert_key(struct audit_log *log, PGconn *c, const char *op,
                            struct p11_key_id *out_id, int64_t *out_t);

/* The first node of a region makes its signing key; the others find it in
 * the shared token. Then loads it (audit_pg_load_sign_key). */
kms_err audit_pg_ensure_key(struct audit_log *log, PGconn *c);

/* log->sign_key := the region's newest key, which must be in the token. */
kms_err audit_pg_load_sign_key(struct audit_log *log, PGconn *c);

/* ---- audit_pg_writer.c ---- */

void *audit_pg_writer_main(void *arg);

/* ---- audit_pg_sequencer.c ---- */

void *audit_pg_sequencer_main(void *arg);

/* Give up the role: drop the tree made as holder and end the lock session
 * (frees the lock for whoever polls next). */
void audit_pg_drop_leadership(struct audit_log *log, const char *why);

/* ---- audit_pg_round.c ---- */

/* One round as holder (pg->sconn): order up to AUDIT_PG_SEQ_BATCH events
 * and sign a head when one is due, in one fenced transaction. Any failure
 * leaves the database untouched; the caller then drops leadership. */
kms_err audit_pg_sequence_round(struct audit_log *log, bool stopping);

/* ---- audit_pg_follow.c ---- */

/* Read the sequenced leaves from audit_tree_size(t) on (one batch) into t;
 * *out_more: a full batch was read. */
kms_err audit_pg_read_leaves(struct audit_log *log, PGconn *c, struct audit_tree *t,
                             bool *out_more);

/* Bring log->tree and log->head up to the database (pg->sconn). Sequencer
 * thread only (or open, before it runs): the only writer of log->tree. */
kms_err audit_pg_follow(struct audit_log *log);

#endif
