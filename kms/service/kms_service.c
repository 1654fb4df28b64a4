/*
 * kms_service.c - start-up, reconcile, policy reload, deletion sweeper.
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
#include "audit_merkle.h"
#include "kms_escrow.h"
#include "kms_import.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_metrics.h"
#include "kms_rotate.h"
#include "kms_usage.h"
#include "kms_restore.h"
#include "kms_store_epoch.h"
#include "p11_asym.h"
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

    /* SAFE MODE (kms_restore.h): set once at start, before any request;
     * read without a lock afterwards. */
    bool safe_mode;
    char safe_reason[400];
    /* Each token's key objects as the restore check listed them at start,
     * for reconcile to reuse; freed by reconcile. */
    struct p11_key_id *listed[KMS_CONFIG_MAX_TOKENS];
    size_t n_listed[KMS_CONFIG_MAX_TOKENS];
    bool have_listed[KMS_CONFIG_MAX_TOKENS];
    /* The audit logs' encrypting events are in the store's counts (added at
     * start): a clean stop may then move the encryption-count watermark. */
    bool enc_counted;

    /* Live versions whose object their token does not hold, as of the
     * sweeper's last object check (kms_service_check_objects); written by
     * the sweeper thread, read by readiness. */
    _Atomic size_t missing[KMS_CONFIG_MAX_TOKENS];
    /* p11_token_lookups_missed as of the last object check (sweeper only). */
    unsigned long missed_seen[KMS_CONFIG_MAX_TOKENS];

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

size_t kms_service_missing_objects(struct kms_service *svc, const char *region)
{
    for (size_t i = 0; region && i < svc->n_tokens; i++)
        if (strcmp(p11_token_region(svc->tokens[i]), region) == 0)
            return atomic_load(&svc->missing[i]);
    return 0;
}

/* Versions named in the log per check: the rest are counted. */
#define MISSING_LOG_MAX 20

void kms_service_check_objects(struct kms_service *svc)
{
    for (size_t i = 0; i < svc->n_tokens; i++) {
        struct p11_token *tok = svc->tokens[i];
        /* A token that does not answer is reported as that; its objects
         * are checked again when it is back. */
        svc->missed_seen[i] = p11_token_lookups_missed(tok);
        if (!p11_token_available(tok) || svc->audit_broken[i])
            continue;
        struct kms_restore_missing m[MISSING_LOG_MAX];
        size_t n = 0;
        if (kms_restore_token_missing(svc->store, tok, m, MISSING_LOG_MAX, &n) != KMS_OK) {
            kms_log_warn("service", "region %s: cannot check the token's key objects: %s",
                         p11_token_region(tok), kms_err_detail());
            continue;
        }
        size_t was = atomic_exchange(&svc->missing[i], n);
        if (n == was)
            continue;
        if (n == 0) {
            kms_log_info("service", "region %s: every live key version has its object in "
                         "token '%s' again", p11_token_region(tok), p11_token_label(tok));
            continue;
        }
        kms_log_error("service", "region %s: %zu live key version(s) have no object in token "
                      "'%s': their ciphertexts cannot be decrypted; restore the objects from a "
                      "token backup (docs/operations.md \"Backup and restore\")",
                      p11_token_region(tok), n, p11_token_label(tok));
        for (size_t j = 0; j < n && j < MISSING_LOG_MAX; j++)
            kms_log_error("service", "region %s: key %s version %" PRIu32 " is live in the "
                          "store but its object is not in token '%s'", p11_token_region(tok),
                          m[j].key_id, m[j].version, p11_token_label(tok));
        if (n > MISSING_LOG_MAX)
            kms_log_error("service", "region %s: ... and %zu more", p11_token_region(tok),
                          n - MISSING_LOG_MAX);
    }
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
    KMS_ENSURE(!svc->cfg->audit_enabled || access(svc->cfg->audit_dir, W_OK) == 0, KMS_ERR_IO,
               "audit directory %s is not writable: %s", svc->cfg->audit_dir, strerror(errno));
    /* A full disk (or a file-size limit) is invisible to an idle log and
     * store: prove there is room for one more record of each. */
    if (svc->cfg->audit_enabled)
        KMS_GUARD(probe_room(svc->cfg->audit_dir, "audit directory"));
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

/* ---- reconcile ----------------------------------------------------------- */

static int cmp_hsm_id(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

/* A service event in the audit log of tok's region (reconcile, restore):
 * durable before kmsd goes on. Audit off or region not served: the
 * operational log is all there is. */
static kms_err service_event(struct kms_service *svc, struct p11_token *tok, const char *op,
                             const char *key_id, uint32_t version, const char *detail)
{
    struct audit_log *log = NULL;
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (svc->tokens[i] == tok)
            log = svc->audit[i];
    if (log == NULL)
        return KMS_OK;
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.principal = (char *)"kmsd";
    ev.role = (char *)"operator";
    ev.operation = (char *)op;
    ev.key_id = (char *)(key_id ? key_id : "");
    ev.key_version = version;
    ev.region = (char *)p11_token_region(tok);
    ev.token = (char *)p11_token_label(tok);
    ev.outcome = (char *)"ok";
    ev.detail = (char *)(detail ? detail : "");
    ev.policy_sha256 = (char *)pol_doc_digest_hex(svc->policy);
    return audit_log_append(log, &ev);
}

/* An HSM object of ours that no live version names. It is destroyed only
 * when the store remembers its key as DESTROYED (the sweeper crashed between
 * the store and the HSM), kmsd is not in safe mode, and the audit log was
 * there to say that no recovery brought the key back after the store's
 * copy (kms_restore_audit_scan). An object the store has never heard of is
 * left in place and reported: starting on a restored old database must not
 * destroy keys created after the backup. */
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
        if (svc->safe_mode || !svc->cfg->audit_enabled) {
            kms_log_warn("reconcile", "token '%s': object '%s' of key %s, DESTROYED in the "
                         "store, left in place (%s)", p11_token_label(tok), label, key_id,
                         svc->safe_mode ? "SAFE MODE"
                                        : "audit log off: nothing shows that no recovery "
                                          "brought the key back");
            return;
        }
        kms_err drc = p11_key_destroy(tok, id);
        kms_log_warn("reconcile", "token '%s': destroyed leftover HSM object %s of destroyed key %s: %s",
                     p11_token_label(tok), hex, key_id, drc == KMS_OK ? "ok" : kms_err_detail());
        return;
    }
    kms_log_error("reconcile", "token '%s': HSM object %s (label '%s') is unknown to the store; "
                  "left in place (was the store restored from an old backup?)",
                  p11_token_label(tok), hex, label);
}

