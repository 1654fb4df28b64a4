/*
 * kms_call.h - the handler contract: what a handler is given, what it
 * returns, and the helpers every handler shares (packing, authorization,
 * the audit facts). It sits below the handlers (kms/keys, kms/auditsvc)
 * and the fronts (kms/http), and includes neither.
 *
 * A front authenticates the caller, finds the route (struct kms_route),
 * decodes the body with kms_pbuf_unpack and the route's request descriptor
 * (a body that does not decode is refused there, kms_pbuf_refused, and no
 * handler runs), and calls the handler with the decoded message and a call:
 * the service, the policy document in force for this request (a reference
 * held until the request ends), the principal, and the request id. The
 * handler decides, acts, and packs its response into a kms_reply. It
 * returns a kms_err and sets a client-safe detail (kms_err_set); the front
 * turns it into a Twirp error. Afterwards the front frees the request once
 * with kms_pbuf_free_wiped, which wipes every string and bytes field first:
 * handlers neither free nor wipe their request.
 */
#ifndef KMS_CALL_H
#define KMS_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

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
    /* The sid of the grant that allowed the request (rule "grant"), copied
     * from the policy document of the last key decision; "" otherwise. */
    char grant_sid[POL_MAX_ID_LEN + 1];
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

/* The requestMetadata of an XKS call (kms_http_xks.c), for the event's
 * `xks` field: borrowed strings, "" when absent. */
struct kms_xks_metadata {
    const char *kms_request_id, *kms_operation, *aws_principal_arn, *kms_key_arn,
        *kms_via_service, *aws_source_vpc, *aws_source_vpce;
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
    /* The tenant an actor acts for (an XKS endpoint's, kms_http_xks.c), for
     * the audit event; NULL when none. A principal's own tenant wins. */
    const char *tenant;
    /* An XKS call's authenticated requestMetadata; NULL otherwise. */
    const struct kms_xks_metadata *xks;
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

/* A handler. req is the decoded request, of the type of its route's
 * request descriptor (the handler casts it: `const Custos__V1__EncryptRequest
 * *req = (const void *)msg;`); it belongs to the front, which wipes and
 * frees it after the handler returns. reply->data is malloc'd by the
 * handler (kms_rpc_pack) and freed by the front. */
typedef kms_err (*kms_handler)(struct kms_call *call, const ProtobufCMessage *req,
                               struct kms_reply *reply);

/* One row of a front's route table: "custos.v1.KeyService" / "Encrypt",
 * the request type the front decodes the body as, the response type the
 * handler packs (a JSON request is answered in JSON rendered with it), and
 * the handler. */
struct kms_route {
    const char *service;
    const char *method;
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *response;
    kms_handler handler;
};

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

/* Record the key a request acts on, for its audit event (NULLs allowed). */
void kms_rpc_audit_key(struct kms_call *call, const char *key_id, const char *region,
                       const char *token);

/* Pack a response message into a reply (the front frees reply->data). */
kms_err kms_rpc_pack(const ProtobufCMessage *m, struct kms_reply *reply);

/* The same for a response that carries plaintext or a data key: the reply
 * is marked secret, and the front wipes it after sending. */
kms_err kms_rpc_pack_secret(const ProtobufCMessage *m, struct kms_reply *reply);

#endif
