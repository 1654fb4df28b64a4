/*
 * kms_rotate.c - new key versions, one at a time per key (kms_rotate.h).
 */
#include "kms_rotate.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "audit_event.h"
#include "kms_escrow.h"
#include "kms_keycache.h"
#include "kms_log.h"
#include "kms_call.h"
#include "kms_sign.h"
#include "kms_usage_count.h"
#include "p11_key.h"
#include "pol_doc.h"

/* Striped: rotations of different keys rarely share a stripe, and a stripe
 * shared by two keys only makes one wait for the other. */
#define ROTATE_STRIPES 64

static pthread_mutex_t stripes[ROTATE_STRIPES] = {
#define M4 PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, \
           PTHREAD_MUTEX_INITIALIZER
#define M16 M4, M4, M4, M4
    M16, M16, M16, M16
#undef M16
#undef M4
};

static pthread_mutex_t *stripe_of(const char *key_id)
{
    /* FNV-1a: key ids are random hex already; this only spreads them. */
    uint32_t h = 2166136261u;
    for (const char *p = key_id; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return &stripes[h % ROTATE_STRIPES];
}

void kms_rotate_lock(const char *key_id)
{
    pthread_mutex_lock(stripe_of(key_id));
}

void kms_rotate_unlock(const char *key_id)
{
    pthread_mutex_unlock(stripe_of(key_id));
}

/* Random per process: a pid reused after a restart must not inherit a
 * dead process's leases. */
static pthread_once_t holder_once = PTHREAD_ONCE_INIT;
static char holder_name[KMS_STORE_LEASE_HOLDER_MAX + 1];

static void holder_init(void)
{
    char host[32] = "";
    uint8_t tag[4] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "host");
    for (char *p = host; *p; p++)
        if (*p == ' ' || *p < 0x21 || *p > 0x7e)
            *p = '_';
    if (RAND_bytes(tag, sizeof(tag)) != 1)
        memset(tag, 0, sizeof(tag));
    snprintf(holder_name, sizeof(holder_name), "%s:%ld:%02x%02x%02x%02x", host[0] ? host : "host",
             (long)getpid(), tag[0], tag[1], tag[2], tag[3]);
}

const char *kms_lease_holder(void)
{
    pthread_once(&holder_once, holder_init);
    return holder_name;
}

kms_err kms_key_lease_take(struct kms_service *svc, const char *key_id, bool *out_won)
{
    struct kms_store *st = kms_service_store(svc);
    *out_won = true;
    if (!kms_store_is_pg(st))
        return KMS_OK;
    char name[KMS_KEY_ID_SIZE + 8];
    snprintf(name, sizeof(name), "key:%s", key_id);
    return kms_store_lease_take(st, name, kms_lease_holder(), (int64_t)time(NULL),
                                KMS_KEY_LEASE_S, out_won);
}

void kms_key_lease_give(struct kms_service *svc, const char *key_id)
{
    struct kms_store *st = kms_service_store(svc);
    if (!kms_store_is_pg(st))
        return;
    char name[KMS_KEY_ID_SIZE + 8];
    snprintf(name, sizeof(name), "key:%s", key_id);
    /* Not given back (the store is away): it expires by itself. */
    if (kms_store_lease_release(st, name, kms_lease_holder()) != KMS_OK)
        kms_log_warn("keys", "key %s: lease not released (%s); it expires in %d s", key_id,
                     kms_err_detail(), KMS_KEY_LEASE_S);
}

/* A METADATA version is two objects under the one hsm_id, AES then HMAC
 * (docs/pkcs11.md): destroying the id removes whichever exist, so a failure
 * between them leaves nothing. */
kms_err kms_version_make(struct kms_service *svc, const char *request_id, struct p11_token *tok,
                         const char *key_id, uint32_t version, const uint8_t hsm_id[16],
                         enum kms_key_spec spec, bool escrow)
{
    struct kms_store *st = kms_service_store(svc);
    struct p11_key_id id;
    memcpy(id.b, hsm_id, 16);
    char label[80];
    snprintf(label, sizeof(label), KMS_HSM_LABEL_PREFIX "%s:v%u", key_id, version);
    /* Escrow at birth: made extractable, wrapped under the region's escrow
     * key, the blob stored, then locked, all before activation
     * (kms_escrow.h). */
    unsigned flags = escrow ? P11_KEY_ESCROWABLE : 0;
    /* A signing key's version is one pair, escrowed (when asked) by
     * kms_sign_version_make itself. */
    bool pair = kms_key_spec_is_pair(spec);
    /* A link-token (HMAC_256) version is one generic secret, no AES key. */
    kms_err rc = pair ? kms_sign_version_make(svc, tok, key_id, version, &id, spec, label, escrow)
                 : spec == KMS_KEY_SPEC_HMAC_256
                     ? p11_key_generate(tok, P11_KEY_HMAC_SHA256, flags, &id, label)
                     : p11_key_generate(tok, P11_KEY_AES_ENCRYPT, flags, &id, label);
    if (rc == KMS_OK && spec == KMS_KEY_SPEC_METADATA)
        rc = p11_key_generate(tok, P11_KEY_HMAC_SHA256, flags, &id, label);
    if (rc == KMS_OK && escrow && !pair)
        rc = kms_escrow_seal(svc, tok, key_id, version, &id, spec, true);
    if (rc == KMS_OK)
        rc = kms_store_version_activate(st, key_id, version);
    kms_keycache_invalidate(kms_service_keycache(svc), key_id);
    if (rc != KMS_OK) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", kms_err_detail());
        p11_key_destroy(tok, &id);
        kms_store_creating_discard(st, key_id, version);
        kms_log_error("keys", "request %s: key %s v%u not created: %s", request_id, key_id,
                      version, detail);
        kms_err_set(rc, "%s", detail);
    }
    return rc;
}

