/*
 * kms_service.c - the registry: tokens by region, store, key cache, usage
 * counts, policy (and its reload), audit logs, escrow keys, and the state
 * the key layer records in it at start (safe mode) and while running (the
 * object check's counts). What runs at start after it and in the
 * background is the key layer's: kms_reconcile.h, kms_sweeper.h.
 */
#include "kms_service.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit_log.h"
#include "audit_log_pg.h"
#include "audit_merkle.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_store_epoch.h"
#include "kms_usage_count.h"
#include "p11_escrow_key.h"
#include "p11_key.h"
#include "p11_module.h"

struct kms_service {
    const struct kms_config *cfg;
    struct p11_module *mod;
    struct p11_token *tokens[KMS_CONFIG_MAX_TOKENS];
    size_t n_tokens;
    struct kms_store *store;
    struct kms_keycache *keycache;
    struct kms_usage *usage; /* GCM encryption counts (kms_usage_count.h) */
    struct audit_log *audit[KMS_CONFIG_MAX_TOKENS]; /* by token index; NULL when off */
    /* A region whose audit log could not be opened (damage, missing key) is
     * not served at all; the others go on. */
    bool audit_broken[KMS_CONFIG_MAX_TOKENS];
    struct p11_key_id escrow[KMS_CONFIG_MAX_TOKENS]; /* by token index */
    bool has_escrow[KMS_CONFIG_MAX_TOKENS];

    pthread_mutex_t policy_lock; /* guards `policy` (the pointer, not the doc) */
    struct pol_doc *policy;

    /* SAFE MODE (kms_reconcile.h): set once at start, before any request;
     * read without a lock afterwards. */
    bool safe_mode;
    char safe_reason[400];
    /* The audit logs' encrypting events are in the store's counts (added at
     * start): a clean stop may then move the encryption-count watermark. */
    bool enc_counted;

    /* Live versions whose object their token does not hold, as of the
     * sweeper's last object check (kms_sweeper_check_objects); written by
     * the sweeper thread, read by readiness. */
    _Atomic size_t missing[KMS_CONFIG_MAX_TOKENS];
};

struct p11_token *kms_service_token(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return svc->tokens[i];
    return NULL;
}

size_t kms_service_n_tokens(const struct kms_service *svc)
{
    return svc->n_tokens;
}

struct p11_token *kms_service_token_at(struct kms_service *svc, size_t i)
{
    return i < svc->n_tokens ? svc->tokens[i] : NULL;
}

struct p11_token *kms_service_token_by_label(struct kms_service *svc, const char *label)
{
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (strcmp(p11_token_label(svc->tokens[i]), label) == 0)
            return svc->tokens[i];
    return NULL;
}

struct audit_log *kms_service_audit_log(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return svc->audit[i];
    return NULL;
}

struct audit_log *kms_service_audit_default(struct kms_service *svc)
{
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (svc->audit[i])
            return svc->audit[i];
    return NULL;
}

kms_err kms_service_region_check(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0 && svc->audit_broken[i])
            return kms_err_set(KMS_ERR_HSM_UNAVAILABLE,
                               "region %s is not served: its audit log is damaged (see the "
                               "operational log)",
                               region);
    return KMS_OK;
}

size_t kms_service_missing_objects(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return atomic_load(&svc->missing[i]);
    return 0;
}

size_t kms_service_set_missing_objects(struct kms_service *svc, const char *region, size_t n)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return atomic_exchange(&svc->missing[i], n);
    return 0;
}

bool kms_service_safe_mode(const struct kms_service *svc, const char **out_reason)
{
    if (out_reason)
        *out_reason = svc->safe_reason;
    return svc->safe_mode;
}

void kms_service_set_safe_mode(struct kms_service *svc, const char *reason)
{
    svc->safe_mode = true;
    snprintf(svc->safe_reason, sizeof(svc->safe_reason), "%s", reason ? reason : "SAFE MODE");
}

void kms_service_set_enc_counted(struct kms_service *svc)
{
    svc->enc_counted = true;
}

