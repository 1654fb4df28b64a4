/*
 * test_audit_pg.c - the audit log on PostgreSQL (audit_log_pg.h) with
 * several log instances on one region, as several kmsd nodes run it: one
 * tree, every event exactly once, heads that verify offline; the fence
 * that keeps a deposed sequencer from extending the tree; takeover when
 * the sequencer goes; failing closed while PostgreSQL is down and coming
 * back by itself; the signing key rotated inside a round. Real
 * PostgreSQL (a throw-away cluster of deploy/pg-scratch.sh, started and
 * removed here), the real SoftHSMv2 token (the region's signing key), the
 * real offline verifier.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit_keyset.h"
#include "audit_log.h"
#include "audit_log_pg.h"
#include "audit_verify.h"
#include "kms_error.h"
#include "kms_pgconn.h"
#include "p11_key.h"
#include "testenv.h"

static struct testenv env;
static char pgdir[256];
static char conninfo[512];
static char password[300];
static const struct kms_pg_target target = {conninfo, password};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int pg_scratch(const char *cmd)
{
    char line[700];
    snprintf(line, sizeof(line), "sh deploy/pg-scratch.sh %s %s custos_audit >/dev/null", cmd,
             pgdir);
    return system(line);
}

static void setup(void)
{
    testenv_open(&env);
}

static void teardown(void)
{
    testenv_close(&env);
}

static struct audit_log *open_log(const char *region, unsigned every_events)
{
    struct audit_log_config cfg = {every_events, 200, 0, 0};
    struct audit_log *log = NULL;
    kms_err rc = audit_log_open_pg(&target, region, env.eu, &cfg, 50, &log);
    ck_assert_msg(rc == KMS_OK, "open: %s", kms_err_detail());
    return log;
}

static PGconn *sql_conn(void)
{
    PGconn *c = NULL;
    ck_assert_msg(kms_pg_connect(&target, "test", &c) == KMS_OK, "%s", kms_err_detail());
    return c;
}

static long long sql_int(PGconn *c, const char *sql, const char *region)
{
    const char *v[1] = {region};
    PGresult *r = PQexecParams(c, sql, 1, NULL, v, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    long long n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static void append(struct audit_log *log, const char *detail)
{
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.operation = (char *)"Encrypt";
    ev.outcome = (char *)"ok";
    ev.detail = (char *)detail;
    kms_err rc = audit_log_append(log, &ev);
    ck_assert_msg(rc == KMS_OK, "append %s: %s", detail, kms_err_detail());
}

/* Bounded waits: a missing sequencer fails the test instead of hanging. */
static void wait_sequencer(struct audit_log *log)
{
    for (int i = 0; i < 2000 && !audit_log_is_sequencer(log); i++)
        usleep(10000);
    ck_assert_msg(audit_log_is_sequencer(log), "no sequencer after 20 s");
}

static void wait_tree(struct audit_log *log, uint64_t n)
{
    for (int i = 0; i < 2000 && audit_tree_size(audit_log_tree(log)) < n; i++)
        usleep(10000);
    ck_assert_uint_eq(audit_tree_size(audit_log_tree(log)), n);
}

/* Export the whole log straight from PostgreSQL once a head covers n
 * events, and verify it offline with the keys stored beside it. Returns
 * the decoded export (caller frees). */
