/*
 * kmsctl_io.c - bounded reads and careful writes of local files for the
 * commands that move plaintext (kmsctl_io.h).
 */
#include "kmsctl_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "kmsctl.h"

int kmsctl_io_read(const char *path, size_t max, struct kms_buf *out)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    int ret = KMSCTL_EXIT_LOCAL;
    /* One byte of room past max tells "too long" from "exactly max". */
    kms_buf_init(out, max + 1);
    if (fd < 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    if (kms_buf_reserve(out, max + 1) != KMS_OK) {
        fprintf(stderr, "kmsctl: %s: out of memory\n", path);
        goto done;
    }
    for (;;) {
        ssize_t n = read(fd, out->data + out->len, out->cap - out->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        kms_buf_commit(out, (size_t)n);
        if (out->len == out->cap) {
            ret = KMSCTL_IO_TOO_BIG;
            goto done;
        }
    }
    ret = KMSCTL_EXIT_OK;
done:
    if (fd > STDIN_FILENO)
        close(fd);
    if (ret != KMSCTL_EXIT_OK)
        kms_buf_wipe(out);
    return ret;
}

int kmsctl_io_write(const char *path, const void *data, size_t len, int secret)
{
    const uint8_t *p = data;
    int to_stdout = strcmp(path, "-") == 0;
    int fd = to_stdout ? STDOUT_FILENO
                       : open(path, O_WRONLY | O_CREAT | O_CLOEXEC, secret ? 0600 : 0666);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        if (fd >= 0 && !to_stdout)
            close(fd);
        return KMSCTL_EXIT_LOCAL;
    }
    int ret = KMSCTL_EXIT_LOCAL;
    /* Narrow an existing file before it holds the secret, then empty it. */
    if (!to_stdout && S_ISREG(st.st_mode) &&
        ((secret && (st.st_mode & 077) && fchmod(fd, 0600) != 0) || ftruncate(fd, 0) != 0)) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        goto done;
    }
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
            goto done;
        }
        p += w;
        len -= (size_t)w;
    }
    ret = KMSCTL_EXIT_OK;
done:
    if (!to_stdout && close(fd) != 0 && ret == KMSCTL_EXIT_OK) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        ret = KMSCTL_EXIT_LOCAL;
    }
    return ret;
}
