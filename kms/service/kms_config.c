/*
 * kms_config.c - parse and validate kmsd.json: defaults, the top level, the
 * older sections (front, limits, deletion, rotation, log, health) and the
 * typed getters every section parser uses (kms_config_internal.h). The
 * newer sections are parsed in kms_config_sections.c.
 */
#include "kms_config.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kms_config_internal.h"
#include "kms_log.h"

/* Refuse keys outside `allowed`, so that "max_body_byte" is an error and not
 * a silently ignored line. */
kms_err config_check_keys(json_t *obj, const char *where, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok |= strcmp(k, allowed[i]) == 0;
        KMS_ENSURE(ok, KMS_ERR_CONFIG, "%s%s%s: unknown key", where, *where ? "." : "", k);
    }
    return KMS_OK;
}

char *config_resolve(const char *base_dir, const char *p)
{
    if (p[0] == '/' || strncmp(p, "env:", 4) == 0)
        return strdup(p);
    if (strncmp(p, "file:", 5) == 0) {
        const char *f = p + 5;
        if (f[0] == '/')
            return strdup(p);
        size_t n = strlen(base_dir) + strlen(f) + 8;
        char *r = malloc(n);
        if (r)
            snprintf(r, n, "file:%s/%s", base_dir, f);
        return r;
    }
    size_t n = strlen(base_dir) + strlen(p) + 2;
    char *r = malloc(n);
    if (r)
        snprintf(r, n, "%s/%s", base_dir, p);
    return r;
}

kms_err config_get_str(json_t *obj, const char *key, const char *where, bool required,
                       const char *base_dir, bool is_path, char **out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        KMS_ENSURE(!required, KMS_ERR_CONFIG, "%s.%s: required", where, key);
        return KMS_OK;
    }
    KMS_ENSURE(json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < 4096,
               KMS_ERR_CONFIG, "%s.%s: must be a non-empty string", where, key);
    free(*out);
    *out = is_path ? config_resolve(base_dir, json_string_value(v)) : strdup(json_string_value(v));
    KMS_ENSURE(*out != NULL, KMS_ERR_NOMEM, "out of memory");
    return KMS_OK;
}

kms_err config_get_uint(json_t *obj, const char *key, const char *where, unsigned long min,
                        unsigned long max, unsigned long *inout)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return KMS_OK;
    KMS_ENSURE(json_is_integer(v) && json_integer_value(v) >= (json_int_t)min &&
                   json_integer_value(v) <= (json_int_t)max,
               KMS_ERR_CONFIG, "%s.%s: must be an integer in %lu..%lu", where, key, min, max);
    *inout = (unsigned long)json_integer_value(v);
    return KMS_OK;
}

/* get_uint into an unsigned setting, which keeps its default if absent. */
kms_err config_get_unsigned(json_t *obj, const char *key, const char *where, unsigned long min,
                            unsigned long max, unsigned *inout)
{
    unsigned long v = *inout;
    KMS_GUARD(config_get_uint(obj, key, where, min, max, &v));
    *inout = (unsigned)v;
    return KMS_OK;
}

/* The section root.name in *out (NULL if absent), checked to be an object
 * with no keys but those in k (NULL-terminated). */
kms_err config_get_section(json_t *root, const char *name, const char *const *k, json_t **out)
{
    json_t *s = json_object_get(root, name);
    *out = s;
    if (s == NULL)
        return KMS_OK;
    KMS_ENSURE(json_is_object(s), KMS_ERR_CONFIG, "%s: must be an object", name);
    return config_check_keys(s, name, k);
}

kms_err config_get_bool(json_t *obj, const char *key, const char *where, bool *inout)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return KMS_OK;
    KMS_ENSURE(json_is_boolean(v), KMS_ERR_CONFIG, "%s.%s: must be true or false", where, key);
    *inout = json_is_true(v);
    return KMS_OK;
}

