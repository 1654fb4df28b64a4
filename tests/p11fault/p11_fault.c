/*
 * p11_fault.c - a fault-injecting PKCS#11 module for tests. It forwards
 * every call to the real module ($CUSTOS_P11FAULT_MODULE, default
 * /usr/lib/softhsm/libsofthsm2.so) and, as a control file says
 * ($CUSTOS_P11FAULT_CONTROL), fails or delays chosen calls:
 *
 *   # comment
 *   C_Encrypt CKR_DEVICE_ERROR after=100 count=1   101st C_Encrypt fails, once
 *   * CKR_TOKEN_NOT_PRESENT                        the token is "removed"
 *   C_Login CKR_PIN_LOCKED
 *   C_EncryptInit delay_ms=50                      slow, but succeeds
 *   C_Sign CKR_GENERAL_ERROR delay_ms=20 count=3
 *   C_Encrypt CKR_SESSION_HANDLE_INVALID close_all count=1   a token reset
 *   C_GenerateKey CKR_DEVICE_ERROR token=custos-us-east   one token of several fails
 *
 * A line is FUNCTION [CKR_NAME|0xHEX] [after=N] [count=N] [delay_ms=N]
 * [close_all] [token=LABEL]: token= limits the rule to calls on a session of
 * the token with that label (functions without a session never match it;
 * the label is read from the real module per matching call, which only
 * tests pay); the rule lets its first `after` matching calls through, then
 * acts on the next `count` (0 or absent: every one). close_all (only with a
 * CKR_ value, only on functions whose first argument is a session) first
 * closes every session of that session's slot in the real module, as a
 * token reset does: the application is logged out, so whatever opens the
 * next session must call C_Login again. `*` matches every function that
 * talks to a slot, token or session: all but C_Initialize, C_Finalize,
 * C_GetInfo and C_GetFunctionList, so a "removed" token also fails
 * C_GetSlotList and C_GetTokenInfo (what a re-probe asks) while the module
 * can still be loaded and unloaded. The first rule that fails a call wins;
 * delays of every matching rule add up. At most FAULT_RULES_MAX rules; a
 * line that does not parse is reported on stderr and ignored.
 *
 * The file is re-read when its mtime, size or inode changes, checked at
 * most every FAULT_CHECK_MS: an unchanged file costs a clock read per call.
 * Rewriting the file resets every rule's counters; an empty or missing file
 * means no faults.
 *
 * Call counters: every call of every function is counted (calls the shim
 * fails included: what is counted is the attempt), and C_FindObjectsInit
 * calls whose template holds CKA_ID are counted again under the name
 * "C_FindObjectsInit+CKA_ID" (a key looked up again by its id). When
 * $CUSTOS_P11FAULT_STATS names a file, a thread of the shim rewrites it
 * (PATH.tmp, then rename: a reader never sees half a file) every
 * FAULT_STATS_MS while anything changed, and once at exit, one "NAME COUNT" line per function
 * called at least once, then "total COUNT". The counters run from the
 * module's load and are never reset: a test reads them before and after
 * what it measures and takes the difference, after waiting for two equal
 * reads (kmsd idle, the file settled).
 *
 * Build: make builds $(BUILD)/lib/p11_fault.so (also in the ASan build).
 * The wrappers below the rule engine were generated from p11-kit's
 * pkcs11.h (one per entry of CK_FUNCTION_LIST, in its order).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define FAULT_RULES_MAX 32
#define FAULT_CHECK_MS 10
#define FAULT_LINE_MAX 256
#define FAULT_DELAY_MAX_MS 60000
#define FAULT_STATS_MS 20

enum fault_fn {
    F_C_Initialize,
    F_C_Finalize,
    F_C_GetInfo,
    F_C_GetSlotList,
    F_C_GetSlotInfo,
    F_C_GetTokenInfo,
    F_C_GetMechanismList,
    F_C_GetMechanismInfo,
    F_C_InitToken,
    F_C_InitPIN,
    F_C_SetPIN,
    F_C_OpenSession,
    F_C_CloseSession,
    F_C_CloseAllSessions,
    F_C_GetSessionInfo,
    F_C_GetOperationState,
    F_C_SetOperationState,
    F_C_Login,
    F_C_Logout,
    F_C_CreateObject,
    F_C_CopyObject,
    F_C_DestroyObject,
    F_C_GetObjectSize,
    F_C_GetAttributeValue,
    F_C_SetAttributeValue,
    F_C_FindObjectsInit,
    F_C_FindObjects,
    F_C_FindObjectsFinal,
    F_C_EncryptInit,
    F_C_Encrypt,
    F_C_EncryptUpdate,
    F_C_EncryptFinal,
    F_C_DecryptInit,
    F_C_Decrypt,
    F_C_DecryptUpdate,
    F_C_DecryptFinal,
    F_C_DigestInit,
    F_C_Digest,
    F_C_DigestUpdate,
    F_C_DigestKey,
    F_C_DigestFinal,
    F_C_SignInit,
    F_C_Sign,
    F_C_SignUpdate,
    F_C_SignFinal,
    F_C_SignRecoverInit,
    F_C_SignRecover,
    F_C_VerifyInit,
    F_C_Verify,
    F_C_VerifyUpdate,
    F_C_VerifyFinal,
    F_C_VerifyRecoverInit,
    F_C_VerifyRecover,
    F_C_DigestEncryptUpdate,
    F_C_DecryptDigestUpdate,
    F_C_SignEncryptUpdate,
    F_C_DecryptVerifyUpdate,
    F_C_GenerateKey,
    F_C_GenerateKeyPair,
    F_C_WrapKey,
    F_C_UnwrapKey,
    F_C_DeriveKey,
    F_C_SeedRandom,
    F_C_GenerateRandom,
    F_C_GetFunctionStatus,
    F_C_CancelFunction,
    F_C_WaitForSlotEvent,
    F_COUNT
};

static const char *const fn_names[F_COUNT] = {
    [F_C_Initialize] = "C_Initialize",
    [F_C_Finalize] = "C_Finalize",
    [F_C_GetInfo] = "C_GetInfo",
    [F_C_GetSlotList] = "C_GetSlotList",
    [F_C_GetSlotInfo] = "C_GetSlotInfo",
    [F_C_GetTokenInfo] = "C_GetTokenInfo",
    [F_C_GetMechanismList] = "C_GetMechanismList",
    [F_C_GetMechanismInfo] = "C_GetMechanismInfo",
    [F_C_InitToken] = "C_InitToken",
    [F_C_InitPIN] = "C_InitPIN",
    [F_C_SetPIN] = "C_SetPIN",
    [F_C_OpenSession] = "C_OpenSession",
    [F_C_CloseSession] = "C_CloseSession",
    [F_C_CloseAllSessions] = "C_CloseAllSessions",
    [F_C_GetSessionInfo] = "C_GetSessionInfo",
    [F_C_GetOperationState] = "C_GetOperationState",
    [F_C_SetOperationState] = "C_SetOperationState",
    [F_C_Login] = "C_Login",
    [F_C_Logout] = "C_Logout",
    [F_C_CreateObject] = "C_CreateObject",
    [F_C_CopyObject] = "C_CopyObject",
    [F_C_DestroyObject] = "C_DestroyObject",
    [F_C_GetObjectSize] = "C_GetObjectSize",
    [F_C_GetAttributeValue] = "C_GetAttributeValue",
    [F_C_SetAttributeValue] = "C_SetAttributeValue",
    [F_C_FindObjectsInit] = "C_FindObjectsInit",
    [F_C_FindObjects] = "C_FindObjects",
    [F_C_FindObjectsFinal] = "C_FindObjectsFinal",
    [F_C_EncryptInit] = "C_EncryptInit",
    [F_C_Encrypt] = "C_Encrypt",
    [F_C_EncryptUpdate] = "C_EncryptUpdate",
    [F_C_EncryptFinal] = "C_EncryptFinal",
    [F_C_DecryptInit] = "C_DecryptInit",
    [F_C_Decrypt] = "C_Decrypt",
    [F_C_DecryptUpdate] = "C_DecryptUpdate",
    [F_C_DecryptFinal] = "C_DecryptFinal",
    [F_C_DigestInit] = "C_DigestInit",
    [F_C_Digest] = "C_Digest",
    [F_C_DigestUpdate] = "C_DigestUpdate",
    [F_C_DigestKey] = "C_DigestKey",
    [F_C_DigestFinal] = "C_DigestFinal",
    [F_C_SignInit] = "C_SignInit",
    [F_C_Sign] = "C_Sign",
    [F_C_SignUpdate] = "C_SignUpdate",
    [F_C_SignFinal] = "C_SignFinal",
    [F_C_SignRecoverInit] = "C_SignRecoverInit",
    [F_C_SignRecover] = "C_SignRecover",
    [F_C_VerifyInit] = "C_VerifyInit",
    [F_C_Verify] = "C_Verify",
    [F_C_VerifyUpdate] = "C_VerifyUpdate",
    [F_C_VerifyFinal] = "C_VerifyFinal",
    [F_C_VerifyRecoverInit] = "C_VerifyRecoverInit",
    [F_C_VerifyRecover] = "C_VerifyRecover",
    [F_C_DigestEncryptUpdate] = "C_DigestEncryptUpdate",
    [F_C_DecryptDigestUpdate] = "C_DecryptDigestUpdate",
    [F_C_SignEncryptUpdate] = "C_SignEncryptUpdate",
    [F_C_DecryptVerifyUpdate] = "C_DecryptVerifyUpdate",
    [F_C_GenerateKey] = "C_GenerateKey",
    [F_C_GenerateKeyPair] = "C_GenerateKeyPair",
    [F_C_WrapKey] = "C_WrapKey",
    [F_C_UnwrapKey] = "C_UnwrapKey",
    [F_C_DeriveKey] = "C_DeriveKey",
    [F_C_SeedRandom] = "C_SeedRandom",
    [F_C_GenerateRandom] = "C_GenerateRandom",
    [F_C_GetFunctionStatus] = "C_GetFunctionStatus",
    [F_C_CancelFunction] = "C_CancelFunction",
    [F_C_WaitForSlotEvent] = "C_WaitForSlotEvent",
};


static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST_PTR real;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

struct rule {
    int fn; /* enum fault_fn, or -1 for "*" */
    bool fails;
    CK_RV rv;
    unsigned long after, count;
    unsigned delay_ms;
    bool close_all;
    char token[33]; /* token=LABEL: only sessions of this token; "" = any */
    atomic_ulong seen, fired;
};

