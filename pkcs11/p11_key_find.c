/*
 * p11_key_find.c - finding key objects in a token: by CKA_ID through the
 * handle cache (p11_key_handle, the request path), and by walking the
 * token with C_FindObjects (existence, attributes, labels, the ids a
 * reconcile compares with the store, and husks a crashed creation left).
 */
#include <stdlib.h>
#include <string.h>

#include "p11_internal.h"

/* ---- lookup -------------------------------------------------------------- */

kms_err p11_find_objects(struct p11_token *tok, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                            CK_ULONG n, CK_OBJECT_HANDLE *out, CK_ULONG max, CK_ULONG *out_n)
{
    CK_RV rv = P11_RV(tok, C_FindObjectsInit, P11_NO_MECH, s, tmpl, n);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    rv = P11_RV(tok, C_FindObjects, P11_NO_MECH, s, out, max, out_n);
    CK_RV frv = P11_RV(tok, C_FindObjectsFinal, P11_NO_MECH, s);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjects", tok->label));
    return p11_rv_err(frv, "C_FindObjectsFinal", tok->label);
}

kms_err p11_key_handle(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                       CK_OBJECT_CLASS cls, CK_KEY_TYPE type, CK_OBJECT_HANDLE *out)
{
    KMS_ENSURE((cls == CKO_SECRET_KEY) == (type != P11_TYPE_ANY), KMS_ERR_USAGE,
               "secret keys are looked up by key type, pair halves by class alone");
    if (p11_cache_get(&tok->cache, id->b, cls, type, out))
        return KMS_OK;
    CK_ATTRIBUTE t[] = {
        {CKA_ID, (void *)id->b, P11_KEY_ID_LEN},
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
    };
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    KMS_GUARD(p11_find_objects(tok, s, t, type == P11_TYPE_ANY ? 2 : 3, found, 2, &n));
    if (n == 0) {
        /* Counted for the service's object check: a request needed an
         * object that is not there (p11_token_lookups_missed). */
        atomic_fetch_add(&tok->lookups_missed, 1);
        return kms_err_set(KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    }
    /* Ids are random and 16 bytes, and p11_key_generate never makes two
     * objects of one class and type under one id: two mean someone else
     * wrote to this token. Refuse rather than pick one. */
    KMS_ENSURE(n == 1, KMS_ERR_INTERNAL,
               "token '%s' holds two objects of one class and type with one key id", tok->label);
    p11_cache_put(&tok->cache, id->b, cls, type, found[0]);
    *out = found[0];
    return KMS_OK;
}

kms_err p11_key_handle_secret(struct p11_token *tok, CK_SESSION_HANDLE s,
                              const struct p11_key_id *id, CK_OBJECT_HANDLE *out,
                              CK_KEY_TYPE *out_type)
{
    static const CK_KEY_TYPE order[] = {CKK_AES, CKK_GENERIC_SECRET};
    kms_err rc = KMS_ERR_NOT_FOUND;
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        rc = p11_key_handle(tok, s, id, CKO_SECRET_KEY, order[i], out);
        if (rc != KMS_ERR_NOT_FOUND) {
            if (rc == KMS_OK && out_type)
                *out_type = order[i];
            return rc;
        }
    }
    return rc;
}
kms_err p11_key_handle_kind(struct p11_token *tok, CK_SESSION_HANDLE s, const struct p11_key_id *id,
                            enum p11_key_kind kind, CK_OBJECT_HANDLE *out)
{
    if (kind == 0)
        return p11_key_handle_secret(tok, s, id, out, NULL);
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(kind, &cls, &type);
    return p11_key_handle(tok, s, id, cls, type, out);
}

kms_err p11_key_refuse_existing(struct p11_token *tok, CK_SESSION_HANDLE s,
                                const struct p11_key_id *id, enum p11_key_kind kind)
{
    CK_OBJECT_HANDLE existing;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    p11_kind_object(kind, &cls, &type);
    /* A token that keeps one secret key per CKA_ID would overwrite the
     * one there (p11_probe.c): then any secret key under the id blocks. */
    if (cls == CKO_SECRET_KEY && !p11_token_shares_ids(tok, s)) {
        CK_OBJECT_HANDLE other;
        CK_KEY_TYPE other_type = type == CKK_AES ? CKK_GENERIC_SECRET : CKK_AES;
        kms_err orc = p11_key_handle(tok, s, id, cls, other_type, &other);
        if (orc == KMS_OK)
            return kms_err_set(KMS_ERR_ALREADY_EXISTS,
                               "key id already holds a secret key in token '%s', which keeps "
                               "one per CKA_ID",
                               tok->label);
        if (orc != KMS_ERR_NOT_FOUND)
            return orc;
    }
    kms_err rc = p11_key_handle(tok, s, id, cls, type, &existing);
    if (rc == KMS_OK)
        return kms_err_set(KMS_ERR_ALREADY_EXISTS, "key id already exists in token '%s'",
                           tok->label);
    return rc == KMS_ERR_NOT_FOUND ? KMS_OK : rc;
}

