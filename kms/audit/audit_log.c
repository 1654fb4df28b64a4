/*
 * audit_log.c - files, recovery, group commit and signed heads of one
 * region's audit log (see audit_log.h for the contract).
 */
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

struct audit_log {
    char region[64];
    struct p11_token *tok;
    struct audit_log_config cfg;
    struct file events, heads, keys;

    /* The tree keeps ~0.25 byte per event and the index 8 bytes per 256
     * events: older leaves are read back from the events file when a proof
     * needs them, so memory does not grow with the log. */
    struct audit_tree *tree;
    struct audit_index *index;

    pthread_mutex_t lock; /* guards everything below */
    size_t last_batch; /* events in the last committed batch */
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
    bool stopping;
    pthread_t writer;
    bool writer_running;

    uint8_t *head;        /* latest signed head, packed */
    size_t head_len;
    uint64_t head_size;   /* its tree size */
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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

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

/* ---- files ------------------------------------------------------------------ */

static kms_err write_all(int fd, const uint8_t *p, size_t n)
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

static kms_err sync_fd(int fd, const char *what)
{
    if (fdatasync(fd) != 0)
        return kms_err_set(KMS_ERR_IO, "audit fdatasync of %s: %s", what, strerror(errno));
    return KMS_OK;
}

static void frame(uint8_t head[FRAME_HEAD], const uint8_t *payload, size_t len, audit_hash out_hash)
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
static kms_err append_record(struct audit_log *log, struct file *f, const uint8_t *payload,
                             size_t len)
{
    uint8_t head[FRAME_HEAD];
    frame(head, payload, len, NULL);
    kms_err rc = write_all(f->fd, head, FRAME_HEAD);
    if (rc == KMS_OK)
        rc = write_all(f->fd, payload, len);
    if (rc == KMS_OK)
        rc = sync_fd(f->fd, f->path);
    if (rc == KMS_OK) {
        pthread_mutex_lock(&log->lock);
        f->size += (off_t)(FRAME_HEAD + len);
        pthread_mutex_unlock(&log->lock);
    }
    return rc;
}

typedef kms_err (*record_fn)(struct audit_log *log, uint64_t index, off_t off,
                             const uint8_t *payload, size_t len, const audit_hash hash);

/* The first damaged record of a file, if any. */
struct damage {
    off_t off; /* -1: none */
    uint64_t index;
    bool at_end; /* the damaged record is the file's last: a torn append */
};

/* Read every record of f up to the first damaged one (which it reports and
 * does not touch: whether damage may be cut off is decided by the caller,
 * after every file was read). A record that passes its check but does not
 * decode is an error, not damage: no crash produces that. */
static kms_err scan(struct audit_log *log, struct file *f, record_fn fn, struct damage *dmg)
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
static kms_err cut(struct file *f, const struct damage *d)
{
    KMS_ENSURE(ftruncate(f->fd, d->off) == 0 && fsync(f->fd) == 0, KMS_ERR_IO,
               "%s: cannot truncate at %lld: %s", f->path, (long long)d->off, strerror(errno));
    f->size = d->off;
    return KMS_OK;
}

static kms_err open_file(struct file *f, const char *dir, const char *region, const char *ext,
                         bool read_only)
{
    snprintf(f->path, sizeof(f->path), "%s/%s.%s", dir, region, ext);
    f->fd = read_only ? open(f->path, O_RDONLY | O_CLOEXEC)
                      : open(f->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    KMS_ENSURE(f->fd >= 0, KMS_ERR_IO, "%s: %s", f->path, strerror(errno));
    return KMS_OK;
}

/* ---- keys ----------------------------------------------------------------------- */

struct key_scan {
    Custos__V1__AuditKey **keys;
    size_t n;
};

/* Keep key record index of .keys for the check of the newest head. The
 * key before it (the previous record) is valid until this one begins. */
static kms_err scan_key_add(struct audit_log *log, uint64_t index, const Custos__V1__AuditKey *k)
{
    KMS_ENSURE(k->region != NULL && strcmp(k->region, log->region) == 0, KMS_ERR_IO,
               "%s: key record %llu is not a key of region %s", log->keys.path,
               (unsigned long long)index, log->region);
    EVP_PKEY *pk = NULL;
    BIO *b = k->public_key_pem ? BIO_new_mem_buf(k->public_key_pem, -1) : NULL;
    if (b != NULL)
        pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    KMS_ENSURE(pk != NULL, KMS_ERR_IO, "%s: key record %llu: the public key does not decode",
               log->keys.path, (unsigned long long)index);
    const struct audit_key *prev =
        log->scan_last_key[0] ? audit_keyset_find(log->scan_keys, log->region, log->scan_last_key)
                              : NULL;
    if (prev != NULL && prev->not_after_ms == 0 && strcmp(prev->key_id, k->key_id) != 0) {
        /* The previous key again, with the end of its validity: the set
         * keeps its entry and fills that in (audit_keyset_add). */
        struct audit_key ended = *prev;
        ended.not_after_ms = k->not_before_ms;
        EVP_PKEY_up_ref(ended.pk);
        if (audit_keyset_add(log->scan_keys, &ended) != KMS_OK) {
            EVP_PKEY_free(pk);
            return kms_err_set(KMS_ERR_IO, "%s: key record %llu: %s", log->keys.path,
                               (unsigned long long)index, kms_err_detail());
        }
    }
    struct audit_key ak = {.not_before_ms = k->not_before_ms, .pk = pk, .source = log->keys.path};
    snprintf(ak.region, sizeof(ak.region), "%s", k->region);
    snprintf(ak.key_id, sizeof(ak.key_id), "%s", k->key_id);
    /* audit_keyset_add takes pk in every case. */
    if (audit_keyset_add(log->scan_keys, &ak) != KMS_OK)
        return kms_err_set(KMS_ERR_IO, "%s: key record %llu: %s", log->keys.path,
                           (unsigned long long)index, kms_err_detail());
    snprintf(log->scan_last_key, sizeof(log->scan_last_key), "%s", k->key_id);
    return KMS_OK;
}

static kms_err on_key(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                      size_t len, const audit_hash h)
{
    (void)off;
    (void)h;
    Custos__V1__AuditKey *k = custos__v1__audit_key__unpack(NULL, len, p);
    KMS_ENSURE(k != NULL, KMS_ERR_IO, "%s: key record %llu does not decode", log->keys.path,
               (unsigned long long)index);
    uint8_t id[16];
    bool ok = strlen(k->key_id) == 32;
    for (int i = 0; ok && i < 16; i++) {
        unsigned v;
        ok = sscanf(k->key_id + 2 * i, "%2x", &v) == 1;
        id[i] = (uint8_t)v;
    }
    if (!ok) {
        custos__v1__audit_key__free_unpacked(k, NULL);
        return kms_err_set(KMS_ERR_IO, "%s: key record %llu has a bad key id", log->keys.path,
                           (unsigned long long)index);
    }
    kms_err rc = KMS_OK;
    if (log->scan_keys != NULL)
        rc = scan_key_add(log, index, k);
    if (rc == KMS_OK) {
        memcpy(log->sign_key.b, id, 16);
        log->sign_key_since_ms = k->not_before_ms;
    }
    custos__v1__audit_key__free_unpacked(k, NULL);
    return rc;
}

static kms_err new_sign_key(struct audit_log *log)
{
    struct p11_key_id id;
    char label[80], hex[33];
    int64_t t = now_ms();
    KMS_GUARD(p11_key_id_new(log->tok, &id));
    snprintf(label, sizeof(label), "custos:audit:%s:%lld", log->region, (long long)t);
    KMS_GUARD(p11_key_generate(log->tok, P11_KEY_EC_P256_SIGN, 0, &id, label));
    uint8_t *der = NULL;
    size_t der_len = 0;
    kms_err rc = p11_public_key_der(log->tok, &id, &der, &der_len);
    char *pem = NULL;
    if (rc == KMS_OK) {
        const uint8_t *p = der;
        EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)der_len);
        BIO *b = BIO_new(BIO_s_mem());
        char *data = NULL;
        long n = 0;
        if (pk && b && PEM_write_bio_PUBKEY(b, pk) == 1 && (n = BIO_get_mem_data(b, &data)) > 0) {
            pem = strndup(data, (size_t)n);
        }
        BIO_free(b);
        EVP_PKEY_free(pk);
        if (pem == NULL)
            rc = kms_err_set(KMS_ERR_INTERNAL, "cannot encode the audit public key");
    }
    free(der);
    if (rc == KMS_OK) {
        Custos__V1__AuditKey k = CUSTOS__V1__AUDIT_KEY__INIT;
        p11_key_id_hex(&id, hex);
        k.region = log->region;
        k.key_id = hex;
        k.public_key_pem = pem;
        k.not_before_ms = t;
        size_t n = custos__v1__audit_key__get_packed_size(&k);
        uint8_t *buf = malloc(n);
        if (buf == NULL) {
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        } else {
            custos__v1__audit_key__pack(&k, buf);
            rc = append_record(log, &log->keys, buf, n);
            free(buf);
        }
    }
    free(pem);
    if (rc != KMS_OK) {
        p11_key_destroy(log->tok, &id);
        return rc;
    }
    /* The old private key signs nothing any more; kept, it could sign heads
     * dated inside its old validity. Its public half lives on in .keys. */
    bool rotating = log->sign_key_since_ms != 0;
    struct p11_key_id old = log->sign_key;
    log->sign_key = id;
    log->sign_key_since_ms = t;
    if (rotating && p11_key_destroy(log->tok, &old) != KMS_OK)
        kms_log_warn("audit", "region %s: old audit key not destroyed: %s", log->region,
                     kms_err_detail());
    kms_log_info("audit", "region %s: new audit signing key %s", log->region, hex);
    return KMS_OK;
}

