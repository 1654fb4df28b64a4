/*
 * p11_pool.h - a bounded pool of PKCS#11 sessions, with its own lock.
 * Internal to pkcs11/ (and its tests).
 *
 * The pool counts and lends sessions; it does not know what a token is.
 * Whoever owns it (struct p11_token) hands it three operations at creation:
 * open a usable (logged-in) session, close one, and tell whether an idle
 * one still answers. The pool calls them and nothing else, so the
 * dependency runs one way: the token uses its pool, never the reverse
 * (as latchset/pkcs11-provider's session pool hangs off its slot).
 *
 * Lifecycle: p11_pool_new / p11_pool_free (free closes the idle sessions;
 * every lease must be back). Leases: p11_pool_take / p11_pool_give. A
 * session given back broken is closed and never lent again; the idle
 * sessions that no longer answer are closed with it, since when one
 * session was lost usually all were (C_CloseAllSessions, a token reset).
 *
 * Recovery (p11_module_recover): freeze stops new leases and probes,
 * wait_drained waits until every lease is back and no probe runs, forget
 * drops the idle sessions without closing them (the module is about to be
 * re-initialised), thaw lets takers in again.
 *
 * Thread-safety: every function takes the pool's own mutex; the operations
 * `open` and `close` run without it, `alive` under it (it must not block
 * for long: one C_GetSessionInfo).
 */
#ifndef P11_POOL_H
#define P11_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "kms_error.h"

struct p11_pool;

struct p11_pool_ops {
    /* Open one session ready for use; called without the pool lock. */
    kms_err (*open)(void *ctx, CK_SESSION_HANDLE *out);
    /* Close a session (its result is ignored: it may already be gone). */
    void (*close)(void *ctx, CK_SESSION_HANDLE s);
    /* Does an idle session still answer and is it logged in? When not,
     * *out_exists says whether the handle still names a session (only
     * then is it closed: a dead handle's number may already name a new
     * session of another thread). */
    bool (*alive)(void *ctx, CK_SESSION_HANDLE s, bool *out_exists);
};

/* How long p11_pool_take waits for a free session before giving up. */
#define P11_POOL_WAIT_SECONDS 5

/* A pool of at most cap (> 0) sessions. name (a token label, copied) is
 * used in error details. */
kms_err p11_pool_new(size_t cap, const struct p11_pool_ops *ops, void *ctx, const char *name,
                     struct p11_pool **out);
/* Close the idle sessions and free. NULL is a no-op. */
void p11_pool_free(struct p11_pool *p);

/* Lease a session: an idle one, else a new one while fewer than cap are
 * open, else wait up to P11_POOL_WAIT_SECONDS for a return
 * (KMS_ERR_RESOURCE_EXHAUSTED after that). While the pool is frozen, waits
 * for the thaw within the same bound (KMS_ERR_HSM_UNAVAILABLE after it). */
kms_err p11_pool_take(struct p11_pool *p, CK_SESSION_HANDLE *out);

/* Lease an idle session without waiting or opening one. KMS_OK with *out
 * set; KMS_ERR_NOT_FOUND when none is idle (*out_busy: sessions are open,
 * all lent); KMS_ERR_HSM_UNAVAILABLE while frozen. */
kms_err p11_pool_take_idle(struct p11_pool *p, CK_SESSION_HANDLE *out, bool *out_busy);

/* Return a lease. broken: close it (counted as replaced) and close the idle
 * sessions that no longer answer. */
void p11_pool_give(struct p11_pool *p, CK_SESSION_HANDLE s, bool broken);

/* Close every idle session (shutdown). */
void p11_pool_drain(struct p11_pool *p);

struct p11_pool_counts {
    size_t cap, open, idle;
    unsigned long replaced; /* sessions found broken and closed, since creation */
};
void p11_pool_counts(struct p11_pool *p, struct p11_pool_counts *out);

/* Recovery by re-initialisation (see above). */
void p11_pool_freeze(struct p11_pool *p);
bool p11_pool_wait_drained(struct p11_pool *p, const struct timespec *deadline);
void p11_pool_forget(struct p11_pool *p);
void p11_pool_thaw(struct p11_pool *p);

/* A use of the module that is not a lease (a probe): false, and nothing
 * counted, while the pool is frozen. */
bool p11_pool_probe_begin(struct p11_pool *p);
void p11_pool_probe_end(struct p11_pool *p);

#endif
