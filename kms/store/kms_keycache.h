/*
 * kms_keycache.h - key records and their versions, cached in memory so the
 * request path does not query the store for every Encrypt and Decrypt.
 *
 * Every change made through this process invalidates the key's entry at
 * once (kms_keycache_invalidate), so a disabled key is refused by this node
 * from the next request on. Entries also expire after ttl_ms, which bounds
 * how long another node sharing the store may serve a state it no longer
 * has. Thread-safe (rwlock; readers do not block each other).
 */
#ifndef KMS_KEYCACHE_H
#define KMS_KEYCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kms_error.h"
#include "kms_store.h"

struct kms_keycache;

kms_err kms_keycache_new(size_t max_entries, unsigned ttl_ms, struct kms_keycache **out);
void kms_keycache_free(struct kms_keycache *c);

/* The key as kms_store_key_get would return it. */
kms_err kms_keycache_key(struct kms_keycache *c, struct kms_store *st, const char *key_id,
                         struct kms_key_record *out);

/* A version as kms_store_version_get would return it. */
kms_err kms_keycache_version(struct kms_keycache *c, struct kms_store *st, const char *key_id,
                             uint32_t version, struct kms_version_record *out);

void kms_keycache_invalidate(struct kms_keycache *c, const char *key_id);

#endif
