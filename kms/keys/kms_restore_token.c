/*
 * kms_restore_token.c - restore detection, the tokens' side (kms_restore.h):
 * key objects of ours the store does not know, live versions whose object
 * no token holds.
 */
#include "kms_restore.h"
#include "kms_restore_internal.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "kms_log.h"
#include "kms_service.h"
#include "kms_store_epoch.h"
#include "p11_key.h"
#include "p11_token.h"

/* ---- the tokens -------------------------------------------------------------- */

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, KMS_HSM_ID_LEN);
}

/* "custos:key:<key_id>:v<N>" -> key_id, N; false for anything else. */
static bool parse_label(const char *label, char key_id[KMS_KEY_ID_SIZE], uint32_t *version)
{
    size_t pl = strlen(KMS_HSM_LABEL_PREFIX);
    if (strncmp(label, KMS_HSM_LABEL_PREFIX, pl) != 0)
        return false;
    const char *k = label + pl;
    if (strlen(k) < KMS_KEY_ID_LEN + 3 || k[KMS_KEY_ID_LEN] != ':' || k[KMS_KEY_ID_LEN + 1] != 'v')
        return false;
    for (size_t i = 0; i < KMS_KEY_ID_LEN; i++)
        if (!((k[i] >= '0' && k[i] <= '9') || (k[i] >= 'a' && k[i] <= 'f')))
            return false;
    char *end = NULL;
    unsigned long v = strtoul(k + KMS_KEY_ID_LEN + 2, &end, 10);
    if (*end != '\0' || v == 0 || v > UINT32_MAX)
        return false;
    memcpy(key_id, k, KMS_KEY_ID_LEN);
    key_id[KMS_KEY_ID_LEN] = '\0';
    *version = (uint32_t)v;
    return true;
}

static kms_err unknown_object(struct kms_store *store, struct p11_token *tok,
                              const struct p11_key_id *id, struct kms_restore_report *r)
{
    bool known = false, confirmed = false;
    KMS_GUARD(kms_store_hsm_id_known(store, id->b, &known));
    if (known)
        return KMS_OK; /* a DESTROYED version's leftover: reconcile's business */
    KMS_GUARD(kms_store_unknown_confirmed(store, id->b, &confirmed));
    if (confirmed)
        return KMS_OK;
    char label[65] = "", key_id[KMS_KEY_ID_SIZE] = "";
    uint32_t version = 0;
    if (p11_key_label(tok, id, label) != KMS_OK)
        label[0] = '\0';
    bool parsed = parse_label(label, key_id, &version);
    struct kms_store_key_raw k;
    bool key_found = false;
    if (parsed)
        KMS_GUARD(kms_store_key_state_any(store, key_id, &k, &key_found));
    r->unknown++;
    struct kms_restore_fix f = {.kind = KMS_FIX_UNKNOWN, .version = version};
    memcpy(f.hsm_id, id->b, KMS_HSM_ID_LEN);
    snprintf(f.token, sizeof(f.token), "%s", p11_token_label(tok));
    if (parsed)
        snprintf(f.key_id, sizeof(f.key_id), "%s", key_id);
    const struct kms_restore_birth *birth = NULL;
    for (size_t i = 0; parsed && !key_found && i < r->n_births && !birth; i++)
        if (strcmp(r->births[i].key_id, key_id) == 0 &&
            strcmp(r->births[i].token, p11_token_label(tok)) == 0)
            birth = &r->births[i];
    for (size_t i = 0; parsed && i < r->n_vtimes; i++)
        if (r->vtimes[i].version == version && strcmp(r->vtimes[i].key_id, key_id) == 0)
            f.created_at = r->vtimes[i].created_at;
    const struct kms_restore_enc *spent = parsed ? kms_restore_enc_find(r, key_id, version) : NULL;
    f.encryptions = spent ? spent->since_mark : 0;
    if (key_found && k.state != KMS_KEY_CREATING && k.state != KMS_KEY_DESTROYED &&
        k.state != KMS_KEY_PENDING_IMPORT) {
        f.kind = KMS_FIX_REATTACH;
        kms_restore_note(r, "token '%s': object '%s' is version %" PRIu32 " of key %s, unknown to the store "
             "(last version %" PRIu32 "): the store is older than the token",
             p11_token_label(tok), label, version, key_id, k.last_version);
    } else if (birth) {
        /* Version 1 brings the key back; later versions follow it. */
        f.kind = version == 1 ? KMS_FIX_REATTACH_KEY : KMS_FIX_REATTACH;
        snprintf(f.tenant, sizeof(f.tenant), "%s", birth->tenant);
        snprintf(f.region, sizeof(f.region), "%s", birth->region);
        f.origin = birth->origin;
        f.state = birth->state;
        if (version == 1 || f.created_at == 0)
            f.created_at = birth->created_at;
        kms_restore_note(r, "token '%s': object '%s' is version %" PRIu32 " of key %s, which the audit log "
             "saw created (tenant %s) and the store lacks: the store is older than the token",
             p11_token_label(tok), label, version, key_id, birth->tenant);
    } else {
        kms_restore_note(r, "token '%s': object '%s' belongs to no key the store or the audit log knows: "
             "the store is older than the token", p11_token_label(tok), label);
    }
    return kms_restore_add_fix(r, &f);
}

