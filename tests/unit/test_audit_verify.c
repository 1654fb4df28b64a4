/*
 * test_audit_verify.c - the offline verifier (audit_verify.h) on bundles made
 * here: real ECDSA P-256 heads over audit_head_signed_bytes, entries that are
 * packed AuditEvents of their seq and region, proofs from audit_merkle.h.
 * Honest bundles verify; each tamper case is refused with the message that
 * names it and its position (file, seq, index in the bundle). Also the key
 * file format (audit_keyset.h) and the state (audit_state.h) it relies on.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit_keyset.h"
#include "audit_log.h"
#include "audit_merkle.h"
#include "audit_state.h"
#include "audit_verify.h"

#define T0 1795694989000LL /* not_before of the keys */
#define TS(k) (T0 + 1000LL * (k))
#define LOG_N 40
#define MAXE 64

static const char KID_EU[] = "1a66b3bbb58a190a4d501ccbf1ca9ef9";
static const char KID_EU2[] = "2b77c4ccc69b2a1b5e612ddc02dbaf0a";
static const char KID_US[] = "3c88d5ddd7ac3b2c6f723eed13ecb01b";

/* A region's log as kmsd would keep it: the events and their tree. */
struct tlog {
    const char *region;
    uint8_t *ev[LOG_N];
    size_t ev_len[LOG_N];
    struct audit_tree *tree;
};

static EVP_PKEY *key_eu, *key_eu2, *key_us;
static struct tlog eu, eu_other, us; /* eu_other: the same region, another history */
static struct audit_keyset *keys;    /* key_eu and key_us, valid from T0 on */

static void tlog_init(struct tlog *l, const char *region, const char *tag)
{
    l->region = region;
    ck_assert_int_eq(audit_tree_new(&l->tree), KMS_OK);
    for (uint64_t i = 0; i < LOG_N; i++) {
        Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
        char detail[32];
        snprintf(detail, sizeof(detail), "%s %u", tag, (unsigned)i);
        ev.seq = i;
        ev.time_ms = TS(i);
        ev.region = (char *)region;
        ev.operation = (char *)"Encrypt";
        ev.outcome = (char *)"ok";
        ev.detail = detail; /* the last field: flipping the last byte keeps it decodable */
        l->ev_len[i] = custos__v1__audit_event__get_packed_size(&ev);
        l->ev[i] = malloc(l->ev_len[i]);
        ck_assert_ptr_nonnull(l->ev[i]);
        custos__v1__audit_event__pack(&ev, l->ev[i]);
        audit_hash h;
        audit_leaf_hash(l->ev[i], l->ev_len[i], h);
        ck_assert_int_eq(audit_tree_append(l->tree, h), KMS_OK);
    }
}

static void tlog_free(struct tlog *l)
{
    for (size_t i = 0; i < LOG_N; i++)
        free(l->ev[i]);
    audit_tree_free(l->tree);
}

static EVP_PKEY *p256(void)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    ck_assert_ptr_nonnull(pk);
    return pk;
}

/* pk as a key file block, added to ks (source "keys.pem"). */
static kms_err add_key(struct audit_keyset *ks, const char *region, const char *id, EVP_PKEY *pk,
                       int64_t not_before, int64_t not_after)
{
    BIO *bio = BIO_new(BIO_s_mem());
    ck_assert(PEM_write_bio_PUBKEY(bio, pk) == 1);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)n);
    BIO_free(bio);
    ck_assert(audit_key_pem_ok(pem));
    Custos__V1__AuditKey k = CUSTOS__V1__AUDIT_KEY__INIT;
    k.region = (char *)region;
    k.key_id = (char *)id;
    k.public_key_pem = pem;
    k.not_before_ms = not_before;
    k.not_after_ms = not_after;
    char *text = audit_key_file_text(&k);
    ck_assert_ptr_nonnull(text);
    kms_err rc = audit_keyset_parse(ks, "keys.pem", text, strlen(text));
    free(text);
    free(pem);
    return rc;
}

static void setup(void)
{
    key_eu = p256();
    key_eu2 = p256();
    key_us = p256();
    tlog_init(&eu, "eu-west", "event");
    tlog_init(&eu_other, "eu-west", "other");
    tlog_init(&us, "us-east", "event");
    ck_assert_int_eq(audit_keyset_new(&keys), KMS_OK);
    ck_assert_int_eq(add_key(keys, "eu-west", KID_EU, key_eu, T0, 0), KMS_OK);
    ck_assert_int_eq(add_key(keys, "us-east", KID_US, key_us, T0, 0), KMS_OK);
}

static struct blob {
    const char *name;
    uint8_t *p;
    size_t n;
} made[32];
static size_t n_made;