/* Calls per function since load, and C_FindObjectsInit by CKA_ID. */
static atomic_ulong calls[F_COUNT];
static atomic_ulong finds_by_id;

static struct {
    pthread_rwlock_t lock; /* readers: calls; writer: reload */
    struct rule rules[FAULT_RULES_MAX];
    size_t n;
    /* identity of the file the rules came from */
    struct timespec mtime;
    off_t size;
    ino_t ino;
    bool present;
    atomic_ullong next_check_ms;
} ctl = {.lock = PTHREAD_RWLOCK_INITIALIZER};

static const struct {
    const char *name;
    CK_RV rv;
} rv_names[] = {
    {"CKR_OK", CKR_OK},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

static unsigned long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (unsigned long long)ts.tv_sec * 1000u + (unsigned long long)ts.tv_nsec / 1000000u;
}

static bool parse_num(const char *s, unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_rv(const char *s, CK_RV *out)
{
    for (size_t i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++)
        if (strcmp(s, rv_names[i].name) == 0) {
            *out = rv_names[i].rv;
            return true;
        }
    unsigned long v;
    if (strncmp(s, "0x", 2) == 0 && parse_num(s, 0xffffffffUL, &v)) {
        *out = v;
        return true;
    }
    return false;
}

/* One line into r; false (with a reason in why) when it does not parse. */
static bool parse_rule(char *line, struct rule *r, const char **why)
{
    memset(r, 0, sizeof(*r));
    char *save = NULL;
    char *tok = strtok_r(line, " \t", &save);
    if (strcmp(tok, "*") == 0) {
        r->fn = -1;
    } else {
        r->fn = F_COUNT;
        for (int i = 0; i < F_COUNT; i++)
            if (strcmp(tok, fn_names[i]) == 0)
                r->fn = i;
        if (r->fn == F_COUNT) {
            *why = "unknown function";
            return false;
        }
    }
    while ((tok = strtok_r(NULL, " \t", &save)) != NULL) {
        unsigned long v;
        if (strncmp(tok, "after=", 6) == 0 && parse_num(tok + 6, ~0UL, &v))
            r->after = v;
        else if (strncmp(tok, "count=", 6) == 0 && parse_num(tok + 6, ~0UL, &v))
            r->count = v;
        else if (strncmp(tok, "delay_ms=", 9) == 0 && parse_num(tok + 9, FAULT_DELAY_MAX_MS, &v))
            r->delay_ms = (unsigned)v;
        else if (strcmp(tok, "close_all") == 0)
            r->close_all = true;
        else if (strncmp(tok, "token=", 6) == 0 && tok[6] != '\0' && strlen(tok + 6) < 33)
            memcpy(r->token, tok + 6, strlen(tok + 6) + 1);
        else if (!r->fails && parse_rv(tok, &r->rv))
            r->fails = r->rv != CKR_OK;
        else {
            *why = "bad word (want CKR_NAME, 0xHEX, after=, count=, delay_ms=, token=)";
            return false;
        }
    }
    if (!r->fails && r->delay_ms == 0) {
        *why = "neither a CKR_ value nor a delay";
        return false;
    }
    if (r->close_all && !r->fails) {
        *why = "close_all needs a CKR_ value";
        return false;
    }
    return true;
}

/* Called with the write lock. */
static void load_rules(const char *path)
{
    ctl.n = 0;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    char line[FAULT_LINE_MAX];
    unsigned lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        char *p = line + strspn(line, " \t");
        if (*p == '\0' || *p == '#')
            continue;
        const char *why = NULL;
        if (ctl.n == FAULT_RULES_MAX) {
            fprintf(stderr, "p11_fault: %s:%u: more than %d rules; ignored\n", path, lineno,
                    FAULT_RULES_MAX);
            break;
        }
        if (parse_rule(p, &ctl.rules[ctl.n], &why))
            ctl.n++;
        else
            fprintf(stderr, "p11_fault: %s:%u: %s; line ignored\n", path, lineno, why);
    }
    fclose(f);
}