bool kms_service_escrow_key(struct kms_service *svc, const char *region, struct p11_key_id *out)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0 && svc->has_escrow[i]) {
            *out = svc->escrow[i];
            return true;
        }
    return false;
}

struct kms_store *kms_service_store(struct kms_service *svc)
{
    return svc->store;
}

struct kms_keycache *kms_service_keycache(struct kms_service *svc)
{
    return svc->keycache;
}

struct kms_usage *kms_service_usage(struct kms_service *svc)
{
    return svc->usage;
}

const struct kms_config *kms_service_config(const struct kms_service *svc)
{
    return svc->cfg;
}

struct pol_doc *kms_service_policy(struct kms_service *svc)
{
    pthread_mutex_lock(&svc->policy_lock);
    struct pol_doc *d = pol_doc_ref(svc->policy);
    pthread_mutex_unlock(&svc->policy_lock);
    return d;
}

kms_err kms_service_reload_policy(struct kms_service *svc)
{
    struct pol_doc *doc = NULL;
    kms_err rc = pol_doc_load_file(svc->cfg->policy_path, &doc);
    if (rc != KMS_OK) {
        kms_metrics_policy_reload(false);
        kms_log_error("policy", "%s: refused, keeping the current policy: %s",
                      svc->cfg->policy_path, kms_err_detail());
        return rc;
    }
    kms_metrics_policy_reload(true);
    pthread_mutex_lock(&svc->policy_lock);
    struct pol_doc *old = svc->policy;
    svc->policy = doc;
    pthread_mutex_unlock(&svc->policy_lock);
    pol_doc_unref(old);
    kms_log_info("policy", "loaded %s (sha256 %s)", svc->cfg->policy_path,
                 pol_doc_digest_hex(doc));
    return KMS_OK;
}

/* ---- health and metrics ---------------------------------------------------- */

/* Room for one more write of AUDIT_RECORD_MAX bytes in dir: a probe file
 * written and removed. The deep check runs one at a time (kms_health), so
 * one probe name is enough. */
static kms_err probe_room(const char *dir, const char *what)
{
    static const uint8_t zeros[AUDIT_RECORD_MAX];
    char path[4096];
    KMS_ENSURE((size_t)snprintf(path, sizeof(path), "%s/.custos-ready-probe", dir) <
                   sizeof(path),
               KMS_ERR_CONFIG, "%s: path too long", what);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    KMS_ENSURE(fd >= 0, KMS_ERR_IO, "%s %s is not writable: %s", what, dir, strerror(errno));
    size_t done = 0;
    int err = 0;
    while (done < sizeof(zeros)) {
        ssize_t n = write(fd, zeros + done, sizeof(zeros) - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            err = n < 0 ? errno : ENOSPC;
            break;
        }
        done += (size_t)n;
    }
    close(fd);
    unlink(path);
    KMS_ENSURE(err == 0, err == ENOSPC ? KMS_ERR_NOSPC : KMS_ERR_IO,
               "%s %s has no room for one more record (%s): the state disk is full",
               what, dir, strerror(err));
    return KMS_OK;
}