kms_err audit_log_rotate_key(struct audit_log *log)
{
    return new_sign_key(log);
}

/* ---- heads -------------------------------------------------------------------------- */

static kms_err on_head(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
                       size_t len, const audit_hash h)
{
    (void)h;
    Custos__V1__SignedTreeHead *sth = custos__v1__signed_tree_head__unpack(NULL, len, p);
    KMS_ENSURE(sth != NULL, KMS_ERR_IO, "%s: head %llu does not decode", log->heads.path,
               (unsigned long long)index);
    kms_err rc = KMS_OK;
    audit_hash root;
    KMS_ENSURE_GOTO(sth->tree_size <= audit_tree_size(log->tree) && sth->root_hash.len == 32 &&
                        sth->tree_size >= log->head_size,
                    done, KMS_ERR_IO, "%s: head %llu does not fit the events", log->heads.path,
                    (unsigned long long)index);
    KMS_GUARD_GOTO(audit_tree_root(log->tree, sth->tree_size, root), done);
    KMS_ENSURE_GOTO(memcmp(root, sth->root_hash.data, 32) == 0, done, KMS_ERR_IO,
                    "%s: head %llu (size %llu) does not match the events: the log was altered",
                    log->heads.path, (unsigned long long)index,
                    (unsigned long long)sth->tree_size);
    free(log->head);
    log->head = malloc(len);
    KMS_ENSURE_GOTO(log->head != NULL, done, KMS_ERR_NOMEM, "out of memory");
    memcpy(log->head, p, len);
    log->head_len = len;
    log->head_size = sth->tree_size;
    log->head_time_ms = sth->timestamp_ms;
    log->head_index = index;
    log->head_off = off;
done:
    custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    return rc;
}

