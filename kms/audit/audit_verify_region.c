/*
 * audit_verify_region.c - the offline verifier's back half
 * (audit_verify_finish): the bundles checked together. Consistency proofs
 * against every verified head; then per region: no two bundles disagree
 * about an entry, no head is older or smaller than the one kept in the
 * state, each head is proven to extend the one before it, and no entry is
 * missing. Only when all of that holds does the state learn of it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_verify_internal.h"

/* Root of the first m entries of b, if b holds them. */
static bool prefix_root(const struct bundle *b, uint64_t m, audit_hash out)
{
    if (b->tree == NULL || m == 0 || b->end < m)
        return false;
    return audit_tree_root(b->tree, m, out) == KMS_OK;
}

/* Every verified head: the state's first, then the bundles'. */
static size_t n_heads(const struct audit_verify *v)
{
    return (v->st ? audit_state_n_heads(v->st) : 0) + v->nb;
}

static const struct audit_head *head_at(const struct audit_verify *v, size_t i)
{
    size_t ns = v->st ? audit_state_n_heads(v->st) : 0;
    return i < ns ? audit_state_head(v->st, i) : &v->b[i - ns]->head;
}

/* The consistency proof of a bundle, from known_tree_size to its head,
 * checked against every verified head of that size (kept in the state or
 * in another bundle) and against the bundle's own entries when they hold
 * that prefix. */
static kms_err check_consistency(struct audit_verify *v, const struct bundle *b)
{
    const Custos__V1__ExportAuditLogResponse *m = b->msg;
    uint64_t k = m->known_tree_size, n = b->head.size;
    if (k == 0) {
        if (m->n_consistency_proof > 0)
            return fail(v, b->name, "a consistency proof without known_tree_size");
        return KMS_OK;
    }
    if (k > n)
        return fail(v, b->name,
                    "known_tree_size %" PRIu64 " is larger than the head's tree size %" PRIu64, k,
                    n);
    audit_hash p[AUDIT_PROOF_MAX];
    if (!audit_verify_proof_hashes(m->consistency_proof, m->n_consistency_proof, p))
        return fail(v, b->name, "malformed consistency proof");
    size_t checked = 0;
    for (size_t i = 0; i < n_heads(v); i++) {
        const struct audit_head *o = head_at(v, i);
        if (o->size != k || strcmp(o->region, b->head.region) != 0)
            continue;
        if (!audit_verify_consistency(k, n, o->root, b->head.root, (const audit_hash *)p,
                                      m->n_consistency_proof))
            return fail(v, b->name,
                        "consistency proof from tree_size %" PRIu64 " to %" PRIu64
                        " does not verify against the head of size %" PRIu64 " in %s",
                        k, n, k, o->src);
        checked++;
    }
    audit_hash own;
    if (prefix_root(b, k, own)) {
        if (!audit_verify_consistency(k, n, own, b->head.root, (const audit_hash *)p,
                                      m->n_consistency_proof))
            return fail(v, b->name,
                        "consistency proof from tree_size %" PRIu64 " to %" PRIu64
                        " does not verify against the bundle's own first %" PRIu64 " entries",
                        k, n, k);
        checked++;
    }
    if (checked == 0)
        return fail(v, b->name,
                    "consistency proof from tree_size %" PRIu64
                    " cannot be checked: no verified head of that size (give the bundle or the "
                    "--state that holds it)",
                    k);
    return KMS_OK;
}

struct leafref {
    uint64_t seq;
    size_t bundle, index;
};

static int leafref_cmp(const void *x, const void *y)
{
    const struct leafref *a = x, *b = y;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return a->bundle < b->bundle ? -1 : a->bundle > b->bundle;
}

/* Order of heads: by tree size, then time. */
static int head_order(const struct audit_head *a, const struct audit_head *b)
{
    if (a->size != b->size)
        return a->size < b->size ? -1 : 1;
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    return 0;
}

static int head_cmp(const void *x, const void *y)
{
    return head_order(*(const struct audit_head *const *)x, *(const struct audit_head *const *)y);
}