kms_err kms_service_check(struct kms_service *svc)
{
    for (size_t i = 0; i < svc->n_tokens; i++) {
        const char *region = p11_token_region(svc->tokens[i]);
        KMS_ENSURE(!svc->audit_broken[i], KMS_ERR_IO, "region %s: audit log not open", region);
        kms_err rc = p11_token_check(svc->tokens[i]);
        if (rc != KMS_OK) {
            char d[400];
            snprintf(d, sizeof(d), "%s", kms_err_detail());
            return kms_err_set(rc, "region %s: %s", region, d);
        }
        if (svc->audit[i]) {
            struct audit_log_stats st;
            audit_log_stats(svc->audit[i], &st);
            KMS_ENSURE(!st.failed, KMS_ERR_IO, "region %s: the audit log cannot be written",
                       region);
        }
        size_t missing = atomic_load(&svc->missing[i]);
        KMS_ENSURE(missing == 0, KMS_ERR_HSM,
                   "region %s: %zu live key version(s) have no object in token '%s'", region,
                   missing, p11_token_label(svc->tokens[i]));
    }
    /* The audit directory can lose its write permission or its file system
     * under a running log that has nothing to write yet. */
    /* (Only when a region keeps its log in files: a fleet whose logs are
     * all in PostgreSQL has no audit directory.) */
    bool audit_files = svc->cfg->audit_enabled && svc->cfg->n_audit_pg < svc->n_tokens;
    KMS_ENSURE(!audit_files || access(svc->cfg->audit_dir, W_OK) == 0, KMS_ERR_IO,
               "audit directory %s is not writable: %s", svc->cfg->audit_dir, strerror(errno));
    /* A full disk (or a file-size limit) is invisible to an idle log and
     * store: prove there is room for one more record of each. */
    if (audit_files)
        KMS_GUARD(probe_room(svc->cfg->audit_dir, "audit directory"));
    /* On PostgreSQL there is no local file: kms_store_info below asks the
     * server, so a database that is down makes the node not ready. */
    if (svc->cfg->store_path != NULL) {
        char store_dir[4096];
        snprintf(store_dir, sizeof(store_dir), "%s", svc->cfg->store_path);
        char *slash = strrchr(store_dir, '/');
        if (slash == NULL)
            snprintf(store_dir, sizeof(store_dir), ".");
        else if (slash == store_dir)
            slash[1] = '\0';
        else
            *slash = '\0';
        KMS_GUARD(probe_room(store_dir, "store directory"));
    }
    struct kms_store_info info;
    KMS_GUARD(kms_store_info(svc->store, &info));
    return KMS_OK;
}

void kms_service_metrics(struct kms_service *svc, FILE *f)
{
    struct p11_pool_stats ps[KMS_CONFIG_MAX_TOKENS];
    for (size_t i = 0; i < svc->n_tokens; i++)
        p11_token_pool_stats(svc->tokens[i], &ps[i]);
#define EACH_TOKEN(name, label, value, expr)                                               \
    for (size_t i = 0; i < svc->n_tokens; i++)                                              \
        kms_metrics_gauge(f, name, p11_token_region(svc->tokens[i]),                       \
                          p11_token_label(svc->tokens[i]), label, value, (double)(expr))
    kms_metrics_family(f, "custos_token_available", "gauge",
                       "1 while the token answers, 0 after it reported removal or failure.");
    EACH_TOKEN("custos_token_available", NULL, NULL, p11_token_available(svc->tokens[i]));
    kms_metrics_family(f, "custos_hsm_sessions", "gauge",
                       "Session pool: sessions open, idle, in use, and the pool's cap.");
    EACH_TOKEN("custos_hsm_sessions", "state", "open", ps[i].open);
    EACH_TOKEN("custos_hsm_sessions", "state", "idle", ps[i].idle);
    EACH_TOKEN("custos_hsm_sessions", "state", "in_use", ps[i].open - ps[i].idle);
    EACH_TOKEN("custos_hsm_sessions", "state", "cap", ps[i].cap);
    kms_metrics_family(f, "custos_hsm_sessions_replaced_total", "counter",
                       "Sessions found broken and replaced since start.");
    EACH_TOKEN("custos_hsm_sessions_replaced_total", NULL, NULL, ps[i].replaced);
    kms_metrics_family(f, "custos_region_audit_ok", "gauge",
                       "1 when the region's audit log is open and writable.");
    for (size_t i = 0; i < svc->n_tokens; i++) {
        bool ok = !svc->audit_broken[i];
        if (svc->audit[i]) {
            struct audit_log_stats st;
            audit_log_stats(svc->audit[i], &st);
            ok = ok && !st.failed;
        }
        kms_metrics_gauge(f, "custos_region_audit_ok", p11_token_region(svc->tokens[i]),
                          p11_token_label(svc->tokens[i]), NULL, NULL, ok);
    }
    kms_metrics_family(f, "custos_safe_mode", "gauge",
                       "1 while kmsd is in safe mode: its store does not match the audit log "
                       "and the tokens (a restore); only decrypt and read operations serve.");
    EACH_TOKEN("custos_safe_mode", NULL, NULL, svc->safe_mode);
#undef EACH_TOKEN
    kms_usage_metrics(svc->usage, f);
}

