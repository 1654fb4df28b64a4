/*
 * kms_keyadmin.h - KeyService's key lifecycle RPCs: CreateKey, DescribeKey,
 * ListKeys, RotateKey, UpdateKeyRotation, EnableKey, DisableKey,
 * ScheduleKeyDeletion, CancelKeyDeletion (kms_keyadmin.c), and the key
 * metadata other handler files reply with.
 */
#ifndef KMS_KEYADMIN_H
#define KMS_KEYADMIN_H

#include "kms_call.h"

/* The handlers, registered in kms/http/kms_twirp.c. */
kms_err kms_rpc_create_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_describe_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_list_keys(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_rotate_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_update_key_rotation(struct kms_call *, const ProtobufCMessage *,
                                    struct kms_reply *);
kms_err kms_rpc_enable_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_disable_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_schedule_key_deletion(struct kms_call *, const ProtobufCMessage *,
                                      struct kms_reply *);
kms_err kms_rpc_cancel_key_deletion(struct kms_call *, const ProtobufCMessage *,
                                    struct kms_reply *);

/* The KeyMetadata (versions included) of a key, for handlers in other files
 * that reply with more than {key} (kms_import.c). Free it with
 * kms_rpc_key_metadata_free, never with protobuf-c. */
struct Custos__V1__KeyMetadata;
kms_err kms_rpc_key_metadata_new(struct kms_call *call, const char *key_id,
                                 struct Custos__V1__KeyMetadata **out);
void kms_rpc_key_metadata_free(struct Custos__V1__KeyMetadata *m);

#endif