/* The head the log resumes from (the newest one the scan kept, whose root
 * on_head already matched against the events) must verify under a key of
 * this region listed in .keys and valid at its time: a head whose
 * signature was changed on disk would otherwise be served to auditors and
 * extended by every later head. Called by audit_log_open after the scan. */
static kms_err verify_resume_head(struct audit_log *log)
{
    if (log->head == NULL)
        return KMS_OK;
    Custos__V1__SignedTreeHead *sth =
        custos__v1__signed_tree_head__unpack(NULL, log->head_len, log->head);
    KMS_ENSURE(sth != NULL, KMS_ERR_IO, "%s: head %llu does not decode", log->heads.path,
               (unsigned long long)log->head_index);
    kms_err rc = KMS_OK;
    char what[700], t[40];
    snprintf(what, sizeof(what), "%s: the newest signed head (record %llu at offset %lld, tree "
             "size %llu)", log->heads.path, (unsigned long long)log->head_index,
             (long long)log->head_off, (unsigned long long)sth->tree_size);
    KMS_ENSURE_GOTO(sth->region != NULL && strcmp(sth->region, log->region) == 0, done,
                    KMS_ERR_IO, "%s names another region: the log was altered", what);
    const struct audit_key *k =
        sth->key_id ? audit_keyset_find(log->scan_keys, log->region, sth->key_id) : NULL;
    KMS_ENSURE_GOTO(k != NULL, done, KMS_ERR_IO,
                    "%s is signed by key %.64s, which %s does not list: the log was altered", what,
                    sth->key_id ? sth->key_id : "(none)", log->keys.path);
    uint8_t sb[13 + 1 + 255 + 48];
    size_t n = audit_head_signed_bytes(log->region, sth->tree_size, sth->timestamp_ms,
                                       sth->root_hash.data, sb);
    KMS_ENSURE_GOTO(audit_key_verify(k, sb, n, sth->signature.data, sth->signature.len), done,
                    KMS_ERR_IO,
                    "%s does not verify: its signature is invalid under audit key %s of %s: the "
                    "log was altered",
                    what, k->key_id, log->keys.path);
    KMS_ENSURE_GOTO(sth->timestamp_ms >= k->not_before_ms &&
                        (k->not_after_ms == 0 || sth->timestamp_ms < k->not_after_ms),
                    done, KMS_ERR_IO,
                    "%s is dated %s, outside the validity of its key %s: the log was altered",
                    what, audit_iso_ms(sth->timestamp_ms, t), k->key_id);
done:
    custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    return rc;
}

