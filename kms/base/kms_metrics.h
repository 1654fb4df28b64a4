/*
 * kms_metrics.h - process-wide counters and histograms, rendered in the
 * Prometheus text exposition format (version 0.0.4) by kms_metrics_render.
 *
 * Why our own: Debian ships no C Prometheus client, and what kmsd needs is a
 * fixed set of families. Every series lives in static storage registered at
 * start (tokens, audit regions) or on the first request of an operation;
 * recording is a handful of relaxed atomic adds with no lock, so the request
 * path pays a few nanoseconds. Registration takes a mutex, once per series.
 *
 * Labels never carry tenant ids, key ids, principals or request data: only
 * operation names from the route table, Twirp outcome codes, regions, token
 * labels, PKCS#11 function and mechanism names (all bounded sets).
 *
 * Limits: KMS_METRICS_OPS_MAX operations (more are counted as op="other"),
 * KMS_METRICS_TOKENS_MAX tokens, KMS_METRICS_HSM_CALLS_MAX distinct
 * (function, mechanism) pairs per token, KMS_METRICS_AUDIT_MAX audit logs.
 * Beyond a limit an observation is dropped, never a crash.
 *
 * Thread-safety: every function may be called from any thread.
 */
#ifndef KMS_METRICS_H
#define KMS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kms_error.h"

#define KMS_METRICS_OPS_MAX 64
#define KMS_METRICS_TOKENS_MAX 16
/* Every PKCS#11 call is timed (pkcs11/p11_internal.h, P11_CALL): about 40
 * (function, mechanism) pairs per token today, with room for new ones. */
#define KMS_METRICS_HSM_CALLS_MAX 64
#define KMS_METRICS_AUDIT_MAX 16

/* Monotonic nanoseconds: one clock_gettime. */
uint64_t kms_metrics_now_ns(void);

/* The index of operation `method` (an RPC name from the route table),
 * registering it on first sight; the "other" slot when the table is full or
 * method is NULL. Never fails. */
int kms_metrics_op(const char *method);

/* One finished request of op with its result and duration. */
void kms_metrics_request(int op, kms_err rc, uint64_t ns);

/* Register a token (at open). Returns its id, or -1 past the limit (then
 * kms_metrics_hsm ignores it). */
int kms_metrics_token(const char *region, const char *label);

/* One HSM call of token tok. fn and mech must be string literals (they are
 * compared by address and kept): "C_Encrypt", "CKM_AES_GCM". */
void kms_metrics_hsm(int tok, const char *fn, const char *mech, uint64_t ns);

/* Register an audit log (at open); -1 past the limit. */
int kms_metrics_audit(const char *region);

/* One group commit of `events` events whose fdatasync took fsync_ns. */
void kms_metrics_audit_batch(int id, size_t events, uint64_t fsync_ns);

/* A policy reload, applied (ok) or refused. */
void kms_metrics_policy_reload(bool ok);

/* Write every family kms_metrics owns to f. Gauges that depend on live
 * state (token availability, session pools) are written by their owners
 * with kms_metrics_family / kms_metrics_gauge after this. */
void kms_metrics_render(FILE *f);

/* The "# HELP" and "# TYPE" lines of a family whose samples the caller
 * writes; type is "gauge" or "counter". */
void kms_metrics_family(FILE *f, const char *name, const char *type, const char *help);

/* One sample (of a gauge, or of a counter kept elsewhere) with labels `region` and `token` (escaped here) and an
 * optional third label (NULL for none). */
void kms_metrics_gauge(FILE *f, const char *name, const char *region, const char *token,
                       const char *label, const char *label_value, double value);

#endif
