/*
 * audit_verify_util.h - what the auditor's side of the audit log shares:
 * the shapes of region names and key ids, hex, integers and times as they
 * appear in key files, the verify state file and messages, growing arrays,
 * and the local files (a bounded read, an atomic write).
 *
 * Used by the offline verifier (audit_verify.h), its key set
 * (audit_keyset.h) and state file (audit_state.h), and `kmsctl audit`
 * (kmsctl_audit.c). Nothing here talks to kmsd or an HSM.
 *
 * Functions that fail return a kms_err with a one-line detail
 * (kms_err_detail(): "PATH: reason"); callers print it.
 */
#ifndef AUDIT_VERIFY_UTIL_H
#define AUDIT_VERIFY_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kms_error.h"

#define AUDIT_REGION_MAX 255 /* one length byte in the signed head bytes */
#define AUDIT_KEY_ID_MAX 64
#define AUDIT_SIG_MAX 144 /* DER ECDSA P-256 is at most 72 bytes; room to spare */

/* Nothing kmsd exports comes near these; they bound what a hostile file
 * can make us allocate. */
#define AUDIT_BUNDLE_FILE_MAX ((size_t)256 << 20)
#define AUDIT_TEXT_FILE_MAX ((size_t)16 << 20)
#define AUDIT_HEAD_FILE_MAX ((size_t)64 << 10)

/* A region name as it may appear in a file name, a key file header and the
 * state file: 1..255 of letters, digits, '.', '_', '-', not starting '.'. */
bool audit_region_ok(const char *s);

/* A key id: 1..64 lowercase hex digits. */
bool audit_key_id_ok(const char *s);

/* Lowercase hex of n bytes; out holds 2n + 1. */
void audit_hex(const uint8_t *p, size_t n, char *out);

/* Lowercase hex of at most max_out bytes into out; the byte count, or -1. */
long audit_unhex(const char *s, uint8_t *out, size_t max_out);

/* Whole decimal strings: u64 up to max; i64 may be negative. */
bool audit_parse_u64(const char *s, uint64_t max, uint64_t *out);
bool audit_parse_i64(const char *s, int64_t *out);

/* UTC with milliseconds: 2026-11-26T11:55:32.396Z. Returns buf. */
const char *audit_iso_ms(int64_t ms, char buf[40]);

/* A printable, bounded copy of a string that came from a file or the
 * server, for messages ("..." when cut). Returns buf. */
const char *audit_printable(const char *s, char *buf, size_t n);

/* Room for element n of arr (cap elements of size bytes each; the
 * capacity doubles, from `first`): arr itself or its reallocation, with
 * *cap updated; NULL when out of memory or the size overflows (arr is then
 * untouched and still owned by the caller). */
void *audit_grow(void *arr, size_t *cap, size_t n, size_t size, size_t first);

/* The whole of path ("-": stdin), at most max bytes, NUL-terminated (text
 * files are parsed as strings). The caller frees *out. */
kms_err audit_file_read(const char *path, size_t max, uint8_t **out, size_t *out_len);

/* Write path whole or not at all: a temporary file in the same directory,
 * fsync, rename, fsync of the directory. "-" is stdout. */
kms_err audit_file_write(const char *path, const void *data, size_t len, mode_t mode);

#endif
