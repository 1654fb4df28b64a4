/*
 * kms_config_sections.c - the parsers of kmsd.json's newer sections:
 * "pkcs11" (tokens and module_args), "audit" (with "audit.postgresql"),
 * "import", "link_tokens" and "store" (SQLite or PostgreSQL). The top level
 * and the defaults are in kms_config.c.
 */
#include "kms_config_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_pgconn.h"
#include "p11_module.h"

/* "pkcs11": the module and one token per region. */
kms_err config_parse_pkcs11(json_t *root, const char *dir, struct kms_config *c)
{
    json_t *p11 = json_object_get(root, "pkcs11");
    KMS_ENSURE(json_is_object(p11), KMS_ERR_CONFIG, "pkcs11: required object");
    static const char *const pk[] = {"module", "module_args", "serialize_calls", "tokens", NULL};
    KMS_GUARD(config_check_keys(p11, "pkcs11", pk));
    KMS_GUARD(config_get_bool(p11, "serialize_calls", "pkcs11", &c->pkcs11_serialize_calls));
    KMS_GUARD(config_get_str(p11, "module", "pkcs11", false, dir, true, &c->pkcs11_module));
    /* The module's initialisation string (NSS's softoken needs one);
     * configuration, never a PIN: p11_module_args_check says why not. */
    KMS_GUARD(
        config_get_str(p11, "module_args", "pkcs11", false, dir, false, &c->pkcs11_module_args));
    if (p11_module_args_check(c->pkcs11_module_args) != KMS_OK) {
        char why[256];
        snprintf(why, sizeof(why), "%s", kms_err_detail());
        return kms_err_set(KMS_ERR_CONFIG, "pkcs11.module_args: %s", why);
    }
    json_t *toks = json_object_get(p11, "tokens");
    KMS_ENSURE(json_is_array(toks) && json_array_size(toks) >= 1 &&
                   json_array_size(toks) <= KMS_CONFIG_MAX_TOKENS,
               KMS_ERR_CONFIG, "pkcs11.tokens: must be an array of 1..%d tokens",
               KMS_CONFIG_MAX_TOKENS);
    size_t i;
    json_t *t;
    json_array_foreach(toks, i, t)
    {
        char where[64];
        snprintf(where, sizeof(where), "pkcs11.tokens[%zu]", i);
        static const char *const tk[] = {"region", "token", "pin", "max_sessions", NULL};
        KMS_ENSURE(json_is_object(t), KMS_ERR_CONFIG, "%s: must be an object", where);
        KMS_GUARD(config_check_keys(t, where, tk));
        struct kms_config_token *ct = &c->tokens[c->n_tokens++];
        KMS_GUARD(config_get_str(t, "region", where, true, dir, false, &ct->region));
        KMS_GUARD(config_get_str(t, "token", where, true, dir, false, &ct->token));
        KMS_GUARD(config_get_str(t, "pin", where, true, dir, true, &ct->pin_source));
        unsigned long ms = 0;
        KMS_GUARD(config_get_uint(t, "max_sessions", where, 0, 1024, &ms));
        ct->max_sessions = ms;
        for (size_t j = 0; j + 1 < c->n_tokens; j++)
            KMS_ENSURE(strcmp(c->tokens[j].region, ct->region) != 0, KMS_ERR_CONFIG,
                       "%s.region: region \"%s\" already has a token", where, ct->region);
    }
    return KMS_OK;
}

/* "audit.postgresql": {"<region>": {"conninfo": ..., "password": ...}}.
 * Each region must be one of the configured tokens' (residency: the log of
 * a region lives in that region's database). */
