/*
 * kms_twirp.c - the Twirp route table and error bodies.
 */
#include "kms_twirp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "audit_rpc.h"
#include "kms_fields.h"
#include "kms_sign.h"
#include "proto/audit.pb-c.h"
#include "proto/escrow.pb-c.h"
#include "proto/fields.pb-c.h"
#include "proto/key.pb-c.h"

/* Each route names its request type too, so that the front's whole
 * headers + body path can be exercised without the handlers (tests/fuzz). */
struct route {
    const char *method;
    kms_rpc_fn fn;
    const ProtobufCMessageDescriptor *request;
    /* The reply's type: a JSON request is answered in JSON, rendered from
     * the handler's packed reply with it (kms_pjson). */
    const ProtobufCMessageDescriptor *response;
};

#define ROUTE(method, fn, msg)                                                                    \
    {(method), (fn), &custos__v1__##msg##_request__descriptor,                                  \
     &custos__v1__##msg##_response__descriptor}

static const struct route key_service[] = {
    ROUTE("CreateKey", kms_rpc_create_key, create_key),
    ROUTE("DescribeKey", kms_rpc_describe_key, describe_key),
    ROUTE("ListKeys", kms_rpc_list_keys, list_keys),
    ROUTE("RotateKey", kms_rpc_rotate_key, rotate_key),
    ROUTE("UpdateKeyRotation", kms_rpc_update_key_rotation, update_key_rotation),
    ROUTE("EnableKey", kms_rpc_enable_key, enable_key),
    ROUTE("DisableKey", kms_rpc_disable_key, disable_key),
    ROUTE("ScheduleKeyDeletion", kms_rpc_schedule_key_deletion, schedule_key_deletion),
    ROUTE("CancelKeyDeletion", kms_rpc_cancel_key_deletion, cancel_key_deletion),
    ROUTE("Encrypt", kms_rpc_encrypt, encrypt),
    ROUTE("Decrypt", kms_rpc_decrypt, decrypt),
    ROUTE("ReEncrypt", kms_rpc_re_encrypt, re_encrypt),
    ROUTE("GenerateDataKey", kms_rpc_generate_data_key, generate_data_key),
    ROUTE("DecryptDataKey", kms_rpc_decrypt_data_key, decrypt_data_key),
    ROUTE("GetImportParameters", kms_rpc_get_import_parameters, get_import_parameters),
    ROUTE("ImportKeyMaterial", kms_rpc_import_key_material, import_key_material),
    ROUTE("GetPublicKey", kms_rpc_get_public_key, get_public_key),
    ROUTE("Sign", kms_rpc_sign, sign),
    ROUTE("Verify", kms_rpc_verify, verify),
};

static const struct route audit_service[] = {
    ROUTE("GetSignedTreeHead", kms_rpc_get_signed_tree_head, get_signed_tree_head),
    ROUTE("ExportAuditLog", kms_rpc_export_audit_log, export_audit_log),
    ROUTE("GetAuditKeys", kms_rpc_get_audit_keys, get_audit_keys),
};

static const struct route field_service[] = {
    ROUTE("EncryptFields", kms_rpc_encrypt_fields, encrypt_fields),
    ROUTE("DecryptFields", kms_rpc_decrypt_fields, decrypt_fields),
    ROUTE("BlindIndex", kms_rpc_blind_index, blind_index),
};

static const struct route escrow_service[] = {
    ROUTE("RequestRecovery", kms_rpc_request_recovery, request_recovery),
    ROUTE("GetRecovery", kms_rpc_get_recovery, get_recovery),
    ROUTE("ApproveRecovery", kms_rpc_approve_recovery, approve_recovery),
    ROUTE("ExecuteRecovery", kms_rpc_execute_recovery, execute_recovery),
    ROUTE("CancelRecovery", kms_rpc_cancel_recovery, cancel_recovery),
    ROUTE("ListRecoveries", kms_rpc_list_recoveries, list_recoveries),
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct route *find(const struct route *r, size_t n, const char *method)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(r[i].method, method) == 0)
            return &r[i];
    return NULL;
}

static const struct route *lookup(const char *service, const char *method)
{
    if (strcmp(service, "custos.v1.AuditService") == 0)
        return find(audit_service, N(audit_service), method);
    if (strcmp(service, "custos.v1.EscrowService") == 0)
        return find(escrow_service, N(escrow_service), method);
    if (strcmp(service, "custos.v1.FieldService") == 0)
        return find(field_service, N(field_service), method);
    if (strcmp(service, "custos.v1.KeyService") == 0)
        return find(key_service, N(key_service), method);
    return NULL;
}

kms_rpc_fn kms_rpc_lookup(const char *service, const char *method)
{
    const struct route *r = lookup(service, method);
    return r ? r->fn : NULL;
}

static const struct route *route_of(const char *path, const char **out_method)
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
    const struct route *r = lookup(service, slash + 1);
    if (r)
        *out_method = slash + 1;
    return r;
}

kms_rpc_fn kms_twirp_route(const char *path, const char **out_method)
{
    const struct route *r = route_of(path, out_method);
    return r ? r->fn : NULL;
}

const ProtobufCMessageDescriptor *kms_twirp_route_request(const char *path)
{
    const char *method;
    const struct route *r = route_of(path, &method);
    return r ? r->request : NULL;
}

const ProtobufCMessageDescriptor *kms_twirp_route_response(const char *path)
{
    const char *method;
    const struct route *r = route_of(path, &method);
    return r ? r->response : NULL;
}

size_t kms_twirp_n_routes(void)
{
    return N(key_service) + N(audit_service) + N(field_service) + N(escrow_service);
}

static const struct route *route_at(size_t i, const char **out_service)
{
    const struct route *r;
    const char *service;
    if (i < N(key_service)) {
        r = &key_service[i];
        service = "custos.v1.KeyService";
    } else if ((i -= N(key_service)) < N(audit_service)) {
        r = &audit_service[i];
        service = "custos.v1.AuditService";
    } else if ((i -= N(audit_service)) < N(field_service)) {
        r = &field_service[i];
        service = "custos.v1.FieldService";
    } else if ((i -= N(field_service)) < N(escrow_service)) {
        r = &escrow_service[i];
        service = "custos.v1.EscrowService";
    } else {
        return NULL;
    }
    *out_service = service;
    return r;
}

const ProtobufCMessageDescriptor *kms_twirp_route_at(size_t i, char *out_path, size_t out_len)
{
    const char *service;
    const struct route *r = route_at(i, &service);
    if (r == NULL)
        return NULL;
    if (out_path)
        snprintf(out_path, out_len, "/twirp/%s/%s", service, r->method);
    return r->request;
}

const ProtobufCMessageDescriptor *kms_twirp_route_response_at(size_t i)
{
    const char *service;
    const struct route *r = route_at(i, &service);
    return r ? r->response : NULL;
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

kms_err kms_rpc_pack(const ProtobufCMessage *m, struct kms_reply *r)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    r->data = malloc(n ? n : 1);
    KMS_ENSURE(r->data != NULL, KMS_ERR_NOMEM, "out of memory");
    r->len = protobuf_c_message_pack(m, r->data);
    return KMS_OK;
}
