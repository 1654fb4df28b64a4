/*
 * audit_log_internal.h - what the files of the audit log share: the log's
 * struct and the functions one part calls in another. Not for use outside
 * the log's files listed here (the contract is audit_log.h).
 *
 *   audit_log.c         open (the start-up scan and repair), close, readers
 *   audit_log_file.c    records: framing, appending, scanning, cutting
 *   audit_log_head.c    signing keys and signed tree heads
 *   audit_log_writer.c  the queue, group commit, failure and recovery
 *   audit_log_pg.c      the PostgreSQL backend (audit_log_pg.h), with the
 *   audit_pg_*.c        files audit_log_pg_internal.h lists
 */
#ifndef AUDIT_LOG_INTERNAL_H
#define AUDIT_LOG_INTERNAL_H

#include "audit_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "audit_index.h"
#include "audit_keyset.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "p11_crypto.h"
#include "p11_key.h"

#define FRAME_HEAD AUDIT_FRAME_HEAD
/* Failures remembered for waiters that slept through them (one is the
 * common case; each failure is at least a recovery period apart). */
#define AUDIT_FAIL_FLOORS 8

struct file {
    int fd;
    char path[512];
    off_t size; /* durable size: everything before it was fdatasync'ed */
};

struct waiter {
    audit_done_fn fn; /* NULL: a synchronous appender, woken through `done` */
    void *arg;
};

struct pending {
    uint8_t *buf;
    size_t len, cap;
    audit_hash *hashes;
    struct waiter *waiters; /* parallel to hashes */
    size_t n, hcap;
};

struct audit_pg; /* audit_log_pg_internal.h */

struct audit_log {
    char region[64];
    /* NULL: the files backend. Otherwise the log lives in PostgreSQL, the
     * files below are unused (fd -1), `tree` is the sequenced tree as this
     * node last read it, `head` the newest head at or below its size, and
     * next_seq/durable_seq count this node's appends (tickets), not seqs:
     * the sequencer assigns seqs after the commit. */
    struct audit_pg *pg;
    struct p11_token *tok;
    struct audit_log_config cfg;
    struct file events, heads, keys;

    /* The tree keeps ~0.25 byte per event and the index 8 bytes per 256
     * events: older leaves are read back from the events file when a proof
     * needs them, so memory does not grow with the log. */
    struct audit_tree *tree;
    struct audit_index *index;

    pthread_mutex_t lock; /* guards everything below */
    size_t last_batch;    /* events in the last committed batch */
    pthread_cond_t work, done;
    struct pending queue, writing;
    uint64_t next_seq;    /* next seq to assign */
    uint64_t durable_seq; /* every seq below it is durable */
    uint64_t epoch;       /* bumped by every failure: waiters of it fail... */
    /* ...unless their event was durable before it: durable_seq when epoch
     * e ended is fail_floor[e % AUDIT_FAIL_FLOORS]. A failure of a head
     * after its batch was synced must not refuse requests whose events are
     * on disk (found by test_audit_eio: refused requests with events). */
    uint64_t fail_floor[AUDIT_FAIL_FLOORS];
    int64_t next_recovery_ms;
    char fail_detail[256]; /* why the log failed, for the recovery event */
    bool failed;
    bool broken; /* durable events the tree could not take: never recovers */
    /* PostgreSQL: the follower could not reach the database at its last
     * poll. Reported as failed by audit_log_stats (readiness) even when
     * no append has failed yet; appends are still tried. */
    bool pg_unreachable;
    bool stopping;
    pthread_t writer;
    bool writer_running;

    uint8_t *head; /* latest signed head, packed */
    size_t head_len;
    uint64_t head_size; /* its tree size */
    int64_t head_time_ms;
    struct p11_key_id sign_key;
    int64_t sign_key_since_ms;

    /* Only while audit_log_open scans: the public keys of .keys (with each
     * key's validity ending where its successor's begins), and where the
     * newest head record is, so that the head the log resumes from can be
     * verified and named. */
    struct audit_keyset *scan_keys;
    char scan_last_key[AUDIT_KEY_ID_MAX + 1];
    uint64_t head_index;
    off_t head_off;

    struct audit_log_stats stats;
    int metrics_id; /* kms_metrics audit id, -1: not recorded */
};

static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static inline uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

typedef kms_err (*record_fn)(struct audit_log *log, uint64_t index, off_t off,
                             const uint8_t *payload, size_t len, const audit_hash hash);

/* The first damaged record of a file, if any. */
struct damage {
    off_t off; /* -1: none */
    uint64_t index;
    bool at_end; /* the damaged record is the file's last: a torn append */
};

/* ---- audit_log.c ---- */

/* Fill a zeroed log's common part (region, token, config, metrics, lock
 * and conditions; no files open), for either backend. */
void audit_log_init(struct audit_log *log, const char *region, struct p11_token *tok,
                    const struct audit_log_config *cfg);

