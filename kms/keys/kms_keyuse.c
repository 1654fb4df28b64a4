/*
 * kms_keyuse.c - shared by the handlers that use a key (kms_keyuse.h).
 */
#include "kms_keyuse.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kms_blob.h"
#include "kms_keycache.h"

/* Every map<string,string> entry that protoc-c generates has this layout;
 * the context code reads them through it. */
struct map_entry {
    ProtobufCMessage base;
    char *key;
    char *value;
};

kms_err kms_keyuse_token(struct kms_call *call, const struct kms_key_record *k,
                         struct p11_token **out)
{
    *out = kms_service_token(call->svc, k->region);
    KMS_ENSURE(*out != NULL, KMS_ERR_FAILED_PRECONDITION, "region %s is not served by this node",
               k->region);
    KMS_ENSURE(strcmp(p11_token_label(*out), k->token) == 0, KMS_ERR_FAILED_PRECONDITION,
               "region %s is served by token '%s', but the key lives in token '%s'", k->region,
               p11_token_label(*out), k->token);
    return KMS_OK;
}

kms_err kms_keyuse_version(struct kms_call *call, const char *key_id, uint32_t version,
                           bool from_blob, struct kms_version_record *out)
{
    kms_err rc = kms_keycache_version(kms_service_keycache(call->svc),
                                      kms_service_store(call->svc), key_id, version, out);
    if (rc == KMS_ERR_NOT_FOUND && from_blob)
        return kms_err_set(KMS_ERR_BAD_CIPHERTEXT,
                           "ciphertext or encryption context does not match");
    KMS_GUARD(rc);
    KMS_ENSURE(out->state == KMS_VERSION_ACTIVE, KMS_ERR_FAILED_PRECONDITION,
               "key version %u is destroyed", out->version);
    return KMS_OK;
}

kms_err kms_keyuse_context(size_t n, void *const *entries, uint8_t *out, size_t *out_len)
{
    KMS_ENSURE(n <= KMS_CTX_MAX_PAIRS, KMS_ERR_INVALID_ARGUMENT,
               "encryption context has %zu pairs (at most %d)", n, KMS_CTX_MAX_PAIRS);
    struct kms_ctx_pair pairs[KMS_CTX_MAX_PAIRS];
    for (size_t i = 0; i < n; i++) {
        const struct map_entry *e = entries[i];
        pairs[i].key = e->key;
        pairs[i].value = e->value;
    }
    return kms_ctx_encode(pairs, n, out, out_len);
}

void kms_keyuse_free_secret(uint8_t *p, size_t len)
{
    if (p) {
        OPENSSL_cleanse(p, len);
        free(p);
    }
}
