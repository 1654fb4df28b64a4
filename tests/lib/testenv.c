/*
 * testenv.c - fixtures over the throw-away tokens of the test run.
 */
#include "testenv.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_error.h"

const char *testenv_module_path(void)
{
    const char *m = getenv("CUSTOS_TEST_MODULE");
    return m && *m ? m : "/usr/lib/softhsm/libsofthsm2.so";
}

const char *testenv_module_args(void)
{
    const char *a = getenv("CUSTOS_TEST_MODULE_ARGS");
    return a && *a ? a : NULL;
}

kms_err testenv_module_load(struct p11_module **out)
{
    return p11_module_load_args(testenv_module_path(), testenv_module_args(), out);
}

bool testenv_is_nss(void)
{
    const char *t = getenv("CUSTOS_TEST_TOKEN");
    return t != NULL && strcmp(t, "nss") == 0;
}

const char *testenv_hsm_dir(void)
{
    const char *d = getenv("CUSTOS_TEST_HSM_DIR");
    ck_assert_msg(d != NULL && *d, "CUSTOS_TEST_HSM_DIR is not set: run through tests/run-tests.sh");
    return d;
}

const char *testenv_pin_source(const char *region, char *buf, size_t len)
{
    snprintf(buf, len, "file:%s/pins/%s.pin", testenv_hsm_dir(), region);
    return buf;
}

const char *testenv_work_dir(void)
{
    const char *d = getenv("CUSTOS_TEST_WORK");
    return d && *d ? d : "/tmp";
}

void testenv_open(struct testenv *env)
{
    char eu_pin[512], us_pin[512];
    env->mod = NULL;
    env->eu = env->us = NULL;
    kms_err rc = testenv_module_load(&env->mod);
    ck_assert_msg(rc == KMS_OK, "load: %s", kms_err_detail());
    struct p11_token_config cfg[2] = {
        {"eu-west", "custos-eu-west", testenv_pin_source("eu-west", eu_pin, sizeof(eu_pin)), 0},
        {"us-east", "custos-us-east", testenv_pin_source("us-east", us_pin, sizeof(us_pin)), 0},
    };
    struct p11_token *toks[2];
    rc = p11_tokens_open(env->mod, cfg, 2, toks);
    ck_assert_msg(rc == KMS_OK, "open tokens: %s", kms_err_detail());
    env->eu = toks[0];
    env->us = toks[1];
}

void testenv_close(struct testenv *env)
{
    p11_token_free(env->eu);
    p11_token_free(env->us);
    p11_module_free(env->mod);
    env->eu = env->us = NULL;
    env->mod = NULL;
}
