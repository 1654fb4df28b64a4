/*
 * test_kms_metrics.c - the metrics registry and its Prometheus text output:
 * an observation lands in the right bucket (durations are given, never
 * measured), histograms are cumulative with +Inf equal to _count, label
 * values are escaped, and every limit drops or folds instead of failing.
 * Each test runs in its own process (check forks), so the process-wide
 * registry starts empty in each.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_metrics.h"

/* The whole exposition, in a buffer the caller frees. */
static char *render(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    kms_metrics_render(f);
    ck_assert_int_eq(fclose(f), 0);
    return buf;
}

static void has(const char *text, const char *line)
{
    ck_assert_msg(strstr(text, line) != NULL, "missing line: %s\n--- got:\n%s", line, text);
}

static void lacks(const char *text, const char *s)
{
    ck_assert_msg(strstr(text, s) == NULL, "unexpected: %s", s);
}

START_TEST(request_lands_in_its_bucket)
{
    int op = kms_metrics_op("Encrypt");
    ck_assert_int_eq(kms_metrics_op("Encrypt"), op);
    kms_metrics_request(op, KMS_OK, 300000);       /* 300 us: le=0.0005 */
    kms_metrics_request(op, KMS_OK, 2000000);      /* 2 ms: le=0.0025 */
    kms_metrics_request(op, KMS_OK, 20000000000u); /* 20 s: above every bound */
    kms_metrics_request(op, KMS_ERR_NOT_FOUND, 100000);
    char *t = render();
    has(t, "# TYPE custos_requests_total counter\n");
    has(t, "custos_requests_total{op=\"Encrypt\",outcome=\"ok\"} 3\n");
    has(t, "custos_requests_total{op=\"Encrypt\",outcome=\"not_found\"} 1\n");
    has(t, "# TYPE custos_request_duration_seconds histogram\n");
    const char *p = "custos_request_duration_seconds_bucket{op=\"Encrypt\",outcome=\"ok\",le=";
    char line[256];
    snprintf(line, sizeof(line), "%s\"0.00025\"} 0\n", p);
    has(t, line);
    snprintf(line, sizeof(line), "%s\"0.0005\"} 1\n", p);
    has(t, line);
    snprintf(line, sizeof(line), "%s\"0.0025\"} 2\n", p);
    has(t, line);
    snprintf(line, sizeof(line), "%s\"10\"} 2\n", p);
    has(t, line);
    snprintf(line, sizeof(line), "%s\"+Inf\"} 3\n", p);
    has(t, line);
    has(t, "custos_request_duration_seconds_count{op=\"Encrypt\",outcome=\"ok\"} 3\n");
    has(t, "custos_request_duration_seconds_sum{op=\"Encrypt\",outcome=\"ok\"} 20.0023\n");
    /* Outcomes never seen print nothing. */
    lacks(t, "outcome=\"internal\"");
    free(t);
}
END_TEST

/* Each error is counted under its own code, the one the API answers. */
START_TEST(outcome_label_is_the_api_code)
{
    int op = kms_metrics_op("Outcomes");
    for (int e = 1; e <= 700; e++)
        if (strcmp(kms_strerror((kms_err)e), "KMS_ERR_UNKNOWN") != 0)
            kms_metrics_request(op, (kms_err)e, 1000);
    char *t = render();
    for (int e = 1; e <= 700; e++) {
        if (strcmp(kms_strerror((kms_err)e), "KMS_ERR_UNKNOWN") == 0)
            continue;
        char line[160];
        snprintf(line, sizeof(line), "custos_requests_total{op=\"Outcomes\",outcome=\"%s\"} ",
                 kms_err_twirp_code((kms_err)e));
        has(t, line);
    }
    free(t);
}
END_TEST

START_TEST(bucket_bounds_are_inclusive)
{
    int op = kms_metrics_op("Decrypt");
    kms_metrics_request(op, KMS_OK, 1000000); /* exactly 1 ms: le="0.001" */
    char *t = render();
    has(t, "custos_request_duration_seconds_bucket{op=\"Decrypt\",outcome=\"ok\",le=\"0.0005\"} 0\n");
    has(t, "custos_request_duration_seconds_bucket{op=\"Decrypt\",outcome=\"ok\",le=\"0.001\"} 1\n");
    free(t);
}
END_TEST

START_TEST(ops_beyond_the_limit_fold_into_other)
{
    char name[32];
    for (int i = 0; i < KMS_METRICS_OPS_MAX; i++) {
        snprintf(name, sizeof(name), "Op%d", i);
        ck_assert_int_eq(kms_metrics_op(name), i);
    }
    int other = kms_metrics_op("OneTooMany");
    ck_assert_int_eq(other, KMS_METRICS_OPS_MAX);
    ck_assert_int_eq(kms_metrics_op(NULL), KMS_METRICS_OPS_MAX);
    kms_metrics_request(other, KMS_ERR_BAD_ROUTE, 1000);
    kms_metrics_request(-1, KMS_OK, 1000);   /* ignored */
    kms_metrics_request(9999, KMS_OK, 1000); /* ignored */
    char *t = render();
    has(t, "custos_requests_total{op=\"other\",outcome=\"bad_route\"} 1\n");
    lacks(t, "OneTooMany");
    free(t);
}
END_TEST

