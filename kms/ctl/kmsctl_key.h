/*
 * kmsctl_key.h - `kmsctl key ...`: the key-admin side of KeyService
 * (create, describe, list, rotate, enable, disable, schedule-deletion,
 * cancel-deletion), over the Twirp client in kmsctl_rpc.h.
 */
#ifndef KMSCTL_KEY_H
#define KMSCTL_KEY_H

/* argv[0] is "key". Returns the process exit code (enum kmsctl_exit). */
int kmsctl_key_main(int argc, char **argv);

#endif