/* Is the CREATING version's HSM object complete: every object its spec
 * needs exists under its id with this version's label, locked
 * (non-extractable: escrow, when wanted, was sealed before the lock), and
 * its escrow blob is stored when the key wants one? A key created by import
 * is never complete here: its check value is written at activation. */
static kms_err creating_complete(struct kms_service *svc, struct p11_token *tok,
                                 const struct kms_store_creating *c, bool *out_exists,
                                 bool *out_complete)
{
    struct p11_key_id id;
    memcpy(id.b, c->hsm_id, sizeof(id.b));
    *out_complete = false;
    KMS_GUARD(p11_key_exists(tok, &id, out_exists));
    if (!*out_exists)
        return KMS_OK;
    struct kms_store_key_raw k;
    bool found = false;
    KMS_GUARD(kms_store_key_state_any(svc->store, c->key_id, &k, &found));
    if (!found || k.origin != KMS_KEY_ORIGIN_HSM)
        return KMS_OK;
    char label[65], want[80];
    snprintf(want, sizeof(want), KMS_HSM_LABEL_PREFIX "%s:v%" PRIu32, c->key_id, c->version);
    if (p11_key_label(tok, &id, label) != KMS_OK || strcmp(label, want) != 0)
        return KMS_OK;
    struct p11_key_info info;
    bool ok = true;
    if (k.spec == KMS_KEY_SPEC_AES_256 || k.spec == KMS_KEY_SPEC_METADATA)
        ok = ok && p11_key_info_kind(tok, &id, P11_KEY_AES_ENCRYPT, &info) == KMS_OK &&
             !info.extractable;
    if (k.spec == KMS_KEY_SPEC_HMAC_256 || k.spec == KMS_KEY_SPEC_METADATA)
        ok = ok && p11_key_info_kind(tok, &id, P11_KEY_HMAC_SHA256, &info) == KMS_OK &&
             !info.extractable;
    if (kms_key_spec_is_pair(k.spec))
        ok = ok && p11_key_info(tok, &id, &info) == KMS_OK && !info.extractable;
    kms_err_clear();
    if (ok && k.escrow_required) {
        struct kms_escrow_record *blobs = NULL;
        size_t n = 0;
        KMS_GUARD((kms_key_spec_is_pair(k.spec) ? kms_store_escrow_pair_list
                                                : kms_store_escrow_list)(svc->store, c->key_id,
                                                                         &blobs, &n));
        bool has = false;
        for (size_t i = 0; i < n; i++)
            has |= blobs[i].version == c->version;
        free(blobs);
        ok = has;
    }
    *out_complete = ok;
    return KMS_OK;
}

