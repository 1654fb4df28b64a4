/*
 * kms_twirp.c - the Twirp route table, the dispatch of a routed request to
 * its handler, and error bodies.
 */
#include "kms_twirp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "audit_rpc.h"
#include "kms_envelope.h"
#include "kms_fields.h"
#include "kms_import.h"
#include "kms_keyadmin.h"
#include "kms_links.h"
#include "kms_pbuf.h"
#include "kms_recovery.h"
#include "kms_sign.h"
#include "proto/audit.pb-c.h"
#include "proto/escrow.pb-c.h"
#include "proto/fields.pb-c.h"
#include "proto/key.pb-c.h"
#include "proto/links.pb-c.h"

/* The route table: one row per RPC, {service, method, request type,
 * response type, handler} (struct kms_route, kms_call.h). The front
 * decodes the body as the row's request type, so the rows are also the
 * fuzzing surface (tests/fuzz) without the handlers. Adding an RPC family
 * is its handler file and header, an include above and a block of rows
 * here (docs/development.md). The order is the index order of
 * kms_twirp_route_at, which the fuzz seeds rely on: append, never insert. */
#define ROUTE(service, method, fn, msg)                                                           \
    {"custos.v1." service, (method), &custos__v1__##msg##_request__descriptor,                  \
     &custos__v1__##msg##_response__descriptor, (fn)}

static const struct kms_route routes[] = {
    /* KeyService: kms_keyadmin.h, kms_envelope.h, kms_import.h */
    ROUTE("KeyService", "CreateKey", kms_rpc_create_key, create_key),
    ROUTE("KeyService", "DescribeKey", kms_rpc_describe_key, describe_key),
    ROUTE("KeyService", "ListKeys", kms_rpc_list_keys, list_keys),
    ROUTE("KeyService", "RotateKey", kms_rpc_rotate_key, rotate_key),
    ROUTE("KeyService", "UpdateKeyRotation", kms_rpc_update_key_rotation, update_key_rotation),
    ROUTE("KeyService", "EnableKey", kms_rpc_enable_key, enable_key),
    ROUTE("KeyService", "DisableKey", kms_rpc_disable_key, disable_key),
    ROUTE("KeyService", "ScheduleKeyDeletion", kms_rpc_schedule_key_deletion,
          schedule_key_deletion),
    ROUTE("KeyService", "CancelKeyDeletion", kms_rpc_cancel_key_deletion, cancel_key_deletion),
    ROUTE("KeyService", "Encrypt", kms_rpc_encrypt, encrypt),
    ROUTE("KeyService", "Decrypt", kms_rpc_decrypt, decrypt),
    ROUTE("KeyService", "ReEncrypt", kms_rpc_re_encrypt, re_encrypt),
    ROUTE("KeyService", "GenerateDataKey", kms_rpc_generate_data_key, generate_data_key),
    ROUTE("KeyService", "DecryptDataKey", kms_rpc_decrypt_data_key, decrypt_data_key),
    ROUTE("KeyService", "GetImportParameters", kms_rpc_get_import_parameters,
          get_import_parameters),
    ROUTE("KeyService", "ImportKeyMaterial", kms_rpc_import_key_material, import_key_material),
    /* AuditService: audit_rpc.h */
    ROUTE("AuditService", "GetSignedTreeHead", kms_rpc_get_signed_tree_head,
          get_signed_tree_head),
    ROUTE("AuditService", "ExportAuditLog", kms_rpc_export_audit_log, export_audit_log),
    ROUTE("AuditService", "GetAuditKeys", kms_rpc_get_audit_keys, get_audit_keys),
    /* FieldService: kms_fields.h */
    ROUTE("FieldService", "EncryptFields", kms_rpc_encrypt_fields, encrypt_fields),
    ROUTE("FieldService", "DecryptFields", kms_rpc_decrypt_fields, decrypt_fields),
    ROUTE("FieldService", "BlindIndex", kms_rpc_blind_index, blind_index),
    /* EscrowService: kms_recovery.h */
    ROUTE("EscrowService", "RequestRecovery", kms_rpc_request_recovery, request_recovery),
    ROUTE("EscrowService", "GetRecovery", kms_rpc_get_recovery, get_recovery),
    ROUTE("EscrowService", "ApproveRecovery", kms_rpc_approve_recovery, approve_recovery),
    ROUTE("EscrowService", "ExecuteRecovery", kms_rpc_execute_recovery, execute_recovery),
    ROUTE("EscrowService", "CancelRecovery", kms_rpc_cancel_recovery, cancel_recovery),
    ROUTE("EscrowService", "ListRecoveries", kms_rpc_list_recoveries, list_recoveries),
    /* KeyService signing keys: kms_sign.h */
    ROUTE("KeyService", "GetPublicKey", kms_rpc_get_public_key, get_public_key),
    ROUTE("KeyService", "Sign", kms_rpc_sign, sign),
    ROUTE("KeyService", "Verify", kms_rpc_verify, verify),
    /* LinkService: kms_links.h */
    ROUTE("LinkService", "MintLinkToken", kms_rpc_mint_link_token, mint_link_token),
    ROUTE("LinkService", "RedeemLinkToken", kms_rpc_redeem_link_token, redeem_link_token),
    ROUTE("LinkService", "RevokeLinkTokens", kms_rpc_revoke_link_tokens, revoke_link_tokens),
};

#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

const struct kms_route *kms_twirp_lookup(const char *service, const char *method)
{
    for (size_t i = 0; i < N_ROUTES; i++)
        if (strcmp(routes[i].service, service) == 0 && strcmp(routes[i].method, method) == 0)
            return &routes[i];
    return NULL;
}

const struct kms_route *kms_twirp_route(const char *path, const char **out_method)
{
    static const char prefix[] = "/twirp/";
    *out_method = NULL;
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return NULL;
    const char *rest = path + sizeof(prefix) - 1;
    const char *slash = strchr(rest, '/');
    if (slash == NULL || slash == rest || (size_t)(slash - rest) >= 64 || strchr(slash + 1, '/'))
        return NULL;
    char service[64];
    memcpy(service, rest, (size_t)(slash - rest));
    service[slash - rest] = '\0';
    const struct kms_route *r = kms_twirp_lookup(service, slash + 1);
    if (r)
        *out_method = slash + 1;
    return r;
}

const ProtobufCMessageDescriptor *kms_twirp_route_request(const char *path)
{
    const char *method;
    const struct kms_route *r = kms_twirp_route(path, &method);
    return r ? r->request : NULL;
}

const ProtobufCMessageDescriptor *kms_twirp_route_response(const char *path)
{
    const char *method;
    const struct kms_route *r = kms_twirp_route(path, &method);
    return r ? r->response : NULL;
}

size_t kms_twirp_n_routes(void)
{
    return N_ROUTES;
}

const struct kms_route *kms_twirp_route_row(size_t i)
{
    return i < N_ROUTES ? &routes[i] : NULL;
}

const ProtobufCMessageDescriptor *kms_twirp_route_at(size_t i, char *out_path, size_t out_len)
{
    const struct kms_route *r = kms_twirp_route_row(i);
    if (r == NULL)
        return NULL;
    if (out_path)
        snprintf(out_path, out_len, "/twirp/%s/%s", r->service, r->method);
    return r->request;
}

const ProtobufCMessageDescriptor *kms_twirp_route_response_at(size_t i)
{
    const struct kms_route *r = kms_twirp_route_row(i);
    return r ? r->response : NULL;
}

kms_err kms_twirp_dispatch(const struct kms_route *r, struct kms_call *call, const uint8_t *body,
                           size_t len, struct kms_reply *reply)
{
    ProtobufCMessage *req = kms_pbuf_unpack(r->request, body ? body : (const uint8_t *)"", len);
    /* The refusal the handlers used to give themselves: the same code and
     * message ('the body is not a valid EncryptRequest message: ...'). */
    if (req == NULL)
        return kms_pbuf_refused(r->request->short_name);
    kms_err rc = r->handler(call, req, reply);
    kms_pbuf_free_wiped(req);
    return rc;
}

/* Twirp v7's HTTP status of each error code (the protocol's table, so it
 * lives with the protocol; the kms_err -> code table is the base's). */
/* Indexed like kms_twirp_codes: canceled, unknown, invalid_argument,
 * malformed, deadline_exceeded, not_found, bad_route, already_exists,
 * permission_denied, unauthenticated, resource_exhausted,
 * failed_precondition, aborted, out_of_range, unimplemented, internal,
 * unavailable, dataloss. */
static const int twirp_status[KMS_TWIRP_CODE_COUNT] = {
    408, 500, 400, 400, 408, 404, 404, 409, 403,
    401, 429, 412, 409, 400, 501, 500, 503, 500,
};

int kms_twirp_http_status(kms_err err)
{
    if (err == KMS_OK)
        return 200;
    int i = kms_twirp_code_index(kms_err_twirp_code(err));
    return i >= 0 ? twirp_status[i] : 500;
}

char *kms_twirp_error_body(kms_err err, const char *msg)
{
    json_t *o = json_pack("{s:s, s:s}", "code", kms_err_twirp_code(err), "msg",
                          msg && *msg ? msg : kms_err_twirp_code(err));
    if (o == NULL)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    /* The caller frees with free(); kmsd gives jansson its own allocator
     * (kms_secret_alloc), whose blocks only its own free may release. */
    char *copy = s ? strdup(s) : NULL;
    json_free_t jfree = NULL;
    json_get_alloc_funcs(NULL, &jfree);
    if (s)
        jfree(s);
    return copy;
}