kms_err kms_version_add_make(struct kms_service *svc, const char *request_id,
                             struct p11_token *tok, const struct kms_key_record *k, bool escrow,
                             uint32_t *out_version)
{
    struct p11_key_id hid;
    uint32_t version = 0;
    *out_version = 0;
    KMS_GUARD(p11_key_id_new(tok, &hid));
    KMS_GUARD(kms_store_version_add(kms_service_store(svc), k->key_id, hid.b,
                                    (int64_t)time(NULL), &version));
    /* From here the number is spent even if the creation fails (a number
     * never names two HSM objects: docs/state.md); the caller's audit event
     * names it either way. */
    *out_version = version;
    return kms_version_make(svc, request_id, tok, k->key_id, version, hid.b, k->spec, escrow);
}

kms_err kms_rotate_system(struct kms_service *svc, const char *key_id, uint32_t from_version,
                          const char *reason, uint32_t *out_version)
{
    struct kms_call call;
    memset(&call, 0, sizeof(call));
    call.svc = svc;
    call.actor = KMS_SYSTEM_ACTOR;
    uint8_t rid[16];
    if (RAND_bytes(rid, sizeof(rid)) != 1)
        return kms_err_set(KMS_ERR_INTERNAL, "random number generator failed");
    for (size_t i = 0; i < sizeof(rid); i++)
        snprintf(call.request_id + 2 * i, 3, "%02x", rid[i]);
    if (out_version)
        *out_version = 0;

    kms_err rc = KMS_OK;
    uint32_t version = 0;
    kms_rotate_lock(key_id);
    /* Another node's sweeper or usage count may be rotating this key right
     * now: the key's lease decides which one does, so it rotates once. */
    bool leased = false;
    rc = kms_key_lease_take(svc, key_id, &leased);
    if (rc == KMS_OK && !leased)
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                         "key %s: no automatic rotation here: another node holds the key", key_id);
    if (rc != KMS_OK) {
        leased = false;
        goto unlock;
    }
    struct kms_key_record k;
    /* The store, not the key cache: the decision must see the latest
     * rotation, which this lock (and the lease) orders. */
    rc = kms_store_key_get(kms_service_store(svc), key_id, &k);
    if (rc != KMS_OK)
        goto unlock;
    kms_rpc_audit_key(&call, k.key_id, k.region, k.token);
    if (k.state != KMS_KEY_ENABLED || k.origin != KMS_KEY_ORIGIN_HSM ||
        (from_version != 0 && k.current_version != from_version)) {
        /* Not an event: nothing was attempted. */
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                         "key %s: no automatic rotation (state %s, origin %d, current version "
                         "%u)", key_id, kms_key_state_name(k.state), (int)k.origin,
                         k.current_version);
        goto unlock;
    }
    call.policy = kms_service_policy(svc);
    const struct pol_tenant *pt = call.policy ? pol_doc_tenant(call.policy, k.tenant) : NULL;
    bool escrow = k.escrow_required || (pt != NULL && pol_tenant_escrow_required(pt));
    struct p11_token *tok = kms_service_token(svc, k.region);
    if (tok == NULL) {
        rc = kms_err_set(KMS_ERR_FAILED_PRECONDITION, "region %s is not served by this node",
                         k.region);
    } else {
        rc = kms_service_region_check(svc, k.region);
        if (rc == KMS_OK && escrow)
            rc = kms_escrow_ready(svc, k.region);
        if (rc == KMS_OK)
            rc = kms_version_add_make(svc, call.request_id, tok, &k, escrow, &version);
    }
    call.audit.key_version = version;
    char detail[400];
    if (rc == KMS_OK)
        snprintf(detail, sizeof(detail), "automatic rotation: %s", reason);
    else
        snprintf(detail, sizeof(detail), "automatic rotation: %s: failed: %s", reason,
                 kms_err_detail());
    kms_err arc = kms_audit_request(&call, "RotateKey", rc, detail, "");
    if (rc == KMS_OK && arc != KMS_OK) {
        /* The version exists and is active; only its event is missing.
         * The log is failing closed for every request now, and the
         * operational log says which version this was. */
        kms_log_error("keys", "key %s v%u: automatic rotation made but not audited: %s", key_id,
                      version, kms_err_detail());
        rc = arc;
    }
    if (rc == KMS_OK)
        kms_log_info("keys", "request %s: key %s rotated to version %u by the system (%s)",
                     call.request_id, key_id, version, reason);
    else
        kms_log_error("keys", "request %s: automatic rotation of key %s (%s) failed: %s",
                      call.request_id, key_id, reason, kms_err_detail());
    if (rc == KMS_OK && out_version)
        *out_version = version;
    pol_doc_unref(call.policy);
