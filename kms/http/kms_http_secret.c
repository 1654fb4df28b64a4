/*
 * kms_http_secret.c - responses wiped when freed (kms_http_secret.h).
 */
#include "kms_http_secret.h"

#include <stdlib.h>

#include <openssl/crypto.h>

struct secret_buf {
    uint8_t *data;
    size_t len;
};

static void free_secret_buf(void *cls)
{
    struct secret_buf *b = cls;
    OPENSSL_cleanse(b->data, b->len);
    free(b->data);
    free(b);
}

kms_err kms_http_secret_response(uint8_t *data, size_t len, struct MHD_Response **out)
{
    *out = NULL;
    struct secret_buf *b = malloc(sizeof(*b));
    if (b == NULL) {
        OPENSSL_cleanse(data, len);
        free(data);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    b->data = data;
    b->len = len;
    *out = MHD_create_response_from_buffer_with_free_callback_cls(len, data, free_secret_buf, b);
    if (*out == NULL)
        free_secret_buf(b);
    return KMS_OK;
}