/* ---- audit_log_file.c: records ---- */

/* Read every record of f up to the first damaged one (which it reports and
 * does not touch: whether damage may be cut off is decided by the caller,
 * after every file was read). A record that passes its check but does not
 * decode is an error, not damage: no crash produces that. */
kms_err audit_logfile_scan(struct audit_log *log, struct file *f, record_fn fn, struct damage *dmg);

/* Cut a file back to just before its damaged record, durably. */
kms_err audit_logfile_cut(struct file *f, const struct damage *d);

void audit_logfile_frame(uint8_t head[FRAME_HEAD], const uint8_t *payload, size_t len,
                         audit_hash out_hash);

kms_err audit_logfile_write_all(int fd, const uint8_t *p, size_t n);

kms_err audit_logfile_sync(int fd, const char *what);

/* Append one framed record and make it durable (heads and keys: rare).
 * Called without log->lock; takes it to publish the new size. */
kms_err audit_logfile_append(struct audit_log *log, struct file *f, const uint8_t *payload,
                             size_t len);

kms_err audit_logfile_open(struct file *f, const char *dir, const char *region, const char *ext,
                           bool read_only);

/* ---- audit_log_head.c: signing keys and heads ---- */

kms_err audit_log_on_key(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                         size_t len, const audit_hash h);

kms_err audit_log_new_sign_key(struct audit_log *log);

kms_err audit_log_on_head(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                          size_t len, const audit_hash h);

/* The head the log resumes from (the newest one the scan kept, whose root
 * audit_log_on_head already matched against the events) must verify under a key of
 * this region listed in .keys and valid at its time: a head whose
 * signature was changed on disk would otherwise be served to auditors and
 * extended by every later head. Called by audit_log_open after the scan. */
kms_err audit_log_verify_resume_head(struct audit_log *log);

/* The newest key of .keys must be the public half of the signing key in
 * the token: otherwise .keys was replaced, and heads would be checked (by
 * audit_log_verify_resume_head, and by auditors) against keys the HSM never held. */
kms_err audit_log_check_token_key(struct audit_log *log);

/* A damaged last head record is cut off as a torn append, unless it is a
 * whole head of this log: complete, decoding, naming this region, its root
 * that of the events at its size, its key id (the last field, so a tail of
 * zeros left by a crash spoils it) one of .keys. A crash leaves a short
 * record or garbage (zeros, stale bytes) that does not decode so; a record
 * like that whose check bytes do not match had bytes changed after it was
 * written (its signature, say). Cutting it off would hide the edit. */
kms_err audit_log_check_torn_head(struct audit_log *log, const struct damage *d);

/* Sign and persist a head for the current tree. Called by the writer only. */
kms_err audit_log_make_head(struct audit_log *log);

/* A new signing key in the token: *out_id, its not_before *out_t and its
 * packed AuditKey record (*out_rec, caller frees). Persisting the record
 * is the caller's (files or PostgreSQL); if that fails it destroys the
 * key. */
kms_err audit_log_gen_key(struct audit_log *log, struct p11_key_id *out_id, int64_t *out_t,
                          uint8_t **out_rec, size_t *out_len);

/* A packed SignedTreeHead of (size, root, t), signed with log->sign_key
 * (caller frees *out). Persists nothing. */
kms_err audit_log_sign_head(struct audit_log *log, uint64_t size, const audit_hash root, int64_t t,
                            uint8_t **out, size_t *out_len);

/* ---- audit_log_writer.c: the writer ---- */

kms_err audit_log_on_event(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                           size_t len, const audit_hash h);

void audit_pending_free(struct pending *q);

/* Tell the asynchronous submitters of q's events whether they are durable. */
void audit_pending_notify(const struct pending *q, bool durable);

/* Called by a writer with the lock held after a failed batch: everything
 * queued fails, the log refuses appends until the writer recovers it. */
void audit_log_fail_batch(struct audit_log *log);

/* The steps of a batch both writers (files, PostgreSQL) take, with the
 * lock held: the group-commit wait (drops the lock while it sleeps);
 * taking the queue (*out_end: next_seq, durable once the batch is); and,
 * once the batch is durable, the stats and the wake of its waiters (drops
 * the lock while it notifies). */
void audit_log_group_wait(struct audit_log *log);
struct pending audit_log_take_queue(struct audit_log *log, uint64_t *out_end);
void audit_log_batch_durable(struct audit_log *log, const struct pending *w, uint64_t end);

/* ---- audit_log_pg.c: the PostgreSQL backend (log->pg != NULL) ---- */

void audit_pg_close(struct audit_log *log);
kms_err audit_pg_read(struct audit_log *log, uint64_t seq, uint8_t **out, size_t *out_len);
kms_err audit_pg_log_keys(struct audit_log *log, Custos__V1__AuditKey ***out, size_t *out_n);

void *audit_log_writer_main(void *arg);

#endif
