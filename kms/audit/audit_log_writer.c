/*
 * audit_log_writer.c - the audit log's queue and writer thread: group
 * commit, waiters, failure and recovery
 * (audit_log_internal.h; the contract is audit_log.h).
 */
#include "audit_log_internal.h"

/* ---- events --------------------------------------------------------------------------- */

kms_err audit_log_on_event(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                           size_t len, const audit_hash h)
{
    Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(NULL, len, p);
    KMS_ENSURE(ev != NULL, KMS_ERR_IO, "%s: event %llu does not decode", log->events.path,
               (unsigned long long)index);
    bool in_order = ev->seq == index;
    custos__v1__audit_event__free_unpacked(ev, NULL);
    KMS_ENSURE(in_order, KMS_ERR_IO, "%s: event at position %llu has another sequence number",
               log->events.path, (unsigned long long)index);
    KMS_GUARD(audit_tree_append(log->tree, h));
    return audit_index_push(log->index, off);
}

static kms_err pending_add(struct pending *q, const uint8_t *rec, size_t len, const audit_hash h,
                           struct waiter w)
{
    if (q->len + len > q->cap) {
        size_t nc = q->cap ? q->cap * 2 : 65536;
        while (nc < q->len + len)
            nc *= 2;
        uint8_t *nb = realloc(q->buf, nc);
        KMS_ENSURE(nb != NULL, KMS_ERR_NOMEM, "out of memory");
        q->buf = nb;
        q->cap = nc;
    }
    if (q->n == q->hcap) {
        size_t nc = q->hcap ? q->hcap * 2 : 256;
        audit_hash *nh = realloc(q->hashes, nc * sizeof(audit_hash));
        KMS_ENSURE(nh != NULL, KMS_ERR_NOMEM, "out of memory");
        q->hashes = nh;
        struct waiter *nw = realloc(q->waiters, nc * sizeof(*nw));
        KMS_ENSURE(nw != NULL, KMS_ERR_NOMEM, "out of memory");
        q->waiters = nw;
        q->hcap = nc;
    }
    memcpy(q->buf + q->len, rec, len);
    q->len += len;
    q->waiters[q->n] = w;
    memcpy(q->hashes[q->n++], h, AUDIT_HASH_LEN);
    return KMS_OK;
}

void audit_pending_notify(const struct pending *q, bool durable)
{
    for (size_t i = 0; i < q->n; i++)
        if (q->waiters[i].fn)
            q->waiters[i].fn(q->waiters[i].arg, durable);
}

void audit_pending_free(struct pending *q)
{
    free(q->buf);
    free(q->hashes);
    free(q->waiters);
}

/* Assign ev the next seq and queue its record; called with the lock held.
 * The seq is assigned and the record queued under one lock, so the file
 * order is the seq order. w is told the outcome when it has a callback. */
static kms_err enqueue_locked(struct audit_log *log, Custos__V1__AuditEvent *ev, struct waiter w,
                              uint64_t *out_seq)
{
    uint8_t stack[4096];
    /* PostgreSQL: the sequencer sets the seq when it orders the event. */
    ev->seq = log->pg != NULL ? 0 : log->next_seq;
    ev->time_ms = now_ms();
    ev->region = log->region;
    size_t len = custos__v1__audit_event__get_packed_size(ev);
    uint8_t *rec = len + FRAME_HEAD <= sizeof(stack) ? stack : malloc(len + FRAME_HEAD);
    kms_err rc = KMS_OK;
    if (rec == NULL || len > AUDIT_RECORD_MAX) {
        rc = kms_err_set(KMS_ERR_INTERNAL, "audit event too large or out of memory");
    } else {
        custos__v1__audit_event__pack(ev, rec + FRAME_HEAD);
        audit_hash h;
        audit_logfile_frame(rec, rec + FRAME_HEAD, len, h);
        rc = pending_add(&log->queue, rec, len + FRAME_HEAD, h, w);
    }
    if (rec != stack)
        free(rec);
    if (rc != KMS_OK)
        return rc;
    *out_seq = log->next_seq++;
    pthread_cond_signal(&log->work);
    return KMS_OK;
}

static kms_err refuse_if_closed(struct audit_log *log)
{
    if (log->failed || log->stopping)
        return kms_err_set(KMS_ERR_IO, "the audit log of region %s cannot be written",
                           log->region);
    return KMS_OK;
}

kms_err audit_log_submit(struct audit_log *log, Custos__V1__AuditEvent *ev, audit_done_fn fn,
                         void *arg)
{
    uint64_t seq;
    pthread_mutex_lock(&log->lock);
    kms_err rc = refuse_if_closed(log);
    if (rc == KMS_OK)
        rc = enqueue_locked(log, ev, (struct waiter){fn, arg}, &seq);
    pthread_mutex_unlock(&log->lock);
    return rc;
}