/* Is the object of a live version (hsm_id) gone from the token: not among
 * its ids (sorted), not still being created, and not already confirmed as
 * lost by an operator? */
static kms_err live_object_gone(struct kms_store *store, const uint8_t hsm_id[KMS_HSM_ID_LEN],
                                const struct p11_key_id *ids, size_t n_ids,
                                const struct kms_store_creating *creating, size_t n_creating,
                                bool *out_gone)
{
    bool lost = false;
    *out_gone = false;
    if (n_ids > 0 && bsearch(hsm_id, ids, n_ids, sizeof(*ids), cmp_id))
        return KMS_OK;
    for (size_t j = 0; j < n_creating; j++)
        if (memcmp(creating[j].hsm_id, hsm_id, KMS_HSM_ID_LEN) == 0)
            return KMS_OK;
    KMS_GUARD(kms_store_lost_confirmed(store, hsm_id, &lost));
    *out_gone = !lost;
    return KMS_OK;
}

/* A candidate of kms_restore_token_scan or _missing: is hsm_id the object of a
 * version that is live now and still has no object? A CREATING version
 * (kms_store_version_get: KMS_ERR_NOT_FOUND) is
 * a create in flight (on a shared store, possibly on another node) or one
 * that failed and could not discard its row: its object may rightly not
 * exist. kms_store_creating_list names only the CREATING rows old enough
 * to reconcile on PostgreSQL, so the version's own state decides here. A
 * version live now may have been CREATING when the token was listed (its
 * object made after the listing): its object is looked for once more. */
static kms_err missing_confirm(struct kms_store *store, struct p11_token *tok,
                               const uint8_t hsm_id[KMS_HSM_ID_LEN], struct p11_key_id **again,
                               size_t *n_again, bool *listed_again,
                               struct kms_restore_missing *out, bool *out_missing)
{
    struct kms_restore_missing m;
    struct kms_version_record v;
    bool found = false;
    *out_missing = false;
    KMS_GUARD(kms_store_version_by_hsm_id(store, hsm_id, m.key_id, &m.version, &found));
    if (!found)
        return KMS_OK; /* gone from the store meanwhile */
    kms_err rc = kms_store_version_get(store, m.key_id, m.version, &v);
    if (rc == KMS_ERR_NOT_FOUND) {
        kms_err_clear();
        return KMS_OK;
    }
    KMS_GUARD(rc);
    if (v.state == KMS_VERSION_CREATING)
        return KMS_OK;
    if (!*listed_again) {
        KMS_GUARD(p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, again, n_again));
        *listed_again = true;
    }
    if (*n_again > 0 && bsearch(hsm_id, *again, *n_again, sizeof(**again), cmp_id))
        return KMS_OK;
    *out = m;
    *out_missing = true;
    return KMS_OK;
}

