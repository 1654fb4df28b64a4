/*
 * kms_tls_key.h - kmsd's TLS private key in the HSM (tls.key_uri): the
 * GnuTLS side. The key is a GnuTLS external private key whose sign
 * callback is p11_tls_key_sign, handed to libmicrohttpd through its
 * certificate callback (MHD_OPTION_HTTPS_CERT_CALLBACK), so no private key
 * file exists on the host (docs/configuration.md, docs/hardening.md).
 *
 * At open the certificate chain is loaded from tls.cert and the key's
 * public half is checked against the leaf certificate: a signature made by
 * the key in the token must verify under the certificate's public key, or
 * kmsd refuses to start.
 *
 * One per process: the GnuTLS callback MHD takes carries no context, so
 * the open key is process-wide (opening a second one is refused).
 */
#ifndef KMS_TLS_KEY_H
#define KMS_TLS_KEY_H

#include <gnutls/abstract.h>

#include "kms_error.h"
#include "kms_service.h"

struct kms_tls_key;

/* cert_pem: the PEM text of tls.cert (leaf first, then its chain).
 * uri: tls.key_uri. The key is looked up in the service's tokens. */
kms_err kms_tls_key_open(struct kms_service *svc, const char *cert_pem, const char *uri,
                         struct kms_tls_key **out);

/* After the MHD daemon that uses it has stopped. NULL is a no-op. */
void kms_tls_key_free(struct kms_tls_key *key);

/* The callback for MHD_OPTION_HTTPS_CERT_CALLBACK: the open key's chain
 * and private key, for every handshake. */
gnutls_certificate_retrieve_function2 kms_tls_key_retrieve;

#endif
