/*
 * kms_http_internal.h - what the two halves of the front share: the front's
 * state, and the request callbacks kms_http.c gives libmicrohttpd, which
 * kms_http_server.c starts. Not for use outside kms/http/kms_http*.c.
 */
#ifndef KMS_HTTP_INTERNAL_H
#define KMS_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include <microhttpd.h>

#include "kms_health.h"
#include "kms_http.h"
#include "xks_config.h"
#include "xks_health.h"
#include "xks_replay.h"

struct kms_http {
    struct MHD_Daemon *daemon;
    struct kms_service *svc;
    const struct kms_config *cfg;
    char *tls_cert, *tls_key, *tls_ca; /* PEM text; MHD keeps pointers */
    struct kms_tls_key *tls_hsm_key;   /* tls.key_uri: the key is in a token */
    struct kms_health *health;
    atomic_uint inflight;  /* requests between their headers and completion */
    atomic_bool draining;  /* SIGTERM: no new connections, replies close theirs */
    bool suspend;          /* pool model with the audit log on: suspend while it commits */
    atomic_uint audit_waits; /* suspended connections the audit writer will resume */
    struct xks_config_holder *xks; /* NULL: the XKS proxy API is off (docs/xks.md) */
    struct xks_health *xks_health; /* its deep check, when on */
    struct xks_replay *xks_replay; /* Decrypt signatures already served, when on */
};

/* Whether a request may wait for its audit event suspended. Not once
 * draining: kms_http_drain saw nothing in flight, so kms_http_stop may
 * already be stopping MHD, and a keep-alive connection's next request must
 * not suspend then (libmicrohttpd aborts the process when it stops with a
 * suspended connection). It commits its event on its own thread instead.
 * Sequentially consistent with kms_http_drain's store and load: a request
 * counted in flight after drain looked finds draining set here. */
static inline bool kms_http_may_suspend(struct kms_http *h)
{
    return h->suspend && !atomic_load(&h->draining);
}

/* libmicrohttpd's access handler: a request's headers, body and dispatch
 * (kms_http.c). cls is the struct kms_http. */
enum MHD_Result kms_http_access(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_size, void **con_cls);

/* libmicrohttpd's completion callback: frees and wipes a request's state. */
void kms_http_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                        enum MHD_RequestTerminationCode toe);

#endif