/* ---- sweeper ---------------------------------------------------------------- */

/* ---- lifecycle ------------------------------------------------------------------ */

/* The module (one call at a time if configured so: docs/pkcs11.md) and
 * one token per configured region. */
static kms_err open_tokens(struct kms_service *svc)
{
    const struct kms_config *cfg = svc->cfg;
    p11_serialize_calls(cfg->pkcs11_serialize_calls);
    if (cfg->pkcs11_serialize_calls)
        kms_log_info("pkcs11", "pkcs11.serialize_calls: one call into the module at a time");
    KMS_GUARD(p11_module_load_args(cfg->pkcs11_module, cfg->pkcs11_module_args, &svc->mod));
    struct p11_token_config tc[KMS_CONFIG_MAX_TOKENS];
    for (size_t i = 0; i < cfg->n_tokens; i++)
        tc[i] = (struct p11_token_config){cfg->tokens[i].region, cfg->tokens[i].token,
                                          cfg->tokens[i].pin_source,
                                          cfg->tokens[i].max_sessions};
    KMS_GUARD(p11_tokens_open(svc->mod, tc, cfg->n_tokens, svc->tokens));
    svc->n_tokens = cfg->n_tokens;
    return KMS_OK;
}

kms_err kms_service_start(const struct kms_config *cfg, struct kms_service **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    struct kms_service *svc = calloc(1, sizeof(*svc));
    KMS_ENSURE(svc != NULL, KMS_ERR_NOMEM, "out of memory");
    svc->cfg = cfg;
    pthread_mutex_init(&svc->policy_lock, NULL);

    KMS_GUARD_GOTO(pol_doc_load_file(cfg->policy_path, &svc->policy), fail_policy);
    KMS_GUARD_GOTO(open_tokens(svc), fail);
    if (cfg->store_path != NULL) {
        KMS_GUARD_GOTO(kms_store_open(cfg->store_path, &svc->store), fail);
    } else if (cfg->n_store_pg > 0) {
        /* One database per region ("store.regions"): residency. */
        struct kms_store_pg_region sr[KMS_CONFIG_MAX_TOKENS];
        for (size_t i = 0; i < cfg->n_store_pg; i++)
            sr[i] = (struct kms_store_pg_region){cfg->store_pg[i].region,
                                                 cfg->store_pg[i].conninfo,
                                                 cfg->store_pg[i].password_source};
        KMS_GUARD_GOTO(kms_store_open_pg_regions(sr, cfg->n_store_pg, &svc->store), fail);
    } else
        KMS_GUARD_GOTO(kms_store_open_pg(cfg->store_pg_conninfo, cfg->store_pg_password,
                                         &svc->store),
                       fail);
    /* One second bounds how long another node's change can go unseen here;
     * this node's own changes invalidate at once. */
    KMS_GUARD_GOTO(kms_keycache_new(100000, 1000, &svc->keycache), fail);
    struct kms_usage_config uc = {cfg->usage_rotate_at, cfg->usage_limit,
                                  cfg->usage_reserve_block};
    KMS_GUARD_GOTO(kms_usage_new(svc->store, &uc, &svc->usage), fail);
    for (size_t i = 0; i < svc->n_tokens; i++) {
        size_t n = 0;
        KMS_GUARD_GOTO(p11_token_warm_cache(svc->tokens[i], &n), fail);
        kms_log_info("service", "token '%s': %zu key objects in the handle cache",
                     p11_token_label(svc->tokens[i]), n);
        KMS_GUARD_GOTO(p11_escrow_key_find(svc->tokens[i], &svc->escrow[i], &svc->has_escrow[i]),
                       fail);
        if (!svc->has_escrow[i])
            kms_log_warn("service", "region %s has no escrow key: tenants that require escrow "
                         "cannot create keys there (kmsctl hsm init-region)",
                         p11_token_region(svc->tokens[i]));
    }
    if (cfg->audit_enabled) {
        struct audit_log_config ac = {cfg->audit_head_every_events, cfg->audit_head_every_ms,
                                      (int64_t)cfg->audit_key_max_age_s,
                                      cfg->audit_commit_delay_us};
        size_t healthy = 0;
        for (size_t i = 0; i < svc->n_tokens; i++) {
            const char *region = p11_token_region(svc->tokens[i]);
            const struct kms_config_audit_pg *apg = kms_config_audit_pg(cfg, region);
            kms_err arc;
            if (apg != NULL) {
                struct kms_pg_target t = {apg->conninfo, apg->password_source};
                arc = audit_log_open_pg(&t, region, svc->tokens[i], &ac, cfg->audit_pg_poll_ms,
                                        &svc->audit[i]);
            } else {
                arc = audit_log_open(cfg->audit_dir, region, svc->tokens[i], &ac,
                                     &svc->audit[i]);
            }
            if (arc == KMS_OK) {
                healthy++;
                continue;
            }
            if (arc == KMS_ERR_NOMEM) {
                rc = arc;
                goto fail;
            }
            /* Nothing is repaired automatically: the files stay as they
             * are for the operator and the auditors to examine. */
            svc->audit_broken[i] = true;
            kms_log_error("audit", "region %s is NOT SERVED: its audit log cannot be opened: %s",
                          region, kms_err_detail());
        }
        KMS_ENSURE_GOTO(healthy > 0, fail, KMS_ERR_IO,
                        "no region has a usable audit log; refusing to start");
    } else {
        kms_log_warn("service", "the audit log is OFF (dev mode): nothing is being recorded");
    }
    kms_log_info("service", "policy %s (sha256 %s), store %s, %zu token(s)", cfg->policy_path,
                 pol_doc_digest_hex(svc->policy),
                 cfg->store_path != NULL ? cfg->store_path : "on PostgreSQL", svc->n_tokens);
    *out = svc;
    return KMS_OK;

fail_policy:
    {
        char d[512];
        snprintf(d, sizeof(d), "%s", kms_err_detail());
        kms_err_set(rc, "policy %s: %s", cfg->policy_path, d);
    }
fail:
    kms_service_free(svc);
    return rc;
}

