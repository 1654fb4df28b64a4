/*
 * kms_http_secret.h - HTTP responses that hold a secret (plaintext, a data
 * key): the buffer is wiped when libmicrohttpd frees the response, not
 * merely freed (STYLE.md, buffers and secrets).
 */
#ifndef KMS_HTTP_SECRET_H
#define KMS_HTTP_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "kms_error.h"

/* A response for data[0..len-1] (malloc'd; ownership passes here whatever
 * happens). KMS_ERR_NOMEM when the wiping wrapper cannot be allocated;
 * otherwise KMS_OK with *out the response, or NULL when libmicrohttpd
 * could not make one. On any failure data is wiped and freed. */
kms_err kms_http_secret_response(uint8_t *data, size_t len, struct MHD_Response **out);

#endif
