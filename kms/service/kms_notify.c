/*
 * kms_notify.c - sd_notify's datagram protocol.
 */
#include "kms_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

kms_err kms_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || *path == '\0')
        return KMS_OK;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    KMS_ENSURE((path[0] == '/' || path[0] == '@') && n < sizeof(sa.sun_path), KMS_ERR_CONFIG,
               "NOTIFY_SOCKET: not an absolute path or abstract name");
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: no terminating NUL counted */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                                (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    KMS_ENSURE(fd >= 0, KMS_ERR_IO, "notify socket: %s", strerror(errno));
    ssize_t w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
    int e = errno;
    close(fd);
    KMS_ENSURE(w == (ssize_t)strlen(state), KMS_ERR_IO, "notify %s: %s", path,
               w < 0 ? strerror(e) : "short write");
    return KMS_OK;
}

uint64_t kms_notify_watchdog_usec(void)
{
    const char *pid = getenv("WATCHDOG_PID");
    if (pid && *pid) {
        char *end = NULL;
        long p = strtol(pid, &end, 10);
        if (*end != '\0' || p != (long)getpid())
            return 0; /* meant for another process (e.g. a wrapper's child) */
    }
    const char *us = getenv("WATCHDOG_USEC");
    if (us == NULL || *us == '\0')
        return 0;
    char *end = NULL;
    unsigned long long v = strtoull(us, &end, 10);
    return *end == '\0' ? (uint64_t)v : 0;
}
