/*
 * p11_session.c - the per-token session pool, login, and retry-once.
 *
 * PKCS#11 login state belongs to the application, not to a session: one
 * C_Login serves every session of the token, and closing the last session
 * logs the application out. So each newly opened session is asked for its
 * state and logged in only when it is public. The PIN is read from its source
 * for each login and wiped at once; it is never kept in memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms_log.h"
#include "kms_secret.h"
#include "p11_internal.h"
#include "p11_rv.h"

/* How long a caller waits for a free session before giving up. */
#define SESSION_WAIT_SECONDS 5

static kms_err login_if_needed(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    CK_SESSION_INFO si;
    CK_RV rv = tok->fl->C_GetSessionInfo(s, &si);
    KMS_GUARD(p11_rv_err(rv, "C_GetSessionInfo", tok->label));
    if (si.state == CKS_RW_USER_FUNCTIONS || si.state == CKS_RO_USER_FUNCTIONS)
        return KMS_OK;

    /* A wrong PIN is never retried on its own: tokens lock after a few tries,
     * and a locked production HSM is an outage. An operator fixes the PIN
     * and reloads. */
    KMS_ENSURE(!atomic_load(&tok->pin_failed), KMS_ERR_HSM_PIN,
               "token '%s': login disabled after a PIN error; fix the PIN source and restart",
               tok->label);

    struct kms_secret pin = {0};
    KMS_GUARD(kms_secret_read_source(tok->pin_source, &pin));
    rv = P11_TIMED(tok, "C_Login", "none", tok->fl->C_Login(s, CKU_USER, pin.data, pin.len));
    kms_secret_wipe(&pin);
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        return KMS_OK;
    kms_err rc = p11_rv_err(rv, "C_Login", tok->label);
    if (rc == KMS_ERR_HSM_PIN)
        atomic_store(&tok->pin_failed, true);
    return rc;
}

static kms_err open_session(struct p11_token *tok, CK_SESSION_HANDLE *out)
{
    CK_RV rv = tok->fl->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                      out);
    KMS_GUARD(p11_rv_err(rv, "C_OpenSession", tok->label));
    kms_err rc = login_if_needed(tok, *out);
    if (rc != KMS_OK)
        tok->fl->C_CloseSession(*out);
    return rc;
}

kms_err p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out)
{
    if (atomic_load(&tok->unavailable)) {
        /* Re-check rather than fail forever: the token may be back. */
        kms_err prc = p11_token_probe(tok);
        if (prc != KMS_OK)
            return prc;
    }

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SESSION_WAIT_SECONDS;

    pthread_mutex_lock(&tok->lock);
    for (;;) {
        if (tok->frozen) {
            /* The module is being re-initialised (p11_module_recover):
             * every session is about to end. Wait for the new ones. */
            if (pthread_cond_timedwait(&tok->cond, &tok->lock, &deadline) == ETIMEDOUT) {
                pthread_mutex_unlock(&tok->lock);
                return kms_err_set(KMS_ERR_HSM_UNAVAILABLE,
                                   "token '%s': its module is being re-initialised", tok->label);
            }
            continue;
        }
        if (tok->n_idle > 0) {
            *out = tok->idle[--tok->n_idle];
            pthread_mutex_unlock(&tok->lock);
            return KMS_OK;
        }
        if (tok->n_open < tok->cap) {
            tok->n_open++;
            pthread_mutex_unlock(&tok->lock);
            kms_err rc = open_session(tok, out);
            if (rc != KMS_OK) {
                pthread_mutex_lock(&tok->lock);
                tok->n_open--;
                pthread_cond_signal(&tok->cond);
                pthread_mutex_unlock(&tok->lock);
            }
            return rc;
        }
        if (pthread_cond_timedwait(&tok->cond, &tok->lock, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&tok->lock);
            return kms_err_set(KMS_ERR_RESOURCE_EXHAUSTED,
                               "token '%s': all %zu sessions busy for %d s", tok->label, tok->cap,
                               SESSION_WAIT_SECONDS);
        }
    }
}

/* Called without the lock: closes idle sessions that no longer answer. When
 * one session was lost, usually all were (C_CloseAllSessions, token reset),
 * and a retry must not pick up another dead one. */
static void purge_dead_idle(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    size_t kept = 0;
    for (size_t i = 0; i < tok->n_idle; i++) {
        CK_SESSION_INFO si;
        CK_RV rv = tok->fl->C_GetSessionInfo(tok->idle[i], &si);
        bool alive = rv == CKR_OK &&
                     (si.state == CKS_RW_USER_FUNCTIONS || si.state == CKS_RO_USER_FUNCTIONS);
        if (alive) {
            tok->idle[kept++] = tok->idle[i];
        } else {
            if (rv == CKR_OK)
                tok->fl->C_CloseSession(tok->idle[i]);
            tok->n_open--;
            atomic_fetch_add(&tok->sessions_replaced, 1);
        }
    }
    tok->n_idle = kept;
    pthread_cond_broadcast(&tok->cond);
    pthread_mutex_unlock(&tok->lock);
}

void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s, bool broken)
{
    if (broken) {
        /* Ignore the result: the session may already be gone. */
        tok->fl->C_CloseSession(s);
        atomic_fetch_add(&tok->sessions_replaced, 1);
        pthread_mutex_lock(&tok->lock);
        tok->n_open--;
        pthread_cond_signal(&tok->cond);
        pthread_mutex_unlock(&tok->lock);
        p11_cache_clear(&tok->cache);
        purge_dead_idle(tok);
        return;
    }
    pthread_mutex_lock(&tok->lock);
    tok->idle[tok->n_idle++] = s;
    pthread_cond_signal(&tok->cond);
    pthread_mutex_unlock(&tok->lock);
}

