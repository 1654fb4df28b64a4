/*
 * testenv.h - shared fixtures for tests that need the real SoftHSMv2 tokens
 * made by tests/run-tests.sh (deploy/dev-hsm.sh into a temp directory).
 */
#ifndef TESTENV_H
#define TESTENV_H

#include <stdbool.h>
#include <stddef.h>

#include "kms_error.h"

#include "p11_module.h"
#include "p11_token.h"

/* Path of the module under test ($CUSTOS_TEST_MODULE). */
const char *testenv_module_path(void);

/* The module's initialisation string ($CUSTOS_TEST_MODULE_ARGS), or NULL. */
const char *testenv_module_args(void);

/* p11_module_load_args with the two above. */
kms_err testenv_module_load(struct p11_module **out);

/* Is the run on NSS's softoken ($CUSTOS_TEST_TOKEN=nss)? Only for tests
 * that set up a token by hand (init-token) or assert what one module does. */
bool testenv_is_nss(void);

/* Directory holding softhsm2.conf and pins/ ($CUSTOS_TEST_HSM_DIR); aborts
 * the test if unset. */
const char *testenv_hsm_dir(void);

/* "file:<dir>/pins/<region>.pin" into buf. */
const char *testenv_pin_source(const char *region, char *buf, size_t len);

/* A scratch directory for this test run ($CUSTOS_TEST_WORK or /tmp). */
const char *testenv_work_dir(void);

/* Load the module and open the eu-west and us-east tokens; ck_assert on
 * failure. */
struct testenv {
    struct p11_module *mod;
    struct p11_token *eu;
    struct p11_token *us;
};
void testenv_open(struct testenv *env);
void testenv_close(struct testenv *env);

#endif
