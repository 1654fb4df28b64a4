/*
 * test_kms_config.c - kmsd.json parsing: defaults, path resolution, and
 * every refusal naming its JSON path.
 */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms_config.h"
#include "kms_log.h"
#include "testenv.h"

static char path[512];

static kms_err load(const char *json, struct kms_config **out)
{
    snprintf(path, sizeof(path), "%s/kmsd-%d.json", testenv_work_dir(), (int)getpid());
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(json, f);
    fclose(f);
    kms_err rc = kms_config_load(path, out);
    unlink(path);
    return rc;
}

#define TOKENS                                                                                 \
    "\"pkcs11\": {\"tokens\": [{\"region\": \"eu-west\", \"token\": \"custos-eu-west\","       \
    " \"pin\": \"file:pins/eu.pin\"}]}, \"policy\": \"policy.json\", \"store\": \"/var/db\""

static void expect_error(const char *json, const char *fragment)
{
    struct kms_config *c = (void *)1;
    kms_err rc = load(json, &c);
    ck_assert_int_eq(rc, KMS_ERR_CONFIG);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(kms_err_detail(), fragment) != NULL, "'%s' not in '%s'", fragment,
                  kms_err_detail());
}

START_TEST(minimal_with_defaults)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert(!c->dev_mode);
    ck_assert_str_eq(c->listen_address, "127.0.0.1");
    ck_assert_uint_eq(c->listen_port, 8700);
    ck_assert_uint_eq(c->max_body_bytes, 96 * 1024);
    ck_assert_uint_eq(c->deletion_default_days, 30);
    ck_assert_uint_eq(c->deletion_min_days, 7);
    ck_assert_uint_eq(c->n_tokens, 1);
    ck_assert_str_eq(c->tokens[0].region, "eu-west");
    /* Relative paths are taken from the config file's directory. */
    char want[PATH_MAX + 32];
    char dir[PATH_MAX];
    ck_assert_ptr_nonnull(realpath(testenv_work_dir(), dir));
    snprintf(want, sizeof(want), "%s/policy.json", dir);
    ck_assert_str_eq(c->policy_path, want);
    snprintf(want, sizeof(want), "file:%s/pins/eu.pin", dir);
    ck_assert_str_eq(c->tokens[0].pin_source, want);
    ck_assert_str_eq(c->store_path, "/var/db");
    ck_assert_ptr_null(c->pkcs11_module_args);
    ck_assert(!c->pkcs11_serialize_calls);
    kms_config_free(c);

    /* One module call at a time, when asked (docs/pkcs11.md). */
    ck_assert_int_eq(load("{\"pkcs11\": {\"serialize_calls\": true, \"tokens\": [{\"region\": "
                          "\"eu-west\", \"token\": \"t\", \"pin\": \"env:P\"}]},"
                          " \"policy\": \"p\", \"store\": \"s\"}",
                          &c),
                     KMS_OK);
    ck_assert(c->pkcs11_serialize_calls);
    kms_config_free(c);

    /* NSS's softoken string, kept verbatim (not taken as a path). */
    ck_assert_int_eq(load("{\"pkcs11\": {\"module\": \"/usr/lib/x86_64-linux-gnu/libsoftokn3.so\","
                          " \"module_args\": \"tokens=<0x4=[configdir='sql:/d' "
                          "tokenDescription='custos-eu-west']>\", \"tokens\": [{\"region\": "
                          "\"eu-west\", \"token\": \"custos-eu-west\", \"pin\": \"env:P\"}]},"
                          " \"policy\": \"p\", \"store\": \"s\"}",
                          &c),
                     KMS_OK);
    ck_assert_str_eq(c->pkcs11_module_args,
                     "tokens=<0x4=[configdir='sql:/d' tokenDescription='custos-eu-west']>");
    kms_config_free(c);
}
END_TEST