static void maybe_reload(void)
{
    unsigned long long now = now_ms();
    if (now < atomic_load_explicit(&ctl.next_check_ms, memory_order_relaxed))
        return;
    atomic_store_explicit(&ctl.next_check_ms, now + FAULT_CHECK_MS, memory_order_relaxed);
    const char *path = getenv("CUSTOS_P11FAULT_CONTROL");
    if (path == NULL || *path == '\0')
        return;
    struct stat st;
    bool present = stat(path, &st) == 0;
    pthread_rwlock_wrlock(&ctl.lock);
    bool changed = present != ctl.present ||
                   (present && (st.st_mtim.tv_sec != ctl.mtime.tv_sec ||
                                st.st_mtim.tv_nsec != ctl.mtime.tv_nsec ||
                                st.st_size != ctl.size || st.st_ino != ctl.ino));
    if (changed) {
        ctl.present = present;
        if (present) {
            ctl.mtime = st.st_mtim;
            ctl.size = st.st_size;
            ctl.ino = st.st_ino;
            load_rules(path);
        } else {
            ctl.n = 0;
        }
    }
    pthread_rwlock_unlock(&ctl.lock);
}

/* Whether session belongs to the token labelled label (blank-padded in
 * CK_TOKEN_INFO). Asks the real module: only rules with token= pay. */
