/*
 * kms_metrics.c - lock-free counters and histograms, Prometheus text output.
 *
 * Histograms keep one counter per bucket (not cumulative) so that an
 * observation is a single atomic add there, plus the count and the sum; the
 * render cumulates. Counters are relaxed: a scrape may see a request's count
 * and not yet its bucket, which Prometheus tolerates (the next scrape agrees).
 */
#include "kms_metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* Upper bounds in microseconds: 50 us .. 10 s. A request or HSM call takes
 * tens of microseconds on SoftHSMv2 and milliseconds on a network HSM. */
static const uint64_t time_bounds_us[] = {50,    100,   250,    500,    1000,    2500,   5000,
                                          10000, 25000, 50000, 100000, 250000, 1000000, 10000000};
#define TIME_BUCKETS (sizeof(time_bounds_us) / sizeof(time_bounds_us[0]))

/* Audit group-commit sizes. */
static const uint64_t batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define BATCH_BUCKETS (sizeof(batch_bounds) / sizeof(batch_bounds[0]))

struct hist {
    atomic_ulong bucket[TIME_BUCKETS + 1]; /* last: above every bound (+Inf only) */
    atomic_ulong count;
    atomic_ulong sum; /* microseconds, or events for batch sizes */
};

/* Outcomes in the order they are printed: 0 is success, i > 0 is Twirp
 * code i - 1 (kms_twirp_codes). */
#define N_OUTCOMES (1 + KMS_TWIRP_CODE_COUNT)

static const char *outcome_name(size_t i)
{
    return i == 0 ? "ok" : kms_twirp_codes[i - 1];
}

#define OP_NAME_MAX 64
struct op_slot {
    char name[OP_NAME_MAX];
    struct hist by_outcome[N_OUTCOMES];
};

struct hsm_call {
    const char *fn, *mech; /* string literals; published before `n_calls` */
    struct hist h;
};

struct token_slot {
    char region[64], label[33];
    struct hsm_call calls[KMS_METRICS_HSM_CALLS_MAX];
    atomic_uint n_calls;
};

struct audit_slot {
    char region[64];
    struct hist batch; /* bucket[] indexed by batch_bounds */
    struct hist fsync;
};

static struct {
    pthread_mutex_t reg_lock; /* registration only; never on the recording path */
    struct op_slot ops[KMS_METRICS_OPS_MAX + 1]; /* the last one is "other" */
    atomic_uint n_ops;
    struct token_slot tokens[KMS_METRICS_TOKENS_MAX];
    atomic_uint n_tokens;
    struct audit_slot audits[KMS_METRICS_AUDIT_MAX];
    atomic_uint n_audits;
    atomic_ulong reloads_ok, reloads_refused;
} m = {.reg_lock = PTHREAD_MUTEX_INITIALIZER};

