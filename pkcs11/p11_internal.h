/*
 * p11_internal.h - the inside of pkcs11/, shared by its files and by the
 * unit tests that need raw access (e.g. to close sessions underneath the
 * pool). Nothing outside pkcs11/ and tests/ may include it.
 */
#ifndef P11_INTERNAL_H
#define P11_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "kms_metrics.h"
#include "p11_key.h"
#include "p11_module.h"
#include "p11_token.h"

CK_FUNCTION_LIST_PTR p11_module_fl(const struct p11_module *mod);

/* Copy a blank-padded PKCS#11 string field into a NUL-terminated string. */
void p11_str_from_field(char *dst, size_t dst_len, const CK_UTF8CHAR *src, size_t src_len);

/* Handle cache: CKA_ID x CKA_CLASS x CKA_KEY_TYPE -> object handle.
 * Read-mostly; guarded by its own rwlock so lookups on the hot path never
 * contend with each other.
 *
 * One id may name several objects: the two halves of a pair (told apart by
 * class) and, for a metadata key version, an AES key and an HMAC generic
 * secret (both CKO_SECRET_KEY, told apart by key type). Secret keys are
 * therefore always resolved by (id, CKO_SECRET_KEY, key type); private and
 * public keys by (id, class) with P11_TYPE_ANY, since an id holds at most one
 * pair (p11_key_generate refuses a second). */
#define P11_TYPE_ANY ((CK_KEY_TYPE)CK_UNAVAILABLE_INFORMATION)

struct p11_handle_entry {
    uint8_t id[P11_KEY_ID_LEN];
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_OBJECT_HANDLE handle;
    bool used;
};

struct p11_handle_cache {
    pthread_rwlock_t lock;
    struct p11_handle_entry *slots;
    size_t cap; /* power of two */
    size_t count;
};

struct p11_token {
    struct p11_module *mod;
    CK_FUNCTION_LIST_PTR fl;
    CK_SLOT_ID slot;
    char region[P11_REGION_MAX + 1];
    char label[33];
    char serial[17];
    char manufacturer[33];
    char *pin_source;

    CK_MECHANISM_TYPE *mechs;
    CK_MECHANISM_INFO *mech_info;
    size_t n_mechs;
    int oaep_sha256; /* -1 unknown, 0 refused by token, 1 accepted */

    /* Session pool. Sessions are leased with p11_session_take and returned
     * with p11_session_give; `lock` guards everything below it. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    CK_SESSION_HANDLE *idle;
    size_t n_idle;
    size_t n_open;
    size_t cap;
    atomic_bool unavailable;
    atomic_llong unavailable_since; /* CLOCK_MONOTONIC seconds of the last flip */
    atomic_bool pin_failed; /* a PIN error is never retried automatically */
    atomic_ulong sessions_replaced;
    atomic_ulong lookups_missed; /* p11_key_handle found no object */
    int metrics_id; /* kms_metrics token id; -1: not recorded */
    /* Set while the module is re-initialised (p11_module_recover): no new
     * lease and no probe starts, and the recovery waits until every lease
     * is back (n_open == n_idle) and no probe runs (n_probing == 0). */
    bool frozen;
    size_t n_probing;

    struct p11_handle_cache cache;

    /* Serialises the retries of a key creation that failed transiently
     * (p11_key_generate); first attempts never take it. */
    pthread_mutex_t create_lock;
};

/* How many times p11_key_generate tries a creation that fails with a
 * transient CK_RV (CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED). */
#define P11_CREATE_ATTEMPTS 4

/* Time one HSM call for the metrics: one clock_gettime pair, a few relaxed
 * atomic adds, no lock (kms_metrics.h). fn and mech are string literals. */
#define P11_TIMED(tok, fn, mech, call)                                              \
    ({                                                                              \
        uint64_t p11_t0_ = kms_metrics_now_ns();                                    \
        CK_RV p11_rv_ = (call);                                                     \
        kms_metrics_hsm((tok)->metrics_id, (fn), (mech), kms_metrics_now_ns() - p11_t0_); \
        p11_rv_;                                                                    \
    })

/* Lease a logged-in read/write session; waits up to a few seconds when all
 * `cap` sessions are in use. */
kms_err p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out);

/* Return a lease. broken=true closes the session, drops idle sessions that no
 * longer answer and clears the handle cache, so the next take is fresh. */
void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s, bool broken);

/* Close every pooled session (token shutdown). */
void p11_session_pool_drain(struct p11_token *tok);

/* ---- module re-initialisation (p11_module.c, p11_session.c) ----
 *
 * Some modules never see a token again once it failed: SoftHSMv2 answers
 * CKR_GENERAL_ERROR to C_GetTokenInfo for good after its token directory
 * went away, even when it is back. The only remedy PKCS#11 offers short of
 * restarting the process is C_Finalize + C_Initialize, which ends every
 * session of every token of the module. p11_module_recover does that
 * safely, once the token has not answered for P11_REINIT_MIN_S (a module
 * that sees its token again by itself is given that long): it freezes
 * every token's pool, waits (bounded) until no lease is
 * out and no probe runs, forgets the dead sessions without closing them (a
 * closed handle number may be reused by the new initialisation), clears
 * the handle caches, re-initialises, finds each token again by serial and
 * thaws. Attempts are spaced out (P11_REINIT_MIN_S doubling to
 * P11_REINIT_MAX_S while the token stays away), since each one pauses the
 * module's other tokens for a moment. Only a module kmsd initialised itself
 * is re-initialised. */
