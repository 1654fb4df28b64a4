/*
 * audit_log_file.c - the records of the audit log's files: framing, appending,
 * scanning up to the first damage, cutting it off
 * (audit_log_internal.h; the contract is audit_log.h).
 */
#include "audit_log_internal.h"

kms_err audit_logfile_write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return kms_err_set(errno == ENOSPC || errno == EDQUOT || errno == EFBIG ? KMS_ERR_NOSPC
                                                                                    : KMS_ERR_IO,
                               "audit write: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return KMS_OK;
}

kms_err audit_logfile_sync(int fd, const char *what)
{
    if (fdatasync(fd) != 0)
        return kms_err_set(KMS_ERR_IO, "audit fdatasync of %s: %s", what, strerror(errno));
    return KMS_OK;
}

void audit_logfile_frame(uint8_t head[FRAME_HEAD], const uint8_t *payload, size_t len,
                         audit_hash out_hash)
{
    audit_hash h;
    audit_leaf_hash(payload, len, h);
    put_be(head, len, 4);
    memcpy(head + 4, h, 8);
    if (out_hash)
        memcpy(out_hash, h, AUDIT_HASH_LEN);
}

/* Append one framed record and make it durable (heads and keys: rare).
 * Called without log->lock; takes it to publish the new size. */
kms_err audit_logfile_append(struct audit_log *log, struct file *f, const uint8_t *payload,
                             size_t len)
{
    uint8_t head[FRAME_HEAD];
    audit_logfile_frame(head, payload, len, NULL);
    kms_err rc = audit_logfile_write_all(f->fd, head, FRAME_HEAD);
    if (rc == KMS_OK)
        rc = audit_logfile_write_all(f->fd, payload, len);
    if (rc == KMS_OK)
        rc = audit_logfile_sync(f->fd, f->path);
    if (rc == KMS_OK) {
        pthread_mutex_lock(&log->lock);
        f->size += (off_t)(FRAME_HEAD + len);
        pthread_mutex_unlock(&log->lock);
    }
    return rc;
}

/* Read every record of f up to the first damaged one (which it reports and
 * does not touch: whether damage may be cut off is decided by the caller,
 * after every file was read). A record that passes its check but does not
 * decode is an error, not damage: no crash produces that. */
kms_err audit_logfile_scan(struct audit_log *log, struct file *f, record_fn fn, struct damage *dmg)
{
    struct stat st;
    kms_err rc = KMS_OK;
    dmg->off = -1;
    KMS_ENSURE(fstat(f->fd, &st) == 0, KMS_ERR_IO, "%s: %s", f->path, strerror(errno));
    off_t end = st.st_size, off = 0;
    uint64_t index = 0;
    uint8_t *buf = malloc(AUDIT_RECORD_MAX + FRAME_HEAD);
    KMS_ENSURE(buf != NULL, KMS_ERR_NOMEM, "out of memory");
    while (off < end) {
        bool bad = false, at_end = false;
        size_t len = 0;
        if (end - off < FRAME_HEAD) {
            bad = at_end = true;
        } else {
            KMS_ENSURE_GOTO(pread(f->fd, buf, FRAME_HEAD, off) == FRAME_HEAD, done, KMS_ERR_IO,
                            "%s: read at %lld: %s", f->path, (long long)off, strerror(errno));
            len = (size_t)get_be(buf, 4);
            if (len > AUDIT_RECORD_MAX)
                bad = true; /* no writer ever made such a length */
            else if (end - off - FRAME_HEAD < (off_t)len)
                bad = at_end = true;
        }
        if (!bad) {
            KMS_ENSURE_GOTO(pread(f->fd, buf + FRAME_HEAD, len, off + FRAME_HEAD) == (ssize_t)len,
                            done, KMS_ERR_IO, "%s: read: %s", f->path, strerror(errno));
            audit_hash h;
            audit_leaf_hash(buf + FRAME_HEAD, len, h);
            if (memcmp(h, buf + 4, 8) != 0) {
                bad = true;
                at_end = off + FRAME_HEAD + (off_t)len == end;
            } else {
                KMS_GUARD_GOTO(fn(log, index, off, buf + FRAME_HEAD, len, h), done);
            }
        }
        if (bad) {
            dmg->off = off;
            dmg->index = index;
            dmg->at_end = at_end;
            end = off;
            break;
        }
        off += FRAME_HEAD + (off_t)len;
        index++;
    }
    f->size = end;
done:
    free(buf);
    return rc;
}

/* Cut a file back to just before its damaged record, durably. */
kms_err audit_logfile_cut(struct file *f, const struct damage *d)
{
    KMS_ENSURE(ftruncate(f->fd, d->off) == 0 && fsync(f->fd) == 0, KMS_ERR_IO,
               "%s: cannot truncate at %lld: %s", f->path, (long long)d->off, strerror(errno));
    f->size = d->off;
    return KMS_OK;
}

kms_err audit_logfile_open(struct file *f, const char *dir, const char *region, const char *ext,
                           bool read_only)
{
    snprintf(f->path, sizeof(f->path), "%s/%s.%s", dir, region, ext);
    f->fd = read_only ? open(f->path, O_RDONLY | O_CLOEXEC)
                      : open(f->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    KMS_ENSURE(f->fd >= 0, KMS_ERR_IO, "%s: %s", f->path, strerror(errno));
    return KMS_OK;
}

