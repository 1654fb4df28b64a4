/*
 * kmsctl_backup.h - `kmsctl backup`: a consistent backup of a node's state
 * (store, audit logs, configuration, policy) while kmsd runs, taken in the
 * order that makes a restore safe: the store first, then the audit logs
 * (which then cover everything the store knows), and the HSM's own backup
 * last (which then holds every object the store names). See
 * docs/operations.md, "Backup and restore".
 */
#ifndef KMSCTL_BACKUP_H
#define KMSCTL_BACKUP_H

/* argv[0] is "backup". Returns the process exit code. */
int kmsctl_backup_main(int argc, char **argv);

#endif
