/*
 * audit_verify.h - the offline verifier of audit log exports ("bundles":
 * ExportAuditLogResponse messages exactly as kmsd sent them).
 *
 * It trusts nothing but the key set it is given and the heads kept in an
 * optional state from earlier runs. It shares the RFC 9162 hashing and
 * proof checks with kmsd (audit_merkle.h) and the signed head bytes
 * (audit_head_signed_bytes), and does no I/O: bytes in, a verdict out. It
 * stops at the first thing that is wrong and describes it in one line that
 * names the bundle, the entry's seq and its index in the bundle; docs/audit.md
 * lists the checks in the order they are made:
 *
 *   audit_verify_new       keys, optional state, whether a range may stand alone
 *   audit_verify_add_bundle   each bundle on its own: decodes; the head's key,
 *                          validity and signature; entries in order, each an
 *                          AuditEvent of its seq and region; the root recomputed
 *                          from a whole log, or every entry's inclusion proof
 *   audit_verify_finish    consistency proofs against every verified head; then
 *                          per region: bundles agree, no head older or smaller
 *                          than the kept one, each head proven to extend the one
 *                          before, and (unless partial) no entry missing
 *
 * On success finish adds the verified heads and ranges to the state; the
 * caller saves it. Not thread-safe; one struct audit_verify per run.
 */
#ifndef AUDIT_VERIFY_H
#define AUDIT_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_keyset.h"
#include "audit_state.h"
#include "kms_error.h"
#include "proto/audit.pb-c.h"

struct audit_verify;

/* keys (required) and state (NULL: none) are borrowed for the life of *out;
 * state is changed only by a successful audit_verify_finish. partial: the
 * bundles may hold a range of the log (still tied to their heads by
 * proofs); completeness from seq 0 is not required. */
kms_err audit_verify_new(const struct audit_keyset *keys, struct audit_state *state, bool partial,
                         struct audit_verify **out);
void audit_verify_free(struct audit_verify *v); /* NULL ok */

/* Check one bundle (len bytes of buf, copied as needed) on its own; name
 * (copied) stands for it in messages. KMS_ERR_INVALID_ARGUMENT when a check
 * failed, KMS_ERR_NOMEM; either way audit_verify_failure says what. After a
 * failure every call returns it again. */
kms_err audit_verify_add_bundle(struct audit_verify *v, const char *name, const uint8_t *buf,
                                size_t len);

/* The checks across the bundles added and the state (see above). Call once,
 * after the last bundle. */
kms_err audit_verify_finish(struct audit_verify *v);

struct audit_verify_failure {
    const char *where; /* the bundle or state it is about, or NULL */
    const char *what;  /* one line, e.g. "entry seq 17 (index 5 in the bundle):
                          inclusion proof does not verify" */
};

/* The first failure, or NULL if there was none. Valid until v is freed. */
const struct audit_verify_failure *audit_verify_failure(const struct audit_verify *v);

/* Regions that passed audit_verify_finish so far (all of them after a
 * success), in the order their first bundle was added. */
struct audit_verify_region {
    const char *region;
    const struct audit_head *newest; /* the newest head among its bundles */
    uint64_t verified_to;            /* entries [0, verified_to) complete */
};
size_t audit_verify_n_regions(const struct audit_verify *v);
const struct audit_verify_region *audit_verify_region_at(const struct audit_verify *v, size_t i);

/* The bundles added, in order, as verified. */
struct audit_verify_bundle {
    const char *name;
    const struct audit_head *head;
    size_t n_entries;
    uint64_t first, end;      /* seqs [first, end) */
    bool whole;               /* all of [0, tree_size): the root was recomputed */
    uint64_t known_tree_size; /* its consistency proof starts there; 0: none */
};
size_t audit_verify_n_bundles(const struct audit_verify *v);
void audit_verify_bundle_at(const struct audit_verify *v, size_t i,
                            struct audit_verify_bundle *out);

/* A head that could have come from kmsd: the shape, not the signature. */
bool audit_verify_head_shape_ok(const Custos__V1__SignedTreeHead *h);

/* The bytes the signature of h (of good shape) covers, as kmsd signs them
 * (audit_head_signed_bytes); returns their length. */
#define AUDIT_VERIFY_SIGNED_MAX (13 + 1 + AUDIT_REGION_MAX + 48)
size_t audit_verify_head_signed_bytes(const Custos__V1__SignedTreeHead *h,
                                      uint8_t out[AUDIT_VERIFY_SIGNED_MAX]);

/* The head in buf: a SignedTreeHead (`kmsctl audit head --out`) or a
 * bundle's head; NULL if neither. Free with
 * custos__v1__signed_tree_head__free_unpacked. */
Custos__V1__SignedTreeHead *audit_verify_head_unpack(const uint8_t *buf, size_t len);

#endif
