/*
 * kms_rpc.h - what an RPC handler sees, and the route table.
 *
 * The HTTP front authenticates the caller and hands each handler a decoded
 * call: the service, the policy document in force for this request (a
 * reference held until the request ends), the principal, and the request
 * id. A handler unpacks its request, decides, acts, and packs its response
 * into a kms_reply. Handlers return a kms_err and set a client-safe detail
 * (kms_err_set); the front turns it into a Twirp error.
 */
#ifndef KMS_RPC_H
#define KMS_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_pbuf.h"
#include "kms_service.h"
#include "pol_doc.h"

/* What the audit event of a request records beyond who and what: handlers
 * fill these as they learn them (kms_rpc_authorize_key fills key, region,
 * token and rule), and the front writes one event per request from them. */
#define KMS_AUDIT_STATEMENT_MAX 2048
#define KMS_AUDIT_SIGNATURE_MAX 80

struct kms_audit_facts {
    char key_id[33];
    uint32_t key_version;
    char region[64];
    char token[33];
    const char *rule; /* static string: the policy rule that decided */
    char detail[160]; /* non-secret note for a successful request (e.g. a recovery id) */
    /* EscrowService: the recovery the request named (the id as probed when
     * it was refused, at most 32 printable characters), and the evidence an
     * auditor needs to re-verify approvals with openssl alone
     * (docs/escrow-recovery.md): the canonical statement (RequestRecovery),
     * its SHA-256 (hex), the officer's DER signature over it and the SHA-256
     * of the officer's DER public key (ApproveRecovery). Empty when unset. */
    char recovery_id[33];
    char statement[KMS_AUDIT_STATEMENT_MAX];
    char statement_sha256[65];
    uint8_t approval_signature[KMS_AUDIT_SIGNATURE_MAX];
    size_t approval_signature_len;
    char officer_key_sha256[65];
};

struct kms_call {
    struct kms_service *svc;
    struct pol_doc *policy;
    const struct pol_principal *who;
    char request_id[33];
    struct kms_audit_facts audit;
    /* Who acts when no principal does (who == NULL): KMS_SYSTEM_ACTOR for
     * what the service does on its own (automatic rotation); NULL for an
     * unauthenticated request. */
    const char *actor;
};

/* The principal named in the audit events of the service's own actions;
 * their role is "system". */
#define KMS_SYSTEM_ACTOR "custos:system"

/* The packed response. secret=true when it carries plaintext or a data key:
 * the front wipes it after sending. */
struct kms_reply {
    uint8_t *data;
    size_t len;
    bool secret;
};

typedef kms_err (*kms_rpc_fn)(struct kms_call *call, const uint8_t *body, size_t len,
                              struct kms_reply *reply);

/* Handler for "custos.v1.KeyService/Encrypt" etc., or NULL (bad_route). */
kms_rpc_fn kms_rpc_lookup(const char *service, const char *method);

/* The handlers (kms_keyadmin.c and kms_envelope.c). */
kms_err kms_rpc_create_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_describe_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_list_keys(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_rotate_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_update_key_rotation(struct kms_call *, const uint8_t *, size_t,
                                    struct kms_reply *);
kms_err kms_rpc_enable_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_disable_key(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_schedule_key_deletion(struct kms_call *, const uint8_t *, size_t,
                                      struct kms_reply *);
kms_err kms_rpc_cancel_key_deletion(struct kms_call *, const uint8_t *, size_t,
                                    struct kms_reply *);
kms_err kms_rpc_encrypt(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_decrypt(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_re_encrypt(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_generate_data_key(struct kms_call *, const uint8_t *, size_t,
                                  struct kms_reply *);
kms_err kms_rpc_decrypt_data_key(struct kms_call *, const uint8_t *, size_t,
                                 struct kms_reply *);

/* BYOK import (kms_import.c). */
kms_err kms_rpc_get_import_parameters(struct kms_call *, const uint8_t *, size_t,
                                      struct kms_reply *);
kms_err kms_rpc_import_key_material(struct kms_call *, const uint8_t *, size_t,
                                    struct kms_reply *);

/* Escrow and recovery (kms_recovery.c). */
kms_err kms_rpc_request_recovery(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_get_recovery(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_approve_recovery(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_execute_recovery(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_cancel_recovery(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);
kms_err kms_rpc_list_recoveries(struct kms_call *, const uint8_t *, size_t, struct kms_reply *);

/* Shared by handlers: load a key visible to the caller and authorize op on
 * it. A missing key and another tenant's key give the same NOT_FOUND. */
struct kms_key_record;
kms_err kms_rpc_authorize_key(struct kms_call *call, enum pol_op op, const char *key_id,
                              struct kms_key_record *out_key);

/* The same for an operation on the caller's own tenant (CreateKey in
 * region, ListKeys and ListRecoveries with region NULL). A caller without a
 * tenant (a global auditor or operator) is refused like any other, with
 * PERMISSION_DENIED and the deciding rule in its audit event. Every handler
 * of a tenant operation authorizes through here. */
kms_err kms_rpc_authorize_tenant(struct kms_call *call, enum pol_op op, const char *region);

/* The KeyMetadata (versions included) of a key, for handlers in other files
 * that reply with more than {key} (kms_import.c). Free it with
 * kms_rpc_key_metadata_free, never with protobuf-c. */
struct Custos__V1__KeyMetadata;
kms_err kms_rpc_key_metadata_new(struct kms_call *call, const char *key_id,
                                 struct Custos__V1__KeyMetadata **out);
void kms_rpc_key_metadata_free(struct Custos__V1__KeyMetadata *m);

/* Record the key a request acts on, for its audit event (NULLs allowed). */
void kms_rpc_audit_key(struct kms_call *call, const char *key_id, const char *region,
                       const char *token);

/* Pack a response message into a reply (the front frees reply->data). */
struct ProtobufCMessage;
kms_err kms_rpc_pack(const struct ProtobufCMessage *m, struct kms_reply *reply);

/* A body kms_pbuf_unpack refused: malformed (or over kms_pbuf's limits:
 * the reason is appended), or invalid_argument for a string field with a
 * NUL byte or not UTF-8. Request bodies are decoded with kms_pbuf_unpack,
 * never with protobuf-c's unpack directly. */
#define KMS_RPC_MALFORMED(what) kms_pbuf_refused(what)

#endif
