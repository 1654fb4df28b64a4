/*
 * fuzz_policy - the policy document loader (JSON text -> struct pol_doc),
 * which kmsd runs at start and on SIGHUP on a file an operator edits.
 * Properties: no crash or leak; a document that loads answers lookups.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kms_log.h"
#include "pol_doc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kms_log_set_level(KMS_LOG_ERROR);
    struct pol_doc *doc = NULL;
    if (pol_doc_load_buffer(data, size, &doc) != KMS_OK) {
        if (doc != NULL)
            abort(); /* a refusal leaves nothing behind */
        return 0;
    }
    const struct pol_principal *who = NULL;
    (void)pol_doc_auth_api_key(doc, "fuzz", 4, &who);
    (void)pol_doc_auth_cert_subject(doc, "CN=fuzz", &who);
    for (size_t i = 0; i < pol_doc_tenant_count(doc); i++) {
        const struct pol_tenant *t = pol_doc_tenant_at(doc, i);
        if (pol_doc_tenant(doc, pol_tenant_id(t)) != t)
            abort();
        for (size_t j = 0; j < pol_tenant_officer_count(t); j++)
            (void)pol_tenant_is_quorum_officer(t, pol_tenant_officer(t, j));
    }
    pol_doc_unref(doc);
    return 0;
}