/* "mode", "listen" and "tls": where kmsd listens and how. */
static kms_err parse_front(json_t *root, const char *dir, struct kms_config *c)
{
    json_t *mode = json_object_get(root, "mode");
    if (mode) {
        KMS_ENSURE(json_is_string(mode) && (strcmp(json_string_value(mode), "dev") == 0 ||
                                            strcmp(json_string_value(mode), "production") == 0),
                   KMS_ERR_CONFIG, "mode: must be \"dev\" or \"production\"");
        c->dev_mode = strcmp(json_string_value(mode), "dev") == 0;
    }

    static const char *const listen_keys[] = {"address", "port", NULL};
    json_t *listen = NULL;
    KMS_GUARD(config_get_section(root, "listen", listen_keys, &listen));
    if (listen) {
        KMS_GUARD(
            config_get_str(listen, "address", "listen", false, dir, false, &c->listen_address));
        unsigned long port = c->listen_port;
        KMS_GUARD(config_get_uint(listen, "port", "listen", 1, 65535, &port));
        c->listen_port = (unsigned)port;
    }
    struct in_addr a4;
    KMS_ENSURE(inet_pton(AF_INET, c->listen_address, &a4) == 1, KMS_ERR_CONFIG,
               "listen.address: must be an IPv4 address");

    static const char *const tls_keys[] = {
        "cert", "key", "key_uri", "client_ca", "require_client_cert", NULL};
    json_t *tls = NULL;
    KMS_GUARD(config_get_section(root, "tls", tls_keys, &tls));
    if (tls) {
        KMS_GUARD(config_get_str(tls, "cert", "tls", true, dir, true, &c->tls_cert));
        KMS_GUARD(config_get_str(tls, "key", "tls", false, dir, true, &c->tls_key));
        /* The private key is a file or a key in a token, never both. */
        KMS_GUARD(config_get_str(tls, "key_uri", "tls", false, dir, false, &c->tls_key_uri));
        KMS_ENSURE((c->tls_key != NULL) != (c->tls_key_uri != NULL), KMS_ERR_CONFIG,
                   "tls: needs exactly one of key (a PEM file) and key_uri (a pkcs11: URI)");
        KMS_ENSURE(c->tls_key_uri == NULL || strncmp(c->tls_key_uri, "pkcs11:", 7) == 0,
                   KMS_ERR_CONFIG, "tls.key_uri: must be a pkcs11: URI (RFC 7512)");
        KMS_GUARD(config_get_str(tls, "client_ca", "tls", false, dir, true, &c->tls_client_ca));
        c->tls_require_client_cert = c->tls_client_ca != NULL;
        KMS_GUARD(config_get_bool(tls, "require_client_cert", "tls", &c->tls_require_client_cert));
        KMS_ENSURE(!c->tls_require_client_cert || c->tls_client_ca, KMS_ERR_CONFIG,
                   "tls.require_client_cert: needs tls.client_ca");
    }
    /* Production traffic carries bearer keys and plaintext: without TLS it
     * may only listen on loopback (a TLS-terminating sidecar in front). */
    KMS_ENSURE(c->tls_cert || (ntohl(a4.s_addr) >> 24) == 127, KMS_ERR_CONFIG,
               "listen.address: plain HTTP is only allowed on loopback; configure tls");
    return KMS_OK;
}