static Custos__V1__ExportAuditLogResponse *export_verified(const char *region, uint64_t n)
{
    PGconn *c = sql_conn();
    uint8_t *bundle = NULL;
    size_t len = 0;
    Custos__V1__ExportAuditLogResponse *resp = NULL;
    for (int i = 0; i < 2000; i++) {
        free(bundle);
        bundle = NULL;
        if (audit_pg_export(c, region, 0, 10000, true, 0, &bundle, &len) == KMS_OK) {
            if (resp)
                custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
            resp = custos__v1__export_audit_log_response__unpack(NULL, len, bundle);
            ck_assert_ptr_nonnull(resp);
            if (resp->head->tree_size >= n)
                break;
        }
        usleep(10000);
    }
    ck_assert_ptr_nonnull(resp);
    ck_assert_uint_eq(resp->head->tree_size, n);
    ck_assert_uint_eq(resp->n_entries, n);

    Custos__V1__AuditKey **keys = NULL;
    size_t nk = 0;
    ck_assert_int_eq(audit_pg_keys(c, region, &keys, &nk), KMS_OK);
    ck_assert_uint_ge(nk, 1);
    struct audit_keyset *ks = NULL;
    ck_assert_int_eq(audit_keyset_new(&ks), KMS_OK);
    for (size_t i = 0; i < nk; i++) {
        char *text = audit_key_file_text(keys[i]);
        ck_assert_ptr_nonnull(text);
        ck_assert_int_eq(audit_keyset_parse(ks, "pg-keys", text, strlen(text)), KMS_OK);
        free(text);
    }
    audit_log_keys_free(keys, nk);
    struct audit_verify *v = NULL;
    ck_assert_int_eq(audit_verify_new(ks, NULL, false, &v), KMS_OK);
    kms_err rc = audit_verify_add_bundle(v, "pg.bin", bundle, len);
    if (rc == KMS_OK)
        rc = audit_verify_finish(v);
    const struct audit_verify_failure *f = audit_verify_failure(v);
    ck_assert_msg(rc == KMS_OK, "verify: %s", f ? f->what : kms_err_detail());

    /* No two heads of one size, and every stored head is a head of this
     * tree: its root is the root of the verified entries at its size. */
    const char *rv[1] = {region};
    PGresult *r = PQexecParams(c,
                               "SELECT tree_size, count(*) FROM custos_audit_heads"
                               " WHERE region = $1 GROUP BY tree_size HAVING count(*) > 1",
                               1, NULL, rv, NULL, NULL, 0);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    ck_assert_int_eq(PQntuples(r), 0);
    PQclear(r);
    r = PQexecParams(c, "SELECT head FROM custos_audit_heads WHERE region = $1", 1, NULL, rv, NULL,
                     NULL, 1);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    struct audit_tree *t = NULL;
    ck_assert_int_eq(audit_tree_new(&t), KMS_OK);
    for (size_t i = 0; i < resp->n_entries; i++) {
        audit_hash h;
        audit_leaf_hash(resp->entries[i]->event.data, resp->entries[i]->event.len, h);
        ck_assert_int_eq(audit_tree_append(t, h), KMS_OK);
    }
    for (int i = 0; i < PQntuples(r); i++) {
        Custos__V1__SignedTreeHead *sth = custos__v1__signed_tree_head__unpack(
            NULL, (size_t)PQgetlength(r, i, 0), (const uint8_t *)PQgetvalue(r, i, 0));
        ck_assert_ptr_nonnull(sth);
        audit_hash root;
        ck_assert_int_eq(audit_tree_root(t, sth->tree_size, root), KMS_OK);
        ck_assert_msg(memcmp(root, sth->root_hash.data, 32) == 0,
                      "head of size %" PRIu64 " is not a head of the tree", sth->tree_size);
        const struct audit_key *k = audit_keyset_find(ks, region, sth->key_id);
        ck_assert_ptr_nonnull(k);
        uint8_t sb[13 + 1 + 255 + 48];
        size_t sl = audit_head_signed_bytes(region, sth->tree_size, sth->timestamp_ms, root, sb);
        ck_assert(audit_key_verify(k, sb, sl, sth->signature.data, sth->signature.len));
        custos__v1__signed_tree_head__free_unpacked(sth, NULL);
    }
    PQclear(r);
    audit_tree_free(t);
    audit_verify_free(v);
    audit_keyset_free(ks);
    free(bundle);
    PQfinish(c);
    return resp;
}