void p11_session_pool_drain(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    for (size_t i = 0; i < tok->n_idle; i++)
        tok->fl->C_CloseSession(tok->idle[i]);
    tok->n_open -= tok->n_idle;
    tok->n_idle = 0;
    pthread_mutex_unlock(&tok->lock);
}

/* ---- recovery by re-initialisation (p11_internal.h) ---------------- */

void p11_pool_freeze(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    tok->frozen = true;
    pthread_mutex_unlock(&tok->lock);
}

bool p11_pool_wait_drained(struct p11_token *tok, const struct timespec *deadline)
{
    pthread_mutex_lock(&tok->lock);
    while (tok->n_open != tok->n_idle || tok->n_probing > 0) {
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
            bool done = tok->n_open == tok->n_idle && tok->n_probing == 0;
            pthread_mutex_unlock(&tok->lock);
            return done;
        }
        pthread_cond_timedwait(&tok->cond, &tok->lock, &slice);
    }
    pthread_mutex_unlock(&tok->lock);
    return true;
}

void p11_pool_forget(struct p11_token *tok)
{
    /* No C_CloseSession: C_Finalize ends them all, and after C_Initialize a
     * handle number may name someone's new session. */
    pthread_mutex_lock(&tok->lock);
    tok->n_open -= tok->n_idle;
    tok->n_idle = 0;
    pthread_mutex_unlock(&tok->lock);
    p11_cache_clear(&tok->cache);
}

void p11_pool_thaw(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    tok->frozen = false;
    pthread_cond_broadcast(&tok->cond);
    pthread_mutex_unlock(&tok->lock);
}

bool p11_probe_begin(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    bool ok = !tok->frozen;
    if (ok)
        tok->n_probing++;
    pthread_mutex_unlock(&tok->lock);
    return ok;
}

void p11_probe_end(struct p11_token *tok)
{
    pthread_mutex_lock(&tok->lock);
    tok->n_probing--;
    pthread_cond_broadcast(&tok->cond);
    pthread_mutex_unlock(&tok->lock);
}

kms_err p11_with_session(struct p11_token *tok, p11_session_fn fn, void *arg)
{
    for (int attempt = 0;; attempt++) {
        CK_SESSION_HANDLE s;
        kms_err rc = p11_session_take(tok, &s);
        if (rc == KMS_OK) {
            rc = fn(tok, s, arg);
            bool broken = rc == KMS_ERR_HSM_SESSION || rc == KMS_ERR_HSM_UNAVAILABLE;
            p11_session_give(tok, s, broken);
        }
        /* An error PKCS#11 does not sort (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR,
         * ...) may be the token's or the request's. Ask the token: when it
         * no longer answers C_GetTokenInfo the region is out of service
         * (`unavailable`, and re-probed from then on); when it answers, the
         * request failed (`internal`). A token whose directory went away
         * answers CKR_OBJECT_HANDLE_INVALID, then CKR_GENERAL_ERROR to
         * C_Login: this is where it is noticed. */
        if (rc == KMS_ERR_HSM) {
            char first[400];
            snprintf(first, sizeof(first), "%s", kms_err_detail());
            if (p11_token_probe(tok) != KMS_OK) {
                char why[400];
                snprintf(why, sizeof(why), "%s", kms_err_detail());
                rc = kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "%s; %s", first, why);
            } else {
                rc = kms_err_set(KMS_ERR_HSM, "%s", first);
            }
        }
        if (rc == KMS_ERR_HSM_UNAVAILABLE)
            p11_token_mark_unavailable(tok);
        if (rc != KMS_ERR_HSM_SESSION || attempt > 0)
            return rc;
        kms_log_warn("pkcs11", "token '%s': session lost (%s); retrying once with a new session",
                     tok->label, kms_err_detail());
    }
}

void p11_token_pool_stats(struct p11_token *tok, struct p11_pool_stats *out)
{
    pthread_mutex_lock(&tok->lock);
    out->cap = tok->cap;
    out->open = tok->n_open;
    out->idle = tok->n_idle;
    pthread_mutex_unlock(&tok->lock);
    out->replaced = atomic_load(&tok->sessions_replaced);
}

kms_err p11_token_check(struct p11_token *tok)
{
    KMS_GUARD(p11_token_probe(tok));
    /* An idle session is checked; when every session is busy the token is
     * evidently in use, and waiting for one would make a saturated node
     * report itself unready (and flap behind a load balancer). With no
     * session open at all, one is opened and logged in, as a request would. */
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    pthread_mutex_lock(&tok->lock);
    if (tok->frozen) {
        pthread_mutex_unlock(&tok->lock);
        return kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "token '%s': its module is being "
                           "re-initialised", tok->label);
    }
    bool idle = tok->n_idle > 0, busy = !idle && tok->n_open > 0;
    if (idle)
        s = tok->idle[--tok->n_idle];
    pthread_mutex_unlock(&tok->lock);
    if (busy)
        return KMS_OK;
    if (!idle)
        KMS_GUARD(p11_session_take(tok, &s));
    CK_SESSION_INFO si;
    CK_RV rv = tok->fl->C_GetSessionInfo(s, &si);
    kms_err rc = p11_rv_err(rv, "C_GetSessionInfo", tok->label);
    if (rc == KMS_OK && si.state != CKS_RW_USER_FUNCTIONS && si.state != CKS_RO_USER_FUNCTIONS)
        rc = kms_err_set(KMS_ERR_HSM_SESSION, "token '%s': session is not logged in", tok->label);
    p11_session_give(tok, s, rc != KMS_OK);
    if (rc == KMS_ERR_HSM_UNAVAILABLE)
        p11_token_mark_unavailable(tok);
    return rc;
}
