/*
 * audit_event.h - turning a request into its audit event.
 *
 * The HTTP front calls kms_audit_request() once for every request that
 * reached a route (allowed or refused, authenticated or not) before it
 * answers. An error means the event is not durable: the front must not
 * answer success (fail closed). That includes a request whose audit
 * region (kms_audit_region) was refused at start: it is answered
 * `unavailable`, never served, and never logged in another region.
 */
#ifndef AUDIT_EVENT_H
#define AUDIT_EVENT_H

#include "audit_log.h"
#include "kms_error.h"
#include "kms_call.h"

/* The region whose log holds the event of this request as it stands
 * (docs/audit.md, "Which log"): the region of the key (or of the audit
 * log, the recovery) the request named, when this node is configured with
 * it; else the caller's home region, when this node is configured with it;
 * else NULL: the first region in the configuration whose log is served
 * (an event with no region: failed authentication, a request refused
 * before it named anything). A configured region whose log was refused at
 * start is returned too: such a request is refused `unavailable` and its
 * event is written nowhere (kms_audit_request). */
const char *kms_audit_region(const struct kms_call *call);

/* operation: the RPC method; outcome: KMS_OK or the error the caller gets;
 * detail: a non-secret note or NULL; correlation_id may be "" . */
kms_err kms_audit_request(struct kms_call *call, const char *operation, kms_err outcome,
                          const char *detail, const char *correlation_id);

/* The same without waiting, for a front that suspends the request: when
 * *queued comes back true, fn(arg, durable) is called exactly once later
 * (see audit_log_submit); when false, fn is never called and the return
 * says whether the event needs no log (KMS_OK: audit off) or could not be
 * queued (an error: fail closed). */
kms_err kms_audit_request_submit(struct kms_call *call, const char *operation, kms_err outcome,
                                 const char *detail, const char *correlation_id,
                                 audit_done_fn fn, void *arg, bool *queued);

#endif