static void teardown(void)
{
    for (size_t i = 0; i < n_made; i++)
        free(made[i].p);
    n_made = 0;
    audit_keyset_free(keys);
    tlog_free(&eu);
    tlog_free(&eu_other);
    tlog_free(&us);
    EVP_PKEY_free(key_eu);
    EVP_PKEY_free(key_eu2);
    EVP_PKEY_free(key_us);
}

/* ---- making bundles ------------------------------------------------------------------- */

struct entry_spec {
    const struct tlog *log; /* whose event bytes */
    uint64_t seq, ev;       /* the entry's seq; the seq of the event it carries */
    bool flip;              /* flip the event's last byte */
};

/* A bundle: a head over the first `size` leaves of log at time ts, and the
 * entries listed, with proofs (against log's tree) if asked. */
struct bspec {
    const struct tlog *log;
    uint64_t size;
    int64_t ts;
    EVP_PKEY *key;
    const char *key_id;
    struct entry_spec e[MAXE];
    size_t ne;
    bool proofs, flip_sig, flip_cons;
    uint64_t known; /* consistency proof from this size */
};

static struct bspec spec(const struct tlog *l, uint64_t size, int64_t ts)
{
    struct bspec s;
    memset(&s, 0, sizeof(s));
    s.log = l;
    s.size = size;
    s.ts = ts;
    s.key = l == &us ? key_us : key_eu;
    s.key_id = l == &us ? KID_US : KID_EU;
    return s;
}

static void add_range(struct bspec *s, uint64_t first, uint64_t count)
{
    for (uint64_t i = first; i < first + count; i++)
        s->e[s->ne++] = (struct entry_spec){s->log, i, i, false};
}

static void drop(struct bspec *s, size_t index)
{
    memmove(&s->e[index], &s->e[index + 1], (s->ne - index - 1) * sizeof(s->e[0]));
    s->ne--;
}

static size_t sign(EVP_PKEY *pk, const uint8_t *msg, size_t len, uint8_t *sig, size_t cap)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    size_t sl = cap;
    ck_assert(EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, pk) == 1);
    ck_assert(EVP_DigestSign(c, sig, &sl, msg, len) == 1);
    EVP_MD_CTX_free(c);
    return sl;
}

static struct blob make(const char *name, const struct bspec *s)
{
    Custos__V1__ExportAuditLogResponse r = CUSTOS__V1__EXPORT_AUDIT_LOG_RESPONSE__INIT;
    Custos__V1__SignedTreeHead h = CUSTOS__V1__SIGNED_TREE_HEAD__INIT;
    audit_hash root, cons[AUDIT_PROOF_MAX];
    uint8_t signed_bytes[AUDIT_VERIFY_SIGNED_MAX], sig[80];
    ck_assert_int_eq(audit_tree_root(s->log->tree, s->size, root), KMS_OK);
    size_t sbl = audit_head_signed_bytes(s->log->region, s->size, s->ts, root, signed_bytes);
    size_t sl = sign(s->key, signed_bytes, sbl, sig, sizeof(sig));
    if (s->flip_sig)
        sig[sl - 1] ^= 1; /* inside s: still DER, no longer the signature */
    h.region = (char *)s->log->region;
    h.tree_size = s->size;
    h.root_hash = (ProtobufCBinaryData){AUDIT_HASH_LEN, root};
    h.timestamp_ms = s->ts;
    h.signature = (ProtobufCBinaryData){sl, sig};
    h.key_id = (char *)s->key_id;
    r.head = &h;

