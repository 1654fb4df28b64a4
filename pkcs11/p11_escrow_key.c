/*
 * p11_escrow_key.c - a region's escrow key (see p11_escrow_key.h).
 */
#include "p11_escrow_key.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kms_err p11_escrow_key_find(struct p11_token *tok, struct p11_key_id *out_id, bool *out_found)
{
    char want[80];
    snprintf(want, sizeof(want), P11_ESCROW_LABEL_PREFIX "%s", p11_token_region(tok));
    struct p11_key_id *ids = NULL;
    size_t n = 0;
    *out_found = false;
    KMS_GUARD(p11_key_list_ids(tok, P11_ESCROW_LABEL_PREFIX, &ids, &n));
    kms_err rc = KMS_OK;
    size_t matches = 0;
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        char label[65];
        rc = p11_key_label(tok, &ids[i], label);
        if (rc == KMS_OK && strcmp(label, want) == 0) {
            *out_id = ids[i];
            matches++;
        }
    }
    free(ids);
    KMS_GUARD(rc);
    /* Two escrow keys would make "which blob is under which key" a guess. */
    KMS_ENSURE(matches <= 1, KMS_ERR_CONFIG, "token '%s' holds %zu escrow keys labelled '%s'",
               p11_token_label(tok), matches, want);
    *out_found = matches == 1;
    return KMS_OK;
}

kms_err p11_escrow_key_init(struct p11_token *tok, struct p11_key_id *out_id, bool *out_created)
{
    bool found = false;
    *out_created = false;
    KMS_GUARD(p11_escrow_key_find(tok, out_id, &found));
    if (found)
        return KMS_OK;
    char label[80];
    snprintf(label, sizeof(label), P11_ESCROW_LABEL_PREFIX "%s", p11_token_region(tok));
    KMS_GUARD(p11_key_id_new(tok, out_id));
    KMS_GUARD(p11_key_generate(tok, P11_KEY_AES_ESCROW, 0, out_id, label));
    *out_created = true;
    return KMS_OK;
}
