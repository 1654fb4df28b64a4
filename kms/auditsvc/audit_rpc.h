/*
 * audit_rpc.h - AuditService handlers (role auditor).
 */
#ifndef AUDIT_RPC_H
#define AUDIT_RPC_H

#include "kms_call.h"

kms_err kms_rpc_get_signed_tree_head(struct kms_call *, const ProtobufCMessage *,
                                     struct kms_reply *);
kms_err kms_rpc_export_audit_log(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_get_audit_keys(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);

#endif