/* A crash between "row in CREATING" and "row ACTIVE", or a store restored
 * from a hot backup taken meanwhile, leaves a CREATING version. A complete
 * HSM object may have been acknowledged (the backup case): the version is
 * finished, never destroyed. An absent or incomplete object was never
 * acknowledged (acknowledgement follows completion): the row goes, with
 * the incomplete object, except in safe mode, where nothing is destroyed.
 * Then deal with HSM objects of ours that no live row names (orphans). */
static kms_err reconcile(struct kms_service *svc)
{
    struct kms_store_creating *creating = NULL;
    size_t n = 0;
    KMS_GUARD(kms_store_creating_list(svc->store, &creating, &n));
    kms_err rc = KMS_OK;
    /* Objects step 1 destroys: the token listing below may predate it. */
    struct p11_key_id *gone = n ? calloc(n, sizeof(*gone)) : NULL;
    size_t n_gone = 0;
    if (n && gone == NULL) {
        free(creating);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        struct p11_token *tok = token_by_label(svc, creating[i].token);
        if (tok == NULL) {
            kms_log_warn("reconcile", "key %s v%u is half-created in token '%s', which this node does not serve; left alone",
                         creating[i].key_id, creating[i].version, creating[i].token);
            continue;
        }
        bool exists = false, complete = false;
        rc = creating_complete(svc, tok, &creating[i], &exists, &complete);
        if (rc != KMS_OK)
            break;
        char detail[160];
        if (complete) {
            rc = kms_store_version_activate(svc->store, creating[i].key_id, creating[i].version);
            if (rc != KMS_OK)
                break;
            kms_log_warn("reconcile", "finished half-created key %s version %u: its HSM object "
                         "is complete and may have been acknowledged",
                         creating[i].key_id, creating[i].version);
            snprintf(detail, sizeof(detail), "half-created version finished at start: its HSM "
                     "object is complete");
            rc = service_event(svc, tok, "ReconcileFinished", creating[i].key_id,
                               creating[i].version, detail);
            continue;
        }
        if (svc->safe_mode) {
            kms_log_warn("reconcile", "key %s version %u is half-created (HSM object %s); left "
                         "as it is (SAFE MODE)", creating[i].key_id, creating[i].version,
                         exists ? "incomplete" : "absent");
            continue;
        }
        struct p11_key_id id;
        memcpy(id.b, creating[i].hsm_id, sizeof(id.b));
        kms_err drc = exists ? p11_key_destroy(tok, &id) : KMS_ERR_NOT_FOUND;
        if (drc != KMS_OK && drc != KMS_ERR_NOT_FOUND) {
            rc = drc;
            break;
        }
        gone[n_gone++] = id;
        rc = kms_store_creating_discard(svc->store, creating[i].key_id, creating[i].version);
        if (rc == KMS_OK) {
            kms_log_warn("reconcile", "removed half-created key %s version %u (HSM object %s)",
                         creating[i].key_id, creating[i].version,
                         drc == KMS_OK ? "incomplete, destroyed" : "never made");
            snprintf(detail, sizeof(detail), "half-created version discarded at start: its HSM "
                     "object was %s, so it was never acknowledged",
                     drc == KMS_OK ? "incomplete" : "never made");
            rc = service_event(svc, tok, "ReconcileDiscarded", creating[i].key_id,
                               creating[i].version, detail);
        }
    }
    free(creating);
    if (rc != KMS_OK) {
        free(gone);
        return rc;
    }

    for (size_t t = 0; t < svc->n_tokens && rc == KMS_OK; t++) {
        struct p11_token *tok = svc->tokens[t];
        struct p11_key_id *ids = NULL;
        size_t n_ids = 0;
        struct kms_hsm_id *known = NULL;
        size_t n_known = 0;
        /* Objects a crash inside the HSM library left without attributes:
         * never a key anyone was told about (every object of ours carries
         * CKA_ID and a label from its creation). */
        size_t husks = 0;
        if (svc->safe_mode) {
            /* Safe mode destroys nothing: the store may be too old to
             * tell what the token's objects are. */
            rc = p11_key_count_husks(tok, &husks);
            if (rc == KMS_OK && husks > 0)
                kms_log_warn("reconcile", "token '%s': %zu key object(s) without CKA_ID or "
                             "label left in place (SAFE MODE)", p11_token_label(tok), husks);
            husks = 0;
        } else {
            rc = p11_key_destroy_husks(tok, &husks);
        }
        if (rc != KMS_OK)
            break;
        if (husks > 0)
            kms_log_warn("reconcile", "token '%s': destroyed %zu incomplete key object(s) "
                         "without CKA_ID or label (left by a crash during object creation)",
                         p11_token_label(tok), husks);
        /* HSM first, store second: see kms_store.h. At start nothing runs
         * concurrently (the store's flock, no listener yet), so the listing
         * the restore check made is as good as a new one, less what step 1
         * destroyed: one walk of a large token, not two. */
        if (svc->have_listed[t]) {
            ids = svc->listed[t];
            n_ids = svc->n_listed[t];
            svc->listed[t] = NULL;
            svc->have_listed[t] = false;
        } else {
            rc = p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, &ids, &n_ids);
        }
        if (rc == KMS_OK)
            rc = kms_store_hsm_ids_for_token(svc->store, p11_token_label(tok), &known, &n_known);
        for (size_t i = 0; rc == KMS_OK && i < n_ids; i++) {
            if (bsearch(ids[i].b, known, n_known, sizeof(*known), cmp_hsm_id))
                continue;
            bool destroyed = false;
            for (size_t j = 0; j < n_gone && !destroyed; j++)
                destroyed = memcmp(gone[j].b, ids[i].b, sizeof(ids[i].b)) == 0;
            if (!destroyed)
                reconcile_orphan(svc, tok, &ids[i]);
        }
        free(ids);
        free(known);
        /* Wrapping keys of import tokens interrupted by a crash. */
        if (rc == KMS_OK && !svc->safe_mode)
            rc = kms_import_reconcile(svc, tok, NULL);
    }
    free(gone);
    return rc;
}

