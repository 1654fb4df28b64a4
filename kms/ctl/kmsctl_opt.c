/*
 * kmsctl_opt.c - the options kmsctl's server commands share (kmsctl_opt.h).
 */
#include "kmsctl_opt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_ADDR "http://127.0.0.1:8700"

void kmsctl_conn_init(struct kmsctl_conn *c)
{
    const char *a = getenv("CUSTOS_ADDR");
    memset(c, 0, sizeof(*c));
    c->addr = a && *a ? a : DEFAULT_ADDR;
    c->api_key_file = getenv("CUSTOS_API_KEY_FILE");
    c->cacert = getenv("CUSTOS_CACERT");
    c->cert = getenv("CUSTOS_CLIENT_CERT");
    c->key = getenv("CUSTOS_CLIENT_KEY");
}

int kmsctl_conn_option(struct kmsctl_conn *c, int opt, const char *arg)
{
    switch (opt) {
    case KMSCTL_OPT_ADDR:
        c->addr = arg;
        return 1;
    case KMSCTL_OPT_API_KEY_FILE:
        c->api_key_file = arg;
        return 1;
    case KMSCTL_OPT_CACERT:
        c->cacert = arg;
        return 1;
    case KMSCTL_OPT_CERT:
        c->cert = arg;
        return 1;
    case KMSCTL_OPT_KEY:
        c->key = arg;
        return 1;
    case KMSCTL_OPT_CORRELATION_ID:
        c->correlation_id = arg;
        return 1;
    default:
        return 0;
    }
}

int kmsctl_flush_stdout(int ret)
{
    if (fflush(stdout) != 0 && ret == KMSCTL_EXIT_OK) {
        fprintf(stderr, "kmsctl: cannot write output: %s\n", strerror(errno));
        ret = KMSCTL_EXIT_LOCAL;
    }
    return ret;
}

void kmsctl_common_init(struct kmsctl_common *o)
{
    memset(o, 0, sizeof(*o));
    kmsctl_conn_init(&o->conn);
}

int kmsctl_common_option(struct kmsctl_common *o, int opt, const char *arg)
{
    if (opt == KMSCTL_OPT_JSON)
        o->json = 1;
    else if (opt == 'q')
        o->quiet = 1;
    else
        return kmsctl_conn_option(&o->conn, opt, arg);
    return 1;
}

void kmsctl_conn_hoist(int argc, char **argv)
{
    static const char *const names[] = {"--addr", "--api-key-file", "--cacert",
                                        "--cert", "--key",          "--correlation-id"};
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        int step = 0;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]) && !step; k++) {
            size_t n = strlen(names[k]);
            if (strncmp(argv[i], names[k], n) != 0)
                continue;
            if (argv[i][n] == '=')
                step = 1;
            else if (argv[i][n] == '\0')
                step = 2;
        }
        if (step == 0 || i + step > argc)
            return; /* not ours: main() reports it as an unknown command */
        i += step;
    }
    if (i == 1 || i >= argc)
        return;
    /* Rotate argv[1..i] right by one: the command word moves to argv[1],
     * the options keep their order behind it. */
    char *cmd = argv[i];
    memmove(&argv[2], &argv[1], (size_t)(i - 1) * sizeof(argv[0]));
    argv[1] = cmd;
}