START_TEST(refusals_name_the_path)
{
    expect_error("{" TOKENS ", \"limits\": {\"max_body_byte\": 5}}", "limits.max_body_byte: unknown key");
    expect_error("{" TOKENS ", \"colour\": 1}", "colour: unknown key");
    expect_error("{" TOKENS ", \"listen\": {\"port\": 0}}", "listen.port: must be an integer");
    expect_error("{" TOKENS ", \"listen\": {\"address\": \"0.0.0.0\"}}",
                 "plain HTTP is only allowed on loopback");
    expect_error("{" TOKENS ", \"mode\": \"test\"}", "mode:");
    expect_error("{" TOKENS ", \"deletion\": {\"min_days\": 1}}", "at least 7 outside dev mode");
    expect_error("{" TOKENS ", \"deletion\": {\"day_seconds\": 1}}", "only dev mode");
    expect_error("{\"policy\": \"p\", \"store\": \"s\"}", "pkcs11: required");
    expect_error("{\"pkcs11\": {\"tokens\": []}, \"policy\": \"p\", \"store\": \"s\"}",
                 "pkcs11.tokens");
    expect_error("{\"pkcs11\": {\"tokens\": [{\"region\": \"a\", \"token\": \"t\"}]},"
                 " \"policy\": \"p\", \"store\": \"s\"}",
                 "pkcs11.tokens[0].pin: required");
    expect_error("{\"pkcs11\": {\"tokens\": [{\"region\": \"a\", \"token\": \"t\", \"pin\": \"env:P\"},"
                 "{\"region\": \"a\", \"token\": \"u\", \"pin\": \"env:P\"}]},"
                 " \"policy\": \"p\", \"store\": \"s\"}",
                 "pkcs11.tokens[1].region: region \"a\" already has a token");
    expect_error("{" TOKENS ", \"tls\": {\"cert\": \"c\"}}",
                 "tls: needs exactly one of key (a PEM file) and key_uri");
    expect_error("{" TOKENS ", \"tls\": {\"cert\": \"c\", \"key\": \"k\", "
                 "\"key_uri\": \"pkcs11:object=x\"}}",
                 "tls: needs exactly one of key (a PEM file) and key_uri");
    expect_error("{" TOKENS ", \"tls\": {\"cert\": \"c\", \"key_uri\": \"/etc/k.pem\"}}",
                 "tls.key_uri: must be a pkcs11: URI");
    expect_error("{" TOKENS ", \"tls\": {\"cert\": \"c\", \"key\": \"k\", \"require_client_cert\": true}}",
                 "needs tls.client_ca");
    expect_error("{" TOKENS ", \"policy\": \"a\", \"policy\": \"b\"}", "duplicate");
    expect_error("not json", ":1:");
    expect_error("{\"pkcs11\": {\"serialize_calls\": 1, \"tokens\": [{\"region\": \"a\", "
                 "\"token\": \"t\", \"pin\": \"env:P\"}]}, \"policy\": \"p\", \"store\": \"s\"}",
                 "pkcs11.serialize_calls: must be true or false");
    /* The module's initialisation string is configuration: never a PIN. */
    expect_error("{\"pkcs11\": {\"module_args\": \"configdir='sql:/x' userPin=1234\", "
                 "\"tokens\": [{\"region\": \"a\", \"token\": \"t\", \"pin\": \"env:P\"}]},"
                 " \"policy\": \"p\", \"store\": \"s\"}",
                 "pkcs11.module_args: PKCS#11 module arguments: parameter 'userPin'");
}
END_TEST

