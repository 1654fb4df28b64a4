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

struct route {
    const char *method;
    kms_rpc_fn fn;
};

static const struct route key_service[] = {
    {"CreateKey", kms_rpc_create_key},
    {"DescribeKey", kms_rpc_describe_key},
    {"ListKeys", kms_rpc_list_keys},
    {"RotateKey", kms_rpc_rotate_key},
    {"EnableKey", kms_rpc_enable_key},
    {"DisableKey", kms_rpc_disable_key},
    {"ScheduleKeyDeletion", kms_rpc_schedule_key_deletion},
    {"CancelKeyDeletion", kms_rpc_cancel_key_deletion},
    {"Encrypt", kms_rpc_encrypt},
    {"Decrypt", kms_rpc_decrypt},
    {"ReEncrypt", kms_rpc_re_encrypt},
    {"GenerateDataKey", kms_rpc_generate_data_key},
    {"DecryptDataKey", kms_rpc_decrypt_data_key},
    {"GetImportParameters", kms_rpc_get_import_parameters},
    {"ImportKeyMaterial", kms_rpc_import_key_material},
};

static const struct route audit_service[] = {
    {"GetSignedTreeHead", kms_rpc_get_signed_tree_head},
    {"ExportAuditLog", kms_rpc_export_audit_log},
    {"GetAuditKeys", kms_rpc_get_audit_keys},
};

static const struct route field_service[] = {
    {"EncryptFields", kms_rpc_encrypt_fields},
    {"DecryptFields", kms_rpc_decrypt_fields},
    {"BlindIndex", kms_rpc_blind_index},
};

static const struct route escrow_service[] = {
    {"RequestRecovery", kms_rpc_request_recovery},
    {"GetRecovery", kms_rpc_get_recovery},
    {"ApproveRecovery", kms_rpc_approve_recovery},
    {"ExecuteRecovery", kms_rpc_execute_recovery},
    {"CancelRecovery", kms_rpc_cancel_recovery},
    {"ListRecoveries", kms_rpc_list_recoveries},
};

static kms_rpc_fn find(const struct route *r, size_t n, const char *method)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(r[i].method, method) == 0)
            return r[i].fn;
    return NULL;
}

kms_rpc_fn kms_rpc_lookup(const char *service, const char *method)
{
    if (strcmp(service, "custos.v1.AuditService") == 0)
        return find(audit_service, sizeof(audit_service) / sizeof(audit_service[0]), method);
    if (strcmp(service, "custos.v1.EscrowService") == 0)
        return find(escrow_service, sizeof(escrow_service) / sizeof(escrow_service[0]), method);
    if (strcmp(service, "custos.v1.FieldService") == 0)
        return find(field_service, sizeof(field_service) / sizeof(field_service[0]), method);
    if (strcmp(service, "custos.v1.KeyService") != 0)
        return NULL;
    for (size_t i = 0; i < sizeof(key_service) / sizeof(key_service[0]); i++)
        if (strcmp(key_service[i].method, method) == 0)
            return key_service[i].fn;
    return NULL;
}

kms_rpc_fn kms_twirp_route(const char *path, const char **out_method)
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
    kms_rpc_fn fn = kms_rpc_lookup(service, slash + 1);
    if (fn)
        *out_method = slash + 1;
    return fn;
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
