/*
 * audit_verify.c - the offline verifier's front half: a run's life, its
 * first failure and summaries, and each bundle checked on its own as it is
 * added (head, entries, membership). audit_verify_region.c checks them
 * together. Every check ends in fail(), which keeps the first failure;
 * callers only pass the kms_err up.
 */
#include "audit_verify.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "audit_log.h"
#include "audit_verify_internal.h"

kms_err audit_verify_fail_with(struct audit_verify *v, kms_err rc, const char *where,
                               const char *fmt, ...)
{
    if (v->fail_rc != KMS_OK)
        return v->fail_rc;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&v->what, fmt, ap) < 0) {
        v->what = NULL;
        rc = KMS_ERR_NOMEM;
    }
    va_end(ap);
    if (where && (v->where = strdup(where)) == NULL)
        rc = KMS_ERR_NOMEM;
    v->failure.where = v->where;
    v->failure.what = v->what ? v->what : "out of memory";
    return v->fail_rc = rc;
}

kms_err audit_verify_new(const struct audit_keyset *keys, struct audit_state *state, bool partial,
                         struct audit_verify **out)
{
    *out = calloc(1, sizeof(**out));
    if (*out == NULL)
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    (*out)->keys = keys;
    (*out)->st = state;
    (*out)->partial = partial;
    return KMS_OK;
}

static void bundle_free(struct bundle *b)
{
    if (b == NULL)
        return;
    if (b->msg)
        custos__v1__export_audit_log_response__free_unpacked(b->msg, NULL);
    free(b->leaf);
    audit_tree_free(b->tree);
    free(b->name);
    free(b);
}

void audit_verify_free(struct audit_verify *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->nb; i++)
        bundle_free(v->b[i]);
    free(v->b);
    free(v->regions);
    free(v->where);
    free(v->what);
    free(v);
}

const struct audit_verify_failure *audit_verify_failure(const struct audit_verify *v)
{
    return v->fail_rc != KMS_OK ? &v->failure : NULL;
}

/* ---- a bundle on its own -------------------------------------------------------------- */

/* The head: its shape, its key (known, of its region, valid at the head's
 * time) and its signature. */
static kms_err check_head(struct audit_verify *v, struct bundle *b)
{
    const Custos__V1__SignedTreeHead *h = b->msg->head;
    const char *where = b->name;
    char s1[96], s2[96], t[40], t1[40], t2[40];
    if (h == NULL)
        return fail(v, where, "no signed tree head");
    if (h->region == NULL || !audit_region_ok(h->region))
        return fail(v, where, "head region \"%s\" is not a region name",
                    audit_printable(h->region, s1, sizeof(s1)));
    if (h->root_hash.len != AUDIT_HASH_LEN)
        return fail(v, where, "head root hash is %zu bytes, not 32", h->root_hash.len);
    if (h->key_id == NULL || !audit_key_id_ok(h->key_id))
        return fail(v, where, "head key id \"%s\" is malformed",
                    audit_printable(h->key_id, s1, sizeof(s1)));
    if (h->signature.len == 0 || h->signature.len > AUDIT_SIG_MAX)
        return fail(v, where, "head signature invalid (%zu bytes)", h->signature.len);
    const struct audit_key *k = audit_keyset_find(v->keys, h->region, h->key_id);
    if (k == NULL)
        return fail(v, where,
                    "head signed by unknown key %s of region %s (fetch the keys again: "
                    "kmsctl audit keys --out-dir DIR)",
                    h->key_id, h->region);
    uint8_t sb[AUDIT_VERIFY_SIGNED_MAX];
    size_t n = audit_verify_head_signed_bytes(h, sb);
    if (!audit_key_verify(k, sb, n, h->signature.data, h->signature.len))
        return fail(v, where, "head signature invalid (key %s, %s)", h->key_id,
                    audit_printable(k->source, s2, sizeof(s2)));
    /* Signed, so the timestamp is the HSM's claim: it must fall within the
     * key's life. */
    if (h->timestamp_ms < k->not_before_ms ||
        (k->not_after_ms != 0 && h->timestamp_ms >= k->not_after_ms))
        return fail(v, where, "head timestamp %s is outside the validity of key %s (%s to %s)",
                    audit_iso_ms(h->timestamp_ms, t), h->key_id,
                    audit_iso_ms(k->not_before_ms, t1),
                    k->not_after_ms ? audit_iso_ms(k->not_after_ms, t2) : "now");
    struct audit_head *vh = &b->head;
    snprintf(vh->region, sizeof(vh->region), "%s", h->region);
    vh->size = h->tree_size;
    vh->ts = h->timestamp_ms;
    memcpy(vh->root, h->root_hash.data, AUDIT_HASH_LEN);
    snprintf(vh->key_id, sizeof(vh->key_id), "%s", h->key_id);
    memcpy(vh->sig, h->signature.data, h->signature.len);
    vh->sig_len = h->signature.len;
    vh->src = b->name;
    return KMS_OK;
}