START_TEST(dev_mode_and_tls)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{\"mode\": \"dev\", " TOKENS
                          ", \"deletion\": {\"min_days\": 0, \"day_seconds\": 1, "
                          "\"default_days\": 2, \"sweep_interval_s\": 1}}",
                          &c),
                     KMS_OK);
    ck_assert(c->dev_mode);
    ck_assert_uint_eq(c->deletion_day_seconds, 1);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"listen\": {\"address\": \"0.0.0.0\", \"port\": 443},"
                          " \"tls\": {\"cert\": \"/c.pem\", \"key\": \"/k.pem\", \"client_ca\": \"/ca.pem\"}}",
                          &c),
                     KMS_OK);
    ck_assert_str_eq(c->tls_cert, "/c.pem");
    /* A client CA implies requiring client certificates unless said otherwise. */
    ck_assert(c->tls_require_client_cert);
    kms_config_free(c);
    /* The private key in a token: the URI is kept as written (not a path). */
    ck_assert_int_eq(load("{" TOKENS ", \"listen\": {\"address\": \"0.0.0.0\", \"port\": 443},"
                          " \"tls\": {\"cert\": \"/c.pem\", "
                          "\"key_uri\": \"pkcs11:token=t;object=kmsd-tls\"}}",
                          &c),
                     KMS_OK);
    ck_assert_str_eq(c->tls_key_uri, "pkcs11:token=t;object=kmsd-tls");
    ck_assert_ptr_null(c->tls_key);
    kms_config_free(c);
}
END_TEST

START_TEST(import_token_ttl)
{
    struct kms_config *c = NULL;
    /* 24 h by default, as AWS KMS import tokens. */
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->import_token_ttl_s, 86400);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"import\": {\"token_ttl_s\": 3600}}", &c), KMS_OK);
    ck_assert_uint_eq(c->import_token_ttl_s, 3600);
    kms_config_free(c);
    /* Tests may use seconds, in dev mode only. */
    ck_assert_int_eq(load("{\"mode\": \"dev\", " TOKENS ", \"import\": {\"token_ttl_s\": 2}}", &c),
                     KMS_OK);
    ck_assert_uint_eq(c->import_token_ttl_s, 2);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"import\": {\"token_ttl_s\": 2}}",
                 "import.token_ttl_s: at least 60 outside dev mode");
    expect_error("{" TOKENS ", \"import\": {\"token_ttl_s\": 0}}",
                 "import.token_ttl_s: must be an integer in 1..604800");
    expect_error("{" TOKENS ", \"import\": {\"token_ttl_s\": 604801}}", "import.token_ttl_s");
    expect_error("{" TOKENS ", \"import\": {\"token_ttl\": 60}}", "import.token_ttl: unknown key");
    expect_error("{" TOKENS ", \"import\": 60}", "import: must be an object");
}
END_TEST

/* link_tokens (docs/link-tokens.md): defaults, values read back, bounds,
 * and the test clock refused outside dev mode. */
START_TEST(link_token_keys)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->link_min_ttl_s, 60);
    ck_assert_uint_eq(c->link_max_ttl_s, 900);
    ck_assert_uint_eq(c->link_default_ttl_s, 600);
    ck_assert_uint_eq(c->link_max_attempts, 5);
    ck_assert_uint_eq(c->link_skew_s, 30);
    ck_assert_ptr_null(c->link_test_clock_file);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"link_tokens\": {\"max_attempts\": 3, "
                          "\"recipient_limit\": 7, \"recipient_window_s\": 60}}",
                          &c),
                     KMS_OK);
    ck_assert_uint_eq(c->link_max_attempts, 3);
    ck_assert_uint_eq(c->link_recipient_limit, 7);
    ck_assert_uint_eq(c->link_recipient_window_s, 60);
    kms_config_free(c);
    ck_assert_int_eq(
        load("{\"mode\": \"dev\", " TOKENS ", \"link_tokens\": {\"test_clock_file\": \"clk\"}}",
             &c),
        KMS_OK);
    ck_assert_ptr_nonnull(c->link_test_clock_file);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"link_tokens\": {\"test_clock_file\": \"clk\"}}",
                 "link_tokens.test_clock_file: only in dev mode");
    expect_error("{" TOKENS ", \"link_tokens\": {\"min_ttl_s\": 700}}",
                 "link_tokens: needs min_ttl_s <= default_ttl_s <= max_ttl_s");
    expect_error("{" TOKENS ", \"link_tokens\": {\"max_attempts\": 0}}",
                 "link_tokens.max_attempts: must be an integer in 1..100");
    expect_error("{" TOKENS ", \"link_tokens\": {\"ttl\": 60}}", "link_tokens.ttl: unknown key");
}
END_TEST

