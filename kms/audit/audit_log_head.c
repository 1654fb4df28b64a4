/*
 * audit_log_head.c - the audit log's signing keys (.keys) and signed tree
 * heads (.heads): reading them at start-up, checking the one the log
 * resumes from, making new ones
 * (audit_log_internal.h; the contract is audit_log.h).
 */
#include "audit_log_internal.h"

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

kms_err audit_log_on_key(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
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

kms_err audit_log_gen_key(struct audit_log *log, struct p11_key_id *out_id, int64_t *out_t,
                          uint8_t **out_rec, size_t *out_len)
{
    struct p11_key_id id;
    char label[80], hex[33];
    int64_t t = now_ms();
    *out_rec = NULL;
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
            *out_rec = buf;
            *out_len = n;
        }
    }
    free(pem);
    if (rc != KMS_OK) {
        p11_key_destroy(log->tok, &id);
        return rc;
    }
    *out_id = id;
    *out_t = t;
    return KMS_OK;
}

kms_err audit_log_new_sign_key(struct audit_log *log)
{
    struct p11_key_id id;
    int64_t t = 0;
    uint8_t *buf = NULL;
    size_t n = 0;
    char hex[33];
    KMS_GUARD(audit_log_gen_key(log, &id, &t, &buf, &n));
    kms_err rc = audit_logfile_append(log, &log->keys, buf, n);
    free(buf);
    if (rc != KMS_OK) {
        p11_key_destroy(log->tok, &id);
        return rc;
    }
    p11_key_id_hex(&id, hex);
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
    /* In PostgreSQL only the sequencer may add a key (fenced like a head). */
    KMS_ENSURE(log->pg == NULL, KMS_ERR_FAILED_PRECONDITION,
               "region %s: the audit log is in PostgreSQL: its sequencer rotates the key by "
               "age (key_max_age_s)", log->region);
    return audit_log_new_sign_key(log);
}

/* ---- heads -------------------------------------------------------------------------- */

kms_err audit_log_on_head(struct audit_log *log, uint64_t index, off_t off, const uint8_t *p,
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
 * audit_log_on_head already matched against the events) must verify under a key of
 * this region listed in .keys and valid at its time: a head whose
 * signature was changed on disk would otherwise be served to auditors and
 * extended by every later head. Called by audit_log_open after the scan. */
kms_err audit_log_verify_resume_head(struct audit_log *log)
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
 * audit_log_verify_resume_head, and by auditors) against keys the HSM never held. */
kms_err audit_log_check_token_key(struct audit_log *log)
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
kms_err audit_log_check_torn_head(struct audit_log *log, const struct damage *d)
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

kms_err audit_log_sign_head(struct audit_log *log, uint64_t size, const audit_hash root, int64_t t,
                            uint8_t **out, size_t *out_len)
{
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
    sth.root_hash.data = (uint8_t *)root;
    sth.root_hash.len = 32;
    sth.timestamp_ms = t;
    sth.signature.data = der;
    sth.signature.len = der_len;
    sth.key_id = hex;
    size_t n = custos__v1__signed_tree_head__get_packed_size(&sth);
    uint8_t *buf = malloc(n);
    KMS_ENSURE(buf != NULL, KMS_ERR_NOMEM, "out of memory");
    custos__v1__signed_tree_head__pack(&sth, buf);
    *out = buf;
    *out_len = n;
    return KMS_OK;
}

/* Sign and persist a head for the current tree. Called by the writer only. */
kms_err audit_log_make_head(struct audit_log *log)
{
    uint64_t size = audit_tree_size(log->tree);
    audit_hash root;
    KMS_GUARD(audit_tree_root(log->tree, size, root));
    int64_t t = now_ms();
    if (t <= log->head_time_ms)
        t = log->head_time_ms + 1; /* timestamps never go backwards */
    if (log->cfg.key_max_age_s > 0 &&
        t - log->sign_key_since_ms > log->cfg.key_max_age_s * 1000) {
        kms_err krc = audit_log_new_sign_key(log);
        if (krc != KMS_OK)
            kms_log_error("audit", "region %s: audit key rotation failed (%s); keeping the old key",
                          log->region, kms_err_detail());
    }
    /* Never date a head before the key that signs it. */
    if (t < log->sign_key_since_ms)
        t = log->sign_key_since_ms;
    uint8_t *buf = NULL;
    size_t n = 0;
    KMS_GUARD(audit_log_sign_head(log, size, root, t, &buf, &n));
    kms_err rc = audit_logfile_append(log, &log->heads, buf, n);
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

