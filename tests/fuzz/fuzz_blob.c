/*
 * fuzz_blob - the ciphertext blob parser (docs/ciphertext-format.md), which
 * Decrypt and ReEncrypt run on caller bytes before any HSM call.
 * Properties: no crash; a parsed header lies inside the blob, leaves at
 * least a tag, and re-serialises to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_blob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kms_blob_header h;
    size_t hl = 0;
    if (kms_blob_parse(data, size, &h, &hl) != KMS_OK)
        return 0;
    if (hl > size || size - hl < KMS_BLOB_TAG_LEN || hl > KMS_BLOB_HEADER_MAX)
        abort();
    uint8_t out[KMS_BLOB_HEADER_MAX];
    size_t ol = 0;
    if (kms_blob_write_header(&h, out, &ol) != KMS_OK || ol != hl || memcmp(out, data, hl) != 0)
        abort();
    return 0;
}