START_TEST(operations_keys)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_int_eq(c->log_level, KMS_LOG_INFO);
    ck_assert_ptr_null(c->log_file);
    ck_assert_uint_eq(c->health_cache_ms, 2000);
    ck_assert_uint_eq(c->drain_timeout_s, 30);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"log\": {\"level\": \"debug\", \"file\": \"kmsd.log\"},"
                          " \"health\": {\"cache_ms\": 0}, \"limits\": {\"drain_timeout_s\": 5}}",
                          &c),
                     KMS_OK);
    ck_assert_int_eq(c->log_level, KMS_LOG_DEBUG);
    /* Relative, like every path: beside the configuration file. */
    ck_assert_ptr_nonnull(strstr(c->log_file, "/kmsd.log"));
    ck_assert_int_eq(c->log_file[0], '/');
    ck_assert_uint_eq(c->health_cache_ms, 0);
    ck_assert_uint_eq(c->drain_timeout_s, 5);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"log\": {\"level\": \"loud\"}}", "log.level: must be");
    expect_error("{" TOKENS ", \"log\": {\"level\": 3}}", "log.level: must be");
    expect_error("{" TOKENS ", \"log\": {\"format\": \"text\"}}", "log.format: unknown key");
    expect_error("{" TOKENS ", \"log\": {\"file\": \"\"}}", "log.file: must be a non-empty string");
    expect_error("{" TOKENS ", \"health\": {\"cache_ms\": 60001}}",
                 "health.cache_ms: must be an integer in 0..60000");
    expect_error("{" TOKENS ", \"health\": []}", "health: must be an object");
    expect_error("{" TOKENS ", \"limits\": {\"drain_timeout_s\": 0}}",
                 "limits.drain_timeout_s: must be an integer in 1..3600");
}
END_TEST

START_TEST(per_ip_connection_limit)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->max_connections, 1024);
    ck_assert_uint_eq(c->max_connections_per_ip, 64);
    kms_config_free(c);
    /* The bounds: 0 (no per-address limit) and exactly max_connections. */
    ck_assert_int_eq(load("{" TOKENS ", \"limits\": {\"max_connections_per_ip\": 0}}", &c),
                     KMS_OK);
    ck_assert_uint_eq(c->max_connections_per_ip, 0);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"limits\": {\"max_connections\": 100,"
                          " \"max_connections_per_ip\": 100}}",
                          &c),
                     KMS_OK);
    ck_assert_uint_eq(c->max_connections_per_ip, 100);
    kms_config_free(c);
    /* Unset, the default follows a total cap below it down. */
    ck_assert_int_eq(load("{" TOKENS ", \"limits\": {\"max_connections\": 16}}", &c), KMS_OK);
    ck_assert_uint_eq(c->max_connections_per_ip, 16);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"limits\": {\"max_connections\": 100,"
                 " \"max_connections_per_ip\": 101}}",
                 "limits.max_connections_per_ip: 101 is above limits.max_connections (100)");
    /* Against the default total of 1024, too. */
    expect_error("{" TOKENS ", \"limits\": {\"max_connections_per_ip\": 1025}}",
                 "limits.max_connections_per_ip: 1025 is above limits.max_connections (1024)");
    expect_error("{" TOKENS ", \"limits\": {\"max_connections_per_ip\": -1}}",
                 "limits.max_connections_per_ip: must be an integer in 0..65536");
    expect_error("{" TOKENS ", \"limits\": {\"max_connections_per_ip\": \"64\"}}",
                 "limits.max_connections_per_ip: must be an integer");
}
END_TEST

START_TEST(audit_commit_delay)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->audit_commit_delay_us, 200);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"audit\": {\"commit_delay_us\": 0}}", &c), KMS_OK);
    ck_assert_uint_eq(c->audit_commit_delay_us, 0);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"audit\": {\"commit_delay_us\": 10000}}", &c), KMS_OK);
    ck_assert_uint_eq(c->audit_commit_delay_us, 10000);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"audit\": {\"commit_delay_us\": 10001}}",
                 "audit.commit_delay_us: must be an integer in 0..10000");
}
END_TEST

