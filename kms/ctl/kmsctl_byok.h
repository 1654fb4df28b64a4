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

/* argv as given to `kmsctl key` (argv[0] is "key"). If its command word is
 * import-params or import, run that, store the exit code in *out_rc and
 * return 1; otherwise return 0 and touch nothing. */
int kmsctl_byok_key_dispatch(int argc, char **argv, int *out_rc);

#endif
