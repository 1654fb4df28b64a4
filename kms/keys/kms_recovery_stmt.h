/*
 * kms_recovery_stmt.h - the canonical statement an officer signs to approve
 * a recovery, and the check of that signature.
 *
 * The statement is UTF-8 text, one "name: value" per line, each ending in
 * "\n", in this fixed order (docs/escrow-recovery.md shows an example):
 *
 *   custos recovery approval v1
 *   recovery: <recovery id>
 *   tenant: <tenant>
 *   key: <key id>
 *   region: <region>
 *   versions: <v1,v2,...>
 *   mode: RESTORE | EXPORT_WRAPPED
 *   target: restore in region <region> as <DISABLED|ENABLED>
 *         | export to recipient <id> sha256:<hex of its DER public key>
 *   justification: <code name>
 *   justification-text: <text>
 *   case: <case reference>
 *   requester: <officer id>
 *   expires: <unix seconds>
 *
 * Free text is refused at request time if it holds a control, format or
 * separator character (kms_text.h), so no value can forge a line or make
 * what an approver sees differ from what is signed. Everything a recovery does is in the
 * statement, so a signature over it approves exactly that recovery, and
 * nothing else: not another request (the id differs), not after expiry.
 */
#ifndef KMS_RECOVERY_STMT_H
#define KMS_RECOVERY_STMT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "kms_error.h"
#include "kms_store.h"

#define KMS_RECOVERY_STMT_MAX 2048

const char *kms_recovery_mode_name(int mode);
const char *kms_recovery_justification_name(int justification);

/* Write the statement of r into out (NUL-terminated); *out_len excludes the
 * NUL. */
kms_err kms_recovery_statement(const struct kms_recovery_record *r, char *out, size_t cap,
                               size_t *out_len);

/* Verify a DER ECDSA signature (SHA-256) over the statement with an
 * officer's P-256 public key. KMS_ERR_PERMISSION_DENIED when it does not
 * verify, whatever the reason (malformed DER included). */
kms_err kms_recovery_verify(EVP_PKEY *officer, const char *stmt, size_t len, const uint8_t *sig,
                            size_t sig_len);

/* Text a requester supplies: 1..max bytes of kms_text_ok text (UTF-8
 * without control, format or line/paragraph separator characters). */
bool kms_recovery_text_ok(const char *s, size_t max);

#endif