/* "limits": request, connection and thread bounds. */
static kms_err parse_limits(json_t *root, struct kms_config *c)
{
    static const char *const lim_keys[] = {
        "max_body_bytes", "max_connections", "max_connections_per_ip", "connection_timeout_s",
        "threads",        "thread_model",    "drain_timeout_s",        NULL};
    json_t *lim = NULL;
    KMS_GUARD(config_get_section(root, "limits", lim_keys, &lim));
    if (lim) {
        unsigned long v = c->max_body_bytes;
        KMS_GUARD(config_get_uint(lim, "max_body_bytes", "limits", 1024, 16 * 1024 * 1024, &v));
        c->max_body_bytes = v;
        KMS_GUARD(
            config_get_unsigned(lim, "max_connections", "limits", 1, 65536, &c->max_connections));
        json_t *per_ip = json_object_get(lim, "max_connections_per_ip");
        if (per_ip) {
            v = 0;
            KMS_GUARD(config_get_uint(lim, "max_connections_per_ip", "limits", 0, 65536, &v));
            /* A per-address cap above the total cap would never act; that is
             * a mistake in the file, not a setting. */
            KMS_ENSURE(v <= c->max_connections, KMS_ERR_CONFIG,
                       "limits.max_connections_per_ip: %lu is above limits.max_connections "
                       "(%u); use at most %u, or 0 for no per-address limit",
                       v, c->max_connections, c->max_connections);
            c->max_connections_per_ip = (unsigned)v;
        } else if (c->max_connections_per_ip > c->max_connections) {
            /* The default follows a smaller total cap down. */
            c->max_connections_per_ip = c->max_connections;
        }
        KMS_GUARD(config_get_unsigned(lim, "connection_timeout_s", "limits", 1, 3600,
                                      &c->connection_timeout_s));
        KMS_GUARD(config_get_unsigned(lim, "threads", "limits", 0, 256, &c->threads));
        KMS_GUARD(
            config_get_unsigned(lim, "drain_timeout_s", "limits", 1, 3600, &c->drain_timeout_s));
        json_t *tm = json_object_get(lim, "thread_model");
        if (tm) {
            KMS_ENSURE(json_is_string(tm) && (strcmp(json_string_value(tm), "pool") == 0 ||
                                              strcmp(json_string_value(tm), "per-connection") == 0),
                       KMS_ERR_CONFIG,
                       "limits.thread_model: must be \"pool\" or \"per-connection\"");
            c->thread_per_connection = strcmp(json_string_value(tm), "per-connection") == 0;
        }
    }
    return KMS_OK;
}

/* "deletion": scheduled deletion windows and the sweeper. */
static kms_err parse_deletion(json_t *root, struct kms_config *c)
{
    static const char *const del_keys[] = {"default_days", "min_days", "day_seconds",
                                           "sweep_interval_s", NULL};
    json_t *del = NULL;
    KMS_GUARD(config_get_section(root, "deletion", del_keys, &del));
    if (del) {
        KMS_GUARD(config_get_unsigned(del, "default_days", "deletion", 0, 3650,
                                      &c->deletion_default_days));
        KMS_GUARD(config_get_unsigned(del, "min_days", "deletion", 0, 3650, &c->deletion_min_days));
        KMS_GUARD(config_get_unsigned(del, "day_seconds", "deletion", 1, 86400,
                                      &c->deletion_day_seconds));
        KMS_GUARD(config_get_unsigned(del, "sweep_interval_s", "deletion", 1, 86400,
                                      &c->sweep_interval_s));
    }
    return KMS_OK;
}

/* "rotation": usage limits and periods, checked against each other. */
static kms_err parse_rotation(json_t *root, struct kms_config *c)
{
    static const char *const rot_keys[] = {"usage_rotate_at", "usage_limit", "usage_reserve_block",
                                           "min_period_s", NULL};
    json_t *rot = NULL;
    KMS_GUARD(config_get_section(root, "rotation", rot_keys, &rot));
    if (rot) {
        unsigned long v = (unsigned long)c->usage_limit;
        KMS_GUARD(config_get_uint(rot, "usage_limit", "rotation", 1, KMS_USAGE_LIMIT_MAX, &v));
        c->usage_limit = v;
        v = (unsigned long)c->usage_rotate_at;
        KMS_GUARD(config_get_uint(rot, "usage_rotate_at", "rotation", 1, KMS_USAGE_LIMIT_MAX, &v));
        c->usage_rotate_at = v;
        KMS_GUARD(config_get_unsigned(rot, "usage_reserve_block", "rotation", 1, 1u << 20,
                               &c->usage_reserve_block));
        KMS_GUARD(config_get_unsigned(rot, "min_period_s", "rotation", 1, 10 * 365 * 86400UL,
                               &c->rotation_min_period_s));
    }
    /* Rotating before the limit leaves room for the requests in flight. */
    KMS_ENSURE(c->usage_rotate_at <= c->usage_limit, KMS_ERR_CONFIG,
               "rotation.usage_rotate_at: above rotation.usage_limit");
    /* Tiny thresholds and periods are for tests: in production they would
     * rotate keys on every burst. */
    if (!c->dev_mode) {
        KMS_ENSURE(c->usage_rotate_at >= KMS_USAGE_ROTATE_AT_MIN, KMS_ERR_CONFIG,
                   "rotation.usage_rotate_at: at least %lu outside dev mode",
                   (unsigned long)KMS_USAGE_ROTATE_AT_MIN);
        KMS_ENSURE(c->rotation_min_period_s >= 86400, KMS_ERR_CONFIG,
                   "rotation.min_period_s: at least 86400 (a day) outside dev mode");
    }
    return KMS_OK;
}

