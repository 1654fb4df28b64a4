/*
 * test_audit_log.c - the audit log's asynchronous submission, which the
 * epoll front uses to suspend a request while its event waits for the
 * group commit: every callback comes exactly once, says "durable" only for
 * events that are on disk (read back after a reopen), and says "lost" for
 * every event of a batch whose write failed. Real token (the head signing
 * key), real files, real fdatasync.
 */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit_log.h"
#include "kms_error.h"
#include "testenv.h"

#define THREADS 4
#define PER_THREAD 400
#define N (THREADS * PER_THREAD)

static struct testenv env;
static char dir[512];

/* One slot per submitted event: how often its callback came, and with what. */
struct slot {
    atomic_int calls;
    atomic_int durable;
    uint64_t seq;
};
static struct slot slots[N];
static atomic_int callbacks;

static void done(void *arg, bool durable)
{
    struct slot *s = arg;
    atomic_fetch_add(&s->calls, 1);
    if (durable)
        atomic_fetch_add(&s->durable, 1);
    atomic_fetch_add(&callbacks, 1);
}

static void setup(void)
{
    testenv_open(&env);
    snprintf(dir, sizeof(dir), "%s/audit-log-%ld", testenv_work_dir(), (long)getpid());
    mkdir(dir, 0700);
    memset(slots, 0, sizeof(slots));
    atomic_store(&callbacks, 0);
}

static void teardown(void)
{
    testenv_close(&env);
}

static struct audit_log *open_log(void)
{
    struct audit_log_config cfg = {1000, 200, 0, 0};
    struct audit_log *log = NULL;
    kms_err rc = audit_log_open(dir, "eu-west", env.eu, &cfg, &log);
    ck_assert_msg(rc == KMS_OK, "open: %s", kms_err_detail());
    return log;
}

static kms_err submit(struct audit_log *log, size_t i)
{
    char detail[32];
    snprintf(detail, sizeof(detail), "event %zu", i);
    Custos__V1__AuditEvent ev = CUSTOS__V1__AUDIT_EVENT__INIT;
    ev.operation = (char *)"Encrypt";
    ev.outcome = (char *)"ok";
    ev.detail = detail;
    kms_err rc = audit_log_submit(log, &ev, done, &slots[i]);
    slots[i].seq = ev.seq; /* set by the log when it queued the event */
    return rc;
}

/* Bounded wait for the writer: a missing callback fails the test here
 * rather than hanging it. */
static void wait_callbacks(int want)
{
    for (int i = 0; i < 3000 && atomic_load(&callbacks) < want; i++)
        usleep(10000);
    ck_assert_int_eq(atomic_load(&callbacks), want);
}

struct worker {
    struct audit_log *log;
    size_t first;
};

static void *submitter(void *arg)
{
    struct worker *w = arg;
    for (size_t i = w->first; i < w->first + PER_THREAD; i++)
        if (submit(w->log, i) != KMS_OK)
            return (void *)1;
    return NULL;
}

START_TEST(every_callback_once_and_durable)
{
    struct audit_log *log = open_log();
    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (size_t t = 0; t < THREADS; t++) {
        w[t] = (struct worker){log, t * PER_THREAD};
        ck_assert_int_eq(pthread_create(&th[t], NULL, submitter, &w[t]), 0);
    }
    for (size_t t = 0; t < THREADS; t++) {
        void *r;
        pthread_join(th[t], &r);
        ck_assert_ptr_null(r);
    }
    wait_callbacks(N);
    struct audit_log_stats st;
    audit_log_stats(log, &st);
    ck_assert_uint_eq(st.events, N);
    /* Submitters do not wait, so the writer must have grouped them. */
    ck_assert_uint_lt(st.batches, N / 4);
    audit_log_close(log);

    /* Every event acknowledged as durable is in the file, with its content,
     * at the seq it was given. */
    log = open_log();
    for (size_t i = 0; i < N; i++) {
        ck_assert_int_eq(atomic_load(&slots[i].calls), 1);
        ck_assert_int_eq(atomic_load(&slots[i].durable), 1);
        uint8_t *leaf = NULL;
        size_t len = 0;
        ck_assert_int_eq(audit_log_read(log, slots[i].seq, &leaf, &len), KMS_OK);
        Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(NULL, len, leaf);
        ck_assert_ptr_nonnull(ev);
        char want[32];
        snprintf(want, sizeof(want), "event %zu", i);
        ck_assert_str_eq(ev->detail, want);
        ck_assert_uint_eq(ev->seq, slots[i].seq);
        custos__v1__audit_event__free_unpacked(ev, NULL);
        free(leaf);
    }
    audit_log_close(log);
}
END_TEST

START_TEST(failed_write_reports_lost_then_recovers)
{
    struct audit_log *log = open_log();
    ck_assert_int_eq(submit(log, 0), KMS_OK);
    wait_callbacks(1);
    ck_assert_int_eq(atomic_load(&slots[0].durable), 1);

    /* The events file may not grow: the next batch's write fails (EFBIG,
     * as on a full disk), and every event in it is reported lost. */
    signal(SIGXFSZ, SIG_IGN);
    char path[600];
    snprintf(path, sizeof(path), "%s/eu-west.events", dir);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int queued = 0;
    for (size_t i = 1; i <= 50; i++)
        if (submit(log, i) == KMS_OK)
            queued++;
    ck_assert_int_gt(queued, 0);
    wait_callbacks(1 + queued);
    for (size_t i = 1; i <= 50; i++) {
        ck_assert_int_le(atomic_load(&slots[i].calls), 1);
        ck_assert_int_eq(atomic_load(&slots[i].durable), 0);
    }

    /* Room again: within a few recovery periods the log takes events. */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    kms_err rc = KMS_ERR_IO;
    for (int i = 0; i < 100 && rc != KMS_OK; i++) {
        usleep(50000);
        rc = submit(log, 52);
    }
    ck_assert_int_eq(rc, KMS_OK);
    /* Exactly one more callback: refused submissions get none. */
    wait_callbacks(2 + queued);
    ck_assert_int_eq(atomic_load(&slots[52].durable), 1);
    /* The lost batch's seqs were reused: after the last durable event comes
     * the log's record of its own recovery, then the next one. */
    ck_assert_uint_eq(slots[52].seq, slots[0].seq + 2);
    uint8_t *leaf = NULL;
    size_t len = 0;
    ck_assert_int_eq(audit_log_read(log, slots[0].seq + 1, &leaf, &len), KMS_OK);
    Custos__V1__AuditEvent *ev = custos__v1__audit_event__unpack(NULL, len, leaf);
    ck_assert_ptr_nonnull(ev);
    ck_assert_str_eq(ev->operation, "AuditLogRecovered");
    custos__v1__audit_event__free_unpacked(ev, NULL);
    free(leaf);
    audit_log_close(log);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("audit_log");
    TCase *tc = tcase_create("submit");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_callback_once_and_durable);
    tcase_add_test(tc, failed_write_reports_lost_then_recovers);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
