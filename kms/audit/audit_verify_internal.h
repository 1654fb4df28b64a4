/*
 * audit_verify_internal.h - what the two halves of the verifier share:
 * audit_verify.c checks each bundle on its own as it is added,
 * audit_verify_region.c checks them together (per region, against the
 * state) in audit_verify_finish. Not for other callers: use audit_verify.h.
 */
#ifndef AUDIT_VERIFY_INTERNAL_H
#define AUDIT_VERIFY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_merkle.h"
#include "audit_verify.h"

/* A bundle that passed its own checks (or the one that failed them). */
struct bundle {
    char *name;
    Custos__V1__ExportAuditLogResponse *msg;
    struct audit_head head;  /* verified; src is name */
    size_t n;                /* entries */
    uint64_t first, end;     /* they hold seqs [first, end) */
    audit_hash *leaf;        /* leaf hash of each entry */
    struct audit_tree *tree; /* the entries as a tree when first == 0 */
    bool any_proof;
};

struct audit_verify {
    const struct audit_keyset *keys;
    struct audit_state *st; /* NULL: none */
    bool partial, finished;
    struct bundle **b; /* pointers, so that heads stay put as bundles are added */
    size_t nb, cap_b;
    struct audit_verify_region *regions;
    size_t n_regions;
    kms_err fail_rc; /* KMS_OK until the first failure */
    struct audit_verify_failure failure;
    char *where, *what;
};

/* Record the first failure (later ones, its consequences, are dropped) and
 * return its code; every check returns through these. */
kms_err audit_verify_fail_with(struct audit_verify *v, kms_err rc, const char *where,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#define fail(v, where, ...)                                                                        \
    audit_verify_fail_with((v), KMS_ERR_INVALID_ARGUMENT, (where), __VA_ARGS__)
#define fail_nomem(v, where) audit_verify_fail_with((v), KMS_ERR_NOMEM, (where), "out of memory")

/* n proof hashes from their protobuf fields; false if malformed. */
bool audit_verify_proof_hashes(const ProtobufCBinaryData *p, size_t n,
                               audit_hash out[AUDIT_PROOF_MAX]);

#endif