/* The newest key of .keys must be the public half of the signing key in
 * the token: otherwise .keys was replaced, and heads would be checked (by
 * verify_resume_head, and by auditors) against keys the HSM never held. */
static kms_err check_token_key(struct audit_log *log)
{
    const struct audit_key *k = audit_keyset_find(log->scan_keys, log->region, log->scan_last_key);
    KMS_ENSURE(k != NULL, KMS_ERR_INTERNAL, "%s: no key kept by the scan", log->keys.path);
    uint8_t *der = NULL;
    size_t der_len = 0;
    KMS_GUARD(p11_public_key_der(log->tok, &log->sign_key, &der, &der_len));
    const uint8_t *p = der;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)der_len);
    free(der);
    bool same = pk != NULL && EVP_PKEY_eq(pk, k->pk) == 1;
    EVP_PKEY_free(pk);
    KMS_ENSURE(same, KMS_ERR_IO,
               "%s: audit key %s is not the public half of the signing key in token '%s': the "
               "keys file was altered",
               log->keys.path, k->key_id, p11_token_label(log->tok));
    return KMS_OK;
}

/* A damaged last head record is cut off as a torn append, unless it is a
 * whole head of this log: complete, decoding, naming this region, its root
 * that of the events at its size, its key id (the last field, so a tail of
 * zeros left by a crash spoils it) one of .keys. A crash leaves a short
 * record or garbage (zeros, stale bytes) that does not decode so; a record
 * like that whose check bytes do not match had bytes changed after it was
 * written (its signature, say). Cutting it off would hide the edit. */
