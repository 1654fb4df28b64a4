/*
 * kms_notify.h - the systemd notification protocol (sd_notify(3)), without
 * libsystemd: one datagram of "KEY=VALUE\n" lines to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).
 *
 * Without $NOTIFY_SOCKET (not started by systemd) every call is a no-op
 * that succeeds. Thread-safe (each call opens its own socket).
 */
#ifndef KMS_NOTIFY_H
#define KMS_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "kms_error.h"

/* Send state, e.g. "READY=1\nSTATUS=serving". */
kms_err kms_notify(const char *state);

/* The watchdog interval systemd asked for ($WATCHDOG_USEC, when
 * $WATCHDOG_PID is unset or ours), in microseconds; 0 when none. */
uint64_t kms_notify_watchdog_usec(void);

#endif
