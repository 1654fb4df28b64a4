/*
 * p11_module.c - dlopen a PKCS#11 module, initialise it, list and init tokens.
 */
#include "p11_module.h"

#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "kms_log.h"
#include "p11_internal.h"

/* PKCS#11 3.0 interface discovery. p11-kit 0.24's header predates 3.0, so the
 * two types are spelled out here exactly as the 3.0 specification has them.
 * The 3.0 function list begins with the same members, in the same order, as
 * the 2.x list, so it can be used through CK_FUNCTION_LIST. */
struct p11_interface {
    CK_UTF8CHAR *name;
    void *function_list;
    CK_FLAGS flags;
};
typedef CK_RV (*p11_get_interface_fn)(CK_UTF8CHAR *name, CK_VERSION *version,
                                      struct p11_interface **out, CK_FLAGS flags);

struct p11_module {
    void *dl;
    CK_FUNCTION_LIST_PTR fl;
    char *path;
    char *init_args; /* pReserved of C_Initialize; NULL: none */
    bool owns_init; /* false when someone in the process initialised it first */
    bool initialized; /* false after a re-initialisation whose C_Initialize failed */

    /* The open tokens of this module, for p11_module_recover. reg_lock
     * guards the list and is held for a whole recovery, so no token is freed
     * under it; reinit_lock lets one recovery run at a time. */
    pthread_mutex_t reg_lock;
    pthread_mutex_t reinit_lock;
    struct p11_token **toks;
    size_t n_toks, cap_toks;
    struct timespec next_reinit; /* CLOCK_MONOTONIC; zero: any time */
    unsigned backoff_s;
};

CK_FUNCTION_LIST_PTR p11_module_fl(const struct p11_module *mod)
{
    return mod->fl;
}

const char *p11_module_path(const struct p11_module *mod)
{
    return mod->path;
}

const char *p11_module_args(const struct p11_module *mod)
{
    return mod->init_args;
}

/* Does the parameter name s[0..n) mention a secret? */
static bool secret_name(const char *s, size_t n)
{
    static const char *const words[] = {"pin", "pass", "secret"};
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= n; i++)
            if (strncasecmp(s + i, words[w], wl) == 0)
                return true;
    }
    return false;
}

kms_err p11_module_args_check(const char *a)
{
    if (a == NULL || *a == '\0')
        return KMS_OK;
    size_t len = strnlen(a, P11_MODULE_ARGS_MAX + 1);
    KMS_ENSURE(len <= P11_MODULE_ARGS_MAX, KMS_ERR_CONFIG,
               "PKCS#11 module arguments: longer than %d bytes", P11_MODULE_ARGS_MAX);
    for (size_t i = 0; i < len; i++)
        KMS_ENSURE(!iscntrl((unsigned char)a[i]), KMS_ERR_CONFIG,
                   "PKCS#11 module arguments: control character at byte %zu", i);
    /* Every "name=" of the string, at any nesting depth (NSS nests
     * tokens=<0x4=[configdir=... ]>): the name is the run of letters,
     * digits, '-' and '_' before '='. Quoted values are skipped, so a path
     * that happens to contain "pin" is not a parameter name. */
    char quote = 0;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = a[i];
        if (quote) {
            if (ch == quote)
                quote = 0;
            start = i + 1;
            continue;
        }
        if (ch == '\'' || ch == '"') {
            quote = ch;
            continue;
        }
        if (ch == '=') {
            KMS_ENSURE(!secret_name(a + start, i - start), KMS_ERR_CONFIG,
                       "PKCS#11 module arguments: parameter '%.*s' would put a secret in "
                       "the configuration; give PINs through the token's pin source",
                       (int)(i - start > 64 ? 64 : i - start), a + start);
            start = i + 1;
            continue;
        }
        if (!(isalnum((unsigned char)ch) || ch == '-' || ch == '_'))
            start = i + 1;
    }
    return KMS_OK;
}

