/*
 * kms_log.h - the operational log: one JSON object per line on stderr.
 *
 * This is not the audit log. Messages must never contain secrets, key
 * material or plaintext; the caller is responsible for what it formats.
 * Thread-safe: each line is written with a single write(2).
 * Each line: {"ts":"2026-11-26T14:00:00.123Z","level":"info",
 *             "component":"http","msg":"..."}
 */
#ifndef KMS_LOG_H
#define KMS_LOG_H

#include "kms_error.h"

enum kms_log_level {
    KMS_LOG_DEBUG = 0,
    KMS_LOG_INFO,
    KMS_LOG_WARN,
    KMS_LOG_ERROR,
};

/* Lines below level are dropped. Default: INFO, or $CUSTOS_LOG_LEVEL. */
void kms_log_set_level(enum kms_log_level level);

/* Parse "debug"/"info"/"warn"/"error"; returns -1 if unknown. */
int kms_log_level_parse(const char *name);

/* Apply the configured level unless $CUSTOS_LOG_LEVEL names one (the
 * environment wins, so an operator can turn on debug without editing). */
void kms_log_configure_level(enum kms_log_level level);

/* Write to `path` (appending, mode 0640) instead of stderr. Called again (on
 * SIGHUP) it reopens the same path, so that a rotated file is let go. The
 * descriptor number never changes (dup2), so concurrent writers never see a
 * closed one. Single caller (the main thread). */
kms_err kms_log_open_file(const char *path);

/* The descriptor lines go to (for kms_crash's handler, which cannot call
 * kms_log). */
int kms_log_fd(void);

void kms_log(enum kms_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define kms_log_debug(c, ...) kms_log(KMS_LOG_DEBUG, (c), __VA_ARGS__)
#define kms_log_info(c, ...) kms_log(KMS_LOG_INFO, (c), __VA_ARGS__)
#define kms_log_warn(c, ...) kms_log(KMS_LOG_WARN, (c), __VA_ARGS__)
#define kms_log_error(c, ...) kms_log(KMS_LOG_ERROR, (c), __VA_ARGS__)

#endif
