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

/* PKCS#11 3.0 mechanisms that p11-kit 0.24's header predates. */
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL /* RFC 5649 (3.0, section 2.14.3) */
#endif

#include "kms_metrics.h"
#include "p11_key.h"
#include "p11_module.h"
#include "p11_pool.h"
#include "p11_rv.h"
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
    /* The module's functions: called only through P11_CALL / P11_RV below
     * (tests and benchmarks may call them raw). */
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
    /* Probed behaviours (p11_probe.c), not read from the token's name:
     * integrity_general: a failed GCM tag / RFC 5649 check comes back as
     * CKR_GENERAL_ERROR (set at open); copyable: CKA_COPYABLE is kept on
     * token objects (-1 not yet probed, 0 no, 1 yes). */
    bool integrity_general;
    atomic_int copyable;
    atomic_int ids_shared;      /* two secret keys under one CKA_ID stay two (-1 unknown) */
    atomic_int asym_restore[4]; /* per p11_asym_kind: escrow restore works (-1 unknown) */
    /* The mechanism that does RFC 5649 here (p11_probe_kwp, at open):
     * CKM_AES_KEY_WRAP_KWP, the one PKCS#11 3.0 names, when the token has
     * it; else CKM_AES_KEY_WRAP_PAD when the token's PAD unwraps an RFC
     * 5649 blob (SoftHSMv2 2.6.1), not the standard's PKCS#7-padded RFC
     * 3394 (NSS); CK_UNAVAILABLE_INFORMATION: neither. */
    CK_MECHANISM_TYPE kwp_mech;

    /* The token's sessions, leased with p11_session_take/give (p11_pool.h
     * has the pool's own lock; the token never reaches inside it). */
    struct p11_pool *pool;
    atomic_bool unavailable;
    atomic_llong unavailable_since; /* CLOCK_MONOTONIC seconds of the last flip */
    atomic_bool pin_failed; /* a PIN error is never retried automatically */
    atomic_ulong lookups_missed; /* p11_key_handle found no object */
    int metrics_id; /* kms_metrics token id; -1: not recorded */

    struct p11_handle_cache cache;

    /* Serialises the retries of a key creation that failed transiently
     * (p11_key_generate); first attempts never take it. */
    pthread_mutex_t create_lock;
};

/* How many times p11_key_generate tries a creation that fails with a
 * transient CK_RV (CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED). */
#define P11_CREATE_ATTEMPTS 4

/* ---- every call into the module (p11_call.c) ----------------------------
 *
 * pkcs11/ calls the module's function list only through these macros, as
 * pkcs11-provider calls it only through its generated interface wrappers:
 * each call is timed into the HSM call histogram (kms_metrics_hsm, per
 * token, function and mechanism) and its CK_RV is mapped by p11_rv_err,
 * the one table of p11_rv.c (session errors -> KMS_ERR_HSM_SESSION, which
 * p11_with_session answers by replacing the session and retrying once;
 * removal -> KMS_ERR_HSM_UNAVAILABLE; PIN errors, bad ciphertext, ...).
 *
 *   P11_CALL(tok, C_Encrypt, CKM_AES_GCM, s, in, n, out, &len)  -> kms_err
 *   P11_RV(tok, C_Login, P11_NO_MECH, s, CKU_USER, pin, n)      -> CK_RV
 *   P11_MOD_RV(mod, C_GetSlotList, CK_TRUE, NULL, &n)           -> CK_RV
 *
 * P11_RV is for the callers that must look at the CK_RV first (a login
 * already done, a transient creation failure, a module quirk) or that
 * ignore a failure on purpose (closing, best-effort cleanup): they map it
 * with p11_rv_err themselves, or not at all. P11_MOD_RV serves calls made
 * before a token exists (loading, slot lists, token initialisation): they
 * belong to no token's metrics. Function and mechanism labels come from
 * one table each (p11_fn_name, p11_mech_name), so every series has one
 * address pair, as kms_metrics_hsm requires. Cost: two clock reads and a
 * few relaxed atomic adds per call, no lock. */

/* A call with no mechanism ("none" in the metrics). */
#define P11_NO_MECH ((CK_MECHANISM_TYPE)CK_UNAVAILABLE_INFORMATION)

/* The members of CK_FUNCTION_LIST (PKCS#11 2.40), in its order. */
#define P11_FUNCTIONS(X)                                                                      \
    X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList) X(C_GetSlotList)          \
    X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList) X(C_GetMechanismInfo)            \
    X(C_InitToken) X(C_InitPIN) X(C_SetPIN) X(C_OpenSession) X(C_CloseSession)                \
    X(C_CloseAllSessions) X(C_GetSessionInfo) X(C_GetOperationState) X(C_SetOperationState)   \
    X(C_Login) X(C_Logout) X(C_CreateObject) X(C_CopyObject) X(C_DestroyObject)               \
    X(C_GetObjectSize) X(C_GetAttributeValue) X(C_SetAttributeValue) X(C_FindObjectsInit)     \
    X(C_FindObjects) X(C_FindObjectsFinal) X(C_EncryptInit) X(C_Encrypt) X(C_EncryptUpdate)   \
    X(C_EncryptFinal) X(C_DecryptInit) X(C_Decrypt) X(C_DecryptUpdate) X(C_DecryptFinal)      \
    X(C_DigestInit) X(C_Digest) X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal)             \
    X(C_SignInit) X(C_Sign) X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit)               \
    X(C_SignRecover) X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal)           \
    X(C_VerifyRecoverInit) X(C_VerifyRecover) X(C_DigestEncryptUpdate)                        \
    X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate) X(C_DecryptVerifyUpdate) X(C_GenerateKey) \
    X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey) X(C_DeriveKey) X(C_SeedRandom)           \
    X(C_GenerateRandom) X(C_GetFunctionStatus) X(C_CancelFunction) X(C_WaitForSlotEvent)