static kms_err parse_audit_pg(json_t *pgs, const char *dir, struct kms_config *c)
{
    static const char *const pg_keys[] = {"conninfo", "password", NULL};
    KMS_ENSURE(json_is_object(pgs), KMS_ERR_CONFIG, "audit.postgresql: must be an object");
    const char *region;
    json_t *v;
    json_object_foreach(pgs, region, v)
    {
        char where[160];
        snprintf(where, sizeof(where), "audit.postgresql.%.64s", region);
        KMS_ENSURE(json_is_object(v), KMS_ERR_CONFIG, "%s: must be an object", where);
        KMS_GUARD(config_check_keys(v, where, pg_keys));
        bool known = false;
        for (size_t i = 0; i < c->n_tokens; i++)
            known |= strcmp(c->tokens[i].region, region) == 0;
        KMS_ENSURE(known, KMS_ERR_CONFIG, "%s: no token serves this region", where);
        KMS_ENSURE(c->n_audit_pg < KMS_CONFIG_MAX_TOKENS, KMS_ERR_CONFIG,
                   "audit.postgresql: too many regions");
        struct kms_config_audit_pg *p = &c->audit_pg[c->n_audit_pg++];
        p->region = strdup(region);
        KMS_ENSURE(p->region != NULL, KMS_ERR_NOMEM, "out of memory");
        KMS_GUARD(config_get_str(v, "conninfo", where, true, dir, false, &p->conninfo));
        KMS_GUARD(config_get_str(v, "password", where, false, dir, true, &p->password_source));
        struct kms_pg_target t = {p->conninfo, p->password_source};
        if (kms_pg_target_check(&t) != KMS_OK) {
            char why[300]; /* kms_err_set overwrites the detail it would read */
            snprintf(why, sizeof(why), "%s", kms_err_detail());
            return kms_err_set(KMS_ERR_CONFIG, "%s: %s", where, why);
        }
    }
    return KMS_OK;
}

const struct kms_config_audit_pg *kms_config_audit_pg(const struct kms_config *cfg,
                                                      const char *region)
{
    for (size_t i = 0; i < cfg->n_audit_pg; i++)
        if (strcmp(cfg->audit_pg[i].region, region) == 0)
            return &cfg->audit_pg[i];
    return NULL;
}

/* "audit": the audit log, on unless in dev mode. */
kms_err config_parse_audit(json_t *root, const char *dir, struct kms_config *c)
{
    static const char *const aud_keys[] = {
        "enabled",         "dir", "head_every_events", "head_every_ms", "key_max_age_s",
        "commit_delay_us", "postgresql", "sequencer_poll_ms", NULL};
    json_t *aud = NULL;
    KMS_GUARD(config_get_section(root, "audit", aud_keys, &aud));
    if (aud) {
        KMS_GUARD(config_get_bool(aud, "enabled", "audit", &c->audit_enabled));
        KMS_GUARD(config_get_str(aud, "dir", "audit", false, dir, true, &c->audit_dir));
        KMS_GUARD(config_get_unsigned(aud, "head_every_events", "audit", 1, 1000000,
                               &c->audit_head_every_events));
        KMS_GUARD(config_get_unsigned(aud, "head_every_ms", "audit", 10, 86400000,
                                      &c->audit_head_every_ms));
        KMS_GUARD(config_get_unsigned(aud, "key_max_age_s", "audit", 1, 10 * 365 * 86400UL,
                               &c->audit_key_max_age_s));
        KMS_GUARD(config_get_unsigned(aud, "commit_delay_us", "audit", 0, 10000,
                                      &c->audit_commit_delay_us));
        KMS_GUARD(config_get_unsigned(aud, "sequencer_poll_ms", "audit", 10, 60000,
                               &c->audit_pg_poll_ms));
        json_t *pgs = json_object_get(aud, "postgresql");
        if (pgs != NULL)
            KMS_GUARD(parse_audit_pg(pgs, dir, c));
    }
    /* An unaudited key service is only for measuring what audit costs. */
    KMS_ENSURE(c->audit_enabled || c->dev_mode, KMS_ERR_CONFIG,
               "audit.enabled: only dev mode may turn the audit log off");
    if (c->audit_dir == NULL) {
        c->audit_dir = config_resolve(dir, "audit");
        KMS_ENSURE(c->audit_dir != NULL, KMS_ERR_NOMEM, "out of memory");
    }
    return KMS_OK;
}

/* "import": BYOK import tokens. */
kms_err config_parse_import(json_t *root, struct kms_config *c)
{
    static const char *const imp_keys[] = {"token_ttl_s", NULL};
    json_t *imp = NULL;
    KMS_GUARD(config_get_section(root, "import", imp_keys, &imp));
    if (imp) {
        KMS_GUARD(config_get_unsigned(imp, "token_ttl_s", "import", 1, 7 * 86400,
                                      &c->import_token_ttl_s));
    }
    /* Every import token holds an RSA-3072 key pair in the HSM until it is
     * used or expires; a minute is the least a human can work with. */
    KMS_ENSURE(c->import_token_ttl_s >= 60 || c->dev_mode, KMS_ERR_CONFIG,
               "import.token_ttl_s: at least 60 outside dev mode");
    return KMS_OK;
}