/* The first object (of any class) with CKA_ID id, if there is one. */
static kms_err find_first_by_id(struct p11_token *tok, CK_SESSION_HANDLE s,
                                const struct p11_key_id *id, CK_OBJECT_HANDLE *out, bool *out_found)
{
    CK_ATTRIBUTE t = {CKA_ID, (void *)id->b, P11_KEY_ID_LEN};
    CK_OBJECT_HANDLE found[1];
    CK_ULONG n = 0;
    KMS_GUARD(p11_find_objects(tok, s, &t, 1, found, 1, &n));
    *out_found = n > 0;
    if (n > 0)
        *out = found[0];
    return KMS_OK;
}

struct exists_arg {
    const struct p11_key_id *id;
    bool exists;
};

static kms_err do_exists(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct exists_arg *a = varg;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    KMS_GUARD(find_first_by_id(tok, s, a->id, &h, &a->exists));
    /* Gone (destroyed behind our back, by another process or an operator):
     * drop any cached handle, or a later create under the same id would be
     * refused as a duplicate by the cache. */
    if (!a->exists)
        p11_cache_forget(&tok->cache, a->id->b);
    return KMS_OK;
}

kms_err p11_key_exists(struct p11_token *tok, const struct p11_key_id *id, bool *out_exists)
{
    struct exists_arg a = {id, false};
    KMS_GUARD(p11_with_session(tok, do_exists, &a));
    *out_exists = a.exists;
    return KMS_OK;
}

void p11_key_read_flags(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        struct p11_key_info *o)
{
    memset(o, 0, sizeof(*o));
    struct {
        CK_ATTRIBUTE_TYPE type;
        bool *dst;
    } flags[] = {
        {CKA_TOKEN, &o->token},          {CKA_PRIVATE, &o->priv},
        {CKA_SENSITIVE, &o->sensitive},  {CKA_EXTRACTABLE, &o->extractable},
        {CKA_ALWAYS_SENSITIVE, &o->always_sensitive},
        {CKA_NEVER_EXTRACTABLE, &o->never_extractable},
        {CKA_MODIFIABLE, &o->modifiable}, {CKA_ENCRYPT, &o->encrypt},
        {CKA_DECRYPT, &o->decrypt},      {CKA_WRAP, &o->wrap},
        {CKA_UNWRAP, &o->unwrap},        {CKA_SIGN, &o->sign},
        {CKA_VERIFY, &o->verify},        {CKA_DERIVE, &o->derive},
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        CK_BBOOL v = CK_FALSE;
        CK_ATTRIBUTE at = {flags[i].type, &v, sizeof(v)};
        /* Attributes a class does not have (CKA_ENCRYPT on a private key)
         * read as false. */
        if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1) == CKR_OK)
            *flags[i].dst = v == CK_TRUE;
    }
}

struct info_arg {
    const struct p11_key_id *id;
    struct p11_key_info *out;
    int kind; /* 0: any (secret first), else an enum p11_key_kind */
};

static kms_err do_info(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct info_arg *a = varg;
    CK_OBJECT_HANDLE h;
    kms_err rc;
    if (a->kind != 0) {
        CK_OBJECT_CLASS cls;
        CK_KEY_TYPE type;
        p11_kind_object((enum p11_key_kind)a->kind, &cls, &type);
        rc = p11_key_handle(tok, s, a->id, cls, type, &h);
    } else {
        rc = p11_key_handle_secret(tok, s, a->id, &h, NULL);
        if (rc == KMS_ERR_NOT_FOUND)
            rc = p11_key_handle(tok, s, a->id, CKO_PRIVATE_KEY, P11_TYPE_ANY, &h);
    }
    KMS_GUARD(rc);

    struct p11_key_info *o = a->out;
    p11_key_read_flags(tok, s, h, o);
    CK_KEY_TYPE kt = 0;
    CK_ULONG vl = 0;
    CK_ATTRIBUTE at = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_KEY_TYPE)", tok->label));
    o->key_type = kt;
    at = (CK_ATTRIBUTE){CKA_VALUE_LEN, &vl, sizeof(vl)};
    if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1) == CKR_OK)
        o->value_len = vl;
    return KMS_OK;
}