/* ---- restore detection and safe mode ------------------------------------------ */

static enum kms_restore_mode restore_mode = KMS_RESTORE_MODE_SERVE;
static FILE *restore_out;

void kms_service_set_restore_mode(enum kms_restore_mode mode, FILE *out)
{
    restore_mode = mode;
    restore_out = out;
}

bool kms_service_safe_mode(const struct kms_service *svc, const char **out_reason)
{
    if (out_reason)
        *out_reason = svc->safe_reason;
    return svc->safe_mode;
}

/* Record, for every region, that the store reflects its audit log up to
 * now: a key operation commits in the store before its event is queued,
 * so every event below the current size is in the store. */
static void mark_audit(struct kms_service *svc)
{
    for (size_t i = 0; i < svc->n_tokens; i++) {
        if (svc->audit[i] == NULL)
            continue;
        uint64_t size = audit_tree_size(audit_log_tree(svc->audit[i]));
        if (kms_store_audit_mark_set(svc->store, p11_token_region(svc->tokens[i]), size) != KMS_OK)
            kms_log_warn("restore", "region %s: audit watermark not recorded: %s",
                         p11_token_region(svc->tokens[i]), kms_err_detail());
        /* An encryption is reserved in the store before its event is
         * written: the store's counts cover every event below size. */
        if (kms_store_enc_mark_set(svc->store, p11_token_region(svc->tokens[i]), size) != KMS_OK)
            kms_log_warn("restore", "region %s: encryption-count watermark not recorded: %s",
                         p11_token_region(svc->tokens[i]), kms_err_detail());
    }
}

/* The spec of a key from its version's object(s): an AES key and a generic
 * secret under one id are a METADATA version (docs/pkcs11.md). */
static kms_err reattach_spec(struct p11_token *tok, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                             enum kms_key_spec *spec, enum kms_key_usage *usage)
{
    struct p11_key_id id;
    struct p11_key_info info;
    memcpy(id.b, hsm_id, sizeof(id.b));
    bool aes = p11_key_info_kind(tok, &id, P11_KEY_AES_ENCRYPT, &info) == KMS_OK;
    bool hmac = p11_key_info_kind(tok, &id, P11_KEY_HMAC_SHA256, &info) == KMS_OK;
    bool any = aes || hmac || p11_key_info(tok, &id, &info) == KMS_OK;
    kms_err_clear();
    KMS_ENSURE(any, KMS_ERR_NOT_FOUND, "the object is gone from its token");
    *spec = aes && hmac ? KMS_KEY_SPEC_METADATA
            : aes       ? KMS_KEY_SPEC_AES_256
            : hmac      ? KMS_KEY_SPEC_HMAC_256
                        : KMS_KEY_SPEC_EC_P256;
    /* A pair: its size tells an RSA signing key from a P-256 one. */
    struct p11_asym_info ai;
    if (*spec == KMS_KEY_SPEC_EC_P256 && p11_asym_info(tok, &id, &ai) == KMS_OK)
        *spec = ai.bits == 2048   ? KMS_KEY_SPEC_RSA_2048
                : ai.bits == 3072 ? KMS_KEY_SPEC_RSA_3072
                : ai.bits == 4096 ? KMS_KEY_SPEC_RSA_4096
                                  : KMS_KEY_SPEC_EC_P256;
    kms_err_clear();
    *usage = *spec == KMS_KEY_SPEC_AES_256    ? KMS_KEY_USAGE_ENCRYPT_DECRYPT
             : *spec == KMS_KEY_SPEC_METADATA ? KMS_KEY_USAGE_METADATA
                                              : KMS_KEY_USAGE_SIGN_VERIFY;
    return KMS_OK;
}

