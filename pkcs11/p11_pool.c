/*
 * p11_pool.c - the bounded session pool (p11_pool.h). One mutex and one
 * condition variable per pool; the module is called only through the
 * owner's operations.
 */
#include "p11_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

struct p11_pool {
    struct p11_pool_ops ops;
    void *ctx;
    char name[33];

    /* `lock` guards everything below it. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    CK_SESSION_HANDLE *idle; /* cap slots */
    size_t n_idle;
    size_t n_open; /* lent + idle + being opened */
    size_t cap;
    /* Set while the module is re-initialised: no new lease and no probe
     * starts, and the recovery waits until every lease is back
     * (n_open == n_idle) and no probe runs (n_probing == 0). */
    bool frozen;
    size_t n_probing;
    atomic_ulong replaced;
};

kms_err p11_pool_new(size_t cap, const struct p11_pool_ops *ops, void *ctx, const char *name,
                     struct p11_pool **out)
{
    *out = NULL;
    KMS_ENSURE(cap > 0, KMS_ERR_USAGE, "a session pool needs room for one session");
    struct p11_pool *p = calloc(1, sizeof(*p));
    KMS_ENSURE(p != NULL, KMS_ERR_NOMEM, "out of memory");
    p->idle = calloc(cap, sizeof(*p->idle));
    if (p->idle == NULL) {
        free(p);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    p->ops = *ops;
    p->ctx = ctx;
    p->cap = cap;
    snprintf(p->name, sizeof(p->name), "%s", name ? name : "?");
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    *out = p;
    return KMS_OK;
}

void p11_pool_free(struct p11_pool *p)
{
    if (p == NULL)
        return;
    p11_pool_drain(p);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p->idle);
    free(p);
}

kms_err p11_pool_take(struct p11_pool *p, CK_SESSION_HANDLE *out)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += P11_POOL_WAIT_SECONDS;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->frozen) {
            /* The module is being re-initialised (p11_module_recover):
             * every session is about to end. Wait for the new ones. */
            if (pthread_cond_timedwait(&p->cond, &p->lock, &deadline) == ETIMEDOUT) {
                pthread_mutex_unlock(&p->lock);
                return kms_err_set(KMS_ERR_HSM_UNAVAILABLE,
                                   "token '%s': its module is being re-initialised", p->name);
            }
            continue;
        }
        if (p->n_idle > 0) {
            *out = p->idle[--p->n_idle];
            pthread_mutex_unlock(&p->lock);
            return KMS_OK;
        }
        if (p->n_open < p->cap) {
            /* Counted before it exists, so concurrent takers never open
             * more than cap; opened without the lock (it may log in). */
            p->n_open++;
            pthread_mutex_unlock(&p->lock);
            kms_err rc = p->ops.open(p->ctx, out);
            if (rc != KMS_OK) {
                pthread_mutex_lock(&p->lock);
                p->n_open--;
                pthread_cond_signal(&p->cond);
                pthread_mutex_unlock(&p->lock);
            }
            return rc;
        }
        if (pthread_cond_timedwait(&p->cond, &p->lock, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&p->lock);
            return kms_err_set(KMS_ERR_RESOURCE_EXHAUSTED,
                               "token '%s': all %zu sessions busy for %d s", p->name, p->cap,
                               P11_POOL_WAIT_SECONDS);
        }
    }
}

kms_err p11_pool_take_idle(struct p11_pool *p, CK_SESSION_HANDLE *out, bool *out_busy)
{
    kms_err rc = KMS_OK;
    *out_busy = false;
    pthread_mutex_lock(&p->lock);
    if (p->frozen) {
        rc = kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s': its module is being "
                         "re-initialised", p->name);
    } else if (p->n_idle > 0) {
        *out = p->idle[--p->n_idle];
    } else {
        *out_busy = p->n_open > 0;
        rc = KMS_ERR_NOT_FOUND;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* Called without the lock: closes idle sessions that no longer answer. When
 * one session was lost, usually all were (C_CloseAllSessions, token reset),
 * and a retry must not pick up another dead one. */
static void purge_dead_idle(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    size_t kept = 0;
    for (size_t i = 0; i < p->n_idle; i++) {
        bool exists = false;
        if (p->ops.alive(p->ctx, p->idle[i], &exists)) {
            p->idle[kept++] = p->idle[i];
        } else {
            if (exists)
                p->ops.close(p->ctx, p->idle[i]);
            p->n_open--;
            atomic_fetch_add(&p->replaced, 1);
        }
    }
    p->n_idle = kept;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void p11_pool_give(struct p11_pool *p, CK_SESSION_HANDLE s, bool broken)
{
    if (broken) {
        p->ops.close(p->ctx, s);
        atomic_fetch_add(&p->replaced, 1);
        pthread_mutex_lock(&p->lock);
        p->n_open--;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
        purge_dead_idle(p);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->idle[p->n_idle++] = s;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void p11_pool_drain(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_idle; i++)
        p->ops.close(p->ctx, p->idle[i]);
    p->n_open -= p->n_idle;
    p->n_idle = 0;
    pthread_mutex_unlock(&p->lock);
}

void p11_pool_counts(struct p11_pool *p, struct p11_pool_counts *out)
{
    pthread_mutex_lock(&p->lock);
    out->cap = p->cap;
    out->open = p->n_open;
    out->idle = p->n_idle;
    pthread_mutex_unlock(&p->lock);
    out->replaced = atomic_load(&p->replaced);
}

/* ---- recovery by re-initialisation ----------------------------------- */

void p11_pool_freeze(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->frozen = true;
    pthread_mutex_unlock(&p->lock);
}

bool p11_pool_wait_drained(struct p11_pool *p, const struct timespec *deadline)
{
    pthread_mutex_lock(&p->lock);
    while (p->n_open != p->n_idle || p->n_probing > 0) {
        /* Returns signal one waiter, which may be a frozen taker: poll in
         * short slices rather than rely on being the one woken. */
        struct timespec slice;
        clock_gettime(CLOCK_REALTIME, &slice);
        slice.tv_nsec += 10000000L;
        if (slice.tv_nsec >= 1000000000L) {
            slice.tv_sec++;
            slice.tv_nsec -= 1000000000L;
        }
        if (slice.tv_sec > deadline->tv_sec ||
            (slice.tv_sec == deadline->tv_sec && slice.tv_nsec > deadline->tv_nsec)) {
            bool done = p->n_open == p->n_idle && p->n_probing == 0;
            pthread_mutex_unlock(&p->lock);
            return done;
        }
        pthread_cond_timedwait(&p->cond, &p->lock, &slice);
    }
    pthread_mutex_unlock(&p->lock);
    return true;
}

void p11_pool_forget(struct p11_pool *p)
{
    /* No close: C_Finalize ends them all, and after C_Initialize a handle
     * number may name someone's new session. */
    pthread_mutex_lock(&p->lock);
    p->n_open -= p->n_idle;
    p->n_idle = 0;
    pthread_mutex_unlock(&p->lock);
}

void p11_pool_thaw(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->frozen = false;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

bool p11_pool_probe_begin(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    bool ok = !p->frozen;
    if (ok)
        p->n_probing++;
    pthread_mutex_unlock(&p->lock);
    return ok;
}

void p11_pool_probe_end(struct p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->n_probing--;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}
