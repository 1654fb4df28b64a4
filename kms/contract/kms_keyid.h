/*
 * kms_keyid.h - key ids: 32 lowercase hex characters <-> 16 bytes.
 *
 * In the contract because key authorization (kms_call.h) parses the id a
 * request names before it looks the key up; the blob format (kms_blob.h)
 * carries the 16 bytes.
 */
#ifndef KMS_KEYID_H
#define KMS_KEYID_H

#include <stdint.h>

#include "kms_error.h"

/* KMS_ERR_INVALID_ARGUMENT unless hex is exactly 32 lowercase hex digits. */
kms_err kms_key_id_parse(const char *hex, uint8_t out[16]);
void kms_key_id_format(const uint8_t id[16], char out[33]);

#endif