kms_err audit_log_append(struct audit_log *log, Custos__V1__AuditEvent *ev)
{
    pthread_mutex_lock(&log->lock);
    uint64_t seq = 0, epoch = log->epoch;
    kms_err rc = refuse_if_closed(log);
    if (rc == KMS_OK)
        rc = enqueue_locked(log, ev, (struct waiter){NULL, NULL}, &seq);
    if (rc != KMS_OK) {
        pthread_mutex_unlock(&log->lock);
        return rc;
    }
    while (log->durable_seq <= seq && log->epoch == epoch)
        pthread_cond_wait(&log->done, &log->lock);
    /* Durable in our epoch, or below what was durable when it failed. A
     * waiter that slept through more failures than are remembered is told
     * the log failed: refused, never acknowledged without its event. */
    bool ok = log->epoch == epoch ? log->durable_seq > seq
                                  : log->epoch - epoch <= AUDIT_FAIL_FLOORS &&
                                        seq < log->fail_floor[epoch % AUDIT_FAIL_FLOORS];
    pthread_mutex_unlock(&log->lock);
    if (!ok)
        return kms_err_set(KMS_ERR_IO, "the audit log of region %s cannot be written",
                           log->region);
    return KMS_OK;
}

/* Called by the writer with the lock held after a failed write: everything
 * queued or being written is lost to its callers (they are told, through
 * the epoch or their callback), and the next recovery attempt cuts the file
 * back to its last durable size. */
void audit_log_fail_batch(struct audit_log *log)
{
    audit_pending_notify(&log->queue, false);
    if (!log->failed) {
        kms_log_error("audit", "region %s: %s; failing closed", log->region, kms_err_detail());
        snprintf(log->fail_detail, sizeof(log->fail_detail), "%s", kms_err_detail());
    }
    log->failed = true;
    log->fail_floor[log->epoch % AUDIT_FAIL_FLOORS] = log->durable_seq;
    log->epoch++;
    /* Seqs from durable_seq on were never durable: they will be reused. */
    log->next_seq = log->durable_seq;
    log->queue.len = log->queue.n = 0;
    log->next_recovery_ms = now_ms() + 1000;
    pthread_cond_broadcast(&log->done);
}

/* Cut f back to its durable size and make that durable through a new
 * descriptor, which then takes the old one's number (dup2), so the index,
 * which reads through that number, never sees a closed descriptor.
 *
 * Why not truncate and fsync the old descriptor, as this code once did:
 * after a failed fsync/fdatasync, Linux marks the pages whose write-back
 * failed clean (or drops them) and reports the error once per descriptor;
 * a second fsync of the same descriptor then succeeds without writing
 * them again (PostgreSQL's "fsyncgate", 2018). Retrying the sync proves
 * nothing about what is on the device. The new descriptor starts with no
 * error consumed, and what it syncs is only the truncation; whether the
 * durable bytes that shared a page with the failed ones survived is then
 * checked by reading them back from the device (verify_tail). */
static kms_err reopen_at_durable(struct file *f, off_t *out_was)
{
    struct stat st;
    KMS_ENSURE(fstat(f->fd, &st) == 0, KMS_ERR_IO, "%s: %s", f->path, strerror(errno));
    *out_was = st.st_size;
    KMS_ENSURE(ftruncate(f->fd, f->size) == 0, KMS_ERR_IO, "%s: cannot truncate at %lld: %s",
               f->path, (long long)f->size, strerror(errno));
    int nfd = open(f->path, O_RDWR | O_APPEND | O_CLOEXEC);
    KMS_ENSURE(nfd >= 0, KMS_ERR_IO, "%s: cannot reopen: %s", f->path, strerror(errno));
    kms_err rc = KMS_OK;
    if (fsync(nfd) != 0)
        rc = kms_err_set(KMS_ERR_IO, "%s: fsync after truncation: %s", f->path, strerror(errno));
    else if (fstat(nfd, &st) != 0 || st.st_size != f->size)
        rc = kms_err_set(KMS_ERR_IO, "%s: size %lld after truncation to %lld", f->path,
                         (long long)st.st_size, (long long)f->size);
    else if (dup2(nfd, f->fd) < 0)
        rc = kms_err_set(KMS_ERR_IO, "%s: dup2: %s", f->path, strerror(errno));
    close(nfd);
    return rc;
}

/* Re-read from the device the durable events that share a page with the
 * bytes whose write-back failed, and check each against the tree (an
 * inclusion proof to the root of the durable events): a failed write-back
 * may have torn a block holding acknowledged records, and the page cache
 * would still show them intact. POSIX_FADV_DONTNEED drops the (clean)
 * cached pages first, so the reads come from the device on Linux. */
