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

#include <stddef.h>
#include <stdio.h>

#include "kms_error.h"
#include "kms_secret.h"

struct p11_module;

kms_err p11_module_load(const char *path, struct p11_module **out_mod);
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
