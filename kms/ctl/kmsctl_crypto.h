/*
 * kmsctl_crypto.h - the broker side of KeyService from the command line:
 * `kmsctl encrypt`, `decrypt`, `re-encrypt`, `data-key generate|decrypt`.
 * Plaintext and data keys pass through wiped buffers only, and files that
 * receive them are created with mode 0600.
 */
#ifndef KMSCTL_CRYPTO_H
#define KMSCTL_CRYPTO_H

/* argv[0] is "encrypt", "decrypt", "re-encrypt" or "data-key". Returns the
 * process exit code (enum kmsctl_exit). */
int kmsctl_crypto_main(int argc, char **argv);

#endif
