/*
 * prov_client.h - the provider's Twirp client for kmsd (libcurl, protobuf).
 *
 * Created at provider init without any network traffic; the first call
 * reads the API key file and connects. Connections are kept (a pool of
 * CURL handles, one per concurrent caller) and are never shared with a
 * forked child: a call in a process whose pid differs from the pool's drops
 * the inherited handles without closing them (closing would send a TLS
 * close_notify on the parent's connection) and connects afresh.
 */
#ifndef PROV_CLIENT_H
#define PROV_CLIENT_H

#include <protobuf-c/protobuf-c.h>

#include "prov.h"

/* Settings; every string may be NULL. prov_client_new copies them. */
struct prov_client_cfg {
    const char *addr;         /* http(s)://host:port of kmsd */
    const char *api_key_file; /* bearer key file, mode 0600/0400 */
    const char *cacert;       /* PEM CA bundle for kmsd's certificate */
    const char *cert, *key;   /* PEM client certificate and key (mTLS) */
    long connect_timeout_ms;  /* 0: default */
    long timeout_ms;          /* whole request; 0: default */
};

#define PROV_CONNECT_TIMEOUT_MS_DEFAULT 3000L
#define PROV_TIMEOUT_MS_DEFAULT 10000L
#define PROV_TIMEOUT_MS_MAX 300000L

/* NULL only when out of memory. Never touches the network. */
struct prov_client *prov_client_new(const struct prov_client_cfg *cfg);
void prov_client_free(struct prov_client *c);

/* POST req to /twirp/custos.v1.KeyService/<method>; on success *out is the
 * decoded reply (free with protobuf_c_message_free_unpacked). On failure an
 * error is raised on ctx naming kmsd's Twirp code, message and request id
 * (or the transport problem), and 0 is returned. */
int prov_client_call(struct prov_ctx *ctx, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **out);

#endif
