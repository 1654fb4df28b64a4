/*
 * kms_secret.c - wiped secret buffers and secret sources.
 */
#include "kms_secret.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

kms_err kms_secret_from(const void *data, size_t len, struct kms_secret *out)
{
    out->data = NULL;
    out->len = 0;
    KMS_ENSURE(len <= KMS_SECRET_MAX, KMS_ERR_TOO_LARGE, "secret longer than %d bytes",
               KMS_SECRET_MAX);
    out->data = malloc(len ? len : 1);
    KMS_ENSURE(out->data != NULL, KMS_ERR_NOMEM, "out of memory");
    memcpy(out->data, data, len);
    out->len = len;
    return KMS_OK;
}

void kms_secret_wipe(struct kms_secret *s)
{
    if (s == NULL || s->data == NULL)
        return;
    OPENSSL_cleanse(s->data, s->len);
    free(s->data);
    s->data = NULL;
    s->len = 0;
}

static kms_err read_file_secret(const char *path, struct kms_secret *out)
{
    kms_err rc = KMS_OK;
    uint8_t buf[KMS_SECRET_MAX + 1];
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    KMS_ENSURE(fd >= 0, KMS_ERR_CONFIG, "secret file %s: %s", path, strerror(errno));

    struct stat st;
    KMS_ENSURE_GOTO(fstat(fd, &st) == 0, done, KMS_ERR_CONFIG, "secret file %s: %s", path,
                    strerror(errno));
    KMS_ENSURE_GOTO(S_ISREG(st.st_mode), done, KMS_ERR_CONFIG,
                    "secret file %s: not a regular file", path);
    /* A secret readable by group or others is refused, as ssh does for keys. */
    KMS_ENSURE_GOTO((st.st_mode & 077) == 0, done, KMS_ERR_CONFIG,
                    "secret file %s: mode %04o is too open (want 0600 or 0400)", path,
                    (unsigned)(st.st_mode & 07777));

    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        KMS_ENSURE_GOTO(n >= 0, done, KMS_ERR_IO, "secret file %s: %s", path, strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        KMS_ENSURE_GOTO(len <= KMS_SECRET_MAX, done, KMS_ERR_TOO_LARGE,
                        "secret file %s: longer than %d bytes", path, KMS_SECRET_MAX);
    }
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    KMS_ENSURE_GOTO(len > 0, done, KMS_ERR_CONFIG, "secret file %s: empty", path);
    rc = kms_secret_from(buf, len, out);
done:
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    return rc;
}

kms_err kms_secret_read_source(const char *source, struct kms_secret *out)
{
    out->data = NULL;
    out->len = 0;
    KMS_ENSURE(source != NULL && *source, KMS_ERR_CONFIG, "no secret source given");
    if (strncmp(source, "file:", 5) == 0)
        return read_file_secret(source + 5, out);
    if (strncmp(source, "env:", 4) == 0) {
        const char *v = getenv(source + 4);
        KMS_ENSURE(v != NULL && *v, KMS_ERR_CONFIG, "secret source %s: variable not set",
                   source);
        return kms_secret_from(v, strlen(v), out);
    }
    /* The value is not echoed: a misconfigured source may be the secret itself. */
    return kms_err_set(KMS_ERR_CONFIG, "secret source must start with file: or env:");
}

/* max_align_t keeps the block behind the header aligned like malloc's. */
union alloc_header {
    size_t size;
    max_align_t align;
};

void *kms_secret_alloc(size_t n)
{
    if (n > SIZE_MAX - sizeof(union alloc_header))
        return NULL;
    union alloc_header *h = malloc(sizeof(*h) + n);
    if (h == NULL)
        return NULL;
    h->size = n;
    return h + 1;
}

void kms_secret_free(void *p)
{
    if (p == NULL)
        return;
    union alloc_header *h = (union alloc_header *)p - 1;
    OPENSSL_cleanse(p, h->size);
    free(h);
}