static bool session_on_token(CK_SESSION_HANDLE session, const char *label)
{
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    if (session == CK_INVALID_HANDLE || real->C_GetSessionInfo(session, &si) != CKR_OK ||
        real->C_GetTokenInfo(si.slotID, &ti) != CKR_OK)
        return false;
    size_t n = strlen(label);
    if (n > sizeof(ti.label) || memcmp(ti.label, label, n) != 0)
        return false;
    for (size_t i = n; i < sizeof(ti.label); i++)
        if (ti.label[i] != ' ')
            return false;
    return true;
}

/* True (with *out set) when this call of fn must fail. session: the call's
 * session, or CK_INVALID_HANDLE when fn takes none (close_all needs it). */
static bool fault_s(enum fault_fn fn, CK_SESSION_HANDLE session, CK_RV *out)
{
    atomic_fetch_add_explicit(&calls[fn], 1, memory_order_relaxed);
    maybe_reload();
    bool close_all = false;
    bool library_level = fn == F_C_Initialize || fn == F_C_Finalize || fn == F_C_GetInfo;
    unsigned delay = 0;
    bool fails = false;
    pthread_rwlock_rdlock(&ctl.lock);
    for (size_t i = 0; i < ctl.n && !fails; i++) {
        struct rule *r = &ctl.rules[i];
        if (!(r->fn == (int)fn || (r->fn == -1 && !library_level)))
            continue;
        if (r->token[0] && !session_on_token(session, r->token))
            continue;
        unsigned long n = atomic_fetch_add(&r->seen, 1) + 1;
        if (n <= r->after)
            continue;
        if (r->count != 0 && atomic_fetch_add(&r->fired, 1) >= r->count)
            continue;
        delay += r->delay_ms;
        if (r->fails) {
            fails = true;
            close_all = r->close_all;
            *out = r->rv;
        }
    }
    pthread_rwlock_unlock(&ctl.lock);
    if (delay > 0)
        usleep((useconds_t)delay * 1000u);
    if (close_all && session != CK_INVALID_HANDLE) {
        CK_SESSION_INFO si;
        if (real->C_GetSessionInfo(session, &si) == CKR_OK)
            real->C_CloseAllSessions(si.slotID);
    }
    return fails;
}

