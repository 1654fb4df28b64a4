/*
 * kmsctl_audit_online.h - `kmsctl audit head`, `keys` and `export`: the
 * auditor's commands that ask kmsd (AuditService over kmsctl_rpc.h), and the
 * values of every `kmsctl audit` option, which kmsctl_audit.c parses.
 */
#ifndef KMSCTL_AUDIT_ONLINE_H
#define KMSCTL_AUDIT_ONLINE_H

#include <stddef.h>
#include <stdint.h>

#include "kmsctl_rpc.h"

#define KMSCTL_AUDIT_EXPORT_MAX 10000

/* The option values of `kmsctl audit`: pointers into argv, not owned. */
struct kmsctl_audit_args {
    const char *region, *out, *out_dir, *known_head, *known_state, *head, *out_bin, *out_sig,
        *state;
    /* --pg / --pg-password: read the region's log straight from its
     * PostgreSQL database (keys, export) instead of asking kmsd. */
    const char *pg, *pg_password;
    const char *keys[64];
    size_t n_keys;
    uint64_t start;
    uint32_t count;
    int json, proofs, partial, have_start;
};

/* Run verb ("head", "keys" or "export") over a connection made from conn
 * (keys and export: from PostgreSQL when a->pg is set).
 * Returns the process exit code (enum kmsctl_exit; 5 for the rollback
 * alarm). */
int kmsctl_audit_online(const struct kmsctl_conn *conn, const char *verb,
                        const struct kmsctl_audit_args *a);

#endif
