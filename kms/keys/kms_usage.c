/*
 * kms_usage.c - count at the encryption site, rotate at the threshold
 * (kms_usage.h).
 */
#include "kms_usage.h"

#include <stdio.h>

#include "kms_log.h"
#include "kms_rotate.h"

kms_err kms_usage_encrypt(struct kms_service *svc, const char *key_id, uint32_t version,
                          uint64_t n)
{
    bool rotate = false;
    KMS_GUARD(kms_usage_take(kms_service_usage(svc), key_id, version, n, &rotate));
    if (rotate) {
        /* This request still encrypts under `version`, which is below the
         * limit; the next ones use the new version. */
        char reason[96];
        snprintf(reason, sizeof(reason), "version %u reached %llu encryptions", version,
                 (unsigned long long)kms_service_config(svc)->usage_rotate_at);
        uint32_t made = 0;
        kms_err rrc = kms_rotate_system(svc, key_id, version, reason, &made);
        if (rrc == KMS_OK)
            kms_usage_rotated(false);
        if (rrc != KMS_OK && rrc != KMS_ERR_FAILED_PRECONDITION)
            kms_log_warn("usage", "key %s: automatic rotation at the usage threshold failed "
                         "(the sweeper tries again): %s", key_id, kms_err_detail());
    }
    return KMS_OK;
}