    struct work {
        Custos__V1__AuditEntry e;
        uint8_t ev[256];
        audit_hash p[AUDIT_PROOF_MAX];
        ProtobufCBinaryData pb[AUDIT_PROOF_MAX];
    } *w = calloc(s->ne + 1, sizeof(*w));
    Custos__V1__AuditEntry **ep = calloc(s->ne + 1, sizeof(*ep));
    ProtobufCBinaryData cb[AUDIT_PROOF_MAX];
    ck_assert(w && ep);
    for (size_t i = 0; i < s->ne; i++) {
        const struct entry_spec *es = &s->e[i];
        custos__v1__audit_entry__init(&w[i].e);
        size_t len = es->log->ev_len[es->ev];
        ck_assert_uint_le(len, sizeof(w[i].ev));
        memcpy(w[i].ev, es->log->ev[es->ev], len);
        if (es->flip)
            w[i].ev[len - 1] ^= 1;
        w[i].e.seq = es->seq;
        w[i].e.event = (ProtobufCBinaryData){len, w[i].ev};
        if (s->proofs && es->seq < s->size) {
            size_t np = 0;
            ck_assert_int_eq(audit_tree_inclusion(s->log->tree, es->seq, s->size, w[i].p, &np),
                             KMS_OK);
            for (size_t j = 0; j < np; j++)
                w[i].pb[j] = (ProtobufCBinaryData){AUDIT_HASH_LEN, w[i].p[j]};
            w[i].e.inclusion_proof = w[i].pb;
            w[i].e.n_inclusion_proof = np;
        }
        ep[i] = &w[i].e;
    }
    r.entries = ep;
    r.n_entries = s->ne;
    if (s->known) {
        size_t np = 0;
        ck_assert_int_eq(audit_tree_consistency(s->log->tree, s->known, s->size, cons, &np),
                         KMS_OK);
        if (s->flip_cons)
            cons[np - 1][7] ^= 1;
        for (size_t j = 0; j < np; j++)
            cb[j] = (ProtobufCBinaryData){AUDIT_HASH_LEN, cons[j]};
        r.consistency_proof = cb;
        r.n_consistency_proof = np;
        r.known_tree_size = s->known;
    }
    struct blob b = {name, NULL, custos__v1__export_audit_log_response__get_packed_size(&r)};
    b.p = malloc(b.n);
    ck_assert_ptr_nonnull(b.p);
    custos__v1__export_audit_log_response__pack(&r, b.p);
    free(w);
    free(ep);
    ck_assert_uint_lt(n_made, sizeof(made) / sizeof(made[0]));
    made[n_made++] = b;
    return b;
}

/* Entries [10, 25) with proofs under a head of 25 at ts, with a consistency
 * proof from the head of 10 when known is 10. */
static struct bspec next_spec(int64_t ts, uint64_t known)
{
    struct bspec s = spec(&eu, 25, ts);
    add_range(&s, 10, 15);
    s.proofs = true;
    s.known = known;
    return s;
}

/* The whole log [0, size) under a head of that size, proofs or not. */
static struct bspec full_spec(const struct tlog *l, uint64_t size, int64_t ts, bool proofs)
{
    struct bspec s = spec(l, size, ts);
    add_range(&s, 0, size);
    s.proofs = proofs;
    return s;
}

static struct blob whole(const char *name, const struct tlog *l, uint64_t size, int64_t ts,
                         bool proofs)
{
    struct bspec s = full_spec(l, size, ts, proofs);
    return make(name, &s);
}

/* ---- running the verifier -------------------------------------------------------------- */

static char msg[2048];

/* Verify the bundles: "" when everything verified, else "WHERE: WHAT" as
 * kmsctl prints it after "FAILED: ". */
static const char *run_ks(struct audit_keyset *ks, struct audit_state *st, bool partial,
                          const struct blob *b, size_t nb)
{
    struct audit_verify *v = NULL;
    ck_assert_int_eq(audit_verify_new(ks, st, partial, &v), KMS_OK);
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < nb && rc == KMS_OK; i++)
        rc = audit_verify_add_bundle(v, b[i].name, b[i].p, b[i].n);
    if (rc == KMS_OK)
        rc = audit_verify_finish(v);
    const struct audit_verify_failure *f = audit_verify_failure(v);
    ck_assert_int_eq(rc == KMS_OK, f == NULL);
    if (f)
        snprintf(msg, sizeof(msg), "%s%s%s", f->where ? f->where : "", f->where ? ": " : "",
                 f->what);
    else
        msg[0] = '\0';
    audit_verify_free(v);
    return msg;
}

#define RUN(st, partial, ...)                                                                      \
    run_ks(keys, (st), (partial), (struct blob[]){__VA_ARGS__},                                    \
           sizeof((struct blob[]){__VA_ARGS__}) / sizeof(struct blob))
#define VERIFIES(...) ck_assert_str_eq(RUN(NULL, false, __VA_ARGS__), "")
#define REFUSED(want, ...) ck_assert_str_eq(RUN(NULL, false, __VA_ARGS__), (want))

/* ---- honest bundles -------------------------------------------------------------------- */