/* audit.postgresql: per region, a connection string without a password
 * and a password source resolved like every path; residency: only a
 * region of the tokens; the poll interval bounded. */
START_TEST(audit_postgresql)
{
    struct kms_config *c = NULL;
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->n_audit_pg, 0);
    ck_assert_ptr_null(kms_config_audit_pg(c, "eu-west"));
    ck_assert_uint_eq(c->audit_pg_poll_ms, 200);
    kms_config_free(c);
    ck_assert_int_eq(load("{" TOKENS ", \"audit\": {\"sequencer_poll_ms\": 50, \"postgresql\":"
                          " {\"eu-west\": {\"conninfo\": \"host=/run/pg dbname=custos_eu\","
                          " \"password\": \"file:pg-eu.pass\"}}}}",
                          &c),
                     KMS_OK);
    ck_assert_uint_eq(c->audit_pg_poll_ms, 50);
    const struct kms_config_audit_pg *p = kms_config_audit_pg(c, "eu-west");
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p->conninfo, "host=/run/pg dbname=custos_eu");
    char want[600];
    snprintf(want, sizeof(want), "file:%s/pg-eu.pass", testenv_work_dir());
    ck_assert_str_eq(p->password_source, want);
    ck_assert_ptr_null(kms_config_audit_pg(c, "us-east"));
    kms_config_free(c);
    expect_error("{" TOKENS ", \"audit\": {\"postgresql\": {\"us-east\": {\"conninfo\":"
                 " \"dbname=x\"}}}}",
                 "audit.postgresql.us-east: no token serves this region");
    expect_error("{" TOKENS ", \"audit\": {\"postgresql\": {\"eu-west\": {\"conninfo\":"
                 " \"dbname=x password=hunter2\"}}}}",
                 "audit.postgresql.eu-west: postgresql: the connection string holds a password");
    expect_error("{" TOKENS ", \"audit\": {\"postgresql\": {\"eu-west\": {}}}}",
                 "audit.postgresql.eu-west.conninfo: required");
    expect_error("{" TOKENS ", \"audit\": {\"postgresql\": {\"eu-west\": {\"conninfo\":"
                 " \"dbname=x\", \"pasword\": \"file:/p\"}}}}",
                 "audit.postgresql.eu-west.pasword: unknown key");
    expect_error("{" TOKENS ", \"audit\": {\"sequencer_poll_ms\": 5}}",
                 "audit.sequencer_poll_ms");
}
END_TEST

START_TEST(rotation_keys)
{
    struct kms_config *c = NULL;
    /* Defaults: rotate at 2^30, refuse past 2^32 (random 96-bit IVs). */
    ck_assert_int_eq(load("{" TOKENS "}", &c), KMS_OK);
    ck_assert_uint_eq(c->usage_rotate_at, 1UL << 30);
    ck_assert_uint_eq(c->usage_limit, 1UL << 32);
    ck_assert_uint_eq(c->usage_reserve_block, 16384);
    ck_assert_uint_eq(c->rotation_min_period_s, 86400);
    kms_config_free(c);
    /* Tiny thresholds and periods are for tests: dev mode only. */
    ck_assert_int_eq(load("{\"mode\": \"dev\", " TOKENS ", \"rotation\": {\"usage_rotate_at\": 10,"
                          " \"usage_limit\": 20, \"usage_reserve_block\": 4,"
                          " \"min_period_s\": 2}}",
                          &c),
                     KMS_OK);
    ck_assert_uint_eq(c->usage_rotate_at, 10);
    ck_assert_uint_eq(c->usage_limit, 20);
    ck_assert_uint_eq(c->usage_reserve_block, 4);
    ck_assert_uint_eq(c->rotation_min_period_s, 2);
    kms_config_free(c);
    expect_error("{" TOKENS ", \"rotation\": {\"usage_rotate_at\": 10}}",
                 "rotation.usage_rotate_at: at least 1048576 outside dev mode");
    expect_error("{" TOKENS ", \"rotation\": {\"min_period_s\": 3600}}",
                 "rotation.min_period_s: at least 86400 (a day) outside dev mode");
    expect_error("{" TOKENS ", \"rotation\": {\"usage_rotate_at\": 4294967296,"
                 " \"usage_limit\": 2147483648}}",
                 "rotation.usage_rotate_at: above rotation.usage_limit");
    expect_error("{" TOKENS ", \"rotation\": {\"usage_limit\": 4294967297}}",
                 "rotation.usage_limit: must be an integer in 1..4294967296");
    expect_error("{" TOKENS ", \"rotation\": {\"usage_reserve_block\": 0}}",
                 "rotation.usage_reserve_block");
    expect_error("{" TOKENS ", \"rotation\": {\"period\": 1}}", "rotation.period: unknown key");
}
END_TEST

