/*
 * fuzz_fieldblob - the field blob parser (docs/metadata.md), run by
 * DecryptFields on caller bytes before any HSM call.
 * Properties: no crash; a parsed blob re-serialises to the same header and
 * its IV points inside it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_fieldblob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum kms_field_mode mode;
    uint32_t version = 0;
    const uint8_t *iv = NULL;
    if (kms_field_blob_parse(data, size, &mode, &version, &iv) != KMS_OK)
        return 0;
    if (size < KMS_FIELD_OVERHEAD || iv < data || iv + KMS_FIELD_IV_LEN > data + size)
        abort();
    uint8_t hdr[KMS_FIELD_HEADER_LEN];
    kms_field_header_write(mode, version, iv, hdr);
    if (memcmp(hdr, data, sizeof(hdr)) != 0)
        abort();
    return 0;
}