/* "link_tokens": link token bounds (docs/link-tokens.md). */
kms_err config_parse_links(json_t *root, const char *dir, struct kms_config *c)
{
    static const char *const keys[] = {"min_ttl_s",       "max_ttl_s",
                                       "default_ttl_s",   "max_attempts",
                                       "recipient_limit", "recipient_window_s",
                                       "clock_skew_s",    "keep_expired_s",
                                       "test_clock_file", NULL};
    json_t *s = NULL;
    KMS_GUARD(config_get_section(root, "link_tokens", keys, &s));
    if (s) {
        const char *w = "link_tokens";
        KMS_GUARD(config_get_unsigned(s, "min_ttl_s", w, 1, 86400, &c->link_min_ttl_s));
        KMS_GUARD(config_get_unsigned(s, "max_ttl_s", w, 1, 86400, &c->link_max_ttl_s));
        KMS_GUARD(config_get_unsigned(s, "default_ttl_s", w, 1, 86400, &c->link_default_ttl_s));
        KMS_GUARD(config_get_unsigned(s, "max_attempts", w, 1, 100, &c->link_max_attempts));
        KMS_GUARD(
            config_get_unsigned(s, "recipient_limit", w, 1, 100000, &c->link_recipient_limit));
        KMS_GUARD(config_get_unsigned(s, "recipient_window_s", w, 1, 86400,
                               &c->link_recipient_window_s));
        KMS_GUARD(config_get_unsigned(s, "clock_skew_s", w, 0, 300, &c->link_skew_s));
        KMS_GUARD(
            config_get_unsigned(s, "keep_expired_s", w, 0, 30 * 86400, &c->link_keep_expired_s));
        KMS_GUARD(
            config_get_str(s, "test_clock_file", w, false, dir, true, &c->link_test_clock_file));
    }
    KMS_ENSURE(c->link_min_ttl_s <= c->link_default_ttl_s &&
                   c->link_default_ttl_s <= c->link_max_ttl_s,
               KMS_ERR_CONFIG, "link_tokens: needs min_ttl_s <= default_ttl_s <= max_ttl_s");
    /* A clock tests can move has no place in production. */
    KMS_ENSURE(c->link_test_clock_file == NULL || c->dev_mode, KMS_ERR_CONFIG,
               "link_tokens.test_clock_file: only in dev mode");
    return KMS_OK;
}

/* A password source as the store and the audit log take it. */
static kms_err check_password_source(const char *src, const char *where)
{
    KMS_ENSURE(src == NULL || strncmp(src, "file:", 5) == 0 || strncmp(src, "env:", 4) == 0,
               KMS_ERR_CONFIG, "%s.password: a source, \"file:/path\" (or \"env:NAME\")",
               where);
    return KMS_OK;
}

/*
 * "store.regions": {"<region>": {"conninfo": ..., "password": ...}}: each
 * region's metadata in its own database. Exactly one entry per token
 * region, each naming one, and no two naming the same database (host,
 * port and dbname as libpq parses them): two regions in one database would
 * put both regions' rows where either region's operators can read them.
 */
static kms_err parse_store_regions(json_t *regs, const char *dir, struct kms_config *c)
{
    static const char *const keys[] = {"conninfo", "password", NULL};
    KMS_ENSURE(json_is_object(regs) && json_object_size(regs) > 0, KMS_ERR_CONFIG,
               "store.regions: must be an object with one entry per region");
    const char *region;
    json_t *v;
    json_object_foreach(regs, region, v)
    {
        char where[160];
        snprintf(where, sizeof(where), "store.regions.%.64s", region);
        KMS_ENSURE(json_is_object(v), KMS_ERR_CONFIG, "%s: must be an object", where);
        KMS_GUARD(config_check_keys(v, where, keys));
        bool known = false;
        for (size_t i = 0; i < c->n_tokens; i++)
            known |= strcmp(c->tokens[i].region, region) == 0;
        KMS_ENSURE(known, KMS_ERR_CONFIG, "%s: no token serves this region", where);
        KMS_ENSURE(c->n_store_pg < KMS_CONFIG_MAX_TOKENS, KMS_ERR_CONFIG,
                   "store.regions: too many regions");
        struct kms_config_audit_pg *p = &c->store_pg[c->n_store_pg++];
        p->region = strdup(region);
        KMS_ENSURE(p->region != NULL, KMS_ERR_NOMEM, "out of memory");
        KMS_GUARD(config_get_str(v, "conninfo", where, true, dir, false, &p->conninfo));
        KMS_GUARD(config_get_str(v, "password", where, false, dir, true, &p->password_source));
        KMS_GUARD(check_password_source(p->password_source, where));
        struct kms_pg_target t = {p->conninfo, p->password_source};
        if (kms_pg_target_check(&t) != KMS_OK) {
            char why[300]; /* kms_err_set overwrites the detail it would read */
            snprintf(why, sizeof(why), "%s", kms_err_detail());
            return kms_err_set(KMS_ERR_CONFIG, "%s.conninfo: %s", where, why);
        }
        for (size_t j = 0; j + 1 < c->n_store_pg; j++) {
            bool same = false;
            KMS_GUARD(kms_pg_same_database(c->store_pg[j].conninfo, p->conninfo, &same));
            KMS_ENSURE(!same, KMS_ERR_CONFIG,
                       "%s.conninfo: names the database of region %s (host, port and dbname); "
                       "each region keeps its metadata in its own database",
                       where, c->store_pg[j].region);
        }
    }
    for (size_t i = 0; i < c->n_tokens; i++) {
        bool listed = false;
        for (size_t j = 0; j < c->n_store_pg; j++)
            listed |= strcmp(c->store_pg[j].region, c->tokens[i].region) == 0;
        KMS_ENSURE(listed, KMS_ERR_CONFIG,
                   "store.regions: region \"%s\" (pkcs11.tokens) has no database", 
                   c->tokens[i].region);
    }
    return KMS_OK;
}

