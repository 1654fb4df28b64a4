/*
 * kmsctl_fields_run.h - the three `kmsctl fields` commands, given their
 * parsed arguments (kmsctl_fields.c parses them). Inputs are read from
 * files or stdin, never argv; outputs that hold plaintext are created 0600.
 */
#ifndef KMSCTL_FIELDS_RUN_H
#define KMSCTL_FIELDS_RUN_H

#include <stddef.h>
#include <stdint.h>

#include "kmsctl_rpc.h"

#define MAX_FIELDS 32
/* JSON of 32 values of 4 KiB, escaped (a \u escape is 6 bytes per input byte). */
#define FIELDS_INPUT_MAX (1u << 20)

struct kmsctl_fields_args {
    const char *verb;
    const char *key_id, *in, *out, *field;
    struct kmsctl_kv ctx;
    /* encrypt: names to encrypt deterministically, and NAME=KIND pairs;
     * blind-index: the one canonicalizer. */
    char *det[MAX_FIELDS];
    size_t n_det;
    struct kmsctl_kv canon;
    int canon_one;
    uint32_t bits;
    int all_versions;
    /* Parsing only: the --canon arguments as given, and F() bits seen. */
    char *canon_arg[MAX_FIELDS];
    size_t n_canon_arg;
    unsigned seen;
};

/* Each returns the process exit code (enum kmsctl_exit). */
int kmsctl_fields_encrypt(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a);
int kmsctl_fields_decrypt(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a);
int kmsctl_fields_blind_index(struct kmsctl_rpc *rpc, struct kmsctl_fields_args *a);

/* The Canonicalizer value of "raw", "e164", "email" or "email-ci"; 0 for
 * anything else. */
int kmsctl_fields_parse_canon(const char *s);

#endif
