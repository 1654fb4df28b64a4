/*
 * kmsctl_main.c - the Custos command-line client: dispatch to subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "kmsctl_hsm.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl <command> [options]\n"
            "\n"
            "commands:\n"
            "  hsm        local PKCS#11 administration (list, init-token)\n"
            "\n"
            "Run 'kmsctl <command> --help' for the options of a command.\n"
            "exit codes: 0 success, 1 operation failed, 2 usage error\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "hsm") == 0)
        return kmsctl_hsm_main(argc - 1, argv + 1);
    fprintf(stderr, "kmsctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