static bool fault(enum fault_fn fn, CK_RV *out)
{
    return fault_s(fn, CK_INVALID_HANDLE, out);
}


/* One forwarding wrapper: the fault rules first, then the real module. */
#define FWD(fn, params, args)                                                                  \
    static CK_RV f_##fn params                                                                 \
    {                                                                                          \
        CK_RV rv;                                                                              \
        if (fault(F_##fn, &rv))                                                                \
            return rv;                                                                         \
        return real->fn args;                                                                  \
    }
/* The same for functions whose first argument is a session (close_all). */
#define FWD_S(fn, params, args)                                                                \
    static CK_RV f_##fn params                                                                 \
    {                                                                                          \
        CK_RV rv;                                                                              \
        if (fault_s(F_##fn, session, &rv))                                                     \
            return rv;                                                                         \
        return real->fn args;                                                                  \
    }
FWD(C_Initialize, (void *init_args), (init_args))
FWD(C_Finalize, (void *reserved), (reserved))
FWD(C_GetInfo, (CK_INFO *info), (info))
FWD(C_GetSlotList, (unsigned char token_present, CK_SLOT_ID *slot_list, unsigned long *count), (token_present, slot_list, count))
FWD(C_GetSlotInfo, (CK_SLOT_ID slot_id, CK_SLOT_INFO *info), (slot_id, info))
FWD(C_GetTokenInfo, (CK_SLOT_ID slot_id, CK_TOKEN_INFO *info), (slot_id, info))
FWD(C_GetMechanismList, (CK_SLOT_ID slot_id, CK_MECHANISM_TYPE *mechanism_list, unsigned long *count), (slot_id, mechanism_list, count))
FWD(C_GetMechanismInfo, (CK_SLOT_ID slot_id, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info), (slot_id, type, info))
FWD(C_InitToken, (CK_SLOT_ID slot_id, unsigned char *pin, unsigned long pin_len, unsigned char *label), (slot_id, pin, pin_len, label))
FWD_S(C_InitPIN, (CK_SESSION_HANDLE session, unsigned char *pin, unsigned long pin_len), (session, pin, pin_len))
FWD_S(C_SetPIN, (CK_SESSION_HANDLE session, unsigned char *old_pin, unsigned long old_len, unsigned char *new_pin, unsigned long new_len), (session, old_pin, old_len, new_pin, new_len))
FWD(C_OpenSession, (CK_SLOT_ID slot_id, CK_FLAGS flags, void *application, CK_NOTIFY notify, CK_SESSION_HANDLE *session), (slot_id, flags, application, notify, session))
FWD_S(C_CloseSession, (CK_SESSION_HANDLE session), (session))
FWD(C_CloseAllSessions, (CK_SLOT_ID slot_id), (slot_id))
FWD_S(C_GetSessionInfo, (CK_SESSION_HANDLE session, CK_SESSION_INFO *info), (session, info))
FWD_S(C_GetOperationState, (CK_SESSION_HANDLE session, unsigned char *operation_state, unsigned long *operation_state_len), (session, operation_state, operation_state_len))
FWD_S(C_SetOperationState, (CK_SESSION_HANDLE session, unsigned char *operation_state, unsigned long operation_state_len, CK_OBJECT_HANDLE encryption_key, CK_OBJECT_HANDLE authentiation_key), (session, operation_state, operation_state_len, encryption_key, authentiation_key))
FWD_S(C_Login, (CK_SESSION_HANDLE session, CK_USER_TYPE user_type, unsigned char *pin, unsigned long pin_len), (session, user_type, pin, pin_len))
FWD_S(C_Logout, (CK_SESSION_HANDLE session), (session))
FWD_S(C_CreateObject, (CK_SESSION_HANDLE session, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *object), (session, templ, count, object))
FWD_S(C_CopyObject, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *new_object), (session, object, templ, count, new_object))
FWD_S(C_DestroyObject, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object), (session, object))
FWD_S(C_GetObjectSize, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, unsigned long *size), (session, object, size))
FWD_S(C_GetAttributeValue, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE *templ, unsigned long count), (session, object, templ, count))
FWD_S(C_SetAttributeValue, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE *templ, unsigned long count), (session, object, templ, count))
/* Counted apart when the template names CKA_ID: the lookup of a key by its
 * id, what kmsd does after its handle cache was cleared. */
