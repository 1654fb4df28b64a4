/*
 * kmsctl_byok.h - bring your own key: `kmsctl key import-params`,
 * `kmsctl key import` (over the Twirp client in kmsctl_rpc.h) and
 * `kmsctl byok wrap`, which wraps a key on the tenant's machine with OpenSSL
 * alone and talks to no server. docs/byok.md is the user's guide.
 */
#ifndef KMSCTL_BYOK_H
#define KMSCTL_BYOK_H

/* argv[0] is "byok". Returns the process exit code (enum kmsctl_exit). */
int kmsctl_byok_main(int argc, char **argv);

/* Rows of the key group: argv as given to `kmsctl key` (argv[0] is "key",
 * the verb word among the arguments). Return the process exit code. */
int kmsctl_key_import_params_main(int argc, char **argv);
int kmsctl_key_import_main(int argc, char **argv);

#endif
