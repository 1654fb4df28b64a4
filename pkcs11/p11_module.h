/*
 * p11_module.h - loading a PKCS#11 module and its slot-level operations.
 *
 * One struct p11_module per loaded library. p11_module_load() dlopens the
 * library, prefers C_GetInterface (PKCS#11 3.0) over C_GetFunctionList, and
 * calls C_Initialize with OS locking. p11_module_free() finalises and unloads;
 * it must be called after every p11_token of the module has been freed.
 * A module is thread-safe once loaded. Do not fork() after loading without
 * freeing it first: PKCS#11 state does not survive fork.
 */
#ifndef P11_MODULE_H
#define P11_MODULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "kms_error.h"
#include "kms_secret.h"

struct p11_module;

kms_err p11_module_load(const char *path, struct p11_module **out_mod);

/* Longest module initialisation string accepted (bytes). */
#define P11_MODULE_ARGS_MAX 4096

/* As p11_module_load, with a module initialisation string: C_Initialize gets
 * it in CK_C_INITIALIZE_ARGS.pReserved, as NSS's softoken needs its database
 * directories and token descriptions ("configdir='sql:/var/lib/custos/nss'
 * tokens=<0x4=[...]>"). PKCS#11 reserves pReserved (it "should be
 * NULL_PTR"), so init_args NULL or "" passes NULL, and most modules answer
 * CKR_ARGUMENTS_BAD to anything else. The string is configuration, logged
 * and shown in errors, so it must not carry a secret: a parameter whose
 * name mentions a PIN or password is refused (KMS_ERR_CONFIG). It is kept
 * for re-initialisations (p11_module_recover). */
kms_err p11_module_load_args(const char *path, const char *init_args, struct p11_module **out_mod);

/* With on, every call into any loaded module waits for the one before it
 * to return: for a module that is not safe to call from several threads
 * at once although it says it is (CKF_OS_LOCKING_OK). SoftHSMv2 2.6's file
 * object store is one when several processes share a token directory:
 * a thread re-reading the directory after another process changed it
 * races a thread destroying or reading an object in the same process
 * (docs/pkcs11.md, "pkcs11.serialize_calls"). Set before any module is
 * loaded; kmsd sets it from its configuration. */
void p11_serialize_calls(bool on);

/* The initialisation string the module was loaded with, or NULL. */
const char *p11_module_args(const struct p11_module *mod);

/* Refuse an initialisation string that is too long, has control characters
 * or names a secret parameter (a name containing "pin", "pass" or
 * "secret", case-insensitive, before '='). For config validation too. */
kms_err p11_module_args_check(const char *init_args);
void p11_module_free(struct p11_module *mod);

/* Path the module was loaded from. */
const char *p11_module_path(const struct p11_module *mod);

/* Initialise a fresh token with `label` in the first slot that has a token
 * without CKF_TOKEN_INITIALIZED, then set its user PIN. Refuses if a token
 * with that label already exists. Used by the dev/test setup and by the
 * operator tooling; PINs come as secrets, never as argv. */
kms_err p11_module_init_token(struct p11_module *mod, const char *label,
                              const struct kms_secret *so_pin,
                              const struct kms_secret *user_pin);

/* Print one line per slot with a token: slot id, label, serial, model and
 * whether it is initialised. Slot ids are for humans; Custos never stores
 * them. */
kms_err p11_module_list_tokens(struct p11_module *mod, FILE *out);

#endif