START_TEST(honest_whole_log)
{
    struct blob a = whole("a.bin", &eu, 20, TS(20), false);
    struct audit_verify *v = NULL;
    ck_assert_int_eq(audit_verify_new(keys, NULL, false, &v), KMS_OK);
    ck_assert_int_eq(audit_verify_add_bundle(v, a.name, a.p, a.n), KMS_OK);
    ck_assert_int_eq(audit_verify_finish(v), KMS_OK);
    ck_assert_ptr_null(audit_verify_failure(v));
    ck_assert_uint_eq(audit_verify_n_regions(v), 1);
    const struct audit_verify_region *r = audit_verify_region_at(v, 0);
    ck_assert_str_eq(r->region, "eu-west");
    ck_assert_uint_eq(r->newest->size, 20);
    ck_assert_uint_eq(r->verified_to, 20);
    struct audit_verify_bundle b;
    audit_verify_bundle_at(v, 0, &b);
    ck_assert_str_eq(b.name, "a.bin");
    ck_assert(b.whole);
    ck_assert_uint_eq(b.first, 0);
    ck_assert_uint_eq(b.end, 20);
    ck_assert_str_eq(b.head->key_id, KID_EU);
    audit_verify_free(v);
    /* Every size, from the empty tree on. */
    VERIFIES(whole("e.bin", &eu, 0, TS(0), false));
    VERIFIES(whole("one.bin", &eu, 1, TS(1), false));
    VERIFIES(whole("all.bin", &eu, LOG_N, TS(LOG_N), false));
}
END_TEST

START_TEST(honest_proofs_ranges_regions)
{
    VERIFIES(whole("p.bin", &eu, 20, TS(20), true));
    /* Both regions at once, in any order. */
    VERIFIES(whole("u.bin", &us, 9, TS(9), false), whole("e.bin", &eu, 13, TS(13), true));
    /* A range with proofs stands alone only with --partial. */
    struct bspec s = spec(&eu, 20, TS(20));
    add_range(&s, 5, 6);
    s.proofs = true;
    struct blob range = make("range.bin", &s);
    ck_assert_str_eq(RUN(NULL, true, range), "");
    REFUSED("range.bin: entry seq 0 missing: the bundles of region eu-west start at seq 5 (use "
            "--partial to verify a range)",
            range);
    /* A range without proofs is tied to nothing, --partial or not. */
    s.proofs = false;
    ck_assert_str_eq(RUN(NULL, true, make("np.bin", &s)),
                     "np.bin: entry seq 0 missing: the bundle starts at seq 5, carries no "
                     "inclusion proofs, and its head covers 20 entries");
    /* Two ranges that together make the log. */
    struct bspec s1 = spec(&eu, 20, TS(20)), s2 = spec(&eu, 20, TS(20));
    add_range(&s1, 0, 12);
    add_range(&s2, 12, 8);
    s1.proofs = s2.proofs = true;
    VERIFIES(make("r1.bin", &s1), make("r2.bin", &s2));
}
END_TEST

START_TEST(honest_incremental)
{
    struct blob first = whole("first.bin", &eu, 10, TS(10), false);
    struct bspec s = next_spec(TS(25), 10);
    struct blob next = make("next.bin", &s);
    VERIFIES(first, next);
    VERIFIES(next, first);
    /* Without the earlier head nothing can check the proof. */
    REFUSED("next.bin: consistency proof from tree_size 10 cannot be checked: no verified head "
            "of that size (give the bundle or the --state that holds it)",
            next);
    /* Without a consistency proof nothing links the two heads. */
    struct bspec u = next_spec(TS(25), 0);
    ck_assert_str_eq(RUN(NULL, true, first, make("unlinked.bin", &u)),
                     "unlinked.bin: nothing proves that this head (tree_size 25) extends the head "
                     "of tree_size 10 in first.bin (export it with --known-head or --known-state, "
                     "or from seq 0)");
    /* A whole log under the larger head proves it by its own prefix. */
    VERIFIES(first, whole("w.bin", &eu, 25, TS(25), false));
}
END_TEST

/* ---- tampering ------------------------------------------------------------------------- */

START_TEST(flipped_entry_byte)
{
    struct bspec s = full_spec(&eu, 20, TS(20), true);
    s.e[5].flip = true;
    REFUSED("t.bin: entry seq 5 (index 5 in the bundle): inclusion proof does not verify",
            make("t.bin", &s));
    /* In a range, the index is the entry's place in the bundle. */
    struct bspec r = spec(&eu, 20, TS(20));
    add_range(&r, 5, 10);
    r.proofs = true;
    r.e[2].flip = true;
    ck_assert_str_eq(RUN(NULL, true, make("r.bin", &r)),
                     "r.bin: entry seq 7 (index 2 in the bundle): inclusion proof does not verify");
    /* Without proofs, the root recomputed from the entries differs. */
    s.proofs = false;
    s.e[5].flip = false;
    s.e[4].flip = true;
    static const char prefix[] = "w.bin: the root recomputed from entries 0..19 (";
    const char *m = RUN(NULL, false, make("w.bin", &s));
    ck_assert_msg(strncmp(m, prefix, sizeof(prefix) - 1) == 0, "%s", m);
    ck_assert_msg(strstr(m, ") does not match the signed head's root (") != NULL, "%s", m);
}
END_TEST

