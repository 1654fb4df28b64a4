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

/* A region whose audit log lives in PostgreSQL ("audit.postgresql"):
 * nodes of a fleet share it, one of them sequences it (docs/audit.md). */
struct kms_config_audit_pg {
    char *region;
    char *conninfo;        /* libpq keywords or URL, no password */
    char *password_source; /* "file:/path" or "env:NAME"; NULL: none */
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
    bool pkcs11_serialize_calls; /* one module call at a time (p11_serialize_calls) */
    struct kms_config_token tokens[KMS_CONFIG_MAX_TOKENS];
    size_t n_tokens;

    char *policy_path;
    char *xks_config_path; /* "xks": the XKS endpoints file; NULL: XKS off (docs/xks.md) */
    char *store_path;         /* SQLite file; NULL when the store is on PostgreSQL */
    char *store_pg_conninfo;  /* "store": {"backend": "postgresql", ...}: libpq string */
    char *store_pg_password;  /* its password source ("file:/path"); may be NULL */
    /* "store": {"backend": "postgresql", "regions": {...}}: one database
     * per region (residency), one entry per token region; n_store_pg 0
     * when the store is SQLite or one conninfo for every region. */
    struct kms_config_audit_pg store_pg[KMS_CONFIG_MAX_TOKENS];
    size_t n_store_pg;

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
    /* Regions whose log is in PostgreSQL; the others use audit_dir. */
    struct kms_config_audit_pg audit_pg[KMS_CONFIG_MAX_TOKENS];
    size_t n_audit_pg;
    unsigned audit_pg_poll_ms; /* sequencer election and follow interval */

    unsigned import_token_ttl_s; /* BYOK: life of an import token and its wrapping key */

    /* "link_tokens" (docs/link-tokens.md): the bounds a minted token's life
     * must keep, attempts per token, redemption attempts per recipient per
     * window, the clock skew redemption allows, and how long an expired
     * row is kept (its refusals stay "expired", not "unknown") before the
     * sweeper deletes it. test_clock_file: dev mode only, a file holding
     * seconds added to the clock link tokens read (tests move time). */
    unsigned link_min_ttl_s, link_max_ttl_s, link_default_ttl_s;
    unsigned link_max_attempts;
    unsigned link_recipient_limit, link_recipient_window_s;
    unsigned link_skew_s, link_keep_expired_s;
    char *link_test_clock_file;

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

/* The PostgreSQL target of region's audit log, or NULL: its files. */
const struct kms_config_audit_pg *kms_config_audit_pg(const struct kms_config *cfg,
                                                      const char *region);

#endif
