/*
 * kmsctl_audit_offline.h - `kmsctl audit sth-bytes`, `events` and `verify`:
 * the auditor's offline commands (no server, no HSM), and the file helpers
 * the online ones (kmsctl_audit.c) share with them. docs/audit.md describes
 * the file formats and the checks.
 */
#ifndef KMSCTL_AUDIT_OFFLINE_H
#define KMSCTL_AUDIT_OFFLINE_H

#include <stddef.h>
#include <sys/types.h>

/* Each returns the process exit code (enum kmsctl_exit). */

/* The exact bytes head's signature covers to out_bin, the DER signature to
 * out_sig (either may be NULL, '-' is stdout), and how to check them. */
int kmsctl_audit_sth_bytes(const char *head, const char *out_bin, const char *out_sig);

/* The events of the bundles in files, one JSON object per line. */
int kmsctl_audit_events(char **files, size_t nfiles);

/* Verify the bundles in files against the keys (directories or PEM files)
 * and, if state is not NULL, the heads kept there (updated on success);
 * partial: a bundle may hold a range of the log. 1 means a check failed. */
int kmsctl_audit_verify(const char *const *keys, size_t n_keys, const char *state, int partial,
                        char **files, size_t nfiles);

/* A local file could not be read, decoded or written: print the library's
 * detail; returns KMSCTL_EXIT_LOCAL. */
int kmsctl_audit_local_error(void);

/* audit_file_write (temporary name, sync, rename) with an exit code. */
int kmsctl_audit_write_file(const char *path, const void *data, size_t len, mode_t mode);

/* A head from a file: a SignedTreeHead (`audit head --out`) or a bundle.
 * Free *out with custos__v1__signed_tree_head__free_unpacked. */
struct Custos__V1__SignedTreeHead;
int kmsctl_audit_load_head(const char *path, struct Custos__V1__SignedTreeHead **out);

#endif