/* Each detail of `prefix`-i for i < n appears exactly once in resp. */
static void assert_each_once(const Custos__V1__ExportAuditLogResponse *resp, const char *prefix,
                             int n)
{
    int *seen = calloc((size_t)n, sizeof(int));
    ck_assert_ptr_nonnull(seen);
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < resp->n_entries; i++) {
        Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(
            NULL, resp->entries[i]->event.len, resp->entries[i]->event.data);
        ck_assert_ptr_nonnull(ev);
        ck_assert_uint_eq(ev->seq, i);
        if (strncmp(ev->detail, prefix, pl) == 0) {
            int k = atoi(ev->detail + pl);
            ck_assert(k >= 0 && k < n);
            seen[k]++;
        }
        custos__v1__audit_event__free_unpacked(ev, NULL);
    }
    for (int k = 0; k < n; k++)
        ck_assert_msg(seen[k] == 1, "%s%d appears %d times", prefix, k, seen[k]);
    free(seen);
}

#define THREADS 4
#define PER_THREAD 150

struct worker {
    struct audit_log *log;
    int first;
};

static void *appender(void *arg)
{
    struct worker *w = arg;
    for (int i = w->first; i < w->first + PER_THREAD; i++) {
        char d[32];
        snprintf(d, sizeof(d), "c-%d", i);
        Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
        ev.operation = (char *)"Encrypt";
        ev.outcome = (char *)"ok";
        ev.detail = d;
        if (audit_log_append(w->log, &ev) != KMS_OK)
            return (void *)1;
    }
    return NULL;
}

/* Two nodes append concurrently: one tree, each event once, in seq order,
 * and the whole export verifies offline. */
START_TEST(two_nodes_one_tree)
{
    const char *region = "pg-conc";
    struct audit_log *a = open_log(region, 100), *b = open_log(region, 100);
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){t % 2 ? b : a, t * PER_THREAD};
        ck_assert_int_eq(pthread_create(&th[t], NULL, appender, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        void *r;
        pthread_join(th[t], &r);
        ck_assert_ptr_null(r);
    }
    /* Exactly one of them is the sequencer. */
    ck_assert(audit_log_is_sequencer(a) != audit_log_is_sequencer(b));
    wait_tree(a, THREADS * PER_THREAD);
    wait_tree(b, THREADS * PER_THREAD);
    Custos__V1__ExportAuditLogResponse *resp = export_verified(region, THREADS * PER_THREAD);
    assert_each_once(resp, "c-", THREADS * PER_THREAD);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    /* Both nodes serve the same head and the same leaves. */
    uint8_t *ha = NULL, *hb = NULL, *la = NULL, *lb = NULL;
    size_t hal = 0, hbl = 0, lal = 0, lbl = 0;
    for (int i = 0; i < 500; i++) {
        free(ha);
        free(hb);
        ck_assert_int_eq(audit_log_head(a, &ha, &hal), KMS_OK);
        ck_assert_int_eq(audit_log_head(b, &hb, &hbl), KMS_OK);
        if (hal == hbl && memcmp(ha, hb, hal) == 0)
            break;
        usleep(10000);
    }
    ck_assert(hal == hbl && memcmp(ha, hb, hal) == 0);
    ck_assert_int_eq(audit_log_read(a, 123, &la, &lal), KMS_OK);
    ck_assert_int_eq(audit_log_read(b, 123, &lb, &lbl), KMS_OK);
    ck_assert(lal == lbl && memcmp(la, lb, lal) == 0);
    free(ha);
    free(hb);
    free(la);
    free(lb);
    audit_log_close(a);
    audit_log_close(b);
}
END_TEST

/* A sequencer whose lock session was ended while it was stalled, and which
 * still believes it holds the lock, cannot extend the tree once another
 * node took over: its compare-and-set fails (the epoch moved on, though the
 * tree size is still the one it knows), nothing it made is stored, and the
 * event it tried to order is ordered once, by the new sequencer. */
