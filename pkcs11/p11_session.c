/*
 * p11_session.c - leases on a token's sessions, and retry-once.
 *
 * The pool (p11_pool.c) counts and lends the sessions; the token
 * (p11_token.c) opens and logs them in and knows whether it is there. A
 * lease here adds what a request needs on top: a token marked unavailable
 * is probed again before its pool is asked, a session given back broken
 * takes the handle cache with it, and p11_with_session replaces a lost
 * session and tries once more.
 */
#include <stdio.h>

#include "kms_log.h"
#include "p11_internal.h"

kms_err p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out)
{
    if (atomic_load(&tok->unavailable)) {
        /* Re-check rather than fail forever: the token may be back. */
        kms_err prc = p11_token_probe(tok);
        if (prc != KMS_OK)
            return prc;
    }
    return p11_pool_take(tok->pool, out);
}

void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s, bool broken)
{
    /* A lost session usually means lost handles too (a token reset, a
     * re-login): the next take starts from an empty cache. */
    if (broken)
        p11_cache_clear(&tok->cache);
    p11_pool_give(tok->pool, s, broken);
}

kms_err p11_with_session(struct p11_token *tok, p11_session_fn fn, void *arg)
{
    for (int attempt = 0;; attempt++) {
        CK_SESSION_HANDLE s;
        kms_err rc = p11_session_take(tok, &s);
        if (rc == KMS_OK) {
            rc = fn(tok, s, arg);
            bool broken = rc == KMS_ERR_HSM_SESSION || rc == KMS_ERR_HSM_UNAVAILABLE;
            p11_session_give(tok, s, broken);
        }
        /* An error PKCS#11 does not sort (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR,
         * ...) may be the token's or the request's. Ask the token: when it
         * no longer answers C_GetTokenInfo the region is out of service
         * (`unavailable`, and re-probed from then on); when it answers, the
         * request failed (`internal`). A token whose directory went away
         * answers CKR_OBJECT_HANDLE_INVALID, then CKR_GENERAL_ERROR to
         * C_Login: this is where it is noticed. */
        if (rc == KMS_ERR_HSM) {
            char first[400];
            snprintf(first, sizeof(first), "%s", kms_err_detail());
            if (p11_token_probe(tok) != KMS_OK) {
                char why[400];
                snprintf(why, sizeof(why), "%s", kms_err_detail());
                rc = kms_err_set(KMS_ERR_HSM_UNAVAILABLE, "%s; %s", first, why);
            } else {
                rc = kms_err_set(KMS_ERR_HSM, "%s", first);
            }
        }
        if (rc == KMS_ERR_HSM_UNAVAILABLE)
            p11_token_mark_unavailable(tok);
        if (rc != KMS_ERR_HSM_SESSION || attempt > 0)
            return rc;
        kms_log_warn("pkcs11", "token '%s': session lost (%s); retrying once with a new session",
                     tok->label, kms_err_detail());
    }
}