START_TEST(bad_signature)
{
    struct bspec s = full_spec(&eu, 20, TS(20), false);
    s.flip_sig = true;
    char want[256];
    snprintf(want, sizeof(want), "t.bin: head signature invalid (key %s, keys.pem)", KID_EU);
    REFUSED(want, make("t.bin", &s));
    /* Signed by another key than the one it names. */
    s.flip_sig = false;
    s.key = key_us;
    snprintf(want, sizeof(want), "k.bin: head signature invalid (key %s, keys.pem)", KID_EU);
    REFUSED(want, make("k.bin", &s));
}
END_TEST

START_TEST(unknown_key)
{
    /* A key not given, and a key of another region (whatever its id). */
    const struct {
        EVP_PKEY *pk;
        const char *id, *name;
    } cases[] = {{key_eu2, KID_EU2, "t.bin"}, {key_us, KID_US, "u.bin"}};
    for (size_t i = 0; i < 2; i++) {
        struct bspec s = full_spec(&eu, 20, TS(20), false);
        s.key = cases[i].pk;
        s.key_id = cases[i].id;
        char want[256];
        snprintf(want, sizeof(want),
                 "%s: head signed by unknown key %s of region eu-west (fetch the keys again: "
                 "kmsctl audit keys --out-dir DIR)",
                 cases[i].name, cases[i].id);
        REFUSED(want, make(cases[i].name, &s));
    }
}
END_TEST

START_TEST(dropped_entry)
{
    struct bspec s = full_spec(&eu, 20, TS(20), true);
    drop(&s, 12);
    REFUSED("t.bin: entry seq 12 missing (found 13 at index 12)", make("t.bin", &s));
    /* The first entry of a whole log without proofs. */
    struct bspec w = full_spec(&eu, 20, TS(20), false);
    drop(&w, 0);
    REFUSED("w.bin: entry seq 0 missing: the bundle starts at seq 1, carries no inclusion "
            "proofs, and its head covers 20 entries",
            make("w.bin", &w));
}
END_TEST

START_TEST(reordered_entries)
{
    struct bspec s = full_spec(&eu, 20, TS(20), true);
    struct entry_spec t = s.e[3];
    s.e[3] = s.e[4];
    s.e[4] = t;
    REFUSED("t.bin: entries out of order at index 3 (seq 4 where seq 3 belongs; it is at index "
            "4)",
            make("t.bin", &s));
    /* Going back. */
    struct bspec b = spec(&eu, 20, TS(20));
    add_range(&b, 0, 6);
    b.e[b.ne++] = (struct entry_spec){&eu, 2, 2, false};
    b.proofs = true;
    REFUSED("b.bin: entries out of order at index 6 (seq 2 after seq 5)", make("b.bin", &b));
    /* The same entry twice. */
    struct bspec d = spec(&eu, 20, TS(20));
    add_range(&d, 0, 4);
    add_range(&d, 3, 17);
    d.proofs = true;
    REFUSED("d.bin: entries out of order at index 4 (seq 3 after seq 3)", make("d.bin", &d));
    /* An entry whose event claims another seq. */
    struct bspec e = full_spec(&eu, 20, TS(20), false);
    e.e[9].ev = 10;
    REFUSED("e.bin: entry seq 9 (index 9 in the bundle): the event says seq 10", make("e.bin", &e));
}
END_TEST

START_TEST(truncated)
{
    struct bspec s = spec(&eu, 20, TS(20));
    add_range(&s, 0, 17);
    s.proofs = true;
    struct blob t = make("t.bin", &s);
    REFUSED("t.bin: entry seq 17 missing: the entries of region eu-west end at seq 16 but the "
            "head covers 20 entries (the tail is missing; use --partial to verify a range)",
            t);
    ck_assert_str_eq(RUN(NULL, true, t), "");
    s.proofs = false;
    add_range(&s, 17, 1);
    REFUSED("n.bin: entry seq 18 missing: the bundle ends at seq 17 but its head covers 20 "
            "entries (and it carries no inclusion proofs)",
            make("n.bin", &s));
    /* The file itself cut short. */
    struct blob w = whole("cut.bin", &eu, 20, TS(20), true);
    w.n -= 7;
    char want[128];
    snprintf(want, sizeof(want),
             "cut.bin: not an ExportAuditLogResponse: truncated or damaged (%zu bytes)", w.n);
    REFUSED(want, w);
    /* Entries beyond the head. */
    struct bspec b = spec(&eu, 10, TS(10));
    add_range(&b, 0, 11);
    REFUSED("b.bin: entry seq 10 (index 10 in the bundle) is beyond the head's tree size 10",
            make("b.bin", &b));
}
END_TEST