/*
 * "store": a path (the SQLite file, the default backend), or an object:
 *   {"backend": "sqlite", "path": "..."}
 *   {"backend": "postgresql", "conninfo": "host=... dbname=...",
 *    "password": "file:/etc/custos/pg-password"}      (every region in one)
 *   {"backend": "postgresql", "regions": {"<region>": {"conninfo": ...,
 *    "password": ...}, ...}}                           (one per region)
 * The password never sits in the connection string (refused there): it
 * comes from its source when kmsd connects.
 */
kms_err config_parse_store(json_t *root, const char *dir, struct kms_config *c)
{
    json_t *v = json_object_get(root, "store");
    KMS_ENSURE(v != NULL, KMS_ERR_CONFIG, ".store: required");
    if (!json_is_object(v))
        return config_get_str(root, "store", "", true, dir, true, &c->store_path);
    static const char *const keys[] = {"backend", "path", "conninfo", "password", "regions",
                                       NULL};
    KMS_GUARD(config_check_keys(v, "store", keys));
    char *backend = NULL;
    KMS_GUARD(config_get_str(v, "backend", "store", false, dir, false, &backend));
    bool pg = backend != NULL && strcmp(backend, "postgresql") == 0;
    bool known = backend == NULL || pg || strcmp(backend, "sqlite") == 0;
    free(backend);
    KMS_ENSURE(known, KMS_ERR_CONFIG, "store.backend: must be \"sqlite\" or \"postgresql\"");
    if (!pg) {
        KMS_ENSURE(json_object_get(v, "conninfo") == NULL &&
                       json_object_get(v, "password") == NULL &&
                       json_object_get(v, "regions") == NULL,
                   KMS_ERR_CONFIG,
                   "store: conninfo, password and regions are for the postgresql backend");
        return config_get_str(v, "path", "store", true, dir, true, &c->store_path);
    }
    KMS_ENSURE(json_object_get(v, "path") == NULL, KMS_ERR_CONFIG,
               "store.path: the postgresql backend has no file (conninfo names the database)");
    json_t *regs = json_object_get(v, "regions");
    if (regs != NULL) {
        KMS_ENSURE(json_object_get(v, "conninfo") == NULL &&
                       json_object_get(v, "password") == NULL,
                   KMS_ERR_CONFIG,
                   "store: either conninfo (every region in one database) or regions (one "
                   "database per region), not both");
        return parse_store_regions(regs, dir, c);
    }
    KMS_GUARD(config_get_str(v, "conninfo", "store", true, dir, false, &c->store_pg_conninfo));
    KMS_GUARD(config_get_str(v, "password", "store", false, dir, true, &c->store_pg_password));
    KMS_GUARD(check_password_source(c->store_pg_password, "store"));
    struct kms_pg_target t = {c->store_pg_conninfo, c->store_pg_password};
    kms_err rc = kms_pg_target_check(&t);
    if (rc != KMS_OK) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        return kms_err_set(rc, "store.conninfo: %s", detail);
    }
    return KMS_OK;
}