static CK_RV f_C_FindObjectsInit(CK_SESSION_HANDLE session, CK_ATTRIBUTE *templ, unsigned long count)
{
    for (unsigned long i = 0; templ != NULL && i < count; i++)
        if (templ[i].type == CKA_ID) {
            atomic_fetch_add_explicit(&finds_by_id, 1, memory_order_relaxed);
            break;
        }
    CK_RV rv;
    if (fault_s(F_C_FindObjectsInit, session, &rv))
        return rv;
    return real->C_FindObjectsInit(session, templ, count);
}
FWD_S(C_FindObjects, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *object, unsigned long max_object_count, unsigned long *object_count), (session, object, max_object_count, object_count))
FWD_S(C_FindObjectsFinal, (CK_SESSION_HANDLE session), (session))
FWD_S(C_EncryptInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_Encrypt, (CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *encrypted_data, unsigned long *encrypted_data_len), (session, data, data_len, encrypted_data, encrypted_data_len))
FWD_S(C_EncryptUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len), (session, part, part_len, encrypted_part, encrypted_part_len))
FWD_S(C_EncryptFinal, (CK_SESSION_HANDLE session, unsigned char *last_encrypted_part, unsigned long *last_encrypted_part_len), (session, last_encrypted_part, last_encrypted_part_len))
FWD_S(C_DecryptInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_Decrypt, (CK_SESSION_HANDLE session, unsigned char *encrypted_data, unsigned long encrypted_data_len, unsigned char *data, unsigned long *data_len), (session, encrypted_data, encrypted_data_len, data, data_len))
FWD_S(C_DecryptUpdate, (CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len), (session, encrypted_part, encrypted_part_len, part, part_len))
FWD_S(C_DecryptFinal, (CK_SESSION_HANDLE session, unsigned char *last_part, unsigned long *last_part_len), (session, last_part, last_part_len))
FWD_S(C_DigestInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism), (session, mechanism))
FWD_S(C_Digest, (CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *digest, unsigned long *digest_len), (session, data, data_len, digest, digest_len))
FWD_S(C_DigestUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len), (session, part, part_len))
FWD_S(C_DigestKey, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key), (session, key))
FWD_S(C_DigestFinal, (CK_SESSION_HANDLE session, unsigned char *digest, unsigned long *digest_len), (session, digest, digest_len))
FWD_S(C_SignInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_Sign, (CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long *signature_len), (session, data, data_len, signature, signature_len))
FWD_S(C_SignUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len), (session, part, part_len))
FWD_S(C_SignFinal, (CK_SESSION_HANDLE session, unsigned char *signature, unsigned long *signature_len), (session, signature, signature_len))
FWD_S(C_SignRecoverInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_SignRecover, (CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long *signature_len), (session, data, data_len, signature, signature_len))
FWD_S(C_VerifyInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_Verify, (CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len, unsigned char *signature, unsigned long signature_len), (session, data, data_len, signature, signature_len))
FWD_S(C_VerifyUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len), (session, part, part_len))
FWD_S(C_VerifyFinal, (CK_SESSION_HANDLE session, unsigned char *signature, unsigned long signature_len), (session, signature, signature_len))
FWD_S(C_VerifyRecoverInit, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))
FWD_S(C_VerifyRecover, (CK_SESSION_HANDLE session, unsigned char *signature, unsigned long signature_len, unsigned char *data, unsigned long *data_len), (session, signature, signature_len, data, data_len))
FWD_S(C_DigestEncryptUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len), (session, part, part_len, encrypted_part, encrypted_part_len))
FWD_S(C_DecryptDigestUpdate, (CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len), (session, encrypted_part, encrypted_part_len, part, part_len))
FWD_S(C_SignEncryptUpdate, (CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len, unsigned char *encrypted_part, unsigned long *encrypted_part_len), (session, part, part_len, encrypted_part, encrypted_part_len))
FWD_S(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE session, unsigned char *encrypted_part, unsigned long encrypted_part_len, unsigned char *part, unsigned long *part_len), (session, encrypted_part, encrypted_part_len, part, part_len))
FWD_S(C_GenerateKey, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *key), (session, mechanism, templ, count, key))
FWD_S(C_GenerateKeyPair, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_ATTRIBUTE *public_key_template, unsigned long public_key_attribute_count, CK_ATTRIBUTE *private_key_template, unsigned long private_key_attribute_count, CK_OBJECT_HANDLE *public_key, CK_OBJECT_HANDLE *private_key), (session, mechanism, public_key_template, public_key_attribute_count, private_key_template, private_key_attribute_count, public_key, private_key))
FWD_S(C_WrapKey, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key, unsigned char *wrapped_key, unsigned long *wrapped_key_len), (session, mechanism, wrapping_key, key, wrapped_key, wrapped_key_len))
FWD_S(C_UnwrapKey, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE unwrapping_key, unsigned char *wrapped_key, unsigned long wrapped_key_len, CK_ATTRIBUTE *templ, unsigned long attribute_count, CK_OBJECT_HANDLE *key), (session, mechanism, unwrapping_key, wrapped_key, wrapped_key_len, templ, attribute_count, key))
FWD_S(C_DeriveKey, (CK_SESSION_HANDLE session, CK_MECHANISM *mechanism, CK_OBJECT_HANDLE base_key, CK_ATTRIBUTE *templ, unsigned long attribute_count, CK_OBJECT_HANDLE *key), (session, mechanism, base_key, templ, attribute_count, key))
FWD_S(C_SeedRandom, (CK_SESSION_HANDLE session, unsigned char *seed, unsigned long seed_len), (session, seed, seed_len))
FWD_S(C_GenerateRandom, (CK_SESSION_HANDLE session, unsigned char *random_data, unsigned long random_len), (session, random_data, random_len))
FWD_S(C_GetFunctionStatus, (CK_SESSION_HANDLE session), (session))
FWD_S(C_CancelFunction, (CK_SESSION_HANDLE session), (session))
FWD(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID *slot, void *reserved), (flags, slot, reserved))

