/*
 * kms_usage_count.h - counting AES-GCM encryptions per key version, durably.
 *
 * State the service registry holds (kms_service_usage); the call every
 * encryption site makes, which may rotate, is kms_usage_encrypt (kms_usage.h
 * in the key layer).
 *
 * Random 96-bit IVs bound a key version to 2^32 encryptions (NIST SP
 * 800-38D 8.3; docs/ciphertext-format.md). Every GCM encryption under a key
 * version is counted here before it is made. Counting is batched: the store
 * holds a reservation (kms_store_usage_reserve) that is raised a block at a
 * time before the block is used, so the durable count is never below the
 * encryptions made, and a crash over-counts by at most one block per
 * version. A clean shutdown (kms_usage_free) gives the unused part of each
 * reservation back.
 *
 * At rotate_at the caller is asked, once per version, to rotate the key;
 * past limit, encryption is refused with KMS_ERR_FAILED_PRECONDITION.
 *
 * Thread-safety: every function may be called from any thread, except
 * kms_usage_free. Versions are spread over striped locks; a reservation
 * (one store commit) holds its stripe's lock.
 */
#ifndef KMS_USAGE_COUNT_H
#define KMS_USAGE_COUNT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kms_error.h"

struct kms_store;
struct kms_usage;

struct kms_usage_config {
    uint64_t rotate_at; /* ask for a rotation when a version reaches this */
    uint64_t limit;     /* never count past this: refuse */
    uint32_t block;     /* reserve this many at a time (>= 1) */
};

kms_err kms_usage_new(struct kms_store *store, const struct kms_usage_config *cfg,
                      struct kms_usage **out);

/* Give back unused reservations, then free. NULL is a no-op. */
void kms_usage_free(struct kms_usage *u);

/* Drop every reservation on the floor without giving any back, as a crash
 * would (tests only), then free. */
void kms_usage_abandon(struct kms_usage *u);

/*
 * Count n encryptions under (key_id, version) before they are made.
 * KMS_ERR_FAILED_PRECONDITION (nothing counted) when that would pass the
 * limit; a store error fails the encryption too (fail closed).
 * *out_rotate is set true for exactly one call per version once the count
 * has reached rotate_at (the caller rotates); else false.
 */
kms_err kms_usage_take(struct kms_usage *u, const char *key_id, uint32_t version, uint64_t n,
                       bool *out_rotate);

/* Encryptions counted for a version: the live count when this process has
 * counted any, else the store's reservation (an upper bound). On a shared
 * (PostgreSQL) store the live count plus what other nodes reserved since
 * this process last did: never below what all nodes encrypted. */
kms_err kms_usage_count(struct kms_usage *u, const char *key_id, uint32_t version,
                        uint64_t *out);

/* Process-wide figures for /metrics. */
struct kms_usage_stats {
    uint64_t encryptions;      /* counted since start */
    uint64_t reservations;     /* store commits made for them */
    uint64_t refused;          /* encryptions refused at the limit */
    uint64_t max_count;        /* highest count of any version seen since start */
    uint64_t rotate_at, limit; /* configuration */
};
void kms_usage_stats(struct kms_usage *u, struct kms_usage_stats *out);

/* Count one automatic rotation (period: true for a rotation period, false
 * for the usage threshold) for /metrics. */
void kms_usage_rotated(bool period);

/* Their /metrics families (docs/operations.md). */
void kms_usage_metrics(struct kms_usage *u, FILE *f);

#endif