bool audit_verify_proof_hashes(const ProtobufCBinaryData *p, size_t n,
                               audit_hash out[AUDIT_PROOF_MAX])
{
    if (n > AUDIT_PROOF_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i].len != AUDIT_HASH_LEN)
            return false;
        memcpy(out[i], p[i].data, AUDIT_HASH_LEN);
    }
    return true;
}

/* Entry i: the next seq after entry i - 1. */
static kms_err check_order(struct audit_verify *v, const struct bundle *b, size_t i)
{
    const Custos__V1__ExportAuditLogResponse *m = b->msg;
    uint64_t seq = m->entries[i]->seq, prev = m->entries[i - 1]->seq, want = prev + 1;
    if (seq <= prev)
        return fail(v, b->name,
                    "entries out of order at index %zu (seq %" PRIu64 " after seq %" PRIu64 ")", i,
                    seq, prev);
    if (seq == want)
        return KMS_OK;
    /* Say whether the missing one is elsewhere (reordered) or gone. */
    for (size_t j = i + 1; j < b->n; j++)
        if (m->entries[j]->seq == want)
            return fail(v, b->name,
                        "entries out of order at index %zu (seq %" PRIu64 " where seq %" PRIu64
                        " belongs; it is at index %zu)",
                        i, seq, want, j);
    return fail(v, b->name, "entry seq %" PRIu64 " missing (found %" PRIu64 " at index %zu)",
                want, seq, i);
}

/* Entry i decodes as an AuditEvent of its seq and of the head's region. */
static kms_err check_event(struct audit_verify *v, const struct bundle *b, size_t i)
{
    const Custos__V1__AuditEntry *e = b->msg->entries[i];
    char s1[96];
    Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(NULL, e->event.len, e->event.data);
    if (ev == NULL)
        return fail(v, b->name,
                    "entry seq %" PRIu64
                    " (index %zu in the bundle): does not decode as an AuditEvent",
                    e->seq, i);
    uint64_t ev_seq = ev->seq;
    bool region_ok = ev->region && strcmp(ev->region, b->head.region) == 0;
    audit_printable(ev->region, s1, sizeof(s1));
    custos__v1__audit_event__free_unpacked(ev, NULL);
    if (ev_seq != e->seq)
        return fail(v, b->name,
                    "entry seq %" PRIu64 " (index %zu in the bundle): the event says seq %" PRIu64,
                    e->seq, i, ev_seq);
    if (!region_ok)
        return fail(v, b->name,
                    "entry seq %" PRIu64
                    " (index %zu in the bundle): an event of region \"%s\" in the log of %s",
                    e->seq, i, s1, b->head.region);
    return KMS_OK;
}

