/*
 * kms_http_auth.c - who is calling: a verified client certificate's subject
 * or a bearer API key, looked up in the policy (kms_http_auth.h).
 */
#include "kms_http_auth.h"

#include <stdio.h>
#include <string.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "kms_httpreq.h"

/* The verified subject DN of the client certificate, RFC 4514 form
 * ("CN=demo-broker,O=Example"). Returns false when there is no certificate
 * or it does not verify against the configured client CA; then *why says
 * which, for the refusal and its audit event ("expired", "signer not
 * found", ...; GnuTLS's wording; never the certificate's content). */
static bool client_cert_subject(struct MHD_Connection *c, char *out, size_t out_len, char *why,
                                size_t why_len)
{
    why[0] = '\0';
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (ci == NULL || ci->tls_session == NULL)
        return false;
    gnutls_session_t s = (gnutls_session_t)ci->tls_session;
    unsigned int n = 0;
    const gnutls_datum_t *chain = gnutls_certificate_get_peers(s, &n);
    if (chain == NULL || n == 0)
        return false;
    /* The handshake only requested a certificate; verification status is
     * checked here, not assumed from a successful handshake. */
    unsigned int status = 0;
    if (gnutls_certificate_verify_peers2(s, &status) != GNUTLS_E_SUCCESS) {
        snprintf(why, why_len, "the client certificate could not be verified");
        return false;
    }
    if (status != 0) {
        gnutls_datum_t txt = {NULL, 0};
        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0) ==
            GNUTLS_E_SUCCESS)
            snprintf(why, why_len, "client certificate refused: %s", (const char *)txt.data);
        else
            snprintf(why, why_len, "client certificate refused");
        gnutls_free(txt.data);
        for (size_t k = strlen(why); k > 0 && why[k - 1] == ' '; k--)
            why[k - 1] = '\0';
        return false;
    }
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) != GNUTLS_E_SUCCESS)
        return false;
    bool ok = false;
    gnutls_datum_t dn = {NULL, 0};
    if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) == GNUTLS_E_SUCCESS &&
        gnutls_x509_crt_get_dn3(crt, &dn, 0) == GNUTLS_E_SUCCESS && dn.size < out_len) {
        memcpy(out, dn.data, dn.size);
        out[dn.size] = '\0';
        ok = true;
    }
    gnutls_free(dn.data);
    gnutls_x509_crt_deinit(crt);
    return ok;
}

kms_err kms_http_authenticate(const struct kms_config *cfg, struct MHD_Connection *c,
                              const struct pol_doc *policy, const struct pol_principal **out_who)
{
    if (cfg->tls_client_ca) {
        char subject[1024], why[256];
        if (client_cert_subject(c, subject, sizeof(subject), why, sizeof(why)))
            return pol_doc_auth_cert_subject(policy, subject, out_who);
        if (cfg->tls_require_client_cert)
            return kms_err_set(KMS_ERR_UNAUTHENTICATED, "%s",
                               why[0] ? why
                                      : "a client certificate signed by the configured CA is "
                                        "required");
    }
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *key;
    size_t n;
    KMS_GUARD(kms_httpreq_bearer(auth, &key, &n));
    kms_err rc = pol_doc_auth_api_key(policy, key, n, out_who);
    if (rc != KMS_OK)
        return kms_err_set(KMS_ERR_UNAUTHENTICATED, "invalid credentials");
    return KMS_OK;
}