#define P11_REINIT_MIN_S 2
#define P11_REINIT_MAX_S 30
#define P11_REINIT_DRAIN_S 5

void p11_module_add_token(struct p11_module *mod, struct p11_token *tok);
void p11_module_remove_token(struct p11_module *mod, struct p11_token *tok);
/* Re-initialise mod to bring `trigger` back; true when it ran (the caller
 * then probes again). Called without any lease or pool lock held. */
bool p11_module_recover(struct p11_module *mod, struct p11_token *trigger);
/* Re-initialise the module's function list (C_Finalize if initialised,
 * then C_Initialize); KMS_OK when initialised afterwards. */
kms_err p11_module_reinit_library(struct p11_module *mod);

/* Pool side of a recovery (p11_session.c). */
void p11_pool_freeze(struct p11_token *tok);
bool p11_pool_wait_drained(struct p11_token *tok, const struct timespec *deadline);
void p11_pool_forget(struct p11_token *tok);
void p11_pool_thaw(struct p11_token *tok);
/* A probe that is not a lease: false while the pool is frozen. */
bool p11_probe_begin(struct p11_token *tok);
void p11_probe_end(struct p11_token *tok);
/* Find the token again by serial after a re-initialisation (p11_token.c);
 * sets or clears its unavailable mark. */
void p11_token_reresolve(struct p11_token *tok);
/* Mark the token unavailable; on the change, note when and log it with the
 * current error detail (p11_token.c). */
void p11_token_mark_unavailable(struct p11_token *tok);

kms_err p11_cache_init(struct p11_handle_cache *c);
void p11_cache_cleanup(struct p11_handle_cache *c);
bool p11_cache_get(struct p11_handle_cache *c, const uint8_t *id, CK_OBJECT_CLASS cls,
                   CK_KEY_TYPE type, CK_OBJECT_HANDLE *out);
void p11_cache_put(struct p11_handle_cache *c, const uint8_t *id, CK_OBJECT_CLASS cls,
                   CK_KEY_TYPE type, CK_OBJECT_HANDLE h);
/* Drop every entry of this id, whatever its class and type. */
void p11_cache_forget(struct p11_handle_cache *c, const uint8_t *id);
void p11_cache_clear(struct p11_handle_cache *c);

/* Resolve (id, class, key type) to a handle valid in session s: cache first,
 * then C_FindObjects. type is a CKK_ value for CKO_SECRET_KEY and
 * P11_TYPE_ANY for private and public keys (KMS_ERR_USAGE otherwise).
 * KMS_ERR_NOT_FOUND when no such object exists. */
kms_err p11_key_handle(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                       CK_OBJECT_CLASS cls, CK_KEY_TYPE type, CK_OBJECT_HANDLE *out);

/* The secret key under id when the caller names it by id alone (the target
 * of a wrap, a lock, an inspection): the AES key if there is one, else the
 * generic secret. The order is fixed, so the answer never depends on what
 * the cache happens to hold. *out_type (may be NULL) receives its type. */
kms_err p11_key_handle_secret(struct p11_token *tok, CK_SESSION_HANDLE s,
                              const struct p11_key_id *id, CK_OBJECT_HANDLE *out,
                              CK_KEY_TYPE *out_type);

/* Class and lookup type of the object a kind's template makes (the private
 * half for pairs, with P11_TYPE_ANY). */
void p11_kind_object(enum p11_key_kind kind, CK_OBJECT_CLASS *out_cls, CK_KEY_TYPE *out_type);

/* Run fn with a leased session, replacing the session and retrying once when
 * fn reports KMS_ERR_HSM_SESSION; marks the token unavailable on
 * KMS_ERR_HSM_UNAVAILABLE. */
typedef kms_err (*p11_session_fn)(struct p11_token *tok, CK_SESSION_HANDLE s, void *arg);
kms_err p11_with_session(struct p11_token *tok, p11_session_fn fn, void *arg);


/* ---- templates (p11_key.c) ---- */

#define P11_TMPL_MAX 32

struct p11_tmpl {
    CK_ATTRIBUTE a[P11_TMPL_MAX];
    size_t n;
    CK_ATTRIBUTE unwrap_tmpl[4]; /* storage for CKA_UNWRAP_TEMPLATE */
    size_t unwrap_n;
    CK_ULONG value_len;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE key_type;
};

/* Template of the secret key (or the private half) of `kind`. for_unwrap
 * leaves out what C_UnwrapKey derives from the wrapped data (CKA_VALUE_LEN).
 * `id` and `label` are referenced, not copied: keep them alive while the
 * template is used. */
void p11_tmpl_secret(struct p11_tmpl *t, enum p11_key_kind kind, unsigned flags,
                     const struct p11_key_id *id, const char *label, bool for_unwrap);

/* Read the attributes of a freshly made object back and compare them with its
 * kind's template. `generated` is false for unwrapped keys, which the
 * specification marks as neither always-sensitive nor never-extractable. */
kms_err p11_key_verify(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       enum p11_key_kind kind, unsigned flags, bool generated);

/* Destroy every object with this id in session s, and drop it from the
 * cache. Used to undo a half-made key. */
void p11_key_destroy_in(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id);

#endif
