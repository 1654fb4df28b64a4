/*
 * kms_envelope.h - KeyService's cryptographic RPCs: Encrypt, Decrypt,
 * ReEncrypt, GenerateDataKey, DecryptDataKey (kms_envelope.c). Each takes
 * the decoded request of its route (kms_call.h) and packs its response;
 * Decrypt's and the data keys' replies are secret.
 */
#ifndef KMS_ENVELOPE_H
#define KMS_ENVELOPE_H

#include "kms_call.h"

/* The handlers, registered in kms/http/kms_twirp.c. */
kms_err kms_rpc_encrypt(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_decrypt(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_re_encrypt(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_generate_data_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);
kms_err kms_rpc_decrypt_data_key(struct kms_call *, const ProtobufCMessage *, struct kms_reply *);

#endif
