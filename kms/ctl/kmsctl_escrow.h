/*
 * kmsctl_escrow.h - `kmsctl recovery` (officers' M-of-N recovery) and
 * `kmsctl officer sign` (offline approval signatures).
 */
#ifndef KMSCTL_ESCROW_H
#define KMSCTL_ESCROW_H

int kmsctl_recovery_main(int argc, char **argv);
int kmsctl_officer_main(int argc, char **argv);

#endif
