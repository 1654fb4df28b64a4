/*
 * kmsctl_rpc.h - the kmsctl Twirp client: connection settings, one call
 * function, error decoding. Used by every kmsctl command that talks to kmsd.
 *
 * Connection settings come from options shared by every such command (the
 * KMSCTL_CONN_LONGOPTS table below) over environment variables over defaults:
 *   --addr URL            CUSTOS_ADDR          default http://127.0.0.1:8700
 *   --api-key-file PATH   CUSTOS_API_KEY_FILE  bearer key, file of mode 0600
 *   --cacert PATH         CUSTOS_CACERT        CA bundle that signs kmsd's cert
 *   --cert PATH           CUSTOS_CLIENT_CERT   client certificate (mTLS), PEM
 *   --key PATH            CUSTOS_CLIENT_KEY    its private key, PEM
 *   --correlation-id ID   (none)               sent as X-Correlation-Id
 * The API key is never taken from argv, where ps(1) and shell history see it.
 *
 * Every function that can fail prints its own one-line message to stderr and
 * returns a process exit code (enum kmsctl_exit), so commands just pass the
 * code up. Single-threaded: one struct kmsctl_rpc per process.
 */
#ifndef KMSCTL_RPC_H
#define KMSCTL_RPC_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

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
    "  --correlation-id ID       sent as X-Correlation-Id (<= 128 printable ASCII)\n"
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

struct kmsctl_rpc;

/* The end of a command that printed to stdout: if stdout cannot be flushed
 * (disk full, closed pipe), a command that had succeeded fails with exit 4
 * and says so. Returns the exit code. */
int kmsctl_flush_stdout(int ret);

/* Validate settings, read the API key (wiped again by kmsctl_rpc_free) and
 * prepare an HTTP handle. Returns an exit code; *out is NULL on failure. */
int kmsctl_rpc_open(const struct kmsctl_conn *c, struct kmsctl_rpc **out);

/* Wipe the API key and headers, close the connection. NULL is a no-op. */
void kmsctl_rpc_free(struct kmsctl_rpc *rpc);

/* POST req to /twirp/custos.v1.KeyService/<method> and unpack the reply as
 * resp_desc into *out_resp (free it with protobuf_c_message_free_unpacked;
 * wipe any secret fields first). Request and reply bytes are wiped after use,
 * since they may carry plaintext or data keys. Twirp errors are printed as
 * "kmsctl: <code>: <msg> (request id <id>)". Returns an exit code. */
int kmsctl_rpc_call(struct kmsctl_rpc *rpc, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **out_resp);

/* kmsctl_rpc_call for a method of another service ("custos.v1.AuditService").
 * If out_body is not NULL it receives a malloc'ed copy of the reply body
 * exactly as received (*out_len bytes; the caller frees it, and must only ask
 * for it on replies that carry no secret, since it is not wiped here). */
int kmsctl_rpc_call_service(struct kmsctl_rpc *rpc, const char *service, const char *method,
                            const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc,
                            ProtobufCMessage **out_resp, uint8_t **out_body, size_t *out_len);

/* The Twirp code of the last call's error reply ("failed_precondition"),
 * "" when the last call did not end in a Twirp error. */
const char *kmsctl_rpc_last_code(const struct kmsctl_rpc *rpc);

/* A map<string, string> field for a request: protobuf-c gives each map its
 * own entry message type, all shaped { key = 1; value = 2; }, so entries are
 * built through entry_desc. The strings are borrowed, not copied; free the
 * array with kmsctl_rpc_map_free, never with protobuf-c. NULL when out of
 * memory. */
ProtobufCMessage **kmsctl_rpc_map_new(char *const *keys, char *const *values, size_t n,
                                      const ProtobufCMessageDescriptor *entry_desc);
void kmsctl_rpc_map_free(ProtobufCMessage **entries, size_t n);

/* Key/value pairs from repeated "K=V" arguments (encryption contexts): split
 * at the first '=', K non-empty, keys unique, at most KMSCTL_KV_MAX pairs.
 * Keys are copies, values point into the argument. */
#define KMSCTL_KV_MAX 64
struct kmsctl_kv {
    size_t n;
    char *key[KMSCTL_KV_MAX];
    char *value[KMSCTL_KV_MAX];
};

/* Add arg; on a bad pair print why (naming opt) and return 0. */
int kmsctl_kv_add(struct kmsctl_kv *kv, const char *opt, char *arg);

/* kmsctl_rpc_map_new over kv; prints its own error. */
ProtobufCMessage **kmsctl_kv_map(const struct kmsctl_kv *kv,
                                 const ProtobufCMessageDescriptor *entry_desc);

void kmsctl_kv_cleanup(struct kmsctl_kv *kv);

#endif
