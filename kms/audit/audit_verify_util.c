/*
 * audit_verify_util.c - names, hex, numbers, times and files for the
 * auditor's tools (see the header).
 */
#include "audit_verify_util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

bool audit_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    if (s[0] < '0' || s[0] > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

bool audit_parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    if (!((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && s[1] >= '0' && s[1] <= '9')))
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

void audit_hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

long audit_unhex(const char *s, uint8_t *out, size_t max_out)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > max_out)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

const char *audit_iso_ms(int64_t ms, char buf[40])
{
    struct tm tm;
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int frac = (int)(ms - (int64_t)t * 1000);
    char s[32];
    if (gmtime_r(&t, &tm) == NULL || strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        snprintf(buf, 40, "@%" PRId64 "ms", ms);
    else
        snprintf(buf, 40, "%s.%03dZ", s, frac);
    return buf;
}

bool audit_region_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUDIT_REGION_MAX || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool audit_key_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUDIT_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return false;
    return true;
}

const char *audit_printable(const char *s, char *buf, size_t n)
{
    size_t o = 0;
    for (; s && *s && o + 4 < n; s++)
        buf[o++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (s && *s && n >= 4) {
        memcpy(buf + (o < n - 4 ? o : n - 4), "...", 4);
        return buf;
    }
    buf[o] = '\0';
    return buf;
}

void *audit_grow(void *arr, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? 2 * *cap : first, bytes;
    if (nc < *cap || __builtin_mul_overflow(nc, size, &bytes))
        return NULL;
    void *grown = realloc(arr, bytes);
    if (grown)
        *cap = nc;
    return grown;
}

kms_err audit_file_read(const char *path, size_t max, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 65536, len = 0;
    uint8_t *buf = malloc(cap + 1);
    kms_err rc = KMS_ERR_IO;
    for (;;) {
        if (buf == NULL) {
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (len == cap) {
            if (cap >= max) {
                rc = kms_err_set(KMS_ERR_TOO_LARGE, "%s: larger than %zu bytes", path, max);
                goto done;
            }
            cap = cap * 2 > max ? max : cap * 2;
            uint8_t *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
                goto done;
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    buf = NULL;
    rc = KMS_OK;
done:
    free(buf);
    if (fd > STDIN_FILENO)
        close(fd);
    return rc;
}

static bool write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

kms_err audit_file_write(const char *path, const void *data, size_t len, mode_t mode)
{
    if (strcmp(path, "-") == 0) {
        if (!write_all(STDOUT_FILENO, data, len))
            return kms_err_set(KMS_ERR_IO, "stdout: %s", strerror(errno));
        return KMS_OK;
    }
    char *tmp = NULL, *dcopy = strdup(path);
    int fd = -1;
    kms_err rc = KMS_ERR_IO;
    if (dcopy == NULL || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        tmp = NULL;
        rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
        goto done;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0 || !write_all(fd, data, len) || fsync(fd) != 0) {
        kms_err_set(KMS_ERR_IO, "%s: %s", fd < 0 ? tmp : path, strerror(errno));
        goto done;
    }
    if (close(fd) != 0) {
        fd = -1;
        kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
        goto done;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        kms_err_set(KMS_ERR_IO, "%s: %s", path, strerror(errno));
        goto done;
    }
    /* The rename is durable only once the directory is. */
    int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    rc = KMS_OK;
done:
    if (fd >= 0)
        close(fd);
    if (rc != KMS_OK && tmp)
        unlink(tmp);
    free(tmp);
    free(dcopy);
    return rc;
}