START_TEST(spliced)
{
    /* An entry from another history of the same region. */
    struct bspec s = full_spec(&eu, 20, TS(20), true);
    s.e[2].log = &eu_other;
    REFUSED("t.bin: entry seq 2 (index 2 in the bundle): inclusion proof does not verify",
            make("t.bin", &s));
    /* An entry from another region's log. */
    s.e[2].log = &eu;
    s.e[1].log = &us;
    REFUSED("u.bin: entry seq 1 (index 1 in the bundle): an event of region \"us-east\" in the "
            "log of eu-west",
            make("u.bin", &s));
    /* Two bundles, each honest on its own, that disagree: a fork. */
    struct blob a = whole("a.bin", &eu, 12, TS(12), false);
    struct blob b = whole("b.bin", &eu_other, 15, TS(15), false);
    REFUSED("b.bin: entry seq 0 (index 0 in the bundle) differs from the same entry in a.bin "
            "(spliced or forked exports)",
            a, b);
}
END_TEST

START_TEST(time_backwards)
{
    /* A larger head dated before a smaller one: honest proofs, wrong clock. */
    struct blob first = whole("first.bin", &eu, 10, TS(10), false);
    struct bspec s = next_spec(TS(9), 10);
    char want[512], t1[40], t2[40];
    snprintf(want, sizeof(want),
             "next.bin: head tree_size 25 at %s is dated before the smaller head (tree_size 10, "
             "%s) in first.bin: time went backwards",
             audit_iso_ms(TS(9), t1), audit_iso_ms(TS(10), t2));
    REFUSED(want, first, make("next.bin", &s));
}
END_TEST

START_TEST(consistency_tampered)
{
    struct blob first = whole("first.bin", &eu, 10, TS(10), false);
    struct bspec s = next_spec(TS(25), 10);
    s.flip_cons = true;
    struct blob next = make("next.bin", &s);
    REFUSED("next.bin: consistency proof from tree_size 10 to 25 does not verify against the "
            "head of size 10 in first.bin",
            first, next);
}
END_TEST

/* ---- the state ------------------------------------------------------------------------- */

START_TEST(state_older_smaller_head)
{
    struct audit_state *st = NULL;
    ck_assert_int_eq(audit_state_new("state", &st), KMS_OK);
    ck_assert_str_eq(RUN(st, false, whole("big.bin", &eu, 20, TS(20), false)), "");
    const struct audit_head *kept = audit_state_latest(st, "eu-west");
    ck_assert_ptr_nonnull(kept);
    ck_assert_uint_eq(kept->size, 20);
    uint64_t to = 0;
    ck_assert(audit_state_verified(st, "eu-west", &to));
    ck_assert_uint_eq(to, 20);

    char want[512], t1[40], t2[40];
    snprintf(want, sizeof(want),
             "small.bin: head of region eu-west (tree_size 10, %s) is older or smaller than the "
             "head kept in state (tree_size 20, %s): refusing an older, smaller head",
             audit_iso_ms(TS(10), t1), audit_iso_ms(TS(20), t2));
    ck_assert_str_eq(RUN(st, false, whole("small.bin", &eu, 10, TS(10), false)), want);
    /* A refused run leaves the state as it was. */
    ck_assert_uint_eq(audit_state_n_heads(st), 1);

    /* The same size with another root: the log forked. */
    ck_assert_str_eq(RUN(st, false, whole("fork.bin", &eu_other, 20, TS(21), false)),
                     "fork.bin: head of tree_size 20 has another root than the head of the same "
                     "size kept in state: the log forked");
    /* A larger head of a rewritten log. */
    ck_assert_str_eq(RUN(st, false, whole("rw.bin", &eu_other, 30, TS(30), false)),
                     "rw.bin: its first 20 entries do not give the root of the head of tree_size "
                     "20 in state: the log was rewritten or forked");
    audit_state_free(st);
}
END_TEST