START_TEST(deposed_sequencer_is_fenced)
{
    const char *region = "pg-fence";
    struct audit_log *a = open_log(region, 1);
    wait_sequencer(a);
    struct audit_log *b = open_log(region, 1);
    for (int i = 0; i < 5; i++) {
        char d[16];
        snprintf(d, sizeof(d), "f-%d", i);
        append(i % 2 ? b : a, d);
    }
    wait_tree(b, 5);
    wait_tree(a, 5);

    /* A stalls (a long GC pause, a partition) and loses its lock. */
    audit_log_pg_pause(a, true);
    int pid = audit_log_pg_lock_pid(a);
    ck_assert_int_gt(pid, 0);
    PGconn *c = sql_conn();
    char sql[80];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
    PGresult *r = PQexec(c, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    long long epoch_before =
        sql_int(c, "SELECT epoch FROM custos_audit_tree WHERE region = $1", region);
    /* B takes over at its next poll; then stalls before ordering more. */
    wait_sequencer(b);
    audit_log_pg_pause(b, true);
    ck_assert_int_gt(sql_int(c, "SELECT epoch FROM custos_audit_tree WHERE region = $1", region),
                     epoch_before);
    append(a, "f-5"); /* committed, not yet ordered */
    ck_assert_int_eq(sql_int(c,
                             "SELECT count(*) FROM custos_audit_events"
                             " WHERE region = $1 AND seq IS NULL",
                             region),
                     1);

    /* A wakes up still believing it is the sequencer: its round is refused
     * and changes nothing. */
    long long heads_before =
        sql_int(c, "SELECT count(*) FROM custos_audit_heads WHERE region = $1", region);
    kms_err rc = audit_log_pg_round(a);
    ck_assert_int_eq(rc, KMS_ERR_FAILED_PRECONDITION);
    ck_assert_msg(strstr(kms_err_detail(), "deposed") != NULL, "%s", kms_err_detail());
    ck_assert(!audit_log_is_sequencer(a));
    ck_assert_int_eq(sql_int(c, "SELECT size FROM custos_audit_tree WHERE region = $1", region), 5);
    ck_assert_int_eq(sql_int(c,
                             "SELECT count(*) FROM custos_audit_events"
                             " WHERE region = $1 AND seq IS NULL",
                             region),
                     1);
    ck_assert_int_eq(
        sql_int(c, "SELECT count(*) FROM custos_audit_heads WHERE region = $1", region),
        heads_before);
    /* A sequenced row is frozen, whoever tries. */
    r = PQexec(c, "UPDATE custos_audit_events SET event = '\\x00' WHERE seq = 0");
    ck_assert_int_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);

    audit_log_pg_pause(b, false);
    audit_log_pg_pause(a, false);
    wait_tree(b, 6);
    wait_tree(a, 6);
    ck_assert(audit_log_is_sequencer(b));
    ck_assert(!audit_log_is_sequencer(a));
    Custos__V1__ExportAuditLogResponse *resp = export_verified(region, 6);
    assert_each_once(resp, "f-", 6);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    PQfinish(c);
    audit_log_close(a);
    audit_log_close(b);
}
END_TEST

/* The sequencer goes away; the other node takes over within a few polls
 * and the tree goes on from where it was. */
