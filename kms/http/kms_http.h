/*
 * kms_http.h - the HTTP(S) front: libmicrohttpd with an internal thread pool
 * (epoll), explicit limits, TLS and mutual TLS, bearer API keys, Twirp
 * dispatch; and the operational endpoints GET /livez, /readyz (no
 * credentials, status code only) and /metrics (an operator's credentials).
 */
#ifndef KMS_HTTP_H
#define KMS_HTTP_H

#include "kms_error.h"
#include "kms_service.h"

struct kms_http;

/* Start listening as the service's configuration says. */
kms_err kms_http_start(struct kms_service *svc, struct kms_http **out);

/* SIGHUP: reload what the front owns (the XKS endpoints file, when
 * configured); a file that does not load is logged and the old one stays. */
void kms_http_reload(struct kms_http *h);

/* Graceful stop, step one: stop accepting connections, mark replies
 * "Connection: close", and wait up to timeout_s for every request already
 * received to complete (its reply sent). Returns how many were still in
 * flight at the deadline (0: drained). */
unsigned kms_http_drain(struct kms_http *http, unsigned timeout_s);

/* Stop accepting, finish in-flight requests, stop the threads. NULL ok. */
void kms_http_stop(struct kms_http *http);

/* The header limits (KMS_HTTP_BEARER_MAX, KMS_HTTP_CORRELATION_MAX) and the
 * checks made before a body is read are in kms_httpreq.h. */

#endif
