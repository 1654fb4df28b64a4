/*
 * audit_log.c - one region's audit log: opening it (the start-up scan of
 * its three files and the repair of a torn end), closing it, and what
 * readers ask of it (see audit_log.h for the contract; the records, heads
 * and writer are in audit_log_file.c, audit_log_head.c, audit_log_writer.c).
 */
#include "audit_log_internal.h"

#include "audit_log.h"

size_t audit_head_signed_bytes(const char *region, uint64_t tree_size, int64_t timestamp_ms,
                               const uint8_t root[32], uint8_t *out)
{
    size_t r = strlen(region), o = 0;
    if (r > 255)
        r = 255;
    memcpy(out, AUDIT_HEAD_MAGIC, 13);
    o = 13;
    out[o++] = (uint8_t)r;
    memcpy(out + o, region, r);
    o += r;
    put_be(out + o, tree_size, 8);
    o += 8;
    put_be(out + o, (uint64_t)timestamp_ms, 8);
    o += 8;
    memcpy(out + o, root, 32);
    return o + 32;
}


/* ---- open / close ------------------------------------------------------------------------ */

/* Open region's three files (read-only: nothing created, nothing cut) and
 * run the start-up scan: every record framed and checked, key records of
 * this region, events in order, heads against the events before them, the
 * newest head signed by a key .keys lists. The damage found at the ends is
 * left in dk, de, dh for the caller (audit_log_open cuts it). */
static kms_err load(struct audit_log *log, const char *dir, const char *region, bool read_only,
                    struct damage *dk, struct damage *de, struct damage *dh)
{
    kms_err rc = KMS_OK;
    KMS_GUARD(audit_logfile_open(&log->keys, dir, region, "keys", read_only));
    KMS_GUARD(audit_logfile_open(&log->events, dir, region, "events", read_only));
    KMS_GUARD(audit_index_new(log->events.fd, log->events.path, &log->index));
    KMS_GUARD(audit_tree_new_sparse(audit_index_leaves, log->index, &log->tree));
    KMS_GUARD(audit_logfile_open(&log->heads, dir, region, "heads", read_only));
    KMS_GUARD(audit_keyset_new(&log->scan_keys));
    KMS_GUARD(audit_logfile_scan(log, &log->keys, audit_log_on_key, dk));
    /* A damaged key record anywhere but at the very end is not a crash. */
    KMS_ENSURE(dk->off < 0 || dk->at_end, KMS_ERR_IO, "%s: record %llu at offset %lld is damaged",
               log->keys.path, (unsigned long long)dk->index, (long long)dk->off);
    KMS_GUARD(audit_logfile_scan(log, &log->events, audit_log_on_event, de));
    /* Heads are checked against the events read so far: one that covers a
     * damaged event proves the damage is in acknowledged, signed history. */
    rc = audit_logfile_scan(log, &log->heads, audit_log_on_head, dh);
    if (rc != KMS_OK && de->off >= 0)
        rc = kms_err_set(KMS_ERR_IO,
                         "%s: record %llu at offset %lld is damaged and signed heads cover it: "
                         "the log was altered",
                         log->events.path, (unsigned long long)de->index, (long long)de->off);
    if (rc != KMS_OK)
        return rc;
    KMS_ENSURE(dh->off < 0 || dh->at_end, KMS_ERR_IO, "%s: record %llu at offset %lld is damaged",
               log->heads.path, (unsigned long long)dh->index, (long long)dh->off);
    KMS_GUARD(audit_log_check_torn_head(log, dh));
    KMS_GUARD(audit_log_verify_resume_head(log));
    return rc;
}

void audit_log_init(struct audit_log *log, const char *region, struct p11_token *tok,
                    const struct audit_log_config *cfg)
{
    snprintf(log->region, sizeof(log->region), "%s", region);
    log->tok = tok;
    log->cfg = *cfg;
    log->metrics_id = kms_metrics_audit(region);
    log->events.fd = log->heads.fd = log->keys.fd = -1;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->work, NULL);
    pthread_cond_init(&log->done, NULL);
}