static kms_err apply_fix(struct kms_service *svc, const struct kms_restore_fix *x, FILE *out)
{
    int64_t now = (int64_t)time(NULL);
    struct p11_token *tok = x->token[0] ? token_by_label(svc, x->token) : NULL;
    char detail[160];
    switch (x->kind) {
    case KMS_FIX_STATE: {
        /* A DESTROYED key recovered after the backup: only the versions
         * whose objects its token holds come back (the token scan's list). */
        struct kms_key_record rec;
        struct kms_hsm_id *present = NULL;
        size_t n_present = 0;
        if (kms_store_key_get(svc->store, x->key_id, &rec) == KMS_OK) {
            for (size_t t = 0; t < svc->n_tokens; t++) {
                if (!svc->have_listed[t] ||
                    strcmp(p11_token_label(svc->tokens[t]), rec.token) != 0)
                    continue;
                present = calloc(svc->n_listed[t] ? svc->n_listed[t] : 1, sizeof(*present));
                KMS_ENSURE(present != NULL, KMS_ERR_NOMEM, "out of memory");
                for (size_t i = 0; i < svc->n_listed[t]; i++)
                    memcpy(present[i].bytes, svc->listed[t][i].b, sizeof(present[i].bytes));
                n_present = svc->n_listed[t];
                break;
            }
        }
        kms_err_clear();
        kms_err src = kms_store_key_force_state(svc->store, x->key_id, x->state, present,
                                                n_present);
        free(present);
        KMS_GUARD(src);
        fprintf(out, "applied: key %s is %s again\n", x->key_id, kms_key_state_name(x->state));
        snprintf(detail, sizeof(detail), "restore reconcile: state rebuilt to %s from the "
                 "audit log", kms_key_state_name(x->state));
        break;
    }
    case KMS_FIX_REATTACH:
        KMS_GUARD(kms_store_unknown_confirm(svc->store, x->hsm_id, now));
        /* Created when its event says (its rotation period runs from then);
         * its count at least the encryptions the audit log saw under it. */
        KMS_GUARD(kms_store_version_reattach(svc->store, x->key_id, x->version, x->hsm_id,
                                             x->created_at > 0 ? x->created_at : now));
        KMS_GUARD(kms_store_usage_bound(svc->store, x->key_id, x->version, x->encryptions,
                                        false));
        fprintf(out, "applied: key %s version %u reattached\n", x->key_id, x->version);
        snprintf(detail, sizeof(detail), "restore reconcile: version reattached from token "
                 "'%s'", x->token);
        break;
    case KMS_FIX_LOST:
        KMS_GUARD(kms_store_lost_confirm(svc->store, x->hsm_id, now));
        fprintf(out, "applied: key %s version %u accepted as lost from token '%s'\n",
                x->key_id, x->version, x->token);
        snprintf(detail, sizeof(detail), "restore reconcile: live version accepted as lost: "
                 "its HSM object is in no token");
        break;
    case KMS_FIX_FLOOR:
        KMS_GUARD(kms_store_key_version_floor(svc->store, x->key_id, x->version));
        fprintf(out, "applied: key %s never reissues version %u\n", x->key_id, x->version);
        snprintf(detail, sizeof(detail), "restore reconcile: version number kept taken (the "
                 "audit log acknowledged it)");
        break;
    case KMS_FIX_REATTACH_KEY: {
        KMS_ENSURE(tok != NULL, KMS_ERR_FAILED_PRECONDITION, "token '%s' is not served here",
                   x->token);
        struct kms_key_record k = {0};
        struct kms_version_record v1 = {0};
        KMS_GUARD(reattach_spec(tok, x->hsm_id, &k.spec, &k.usage));
        snprintf(k.key_id, sizeof(k.key_id), "%s", x->key_id);
        snprintf(k.tenant, sizeof(k.tenant), "%s", x->tenant);
        snprintf(k.region, sizeof(k.region), "%s", x->region);
        snprintf(k.token, sizeof(k.token), "%s", x->token);
        snprintf(k.description, sizeof(k.description), "reattached after a restore");
        k.origin = x->origin;
        k.state = KMS_KEY_CREATING;
        k.created_at = x->created_at;
        v1.version = 1;
        v1.state = KMS_VERSION_CREATING;
        v1.created_at = x->created_at;
        memcpy(v1.hsm_id, x->hsm_id, sizeof(v1.hsm_id));
        KMS_GUARD(kms_store_unknown_confirm(svc->store, x->hsm_id, now));
        KMS_GUARD(kms_store_key_insert(svc->store, &k, &v1));
        KMS_GUARD(kms_store_version_activate(svc->store, x->key_id, 1));
        KMS_GUARD(kms_store_usage_bound(svc->store, x->key_id, 1, x->encryptions, false));
        /* A disable or deletion acknowledged after its creation is not
         * undone by bringing it back (a deletion rebuilt as DISABLED). */
        if (x->state != KMS_KEY_ENABLED)
            KMS_GUARD(kms_store_key_force_state(svc->store, x->key_id, x->state, NULL, 0));
        fprintf(out, "applied: key %s reattached (tenant %s), version 1 %s\n", x->key_id,
                x->tenant, kms_key_state_name(x->state));
        snprintf(detail, sizeof(detail), "restore reconcile: key reattached from token '%s' "
                 "and its CreateKey event", x->token);
        break;
    }
    case KMS_FIX_UNKNOWN:
        KMS_GUARD(kms_store_unknown_confirm(svc->store, x->hsm_id, now));
        if (x->key_id[0] && x->version > 0)
            KMS_GUARD(kms_store_key_version_floor(svc->store, x->key_id, x->version));
        fprintf(out, "applied: object of key %s version %u kept in token '%s', unattached\n",
                x->key_id[0] ? x->key_id : "(unlabelled)", x->version, x->token);
        snprintf(detail, sizeof(detail), "restore reconcile: HSM object unknown to the store "
                 "kept in place, unattached");
        break;
    default:
        return kms_err_set(KMS_ERR_INTERNAL, "unknown fix kind");
    }
    kms_keycache_invalidate(svc->keycache, x->key_id);
    struct kms_key_record rec;
    if (tok == NULL && kms_store_key_get(svc->store, x->key_id, &rec) == KMS_OK)
        tok = token_by_label(svc, rec.token);
    if (tok == NULL && svc->n_tokens > 0)
        tok = svc->tokens[0];
    return tok ? service_event(svc, tok, "RestoreReconciled", x->key_id, x->version, detail)
               : KMS_OK;
}

