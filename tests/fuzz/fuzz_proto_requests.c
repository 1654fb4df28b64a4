/*
 * fuzz_proto_requests - every request message decoder, as the handlers call
 * it (kms_pbuf_unpack: wire walk, limits, bounded allocator).
 *
 * Input: one byte choosing the route (modulo the number of routes, in
 * kms_twirp's table order), then the body.
 * Properties: no crash, no leak (libFuzzer's LeakSanitizer); a decoded
 * message re-encodes and that encoding decodes again (what the service
 * accepts it can also describe back).
 */
#include <stdint.h>
#include <stdlib.h>

#include "kms_pbuf.h"
#include "kms_twirp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = kms_twirp_route_at(data[0] % kms_twirp_n_routes(), NULL, 0);
    if (d == NULL)
        abort();
    ProtobufCMessage *m = kms_pbuf_unpack(d, data + 1, size - 1);
    if (m == NULL)
        return 0;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        abort();
    if (protobuf_c_message_pack(m, buf) != n)
        abort();
    ProtobufCMessage *again = kms_pbuf_unpack(d, buf, n);
    if (again == NULL)
        abort();
    protobuf_c_message_free_unpacked(again, NULL);
    free(buf);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
