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
};

static const struct route key_service[] = {
    {"CreateKey", kms_rpc_create_key, &custos__v1__create_key_request__descriptor},
    {"DescribeKey", kms_rpc_describe_key, &custos__v1__describe_key_request__descriptor},
    {"ListKeys", kms_rpc_list_keys, &custos__v1__list_keys_request__descriptor},
    {"RotateKey", kms_rpc_rotate_key, &custos__v1__rotate_key_request__descriptor},
    {"UpdateKeyRotation", kms_rpc_update_key_rotation,
     &custos__v1__update_key_rotation_request__descriptor},
    {"EnableKey", kms_rpc_enable_key, &custos__v1__enable_key_request__descriptor},
    {"DisableKey", kms_rpc_disable_key, &custos__v1__disable_key_request__descriptor},
    {"ScheduleKeyDeletion", kms_rpc_schedule_key_deletion,
     &custos__v1__schedule_key_deletion_request__descriptor},
    {"CancelKeyDeletion", kms_rpc_cancel_key_deletion,
     &custos__v1__cancel_key_deletion_request__descriptor},
    {"Encrypt", kms_rpc_encrypt, &custos__v1__encrypt_request__descriptor},
    {"Decrypt", kms_rpc_decrypt, &custos__v1__decrypt_request__descriptor},
    {"ReEncrypt", kms_rpc_re_encrypt, &custos__v1__re_encrypt_request__descriptor},
    {"GenerateDataKey", kms_rpc_generate_data_key,
     &custos__v1__generate_data_key_request__descriptor},
    {"DecryptDataKey", kms_rpc_decrypt_data_key, &custos__v1__decrypt_data_key_request__descriptor},
    {"GetImportParameters", kms_rpc_get_import_parameters,
     &custos__v1__get_import_parameters_request__descriptor},
    {"ImportKeyMaterial", kms_rpc_import_key_material,
     &custos__v1__import_key_material_request__descriptor},
};

static const struct route audit_service[] = {
    {"GetSignedTreeHead", kms_rpc_get_signed_tree_head,
     &custos__v1__get_signed_tree_head_request__descriptor},
    {"ExportAuditLog", kms_rpc_export_audit_log, &custos__v1__export_audit_log_request__descriptor},
    {"GetAuditKeys", kms_rpc_get_audit_keys, &custos__v1__get_audit_keys_request__descriptor},
};

static const struct route field_service[] = {
    {"EncryptFields", kms_rpc_encrypt_fields, &custos__v1__encrypt_fields_request__descriptor},
    {"DecryptFields", kms_rpc_decrypt_fields, &custos__v1__decrypt_fields_request__descriptor},
    {"BlindIndex", kms_rpc_blind_index, &custos__v1__blind_index_request__descriptor},
};

static const struct route escrow_service[] = {
    {"RequestRecovery", kms_rpc_request_recovery, &custos__v1__request_recovery_request__descriptor},
    {"GetRecovery", kms_rpc_get_recovery, &custos__v1__get_recovery_request__descriptor},
    {"ApproveRecovery", kms_rpc_approve_recovery, &custos__v1__approve_recovery_request__descriptor},
    {"ExecuteRecovery", kms_rpc_execute_recovery, &custos__v1__execute_recovery_request__descriptor},
    {"CancelRecovery", kms_rpc_cancel_recovery, &custos__v1__cancel_recovery_request__descriptor},
    {"ListRecoveries", kms_rpc_list_recoveries, &custos__v1__list_recoveries_request__descriptor},
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

size_t kms_twirp_n_routes(void)
{
    return N(key_service) + N(audit_service) + N(field_service) + N(escrow_service);
}

const ProtobufCMessageDescriptor *kms_twirp_route_at(size_t i, char *out_path, size_t out_len)
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
    if (out_path)
        snprintf(out_path, out_len, "/twirp/%s/%s", service, r->method);
    return r->request;
}

char *kms_twirp_error_body(kms_err err, const char *msg)
{
    json_t *o = json_pack("{s:s, s:s}", "code", kms_err_twirp_code(err), "msg",
                          msg && *msg ? msg : kms_err_twirp_code(err));
    if (o == NULL)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

kms_err kms_rpc_pack(const ProtobufCMessage *m, struct kms_reply *r)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    r->data = malloc(n ? n : 1);
    KMS_ENSURE(r->data != NULL, KMS_ERR_NOMEM, "out of memory");
    r->len = protobuf_c_message_pack(m, r->data);
    return KMS_OK;
}