static kms_err check_torn_head(struct audit_log *log, const struct damage *d)
{
    uint8_t fh[FRAME_HEAD];
    struct stat st;
    if (d->off < 0 || fstat(log->heads.fd, &st) != 0 ||
        pread(log->heads.fd, fh, FRAME_HEAD, d->off) != FRAME_HEAD)
        return KMS_OK;
    size_t len = (size_t)get_be(fh, 4);
    if (len == 0 || len > AUDIT_RECORD_MAX || st.st_size - d->off - FRAME_HEAD != (off_t)len)
        return KMS_OK; /* short or impossible: torn */
    uint8_t *p = malloc(len);
    KMS_ENSURE(p != NULL, KMS_ERR_NOMEM, "out of memory");
    Custos__V1__SignedTreeHead *sth = NULL;
    if (pread(log->heads.fd, p, len, d->off + FRAME_HEAD) == (ssize_t)len)
        sth = custos__v1__signed_tree_head__unpack(NULL, len, p);
    free(p);
    bool whole = false;
    audit_hash root;
    if (sth != NULL && sth->region != NULL && strcmp(sth->region, log->region) == 0 &&
        sth->key_id != NULL && audit_key_id_ok(sth->key_id) &&
        audit_keyset_find(log->scan_keys, log->region, sth->key_id) != NULL &&
        sth->root_hash.len == 32 && sth->tree_size <= audit_tree_size(log->tree) &&
        audit_tree_root(log->tree, sth->tree_size, root) == KMS_OK)
        whole = memcmp(root, sth->root_hash.data, 32) == 0;
    kms_err_clear();
    if (sth != NULL)
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    KMS_ENSURE(!whole, KMS_ERR_IO,
               "%s: the last record (head %llu at offset %lld) is a whole head of this log but "
               "its check bytes do not match: it was edited, not torn: the log was altered",
               log->heads.path, (unsigned long long)d->index, (long long)d->off);
    return KMS_OK;
}

/* Sign and persist a head for the current tree. Called by the writer only. */
static kms_err make_head(struct audit_log *log)
{
    uint64_t size = audit_tree_size(log->tree);
    audit_hash root;
    KMS_GUARD(audit_tree_root(log->tree, size, root));
    int64_t t = now_ms();
    if (t <= log->head_time_ms)
        t = log->head_time_ms + 1; /* timestamps never go backwards */
    if (log->cfg.key_max_age_s > 0 &&
        t - log->sign_key_since_ms > log->cfg.key_max_age_s * 1000) {
        kms_err krc = new_sign_key(log);
        if (krc != KMS_OK)
            kms_log_error("audit", "region %s: audit key rotation failed (%s); keeping the old key",
                          log->region, kms_err_detail());
    }
    /* Never date a head before the key that signs it. */
    if (t < log->sign_key_since_ms)
        t = log->sign_key_since_ms;
    uint8_t signed_bytes[13 + 1 + 255 + 48], digest[32], raw[64], der[80];
    size_t sl = audit_head_signed_bytes(log->region, size, t, root, signed_bytes), der_len = 0;
    SHA256(signed_bytes, sl, digest);
    KMS_GUARD(p11_ecdsa_sign(log->tok, &log->sign_key, digest, raw));
    KMS_GUARD(p11_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len));

    char hex[33];
    p11_key_id_hex(&log->sign_key, hex);
    Custos__V1__SignedTreeHead sth = CUSTOS__V1__SIGNED_TREE_HEAD__INIT;
    sth.region = log->region;
    sth.tree_size = size;
    sth.root_hash.data = root;
    sth.root_hash.len = 32;
    sth.timestamp_ms = t;
    sth.signature.data = der;
    sth.signature.len = der_len;
    sth.key_id = hex;
    size_t n = custos__v1__signed_tree_head__get_packed_size(&sth);
    uint8_t *buf = malloc(n);
    KMS_ENSURE(buf != NULL, KMS_ERR_NOMEM, "out of memory");
    custos__v1__signed_tree_head__pack(&sth, buf);
    kms_err rc = append_record(log, &log->heads, buf, n);
    if (rc != KMS_OK) {
        free(buf);
        return rc;
    }
    pthread_mutex_lock(&log->lock);
    free(log->head);
    log->head = buf;
    log->head_len = n;
    log->head_size = size;
    log->head_time_ms = t;
    log->stats.heads++;
    pthread_mutex_unlock(&log->lock);
    return KMS_OK;
}

/* ---- events --------------------------------------------------------------------------- */

