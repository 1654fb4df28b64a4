/*
 * kmsctl_key.h - `kmsctl key ...`: the key-admin side of KeyService
 * (create, describe, list, rotate, enable, disable, schedule-deletion,
 * cancel-deletion), over the Twirp client in kmsctl_rpc.h.
 */
#ifndef KMSCTL_KEY_H
#define KMSCTL_KEY_H

/* argv[0] is "key". Returns the process exit code (enum kmsctl_exit). */
int kmsctl_key_main(int argc, char **argv);

/* The key summary and JSON object of the key commands, for other commands
 * whose replies carry a key (kmsctl_byok.c). The JSON object is the
 * caller's to json_decref. */
struct Custos__V1__KeyMetadata;
struct json_t;
void kmsctl_key_print_text(const struct Custos__V1__KeyMetadata *k);
struct json_t *kmsctl_key_to_json(const struct Custos__V1__KeyMetadata *k);

#endif