unlock:
    if (leased)
        kms_key_lease_give(svc, key_id);
    kms_rotate_unlock(key_id);
    return rc;
}

/* Automatic rotations that failed wait before the next try, doubling up to
 * an hour: each try that fails after allocating its number spends that
 * number (docs/state.md), so a token that is down for an hour must not
 * burn one per key per sweep. Only the sweeper touches this table. */
#define BACKOFF_SLOTS 256
#define BACKOFF_MAX_S 3600

static struct backoff {
    char key_id[KMS_KEY_ID_SIZE];
    int64_t next_try;
    unsigned failures;
} backoff[BACKOFF_SLOTS];

static struct backoff *backoff_find(const char *key_id, bool add, int64_t now)
{
    struct backoff *free_slot = NULL;
    for (size_t i = 0; i < BACKOFF_SLOTS; i++) {
        if (strcmp(backoff[i].key_id, key_id) == 0)
            return &backoff[i];
        if (free_slot == NULL && (backoff[i].key_id[0] == '\0' ||
                                  backoff[i].next_try + BACKOFF_MAX_S < now))
            free_slot = &backoff[i];
    }
    if (!add)
        return NULL;
    /* Full of recent failures: the first slot is reused; that key merely
     * retries sooner. */
    struct backoff *b = free_slot ? free_slot : &backoff[0];
    memset(b, 0, sizeof(*b));
    snprintf(b->key_id, sizeof(b->key_id), "%s", key_id);
    return b;
}

/* Rotate each listed key (key_id, current version) on the system's behalf;
 * a failure is logged, and retried by a later sweep after the backoff. */
static size_t rotate_rows(struct kms_service *svc, const struct kms_store_usage_row *rows,
                          size_t n, bool period, int64_t now)
{
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        struct backoff *b = backoff_find(rows[i].key_id, false, now);
        if (b != NULL && b->next_try > now)
            continue;
        char reason[128];
        if (period)
            snprintf(reason, sizeof(reason), "rotation period elapsed for version %u",
                     rows[i].version);
        else
            snprintf(reason, sizeof(reason), "version %u reached %llu encryptions",
                     rows[i].version,
                     (unsigned long long)kms_service_config(svc)->usage_rotate_at);
        kms_err rc = kms_rotate_system(svc, rows[i].key_id, rows[i].version, reason, NULL);
        if (rc == KMS_OK) {
            kms_usage_rotated(period);
            if (b != NULL)
                memset(b, 0, sizeof(*b));
            done++;
        } else if (rc != KMS_ERR_FAILED_PRECONDITION) {
            b = backoff_find(rows[i].key_id, true, now);
            unsigned shift = b->failures < 12 ? b->failures : 12;
            int64_t wait = (int64_t)kms_service_config(svc)->sweep_interval_s << shift;
            b->next_try = now + (wait < BACKOFF_MAX_S ? wait : BACKOFF_MAX_S);
            b->failures++;
        }
    }
    return done;
}

kms_err kms_rotate_sweep(struct kms_service *svc, int64_t now, size_t *out_n)
{
    struct kms_store *st = kms_service_store(svc);
    struct kms_store_usage_row *rows = NULL;
    size_t n = 0;
    *out_n = 0;
    KMS_GUARD(kms_store_rotation_due(st, now, 100, &rows, &n));
    *out_n += rotate_rows(svc, rows, n, true, now);
    free(rows);
    rows = NULL;
    /* The usage threshold is normally met inline, by the encryption that
     * reaches it (kms_usage_encrypt); this catches a rotation that failed
     * there, or a count that a crash left above the threshold. */
    KMS_GUARD(kms_store_usage_over(st, kms_service_config(svc)->usage_rotate_at, 100, &rows, &n));
    *out_n += rotate_rows(svc, rows, n, false, now);
    free(rows);
    return KMS_OK;
}