kms_err p11_key_info(struct p11_token *tok, const struct p11_key_id *id,
                     struct p11_key_info *out)
{
    struct info_arg a = {id, out, 0};
    return p11_with_session(tok, do_info, &a);
}

kms_err p11_key_info_kind(struct p11_token *tok, const struct p11_key_id *id,
                          enum p11_key_kind kind, struct p11_key_info *out)
{
    struct info_arg a = {id, out, (int)kind};
    return p11_with_session(tok, do_info, &a);
}

struct list_arg {
    const char *prefix;
    struct p11_key_id *ids;
    size_t n, cap;
};

/* Duplicates (both halves of a pair, a metadata version's two objects) are
 * removed once at the end: a token may hold 100,000 keys. */
static kms_err list_add(struct list_arg *a, const uint8_t *id)
{
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        struct p11_key_id *ni = realloc(a->ids, nc * sizeof(*ni));
        KMS_ENSURE(ni != NULL, KMS_ERR_NOMEM, "out of memory");
        a->ids = ni;
        a->cap = nc;
    }
    memcpy(a->ids[a->n++].b, id, P11_KEY_ID_LEN);
    return KMS_OK;
}

/* Call fn on every object the session sees, inside one C_FindObjects
 * search; stops at the first error fn returns. fn must not create or
 * destroy objects (the search is open). */
kms_err p11_for_each_object(struct p11_token *tok, CK_SESSION_HANDLE s, p11_object_fn fn,
                            void *arg)
{
    CK_RV rv = P11_RV(tok, C_FindObjectsInit, P11_NO_MECH, s, NULL, 0);
    KMS_GUARD(p11_rv_err(rv, "C_FindObjectsInit", tok->label));
    kms_err rc = KMS_OK;
    for (;;) {
        CK_OBJECT_HANDLE hs[64];
        CK_ULONG n = 0;
        rv = P11_RV(tok, C_FindObjects, P11_NO_MECH, s, hs, 64, &n);
        if ((rc = p11_rv_err(rv, "C_FindObjects", tok->label)) != KMS_OK || n == 0)
            break;
        for (CK_ULONG i = 0; i < n && rc == KMS_OK; i++)
            rc = fn(tok, s, hs[i], arg);
        if (rc != KMS_OK)
            break;
    }
    P11_RV(tok, C_FindObjectsFinal, P11_NO_MECH, s);
    return rc;
}

static kms_err list_one(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        void *varg)
{
    struct list_arg *a = varg;
    char label[65] = {0};
    uint8_t id[P11_KEY_ID_LEN];
    CK_ATTRIBUTE at[2] = {{CKA_LABEL, label, sizeof(label) - 1}, {CKA_ID, id, sizeof(id)}};
    if (P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, at, 2) != CKR_OK)
        return KMS_OK; /* not a key of ours: no id or a longer label */
    size_t plen = strlen(a->prefix);
    if (at[1].ulValueLen != P11_KEY_ID_LEN || at[0].ulValueLen < plen ||
        memcmp(label, a->prefix, plen) != 0)
        return KMS_OK;
    return list_add(a, id);
}

static kms_err do_list(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct list_arg *a = varg;
    a->n = 0;
    return p11_for_each_object(tok, s, list_one, a);
}

static int cmp_id(const void *x, const void *y)
{
    return memcmp(x, y, P11_KEY_ID_LEN);
}

kms_err p11_key_list_ids(struct p11_token *tok, const char *label_prefix,
                         struct p11_key_id **out_ids, size_t *out_n)
{
    struct list_arg a = {label_prefix ? label_prefix : "", NULL, 0, 0};
    kms_err rc = p11_with_session(tok, do_list, &a);
    if (rc != KMS_OK) {
        free(a.ids);
        return rc;
    }
    if (a.n > 1) {
        qsort(a.ids, a.n, sizeof(*a.ids), cmp_id);
        size_t k = 1;
        for (size_t i = 1; i < a.n; i++)
            if (memcmp(a.ids[i].b, a.ids[k - 1].b, P11_KEY_ID_LEN) != 0)
                a.ids[k++] = a.ids[i];
        a.n = k;
    }
    *out_ids = a.ids;
    *out_n = a.n;
    return KMS_OK;
}