void p11_str_from_field(char *dst, size_t dst_len, const CK_UTF8CHAR *src, size_t src_len)
{
    size_t n = src_len;
    while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
        n--;
    if (n >= dst_len)
        n = dst_len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static kms_err resolve_function_list(struct p11_module *mod)
{
    p11_get_interface_fn get_interface = (p11_get_interface_fn)dlsym(mod->dl, "C_GetInterface");
    if (get_interface != NULL) {
        struct p11_interface *iface = NULL;
        CK_RV rv = get_interface((CK_UTF8CHAR *)"PKCS 11", NULL, &iface, 0);
        if (rv == CKR_OK && iface != NULL && iface->function_list != NULL) {
            mod->fl = iface->function_list;
            return KMS_OK;
        }
        kms_log_info("pkcs11", "%s: C_GetInterface returned %s, using C_GetFunctionList",
                     mod->path, p11_rv_name(rv));
    }
    CK_C_GetFunctionList get_list = (CK_C_GetFunctionList)dlsym(mod->dl, "C_GetFunctionList");
    KMS_ENSURE(get_list != NULL, KMS_ERR_CONFIG,
               "%s: neither C_GetInterface nor C_GetFunctionList is exported", mod->path);
    CK_RV rv = get_list(&mod->fl);
    if (rv != CKR_OK || mod->fl == NULL)
        return p11_rv_err(rv == CKR_OK ? CKR_GENERAL_ERROR : rv, "C_GetFunctionList", mod->path);
    return KMS_OK;
}

/* C_Initialize's arguments: OS locking, and the module's string if any. */
static void init_args_fill(const struct p11_module *mod, CK_C_INITIALIZE_ARGS *args)
{
    memset(args, 0, sizeof(*args));
    args->flags = CKF_OS_LOCKING_OK;
    args->pReserved = mod->init_args;
}

kms_err p11_module_load(const char *path, struct p11_module **out_mod)
{
    return p11_module_load_args(path, NULL, out_mod);
}

kms_err p11_module_load_args(const char *path, const char *init_args, struct p11_module **out_mod)
{
    kms_err rc = KMS_OK;
    *out_mod = NULL;
    KMS_ENSURE(path != NULL && *path, KMS_ERR_CONFIG, "no PKCS#11 module path configured");
    KMS_GUARD(p11_module_args_check(init_args));

    struct p11_module *mod = calloc(1, sizeof(*mod));
    KMS_ENSURE(mod != NULL, KMS_ERR_NOMEM, "out of memory");
    mod->path = strdup(path);
    KMS_ENSURE_GOTO(mod->path != NULL, fail, KMS_ERR_NOMEM, "out of memory");
    if (init_args != NULL && *init_args) {
        mod->init_args = strdup(init_args);
        KMS_ENSURE_GOTO(mod->init_args != NULL, fail, KMS_ERR_NOMEM, "out of memory");
    }

    /* RTLD_LOCAL keeps the module's symbols (often a private OpenSSL) from
     * interposing on ours. */
    mod->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    KMS_ENSURE_GOTO(mod->dl != NULL, fail, KMS_ERR_CONFIG, "cannot load PKCS#11 module: %s",
                    dlerror());
    KMS_GUARD_GOTO(resolve_function_list(mod), fail);

    CK_C_INITIALIZE_ARGS args;
    init_args_fill(mod, &args);
    /* Through the wrapper like every other call, though no token exists yet
     * to time it for. C_GetInterface / C_GetFunctionList above cannot be:
     * they are how the function list is found. */
    CK_RV rv = P11_MOD_RV(mod, C_Initialize, &args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        /* Another part of the process owns the initialisation; share it and
         * leave C_Finalize to its owner. */
        kms_log_info("pkcs11", "%s was already initialised in this process", path);
        rv = CKR_OK;
    } else if (rv == CKR_OK) {
        mod->owns_init = true;
    }
    if (rv != CKR_OK) {
        rc = p11_rv_err(rv, "C_Initialize", path);
        /* CKR_ARGUMENTS_BAD is what a module says to arguments it does not
         * take (a string for another module), or NSS's softoken to none. */
        if (rv == CKR_ARGUMENTS_BAD) {
            char why[256];
            snprintf(why, sizeof(why), "%s", kms_err_detail());
            rc = kms_err_set(KMS_ERR_CONFIG, "%s; %s", why,
                             mod->init_args ? "does this module take initialisation arguments "
                                              "(pkcs11.module_args)?"
                                            : "this module may need initialisation arguments "
                                              "(pkcs11.module_args)");
        }
        goto fail;
    }
    mod->initialized = true;
    mod->backoff_s = P11_REINIT_MIN_S;
    pthread_mutex_init(&mod->reg_lock, NULL);
    pthread_mutex_init(&mod->reinit_lock, NULL);
    *out_mod = mod;
    return KMS_OK;

fail:
    if (mod->dl)
        dlclose(mod->dl);
    free(mod->init_args);
    free(mod->path);
    free(mod);
    return rc;
}

void p11_module_free(struct p11_module *mod)
{
    if (mod == NULL)
        return;
    if (mod->owns_init && mod->initialized)
        P11_MOD_RV(mod, C_Finalize, NULL);
    pthread_mutex_destroy(&mod->reg_lock);
    pthread_mutex_destroy(&mod->reinit_lock);
    free(mod->toks);
    /* SoftHSMv2 and others register atexit handlers and thread-local state;
     * unloading them while the process lives is a known source of crashes at
     * exit, so the library stays mapped. */
    free(mod->init_args);
    free(mod->path);
    free(mod);
}

/* ---- recovery by re-initialisation (p11_internal.h) ---------------- */

void p11_module_add_token(struct p11_module *mod, struct p11_token *tok)
{
    pthread_mutex_lock(&mod->reg_lock);
    if (mod->n_toks == mod->cap_toks) {
        size_t cap = mod->cap_toks ? mod->cap_toks * 2 : 4;
        struct p11_token **t = realloc(mod->toks, cap * sizeof(*t));
        if (t == NULL) {
            /* Not fatal: the token is served, only never recovered by a
             * re-initialisation (a restart still does). */
            kms_log_warn("pkcs11", "token '%s': out of memory registering it for recovery",
                         tok->label);
            pthread_mutex_unlock(&mod->reg_lock);
            return;
        }
        mod->toks = t;
        mod->cap_toks = cap;
    }
    mod->toks[mod->n_toks++] = tok;
    pthread_mutex_unlock(&mod->reg_lock);
}

void p11_module_remove_token(struct p11_module *mod, struct p11_token *tok)
{
    pthread_mutex_lock(&mod->reg_lock);
    for (size_t i = 0; i < mod->n_toks; i++) {
        if (mod->toks[i] == tok) {
            mod->toks[i] = mod->toks[--mod->n_toks];
            break;
        }
    }
    pthread_mutex_unlock(&mod->reg_lock);
}

kms_err p11_module_reinit_library(struct p11_module *mod)
{
    if (mod->initialized)
        P11_MOD_RV(mod, C_Finalize, NULL);
    mod->initialized = false;
    CK_C_INITIALIZE_ARGS args;
    init_args_fill(mod, &args);
    CK_RV rv = P11_MOD_RV(mod, C_Initialize, &args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return p11_rv_err(rv, "C_Initialize", mod->path);
    mod->initialized = true;
    return KMS_OK;
}

static bool ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

bool p11_module_recover(struct p11_module *mod, struct p11_token *trigger)
{
    if (!mod->owns_init || pthread_mutex_trylock(&mod->reinit_lock) != 0)
        return false;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (ts_before(&now, &mod->next_reinit)) {
        pthread_mutex_unlock(&mod->reinit_lock);
        return false;
    }
    pthread_mutex_lock(&mod->reg_lock);
    for (size_t i = 0; i < mod->n_toks; i++)
        p11_pool_freeze(mod->toks[i]->pool);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += P11_REINIT_DRAIN_S;
    bool drained = true;
    for (size_t i = 0; i < mod->n_toks && drained; i++)
        drained = p11_pool_wait_drained(mod->toks[i]->pool, &deadline);
    bool ran = false;
    if (!drained) {
        kms_log_warn("pkcs11", "token '%s' (region %s) does not answer; re-initialising %s "
                     "to recover it was put off: sessions stayed in use for %d s",
                     trigger->label, trigger->region, mod->path, P11_REINIT_DRAIN_S);
    } else {
        for (size_t i = 0; i < mod->n_toks; i++)
            p11_token_forget_sessions(mod->toks[i]);
        kms_err rc = p11_module_reinit_library(mod);
        if (rc == KMS_OK) {
            for (size_t i = 0; i < mod->n_toks; i++)
                p11_token_reresolve(mod->toks[i]);
        } else {
            for (size_t i = 0; i < mod->n_toks; i++)
                p11_token_mark_unavailable(mod->toks[i]);
        }
        bool back = rc == KMS_OK && !atomic_load(&trigger->unavailable);
        kms_log_info("pkcs11", "re-initialised %s to recover token '%s' (region %s): %s",
                     mod->path, trigger->label, trigger->region,
                     back ? "the token answers again"
                          : rc != KMS_OK ? "C_Initialize failed; will try again"
                                         : "the token is still away; will try again");
        ran = true;
        mod->backoff_s = back ? P11_REINIT_MIN_S
                              : (mod->backoff_s * 2 > P11_REINIT_MAX_S ? P11_REINIT_MAX_S
                                                                       : mod->backoff_s * 2);
    }
    for (size_t i = 0; i < mod->n_toks; i++)
        p11_pool_thaw(mod->toks[i]->pool);
    pthread_mutex_unlock(&mod->reg_lock);
    clock_gettime(CLOCK_MONOTONIC, &mod->next_reinit);
    mod->next_reinit.tv_sec += mod->backoff_s;
    pthread_mutex_unlock(&mod->reinit_lock);
    return ran;
}

static kms_err slot_list(struct p11_module *mod, CK_SLOT_ID **out, CK_ULONG *out_n)
{
    CK_ULONG n = 0;
    *out = NULL;
    *out_n = 0;
    CK_RV rv = P11_MOD_RV(mod, C_GetSlotList, CK_TRUE, NULL, &n);
    KMS_GUARD(p11_rv_err(rv, "C_GetSlotList", mod->path));
    if (n == 0)
        return KMS_OK;
    CK_SLOT_ID *slots = calloc(n, sizeof(*slots));
    KMS_ENSURE(slots != NULL, KMS_ERR_NOMEM, "out of memory");
    rv = P11_MOD_RV(mod, C_GetSlotList, CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        free(slots);
        return p11_rv_err(rv, "C_GetSlotList", mod->path);
    }
    *out = slots;
    *out_n = n;
    return KMS_OK;
}

/* Find the slot whose initialised token carries label; KMS_ERR_NOT_FOUND if
 * none. Also reports the first uninitialised slot through out_free. */
static kms_err find_label(struct p11_module *mod, const char *label, CK_SLOT_ID *out_slot,
                          bool *out_free_found, CK_SLOT_ID *out_free)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    bool found = false;
    *out_free_found = false;
    KMS_GUARD(slot_list(mod, &slots, &n));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (P11_MOD_RV(mod, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
            if (!*out_free_found) {
                *out_free_found = true;
                *out_free = slots[i];
            }
            continue;
        }
        char l[33];
        p11_str_from_field(l, sizeof(l), ti.label, sizeof(ti.label));
        if (!found && strcmp(l, label) == 0) {
            found = true;
            *out_slot = slots[i];
        }
    }
    free(slots);
    return found ? KMS_OK : KMS_ERR_NOT_FOUND;
}

kms_err p11_module_init_token(struct p11_module *mod, const char *label,
                              const struct kms_secret *so_pin,
                              const struct kms_secret *user_pin)
{
    CK_SLOT_ID slot = 0, free_slot = 0;
    bool have_free = false;
    KMS_ENSURE(label != NULL && *label && strlen(label) <= 32, KMS_ERR_INVALID_ARGUMENT,
               "token label must be 1..32 bytes");
    kms_err rc = find_label(mod, label, &slot, &have_free, &free_slot);
    KMS_ENSURE(rc == KMS_ERR_NOT_FOUND, rc == KMS_OK ? KMS_ERR_ALREADY_EXISTS : rc,
               "a token labelled '%s' already exists", label);
    KMS_ENSURE(have_free, KMS_ERR_FAILED_PRECONDITION, "no uninitialised slot to put '%s' in",
               label);

    CK_UTF8CHAR padded[32];
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, strlen(label));
    CK_RV rv = P11_MOD_RV(mod, C_InitToken, free_slot, so_pin->data, so_pin->len, padded);
    KMS_GUARD(p11_rv_err(rv, "C_InitToken", label));

    /* Some modules (SoftHSMv2) renumber slots after C_InitToken. */
    bool ignored;
    CK_SLOT_ID ignored_slot;
    KMS_GUARD(find_label(mod, label, &slot, &ignored, &ignored_slot));

    CK_SESSION_HANDLE s;
    rv = P11_MOD_RV(mod, C_OpenSession, slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    KMS_GUARD(p11_rv_err(rv, "C_OpenSession", label));
    rv = P11_MOD_RV(mod, C_Login, s, CKU_SO, so_pin->data, so_pin->len);
    if (rv == CKR_OK) {
        rv = P11_MOD_RV(mod, C_InitPIN, s, user_pin->data, user_pin->len);
        rc = p11_rv_err(rv, "C_InitPIN", label);
        P11_MOD_RV(mod, C_Logout, s);
    } else {
        rc = p11_rv_err(rv, "C_Login(SO)", label);
    }
    P11_MOD_RV(mod, C_CloseSession, s);
    return rc;
}

kms_err p11_module_list_tokens(struct p11_module *mod, FILE *out)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    KMS_GUARD(slot_list(mod, &slots, &n));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (P11_MOD_RV(mod, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        char label[33], serial[17], model[17], manuf[33];
        p11_str_from_field(label, sizeof(label), ti.label, sizeof(ti.label));
        p11_str_from_field(serial, sizeof(serial), ti.serialNumber, sizeof(ti.serialNumber));
        p11_str_from_field(model, sizeof(model), ti.model, sizeof(ti.model));
        p11_str_from_field(manuf, sizeof(manuf), ti.manufacturerID, sizeof(ti.manufacturerID));
        fprintf(out, "slot %-12lu label=%-20s serial=%-16s model=%s (%s)%s\n",
                (unsigned long)slots[i], (ti.flags & CKF_TOKEN_INITIALIZED) ? label : "-",
                serial, model, manuf,
                (ti.flags & CKF_TOKEN_INITIALIZED) ? "" : " [uninitialised]");
    }
    free(slots);
    return KMS_OK;
}