START_TEST(takeover_after_close)
{
    const char *region = "pg-takeover";
    struct audit_log *a = open_log(region, 1000);
    wait_sequencer(a);
    struct audit_log *b = open_log(region, 1000);
    for (int i = 0; i < 10; i++) {
        char d[16];
        snprintf(d, sizeof(d), "t-%d", i);
        append(a, d);
    }
    ck_assert(!audit_log_is_sequencer(b));
    int64_t t0 = mono_ms();
    audit_log_close(a);
    wait_sequencer(b);
    fprintf(stderr, "test_audit_pg: takeover after close: %lld ms (poll 50 ms)\n",
            (long long)(mono_ms() - t0));
    for (int i = 10; i < 20; i++) {
        char d[16];
        snprintf(d, sizeof(d), "t-%d", i);
        append(b, d);
    }
    wait_tree(b, 20);
    Custos__V1__ExportAuditLogResponse *resp = export_verified(region, 20);
    assert_each_once(resp, "t-", 20);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    /* The export from the database keeps ExportAuditLog's answers: the
     * rollback alarm for a larger known head, a start beyond the tree. */
    PGconn *c = sql_conn();
    uint8_t *bundle = NULL;
    size_t len = 0;
    ck_assert_int_eq(audit_pg_export(c, region, 0, 100, false, 25, &bundle, &len),
                     KMS_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(kms_err_detail(), "rolled back or forked"));
    ck_assert_ptr_null(bundle);
    ck_assert_int_eq(audit_pg_export(c, region, 21, 100, false, 0, &bundle, &len),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(audit_pg_export(c, region, 0, 10001, false, 0, &bundle, &len),
                     KMS_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(audit_pg_export(c, "pg-nowhere", 0, 100, false, 0, &bundle, &len),
                     KMS_ERR_NOT_FOUND);
    ck_assert_ptr_null(bundle);
    PQfinish(c);
    audit_log_close(b);
}
END_TEST

/* PostgreSQL stops: appends fail closed (never a success without a
 * committed event); it comes back: appends succeed again by themselves,
 * and every acknowledged event is in the tree. */
START_TEST(fails_closed_and_recovers)
{
    const char *region = "pg-down";
    struct audit_log *a = open_log(region, 1000);
    append(a, "d-0");
    struct audit_log_stats st;
    audit_log_stats(a, &st);
    ck_assert(!st.failed);
    ck_assert_int_eq(pg_scratch("stop"), 0);
    /* Readiness notices before any append fails (the follower's poll). */
    for (int i = 0; i < 500 && !st.failed; i++) {
        usleep(10000);
        audit_log_stats(a, &st);
    }
    ck_assert_msg(st.failed, "an unreachable database is not reported");
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.operation = (char *)"Encrypt";
    ev.outcome = (char *)"ok";
    ev.detail = (char *)"refused";
    ck_assert_int_eq(audit_log_append(a, &ev), KMS_ERR_IO);
    audit_log_stats(a, &st);
    ck_assert(st.failed);
    ck_assert_int_eq(audit_log_append(a, &ev), KMS_ERR_IO);
    ck_assert_int_eq(pg_scratch("start"), 0);
    kms_err rc = KMS_ERR_IO;
    for (int i = 0; i < 200 && rc != KMS_OK; i++) {
        ev.detail = (char *)"d-1";
        rc = audit_log_append(a, &ev);
        if (rc != KMS_OK)
            usleep(50000);
    }
    ck_assert_msg(rc == KMS_OK, "no recovery: %s", kms_err_detail());
    for (int i = 0; i < 500 && st.failed; i++) {
        usleep(10000);
        audit_log_stats(a, &st);
    }
    ck_assert(!st.failed);
    Custos__V1__ExportAuditLogResponse *resp = export_verified(region, 2);
    assert_each_once(resp, "d-", 2);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    audit_log_close(a);
}
END_TEST

/* The sequencer rotates the region's signing key by age inside its round:
 * the new key's row and the first head it signs commit together, the old
 * private key is then destroyed from the token, and the whole log (heads
 * under either key) still verifies offline with the keys of the database. */
START_TEST(key_rotated_in_the_round)
{
    const char *region = "pg-rotate";
    /* Old enough to rotate after 4 s: long enough that the key made at
     * open is still the only one after the first event even in the ASan
     * build on a loaded machine (1 s was not, in CI). */
    struct audit_log_config cfg = {1, 200, 4, 0};
    struct audit_log *a = NULL;
    ck_assert_msg(audit_log_open_pg(&target, region, env.eu, &cfg, 50, &a) == KMS_OK, "%s",
                  kms_err_detail());
    wait_sequencer(a);
    append(a, "k-0");
    wait_tree(a, 1);
    PGconn *c = sql_conn();
    Custos__V1__AuditKey **keys = NULL;
    size_t nk = 0;
    ck_assert_int_eq(audit_pg_keys(c, region, &keys, &nk), KMS_OK);
    ck_assert_uint_eq(nk, 1);
    struct p11_key_id old_id;
    ck_assert_uint_eq(strlen(keys[0]->key_id), 32);
    for (int i = 0; i < 16; i++) {
        unsigned b = 0;
        ck_assert_int_eq(sscanf(keys[0]->key_id + 2 * i, "%2x", &b), 1);
        old_id.b[i] = (uint8_t)b;
    }
    int64_t born_ms = keys[0]->not_before_ms;
    audit_log_keys_free(keys, nk);
    bool exists = false;
    ck_assert_int_eq(p11_key_exists(env.eu, &old_id, &exists), KMS_OK);
    ck_assert(exists);

    /* Wait until the key is older than key_max_age_s (by its own row). */
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        if (now_ms > born_ms + cfg.key_max_age_s * 1000 + 200)
            break;
        usleep(50000);
    }
    append(a, "k-1");
    const char *count_keys = "SELECT count(*) FROM custos_audit_keys WHERE region = $1";
    for (int i = 0; i < 2000 && sql_int(c, count_keys, region) < 2; i++)
        usleep(10000);
    ck_assert_int_eq(sql_int(c, count_keys, region), 2);
    wait_tree(a, 2);
    Custos__V1__ExportAuditLogResponse *resp = export_verified(region, 2);
    assert_each_once(resp, "k-", 2);
    ck_assert_str_ne(resp->head->key_id, "");
    ck_assert_int_eq(audit_pg_keys(c, region, &keys, &nk), KMS_OK);
    ck_assert_uint_eq(nk, 2);
    /* The newest head is signed by the new key, which is the current one. */
    ck_assert_str_eq(resp->head->key_id, keys[1]->key_id);
    ck_assert_int_eq(keys[0]->not_after_ms, keys[1]->not_before_ms);
    audit_log_keys_free(keys, nk);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    ck_assert_int_eq(p11_key_exists(env.eu, &old_id, &exists), KMS_OK);
    ck_assert_msg(!exists, "the rotated-out private key is still in the token");
    PQfinish(c);
    audit_log_close(a);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("audit_pg");
    TCase *tc = tcase_create("fleet");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, two_nodes_one_tree);
    tcase_add_test(tc, deposed_sequencer_is_fenced);
    tcase_add_test(tc, takeover_after_close);
    tcase_add_test(tc, fails_closed_and_recovers);
    tcase_add_test(tc, key_rotated_in_the_round);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* Our own cluster: tests/run-tests.sh may run another one for the
     * store, and this one is stopped and started by a test. */
    snprintf(pgdir, sizeof(pgdir), "/tmp/custos-test-audit-pg-%ld", (long)getpid());
    mkdir(pgdir, 0755);
    chmod(pgdir, 0755);
    if (pg_scratch("start") != 0) {
        fprintf(stderr, "test_audit_pg: cannot start PostgreSQL (deploy/pg-scratch.sh)\n");
        return 1;
    }
    /* pg-scratch.sh listens on $CUSTOS_PG_PORT when set (tests/run-tests.sh
     * sets it for its own cluster), and the socket's name carries the port. */
    const char *port = getenv("CUSTOS_PG_PORT");
    snprintf(conninfo, sizeof(conninfo), "host=%s/socket port=%s dbname=custos_audit user=custos",
             pgdir, port != NULL && *port != '\0' ? port : "5432");
    snprintf(password, sizeof(password), "file:%s/password", pgdir);
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    pg_scratch("stop");
    char line[400];
    snprintf(line, sizeof(line), "rm -rf %s", pgdir);
    if (system(line) != 0)
        fprintf(stderr, "test_audit_pg: could not remove %s\n", pgdir);
    return failed ? 1 : 0;
}
