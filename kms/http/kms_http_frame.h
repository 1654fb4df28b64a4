/*
 * kms_http_frame.h - is the request what was sent, with one reading of
 * where it ends? The header block of a libmicrohttpd connection (every
 * field, up to KMS_HTTP_MAX_FIELDS and one more to see "too many", and the
 * block's size) checked by kms_httpreq_check_framing, which says what is
 * refused and why.
 */
#ifndef KMS_HTTP_FRAME_H
#define KMS_HTTP_FRAME_H

#include <microhttpd.h>

#include "kms_error.h"
#include "kms_httpreq.h"

/* KMS_OK, or kms_httpreq_check_framing's refusal (its detail set). */
kms_err kms_http_check_framing(struct MHD_Connection *c, const char *url, const char *method,
                               const char *version);

#endif