#define P11_FN_ENUM_(f) P11_FN_##f,
enum p11_fn { P11_FUNCTIONS(P11_FN_ENUM_) P11_FN_COUNT };
#undef P11_FN_ENUM_

/* "C_Encrypt" etc.: one static string per function, for the metrics. */
const char *p11_fn_name(enum p11_fn fn);

/* Record one call of fn started at t0 (kms_metrics_now_ns) for metrics
 * token metrics_id (nothing when it is negative). */
void p11_call_record(int metrics_id, enum p11_fn fn, CK_MECHANISM_TYPE mech, uint64_t t0);

/* With p11_serialize_calls(true), one call into a module at a time
 * (p11_call.c): taken before the clock starts, so the metrics time the
 * module, not the wait. Returns whether it took the lock. */
bool p11_call_enter(void);
void p11_call_leave(bool held);

#define P11_RV_AT_(fl_, mid_, fn_, mech_, ...)                                                \
    ({                                                                                        \
        bool p11_held_ = p11_call_enter();                                                    \
        uint64_t p11_t0_ = kms_metrics_now_ns();                                              \
        CK_RV p11_rv_ = (fl_)->fn_(__VA_ARGS__);                                              \
        p11_call_record((mid_), P11_FN_##fn_, (mech_), p11_t0_);                              \
        p11_call_leave(p11_held_);                                                            \
        p11_rv_;                                                                              \
    })
#define P11_RV(tok, fn, mech, ...) P11_RV_AT_((tok)->fl, (tok)->metrics_id, fn, mech, __VA_ARGS__)
#define P11_CALL(tok, fn, mech, ...)                                                          \
    p11_rv_err(P11_RV(tok, fn, mech, __VA_ARGS__), #fn, (tok)->label)
#define P11_MOD_RV(mod, fn, ...) P11_RV_AT_(p11_module_fl(mod), -1, fn, P11_NO_MECH, __VA_ARGS__)

/* SoftHSMv2 reports a failed GCM tag check and a failed OAEP or RFC 5649
 * integrity check as CKR_GENERAL_ERROR, where the specification says
 * CKR_ENCRYPTED_DATA_INVALID / CKR_WRAPPED_KEY_INVALID. For a token found
 * to do so at open (tok->integrity_general, p11_probe_integrity), and only
 * on the data-processing call (after a successful ...Init), read it as the
 * authentication failure it is; other tokens keep their codes. */
CK_RV p11_rv_auth_failure(const struct p11_token *tok, CK_RV rv);

/* Does the token list mech with every flag of need (C_GetMechanismInfo)? */
bool p11_token_mech_has(const struct p11_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS need);

/* ---- probes (p11_probe.c) ----
 * How the token reports a failed integrity check, asked once in session s
 * (logged in) with a session AES key; sets tok->integrity_general. */
void p11_probe_integrity(struct p11_token *tok, CK_SESSION_HANDLE s);
/* Choose tok->kwp_mech (see struct p11_token), in session s (logged in). */
void p11_probe_kwp(struct p11_token *tok, CK_SESSION_HANDLE s);
/* Does the token keep CKA_COPYABLE on token objects? Probed once (one
 * throw-away token AES key, two or three when it refuses). */
bool p11_token_keeps_copyable(struct p11_token *tok, CK_SESSION_HANDLE s);
/* Does the token keep two secret keys (AES, generic) under one CKA_ID as
 * two objects? Probed with copyable, once. */
bool p11_token_shares_ids(struct p11_token *tok, CK_SESSION_HANDLE s);
/* -1 not probed yet, 0 no, 1 yes. */
int p11_token_copyable_known(const struct p11_token *tok);
/* Fit a creation template of a token object to the token: leaves
 * CKA_COPYABLE out where the token does not keep it. */
void p11_tmpl_fit(struct p11_token *tok, CK_SESSION_HANDLE s, CK_ATTRIBUTE *a, CK_ULONG *n);

/* ---- leases (p11_session.c) ----
 * Lease a logged-in read/write session from the token's pool; probes the
 * token first when it is marked unavailable; waits up to a few seconds
 * when all sessions are in use. */
kms_err p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out);

/* Return a lease. broken=true closes the session, drops idle sessions that no
 * longer answer and clears the handle cache, so the next take is fresh. */
void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s, bool broken);

