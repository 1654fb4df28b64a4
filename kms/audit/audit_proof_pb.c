/*
 * audit_proof_pb.c - Merkle proofs as protobuf bytes fields (audit_proof_pb.h).
 */
#include "audit_proof_pb.h"

#include <stdlib.h>
#include <string.h>

kms_err audit_proof_pb(const audit_hash *p, size_t n, size_t *out_n, ProtobufCBinaryData **out)
{
    *out = calloc(n ? n : 1, sizeof(**out));
    KMS_ENSURE(*out != NULL, KMS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        (*out)[i].data = malloc(AUDIT_HASH_LEN);
        KMS_ENSURE((*out)[i].data != NULL, KMS_ERR_NOMEM, "out of memory");
        memcpy((*out)[i].data, p[i], AUDIT_HASH_LEN);
        (*out)[i].len = AUDIT_HASH_LEN;
    }
    *out_n = n;
    return KMS_OK;
}

void audit_proof_pb_free(ProtobufCBinaryData *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++)
        free(p[i].data);
    free(p);
}
