/*
 * fuzz_audit_verify - the offline audit verifier (audit_verify.h) on
 * untrusted bundles: an auditor runs it on exports it did not make.
 *
 * Input: one flags byte (bit 0: partial; bit 1: split the rest into two
 * bundles at the position of the next byte), then the bundle bytes. The key
 * set is the fixed test key of fuzz_audit_key.h, so seeds made by
 * make-seeds.sh verify and mutations reach signatures, proofs and ordering.
 * Properties: no crash or leak; a refusal always says what failed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_keyset.h"
#include "audit_verify.h"
#include "fuzz_audit_key.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct audit_keyset *keys;

static void load_keys(void)
{
    static const char text[] = "Custos-Audit-Region: " FUZZ_AUDIT_REGION "\n"
                               "Custos-Audit-Key-Id: " FUZZ_AUDIT_KEY_ID "\n"
                               "Custos-Audit-Not-Before-Ms: 1795694989000\n"
                               "Custos-Audit-Not-After-Ms: 0\n" FUZZ_AUDIT_PUBLIC_PEM;
    if (audit_keyset_new(&keys) != KMS_OK ||
        audit_keyset_parse(keys, "fuzz.pem", text, sizeof(text) - 1) != KMS_OK) {
        fprintf(stderr, "fuzz_audit_verify: the fixed key does not load\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (keys == NULL)
        load_keys();
    if (size < 2)
        return 0;
    bool partial = data[0] & 1, split = data[0] & 2;
    size_t cut = split ? (size_t)data[1] * 16 : 0;
    data += 2;
    size -= 2;
    if (cut > size)
        cut = size;
    struct audit_verify *v = NULL;
    if (audit_verify_new(keys, NULL, partial, &v) != KMS_OK)
        abort();
    kms_err rc = KMS_OK;
    if (split) {
        rc = audit_verify_add_bundle(v, "a.bin", data, cut);
        if (rc == KMS_OK)
            rc = audit_verify_add_bundle(v, "b.bin", data + cut, size - cut);
    } else {
        rc = audit_verify_add_bundle(v, "a.bin", data, size);
    }
    if (rc == KMS_OK)
        rc = audit_verify_finish(v);
    const struct audit_verify_failure *f = audit_verify_failure(v);
    if (rc == KMS_ERR_INVALID_ARGUMENT && (f == NULL || f->what == NULL || f->what[0] == '\0'))
        abort();
    audit_verify_free(v);
    return 0;
}
