/*
 * kms_crash.c - fatal-signal handler: a log line and a backtrace, then death.
 *
 * The handler keeps to write(2), clock_gettime, signal and raise, which
 * POSIX lists as async-signal-safe, and glibc's backtrace(), which it does
 * not: its first call loads libgcc_s (done at install time here), and the
 * unwinder takes a lock, so a thread that faults inside the unwinder can
 * hang here instead of dying. Accepted for the frames it gives every other
 * time. The timestamp is formatted by hand because gmtime_r takes glibc's
 * time-zone lock. There is no alternate signal stack: a stack overflow
 * still kills the process (status unchanged) without the line.
 */
#include "kms_crash.h"

#include "kms_log.h"

#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KMS_CRASH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KMS_CRASH_SANITIZED 1
#endif
#endif

#ifndef KMS_CRASH_SANITIZED

enum { MAX_FRAMES = 64 };

static const struct {
    int sig;
    const char *name;
} fatal[] = {
    {SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGILL, "SIGILL"},
    {SIGFPE, "SIGFPE"},   {SIGABRT, "SIGABRT"},
};

/* A bounded appender: what does not fit is cut, never overrun. */
struct out {
    char buf[256];
    size_t len;
};

static void put(struct out *o, const char *s)
{
    while (*s && o->len < sizeof(o->buf) - 1)
        o->buf[o->len++] = *s++;
}

static void put_uint(struct out *o, uint64_t v, unsigned base, int width)
{
    char d[24];
    int n = 0;
    do {
        d[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v && n < (int)sizeof(d));
    while (n < width && n < (int)sizeof(d))
        d[n++] = '0';
    while (n > 0 && o->len < sizeof(o->buf) - 1)
        o->buf[o->len++] = d[--n];
}

/* Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
 * civil_from_days). */
static void civil(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_ts(struct out *o)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t days = ts.tv_sec / 86400, secs = ts.tv_sec % 86400;
    int64_t y;
    unsigned m, d;
    civil(days, &y, &m, &d);
    put_uint(o, (uint64_t)y, 10, 4);
    put(o, "-");
    put_uint(o, m, 10, 2);
    put(o, "-");
    put_uint(o, d, 10, 2);
    put(o, "T");
    put_uint(o, (uint64_t)secs / 3600, 10, 2);
    put(o, ":");
    put_uint(o, (uint64_t)secs / 60 % 60, 10, 2);
    put(o, ":");
    put_uint(o, (uint64_t)secs % 60, 10, 2);
    put(o, ".");
    put_uint(o, (uint64_t)ts.tv_nsec / 1000000, 10, 3);
    put(o, "Z");
}

static void on_fatal(int sig, siginfo_t *si, void *uctx)
{
    (void)uctx;
    /* Every fatal signal back to its default first: a second fault in here
     * (the unwinder on a corrupted stack) must end the process with its
     * own status, not run this handler again and report a different one. */
    const char *name = "signal";
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
        signal(fatal[i].sig, SIG_DFL);
        if (fatal[i].sig == sig)
            name = fatal[i].name;
    }
    struct out o = {.len = 0};
    put(&o, "{\"ts\":\"");
    put_ts(&o);
    put(&o, "\",\"level\":\"fatal\",\"component\":\"kmsd\",\"msg\":\"fatal signal ");
    put_uint(&o, (uint64_t)sig, 10, 1);
    put(&o, " (");
    put(&o, name);
    put(&o, ")");
    /* si_addr means something only for a fault the kernel raised
     * (si_code > 0); from kill(2), raise or abort it overlaps the sender's
     * pid and uid. */
    if (si != NULL && si->si_code > 0) {
        put(&o, ", fault address 0x");
        put_uint(&o, (uint64_t)(uintptr_t)si->si_addr, 16, 1);
    } else if (si != NULL) {
        put(&o, ", sent by pid ");
        put_uint(&o, (uint64_t)(si->si_pid > 0 ? si->si_pid : 0), 10, 1);
    }
    put(&o, "; the faulting thread's frames follow\"}\n");
    int fd = kms_log_fd();
    ssize_t w = write(fd, o.buf, o.len);
    void *frames[MAX_FRAMES];
    int n = backtrace(frames, MAX_FRAMES);
    backtrace_symbols_fd(frames, n, fd);
    (void)w;
    /* The default action is back and SA_NODEFER lets it land now: the
     * process dies of `sig`, as it would have. */
    raise(sig);
}

void kms_crash_install(void)
{
    void *warm[1];
    (void)backtrace(warm, 1); /* loads libgcc_s now, not in the handler */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        sigaction(fatal[i].sig, &sa, NULL);
}

#else

void kms_crash_install(void)
{
}

#endif
