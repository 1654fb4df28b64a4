/*
 * kmsctl_link.h - `kmsctl link mint | redeem | revoke`: the broker side of
 * link tokens (docs/link-tokens.md), over the Twirp client in kmsctl_rpc.h.
 */
#ifndef KMSCTL_LINK_H
#define KMSCTL_LINK_H

/* argv[0] is "link", the verb word among the arguments. Returns the process
 * exit code (enum kmsctl_exit): redeem exits 1 for a refused token. */
int kmsctl_link_main(int argc, char **argv);

#endif
