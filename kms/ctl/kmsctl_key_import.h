/*
 * kmsctl_key_import.h - `kmsctl key import-params` and `kmsctl key import`:
 * bring your own key over the Twirp client in kmsctl_rpc.h. Rows of the key
 * group in the verb table (kmsctl_main.c). docs/byok.md is the user's guide.
 */
#ifndef KMSCTL_KEY_IMPORT_H
#define KMSCTL_KEY_IMPORT_H

/* argv as given to `kmsctl key` (argv[0] is "key", the verb word among the
 * arguments). Return the process exit code (enum kmsctl_exit). */
int kmsctl_key_import_params_main(int argc, char **argv);
int kmsctl_key_import_main(int argc, char **argv);

#endif