/* The root of all entries is the head's (a bundle of the whole tree). */
static kms_err check_root(struct audit_verify *v, const struct bundle *b)
{
    const struct audit_head *h = &b->head;
    audit_hash root;
    if (b->n == 0) {
        /* The empty tree's root is SHA-256 of nothing. */
        EVP_Digest("", 0, root, NULL, EVP_sha256(), NULL);
    } else if (audit_tree_root(b->tree, b->n, root) != KMS_OK) {
        return fail(v, b->name, "cannot compute the root");
    }
    if (memcmp(root, h->root, AUDIT_HASH_LEN) == 0)
        return KMS_OK;
    char hex1[65], hex2[65];
    audit_hex(root, AUDIT_HASH_LEN, hex1);
    audit_hex(h->root, AUDIT_HASH_LEN, hex2);
    return fail(v, b->name,
                "the root recomputed from entries 0..%" PRIu64
                " (%s) does not match the signed head's root (%s)",
                h->size ? h->size - 1 : 0, hex1, hex2);
}

/* Entries: consecutive seqs, each an AuditEvent of this seq and region, each
 * in the tree (by inclusion proof, or by the root when the bundle holds the
 * whole tree). */
static kms_err check_entries(struct audit_verify *v, struct bundle *b)
{
    const Custos__V1__ExportAuditLogResponse *m = b->msg;
    const struct audit_head *h = &b->head;
    b->n = m->n_entries;
    b->leaf = calloc(b->n ? b->n : 1, sizeof(audit_hash));
    if (b->leaf == NULL)
        return fail_nomem(v, b->name);
    for (size_t i = 0; i < b->n; i++)
        if (m->entries[i]->n_inclusion_proof > 0)
            b->any_proof = true;
    b->first = b->n ? m->entries[0]->seq : 0;
    /* Whole tree: [0, tree_size) exactly, if the seqs turn out consecutive. */
    bool whole = b->n == h->size && (b->n == 0 || b->first == 0);
    for (size_t i = 0; i < b->n; i++) {
        const Custos__V1__AuditEntry *e = m->entries[i];
        uint64_t seq = e->seq;
        KMS_GUARD(i > 0 ? check_order(v, b, i) : KMS_OK);
        if (seq >= h->size)
            return fail(v, b->name,
                        "entry seq %" PRIu64 " (index %zu in the bundle) is beyond the head's "
                        "tree size %" PRIu64,
                        seq, i, h->size);
        KMS_GUARD(check_event(v, b, i));
        audit_leaf_hash(e->event.data, e->event.len, b->leaf[i]);
        if (e->n_inclusion_proof > 0) {
            audit_hash p[AUDIT_PROOF_MAX];
            if (!audit_verify_proof_hashes(e->inclusion_proof, e->n_inclusion_proof, p))
                return fail(v, b->name,
                            "entry seq %" PRIu64 " (index %zu in the bundle): malformed inclusion "
                            "proof",
                            seq, i);
            if (!audit_verify_inclusion(seq, h->size, b->leaf[i], (const audit_hash *)p,
                                        e->n_inclusion_proof, h->root))
                return fail(v, b->name,
                            "entry seq %" PRIu64
                            " (index %zu in the bundle): inclusion proof does not verify",
                            seq, i);
        } else if (!whole && b->any_proof) {
            return fail(v, b->name,
                        "entry seq %" PRIu64 " (index %zu in the bundle): no inclusion proof, and "
                        "the bundle does not hold the whole tree",
                        seq, i);
        }
    }
    b->end = b->n ? m->entries[b->n - 1]->seq + 1 : b->first;
    if (!whole && !b->any_proof && b->n > 0) {
        /* A range without proofs: nothing ties it to the head. Say which
         * entries keep it from being the whole tree. */
        if (b->first != 0)
            return fail(v, b->name,
                        "entry seq 0 missing: the bundle starts at seq %" PRIu64
                        ", carries no inclusion proofs, and its head covers %" PRIu64 " entries",
                        b->first, h->size);
        return fail(v, b->name,
                    "entry seq %" PRIu64 " missing: the bundle ends at seq %" PRIu64
                    " but its head covers %" PRIu64 " entries (and it carries no inclusion proofs)",
                    b->end, b->end - 1, h->size);
    }
    /* A prefix of the log as a tree: it gives the roots of smaller heads. */
    if (b->n > 0 && b->first == 0) {
        if (audit_tree_new(&b->tree) != KMS_OK)
            return fail_nomem(v, b->name);
        for (size_t i = 0; i < b->n; i++)
            if (audit_tree_append(b->tree, b->leaf[i]) != KMS_OK)
                return fail_nomem(v, b->name);
    }
    return whole ? check_root(v, b) : KMS_OK;
}

