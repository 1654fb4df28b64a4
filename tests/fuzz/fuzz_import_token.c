/*
 * fuzz_import_token - the BYOK import-token parser (kms_import_token_parse),
 * run on the token an ImportKeyMaterial caller sends back.
 * Property: accepted exactly when it has the issued shape (33 bytes, format
 * byte 0x01), and the id is then its SHA-256.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "kms_import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t id[KMS_IMPORT_TOKEN_ID_LEN], want[SHA256_DIGEST_LENGTH];
    bool ok = kms_import_token_parse(size ? data : NULL, size, id) == KMS_OK;
    bool shape = size == KMS_IMPORT_TOKEN_LEN && data[0] == 0x01;
    if (ok != shape)
        abort();
    if (ok && memcmp(id, SHA256(data, size, want), sizeof(want)) != 0)
        abort();
    return 0;
}