uint64_t kms_metrics_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void hist_add(struct hist *h, const uint64_t *bounds, size_t n, uint64_t v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

int kms_metrics_op(const char *method)
{
    if (method == NULL)
        return KMS_METRICS_OPS_MAX;
    /* Names are written before n_ops is released, so a reader that sees the
     * count sees the names below it. */
    unsigned n = atomic_load_explicit(&m.n_ops, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(m.ops[i].name, method) == 0)
            return (int)i;
    int idx = KMS_METRICS_OPS_MAX;
    pthread_mutex_lock(&m.reg_lock);
    n = atomic_load_explicit(&m.n_ops, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(m.ops[i].name, method) == 0) {
            idx = (int)i;
            goto done;
        }
    if (n < KMS_METRICS_OPS_MAX && strlen(method) < OP_NAME_MAX) {
        memcpy(m.ops[n].name, method, strlen(method) + 1);
        atomic_store_explicit(&m.n_ops, n + 1, memory_order_release);
        idx = (int)n;
    }
done:
    pthread_mutex_unlock(&m.reg_lock);
    return idx;
}

static size_t outcome_index(kms_err rc)
{
    if (rc == KMS_OK)
        return 0;
    int i = kms_twirp_code_index(kms_err_twirp_code(rc));
    return i >= 0 ? (size_t)i + 1 : 2; /* 2: "unknown" */
}

void kms_metrics_request(int op, kms_err rc, uint64_t ns)
{
    if (op < 0 || op > KMS_METRICS_OPS_MAX)
        return;
    hist_add(&m.ops[op].by_outcome[outcome_index(rc)], time_bounds_us, TIME_BUCKETS, ns / 1000);
}

int kms_metrics_token(const char *region, const char *label)
{
    int id = -1;
    pthread_mutex_lock(&m.reg_lock);
    unsigned n = atomic_load_explicit(&m.n_tokens, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(m.tokens[i].region, region) == 0 && strcmp(m.tokens[i].label, label) == 0) {
            id = (int)i; /* a restart of the service in one process (tests) */
            goto done;
        }
    if (n < KMS_METRICS_TOKENS_MAX) {
        snprintf(m.tokens[n].region, sizeof(m.tokens[n].region), "%s", region);
        snprintf(m.tokens[n].label, sizeof(m.tokens[n].label), "%s", label);
        atomic_store_explicit(&m.n_tokens, n + 1, memory_order_release);
        id = (int)n;
    }
done:
    pthread_mutex_unlock(&m.reg_lock);
    return id;
}

void kms_metrics_hsm(int tok, const char *fn, const char *mech, uint64_t ns)
{
    if (tok < 0 || tok >= KMS_METRICS_TOKENS_MAX)
        return;
    struct token_slot *t = &m.tokens[tok];
    unsigned n = atomic_load_explicit(&t->n_calls, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        if (t->calls[i].fn == fn && t->calls[i].mech == mech) {
            hist_add(&t->calls[i].h, time_bounds_us, TIME_BUCKETS, ns / 1000);
            return;
        }
    pthread_mutex_lock(&m.reg_lock);
    n = atomic_load_explicit(&t->n_calls, memory_order_relaxed);
    unsigned i = 0;
    while (i < n && !(t->calls[i].fn == fn && t->calls[i].mech == mech))
        i++;
    if (i == n && n < KMS_METRICS_HSM_CALLS_MAX) {
        t->calls[n].fn = fn;
        t->calls[n].mech = mech;
        atomic_store_explicit(&t->n_calls, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&m.reg_lock);
    if (i < KMS_METRICS_HSM_CALLS_MAX)
        hist_add(&t->calls[i].h, time_bounds_us, TIME_BUCKETS, ns / 1000);
}

int kms_metrics_audit(const char *region)
{
    int id = -1;
    pthread_mutex_lock(&m.reg_lock);
    unsigned n = atomic_load_explicit(&m.n_audits, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(m.audits[i].region, region) == 0) {
            id = (int)i;
            goto done;
        }
    if (n < KMS_METRICS_AUDIT_MAX) {
        snprintf(m.audits[n].region, sizeof(m.audits[n].region), "%s", region);
        atomic_store_explicit(&m.n_audits, n + 1, memory_order_release);
        id = (int)n;
    }
done:
    pthread_mutex_unlock(&m.reg_lock);
    return id;
}

void kms_metrics_audit_batch(int id, size_t events, uint64_t fsync_ns)
{
    if (id < 0 || id >= KMS_METRICS_AUDIT_MAX)
        return;
    hist_add(&m.audits[id].batch, batch_bounds, BATCH_BUCKETS, events);
    hist_add(&m.audits[id].fsync, time_bounds_us, TIME_BUCKETS, fsync_ns / 1000);
}

void kms_metrics_policy_reload(bool ok)
{
    atomic_fetch_add_explicit(ok ? &m.reloads_ok : &m.reloads_refused, 1, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------ */

/* A label value with the three characters the format escapes. */
static void put_label(FILE *f, const char *name, const char *v, bool comma)
{
    fprintf(f, "%s%s=\"", comma ? "," : "", name);
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fputc('\\', f);
        if (*v == '\n') {
            fputs("\\n", f);
            continue;
        }
        fputc(*v, f);
    }
    fputc('"', f);
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* labels: the already formatted label list without braces (may be ""). */
static void put_hist(FILE *f, const char *name, const char *labels, const struct hist *h,
                     const uint64_t *bounds, size_t n, double scale)
{
    unsigned long cum = 0;
    const char *sep = *labels ? "," : "";
    for (size_t i = 0; i < n; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        fprintf(f, "%s_bucket{%s%sle=\"%g\"} %lu\n", name, labels, sep, (double)bounds[i] * scale,
                cum);
    }
    cum += atomic_load_explicit(&h->bucket[n], memory_order_relaxed);
    /* +Inf equals _count by definition; use the buckets' own total so the
     * series stays monotonic within one scrape even while requests land. */
    fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %lu\n", name, labels, sep, cum);
    fprintf(f, "%s_sum{%s} %.10g\n", name, labels,
            (double)atomic_load_explicit(&h->sum, memory_order_relaxed) * scale);
    fprintf(f, "%s_count{%s} %lu\n", name, labels, cum);
}

/* Format labels into buf through a memory stream, reusing put_label. */
static const char *labels(char *buf, size_t cap, const char *k1, const char *v1, const char *k2,
                           const char *v2, const char *k3, const char *v3, const char *k4,
                           const char *v4)
{
    FILE *s = fmemopen(buf, cap, "w");
    if (s == NULL) {
        buf[0] = '\0';
        return buf;
    }
    put_label(s, k1, v1, false);
    if (k2)
        put_label(s, k2, v2, true);
    if (k3)
        put_label(s, k3, v3, true);
    if (k4)
        put_label(s, k4, v4, true);
    fclose(s);
    buf[cap - 1] = '\0';
    return buf;
}

void kms_metrics_render(FILE *f)
{
    char lb[512];
    unsigned n_ops = atomic_load_explicit(&m.n_ops, memory_order_acquire);

    family(f, "custos_requests_total", "counter", "RPC requests by operation and outcome.");
    for (unsigned i = 0; i <= KMS_METRICS_OPS_MAX; i++) {
        if (i >= n_ops && i != KMS_METRICS_OPS_MAX)
            continue;
        const char *op = i == KMS_METRICS_OPS_MAX ? "other" : m.ops[i].name;
        for (size_t o = 0; o < N_OUTCOMES; o++) {
            unsigned long c = atomic_load_explicit(&m.ops[i].by_outcome[o].count,
                                                   memory_order_relaxed);
            if (c == 0)
                continue;
            fprintf(f, "custos_requests_total{%s} %lu\n",
                    labels(lb, sizeof(lb), "op", op, "outcome", outcome_name(o), NULL, NULL, NULL,
                            NULL),
                    c);
        }
    }
    family(f, "custos_request_duration_seconds", "histogram",
           "RPC latency from the request's headers to its queued reply.");
    for (unsigned i = 0; i <= KMS_METRICS_OPS_MAX; i++) {
        if (i >= n_ops && i != KMS_METRICS_OPS_MAX)
            continue;
        const char *op = i == KMS_METRICS_OPS_MAX ? "other" : m.ops[i].name;
        for (size_t o = 0; o < N_OUTCOMES; o++) {
            const struct hist *h = &m.ops[i].by_outcome[o];
            if (atomic_load_explicit(&h->count, memory_order_relaxed) == 0)
                continue;
            put_hist(f, "custos_request_duration_seconds",
                     labels(lb, sizeof(lb), "op", op, "outcome", outcome_name(o), NULL, NULL, NULL,
                             NULL),
                     h, time_bounds_us, TIME_BUCKETS, 1e-6);
        }
    }

    family(f, "custos_hsm_call_duration_seconds", "histogram",
           "PKCS#11 call latency by token, function and mechanism.");
    unsigned n_tok = atomic_load_explicit(&m.n_tokens, memory_order_acquire);
    for (unsigned t = 0; t < n_tok; t++) {
        unsigned n = atomic_load_explicit(&m.tokens[t].n_calls, memory_order_acquire);
        for (unsigned i = 0; i < n; i++) {
            const struct hsm_call *c = &m.tokens[t].calls[i];
            put_hist(f, "custos_hsm_call_duration_seconds",
                     labels(lb, sizeof(lb), "region", m.tokens[t].region, "token",
                             m.tokens[t].label, "function", c->fn, "mechanism", c->mech),
                     &c->h, time_bounds_us, TIME_BUCKETS, 1e-6);
        }
    }

    unsigned n_aud = atomic_load_explicit(&m.n_audits, memory_order_acquire);
    family(f, "custos_audit_batch_events", "histogram",
           "Events written per audit group commit (one fdatasync each).");
    for (unsigned a = 0; a < n_aud; a++)
        put_hist(f, "custos_audit_batch_events",
                 labels(lb, sizeof(lb), "region", m.audits[a].region, NULL, NULL, NULL, NULL,
                         NULL, NULL),
                 &m.audits[a].batch, batch_bounds, BATCH_BUCKETS, 1.0);
    family(f, "custos_audit_fsync_duration_seconds", "histogram",
           "Latency of the audit log's fdatasync per group commit.");
    for (unsigned a = 0; a < n_aud; a++)
        put_hist(f, "custos_audit_fsync_duration_seconds",
                 labels(lb, sizeof(lb), "region", m.audits[a].region, NULL, NULL, NULL, NULL,
                         NULL, NULL),
                 &m.audits[a].fsync, time_bounds_us, TIME_BUCKETS, 1e-6);

    family(f, "custos_policy_reloads_total", "counter", "Policy reloads (SIGHUP) by result.");
    fprintf(f, "custos_policy_reloads_total{result=\"ok\"} %lu\n",
            atomic_load_explicit(&m.reloads_ok, memory_order_relaxed));
    fprintf(f, "custos_policy_reloads_total{result=\"refused\"} %lu\n",
            atomic_load_explicit(&m.reloads_refused, memory_order_relaxed));
}

void kms_metrics_family(FILE *f, const char *name, const char *type, const char *help)
{
    family(f, name, type, help);
}

void kms_metrics_gauge(FILE *f, const char *name, const char *region, const char *token,
                       const char *label, const char *label_value, double value)
{
    char lb[512];
    fprintf(f, "%s{%s} %g\n", name,
            labels(lb, sizeof(lb), "region", region, "token", token, label, label_value, NULL,
                    NULL),
            value);
}