START_TEST(state_extends)
{
    struct audit_state *st = NULL;
    ck_assert_int_eq(audit_state_new("state", &st), KMS_OK);
    ck_assert_str_eq(RUN(st, false, whole("a.bin", &eu, 10, TS(10), false)), "");
    struct bspec s = next_spec(TS(25), 0);
    /* Complete only thanks to what the state has verified. */
    REFUSED("alone.bin: entry seq 0 missing: the bundles of region eu-west start at seq 10 (use "
            "--partial to verify a range)",
            make("alone.bin", &s));
    s.known = 10;
    struct blob next = make("next.bin", &s);
    ck_assert_str_eq(RUN(st, false, next), "");
    uint64_t to = 0;
    ck_assert(audit_state_verified(st, "eu-west", &to));
    ck_assert_uint_eq(to, 25);
    ck_assert_uint_eq(audit_state_latest(st, "eu-west")->size, 25);
    /* Idempotent. */
    ck_assert_str_eq(RUN(st, false, next), "");
    ck_assert_uint_eq(audit_state_n_heads(st), 2);

    /* The file round-trips. */
    char *text = NULL, *again = NULL;
    size_t len = 0, len2 = 0;
    ck_assert_int_eq(audit_state_format(st, &text, &len), KMS_OK);
    struct audit_state *st2 = NULL;
    ck_assert_int_eq(audit_state_new("copy", &st2), KMS_OK);
    ck_assert_int_eq(audit_state_parse(st2, text, len), KMS_OK);
    ck_assert_int_eq(audit_state_format(st2, &again, &len2), KMS_OK);
    ck_assert_uint_eq(len, len2);
    ck_assert_mem_eq(text, again, len);
    ck_assert_str_eq(audit_state_head(st2, 0)->src, "copy");
    free(text);
    free(again);
    audit_state_free(st2);
    audit_state_free(st);
}
END_TEST

START_TEST(state_file_malformed)
{
    static const struct {
        const char *text, *err;
    } cases[] = {
        {"hello\n", "s: not a verify state file (want \"custos-audit-state 1\" first)"},
        {"# only a comment\n", "s: not a verify state file"},
        {"custos-audit-state 1\nhead eu-west 1 2 3 4 5\n", "s: line 2: malformed head record"},
        {"custos-audit-state 1\nhead eu-west 1 2\n", "s: line 2: unknown record"},
        {"custos-audit-state 1\n# c\nhead eu-west x 2 " /* size not a number */
         "00000000000000000000000000000000000000000000000000000000000000aa ab cd\n",
         "s: line 3: malformed head record"},
        {"custos-audit-state 1\nverified eu-west -1\n", "s: line 2: malformed verified record"},
        {"custos-audit-state 1\nverified eu west 1\n", "s: line 2: unknown record"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct audit_state *st = NULL;
        ck_assert_int_eq(audit_state_new("s", &st), KMS_OK);
        ck_assert_int_eq(audit_state_parse(st, cases[i].text, strlen(cases[i].text)),
                         KMS_ERR_INVALID_ARGUMENT);
        ck_assert_str_eq(kms_err_detail(), cases[i].err);
        audit_state_free(st);
    }
    struct audit_state *st = NULL;
    ck_assert_int_eq(audit_state_new("s", &st), KMS_OK);
    ck_assert_int_eq(audit_state_parse(st, "", 0), KMS_OK);
    ck_assert_uint_eq(audit_state_n_heads(st), 0);
    audit_state_free(st);
}
END_TEST

/* ---- keys ------------------------------------------------------------------------------ */

START_TEST(key_validity_window)
{
    struct blob b = whole("b.bin", &eu, 20, TS(20), false);
    char want[512], t[40], t1[40], t2[40];
    /* Not yet valid at the head's time. */
    struct audit_keyset *ks = NULL;
    ck_assert_int_eq(audit_keyset_new(&ks), KMS_OK);
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu, TS(21), 0), KMS_OK);
    snprintf(want, sizeof(want),
             "b.bin: head timestamp %s is outside the validity of key %s (%s to now)",
             audit_iso_ms(TS(20), t), KID_EU, audit_iso_ms(TS(21), t1));
    ck_assert_str_eq(run_ks(ks, NULL, false, &b, 1), want);
    audit_keyset_free(ks);
    /* Retired at the head's time (not_after is exclusive). */
    ck_assert_int_eq(audit_keyset_new(&ks), KMS_OK);
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu, T0, TS(20)), KMS_OK);
    snprintf(want, sizeof(want),
             "b.bin: head timestamp %s is outside the validity of key %s (%s to %s)",
             audit_iso_ms(TS(20), t), KID_EU, audit_iso_ms(T0, t1), audit_iso_ms(TS(20), t2));
    ck_assert_str_eq(run_ks(ks, NULL, false, &b, 1), want);
    audit_keyset_free(ks);
    /* A rotation: the old key until TS(15), the new one after; heads of
     * each verify together. */
    ck_assert_int_eq(audit_keyset_new(&ks), KMS_OK);
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu, T0, TS(15)), KMS_OK);
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU2, key_eu2, TS(15), 0), KMS_OK);
    struct bspec s = spec(&eu, 30, TS(30));
    add_range(&s, 10, 20);
    s.proofs = true;
    s.known = 10;
    s.key = key_eu2;
    s.key_id = KID_EU2;
    struct blob both[] = {whole("old.bin", &eu, 10, TS(10), false), make("new.bin", &s)};
    ck_assert_str_eq(run_ks(ks, NULL, false, both, 2), "");
    audit_keyset_free(ks);
}
END_TEST