static void install(void)
{
    shim.C_Initialize = f_C_Initialize;
    shim.C_Finalize = f_C_Finalize;
    shim.C_GetInfo = f_C_GetInfo;
    shim.C_GetSlotList = f_C_GetSlotList;
    shim.C_GetSlotInfo = f_C_GetSlotInfo;
    shim.C_GetTokenInfo = f_C_GetTokenInfo;
    shim.C_GetMechanismList = f_C_GetMechanismList;
    shim.C_GetMechanismInfo = f_C_GetMechanismInfo;
    shim.C_InitToken = f_C_InitToken;
    shim.C_InitPIN = f_C_InitPIN;
    shim.C_SetPIN = f_C_SetPIN;
    shim.C_OpenSession = f_C_OpenSession;
    shim.C_CloseSession = f_C_CloseSession;
    shim.C_CloseAllSessions = f_C_CloseAllSessions;
    shim.C_GetSessionInfo = f_C_GetSessionInfo;
    shim.C_GetOperationState = f_C_GetOperationState;
    shim.C_SetOperationState = f_C_SetOperationState;
    shim.C_Login = f_C_Login;
    shim.C_Logout = f_C_Logout;
    shim.C_CreateObject = f_C_CreateObject;
    shim.C_CopyObject = f_C_CopyObject;
    shim.C_DestroyObject = f_C_DestroyObject;
    shim.C_GetObjectSize = f_C_GetObjectSize;
    shim.C_GetAttributeValue = f_C_GetAttributeValue;
    shim.C_SetAttributeValue = f_C_SetAttributeValue;
    shim.C_FindObjectsInit = f_C_FindObjectsInit;
    shim.C_FindObjects = f_C_FindObjects;
    shim.C_FindObjectsFinal = f_C_FindObjectsFinal;
    shim.C_EncryptInit = f_C_EncryptInit;
    shim.C_Encrypt = f_C_Encrypt;
    shim.C_EncryptUpdate = f_C_EncryptUpdate;
    shim.C_EncryptFinal = f_C_EncryptFinal;
    shim.C_DecryptInit = f_C_DecryptInit;
    shim.C_Decrypt = f_C_Decrypt;
    shim.C_DecryptUpdate = f_C_DecryptUpdate;
    shim.C_DecryptFinal = f_C_DecryptFinal;
    shim.C_DigestInit = f_C_DigestInit;
    shim.C_Digest = f_C_Digest;
    shim.C_DigestUpdate = f_C_DigestUpdate;
    shim.C_DigestKey = f_C_DigestKey;
    shim.C_DigestFinal = f_C_DigestFinal;
    shim.C_SignInit = f_C_SignInit;
    shim.C_Sign = f_C_Sign;
    shim.C_SignUpdate = f_C_SignUpdate;
    shim.C_SignFinal = f_C_SignFinal;
    shim.C_SignRecoverInit = f_C_SignRecoverInit;
    shim.C_SignRecover = f_C_SignRecover;
    shim.C_VerifyInit = f_C_VerifyInit;
    shim.C_Verify = f_C_Verify;
    shim.C_VerifyUpdate = f_C_VerifyUpdate;
    shim.C_VerifyFinal = f_C_VerifyFinal;
    shim.C_VerifyRecoverInit = f_C_VerifyRecoverInit;
    shim.C_VerifyRecover = f_C_VerifyRecover;
    shim.C_DigestEncryptUpdate = f_C_DigestEncryptUpdate;
    shim.C_DecryptDigestUpdate = f_C_DecryptDigestUpdate;
    shim.C_SignEncryptUpdate = f_C_SignEncryptUpdate;
    shim.C_DecryptVerifyUpdate = f_C_DecryptVerifyUpdate;
    shim.C_GenerateKey = f_C_GenerateKey;
    shim.C_GenerateKeyPair = f_C_GenerateKeyPair;
    shim.C_WrapKey = f_C_WrapKey;
    shim.C_UnwrapKey = f_C_UnwrapKey;
    shim.C_DeriveKey = f_C_DeriveKey;
    shim.C_SeedRandom = f_C_SeedRandom;
    shim.C_GenerateRandom = f_C_GenerateRandom;
    shim.C_GetFunctionStatus = f_C_GetFunctionStatus;
    shim.C_CancelFunction = f_C_CancelFunction;
    shim.C_WaitForSlotEvent = f_C_WaitForSlotEvent;
}

