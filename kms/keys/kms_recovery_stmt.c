/*
 * kms_recovery_stmt.c - the canonical recovery statement and its signature.
 */
#include "kms_recovery_stmt.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "kms_text.h"

const char *kms_recovery_mode_name(int mode)
{
    return mode == 1 ? "RESTORE" : mode == 2 ? "EXPORT_WRAPPED" : "UNSPECIFIED";
}

const char *kms_recovery_justification_name(int j)
{
    static const char *const names[] = {"UNSPECIFIED",           "ACCIDENTAL_DELETION",
                                        "LAWFUL_REQUEST",        "REGULATORY_EXAMINATION",
                                        "DISASTER_RECOVERY",     "TENANT_EXIT"};
    return j >= 0 && j < (int)(sizeof(names) / sizeof(names[0])) ? names[j] : "UNSPECIFIED";
}

kms_err kms_recovery_statement(const struct kms_recovery_record *r, char *out, size_t cap,
                               size_t *out_len)
{
    char versions[KMS_RECOVERY_MAX_VERSIONS * 11 + 1] = "";
    size_t off = 0;
    for (size_t i = 0; i < r->n_versions && off < sizeof(versions); i++)
        off += (size_t)snprintf(versions + off, sizeof(versions) - off, "%s%" PRIu32,
                                i ? "," : "", r->versions[i]);
    char target[256];
    if (r->mode == 1)
        snprintf(target, sizeof(target), "restore in region %s as %s", r->region,
                 r->restore_state == 2 ? "ENABLED" : "DISABLED");
    else
        snprintf(target, sizeof(target), "export to recipient %s sha256:%s", r->recipient,
                 r->recipient_sha256);
    int n = snprintf(out, cap,
                     "custos recovery approval v1\n"
                     "recovery: %s\n"
                     "tenant: %s\n"
                     "key: %s\n"
                     "region: %s\n"
                     "versions: %s\n"
                     "mode: %s\n"
                     "target: %s\n"
                     "justification: %s\n"
                     "justification-text: %s\n"
                     "case: %s\n"
                     "requester: %s\n"
                     "expires: %" PRId64 "\n",
                     r->recovery_id, r->tenant, r->key_id, r->region, versions,
                     kms_recovery_mode_name(r->mode), target,
                     kms_recovery_justification_name(r->justification), r->justification_text,
                     r->case_reference, r->requester, r->expires_at);
    KMS_ENSURE(n > 0 && (size_t)n < cap, KMS_ERR_INTERNAL, "recovery statement too long");
    *out_len = (size_t)n;
    return KMS_OK;
}

kms_err kms_recovery_verify(EVP_PKEY *officer, const char *stmt, size_t len, const uint8_t *sig,
                            size_t sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && officer != NULL &&
             EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, officer) == 1 &&
             EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)stmt, len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    KMS_ENSURE(ok, KMS_ERR_PERMISSION_DENIED,
               "the signature does not verify with your registered public key over this "
               "recovery's statement");
    return KMS_OK;
}

bool kms_recovery_text_ok(const char *s, size_t max)
{
    size_t len = strlen(s);
    return len >= 1 && len <= max && kms_text_ok(s, len);
}
