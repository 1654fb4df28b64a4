/*
 * kms_usage.h - the GCM encryption limit at the encryption sites: count,
 * and rotate on the system's behalf at the threshold.
 *
 * The counter itself (per key version, durable, batched) is service state:
 * kms_usage_count.h, held by the registry (kms_service_usage). This adds
 * the one step that needs the key layer: the automatic rotation.
 */
#ifndef KMS_USAGE_H
#define KMS_USAGE_H

#include <stdint.h>

#include "kms_error.h"
#include "kms_service.h"
#include "kms_usage_count.h"

/*
 * The call every GCM encryption site makes (one line): count n encryptions
 * under the key version, and when the count reaches the threshold rotate
 * the key on the system's behalf (kms_rotate_system) before returning; a
 * failed rotation is logged and retried by the sweeper, never fails the
 * encryption.
 */
kms_err kms_usage_encrypt(struct kms_service *svc, const char *key_id, uint32_t version,
                          uint64_t n);

#endif
