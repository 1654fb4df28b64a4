/*
 * kmsctl_rpc.h - the kmsctl Twirp client: one call function, error
 * decoding, and the request plumbing (map fields, K=V pairs). Used by every
 * kmsctl command that talks to kmsd; the connection settings it opens with
 * come from kmsctl_opt.h. The API key is never taken from argv, where ps(1)
 * and shell history see it.
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
#include "kmsctl_opt.h"

struct kmsctl_rpc;

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