/* Husks: key objects with neither CKA_ID nor CKA_LABEL. Every key Custos
 * makes has both, set in the same C_GenerateKey / C_UnwrapKey template, so
 * such an object is not a key of ours in any state: it is what SoftHSMv2
 * leaves when the process dies inside object creation (the object file is
 * written with default attributes — CKA_TOKEN false, CKA_SENSITIVE false,
 * every usage true, no value — before the template is applied; found by
 * tests/e2e/test_key_crash.sh and the template scan), or, killed earlier,
 * an object with no readable attribute at all, not even CKA_CLASS. */
#define HUSKS_MAX 256

struct husk_arg {
    CK_OBJECT_HANDLE h[HUSKS_MAX];
    size_t n;
    bool count_only;
};

static kms_err husk_one(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                        void *varg)
{
    struct husk_arg *a = varg;
    if (a->n >= HUSKS_MAX)
        return KMS_OK;
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &c, 1);
    /* Every PKCS#11 object has a class: one whose class cannot be read is
     * an object file with no attributes at all (the earliest crash point). */
    if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        a->h[a->n++] = h;
        return KMS_OK;
    }
    CK_ATTRIBUTE at[2] = {{CKA_ID, NULL, 0}, {CKA_LABEL, NULL, 0}};
    if (rv != CKR_OK || P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, at, 2) != CKR_OK)
        return KMS_OK;
    bool key = cls == CKO_SECRET_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY;
    if (key && at[0].ulValueLen == 0 && at[1].ulValueLen == 0)
        a->h[a->n++] = h;
    return KMS_OK;
}

static kms_err do_find_husks(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct husk_arg *a = varg;
    a->n = 0;
    KMS_GUARD(p11_for_each_object(tok, s, husk_one, a));
    if (a->count_only)
        return KMS_OK;
    /* Destroyed after the search is closed: no handle of the search is
     * invalidated while it runs. */
    for (size_t i = 0; i < a->n; i++) {
        CK_RV rv = P11_RV(tok, C_DestroyObject, P11_NO_MECH, s, a->h[i]);
        KMS_GUARD(p11_rv_err(rv, "C_DestroyObject", tok->label));
    }
    return KMS_OK;
}

kms_err p11_key_count_husks(struct p11_token *tok, size_t *out_n)
{
    struct husk_arg *a = calloc(1, sizeof(*a));
    KMS_ENSURE(a != NULL, KMS_ERR_NOMEM, "out of memory");
    a->count_only = true;
    kms_err rc = p11_with_session(tok, do_find_husks, a);
    *out_n = rc == KMS_OK ? a->n : 0;
    free(a);
    return rc;
}

kms_err p11_key_destroy_husks(struct p11_token *tok, size_t *out_n)
{
    struct husk_arg *a = calloc(1, sizeof(*a));
    KMS_ENSURE(a != NULL, KMS_ERR_NOMEM, "out of memory");
    kms_err rc = p11_with_session(tok, do_find_husks, a);
    if (out_n)
        *out_n = rc == KMS_OK ? a->n : 0;
    free(a);
    return rc;
}

struct label_arg {
    const struct p11_key_id *id;
    char *out;
};

static kms_err do_label(struct p11_token *tok, CK_SESSION_HANDLE s, void *varg)
{
    struct label_arg *a = varg;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    bool found = false;
    KMS_GUARD(find_first_by_id(tok, s, a->id, &h, &found));
    KMS_ENSURE(found, KMS_ERR_NOT_FOUND, "no such key in token '%s'", tok->label);
    CK_ATTRIBUTE at = {CKA_LABEL, a->out, 64};
    CK_RV rv = P11_RV(tok, C_GetAttributeValue, P11_NO_MECH, s, h, &at, 1);
    KMS_GUARD(p11_rv_err(rv, "C_GetAttributeValue(CKA_LABEL)", tok->label));
    a->out[at.ulValueLen <= 64 ? at.ulValueLen : 0] = '\0';
    return KMS_OK;
}

kms_err p11_key_label(struct p11_token *tok, const struct p11_key_id *id, char out[65])
{
    struct label_arg a = {id, out};
    out[0] = '\0';
    return p11_with_session(tok, do_label, &a);
}
