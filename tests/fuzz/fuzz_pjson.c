/*
 * fuzz_pjson - Twirp's JSON encoding (kms_pjson): a JSON body as the front
 * converts it, for every route's request type and, for more shapes, every
 * response type.
 *
 * Input: one byte choosing the type (modulo twice the number of routes:
 * requests in kms_twirp's table order, then responses), then the JSON.
 * Properties: no crash, no leak; JSON that is accepted gives wire bytes
 * that protobuf-c unpacks as that type; those render as JSON again, and
 * the rendering is a fixed point (render(parse(render(x))) == render(x)),
 * unless the rendering is over the token limit (every default is listed,
 * so {"keys":[{},{},...]} grows).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kms_pjson.h"
#include "kms_twirp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_WIRE (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t n = kms_twirp_n_routes();
    size_t i = data[0] % (2 * n);
    const ProtobufCMessageDescriptor *d =
        i < n ? kms_twirp_route_at(i, NULL, 0) : kms_twirp_route_response_at(i - n);
    if (d == NULL)
        abort();
    uint8_t *w;
    size_t wn;
    if (kms_pjson_to_wire(d, data + 1, size - 1, MAX_WIRE, &w, &wn) != KMS_OK)
        return 0;
    if (w == NULL)
        abort();
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, wn, w);
    if (m == NULL)
        abort(); /* accepted JSON that protobuf-c cannot read */
    protobuf_c_message_free_unpacked(m, NULL);

    char *j1, *j2;
    size_t j1n, j2n;
    if (kms_pjson_from_wire(d, w, wn, &j1, &j1n) != KMS_OK)
        abort(); /* what JSON gave, JSON must be able to say */
    uint8_t *w2;
    size_t w2n;
    kms_err rc = kms_pjson_to_wire(d, (const uint8_t *)j1, j1n, SIZE_MAX, &w2, &w2n);
    if (rc == KMS_OK) {
        if (kms_pjson_from_wire(d, w2, w2n, &j2, &j2n) != KMS_OK)
            abort();
        if (j1n != j2n || memcmp(j1, j2, j1n) != 0)
            abort(); /* the rendering is not stable */
        free(j2);
        free(w2);
    } else if (strstr(kms_err_detail(), "JSON values") == NULL) {
        abort(); /* our own rendering refused for another reason */
    }
    free(j1);
    free(w);
    return 0;
}
