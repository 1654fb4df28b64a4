/*
 * kmsctl_io.h - local input and output of the commands that move plaintext
 * (kmsctl encrypt/decrypt/data-key, kmsctl fields): a bounded read of a
 * file or stdin into a buffer wiped when freed (kms_buf.h), and a write to
 * a file or stdout that gives secret outputs mode 0600.
 */
#ifndef KMSCTL_IO_H
#define KMSCTL_IO_H

#include <stddef.h>
#include <stdint.h>

#include "kms_buf.h"

/* Read all of path ('-' = stdin) into *out (kms_buf_wipe frees it), at
 * most max bytes. Returns
 * KMSCTL_EXIT_OK; KMSCTL_EXIT_LOCAL after a message when the file cannot be
 * read; or KMSCTL_IO_TOO_BIG, with nothing printed, when it holds more than
 * max bytes (the caller names its limit). *out is empty on failure. */
#define KMSCTL_IO_TOO_BIG (-1)
int kmsctl_io_read(const char *path, size_t max, struct kms_buf *out);

/* Write data to path ('-' = stdout). A secret output (plaintext, a data
 * key) gets mode 0600, and an existing file is narrowed to it before it is
 * emptied. Returns an exit code (enum kmsctl_exit) after its own message. */
int kmsctl_io_write(const char *path, const void *data, size_t len, int secret);

#endif
