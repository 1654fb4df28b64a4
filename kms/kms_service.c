/*
 * kms_service.c - start-up, reconcile, policy reload, deletion sweeper.
 */
#include "kms_service.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit_log.h"
#include "kms_escrow.h"
#include "kms_import.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_rotate.h"
#include "kms_usage.h"
#include "p11_crypto.h"
#include "p11_key.h"
#include "p11_module.h"

struct kms_service {
    const struct kms_config *cfg;
    struct p11_module *mod;
    struct p11_token *tokens[KMS_CONFIG_MAX_TOKENS];
    size_t n_tokens;
    struct kms_store *store;
    struct kms_keycache *keycache;
    struct kms_usage *usage; /* GCM encryption counts (kms_usage.h) */
    struct audit_log *audit[KMS_CONFIG_MAX_TOKENS]; /* by token index; NULL when off */
    /* A region whose audit log could not be opened (damage, missing key) is
     * not served at all; the others go on. */
    bool audit_broken[KMS_CONFIG_MAX_TOKENS];
    struct p11_key_id escrow[KMS_CONFIG_MAX_TOKENS]; /* by token index */
    bool has_escrow[KMS_CONFIG_MAX_TOKENS];

    pthread_mutex_t policy_lock; /* guards `policy` (the pointer, not the doc) */
    struct pol_doc *policy;

    pthread_t sweeper;
    bool sweeper_running;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stopping;
};

struct p11_token *kms_service_token(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return svc->tokens[i];
    return NULL;
}

static struct p11_token *token_by_label(struct kms_service *svc, const char *label)
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
    }
    /* The audit directory can lose its write permission or its file system
     * under a running log that has nothing to write yet. */
    KMS_ENSURE(!svc->cfg->audit_enabled || access(svc->cfg->audit_dir, W_OK) == 0, KMS_ERR_IO,
               "audit directory %s is not writable: %s", svc->cfg->audit_dir, strerror(errno));
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
#undef EACH_TOKEN
    kms_usage_metrics(svc->usage, f);
}

/* ---- reconcile ----------------------------------------------------------- */

static int cmp_hsm_id(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

/* An HSM object of ours that no live version names. It is destroyed only
 * when the store remembers its key as DESTROYED (the sweeper crashed between
 * the store and the HSM). An object the store has never heard of is left in
 * place and reported: starting on a restored old database must not destroy
 * keys created after the backup. */
static void reconcile_orphan(struct kms_service *svc, struct p11_token *tok,
                             const struct p11_key_id *id)
{
    char hex[33], label[65], key_id[KMS_KEY_ID_SIZE] = "";
    p11_key_id_hex(id, hex);
    if (p11_key_label(tok, id, label) == KMS_OK &&
        strncmp(label, KMS_HSM_LABEL_PREFIX, strlen(KMS_HSM_LABEL_PREFIX)) == 0) {
        const char *k = label + strlen(KMS_HSM_LABEL_PREFIX);
        const char *colon = strchr(k, ':');
        if (colon && colon - k == KMS_KEY_ID_LEN) {
            memcpy(key_id, k, KMS_KEY_ID_LEN);
            key_id[KMS_KEY_ID_LEN] = '\0';
        }
    }
    struct kms_key_record rec;
    if (key_id[0] && kms_store_key_get(svc->store, key_id, &rec) == KMS_OK &&
        rec.state == KMS_KEY_DESTROYED) {
        kms_err drc = p11_key_destroy(tok, id);
        kms_log_warn("reconcile", "token '%s': destroyed leftover HSM object %s of destroyed key %s: %s",
                     p11_token_label(tok), hex, key_id, drc == KMS_OK ? "ok" : kms_err_detail());
        return;
    }
    kms_log_error("reconcile", "token '%s': HSM object %s (label '%s') is unknown to the store; "
                  "left in place (was the store restored from an old backup?)",
                  p11_token_label(tok), hex, label);
}

/* A crash between "row in CREATING" and "row ACTIVE" leaves a version that
 * was never acknowledged: remove its HSM object, if any, and its row. Then
 * deal with HSM objects of ours that no live row names (orphans). */
static kms_err reconcile(struct kms_service *svc)
{
    struct kms_store_creating *creating = NULL;
    size_t n = 0;
    KMS_GUARD(kms_store_creating_list(svc->store, &creating, &n));
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        struct p11_token *tok = token_by_label(svc, creating[i].token);
        if (tok == NULL) {
            kms_log_warn("reconcile", "key %s v%u is half-created in token '%s', which this node does not serve; left alone",
                         creating[i].key_id, creating[i].version, creating[i].token);
            continue;
        }
        struct p11_key_id id;
        memcpy(id.b, creating[i].hsm_id, sizeof(id.b));
        kms_err drc = p11_key_destroy(tok, &id);
        if (drc != KMS_OK && drc != KMS_ERR_NOT_FOUND) {
            rc = drc;
            break;
        }
        rc = kms_store_creating_discard(svc->store, creating[i].key_id, creating[i].version);
        if (rc == KMS_OK)
            kms_log_warn("reconcile", "removed half-created key %s version %u (HSM object %s)",
                         creating[i].key_id, creating[i].version,
                         drc == KMS_OK ? "destroyed" : "never made");
    }
    free(creating);
    KMS_GUARD(rc);

    for (size_t t = 0; t < svc->n_tokens; t++) {
        struct p11_token *tok = svc->tokens[t];
        struct p11_key_id *ids = NULL;
        size_t n_ids = 0;
        struct kms_hsm_id *known = NULL;
        size_t n_known = 0;
        /* Objects a crash inside the HSM library left without attributes. */
        size_t husks = 0;
        KMS_GUARD(p11_key_destroy_husks(tok, &husks));
        if (husks > 0)
            kms_log_warn("reconcile", "token '%s': destroyed %zu incomplete key object(s) "
                         "without CKA_ID or label (left by a crash during object creation)",
                         p11_token_label(tok), husks);
        /* HSM first, store second: see kms_store.h. */
        KMS_GUARD(p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, &ids, &n_ids));
        rc = kms_store_hsm_ids_for_token(svc->store, p11_token_label(tok), &known, &n_known);
        for (size_t i = 0; rc == KMS_OK && i < n_ids; i++) {
            if (bsearch(ids[i].b, known, n_known, sizeof(*known), cmp_hsm_id))
                continue;
            reconcile_orphan(svc, tok, &ids[i]);
        }
        free(ids);
        free(known);
        KMS_GUARD(rc);
        /* Wrapping keys of import tokens interrupted by a crash. */
        KMS_GUARD(kms_import_reconcile(svc, tok, NULL));
    }
    return KMS_OK;
}

