/*
 * kms_escrow.c - escrow at birth (see kms_escrow.h).
 */
#include "kms_escrow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "kms_log.h"
#include "p11_crypto.h"
#include "p11_token.h"

kms_err kms_escrow_ready(struct kms_service *svc, const char *region)
{
    struct p11_key_id id;
    KMS_ENSURE(kms_service_escrow_key(svc, region, &id), KMS_ERR_FAILED_PRECONDITION,
               "tenant requires key escrow, and region %s has no escrow key (an operator must "
               "run `kmsctl hsm init-region`, then restart kmsd)",
               region);
    return KMS_OK;
}

kms_err kms_escrow_seal(struct kms_service *svc, struct p11_token *tok, const char *key_id,
                        uint32_t version, const struct p11_key_id *obj, enum kms_key_spec spec,
                        bool store_blob)
{
    struct p11_key_id escrow;
    KMS_GUARD(kms_escrow_ready(svc, p11_token_region(tok)));
    kms_service_escrow_key(svc, p11_token_region(tok), &escrow);
    enum p11_key_kind parts[2] = {P11_KEY_AES_ENCRYPT, P11_KEY_HMAC_SHA256};
    /* Part numbers are the index in parts[] (the recovery restores part 1
     * as the HMAC key): a link-token version's one key is part 1. */
    size_t first = spec == KMS_KEY_SPEC_HMAC_256 ? 1 : 0;
    size_t n_parts = spec == KMS_KEY_SPEC_METADATA || spec == KMS_KEY_SPEC_HMAC_256 ? 2 : 1;
    kms_err rc = KMS_OK;
    for (size_t i = first; i < n_parts && rc == KMS_OK && store_blob; i++) {
        struct kms_escrow_record r;
        memset(&r, 0, sizeof(r));
        snprintf(r.key_id, sizeof(r.key_id), "%s", key_id);
        r.version = version;
        r.part = (int)i;
        snprintf(r.token, sizeof(r.token), "%s", p11_token_label(tok));
        memcpy(r.escrow_hsm_id, escrow.b, sizeof(r.escrow_hsm_id));
        r.created_at = (int64_t)time(NULL);
        rc = p11_escrow_wrap(tok, &escrow, obj, parts[i], r.blob, sizeof(r.blob), &r.blob_len);
        if (rc == KMS_OK)
            rc = kms_store_escrow_put(kms_service_store(svc), &r);
        /* The blob is the key under the escrow key, not the key: still, it
         * needs no second copy in freed memory. */
        OPENSSL_cleanse(r.blob, sizeof(r.blob));
    }
    /* Locked only once every blob is durable: a crash in between leaves a
     * CREATING version, discarded at start. */
    for (size_t i = first; i < n_parts && rc == KMS_OK; i++)
        rc = p11_key_lock_kind(tok, obj, parts[i]);
    return rc;
}
