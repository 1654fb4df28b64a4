/*
 * kms_http_auth.h - who is calling, for the front.
 *
 * With tls.client_ca configured, a client certificate that verifies
 * against it names the principal by its subject; when the certificate is
 * required and missing or refused, that is the answer (GnuTLS's reason,
 * never the certificate's content). Otherwise the bearer API key of the
 * Authorization header is looked up in the policy. Errors are
 * KMS_ERR_UNAUTHENTICATED with a detail the client may see.
 */
#ifndef KMS_HTTP_AUTH_H
#define KMS_HTTP_AUTH_H

#include <microhttpd.h>

#include "kms_config.h"
#include "kms_error.h"
#include "pol_doc.h"

kms_err kms_http_authenticate(const struct kms_config *cfg, struct MHD_Connection *c,
                              const struct pol_doc *policy, const struct pol_principal **out_who);

#endif
