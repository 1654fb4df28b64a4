/*
 * kms_crash.h - a last log line when kmsd dies of a fault.
 *
 * kmsd turns core dumps off (they would hold PINs and data keys), so a
 * SIGSEGV in production or CI would otherwise leave nothing but an exit
 * status. On SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT the handler writes
 * one JSON line (level "fatal": the signal, and the fault address for a
 * fault the kernel raised or the sender's pid for a signal sent) and then the
 * faulting thread's return addresses, one per line as "kmsd(+0x1234)[...]"
 * (glibc's backtrace_symbols_fd), to the operational log's descriptor, and
 * dies of the same signal: the exit status is unchanged. Addresses only:
 * no memory contents reach the log. To read them:
 *     addr2line -f -i -e kmsd 0x1234
 * on the same build.
 *
 * Not installed under ASan/TSan, whose own reports are better.
 */
#ifndef KMS_CRASH_H
#define KMS_CRASH_H

/* Install the handler. Call once, early, from the main thread. */
void kms_crash_install(void);

#endif
