/*
 * audit_state.h - the auditor's memory between verify runs: every signed
 * tree head verified so far, and per region how far the entries have been
 * verified from seq 0. It is how a rollback is caught: a log restored from
 * an old backup, or rewritten and re-signed, cannot produce a head that
 * extends one kept here.
 *
 * The state file (docs/audit.md) is text, one record per line, '#'
 * comments:
 *   custos-audit-state 1
 *   head REGION TREE_SIZE TIMESTAMP_MS ROOT_HEX KEY_ID SIGNATURE_HEX
 *   verified REGION N
 * It is written whole or not at all (temporary file, fsync, rename). One
 * verify at a time per state file; a struct audit_state is not
 * thread-safe.
 */
#ifndef AUDIT_STATE_H
#define AUDIT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_merkle.h"
#include "audit_verify_util.h"
#include "kms_error.h"

/* A head whose signature has been verified (now, or in an earlier run when
 * it comes from a state). */
struct audit_head {
    char region[AUDIT_REGION_MAX + 1];
    uint64_t size;
    int64_t ts; /* ms since the epoch */
    audit_hash root;
    char key_id[AUDIT_KEY_ID_MAX + 1];
    uint8_t sig[AUDIT_SIG_MAX];
    size_t sig_len;
    const char *src; /* where it came from, for messages; not owned */
};

struct audit_state;

/* An empty state. name (copied) stands for it in messages: its file. */
kms_err audit_state_new(const char *name, struct audit_state **out);
void audit_state_free(struct audit_state *st); /* NULL ok */

/* Add the records of a state file's text (len bytes, no NUL needed) to st.
 * KMS_ERR_INVALID_ARGUMENT with "NAME: line N: ..." when it is not one. */
kms_err audit_state_parse(struct audit_state *st, const char *text, size_t len);

/* The state kept in path; an empty one if the file does not exist. */
kms_err audit_state_load(const char *path, struct audit_state **out);

/* st as a state file, malloc'ed (*out_len bytes). */
kms_err audit_state_format(const struct audit_state *st, char **out, size_t *out_len);

/* Write st to path whole or not at all. */
kms_err audit_state_save(const struct audit_state *st, const char *path);

const char *audit_state_name(const struct audit_state *st);

size_t audit_state_n_heads(const struct audit_state *st);
const struct audit_head *audit_state_head(const struct audit_state *st, size_t i);

/* The newest kept head of region: the largest, then the latest; NULL if
 * none. */
const struct audit_head *audit_state_latest(const struct audit_state *st, const char *region);

/* How far region's entries were verified from seq 0 ([0, *out_to)); false
 * when the state has no record of region. */
bool audit_state_verified(const struct audit_state *st, const char *region, uint64_t *out_to);

/* Keep h (a head already kept, by region, size, time and root, is not
 * added twice). Its src becomes the state's name. Pointers from
 * audit_state_head/latest are invalid after this. */
kms_err audit_state_add_head(struct audit_state *st, const struct audit_head *h);

/* Record that region's entries [0, to) are verified; never lowers it. */
kms_err audit_state_raise_verified(struct audit_state *st, const char *region, uint64_t to);

#endif