/* "log" and "health". */
static kms_err parse_log_health(json_t *root, const char *dir, struct kms_config *c)
{
    static const char *const log_keys[] = {"level", "file", NULL};
    json_t *log = NULL;
    KMS_GUARD(config_get_section(root, "log", log_keys, &log));
    if (log) {
        json_t *lv = json_object_get(log, "level");
        if (lv) {
            int l = kms_log_level_parse(json_string_value(lv));
            KMS_ENSURE(json_is_string(lv) && l >= 0, KMS_ERR_CONFIG,
                       "log.level: must be \"debug\", \"info\", \"warn\" or \"error\"");
            c->log_level = l;
        }
        KMS_GUARD(config_get_str(log, "file", "log", false, dir, true, &c->log_file));
    }
    static const char *const health_keys[] = {"cache_ms", NULL};
    json_t *health = NULL;
    KMS_GUARD(config_get_section(root, "health", health_keys, &health));
    if (health) {
        KMS_GUARD(config_get_unsigned(health, "cache_ms", "health", 0, 60000, &c->health_cache_ms));
    }
    return KMS_OK;
}

static kms_err parse(json_t *root, const char *dir, struct kms_config *c)
{
    static const char *const top[] = {"mode", "listen", "tls", "pkcs11", "policy", "store",
                                      "limits", "deletion", "audit", "import",
                                      "log", "health", "rotation", "link_tokens", "xks", NULL};
    KMS_ENSURE(json_is_object(root), KMS_ERR_CONFIG, "top level must be an object");
    KMS_GUARD(config_check_keys(root, "", top));

    KMS_GUARD(parse_front(root, dir, c));
    KMS_GUARD(config_parse_pkcs11(root, dir, c));
    KMS_GUARD(config_get_str(root, "policy", "", true, dir, true, &c->policy_path));
    KMS_GUARD(config_parse_store(root, dir, c));
    KMS_GUARD(config_get_str(root, "xks", "", false, dir, true, &c->xks_config_path));
    KMS_GUARD(parse_limits(root, c));
    KMS_GUARD(parse_deletion(root, c));
    KMS_GUARD(parse_rotation(root, c));
    KMS_GUARD(config_parse_audit(root, dir, c));
    KMS_GUARD(parse_log_health(root, dir, c));
    KMS_GUARD(config_parse_import(root, c));
    KMS_GUARD(config_parse_links(root, dir, c));

    /* A deletion window is the tenant's last chance to notice a mistake:
     * production keeps AWS's floor of 7 days. */
    if (!c->dev_mode) {
        KMS_ENSURE(c->deletion_min_days >= 7, KMS_ERR_CONFIG,
                   "deletion.min_days: at least 7 outside dev mode");
        KMS_ENSURE(c->deletion_day_seconds == 86400, KMS_ERR_CONFIG,
                   "deletion.day_seconds: only dev mode may shorten a day");
    }
    KMS_ENSURE(c->deletion_default_days >= c->deletion_min_days, KMS_ERR_CONFIG,
               "deletion.default_days: below deletion.min_days");
    return KMS_OK;
}