static kms_err verify_tail(struct audit_log *log, uint64_t n)
{
    if (n == 0)
        return KMS_OK;
    long page = sysconf(_SC_PAGESIZE);
    off_t from = log->events.size - log->events.size % (page > 0 ? page : 4096);
    (void)posix_fadvise(log->events.fd, from, 0, POSIX_FADV_DONTNEED);
    uint64_t first = n - 1;
    for (;;) {
        off_t off = 0;
        KMS_GUARD(audit_index_offset(log->index, first, &off));
        if (off <= from || first == 0)
            break;
        first--;
    }
    audit_hash root;
    KMS_GUARD(audit_tree_root(log->tree, n, root));
    for (uint64_t seq = first; seq < n; seq++) {
        audit_hash leaf, proof[AUDIT_PROOF_MAX];
        size_t np = 0;
        KMS_GUARD(audit_index_leaves(log->index, seq, 1, &leaf));
        KMS_GUARD(audit_tree_inclusion(log->tree, seq, n, proof, &np));
        KMS_ENSURE(audit_verify_inclusion(seq, n, leaf, proof, np, root), KMS_ERR_IO,
                   "%s: event %llu read back from the device is not the one acknowledged",
                   log->events.path, (unsigned long long)seq);
    }
    return KMS_OK;
}

/* Leave the failed state: cut every file back to its durable size through a
 * new descriptor, check the durable tail of the events on the device, and
 * record the recovery as an event. Nothing written after the last
 * successful fdatasync is trusted or kept, and no sync is ever retried on
 * data whose write-back failed. Called by the writer with the lock held;
 * drops it for the I/O (appends are refused meanwhile: the log is failed,
 * and only the writer touches the files). */
static void try_recover(struct audit_log *log)
{
    log->next_recovery_ms = now_ms() + 1000;
    if (log->broken)
        return;
    uint64_t n = log->durable_seq;
    pthread_mutex_unlock(&log->lock);
    off_t was = 0, ignored = 0;
    kms_err rc = reopen_at_durable(&log->events, &was);
    if (rc == KMS_OK)
        rc = reopen_at_durable(&log->heads, &ignored);
    if (rc == KMS_OK)
        rc = reopen_at_durable(&log->keys, &ignored);
    kms_err vrc = rc == KMS_OK ? verify_tail(log, n) : KMS_OK;
    pthread_mutex_lock(&log->lock);
    if (rc != KMS_OK) {
        kms_log_warn("audit", "region %s: audit log still failed: %s", log->region,
                     kms_err_detail());
        return;
    }
    if (vrc != KMS_OK) {
        /* Acknowledged history is damaged on the device: only a restart,
         * which rescans every record and refuses damage under a signed
         * head, may decide what to serve. */
        log->broken = true;
        kms_log_error("audit", "region %s: %s; the log stays failed until kmsd is restarted",
                      log->region, kms_err_detail());
        return;
    }
    log->failed = false;
    kms_log_warn("audit", "region %s: audit log writable again at %llu events", log->region,
                 (unsigned long long)n);
    /* Auditors see the failure as a fact of the log, like a torn tail at
     * start. Queued without waiting: the writer is the caller. */
    char detail[512];
    snprintf(detail, sizeof(detail),
             "%s; %s cut back to %lld bytes (%llu events), %lld bytes of unacknowledged "
             "events dropped; reopened, tail re-read from the device",
             log->fail_detail, strrchr(log->events.path, '/') + 1, (long long)log->events.size,
             (unsigned long long)n, (long long)(was - log->events.size));
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.operation = (char *)"AuditLogRecovered";
    ev.outcome = (char *)"ok";
    ev.detail = detail;
    uint64_t seq = 0;
    if (enqueue_locked(log, &ev, (struct waiter){NULL, NULL}, &seq) != KMS_OK)
        kms_log_warn("audit", "region %s: recovery event not queued: %s", log->region,
                     kms_err_detail());
}

/* Write and sync one swapped-out batch of events, then add them to the
 * tree and index. Called by the writer without log->lock: w is the writer's
 * own, and events/tree/index are written by the writer only. *out_written:
 * the batch is durable on disk (whatever happened to the tree after). */
static kms_err write_batch(struct audit_log *log, const struct pending *w, bool *out_written)
{
    kms_err rc = audit_logfile_write_all(log->events.fd, w->buf, w->len);
    if (rc == KMS_OK) {
        uint64_t t0 = kms_metrics_now_ns();
        rc = audit_logfile_sync(log->events.fd, log->events.path);
        if (rc == KMS_OK)
            kms_metrics_audit_batch(log->metrics_id, w->n, kms_metrics_now_ns() - t0);
    }
    *out_written = rc == KMS_OK;
    size_t pos = 0;
    for (size_t i = 0; rc == KMS_OK && i < w->n; i++) {
        rc = audit_tree_append(log->tree, w->hashes[i]);
        if (rc == KMS_OK)
            rc = audit_index_push(log->index, log->events.size + (off_t)pos);
        pos += FRAME_HEAD + (size_t)get_be(w->buf + pos, 4);
    }
    return rc;
}