START_TEST(store_backends)
{
    struct kms_config *c = NULL;
#define TOKENS_NO_STORE                                                                        \
    "\"pkcs11\": {\"tokens\": [{\"region\": \"eu-west\", \"token\": \"custos-eu-west\","     \
    " \"pin\": \"file:pins/eu.pin\"}]}, \"policy\": \"policy.json\""
    /* The object form of the default backend is the plain path. */
    ck_assert_int_eq(load("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"sqlite\", "
                          "\"path\": \"/var/db\"}}",
                          &c),
                     KMS_OK);
    ck_assert_str_eq(c->store_path, "/var/db");
    ck_assert_ptr_null(c->store_pg_conninfo);
    kms_config_free(c);
    /* PostgreSQL: a connection string and a password source, no file. */
    ck_assert_int_eq(load("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\", "
                          "\"conninfo\": \"host=/run/postgresql dbname=custos_eu user=custos\", "
                          "\"password\": \"file:/etc/custos/pg-password\"}}",
                          &c),
                     KMS_OK);
    ck_assert_ptr_null(c->store_path);
    ck_assert_str_eq(c->store_pg_conninfo, "host=/run/postgresql dbname=custos_eu user=custos");
    ck_assert_str_eq(c->store_pg_password, "file:/etc/custos/pg-password");
    kms_config_free(c);
    /* A password inside the string is refused, and not echoed. */
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\", "
                 "\"conninfo\": \"dbname=x password=hunter2\"}}",
                 "password source");
    ck_assert_ptr_null(strstr(kms_err_detail(), "hunter2"));
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\", "
                 "\"conninfo\": \"postgresql://custos:hunter2@db/x\"}}",
                 "password source");
    ck_assert_ptr_null(strstr(kms_err_detail(), "hunter2"));
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"mysql\"}}",
                 "store.backend: must be");
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\", "
                 "\"conninfo\": \"dbname=x\", \"path\": \"/var/db\"}}",
                 "store.path");
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\"}}",
                 "store.conninfo: required");
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"path\": \"/var/db\", "
                 "\"conninfo\": \"dbname=x\"}}",
                 "for the postgresql backend");
    expect_error("{" TOKENS_NO_STORE ", \"store\": {\"backend\": \"postgresql\", "
                 "\"conninfo\": \"dbname=x\", \"user\": \"u\"}}",
                 "store.user: unknown key");
}
END_TEST

START_TEST(missing_file)
{
    struct kms_config *c = (void *)1;
    ck_assert_int_eq(kms_config_load("/nonexistent/kmsd.json", &c), KMS_ERR_CONFIG);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "/nonexistent/kmsd.json"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kms_config");
    TCase *tc = tcase_create("load");
    tcase_add_test(tc, minimal_with_defaults);
    tcase_add_test(tc, refusals_name_the_path);
    tcase_add_test(tc, dev_mode_and_tls);
    tcase_add_test(tc, import_token_ttl);
    tcase_add_test(tc, operations_keys);
    tcase_add_test(tc, per_ip_connection_limit);
    tcase_add_test(tc, audit_commit_delay);
    tcase_add_test(tc, audit_postgresql);
    tcase_add_test(tc, rotation_keys);
    tcase_add_test(tc, link_token_keys);
    tcase_add_test(tc, store_backends);
    tcase_add_test(tc, missing_file);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
