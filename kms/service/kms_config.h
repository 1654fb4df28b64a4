/*
 * kms_config.h - kmsd's configuration file (JSON). docs/configuration.md
 * lists every key with its default; an unknown key is an error, so a typo
 * never silently falls back to a default.
 */
#ifndef KMS_CONFIG_H
#define KMS_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "kms_error.h"

#define KMS_CONFIG_MAX_TOKENS 16

struct kms_config_token {
    char *region;
    char *token;      /* label or pkcs11: URI */
    char *pin_source; /* file:/path or env:NAME */
    size_t max_sessions;
};

/* The NIST bound for random 96-bit IVs, and the smallest automatic
 * rotation threshold production accepts. */
#define KMS_USAGE_LIMIT_MAX (1UL << 32)
#define KMS_USAGE_ROTATE_AT_MIN (1UL << 20)

struct kms_config {
    bool dev_mode; /* "mode": "dev" allows short deletion windows and plain HTTP off loopback is still refused */
    char *listen_address;
    unsigned listen_port;

    char *tls_cert;      /* PEM; TLS is on when set */
    char *tls_key;       /* PEM file; or, instead: */
    char *tls_key_uri;   /* pkcs11: URI of a private key in a configured token (kms_tls_key.h) */
    char *tls_client_ca; /* PEM; client certificates are verified against it */
    bool tls_require_client_cert;

    char *pkcs11_module;
    char *pkcs11_module_args; /* C_Initialize pReserved (NSS softoken); NULL: none */
    struct kms_config_token tokens[KMS_CONFIG_MAX_TOKENS];
    size_t n_tokens;

    char *policy_path;
    char *store_path;

    size_t max_body_bytes;
    unsigned max_connections;
    unsigned max_connections_per_ip; /* 0: unlimited; at most max_connections */
    unsigned connection_timeout_s;
    unsigned threads; /* pool model: workers; 0: one per core */
    bool thread_per_connection; /* else an epoll thread pool */

    unsigned deletion_default_days;
    unsigned deletion_min_days;
    unsigned deletion_day_seconds; /* 86400; dev mode may shorten it for tests */
    unsigned sweep_interval_s;

    /* GCM invocation limit per key version (docs/ciphertext-format.md):
     * rotate automatically at usage_rotate_at encryptions, refuse past
     * usage_limit; counts are reserved in the store usage_reserve_block at
     * a time (kms_usage.h). rotation_min_period_s: the shortest rotation
     * period a key may carry (a day; dev mode may go down to 1 s). */
    uint64_t usage_rotate_at;
    uint64_t usage_limit;
    unsigned usage_reserve_block;
    unsigned rotation_min_period_s;

    bool audit_enabled;               /* only dev mode may turn it off */
    char *audit_dir;                  /* one log per region in here */
    unsigned audit_head_every_events;
    unsigned audit_head_every_ms;
    unsigned audit_key_max_age_s;     /* rotate audit signing keys when older */
    unsigned audit_commit_delay_us;   /* group commit wait under concurrency */

    unsigned import_token_ttl_s; /* BYOK: life of an import token and its wrapping key */

    int log_level;          /* enum kms_log_level; $CUSTOS_LOG_LEVEL overrides it */
    char *log_file;         /* NULL: stderr (journald); reopened on SIGHUP */
    unsigned health_cache_ms; /* how long a /readyz deep check is reused */
    unsigned drain_timeout_s; /* SIGTERM: longest wait for in-flight requests */
};

/* Load and validate. Errors name the file and the JSON path. Relative paths
 * inside the file are taken relative to the file's directory. */
kms_err kms_config_load(const char *path, struct kms_config **out);

/* The configuration file when no --config names one: $CUSTOS_CONFIG if set
 * and not empty, else /etc/custos/kmsd.json. */
const char *kms_config_default_path(void);
void kms_config_free(struct kms_config *cfg);

#endif
