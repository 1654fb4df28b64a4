/*
 * kmsctl_hsm.h - `kmsctl hsm ...`: operator commands that talk to a PKCS#11
 * module directly (no server): list tokens, initialise a token.
 */
#ifndef KMSCTL_HSM_H
#define KMSCTL_HSM_H

/* argv[0] is "hsm". Returns the process exit code. */
int kmsctl_hsm_main(int argc, char **argv);

#endif
