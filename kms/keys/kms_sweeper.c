/*
 * kms_sweeper.c - the background sweeper (kms_sweeper.h).
 */
#include "kms_sweeper.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_config.h"
#include "kms_import.h"
#include "kms_keycache.h"
#include "kms_links.h"
#include "kms_log.h"
#include "kms_reconcile.h"
#include "kms_restore.h"
#include "kms_rotate.h"
#include "p11_key.h"
#include "p11_token.h"

struct kms_sweeper {
    struct kms_service *svc;
    /* p11_token_lookups_missed as of the last object check, by token
     * index (the thread only). */
    unsigned long missed_seen[KMS_CONFIG_MAX_TOKENS];
    pthread_t thread;
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stopping;
};

/* Versions named in the log per check: the rest are counted. */
#define MISSING_LOG_MAX 20

static void check_objects(struct kms_service *svc, unsigned long *missed_seen)
{
    for (size_t i = 0; i < kms_service_n_tokens(svc); i++) {
        struct p11_token *tok = kms_service_token_at(svc, i);
        /* A token that does not answer is reported as that; its objects
         * are checked again when it is back. */
        if (missed_seen)
            missed_seen[i] = p11_token_lookups_missed(tok);
        if (!p11_token_available(tok))
            continue;
        if (kms_service_region_check(svc, p11_token_region(tok)) != KMS_OK) {
            kms_err_clear(); /* its audit log is broken: not served */
            continue;
        }
        struct kms_restore_missing m[MISSING_LOG_MAX];
        size_t n = 0;
        if (kms_restore_token_missing(kms_service_store(svc), tok, m, MISSING_LOG_MAX, &n) != KMS_OK) {
            kms_log_warn("service", "region %s: cannot check the token's key objects: %s",
                         p11_token_region(tok), kms_err_detail());
            continue;
        }
        size_t was = kms_service_set_missing_objects(svc, p11_token_region(tok), n);
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

void kms_sweeper_check_objects(struct kms_service *svc)
{
    check_objects(svc, NULL);
}

/* Import tokens cleaned per sweep: issuing one costs an RSA-3072 key
 * generation, so no realistic rate outruns this at one sweep a minute. */
#define IMPORT_SWEEP_BATCH 100

kms_err kms_sweeper_delete_due(struct kms_service *svc, int64_t now, size_t *out_n)
{
    struct kms_key_record *due = NULL;
    size_t n = 0;
    *out_n = 0;
    /* Safe mode: the store may be older than what tenants were told (a
     * deletion cancelled after the backup is still due here). */
    if (kms_service_safe_mode(svc, NULL))
        return KMS_OK;
    kms_reconcile_mark_audit(svc);
    KMS_GUARD(kms_store_keys_due_for_deletion(kms_service_store(svc), now, 100, &due, &n));
    kms_err rc = KMS_OK;
    for (size_t i = 0; i < n; i++) {
        struct kms_hsm_id *ids = NULL;
        size_t n_ids = 0;
        /* Store first: once DESTROYED, no request can reach the key, and a
         * crash before the HSM objects go leaves orphans that reconcile
         * removes at the next start. */
        /* Under the key's rotation lock until its objects are gone: a
         * RESTORE of the key (kms_recovery_exec.c) takes the same lock, so
         * it never unwraps between the mark and the destroys below. */
        /* With several nodes, the key's lease too: the lock is per process,
         * and a RESTORE on another node between the mark and the destroys
         * would have its objects destroyed here. Held elsewhere: the next
         * round (or that node's sweeper) deletes it. */
        kms_rotate_lock(due[i].key_id);
        bool leased = false;
        kms_err mrc = kms_key_lease_take(svc, due[i].key_id, &leased);
        if (mrc == KMS_OK && !leased) {
            kms_rotate_unlock(due[i].key_id);
            continue;
        }
        if (mrc == KMS_OK)
            mrc = kms_store_key_mark_destroyed(kms_service_store(svc), due[i].key_id, now, &ids,
                                               &n_ids);
        kms_keycache_invalidate(kms_service_keycache(svc), due[i].key_id);
        if (mrc != KMS_OK && leased)
            kms_key_lease_give(svc, due[i].key_id);
        if (mrc == KMS_ERR_FAILED_PRECONDITION) {
            kms_rotate_unlock(due[i].key_id);
            continue; /* cancelled meanwhile, or another node's sweeper was first */
        }
        if (mrc != KMS_OK) {
            kms_rotate_unlock(due[i].key_id);
            rc = mrc;
            break;
        }
        struct p11_token *tok = kms_service_token_by_label(svc, due[i].token);
        for (size_t j = 0; tok && j < n_ids; j++) {
            struct p11_key_id id;
            memcpy(id.b, ids[j].bytes, sizeof(id.b));
            kms_err drc = p11_key_destroy(tok, &id);
            if (drc != KMS_OK && drc != KMS_ERR_NOT_FOUND)
                kms_log_error("sweeper", "key %s: HSM object not destroyed (%s); reconcile will retry at start",
                              due[i].key_id, kms_err_detail());
        }
        kms_key_lease_give(svc, due[i].key_id);
        kms_rotate_unlock(due[i].key_id);
        free(ids);
        kms_log_info("sweeper", "key %s destroyed at the end of its waiting period",
                     due[i].key_id);
        (*out_n)++;
    }
    free(due);
    return rc;
}

/* With several nodes on one PostgreSQL store, one node sweeps at a time:
 * the one holding the store lease "sweeper", renewed each round and held
 * for a few intervals, so that a node that dies hands the sweeps over
 * within SWEEP_LEASE_ROUNDS intervals (at least SWEEP_LEASE_MIN_S).
 * A node that stops gives it back at once (kms_sweeper_stop). Every
 * transition a sweep makes is also a compare-and-set that one node wins
 * (docs/state.md "Several nodes"): the lease saves the losers' work and
 * their log lines, it is not what makes two sweeps safe. */
#define SWEEP_LEASE_ROUNDS 3
#define SWEEP_LEASE_MIN_S 30

static bool sweep_lease(struct kms_service *svc, int64_t now)
{
    struct kms_store *st = kms_service_store(svc);
    if (!kms_store_is_pg(st))
        return true;
    int64_t ttl = (int64_t)kms_service_config(svc)->sweep_interval_s * SWEEP_LEASE_ROUNDS;
    if (ttl < SWEEP_LEASE_MIN_S)
        ttl = SWEEP_LEASE_MIN_S;
    if (ttl > KMS_STORE_LEASE_TTL_MAX)
        ttl = KMS_STORE_LEASE_TTL_MAX;
    bool won = false;
    if (kms_store_lease_take(st, "sweeper", kms_lease_holder(), now, ttl, &won) != KMS_OK) {
        kms_log_warn("sweeper", "sweep skipped: %s", kms_err_detail());
        return false;
    }
    return won;
}

void kms_sweeper_round(struct kms_service *svc, int64_t now)
{
    size_t n = 0;
    if (!sweep_lease(svc, now))
        return;
    if (kms_sweeper_delete_due(svc, now, &n) != KMS_OK)
        kms_log_error("sweeper", "sweep failed: %s", kms_err_detail());
    /* In safe mode (a restored store) nothing is destroyed or made:
     * neither expired wrapping keys nor automatic rotations. */
    if (kms_service_safe_mode(svc, NULL))
        return;
    /* Expired BYOK import tokens: their RSA wrapping keys leave the HSM
     * at expiry, not at the next import that happens to sweep. */
    if (kms_import_sweep(svc, now, IMPORT_SWEEP_BATCH, NULL) != KMS_OK)
        kms_log_error("sweeper", "import token sweep failed: %s", kms_err_detail());
    /* Link token rows some time past their expiry. */
    if (kms_links_sweep(svc, now, &n) != KMS_OK)
        kms_log_error("sweeper", "link token sweep failed: %s", kms_err_detail());
    /* Automatic rotations: periods elapsed, usage thresholds reached. */
    if (kms_rotate_sweep(svc, now, &n) != KMS_OK)
        kms_log_error("sweeper", "rotation sweep failed: %s", kms_err_detail());
}

/* How often a request's missed lookup may trigger an object check before
 * the sweep interval is up: each one walks the tokens. */
#define EARLY_CHECK_S 5

static bool lookups_missed_since_check(struct kms_sweeper *sw)
{
    for (size_t i = 0; i < kms_service_n_tokens(sw->svc); i++)
        if (p11_token_lookups_missed(kms_service_token_at(sw->svc, i)) != sw->missed_seen[i])
            return true;
    return false;
}

/* Until the next round or a stop, in slices of a second: a request that
 * needed an object its token does not hold gets the object check run
 * early (at most every EARLY_CHECK_S), not a sweep interval later. Called
 * and returns with stop_lock held. */
static void wait_round(struct kms_sweeper *sw, time_t *last_early)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += kms_service_config(sw->svc)->sweep_interval_s;
    while (!sw->stopping) {
        struct timespec slice;
        clock_gettime(CLOCK_REALTIME, &slice);
        if (slice.tv_sec >= until.tv_sec)
            break;
        slice.tv_sec++;
        if (slice.tv_sec > until.tv_sec)
            slice = until;
        if (pthread_cond_timedwait(&sw->stop_cond, &sw->stop_lock, &slice) != ETIMEDOUT ||
            sw->stopping)
            continue;
        time_t now = time(NULL);
        if (lookups_missed_since_check(sw) && now - *last_early >= EARLY_CHECK_S) {
            *last_early = now;
            pthread_mutex_unlock(&sw->stop_lock);
            check_objects(sw->svc, sw->missed_seen);
            pthread_mutex_lock(&sw->stop_lock);
        }
    }
}

static void *sweeper_main(void *arg)
{
    struct kms_sweeper *sw = arg;
    bool first = true;
    time_t last_early = 0;
    pthread_mutex_lock(&sw->stop_lock);
    while (!sw->stopping) {
        pthread_mutex_unlock(&sw->stop_lock);
        /* Tokens missing objects the store says are live (an object deleted
         * behind kmsd's back, a token swapped for an older copy): one walk
         * of each token per sweep interval. The start-up check just did
         * that walk, so the first round skips it. */
        if (!first)
            check_objects(sw->svc, sw->missed_seen);
        first = false;
        kms_sweeper_round(sw->svc, (int64_t)time(NULL));
        pthread_mutex_lock(&sw->stop_lock);
        wait_round(sw, &last_early);
    }
    pthread_mutex_unlock(&sw->stop_lock);
    return NULL;
}

kms_err kms_sweeper_start(struct kms_service *svc, struct kms_sweeper **out)
{
    *out = NULL;
    struct kms_sweeper *sw = calloc(1, sizeof(*sw));
    KMS_ENSURE(sw != NULL, KMS_ERR_NOMEM, "out of memory");
    sw->svc = svc;
    pthread_mutex_init(&sw->stop_lock, NULL);
    pthread_cond_init(&sw->stop_cond, NULL);
    if (pthread_create(&sw->thread, NULL, sweeper_main, sw) != 0) {
        pthread_mutex_destroy(&sw->stop_lock);
        pthread_cond_destroy(&sw->stop_cond);
        free(sw);
        return kms_err_set(KMS_ERR_INTERNAL, "cannot start the deletion sweeper");
    }
    *out = sw;
    return KMS_OK;
}

void kms_sweeper_stop(struct kms_sweeper *sw)
{
    if (sw == NULL)
        return;
    pthread_mutex_lock(&sw->stop_lock);
    sw->stopping = true;
    pthread_cond_broadcast(&sw->stop_cond);
    pthread_mutex_unlock(&sw->stop_lock);
    pthread_join(sw->thread, NULL);
    /* Hand the sweeps over now, not when the lease runs out. */
    if (kms_store_is_pg(kms_service_store(sw->svc)) &&
        kms_store_lease_release(kms_service_store(sw->svc), "sweeper", kms_lease_holder()) !=
            KMS_OK)
        kms_log_warn("sweeper", "sweeper lease not released (%s): another node sweeps once it "
                     "expires", kms_err_detail());
    pthread_mutex_destroy(&sw->stop_lock);
    pthread_cond_destroy(&sw->stop_cond);
    free(sw);
}