/* ---- sweeper ---------------------------------------------------------------- */

/* Import tokens cleaned per sweep: issuing one costs an RSA-3072 key
 * generation, so no realistic rate outruns this at one sweep a minute. */
#define IMPORT_SWEEP_BATCH 100

kms_err kms_service_sweep(struct kms_service *svc, int64_t now, size_t *out_n)
{
    struct kms_key_record *due = NULL;
    size_t n = 0;
    *out_n = 0;
    KMS_GUARD(kms_store_keys_due_for_deletion(svc->store, now, 100, &due, &n));
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < n; i++) {
        struct kms_hsm_id *ids = NULL;
        size_t n_ids = 0;
        /* Store first: once DESTROYED, no request can reach the key, and a
         * crash before the HSM objects go leaves orphans that reconcile
         * removes at the next start. */
        kms_err mrc = kms_store_key_mark_destroyed(svc->store, due[i].key_id, now, &ids, &n_ids);
        kms_keycache_invalidate(svc->keycache, due[i].key_id);
        if (mrc == KMS_ERR_FAILED_PRECONDITION)
            continue; /* cancelled meanwhile */
        if (mrc != KMS_OK) {
            rc = mrc;
            break;
        }
        struct p11_token *tok = token_by_label(svc, due[i].token);
        for (size_t j = 0; tok && j < n_ids; j++) {
            struct p11_key_id id;
            memcpy(id.b, ids[j].bytes, sizeof(id.b));
            kms_err drc = p11_key_destroy(tok, &id);
            if (drc != KMS_OK && drc != KMS_ERR_NOT_FOUND)
                kms_log_error("sweeper", "key %s: HSM object not destroyed (%s); reconcile will retry at start",
                              due[i].key_id, kms_err_detail());
        }
        free(ids);
        kms_log_info("sweeper", "key %s destroyed at the end of its waiting period",
                     due[i].key_id);
        (*out_n)++;
    }
    free(due);
    return rc;
}