void kms_service_free(struct kms_service *svc)
{
    if (svc == NULL)
        return;
    uint64_t sizes[KMS_CONFIG_MAX_TOKENS] = {0};
    for (size_t i = 0; i < svc->n_tokens; i++) {
        if (svc->audit[i]) {
            sizes[i] = audit_tree_size(audit_log_tree(svc->audit[i]));
            struct audit_log_stats st;
            audit_log_stats(svc->audit[i], &st);
            kms_log_info("audit", "region %s: %llu events in %llu batches (largest %llu), %llu heads",
                         audit_log_region(svc->audit[i]), (unsigned long long)st.events,
                         (unsigned long long)st.batches, (unsigned long long)st.max_batch,
                         (unsigned long long)st.heads);
        }
        audit_log_close(svc->audit[i]);
    }
    kms_keycache_free(svc->keycache);
    /* Before the store: gives unused reservations back. */
    kms_usage_free(svc->usage);
    /* A clean stop leaves exact counts covering every encrypting event
     * written: the next start adds none of them again (docs/state.md). */
    for (size_t i = 0; svc->store && i < svc->n_tokens; i++)
        if (svc->audit[i] != NULL && svc->enc_counted &&
            kms_store_enc_mark_set(svc->store, p11_token_region(svc->tokens[i]), sizes[i]) !=
                KMS_OK)
            kms_log_warn("restore", "region %s: encryption-count watermark not recorded: %s",
                         p11_token_region(svc->tokens[i]), kms_err_detail());
    kms_store_free(svc->store);
    for (size_t i = 0; i < svc->n_tokens; i++)
        p11_token_free(svc->tokens[i]);
    p11_module_free(svc->mod);
    pol_doc_unref(svc->policy);
    pthread_mutex_destroy(&svc->policy_lock);
    free(svc);
}
