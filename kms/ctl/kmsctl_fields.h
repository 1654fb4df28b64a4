/*
 * kmsctl_fields.h - `kmsctl fields encrypt|decrypt|blind-index`: the broker
 * side of FieldService (proto/fields.proto) from the command line, JSON in
 * and out. Values pass through wiped buffers where this code holds them, and
 * files that receive plaintext are created with mode 0600.
 */
#ifndef KMSCTL_FIELDS_H
#define KMSCTL_FIELDS_H

/* argv[0] is "fields". Returns the process exit code (enum kmsctl_exit). */
int kmsctl_fields_main(int argc, char **argv);

#endif