/* The stats file: "NAME COUNT" per function called, then "total COUNT".
 * Serialised: the thread and the exit-time write share PATH.tmp. */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;

static void write_stats_locked(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return;
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return;
    unsigned long total = 0;
    for (int i = 0; i < F_COUNT; i++) {
        unsigned long n = atomic_load_explicit(&calls[i], memory_order_relaxed);
        total += n;
        if (n > 0)
            fprintf(f, "%s %lu\n", fn_names[i], n);
    }
    fprintf(f, "C_FindObjectsInit+CKA_ID %lu\ntotal %lu\n",
            atomic_load_explicit(&finds_by_id, memory_order_relaxed), total);
    if (fclose(f) == 0)
        rename(tmp, path);
}

static void write_stats(const char *path)
{
    pthread_mutex_lock(&stats_lock);
    write_stats_locked(path);
    pthread_mutex_unlock(&stats_lock);
}

static void *stats_main(void *arg)
{
    const char *path = arg;
    unsigned long last = ~0UL;
    for (;;) {
        unsigned long total = atomic_load_explicit(&finds_by_id, memory_order_relaxed);
        for (int i = 0; i < F_COUNT; i++)
            total += atomic_load_explicit(&calls[i], memory_order_relaxed);
        if (total != last) {
            write_stats(path);
            last = total;
        }
        usleep(FAULT_STATS_MS * 1000u);
    }
    return NULL;
}

/* One last write at exit, so a process that stops quickly (a start-up
 * refused) still leaves its counts. */
__attribute__((destructor)) static void stats_at_exit(void)
{
    const char *path = getenv("CUSTOS_P11FAULT_STATS");
    if (path != NULL && *path != '\0' && real != NULL)
        write_stats(path);
}

/* Started once, with the module: a detached thread that lives as long as
 * the process (the shim is never unloaded while kmsd runs). */
static void start_stats(void)
{
    const char *path = getenv("CUSTOS_P11FAULT_STATS");
    if (path == NULL || *path == '\0')
        return;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, stats_main, (void *)path) != 0)
        fprintf(stderr, "p11_fault: cannot start the stats thread\n");
    pthread_attr_destroy(&a);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&init_lock);
    if (real == NULL) {
        const char *path = getenv("CUSTOS_P11FAULT_MODULE");
        void *h = dlopen(path && *path ? path : "/usr/lib/softhsm/libsofthsm2.so",
                         RTLD_NOW | RTLD_LOCAL);
        CK_C_GetFunctionList get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
        if (get == NULL || get(&real) != CKR_OK || real == NULL) {
            fprintf(stderr, "p11_fault: cannot load the real module: %s\n",
                    h ? "no C_GetFunctionList" : dlerror());
            real = NULL;
            rv = CKR_GENERAL_ERROR;
        } else {
            shim = *real;
            shim.C_GetFunctionList = C_GetFunctionList;
            install();
            start_stats();
        }
    }
    pthread_mutex_unlock(&init_lock);
    if (rv == CKR_OK)
        *out = &shim;
    return rv;
}