kms_err kms_restore_token_scan(struct kms_store *store, struct p11_token *tok,
                               struct kms_restore_report *r, struct p11_key_id **out_ids,
                               size_t *out_n)
{
    struct p11_key_id *ids = NULL;
    size_t n_ids = 0;
    struct kms_hsm_id *live = NULL;
    size_t n_live = 0;
    struct kms_store_creating *creating = NULL;
    size_t n_creating = 0;
    kms_err rc = p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, &ids, &n_ids);
    if (rc == KMS_OK)
        rc = kms_store_hsm_ids_for_token(store, p11_token_label(tok), &live, &n_live);
    if (rc == KMS_OK)
        rc = kms_store_creating_list(store, &creating, &n_creating);
    if (rc != KMS_OK)
        goto done;
    /* p11_key_list_ids returns them sorted by memcmp and distinct. */
    for (size_t i = 0; i < n_ids && rc == KMS_OK; i++)
        if (n_live == 0 || !bsearch(ids[i].b, live, n_live, sizeof(*live), cmp_id))
            rc = unknown_object(store, tok, &ids[i], r);
    size_t missing = 0;
    /* The token was listed before the store was read: on a shared store a
     * version may have gone live on another node since (missing_confirm
     * looks again), or be a create in flight there (CREATING). */
    struct p11_key_id *again = NULL;
    size_t n_again = 0;
    bool listed_again = false;
    for (size_t i = 0; i < n_live && rc == KMS_OK; i++) {
        bool gone = false, is_missing = false;
        struct kms_restore_missing m;
        rc = live_object_gone(store, live[i].bytes, ids, n_ids, creating, n_creating, &gone);
        if (rc != KMS_OK || !gone)
            continue;
        rc = missing_confirm(store, tok, live[i].bytes, &again, &n_again, &listed_again, &m,
                             &is_missing);
        if (rc != KMS_OK || !is_missing)
            continue;
        missing++;
        struct kms_restore_fix f = {.kind = KMS_FIX_LOST};
        memcpy(f.hsm_id, live[i].bytes, KMS_HSM_ID_LEN);
        snprintf(f.token, sizeof(f.token), "%s", p11_token_label(tok));
        snprintf(f.key_id, sizeof(f.key_id), "%s", m.key_id);
        f.version = m.version;
        rc = kms_restore_add_fix(r, &f);
    }
    free(again);
    if (missing > 0) {
        r->token_behind += missing;
        kms_restore_note(r, "token '%s': %zu live key version(s) the store names have no HSM object: the "
             "token is older than the store (or was replaced); restore the token from a backup "
             "at least as new as the store", p11_token_label(tok), missing);
    }
done:
    if (rc == KMS_OK && out_ids) {
        *out_ids = ids;
        *out_n = n_ids;
        ids = NULL;
    }
    free(ids);
    free(live);
    free(creating);
    return rc;
}

kms_err kms_restore_token_missing(struct kms_store *store, struct p11_token *tok,
                                  struct kms_restore_missing *out, size_t max, size_t *out_n)
{
    struct p11_key_id *ids = NULL, *again = NULL;
    size_t n_ids = 0, n_again = 0, n_live = 0, n_creating = 0, missing = 0;
    bool listed_again = false;
    struct kms_hsm_id *live = NULL;
    struct kms_store_creating *creating = NULL;
    *out_n = 0;
    /* Store first, token last: a version that became live before the store
     * was read has had its object since before (objects are made under a
     * CREATING row), so a creation running meanwhile is never counted. The
     * store's list of token objects names CREATING versions too: each
     * candidate's state is checked (missing_confirm). */
    kms_err rc = kms_store_creating_list(store, &creating, &n_creating);
    if (rc == KMS_OK)
        rc = kms_store_hsm_ids_for_token(store, p11_token_label(tok), &live, &n_live);
    if (rc == KMS_OK)
        rc = p11_key_list_ids(tok, KMS_HSM_LABEL_PREFIX, &ids, &n_ids);
    for (size_t i = 0; i < n_live && rc == KMS_OK; i++) {
        bool gone = false, is_missing = false;
        struct kms_restore_missing m;
        rc = live_object_gone(store, live[i].bytes, ids, n_ids, creating, n_creating, &gone);
        if (rc != KMS_OK || !gone)
            continue;
        rc = missing_confirm(store, tok, live[i].bytes, &again, &n_again, &listed_again, &m,
                             &is_missing);
        if (rc != KMS_OK || !is_missing)
            continue;
        if (missing < max)
            out[missing] = m;
        missing++;
    }
    if (rc == KMS_OK)
        *out_n = missing;
    free(ids);
    free(again);
    free(live);
    free(creating);
    return rc;
}

/* ---- the plan ------------------------------------------------------------------ */