kms_err audit_log_open(const char *dir, const char *region, struct p11_token *tok,
                       const struct audit_log_config *cfg, struct audit_log **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    KMS_ENSURE(strlen(region) < 64, KMS_ERR_CONFIG, "region name too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return kms_err_set(KMS_ERR_CONFIG, "audit directory %s: %s", dir, strerror(errno));
    struct audit_log *log = calloc(1, sizeof(*log));
    KMS_ENSURE(log != NULL, KMS_ERR_NOMEM, "out of memory");
    audit_log_init(log, region, tok, cfg);
    struct damage dk, de, dh;
    KMS_GUARD_GOTO(load(log, dir, region, false, &dk, &de, &dh), fail);
    /* Only now, with every file read and checked, cut off what a crash left:
     * events after the last signed head that never became durable (a power
     * cut can tear a whole unsynced batch), a torn head, a torn key. */
    struct file *files[3] = {&log->events, &log->heads, &log->keys};
    struct damage *dmgs[3] = {&de, &dh, &dk};
    char torn_detail[3][200];
    for (int i = 0; i < 3; i++) {
        torn_detail[i][0] = '\0';
        if (dmgs[i]->off < 0)
            continue;
        struct stat fst;
        off_t was = fstat(files[i]->fd, &fst) == 0 ? fst.st_size : dmgs[i]->off;
        KMS_GUARD_GOTO(audit_logfile_cut(files[i], dmgs[i]), fail);
        snprintf(torn_detail[i], sizeof(torn_detail[i]),
                 "torn tail of %s truncated at offset %lld (record %llu, %lld bytes dropped)",
                 strrchr(files[i]->path, '/') + 1, (long long)dmgs[i]->off,
                 (unsigned long long)dmgs[i]->index, (long long)(was - dmgs[i]->off));
    }
    if (log->keys.size == 0 ||
        (cfg->key_max_age_s > 0 && now_ms() - log->sign_key_since_ms > cfg->key_max_age_s * 1000)) {
        KMS_GUARD_GOTO(audit_log_new_sign_key(log), fail);
    } else {
        bool exists = false;
        KMS_GUARD_GOTO(p11_key_exists(tok, &log->sign_key, &exists), fail);
        KMS_ENSURE_GOTO(exists, fail, KMS_ERR_CONFIG,
                        "region %s: the audit signing key is missing from token '%s'", region,
                        p11_token_label(tok));
        KMS_GUARD_GOTO(audit_log_check_token_key(log), fail);
    }
    audit_keyset_free(log->scan_keys);
    log->scan_keys = NULL;
    log->next_seq = log->durable_seq = audit_tree_size(log->tree);
    if (log->head == NULL)
        log->head_time_ms = 0;

    KMS_ENSURE_GOTO(pthread_create(&log->writer, NULL, audit_log_writer_main, log) == 0, fail,
                    KMS_ERR_INTERNAL, "cannot start the audit writer");
    log->writer_running = true;

    /* A torn tail is a fact auditors must see. */
    for (int i = 0; i < 3; i++) {
        if (torn_detail[i][0] == '\0')
            continue;
        kms_log_warn("audit", "region %s: %s", region, torn_detail[i]);
        Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
        ev.operation = (char *)"AuditLogRecovered";
        ev.outcome = (char *)"ok";
        ev.detail = torn_detail[i];
        KMS_GUARD_GOTO(audit_log_append(log, &ev), fail);
    }
    /* The writer runs from here on and updates both under the lock (found
     * by make check-tsan: this read raced with audit_log_make_head). */
    pthread_mutex_lock(&log->lock);
    unsigned long long durable = log->durable_seq, head_size = log->head_size;
    pthread_mutex_unlock(&log->lock);
    kms_log_info("audit", "region %s: %llu events, last head at %llu", region, durable,
                 head_size);
    *out = log;
    return KMS_OK;
fail:
    audit_log_close(log);
    return rc;
}

kms_err audit_log_check_files(const char *dir, const char *region, uint64_t *out_events,
                              uint64_t *out_signed)
{
    KMS_ENSURE(strlen(region) < 64, KMS_ERR_CONFIG, "region name too long");
    struct audit_log *log = calloc(1, sizeof(*log));
    KMS_ENSURE(log != NULL, KMS_ERR_NOMEM, "out of memory");
    snprintf(log->region, sizeof(log->region), "%s", region);
    log->events.fd = log->heads.fd = log->keys.fd = -1;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->work, NULL);
    pthread_cond_init(&log->done, NULL);
    struct damage dk, de, dh;
    kms_err rc = load(log, dir, region, true, &dk, &de, &dh);
    if (rc == KMS_OK) {
        *out_events = audit_tree_size(log->tree);
        *out_signed = log->head_size;
    }
    audit_log_close(log);
    return rc;
}

