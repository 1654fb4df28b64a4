/*
 * kmsctl.h - what every kmsctl command shares and includes nothing of
 * kmsctl's own: the exit codes and the verb table.
 *
 * Every subcommand is one row of the verb table in kmsctl_main.c: a group
 * word ("key", "encrypt", "audit"), a verb word inside the group ("create",
 * "import"; NULL for a group whose own code reads its verbs), the function
 * that runs it and a line of help. `kmsctl --help` is generated from the
 * rows; a new command is a function and one row.
 */
#ifndef KMSCTL_H
#define KMSCTL_H

#include <stddef.h>

/* Exit codes of every kmsctl command. */
enum kmsctl_exit {
    KMSCTL_EXIT_OK = 0,
    KMSCTL_EXIT_REFUSED = 1,   /* the server answered with a Twirp error */
    KMSCTL_EXIT_USAGE = 2,     /* bad command line */
    KMSCTL_EXIT_TRANSPORT = 3, /* no connection, TLS failure, timeout, non-Twirp reply */
    KMSCTL_EXIT_LOCAL = 4,     /* a local file or secret could not be used */
    /* kmsctl audit head/export with a known head: the server's log is
     * shorter than a head the auditor holds (rolled back or forked); the
     * server's answer was failed_precondition. An alarm, not a failure to
     * retry. */
    KMSCTL_EXIT_ROLLBACK = 5,
};

#define KMSCTL_EXIT_USAGE_TEXT                                                                     \
    "exit codes: 0 success; 1 the server refused or failed the request;\n"                         \
    "            2 usage error; 3 transport error (connect, TLS, timeout,\n"                       \
    "            non-Twirp reply); 4 local file or secret error\n"

/* Runs one command. argv[0] is the group word ("key"); the verb word, if
 * any, is still among the arguments, where the command's getopt finds it.
 * Returns the process exit code (enum kmsctl_exit). */
typedef int kmsctl_run_fn(int argc, char **argv);

struct kmsctl_verb {
    const char *group; /* "key" */
    const char *name;  /* "create"; NULL: the group's own code reads the verb */
    kmsctl_run_fn *run;
    /* Help: on a group's first row, the group's line(s) in `kmsctl --help`
     * (continuation lines are indented by the generator); NULL elsewhere. */
    const char *help;
};

#endif