/* Compare the store with the audit logs and the tokens before anything is
 * destroyed; decide safe mode, print the plan, or apply it. *out_exit: the
 * caller stops here (plan printed or applied). */
static kms_err detect_restore(struct kms_service *svc, bool *out_exit)
{
    struct kms_restore_report r = {0};
    kms_err rc = KMS_OK;
    *out_exit = false;
    uint64_t sizes[KMS_CONFIG_MAX_TOKENS] = {0};
    for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++) {
        if (svc->audit[i] == NULL)
            continue;
        uint64_t enc_from = 0;
        rc = kms_store_enc_mark_get(svc->store, p11_token_region(svc->tokens[i]), &enc_from);
        if (rc == KMS_OK)
            rc = kms_restore_audit_scan(svc->store, svc->audit[i], &r, enc_from, &sizes[i]);
    }
    for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++) {
        rc = kms_restore_token_scan(svc->store, svc->tokens[i], &r, &svc->listed[i],
                                    &svc->n_listed[i]);
        svc->have_listed[i] = rc == KMS_OK;
    }
    if (rc != KMS_OK)
        goto done;
    size_t findings = kms_restore_findings(&r);
    FILE *out = restore_out ? restore_out : stdout;
    /* A store made by kmsctl backup says so: the first start on it is
     * recorded, in the log and in every region's audit log. */
    bool restored = false;
    char of[KMS_STORE_META_MAX], at[KMS_STORE_META_MAX];
    KMS_GUARD_GOTO(kms_store_backup_pending(svc->store, &restored, of, at), done);
    if (restored && restore_mode == KMS_RESTORE_MODE_PLAN) {
        fprintf(out, "this store is a restored backup of store %s taken at %s (unix time)\n",
                of, at);
    } else if (restored) {
        char detail[2 * KMS_STORE_META_MAX + 64];
        snprintf(detail, sizeof(detail), "store restored from a backup of store %s taken at %s",
                 of, at);
        kms_log_warn("restore", "%s (unix time)", detail);
        for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++)
            rc = service_event(svc, svc->tokens[i], "StoreRestored", NULL, 0, detail);
        if (rc == KMS_OK)
            rc = kms_store_backup_announced(svc->store, (int64_t)time(NULL));
        if (rc != KMS_OK)
            goto done;
    }
    if (restore_mode == KMS_RESTORE_MODE_PLAN) {
        kms_restore_print(&r, out);
        struct kms_store_creating *creating = NULL;
        size_t n = 0;
        if (kms_store_creating_list(svc->store, &creating, &n) == KMS_OK)
            for (size_t i = 0; i < n; i++)
                fprintf(out, "  at start: key %s version %u is half-created: finished if its "
                             "HSM object is complete, else discarded (never in safe mode)\n",
                        creating[i].key_id, creating[i].version);
        free(creating);
        for (size_t i = 0; i < svc->n_tokens; i++) {
            size_t husks = 0;
            if (p11_key_count_husks(svc->tokens[i], &husks) == KMS_OK && husks > 0)
                fprintf(out, "  at start: token '%s' has %zu key object(s) without CKA_ID or "
                             "label: destroyed as crash leftovers (never in safe mode)\n",
                        p11_token_label(svc->tokens[i]), husks);
        }
        kms_err_clear();
        fprintf(out, findings ? "kmsd would start in SAFE MODE; apply with: kmsctl reconcile "
                                "--confirm (or kmsd --reconcile --confirm)\n"
                              : "the store agrees with the audit log and the tokens\n");
        *out_exit = true;
        goto done;
    }
    /* GCM counts live in the store alone: one restored (or behind its
     * watermark after a crash) would let a version pass the random-IV
     * limit. Every encrypting event after the store's watermark not yet
     * counted adds to its version's count, whether or not anything else
     * is found (docs/state.md "Encryption counts"). */
    for (size_t i = 0; i < r.cap_enc && rc == KMS_OK; i++)
        if (r.enc[i].key_id[0] && r.enc[i].since_count > 0)
            rc = kms_store_usage_bound(svc->store, r.enc[i].key_id, r.enc[i].version,
                                       r.enc[i].since_count, true);
    for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++)
        if (svc->audit[i])
            rc = kms_store_enc_mark_set(svc->store, p11_token_region(svc->tokens[i]), sizes[i]);
    if (rc != KMS_OK)
        goto done;
    svc->enc_counted = true;
    if (restore_mode == KMS_RESTORE_MODE_CONFIRM) {
        kms_restore_print(&r, out);
        /* Keys before their later versions. A fix that cannot be applied
         * is reported and skipped: the rest still helps. */
        size_t failed = 0;
        for (int pass = 0; pass < 2 && rc == KMS_OK; pass++)
            for (size_t i = 0; i < r.n_fixes && rc == KMS_OK; i++) {
                if ((r.fixes[i].kind == KMS_FIX_REATTACH_KEY) != (pass == 0))
                    continue;
                kms_err frc = apply_fix(svc, &r.fixes[i], out);
                if (frc == KMS_ERR_NOMEM || frc == KMS_ERR_IO || frc == KMS_ERR_NOSPC) {
                    rc = frc;
                } else if (frc != KMS_OK) {
                    failed++;
                    fprintf(out, "not applied: key %s version %u: %s\n", r.fixes[i].key_id,
                            r.fixes[i].version, kms_err_detail());
                }
            }
        if (rc != KMS_OK)
            goto done;
        char detail[160];
        snprintf(detail, sizeof(detail), "operator confirmed the restore reconcile: %zu "
                 "finding(s), %zu change(s) applied, %zu not applicable", findings,
                 r.n_fixes - failed, failed);
        for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++)
            rc = service_event(svc, svc->tokens[i], "RestoreConfirmed", NULL, 0, detail);
        /* The operator accepted the audit logs in place, even one older
         * than the store's watermark. */
        for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++)
            if (svc->audit[i])
                rc = kms_store_audit_mark_reset(svc->store, p11_token_region(svc->tokens[i]),
                                                audit_tree_size(audit_log_tree(svc->audit[i])));
        fprintf(out, "%s; start kmsd normally\n", detail);
        kms_log_warn("restore", "%s", detail);
        *out_exit = true;
        goto done;
    }
    if (findings > 0) {
        svc->safe_mode = true;
        snprintf(svc->safe_reason, sizeof(svc->safe_reason),
                 "SAFE MODE: the store does not match the audit log and the tokens (%zu "
                 "acknowledged change(s) missing from the store, %zu live version(s) without "
                 "HSM object, %zu HSM object(s) unknown to the store, %zu audit log(s) older "
                 "than the store); see the log, then kmsctl reconcile",
                 r.store_behind, r.token_behind, r.unknown, r.audit_behind);
        kms_log_error("restore", "%s", svc->safe_reason);
        for (size_t i = 0; i < r.n_lines; i++)
            kms_log_error("restore", "finding: %s", r.lines[i]);
        for (size_t i = 0; i < svc->n_tokens && rc == KMS_OK; i++)
            rc = service_event(svc, svc->tokens[i], "RestoreDetected", NULL, 0,
                               svc->safe_reason);
    }
