/*
 * kms_log.c - JSON-lines operational log.
 */
#include "kms_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = -1;
static atomic_int log_fd = STDERR_FILENO;

int kms_log_fd(void)
{
    return atomic_load(&log_fd);
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int kms_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void kms_log_set_level(enum kms_log_level level)
{
    atomic_store(&log_level, (int)level);
}

static int current_level(void)
{
    int lv = atomic_load(&log_level);
    if (lv < 0) {
        lv = kms_log_level_parse(getenv("CUSTOS_LOG_LEVEL"));
        if (lv < 0)
            lv = KMS_LOG_INFO;
        atomic_store(&log_level, lv);
    }
    return lv;
}

void kms_log_configure_level(enum kms_log_level level)
{
    int env = kms_log_level_parse(getenv("CUSTOS_LOG_LEVEL"));
    atomic_store(&log_level, env >= 0 ? env : (int)level);
}

kms_err kms_log_open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    KMS_ENSURE(fd >= 0, KMS_ERR_CONFIG, "log file %s: %s", path, strerror(errno));
    int cur = atomic_load(&log_fd);
    if (cur == STDERR_FILENO) {
        atomic_store(&log_fd, fd);
        return KMS_OK;
    }
    /* Swap the file under the same descriptor number. */
    int r = dup3(fd, cur, O_CLOEXEC);
    int e = errno;
    close(fd);
    KMS_ENSURE(r >= 0, KMS_ERR_IO, "log file %s: %s", path, strerror(e));
    return KMS_OK;
}

/* Append s to out as JSON string content; returns new length. */
static size_t json_escape(char *out, size_t len, size_t cap, const char *s)
{
    for (; *s && len + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[len++] = '\\';
            out[len++] = (char)c;
        } else if (c < 0x20) {
            len += (size_t)snprintf(out + len, cap - len, "\\u%04x", c);
        } else {
            out[len++] = (char)c;
        }
    }
    return len;
}

void kms_log(enum kms_log_level level, const char *component, const char *fmt, ...)
{
    if ((int)level < current_level())
        return;

    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);

    char line[2048];
    size_t len = (size_t)snprintf(line, sizeof(line),
                                  "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
                                  "\"level\":\"%s\",\"component\":\"",
                                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                                  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                                  level_names[level & 3]);
    len = json_escape(line, len, sizeof(line), component ? component : "-");
    len += (size_t)snprintf(line + len, sizeof(line) - len, "\",\"msg\":\"");
    len = json_escape(line, len, sizeof(line) - 4, msg);
    memcpy(line + len, "\"}\n", 3);
    len += 3;
    /* One write per line so concurrent threads never interleave. */
    ssize_t w = write(atomic_load(&log_fd), line, len);
    (void)w;
}