struct span {
    uint64_t first, end;
    const char *src;
};

static int span_cmp(const void *x, const void *y)
{
    const struct span *a = x, *b = y;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    return a->end < b->end ? -1 : a->end > b->end;
}

/* Is `later` (a bundle's head) proven to extend `earlier`? */
static bool extends(const struct audit_verify *v, const struct audit_head *earlier,
                    const struct audit_head *later)
{
    if (later->size == earlier->size)
        return memcmp(later->root, earlier->root, AUDIT_HASH_LEN) == 0;
    /* Any bundle under a head equal to `later` may carry the proof. */
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = v->b[i];
        if (b->head.size != later->size || memcmp(b->head.root, later->root, AUDIT_HASH_LEN) != 0)
            continue;
        /* Its consistency proof was checked against every head of the
         * known size, `earlier` included. */
        if (b->msg->known_tree_size == earlier->size)
            return true;
        audit_hash r;
        if (prefix_root(b, earlier->size, r) && memcmp(r, earlier->root, AUDIT_HASH_LEN) == 0)
            return true;
    }
    return false;
}

/* Does some bundle under `later` hold the first earlier->size entries, and
 * do they give another root? (A proof of a fork, not just of no link.) */
static const struct bundle *prefix_differs(const struct audit_verify *v,
                                           const struct audit_head *earlier,
                                           const struct audit_head *later)
{
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = v->b[i];
        audit_hash r;
        if (b->head.size == later->size && memcmp(b->head.root, later->root, AUDIT_HASH_LEN) == 0 &&
            prefix_root(b, earlier->size, r) && memcmp(r, earlier->root, AUDIT_HASH_LEN) != 0)
            return b;
    }
    return NULL;
}

/* 1. Two bundles never disagree about an entry. */
static kms_err check_agree(struct audit_verify *v, struct leafref *refs, size_t nrefs)
{
    qsort(refs, nrefs, sizeof(*refs), leafref_cmp);
    for (size_t i = 1; i < nrefs; i++) {
        const struct leafref *a = &refs[i - 1], *c = &refs[i];
        if (a->seq != c->seq ||
            memcmp(v->b[a->bundle]->leaf[a->index], v->b[c->bundle]->leaf[c->index],
                   AUDIT_HASH_LEN) == 0)
            continue;
        return fail(v, v->b[c->bundle]->name,
                    "entry seq %" PRIu64 " (index %zu in the bundle) differs from the same entry "
                    "in %s (spliced or forked exports)",
                    c->seq, c->index, v->b[a->bundle]->name);
    }
    return KMS_OK;
}

/* 2. No head older or smaller than the newest kept one; none that
 * contradicts a kept head of its size. */
static kms_err check_against_kept(struct audit_verify *v, const char *region,
                                  const struct audit_head *kept, const struct audit_head **heads,
                                  size_t nheads)
{
    char t1[40], t2[40];
    size_t ns = v->st ? audit_state_n_heads(v->st) : 0;
    for (size_t i = 0; i < nheads; i++) {
        const struct audit_head *h = heads[i];
        if (kept && (h->size < kept->size || h->ts < kept->ts))
            return fail(v, h->src,
                        "head of region %s (tree_size %" PRIu64 ", %s) is older or smaller than "
                        "the head kept in %s (tree_size %" PRIu64
                        ", %s): refusing an older, smaller head",
                        region, h->size, audit_iso_ms(h->ts, t1), audit_state_name(v->st),
                        kept->size, audit_iso_ms(kept->ts, t2));
        for (size_t j = 0; j < ns; j++) {
            const struct audit_head *o = audit_state_head(v->st, j);
            if (strcmp(o->region, region) == 0 && o->size == h->size &&
                memcmp(o->root, h->root, AUDIT_HASH_LEN) != 0)
                return fail(v, h->src,
                            "head of tree_size %" PRIu64 " has another root than the head of the "
                            "same size kept in %s: the log forked",
                            h->size, audit_state_name(v->st));
        }
    }
    return KMS_OK;
}