done:
    kms_restore_report_release(&r);
    return rc;
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
    /* Safe mode: the store may be older than what tenants were told (a
     * deletion cancelled after the backup is still due here). */
    if (svc->safe_mode)
        return KMS_OK;
    mark_audit(svc);
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

/* How often a request's missed lookup may trigger an object check before
 * the sweep interval is up: each one walks the tokens. */
#define EARLY_CHECK_S 5

static bool lookups_missed_since_check(struct kms_service *svc)
{
    for (size_t i = 0; i < svc->n_tokens; i++)
        if (p11_token_lookups_missed(svc->tokens[i]) != svc->missed_seen[i])
            return true;
    return false;
}

static void *sweeper_main(void *arg)
{
    struct kms_service *svc = arg;
    bool first = true;
    time_t last_early = 0;
    pthread_mutex_lock(&svc->stop_lock);
    while (!svc->stopping) {
        pthread_mutex_unlock(&svc->stop_lock);
        /* Tokens missing objects the store says are live (an object deleted
         * behind kmsd's back, a token swapped for an older copy): one walk
         * of each token per sweep interval. The start-up check just did
         * that walk, so the first round skips it. */
        if (!first)
            kms_service_check_objects(svc);
        first = false;
        size_t n = 0;
        if (kms_service_sweep(svc, (int64_t)time(NULL), &n) != KMS_OK)
            kms_log_error("sweeper", "sweep failed: %s", kms_err_detail());
        /* In safe mode (a restored store) nothing is destroyed or made:
         * neither expired wrapping keys nor automatic rotations. */
        bool safe = kms_service_safe_mode(svc, NULL);
        /* Expired BYOK import tokens: their RSA wrapping keys leave the HSM
         * at expiry, not at the next import that happens to sweep. */
        if (!safe &&
            kms_import_sweep(svc, (int64_t)time(NULL), IMPORT_SWEEP_BATCH, NULL) != KMS_OK)
            kms_log_error("sweeper", "import token sweep failed: %s", kms_err_detail());
        /* Automatic rotations: periods elapsed, usage thresholds reached. */
        if (!safe && kms_rotate_sweep(svc, (int64_t)time(NULL), &n) != KMS_OK)
            kms_log_error("sweeper", "rotation sweep failed: %s", kms_err_detail());
        pthread_mutex_lock(&svc->stop_lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += svc->cfg->sweep_interval_s;
        /* Wait in slices of a second: a request that needed an object its
         * token does not hold gets the object check run early (at most
         * every EARLY_CHECK_S), not a sweep interval later. */
        while (!svc->stopping) {
            struct timespec slice;
            clock_gettime(CLOCK_REALTIME, &slice);
            if (slice.tv_sec >= until.tv_sec)
                break;
            slice.tv_sec++;
            if (slice.tv_sec > until.tv_sec)
                slice = until;
            if (pthread_cond_timedwait(&svc->stop_cond, &svc->stop_lock, &slice) != ETIMEDOUT ||
                svc->stopping)
                continue;
            time_t now = time(NULL);
            if (lookups_missed_since_check(svc) && now - last_early >= EARLY_CHECK_S) {
                last_early = now;
                pthread_mutex_unlock(&svc->stop_lock);
                kms_service_check_objects(svc);
                pthread_mutex_lock(&svc->stop_lock);
            }
        }
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
    /* Before anything is destroyed: is the store older than the audit log
     * or the tokens (a restore)? Then reconcile destroys nothing. The audit
     * logs are open first so that what reconcile does is recorded. */
    bool stop_here = false;
    KMS_GUARD_GOTO(detect_restore(svc, &stop_here), fail);
    if (stop_here) {
        *out = svc;
        return KMS_OK;
    }
    KMS_GUARD_GOTO(reconcile(svc), fail);
    if (!svc->safe_mode)
        mark_audit(svc);

    /* In safe mode the sweeper thread still runs but sweeps nothing. */
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
    for (size_t i = 0; i < KMS_CONFIG_MAX_TOKENS; i++)
        free(svc->listed[i]);
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
    pthread_mutex_destroy(&svc->stop_lock);
    pthread_cond_destroy(&svc->stop_cond);
    free(svc);
}