kms_err audit_verify_add_bundle(struct audit_verify *v, const char *name, const uint8_t *buf,
                                size_t len)
{
    if (v->fail_rc != KMS_OK)
        return v->fail_rc;
    if (v->finished)
        return kms_err_set(KMS_ERR_USAGE, "audit_verify_add_bundle after audit_verify_finish");
    struct bundle **grown = audit_grow(v->b, &v->cap_b, v->nb, sizeof(*grown), 8);
    if (grown == NULL)
        return fail_nomem(v, NULL);
    v->b = grown;
    struct bundle *b = calloc(1, sizeof(*b));
    if (b == NULL || (b->name = strdup(name)) == NULL) {
        free(b);
        return fail_nomem(v, NULL);
    }
    v->b[v->nb++] = b;
    b->msg = custos__v1__export_audit_log_response__unpack(NULL, len, buf);
    if (b->msg == NULL)
        return fail(v, b->name, "not an ExportAuditLogResponse: truncated or damaged (%zu bytes)",
                    len);
    KMS_GUARD(check_head(v, b));
    return check_entries(v, b);
}

size_t audit_verify_n_bundles(const struct audit_verify *v)
{
    return v->nb;
}

void audit_verify_bundle_at(const struct audit_verify *v, size_t i,
                            struct audit_verify_bundle *out)
{
    const struct bundle *b = v->b[i];
    out->name = b->name;
    out->head = &b->head;
    out->n_entries = b->n;
    out->first = b->first;
    out->end = b->end;
    out->whole = b->tree && b->n == b->head.size;
    out->known_tree_size = b->msg ? b->msg->known_tree_size : 0;
}

/* ---- heads in files ------------------------------------------------------------------- */

bool audit_verify_head_shape_ok(const Custos__V1__SignedTreeHead *h)
{
    return h && h->region && audit_region_ok(h->region) && h->root_hash.len == AUDIT_HASH_LEN &&
           h->signature.len > 0 && h->signature.len <= AUDIT_SIG_MAX && h->key_id &&
           audit_key_id_ok(h->key_id);
}

size_t audit_verify_head_signed_bytes(const Custos__V1__SignedTreeHead *h,
                                      uint8_t out[AUDIT_VERIFY_SIGNED_MAX])
{
    return audit_head_signed_bytes(h->region, h->tree_size, h->timestamp_ms, h->root_hash.data,
                                   out);
}

/* A bundle read as a SignedTreeHead either fails to decode (entries, field
 * 2, are not a varint) or has no signature: so try the head first. */
Custos__V1__SignedTreeHead *audit_verify_head_unpack(const uint8_t *buf, size_t len)
{
    Custos__V1__SignedTreeHead *h =
        len <= AUDIT_HEAD_FILE_MAX ? custos__v1__signed_tree_head__unpack(NULL, len, buf) : NULL;
    if (h && !audit_verify_head_shape_ok(h)) {
        custos__v1__signed_tree_head__free_unpacked(h, NULL);
        h = NULL;
    }
    if (h)
        return h;
    Custos__V1__ExportAuditLogResponse *b =
        custos__v1__export_audit_log_response__unpack(NULL, len, buf);
    if (b && audit_verify_head_shape_ok(b->head)) {
        /* A head of its own, freed apart from the bundle. */
        size_t n = custos__v1__signed_tree_head__get_packed_size(b->head);
        uint8_t *p = malloc(n ? n : 1);
        if (p) {
            custos__v1__signed_tree_head__pack(b->head, p);
            h = custos__v1__signed_tree_head__unpack(NULL, n, p);
            free(p);
        }
    }
    if (b)
        custos__v1__export_audit_log_response__free_unpacked(b, NULL);
    return h;
}
