/*
 * kms_recovery.h - EscrowService: RequestRecovery, GetRecovery,
 * ApproveRecovery, ExecuteRecovery, CancelRecovery, ListRecoveries
 * (kms_recovery.c; proto/escrow.proto, docs/escrow-recovery.md).
 */
#ifndef KMS_RECOVERY_H
#define KMS_RECOVERY_H

#include "kms_call.h"

/* The handlers, registered in kms/http/kms_twirp.c. */
kms_err kms_rpc_request_recovery(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_get_recovery(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_approve_recovery(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_execute_recovery(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_cancel_recovery(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_list_recoveries(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);

#endif