/* A head for every new state: after head_every_events events, after
 * head_every_ms with anything new, at shutdown, and once at start when the
 * log has no head for its current size. Called by the writer with
 * log->lock held; drops it while signing. */
static void head_if_due(struct audit_log *log, bool stop)
{
    bool head_due = log->head == NULL ||
                    (log->durable_seq > log->head_size &&
                     (log->durable_seq - log->head_size >= log->cfg.head_every_events ||
                      now_ms() >= log->head_time_ms + (int64_t)log->cfg.head_every_ms || stop));
    if (head_due) {
        pthread_mutex_unlock(&log->lock);
        kms_err hrc = audit_log_make_head(log);
        pthread_mutex_lock(&log->lock);
        if (hrc != KMS_OK) {
            kms_log_error("audit", "region %s: no signed head: %s", log->region,
                          kms_err_detail());
            if (hrc == KMS_ERR_IO || hrc == KMS_ERR_NOSPC)
                audit_log_fail_batch(log);
            else /* an HSM hiccup: try again after a period, do not spin */
                log->head_time_ms = now_ms();
        }
    } else if (now_ms() >= log->head_time_ms + (int64_t)log->cfg.head_every_ms) {
        /* Nothing new to sign: wait a whole period again. */
        log->head_time_ms = now_ms();
    }
}

/* Group commit with a short wait when others are committing too: fewer,
 * larger commits (fdatasyncs, PostgreSQL transactions), each costing a
 * flush and a wake of every waiter. A lone request (last batch of one)
 * never waits. */
void audit_log_group_wait(struct audit_log *log)
{
    if (log->cfg.commit_delay_us > 0 && log->last_batch > 1 && log->queue.n > 0 && !log->stopping) {
        struct timespec d = {0, (long)log->cfg.commit_delay_us * 1000};
        pthread_mutex_unlock(&log->lock);
        nanosleep(&d, NULL);
        pthread_mutex_lock(&log->lock);
    }
}

/* Swap the queue out; appends continue into the empty one. */
struct pending audit_log_take_queue(struct audit_log *log, uint64_t *out_end)
{
    struct pending w = log->queue;
    log->queue = log->writing;
    log->queue.len = log->queue.n = 0;
    log->writing = w;
    *out_end = log->next_seq;
    return w;
}

void audit_log_batch_durable(struct audit_log *log, const struct pending *w, uint64_t end)
{
    log->durable_seq = end;
    log->stats.events += w->n;
    log->stats.batches++;
    log->last_batch = w->n;
    if (w->n > log->stats.max_batch)
        log->stats.max_batch = w->n;
    pthread_cond_broadcast(&log->done);
    /* One wake per batch for the submitters; outside the lock, where
     * appends go on into the other queue. */
    pthread_mutex_unlock(&log->lock);
    audit_pending_notify(w, true);
    pthread_mutex_lock(&log->lock);
}

void *audit_log_writer_main(void *arg)
{
    struct audit_log *log = arg;
    pthread_mutex_lock(&log->lock);
    for (;;) {
        int64_t due = log->failed ? log->next_recovery_ms
                                  : log->head_time_ms + (int64_t)log->cfg.head_every_ms;
        struct timespec until = {(time_t)(due / 1000), (long)(due % 1000) * 1000000};
        while (log->queue.n == 0 && !log->stopping && now_ms() < due)
            if (pthread_cond_timedwait(&log->work, &log->lock, &until) == ETIMEDOUT)
                break;
        if (log->failed) {
            if (now_ms() >= log->next_recovery_ms)
                try_recover(log);
            if (log->stopping)
                break;
            continue;
        }
        audit_log_group_wait(log);
        uint64_t end = 0;
        struct pending w = audit_log_take_queue(log, &end);
        bool stop = log->stopping;
        pthread_mutex_unlock(&log->lock);

        bool written = false;
        kms_err rc = w.n > 0 ? write_batch(log, &w, &written) : KMS_OK;
        pthread_mutex_lock(&log->lock);
        log->writing = w;
        if (w.n > 0) {
            if (rc == KMS_OK) {
                log->events.size += (off_t)w.len;
                audit_log_batch_durable(log, &w, end);
            } else {
                /* Durable on disk but not in the tree (out of memory): the
                 * next heads would sign a wrong root. Stop for good; a
                 * restart rebuilds the tree from the file. */
                if (written)
                    log->broken = true;
                audit_pending_notify(&w, false);
                audit_log_fail_batch(log);
                continue;
            }
        }
        head_if_due(log, stop);
        if (stop && log->queue.n == 0)
            break;
    }
    pthread_mutex_unlock(&log->lock);
    return NULL;
}