kms_err kms_config_load(const char *path, struct kms_config **out)
{
    *out = NULL;
    struct kms_config *c = calloc(1, sizeof(*c));
    KMS_ENSURE(c != NULL, KMS_ERR_NOMEM, "out of memory");
    c->listen_address = strdup("127.0.0.1");
    c->listen_port = 8700;
    c->pkcs11_module = strdup("/usr/lib/softhsm/libsofthsm2.so");
    c->max_body_bytes = 96 * 1024;
    c->max_connections = 1024;
    /* One address may hold at most this many connections, so a slowloris
     * client (or a broker's leaking pool) cannot take every slot of
     * max_connections from the others. 64 is twice what one broker host
     * needs at kmsd's measured peak (make bench: 32 keep-alive connections
     * saturate 2 cores). */
    c->max_connections_per_ip = 64;
    c->connection_timeout_s = 30;
    /* Measured (make bench): the epoll pool suspends a request while its
     * audit event waits for the group commit, so a few workers serve many
     * connections with one wake per batch; a thread per connection pays a
     * context switch per request and a thread per idle client. */
    c->thread_per_connection = false;
    c->deletion_default_days = 30;
    c->deletion_min_days = 7;
    c->deletion_day_seconds = 86400;
    c->sweep_interval_s = 60;
    /* AES-GCM with random 96-bit IVs: at most 2^32 encryptions per key
     * version (NIST SP 800-38D 8.3); rotate at a quarter of that. */
    c->usage_limit = KMS_USAGE_LIMIT_MAX;
    c->usage_rotate_at = 1UL << 30;
    c->usage_reserve_block = 16384;
    c->rotation_min_period_s = 86400;
    c->audit_enabled = true;
    c->audit_head_every_events = 1000;
    c->audit_head_every_ms = 10000;
    c->audit_key_max_age_s = 90 * 86400;
    c->audit_commit_delay_us = 200;
    c->audit_pg_poll_ms = 200;
    c->import_token_ttl_s = 86400;
    /* Link tokens: an SMS is read within minutes; 5..15 minutes is the
     * usual window, 10 by default. */
    c->link_min_ttl_s = 60;
    c->link_max_ttl_s = 900;
    c->link_default_ttl_s = 600;
    c->link_max_attempts = 5;
    c->link_recipient_limit = 20;
    c->link_recipient_window_s = 900;
    c->link_skew_s = 30;
    c->link_keep_expired_s = 86400;
    c->log_level = KMS_LOG_INFO;
    /* A load balancer probing every second costs one deep check per two
     * seconds; a removed token shows within that. */
    c->health_cache_ms = 2000;
    c->drain_timeout_s = 30;

    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        kms_config_free(c);
        return kms_err_set(KMS_ERR_CONFIG, "%s:%d: %s", path, jerr.line, jerr.text);
    }
    char dirbuf[PATH_MAX];
    snprintf(dirbuf, sizeof(dirbuf), "%s", path);
    char abs[PATH_MAX];
    const char *dir = dirname(dirbuf);
    if (realpath(dir, abs) != NULL)
        dir = abs;
    kms_err rc = parse(root, dir, c);
    json_decref(root);
    if (rc != KMS_OK) {
        char detail[600];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        kms_config_free(c);
        return kms_err_set(rc, "%s: %s", path, detail);
    }
    *out = c;
    return KMS_OK;
}

void kms_config_free(struct kms_config *c)
{
    if (c == NULL)
        return;
    free(c->listen_address);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_key_uri);
    free(c->tls_client_ca);
    free(c->pkcs11_module);
    free(c->pkcs11_module_args);
    for (size_t i = 0; i < c->n_tokens; i++) {
        free(c->tokens[i].region);
        free(c->tokens[i].token);
        free(c->tokens[i].pin_source);
    }
    free(c->policy_path);
    free(c->xks_config_path);
    free(c->store_path);
    free(c->store_pg_conninfo);
    free(c->store_pg_password);
    free(c->audit_dir);
    for (size_t i = 0; i < c->n_store_pg; i++) {
        free(c->store_pg[i].region);
        free(c->store_pg[i].conninfo);
        free(c->store_pg[i].password_source);
    }
    for (size_t i = 0; i < c->n_audit_pg; i++) {
        free(c->audit_pg[i].region);
        free(c->audit_pg[i].conninfo);
        free(c->audit_pg[i].password_source);
    }
    free(c->log_file);
    free(c->link_test_clock_file);
    free(c);
}

const char *kms_config_default_path(void)
{
    const char *p = getenv("CUSTOS_CONFIG");
    return p != NULL && *p != '\0' ? p : "/etc/custos/kmsd.json";
}
