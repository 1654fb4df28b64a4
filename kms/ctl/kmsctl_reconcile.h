/*
 * kmsctl_reconcile.h - `kmsctl reconcile`: the operator's command after a
 * restore (docs/operations.md "Backup and restore"). It prints the plan
 * (what would be reattached, rebuilt, accepted as lost; nothing is ever
 * destroyed) and applies it only with --confirm.
 *
 * The plan and its application need the tokens, their PINs and the store's
 * exclusive lock, and are kmsd's own code (kms_restore.c, kms_service.c):
 * kmsctl is a client and never links handlers, so it checks what it can
 * (the configuration loads, the store exists, no kmsd holds its lock) and
 * then execs kmsd --config CONFIG --reconcile [--confirm]. kmsd reads the
 * PIN files named in the configuration; no PIN is ever on a command line.
 */
#ifndef KMSCTL_RECONCILE_H
#define KMSCTL_RECONCILE_H

/* argv[0] is "reconcile". Returns the process exit code when it does not
 * exec kmsd (whose exit code is then the command's). */
int kmsctl_reconcile_main(int argc, char **argv);

#endif