/* 3. The heads, smallest first, each extend the one before (starting at
 * the kept head), and time never goes backwards. *out_top: the last. */
static kms_err check_chain(struct audit_verify *v, const struct audit_head *kept,
                           const struct audit_head **heads, size_t nheads,
                           const struct audit_head **out_top)
{
    char t1[40], t2[40];
    qsort(heads, nheads, sizeof(*heads), head_cmp);
    const struct audit_head *prev = kept;
    for (size_t i = 0; i < nheads; i++) {
        const struct audit_head *h = heads[i];
        if (prev == NULL) {
            prev = h;
            continue;
        }
        if (h->ts < prev->ts)
            return fail(v, h->src,
                        "head tree_size %" PRIu64 " at %s is dated before the smaller head "
                        "(tree_size %" PRIu64 ", %s) in %s: time went backwards",
                        h->size, audit_iso_ms(h->ts, t1), prev->size, audit_iso_ms(prev->ts, t2),
                        prev->src);
        if (h->size == prev->size && memcmp(h->root, prev->root, AUDIT_HASH_LEN) != 0)
            return fail(v, h->src,
                        "head of tree_size %" PRIu64 " has another root than the head of the "
                        "same size in %s: the log forked",
                        h->size, prev->src);
        if (!extends(v, prev, h)) {
            const struct bundle *d = prefix_differs(v, prev, h);
            if (d)
                return fail(v, d->name,
                            "its first %" PRIu64 " entries do not give the root of the head of "
                            "tree_size %" PRIu64 " in %s: the log was rewritten or forked",
                            prev->size, prev->size, prev->src);
            return fail(v, h->src,
                        "nothing proves that this head (tree_size %" PRIu64
                        ") extends the head of tree_size %" PRIu64
                        " in %s (export it with --known-head or --known-state, or from seq 0)",
                        h->size, prev->size, prev->src);
        }
        prev = h;
    }
    *out_top = prev;
    return KMS_OK;
}

/* 4. Completeness: from 0 (or where the state has verified) to the newest
 * head, no entry missing. *out_covered: entries [0, it) are all there. */
static kms_err check_complete(struct audit_verify *v, const char *region,
                              const struct audit_head *top, struct span *spans, size_t nspans,
                              uint64_t *out_covered)
{
    uint64_t covered = 0;
    if (v->st)
        audit_state_verified(v->st, region, &covered);
    qsort(spans, nspans, sizeof(*spans), span_cmp);
    for (size_t i = 0; i < nspans; i++) {
        if (spans[i].first > covered)
            break;
        if (spans[i].end > covered)
            covered = spans[i].end;
    }
    *out_covered = covered;
    if (v->partial || top == NULL || covered >= top->size)
        return KMS_OK;
    uint64_t next = top->size;
    for (size_t i = 0; i < nspans; i++)
        if (spans[i].first > covered && spans[i].first < next)
            next = spans[i].first;
    if (covered == 0 && nspans == 0)
        return fail(v, top->src,
                    "entry seq 0 missing: the bundles of region %s hold no entries but the head "
                    "covers %" PRIu64 " (use --partial to verify heads alone)",
                    region, top->size);
    if (covered == 0 && next < top->size)
        return fail(v, spans[0].src,
                    "entry seq 0 missing: the bundles of region %s start at seq %" PRIu64
                    " (use --partial to verify a range)",
                    region, spans[0].first);
    if (next < top->size)
        return fail(v, NULL,
                    "region %s: entry seq %" PRIu64 " missing: no bundle holds seqs %" PRIu64
                    "..%" PRIu64 " (use --partial to verify a range)",
                    region, covered, covered, next - 1);
    return fail(v, top->src,
                "entry seq %" PRIu64 " missing: the entries of region %s end at seq %" PRIu64
                " but the head covers %" PRIu64
                " entries (the tail is missing; use --partial to verify a range)",
                covered, region, covered ? covered - 1 : 0, top->size);
}

