/*
 * audit_proof_pb.h - a Merkle proof (audit_merkle.h) as the repeated bytes
 * field of an export message (proto/audit.proto), for both sources of an
 * export: kmsd's AuditService and kmsctl reading a PostgreSQL log.
 */
#ifndef AUDIT_PROOF_PB_H
#define AUDIT_PROOF_PB_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "audit_merkle.h"
#include "kms_error.h"

/* Copy the n hashes of p into a new array of n bytes fields (*out, *out_n);
 * release it with audit_proof_pb_free. */
kms_err audit_proof_pb(const audit_hash *p, size_t n, size_t *out_n, ProtobufCBinaryData **out);

/* Free what audit_proof_pb made (NULL ok). */
void audit_proof_pb_free(ProtobufCBinaryData *p, size_t n);

#endif
