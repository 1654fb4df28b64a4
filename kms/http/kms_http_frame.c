/*
 * kms_http_frame.c - the request's header block as libmicrohttpd parsed it,
 * handed to kms_httpreq_check_framing (kms_http_frame.h).
 */
#include "kms_http_frame.h"

struct field_list {
    struct kms_httpreq_field f[KMS_HTTP_MAX_FIELDS + 1]; /* one more: "too many" */
    size_t n;
};

static enum MHD_Result collect_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                     size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    struct field_list *l = cls;
    l->f[l->n++] = (struct kms_httpreq_field){key, key_size, value, value_size};
    return l->n < sizeof(l->f) / sizeof(l->f[0]) ? MHD_YES : MHD_NO;
}

kms_err kms_http_check_framing(struct MHD_Connection *c, const char *url, const char *method,
                               const char *version)
{
    struct field_list fields;
    fields.n = 0;
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, collect_field, &fields);
    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    struct kms_httpreq_block block = {
        .start = method,
        .size = hs ? hs->header_size : 0,
        .method = method,
        .url = url,
        .version = version,
        .fields = fields.f,
        .n_fields = fields.n,
    };
    return kms_httpreq_check_framing(&block);
}