/* Everything about one region across bundles and the state. */
static kms_err check_region(struct audit_verify *v, const char *region, uint64_t *out_verified_to)
{
    kms_err rc = KMS_OK;
    size_t nrefs = 0, nheads = 0, nspans = 0;
    for (size_t i = 0; i < v->nb; i++)
        if (strcmp(v->b[i]->head.region, region) == 0)
            nrefs += v->b[i]->n, nheads++;
    struct leafref *refs = calloc(nrefs ? nrefs : 1, sizeof(*refs));
    const struct audit_head **heads = calloc(nheads + 1, sizeof(*heads));
    struct span *spans = calloc(nheads + 1, sizeof(*spans));
    if (!refs || !heads || !spans) {
        rc = fail_nomem(v, NULL);
        goto done;
    }
    nrefs = nheads = 0;
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = v->b[i];
        if (strcmp(b->head.region, region) != 0)
            continue;
        heads[nheads++] = &b->head;
        if (b->n > 0)
            spans[nspans++] = (struct span){b->first, b->end, b->name};
        for (size_t j = 0; j < b->n; j++)
            refs[nrefs++] = (struct leafref){b->first + j, i, j};
    }
    const struct audit_head *kept = v->st ? audit_state_latest(v->st, region) : NULL, *top = NULL;
    KMS_GUARD_GOTO(check_agree(v, refs, nrefs), done);
    KMS_GUARD_GOTO(check_against_kept(v, region, kept, heads, nheads), done);
    KMS_GUARD_GOTO(check_chain(v, kept, heads, nheads, &top), done);
    KMS_GUARD_GOTO(check_complete(v, region, top, spans, nspans, out_verified_to), done);
done:
    free(refs);
    free(heads);
    free(spans);
    return rc;
}

kms_err audit_verify_finish(struct audit_verify *v)
{
    if (v->fail_rc != KMS_OK)
        return v->fail_rc;
    if (v->finished)
        return kms_err_set(KMS_ERR_USAGE, "audit_verify_finish called twice");
    v->finished = true;
    /* Consistency proofs first, against every head now verified. */
    for (size_t i = 0; i < v->nb; i++)
        KMS_GUARD(check_consistency(v, v->b[i]));
    v->regions = calloc(v->nb ? v->nb : 1, sizeof(*v->regions));
    if (v->regions == NULL)
        return fail_nomem(v, NULL);
    for (size_t i = 0; i < v->nb; i++) {
        const char *region = v->b[i]->head.region;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(v->b[j]->head.region, region) == 0;
        if (seen)
            continue;
        struct audit_verify_region *r = &v->regions[v->n_regions];
        KMS_GUARD(check_region(v, region, &r->verified_to));
        r->region = region;
        for (size_t j = 0; j < v->nb; j++)
            if (strcmp(v->b[j]->head.region, region) == 0 &&
                (r->newest == NULL || head_order(&v->b[j]->head, r->newest) > 0))
                r->newest = &v->b[j]->head;
        v->n_regions++;
    }
    /* Only now, with everything verified, does the state learn of it:
     * region by region, its heads in bundle order, then its range. */
    for (size_t i = 0; v->st && i < v->n_regions; i++) {
        const struct audit_verify_region *r = &v->regions[i];
        for (size_t j = 0; j < v->nb; j++)
            if (strcmp(v->b[j]->head.region, r->region) == 0 &&
                audit_state_add_head(v->st, &v->b[j]->head) != KMS_OK)
                return fail_nomem(v, NULL);
        if (audit_state_raise_verified(v->st, r->region, r->verified_to) != KMS_OK)
            return fail_nomem(v, NULL);
    }
    return KMS_OK;
}

size_t audit_verify_n_regions(const struct audit_verify *v)
{
    return v->n_regions;
}

const struct audit_verify_region *audit_verify_region_at(const struct audit_verify *v, size_t i)
{
    return i < v->n_regions ? &v->regions[i] : NULL;
}