START_TEST(key_files)
{
    struct audit_keyset *ks = NULL;
    ck_assert_int_eq(audit_keyset_new(&ks), KMS_OK);
    /* The same key twice: the copy with an end to its validity narrows it. */
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu, T0, 0), KMS_OK);
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu, T0, TS(5)), KMS_OK);
    const struct audit_key *k = audit_keyset_find(ks, "eu-west", KID_EU);
    ck_assert_ptr_nonnull(k);
    ck_assert_int_eq(k->not_after_ms, TS(5));
    ck_assert_ptr_null(audit_keyset_find(ks, "us-east", KID_EU));
    /* Another key under the same id is refused. */
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU, key_eu2, T0, 0), KMS_ERR_INVALID_ARGUMENT);
    char want[256];
    snprintf(want, sizeof(want), "keys.pem: key %s of region eu-west differs from the one in "
                                 "keys.pem", KID_EU);
    ck_assert_str_eq(kms_err_detail(), want);
    /* A PEM without its header lines, or no key at all. */
    BIO *bio = BIO_new(BIO_s_mem());
    ck_assert(PEM_write_bio_PUBKEY(bio, key_eu) == 1);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    ck_assert_int_eq(audit_keyset_parse(ks, "bare.pem", data, (size_t)n), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(),
                     "bare.pem: a public key without its Custos-Audit-Region, -Key-Id,\n"
                     "  -Not-Before-Ms and -Not-After-Ms lines (write keys with\n"
                     "  `kmsctl audit keys --out-dir DIR`)");
    BIO_free(bio);
    ck_assert_int_eq(audit_keyset_parse(ks, "empty.pem", "", 0), KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "empty.pem: no audit public key in it");
    static const char bad[] = "Custos-Audit-Region: eu west\n";
    ck_assert_int_eq(audit_keyset_parse(ks, "bad.pem", bad, sizeof(bad) - 1),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_str_eq(kms_err_detail(), "bad.pem: bad header line 'Custos-Audit-Region: eu west'");
    /* Not a P-256 key. */
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    ck_assert_int_eq(add_key(ks, "eu-west", KID_EU2, p384, T0, 0), KMS_ERR_INVALID_ARGUMENT);
    snprintf(want, sizeof(want), "keys.pem: key %s is not an ECDSA P-256 public key", KID_EU2);
    ck_assert_str_eq(kms_err_detail(), want);
    EVP_PKEY_free(p384);
    audit_keyset_free(ks);
}
END_TEST

START_TEST(head_files)
{
    struct blob b = whole("b.bin", &eu, 20, TS(20), true);
    Custos__V1__SignedTreeHead *h = audit_verify_head_unpack(b.p, b.n);
    ck_assert_ptr_nonnull(h);
    ck_assert_str_eq(h->region, "eu-west");
    ck_assert_uint_eq(h->tree_size, 20);
    /* A head file: the head packed on its own. */
    size_t n = custos__v1__signed_tree_head__get_packed_size(h);
    uint8_t *p = malloc(n);
    custos__v1__signed_tree_head__pack(h, p);
    Custos__V1__SignedTreeHead *h2 = audit_verify_head_unpack(p, n);
    ck_assert_ptr_nonnull(h2);
    ck_assert_int_eq(h2->timestamp_ms, TS(20));
    ck_assert(audit_verify_head_shape_ok(h2));
    custos__v1__signed_tree_head__free_unpacked(h2, NULL);
    custos__v1__signed_tree_head__free_unpacked(h, NULL);
    free(p);
    ck_assert_ptr_null(audit_verify_head_unpack((const uint8_t *)"\x08\x01", 2));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("audit_verify");
    const struct {
        const char *name;
        const TTest *tests[4];
    } cases[] = {
        {"honest", {honest_whole_log, honest_proofs_ranges_regions, honest_incremental}},
        {"flipped_entry", {flipped_entry_byte}},
        {"signature", {bad_signature, unknown_key}},
        {"dropped_entry", {dropped_entry}},
        {"reordered", {reordered_entries}},
        {"truncated", {truncated}},
        {"spliced", {spliced}},
        {"consistency", {consistency_tampered}},
        {"head_order", {time_backwards}},
        {"state", {state_older_smaller_head, state_extends, state_file_malformed}},
        {"key_validity", {key_validity_window}},
        {"key_files", {key_files}},
        {"head_files", {head_files}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        for (size_t j = 0; j < 4 && cases[i].tests[j]; j++)
            tcase_add_test(tc, cases[i].tests[j]);
        suite_add_tcase(s, tc);
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
