/*
 * kmsctl_opt.h - the options every kmsctl command that talks to kmsd parses
 * the same way, parsed once here: the connection settings, and --json and
 * -q where a command prints records.
 *
 * Connection settings come from options (the KMSCTL_CONN_LONGOPTS table
 * below) over environment variables over defaults:
 *   --addr URL            CUSTOS_ADDR          default http://127.0.0.1:8700
 *   --api-key-file PATH   CUSTOS_API_KEY_FILE  bearer key, file of mode 0600
 *   --cacert PATH         CUSTOS_CACERT        CA bundle that signs kmsd's cert
 *   --cert PATH           CUSTOS_CLIENT_CERT   client certificate (mTLS), PEM
 *   --key PATH            CUSTOS_CLIENT_KEY    its private key, PEM
 *   --correlation-id ID   (none)               sent as X-Correlation-Id
 */
#ifndef KMSCTL_OPT_H
#define KMSCTL_OPT_H

#include <getopt.h>

#include "kmsctl.h"

/* getopt_long values of the connection options (outside the char range so
 * they cannot clash with a command's short options). */
enum {
    KMSCTL_OPT_ADDR = 0x1000,
    KMSCTL_OPT_API_KEY_FILE,
    KMSCTL_OPT_CACERT,
    KMSCTL_OPT_CERT,
    KMSCTL_OPT_KEY,
    KMSCTL_OPT_CORRELATION_ID,
    KMSCTL_OPT_JSON, /* --json, in KMSCTL_OUT_LONGOPTS */
};

/* Spliced into a command's struct option array. */
/* clang-format off */
#define KMSCTL_CONN_LONGOPTS                                                                   \
    {"addr", required_argument, NULL, KMSCTL_OPT_ADDR},                                        \
    {"api-key-file", required_argument, NULL, KMSCTL_OPT_API_KEY_FILE},                        \
    {"cacert", required_argument, NULL, KMSCTL_OPT_CACERT},                                    \
    {"cert", required_argument, NULL, KMSCTL_OPT_CERT},                                        \
    {"key", required_argument, NULL, KMSCTL_OPT_KEY},                                          \
    {"correlation-id", required_argument, NULL, KMSCTL_OPT_CORRELATION_ID}

/* The output options of commands that print records: --json (a JSON
 * object) and -q/--quiet (ids only). */
#define KMSCTL_OUT_LONGOPTS                                                                    \
    {"json", no_argument, NULL, KMSCTL_OPT_JSON},                                              \
    {"quiet", no_argument, NULL, 'q'}

/* Usage lines for the options above, for each command's --help. */
#define KMSCTL_CONN_USAGE                                                                      \
    "connection options (also accepted before the command; env vars in brackets):\n"          \
    "  --addr URL                kmsd base URL [CUSTOS_ADDR] (default http://127.0.0.1:8700)\n" \
    "  --api-key-file PATH       bearer API key, file of mode 0600 [CUSTOS_API_KEY_FILE]\n"    \
    "  --cacert PATH             CA certificate(s) for kmsd's TLS cert, PEM [CUSTOS_CACERT]\n" \
    "  --cert PATH               client certificate for mutual TLS, PEM [CUSTOS_CLIENT_CERT]\n" \
    "  --key PATH                client private key, PEM [CUSTOS_CLIENT_KEY]\n"                \
    "  --correlation-id ID       sent as X-Correlation-Id (<= 128 visible ASCII)\n"
/* clang-format on */

/* Settings: pointers into argv or the environment, not owned. */
struct kmsctl_conn {
    const char *addr;
    const char *api_key_file;
    const char *cacert;
    const char *cert;
    const char *key;
    const char *correlation_id;
};

/* Fill c from the environment and defaults. */
void kmsctl_conn_init(struct kmsctl_conn *c);

/* If opt is one of KMSCTL_OPT_*, store arg in c and return 1; else 0. */
int kmsctl_conn_option(struct kmsctl_conn *c, int opt, const char *arg);

/* The options every command that talks to kmsd parses the same way:
 * connection settings and, where the command takes them, --json and -q. */
struct kmsctl_common {
    struct kmsctl_conn conn;
    int json, quiet;
};

/* kmsctl_conn_init, and no output option. */
void kmsctl_common_init(struct kmsctl_common *o);

/* If opt is a connection option, KMSCTL_OPT_JSON or 'q', record it in o and
 * return 1; else 0 (the command's own option). */
int kmsctl_common_option(struct kmsctl_common *o, int opt, const char *arg);

/* main() helper: connection options written before the command word
 * ("kmsctl --addr X key list") are moved after it by rotating argv so the
 * command lands in argv[1]; the command then parses them with its own
 * options. Only the exact spellings of KMSCTL_CONN_LONGOPTS ("--addr X" or
 * "--addr=X") are recognised there. */
void kmsctl_conn_hoist(int argc, char **argv);

/* The end of a command that printed to stdout: if stdout cannot be flushed
 * (disk full, closed pipe), a command that had succeeded fails with exit 4
 * and says so. Returns the exit code. */
int kmsctl_flush_stdout(int ret);

#endif