static void *sweeper_main(void *arg)
{
    struct kms_service *svc = arg;
    pthread_mutex_lock(&svc->stop_lock);
    while (!svc->stopping) {
        pthread_mutex_unlock(&svc->stop_lock);
        size_t n = 0;
        if (kms_service_sweep(svc, (int64_t)time(NULL), &n) != KMS_OK)
            kms_log_error("sweeper", "sweep failed: %s", kms_err_detail());
        /* Expired BYOK import tokens: their RSA wrapping keys leave the HSM
         * at expiry, not at the next import that happens to sweep. */
        if (kms_import_sweep(svc, (int64_t)time(NULL), IMPORT_SWEEP_BATCH, NULL) != KMS_OK)
            kms_log_error("sweeper", "import token sweep failed: %s", kms_err_detail());
        /* Automatic rotations: periods elapsed, usage thresholds reached. */
        if (kms_rotate_sweep(svc, (int64_t)time(NULL), &n) != KMS_OK)
            kms_log_error("sweeper", "rotation sweep failed: %s", kms_err_detail());
        pthread_mutex_lock(&svc->stop_lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += svc->cfg->sweep_interval_s;
        while (!svc->stopping &&
               pthread_cond_timedwait(&svc->stop_cond, &svc->stop_lock, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&svc->stop_lock);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

kms_err kms_service_start(const struct kms_config *cfg, struct kms_service **out)
{
    kms_err rc = KMS_OK;
    *out = NULL;
    struct kms_service *svc = calloc(1, sizeof(*svc));
    KMS_ENSURE(svc != NULL, KMS_ERR_NOMEM, "out of memory");
    svc->cfg = cfg;
    pthread_mutex_init(&svc->policy_lock, NULL);
    pthread_mutex_init(&svc->stop_lock, NULL);
    pthread_cond_init(&svc->stop_cond, NULL);

    KMS_GUARD_GOTO(pol_doc_load_file(cfg->policy_path, &svc->policy), fail_policy);
    KMS_GUARD_GOTO(p11_module_load(cfg->pkcs11_module, &svc->mod), fail);
    struct p11_token_config tc[KMS_CONFIG_MAX_TOKENS];
    for (size_t i = 0; i < cfg->n_tokens; i++)
        tc[i] = (struct p11_token_config){cfg->tokens[i].region, cfg->tokens[i].token,
                                          cfg->tokens[i].pin_source,
                                          cfg->tokens[i].max_sessions};
    KMS_GUARD_GOTO(p11_tokens_open(svc->mod, tc, cfg->n_tokens, svc->tokens), fail);
    svc->n_tokens = cfg->n_tokens;
    KMS_GUARD_GOTO(kms_store_open(cfg->store_path, &svc->store), fail);
    /* One second bounds how long another node's change can go unseen here;
     * this node's own changes invalidate at once. */
    KMS_GUARD_GOTO(kms_keycache_new(100000, 1000, &svc->keycache), fail);
    struct kms_usage_config uc = {cfg->usage_rotate_at, cfg->usage_limit,
                                  cfg->usage_reserve_block};
    KMS_GUARD_GOTO(kms_usage_new(svc->store, &uc, &svc->usage), fail);
    KMS_GUARD_GOTO(reconcile(svc), fail);
    for (size_t i = 0; i < svc->n_tokens; i++) {
        size_t n = 0;
        KMS_GUARD_GOTO(p11_token_warm_cache(svc->tokens[i], &n), fail);
        kms_log_info("service", "token '%s': %zu key objects in the handle cache",
                     p11_token_label(svc->tokens[i]), n);
        KMS_GUARD_GOTO(kms_escrow_key_find(svc->tokens[i], &svc->escrow[i], &svc->has_escrow[i]),
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
            kms_err arc = audit_log_open(cfg->audit_dir, region, svc->tokens[i], &ac,
                                         &svc->audit[i]);
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

    KMS_ENSURE_GOTO(pthread_create(&svc->sweeper, NULL, sweeper_main, svc) == 0, fail,
                    KMS_ERR_INTERNAL, "cannot start the deletion sweeper");
    svc->sweeper_running = true;
    kms_log_info("service", "policy %s (sha256 %s), store %s, %zu token(s)", cfg->policy_path,
                 pol_doc_digest_hex(svc->policy), cfg->store_path, svc->n_tokens);
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
    if (svc->sweeper_running) {
        pthread_mutex_lock(&svc->stop_lock);
        svc->stopping = true;
        pthread_cond_broadcast(&svc->stop_cond);
        pthread_mutex_unlock(&svc->stop_lock);
        pthread_join(svc->sweeper, NULL);
    }
    for (size_t i = 0; i < svc->n_tokens; i++) {
        if (svc->audit[i]) {
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
    kms_store_free(svc->store);
    for (size_t i = 0; i < svc->n_tokens; i++)
        p11_token_free(svc->tokens[i]);
    p11_module_free(svc->mod);
    pol_doc_unref(svc->policy);
    pthread_mutex_destroy(&svc->policy_lock);
    pthread_mutex_destroy(&svc->stop_lock);
    pthread_cond_destroy(&svc->stop_cond);
    free(svc);
}
