/*
 * kmsctl_sign.h - `kmsctl key sign | verify | public-key`: the broker side
 * of signing keys (docs/signing.md), over the Twirp client in kmsctl_rpc.h.
 */
#ifndef KMSCTL_SIGN_H
#define KMSCTL_SIGN_H

/* argv[0] is "key", the verb word among the arguments. Returns the process
 * exit code (enum kmsctl_exit); verify exits 1 for a signature that does
 * not verify. */
int kmsctl_sign_main(int argc, char **argv);

#endif