void audit_log_close(struct audit_log *log)
{
    if (log == NULL)
        return;
    if (log->pg != NULL)
        audit_pg_close(log); /* stops its threads; the rest is freed below */
    if (log->writer_running) {
        pthread_mutex_lock(&log->lock);
        log->stopping = true;
        pthread_cond_signal(&log->work);
        pthread_mutex_unlock(&log->lock);
        pthread_join(log->writer, NULL);
    }
    if (log->events.fd >= 0)
        close(log->events.fd);
    if (log->heads.fd >= 0)
        close(log->heads.fd);
    if (log->keys.fd >= 0)
        close(log->keys.fd);
    audit_keyset_free(log->scan_keys);
    audit_tree_free(log->tree);
    audit_index_free(log->index);
    audit_pending_free(&log->queue);
    audit_pending_free(&log->writing);
    free(log->head);
    pthread_mutex_destroy(&log->lock);
    pthread_cond_destroy(&log->work);
    pthread_cond_destroy(&log->done);
    free(log);
}

/* ---- readers ---------------------------------------------------------------------------------- */

const char *audit_log_region(const struct audit_log *log)
{
    return log->region;
}

struct audit_tree *audit_log_tree(struct audit_log *log)
{
    return log->tree;
}

kms_err audit_log_head(struct audit_log *log, uint8_t **out, size_t *out_len)
{
    pthread_mutex_lock(&log->lock);
    kms_err rc = KMS_OK;
    *out = NULL;
    if (log->head == NULL) {
        rc = kms_err_set(KMS_ERR_IO, "region %s has no signed head yet", log->region);
    } else {
        *out = malloc(log->head_len);
        if (*out == NULL) {
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        } else {
            memcpy(*out, log->head, log->head_len);
            *out_len = log->head_len;
        }
    }
    pthread_mutex_unlock(&log->lock);
    return rc;
}

kms_err audit_log_read(struct audit_log *log, uint64_t seq, uint8_t **out, size_t *out_len)
{
    if (log->pg != NULL)
        return audit_pg_read(log, seq, out, out_len);
    return audit_index_read(log->index, seq, out, out_len);
}

struct keys_collect {
    Custos__V1__AuditKey **keys;
    size_t n, cap;
};

kms_err audit_log_keys(struct audit_log *log, Custos__V1__AuditKey ***out, size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    if (log->pg != NULL)
        return audit_pg_log_keys(log, out, out_n);
    struct keys_collect c = {NULL, 0, 0};
    off_t off = 0;
    kms_err rc = KMS_OK;
    pthread_mutex_lock(&log->lock);
    off_t end = log->keys.size;
    pthread_mutex_unlock(&log->lock);
    uint8_t head[FRAME_HEAD];
    while (rc == KMS_OK && off < end) {
        if (pread(log->keys.fd, head, FRAME_HEAD, off) != FRAME_HEAD) {
            rc = kms_err_set(KMS_ERR_IO, "audit keys read: %s", strerror(errno));
            break;
        }
        size_t len = (size_t)get_be(head, 4);
        uint8_t *p = len <= AUDIT_RECORD_MAX ? malloc(len ? len : 1) : NULL;
        if (p == NULL || pread(log->keys.fd, p, len, off + FRAME_HEAD) != (ssize_t)len) {
            free(p);
            rc = kms_err_set(KMS_ERR_IO, "audit keys read failed");
            break;
        }
        Custos__V1__AuditKey *k = custos__v1__audit_key__unpack(NULL, len, p);
        free(p);
        if (k == NULL) {
            rc = kms_err_set(KMS_ERR_IO, "audit key record does not decode");
            break;
        }
        if (c.n == c.cap) {
            size_t nc = c.cap ? c.cap * 2 : 8;
            Custos__V1__AuditKey **nk = realloc(c.keys, nc * sizeof(*nk));
            if (nk == NULL) {
                custos__v1__audit_key__free_unpacked(k, NULL);
                rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
                break;
            }
            c.keys = nk;
            c.cap = nc;
        }
        if (c.n > 0)
            c.keys[c.n - 1]->not_after_ms = k->not_before_ms;
        c.keys[c.n++] = k;
        off += FRAME_HEAD + (off_t)len;
    }
    if (rc != KMS_OK) {
        audit_log_keys_free(c.keys, c.n);
        return rc;
    }
    *out = c.keys;
    *out_n = c.n;
    return KMS_OK;
}

void audit_log_keys_free(Custos__V1__AuditKey **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        custos__v1__audit_key__free_unpacked(keys[i], NULL);
    free(keys);
}

void audit_log_stats(struct audit_log *log, struct audit_log_stats *out)
{
    pthread_mutex_lock(&log->lock);
    *out = log->stats;
    out->failed = log->failed || log->pg_unreachable;
    pthread_mutex_unlock(&log->lock);
}