START_TEST(hsm_calls_per_token_function_mechanism)
{
    int a = kms_metrics_token("eu-west", "custos-eu-west");
    int b = kms_metrics_token("us-east", "custos-us-east");
    ck_assert_int_ge(a, 0);
    ck_assert_int_ne(a, b);
    ck_assert_int_eq(kms_metrics_token("eu-west", "custos-eu-west"), a);
    kms_metrics_hsm(a, "C_Encrypt", "CKM_AES_GCM", 40000);
    kms_metrics_hsm(a, "C_Encrypt", "CKM_AES_GCM", 60000);
    kms_metrics_hsm(b, "C_Sign", "CKM_ECDSA", 3000000);
    kms_metrics_hsm(-1, "C_Sign", "CKM_ECDSA", 1); /* unregistered: ignored */
    char *t = render();
    has(t, "custos_hsm_call_duration_seconds_count{region=\"eu-west\",token=\"custos-eu-west\","
           "function=\"C_Encrypt\",mechanism=\"CKM_AES_GCM\"} 2\n");
    has(t, "custos_hsm_call_duration_seconds_bucket{region=\"eu-west\",token=\"custos-eu-west\","
           "function=\"C_Encrypt\",mechanism=\"CKM_AES_GCM\",le=\"5e-05\"} 1\n");
    has(t, "custos_hsm_call_duration_seconds_count{region=\"us-east\",token=\"custos-us-east\","
           "function=\"C_Sign\",mechanism=\"CKM_ECDSA\"} 1\n");
    lacks(t, "region=\"us-east\",token=\"custos-us-east\",function=\"C_Encrypt\"");
    free(t);
}
END_TEST

START_TEST(hsm_call_pairs_beyond_the_limit_are_dropped)
{
    int a = kms_metrics_token("eu-west", "t");
    /* kms_metrics keeps the pointers: static storage. */
    static char fns[KMS_METRICS_HSM_CALLS_MAX + 2][8];
    for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        snprintf(fns[i], sizeof(fns[i]), "F%zu", i);
        kms_metrics_hsm(a, fns[i], "CKM_X", 1000);
    }
    char *t = render();
    char last[64], over[64];
    snprintf(last, sizeof(last), "function=\"F%d\",mechanism=\"CKM_X\"} 1\n",
             KMS_METRICS_HSM_CALLS_MAX - 1);
    snprintf(over, sizeof(over), "function=\"F%d\"", KMS_METRICS_HSM_CALLS_MAX);
    has(t, last);
    lacks(t, over);
    free(t);
}
END_TEST

START_TEST(label_values_are_escaped)
{
    int a = kms_metrics_token("eu-west", "odd\"label\\x");
    kms_metrics_hsm(a, "C_Encrypt", "CKM_AES_GCM", 1000);
    char *t = render();
    has(t, "token=\"odd\\\"label\\\\x\"");
    free(t);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    kms_metrics_gauge(f, "g", "r", "new\nline", "state", "a\"b", 1);
    fclose(f);
    ck_assert_str_eq(buf, "g{region=\"r\",token=\"new\\nline\",state=\"a\\\"b\"} 1\n");
    free(buf);
}
END_TEST

START_TEST(audit_batches_and_reloads)
{
    int id = kms_metrics_audit("eu-west");
    ck_assert_int_eq(kms_metrics_audit("eu-west"), id);
    kms_metrics_audit_batch(id, 1, 500000);
    kms_metrics_audit_batch(id, 40, 500000);
    kms_metrics_audit_batch(id, 5000, 500000); /* above the largest bound */
    kms_metrics_audit_batch(-1, 3, 1);         /* ignored */
    kms_metrics_policy_reload(true);
    kms_metrics_policy_reload(false);
    kms_metrics_policy_reload(false);
    char *t = render();
    has(t, "custos_audit_batch_events_bucket{region=\"eu-west\",le=\"1\"} 1\n");
    has(t, "custos_audit_batch_events_bucket{region=\"eu-west\",le=\"64\"} 2\n");
    has(t, "custos_audit_batch_events_bucket{region=\"eu-west\",le=\"1024\"} 2\n");
    has(t, "custos_audit_batch_events_bucket{region=\"eu-west\",le=\"+Inf\"} 3\n");
    has(t, "custos_audit_batch_events_sum{region=\"eu-west\"} 5041\n");
    has(t, "custos_audit_fsync_duration_seconds_count{region=\"eu-west\"} 3\n");
    has(t, "custos_policy_reloads_total{result=\"ok\"} 1\n");
    has(t, "custos_policy_reloads_total{result=\"refused\"} 2\n");
    free(t);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kms_metrics");
    TCase *tc = tcase_create("requests");
    tcase_add_test(tc, request_lands_in_its_bucket);
    tcase_add_test(tc, bucket_bounds_are_inclusive);
    tcase_add_test(tc, outcome_label_is_the_api_code);
    tcase_add_test(tc, ops_beyond_the_limit_fold_into_other);
    suite_add_tcase(s, tc);

    tc = tcase_create("hsm");
    tcase_add_test(tc, hsm_calls_per_token_function_mechanism);
    tcase_add_test(tc, hsm_call_pairs_beyond_the_limit_are_dropped);
    tcase_add_test(tc, label_values_are_escaped);
    suite_add_tcase(s, tc);

    tc = tcase_create("audit_and_policy");
    tcase_add_test(tc, audit_batches_and_reloads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