static kms_err on_event(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
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

/* Tell the asynchronous submitters of q's events whether they are durable. */
static void pending_notify(const struct pending *q, bool durable)
{
    for (size_t i = 0; i < q->n; i++)
        if (q->waiters[i].fn)
            q->waiters[i].fn(q->waiters[i].arg, durable);
}

static void pending_free(struct pending *q)
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
    ev->seq = log->next_seq;
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
        frame(rec, rec + FRAME_HEAD, len, h);
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
static void fail_batch(struct audit_log *log)
{
    pending_notify(&log->queue, false);
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

static void *writer_main(void *arg)
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
        /* Group commit with a short wait when others are committing too:
         * fewer, larger fdatasyncs, each costing kernel time and a wake of
         * every waiter. A lone request (last batch of one) never waits. */
        if (log->cfg.commit_delay_us > 0 && log->last_batch > 1 && log->queue.n > 0 &&
            !log->stopping) {
            struct timespec d = {0, (long)log->cfg.commit_delay_us * 1000};
            pthread_mutex_unlock(&log->lock);
            nanosleep(&d, NULL);
            pthread_mutex_lock(&log->lock);
        }
        /* Swap the queue out; appends continue into the empty one. */
        struct pending w = log->queue;
        log->queue = log->writing;
        log->queue.len = log->queue.n = 0;
        log->writing = w;
        uint64_t end = log->next_seq;
        bool stop = log->stopping;
        pthread_mutex_unlock(&log->lock);

        kms_err rc = KMS_OK;
        bool written = false;
        if (w.n > 0) {
            rc = write_all(log->events.fd, w.buf, w.len);
            if (rc == KMS_OK) {
                uint64_t t0 = kms_metrics_now_ns();
                rc = sync_fd(log->events.fd, log->events.path);
                if (rc == KMS_OK)
                    kms_metrics_audit_batch(log->metrics_id, w.n, kms_metrics_now_ns() - t0);
            }
            written = rc == KMS_OK;
            size_t pos = 0;
            for (size_t i = 0; rc == KMS_OK && i < w.n; i++) {
                rc = audit_tree_append(log->tree, w.hashes[i]);
                if (rc == KMS_OK)
                    rc = audit_index_push(log->index, log->events.size + (off_t)pos);
                pos += FRAME_HEAD + (size_t)get_be(w.buf + pos, 4);
            }
        }
        pthread_mutex_lock(&log->lock);
        log->writing = w;
        if (w.n > 0) {
            if (rc == KMS_OK) {
                log->events.size += (off_t)w.len;
                log->durable_seq = end;
                log->stats.events += w.n;
                log->stats.batches++;
                log->last_batch = w.n;
                if (w.n > log->stats.max_batch)
                    log->stats.max_batch = w.n;
                pthread_cond_broadcast(&log->done);
                /* One wake per batch for the submitters; outside the lock,
                 * where appends go on into the other queue. */
                pthread_mutex_unlock(&log->lock);
                pending_notify(&w, true);
                pthread_mutex_lock(&log->lock);
            } else {
                /* Durable on disk but not in the tree (out of memory): the
                 * next heads would sign a wrong root. Stop for good; a
                 * restart rebuilds the tree from the file. */
                if (written)
                    log->broken = true;
                pending_notify(&w, false);
                fail_batch(log);
                continue;
            }
        }
        /* A head for every new state: after head_every_events events, after
         * head_every_ms with anything new, at shutdown, and once at start
         * when the log has no head for its current size. */
        bool head_due = log->head == NULL ||
                        (log->durable_seq > log->head_size &&
                         (log->durable_seq - log->head_size >= log->cfg.head_every_events ||
                          now_ms() >= log->head_time_ms + (int64_t)log->cfg.head_every_ms ||
                          stop));
        if (head_due) {
            pthread_mutex_unlock(&log->lock);
            kms_err hrc = make_head(log);
            pthread_mutex_lock(&log->lock);
            if (hrc != KMS_OK) {
                kms_log_error("audit", "region %s: no signed head: %s", log->region,
                              kms_err_detail());
                if (hrc == KMS_ERR_IO || hrc == KMS_ERR_NOSPC)
                    fail_batch(log);
                else /* an HSM hiccup: try again after a period, do not spin */
                    log->head_time_ms = now_ms();
            }
        } else if (now_ms() >= log->head_time_ms + (int64_t)log->cfg.head_every_ms) {
            /* Nothing new to sign: wait a whole period again. */
            log->head_time_ms = now_ms();
        }
        if (stop && log->queue.n == 0)
            break;
    }
    pthread_mutex_unlock(&log->lock);
    return NULL;
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
    KMS_GUARD(open_file(&log->keys, dir, region, "keys", read_only));
    KMS_GUARD(open_file(&log->events, dir, region, "events", read_only));
    KMS_GUARD(audit_index_new(log->events.fd, log->events.path, &log->index));
    KMS_GUARD(audit_tree_new_sparse(audit_index_leaves, log->index, &log->tree));
    KMS_GUARD(open_file(&log->heads, dir, region, "heads", read_only));
    KMS_GUARD(audit_keyset_new(&log->scan_keys));
    KMS_GUARD(scan(log, &log->keys, on_key, dk));
    /* A damaged key record anywhere but at the very end is not a crash. */
    KMS_ENSURE(dk->off < 0 || dk->at_end, KMS_ERR_IO, "%s: record %llu at offset %lld is damaged",
               log->keys.path, (unsigned long long)dk->index, (long long)dk->off);
    KMS_GUARD(scan(log, &log->events, on_event, de));
    /* Heads are checked against the events read so far: one that covers a
     * damaged event proves the damage is in acknowledged, signed history. */
    rc = scan(log, &log->heads, on_head, dh);
    if (rc != KMS_OK && de->off >= 0)
        rc = kms_err_set(KMS_ERR_IO,
                         "%s: record %llu at offset %lld is damaged and signed heads cover it: "
                         "the log was altered",
                         log->events.path, (unsigned long long)de->index, (long long)de->off);
    if (rc != KMS_OK)
        return rc;
    KMS_ENSURE(dh->off < 0 || dh->at_end, KMS_ERR_IO, "%s: record %llu at offset %lld is damaged",
               log->heads.path, (unsigned long long)dh->index, (long long)dh->off);
    KMS_GUARD(check_torn_head(log, dh));
    KMS_GUARD(verify_resume_head(log));
    return rc;
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
    snprintf(log->region, sizeof(log->region), "%s", region);
    log->tok = tok;
    log->cfg = *cfg;
    log->metrics_id = kms_metrics_audit(region);
    log->events.fd = log->heads.fd = log->keys.fd = -1;
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->work, NULL);
    pthread_cond_init(&log->done, NULL);
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
        KMS_GUARD_GOTO(cut(files[i], dmgs[i]), fail);
        snprintf(torn_detail[i], sizeof(torn_detail[i]),
                 "torn tail of %s truncated at offset %lld (record %llu, %lld bytes dropped)",
                 strrchr(files[i]->path, '/') + 1, (long long)dmgs[i]->off,
                 (unsigned long long)dmgs[i]->index, (long long)(was - dmgs[i]->off));
    }
    if (log->keys.size == 0 ||
        (cfg->key_max_age_s > 0 && now_ms() - log->sign_key_since_ms > cfg->key_max_age_s * 1000)) {
        KMS_GUARD_GOTO(new_sign_key(log), fail);
    } else {
        bool exists = false;
        KMS_GUARD_GOTO(p11_key_exists(tok, &log->sign_key, &exists), fail);
        KMS_ENSURE_GOTO(exists, fail, KMS_ERR_CONFIG,
                        "region %s: the audit signing key is missing from token '%s'", region,
                        p11_token_label(tok));
        KMS_GUARD_GOTO(check_token_key(log), fail);
    }
    audit_keyset_free(log->scan_keys);
    log->scan_keys = NULL;
    log->next_seq = log->durable_seq = audit_tree_size(log->tree);
    if (log->head == NULL)
        log->head_time_ms = 0;

    KMS_ENSURE_GOTO(pthread_create(&log->writer, NULL, writer_main, log) == 0, fail,
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
     * by make check-tsan: this read raced with make_head). */
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
    pending_free(&log->queue);
    pending_free(&log->writing);
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
    out->failed = log->failed;
    pthread_mutex_unlock(&log->lock);
}
