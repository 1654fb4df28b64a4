/*
 * kms_restore_internal.h - shared by kms_restore.c (the report, the audit
 * logs' side) and kms_restore_token.c (the tokens' side); not an interface.
 */
#ifndef KMS_RESTORE_INTERNAL_H
#define KMS_RESTORE_INTERNAL_H

#include "kms_restore.h"

/* A line of the report (at most KMS_RESTORE_LINES_MAX are kept). */
__attribute__((format(printf, 2, 3))) void kms_restore_note(struct kms_restore_report *r,
                                                            const char *fmt, ...);

/* A fix of the plan (past KMS_RESTORE_FIXES_MAX: counted as dropped). */
kms_err kms_restore_add_fix(struct kms_restore_report *r, const struct kms_restore_fix *f);

#endif