/* ---- module re-initialisation (p11_module.c, p11_pool.c, p11_token.c) ----
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

/* Token side of a recovery (p11_token.c): drop the pool's idle sessions
 * without closing them and clear the handle cache. The freeze, the wait
 * and the thaw act on tok->pool directly (p11_pool.h). */
void p11_token_forget_sessions(struct p11_token *tok);
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

/* The object of kind under id; kind 0 means the id's secret key as
 * p11_key_handle_secret picks it. */
kms_err p11_key_handle_kind(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                            enum p11_key_kind kind, CK_OBJECT_HANDLE *out);

/* C_WrapKey of target under the AES key hw with CKM_AES_KEY_WRAP_PAD
 * (RFC 5649) into out (out_cap bytes); fn names the call in errors. */
kms_err p11_kwp_wrap_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE hw,
                        CK_OBJECT_HANDLE target, const char *fn, uint8_t *out, size_t out_cap,
                        size_t *out_len);

/* KMS_ERR_ALREADY_EXISTS if the token holds an object of the class and
 * type kind makes under id. Secret keys of different types may share an id
 * (a metadata version's AES and HMAC keys); two AES keys, or two pairs,
 * never do. */
kms_err p11_key_refuse_existing(struct p11_token *tok, CK_SESSION_HANDLE s,
                                const struct p11_key_id *id, enum p11_key_kind kind);

/* Class and lookup type of the object a kind's template makes (the private
 * half for pairs, with P11_TYPE_ANY). */
void p11_kind_object(enum p11_key_kind kind, CK_OBJECT_CLASS *out_cls, CK_KEY_TYPE *out_type);

/* Is kind a key pair (EC, RSA)? */
bool p11_kind_is_pair(enum p11_key_kind kind);

/* ---- walking the token (p11_key_find.c) ---- */

/* One C_FindObjectsInit / C_FindObjects (at most max) / C_FindObjectsFinal
 * with this template. */
kms_err p11_find_objects(struct p11_token *tok, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                         CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max, CK_ULONG *out_n);

/* Call fn on every object the session sees, inside one C_FindObjects
 * search; stops at the first error fn returns. fn must not create or
 * destroy objects (the search is open). */
typedef kms_err (*p11_object_fn)(struct p11_token *tok, CK_SESSION_HANDLE s,
                                 CK_OBJECT_HANDLE h, void *arg);
kms_err p11_for_each_object(struct p11_token *tok, CK_SESSION_HANDLE s, p11_object_fn fn,
                            void *arg);

/* Run fn with a leased session, replacing the session and retrying once when
 * fn reports KMS_ERR_HSM_SESSION; marks the token unavailable on
 * KMS_ERR_HSM_UNAVAILABLE. */
typedef kms_err (*p11_session_fn)(struct p11_token *tok, CK_SESSION_HANDLE s, void *arg);
kms_err p11_with_session(struct p11_token *tok, p11_session_fn fn, void *arg);


/* ---- templates (p11_key_kind.c) ---- */

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

/* Template of the public half of a pair; *bits receives CKA_MODULUS_BITS
 * storage for RSA (keep it alive while the template is used). */
void p11_tmpl_public(struct p11_tmpl *t, enum p11_key_kind kind, const struct p11_key_id *id,
                     const char *label, CK_ULONG *bits);

/* Read the attributes of a freshly made object back and compare them with its
 * kind's template. `generated` is false for unwrapped keys, which the
 * specification marks as neither always-sensitive nor never-extractable. */
kms_err p11_key_verify(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                       enum p11_key_kind kind, unsigned flags, bool generated);

/* Keep a freshly made object h (and the public half hpub of a pair, or
 * CK_INVALID_HANDLE) if p11_key_verify passes: cache it under id. If not,
 * log, destroy both, and return the verification's error; what names the
 * object in the log ("new key"). In p11_key.c. */
kms_err p11_key_admit(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                      enum p11_key_kind kind, unsigned flags, bool generated, CK_OBJECT_HANDLE h,
                      CK_OBJECT_HANDLE hpub, const char *what);

/* Destroy every object with this id in session s, and drop it from the
 * cache. Used to undo a half-made key (p11_key.c). */
void p11_key_destroy_in(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id);

/* CKA_EXTRACTABLE of object h to false, read back (p11_key.c); `what`
 * names the object in the error ("key", "private key"). */
kms_err p11_key_lock_in(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        const char *what);

/* Run create in a leased session (p11_with_session); when it fails and has
 * set *transient (CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED of the creating
 * call), undo what it left in a fresh session and try again, up to
 * P11_CREATE_ATTEMPTS in all, the retries serialised by tok->create_lock
 * (p11_key.c). `what` names the key in the warning logged per retry. */
kms_err p11_create_retrying(struct p11_token *tok, p11_session_fn create,
                            void (*undo)(struct p11_token *, CK_SESSION_HANDLE, void *),
                            void *arg, bool *transient, const char *what);

/* Zero *o, then read the usage and protection flags of object h into it
 * (p11_key_find.c); one a class does not have reads as false. The key type
 * and length are the caller's to read. */
void p11_key_read_flags(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        struct p11_key_info *o);

#endif
