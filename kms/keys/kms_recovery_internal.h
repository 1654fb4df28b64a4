/*
 * kms_recovery_internal.h - the steps the EscrowService handler files share
 * (kms_recovery.c: request, approval, reading, cancelling; kms_recovery_exec.c:
 * execution), defined in kms_recovery_util.c. Not for other files.
 */
#ifndef KMS_RECOVERY_INTERNAL_H
#define KMS_RECOVERY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kms_call.h"
#include "kms_recovery_stmt.h"
#include "kms_store.h"
#include "pol_doc.h"
#include "proto/escrow.pb-c.h"

/* Longest DER ECDSA P-256 signature an approval may carry. */
#define KMS_RECOVERY_MAX_SIG 80

_Static_assert(KMS_RECOVERY_STMT_MAX <= KMS_AUDIT_STATEMENT_MAX &&
                   KMS_RECOVERY_MAX_SIG <= KMS_AUDIT_SIGNATURE_MAX,
               "the audit event holds a whole statement and signature");

/* A refusal by a check of the recovery files, after the policy let the call this
 * far: the audit event names that check (docs/audit.md lists them) rather
 * than the rule that allowed the call. The client's message is unchanged. */
#define KMS_RECOVERY_REFUSE_GOTO(rule_, cond, label, err, ...) \
    do {                                                       \
        if (!(cond)) {                                         \
            call->audit.rule = (rule_);                        \
            rc = kms_err_set((err), __VA_ARGS__);              \
            goto label;                                        \
        }                                                      \
    } while (0)

int64_t kms_recovery_now(void);
/* n bytes as lowercase hex into out (2n + 1 bytes). */
void kms_recovery_hex(const uint8_t *b, size_t n, char *out);

/* A Recovery message built from a record and its approvals (strings
 * borrowed from them); released with kms_recovery_msg_release. */
struct kms_recovery_msg {
    Custos__V1__Recovery m;
    Custos__V1__RecoveryApproval *a;
    Custos__V1__RecoveryApproval **ap;
    char statement[KMS_RECOVERY_STMT_MAX];
};

kms_err kms_recovery_msg_fill(struct kms_recovery_msg *rm, const struct kms_recovery_record *r,
                              const struct kms_recovery_approval *appr, size_t n);
void kms_recovery_msg_release(struct kms_recovery_msg *rm);

/* The audit detail: fmt with id and extra (NULL: ""). */
void kms_recovery_note(struct kms_call *call, const char *fmt, const char *id, const char *extra);
/* The recovery id a request named, bounded and printable, for its event. */
void kms_recovery_audit_id(struct kms_call *call, const char *id);
/* The statement's SHA-256 (and with whole, the statement) for the event. */
void kms_recovery_audit_statement(struct kms_call *call, const char *stmt, size_t len, bool whole);
/* ApproveRecovery's evidence: the signature and the officer key's SHA-256. */
void kms_recovery_audit_approval(struct kms_call *call, EVP_PKEY *officer, const uint8_t *sig,
                                 size_t sig_len);
/* An open recovery past its expiry becomes EXPIRED, with its own event. */
kms_err kms_recovery_refresh_expiry(struct kms_call *call, struct kms_recovery_record *r);
/* Load a recovery visible to the caller and authorize op on its key;
 * *appr (when appr is not NULL) is malloc'd. */
kms_err kms_recovery_load(struct kms_call *call, enum pol_op op, const char *id,
                          struct kms_recovery_record *r, struct kms_key_record *k,
                          struct kms_recovery_approval **appr, size_t *n_appr);
/* Reply with recovery id as a message of type desc (counted: Approve's). */
kms_err kms_recovery_reply(struct kms_call *call, const char *id,
                           const ProtobufCMessageDescriptor *desc, bool counted,
                           struct kms_reply *reply);
/* EXPORT_WRAPPED's recipient, registered by policy for region: its DER
 * SHA-256 as hex, and the DER into *out_der (NULL: not wanted). */
struct pol_tenant;
kms_err kms_recovery_pick_recipient(struct kms_call *call, const struct pol_tenant *t,
                                    const char *id, const char *region, char sha_hex[65],
                                    unsigned char **out_der, size_t *out_len);
/* The escrowed versions of a key: signing keys keep theirs in their own
 * table (kms_store.h, schema 5). *out is malloc'd. */
kms_err kms_recovery_escrow_list(struct kms_call *call, const struct kms_key_record *k,
                                 struct kms_escrow_record **out, size_t *out_n);

#endif
