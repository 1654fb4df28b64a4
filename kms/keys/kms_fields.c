/*
 * kms_fields.c - FieldService: EncryptFields, DecryptFields, BlindIndex
 * (kms_fields.h). Every AES-GCM and HMAC runs in the key's HSM; the formats
 * are in kms_fieldblob.h and docs/metadata.md.
 *
 * Plaintext values and canonical values pass through here only in buffers
 * that are wiped before they are freed; the request message that carried
 * them is wiped by the front when it frees it (kms_call.h). Requests are
 * checked whole (counts, names, modes, sizes, canonical forms) before the
 * first HSM call, so a bad field costs no HSM work and a refused request
 * changes nothing.
 */
#include "kms_fields.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "kms_blob.h"
#include "kms_keyuse.h"
#include "kms_log.h"
#include "kms_store.h"
#include "kms_usage.h"
#include "p11_crypto.h"
#include "pol_eval.h"
#include "proto/fields.pb-c.h"

/* ---- one field, in the HSM ---------------------------------------------------- */

kms_err kms_field_seal(const struct kms_field_key *k, enum kms_field_mode mode, const char *name,
                       size_t name_len, const uint8_t *ctx, size_t ctx_len, const uint8_t *value,
                       size_t value_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
    kms_err rc = KMS_OK;
    uint8_t iv[KMS_FIELD_IV_LEN], mac[32];
    uint8_t ivin[KMS_FIELD_IV_INPUT_MAX], aad[KMS_FIELD_AAD_MAX];
    size_t ivin_len = 0, aad_len = 0, ct_len = 0;
    *out_len = 0;
    KMS_ENSURE(mode == KMS_FIELD_RANDOMIZED || mode == KMS_FIELD_DETERMINISTIC, KMS_ERR_USAGE,
               "bad field mode");
    KMS_ENSURE(value_len <= KMS_FIELD_VALUE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "field value longer than %d bytes", KMS_FIELD_VALUE_MAX);
    KMS_ENSURE(out_cap >= value_len + KMS_FIELD_OVERHEAD, KMS_ERR_USAGE,
               "field blob buffer too small");
    if (mode == KMS_FIELD_DETERMINISTIC) {
        /* The IV is a PRF of everything that defines the field, computed
         * with the version's HMAC key inside the HSM: it repeats only for an
         * identical (version, name, context, value), so GCM never sees one
         * IV with two different inputs (up to a 96-bit collision). */
        KMS_GUARD_GOTO(kms_field_iv_input(k->version, name, name_len, ctx, ctx_len, value,
                                          value_len, ivin, sizeof(ivin), &ivin_len),
                       done);
        KMS_GUARD_GOTO(p11_hmac_sha256(k->tok, &k->hsm_id, ivin, ivin_len, mac), done);
        memcpy(iv, mac, sizeof(iv));
    } else {
        /* As for Encrypt: a random 96-bit IV from the host DRBG. */
        KMS_ENSURE_GOTO(RAND_bytes(iv, sizeof(iv)) == 1, done, KMS_ERR_INTERNAL, "RNG failure");
    }
    kms_field_header_write(mode, k->version, iv, out);
    KMS_GUARD_GOTO(kms_field_aad(out, name, name_len, ctx, ctx_len, aad, sizeof(aad), &aad_len),
                   done);
    KMS_GUARD_GOTO(p11_gcm_encrypt(k->tok, &k->hsm_id, iv, sizeof(iv), aad, aad_len, value,
                                   value_len, out + KMS_FIELD_HEADER_LEN,
                                   out_cap - KMS_FIELD_HEADER_LEN, &ct_len),
                   done);
    *out_len = KMS_FIELD_HEADER_LEN + ct_len;
done:
    OPENSSL_cleanse(ivin, ivin_len);
    OPENSSL_cleanse(mac, sizeof(mac));
    if (rc != KMS_OK)
        OPENSSL_cleanse(out, out_cap);
    return rc;
}

kms_err kms_field_open(const struct kms_field_key *k, const char *name, size_t name_len,
                       const uint8_t *ctx, size_t ctx_len, const uint8_t *blob, size_t blob_len,
                       uint8_t *out, size_t out_cap, size_t *out_len,
                       enum kms_field_mode *out_mode)
{
    enum kms_field_mode mode;
    uint32_t version;
    const uint8_t *iv;
    uint8_t aad[KMS_FIELD_AAD_MAX];
    size_t aad_len = 0;
    *out_len = 0;
    KMS_GUARD(kms_field_blob_parse(blob, blob_len, &mode, &version, &iv));
    KMS_ENSURE(version == k->version, KMS_ERR_USAGE, "blob version is not the key's");
    KMS_GUARD(kms_field_aad(blob, name, name_len, ctx, ctx_len, aad, sizeof(aad), &aad_len));
    kms_err rc = p11_gcm_decrypt(k->tok, &k->hsm_id, iv, KMS_FIELD_IV_LEN, aad, aad_len,
                                 blob + KMS_FIELD_HEADER_LEN, blob_len - KMS_FIELD_HEADER_LEN, out,
                                 out_cap, out_len);
    /* One message for a wrong name, context, key or a changed byte: the
     * caller learns only that this blob and these inputs do not belong
     * together. */
    if (rc == KMS_ERR_BAD_CIPHERTEXT)
        return kms_err_set(rc, "ciphertext or encryption context does not match");
    KMS_GUARD(rc);
    if (out_mode)
        *out_mode = mode;
    return KMS_OK;
}

kms_err kms_field_blind_index(const struct kms_field_key *k, enum kms_canon canon,
                              const char *name, size_t name_len, const uint8_t *cv,
                              size_t cv_len, unsigned bits, uint8_t out[32], size_t *out_len)
{
    uint8_t in[KMS_FIELD_INDEX_INPUT_MAX];
    size_t in_len = 0;
    *out_len = 0;
    KMS_ENSURE(bits >= KMS_INDEX_BITS_MIN && bits <= KMS_INDEX_BITS_MAX, KMS_ERR_INVALID_ARGUMENT,
               "length_bits must be %d..%d", KMS_INDEX_BITS_MIN, KMS_INDEX_BITS_MAX);
    KMS_ENSURE(kms_canon_valid((int)canon), KMS_ERR_INVALID_ARGUMENT, "unknown canonicalizer");
    kms_err rc = kms_field_index_input((int)canon, name, name_len, cv, cv_len, in, sizeof(in),
                                       &in_len);
    if (rc == KMS_OK)
        rc = p11_hmac_sha256(k->tok, &k->hsm_id, in, in_len, out);
    OPENSSL_cleanse(in, in_len);
    KMS_GUARD(rc);
    *out_len = kms_field_index_truncate(out, bits);
    return KMS_OK;
}

/* ---- request plumbing ------------------------------------------------------------ */

/* Prefix the current error detail with the index of the field or value it
 * concerns (never its content). */
static kms_err at_index(kms_err rc, const char *what, size_t i)
{
    char d[256];
    snprintf(d, sizeof(d), "%s", kms_err_detail());
    return kms_err_set(rc, "%s %zu: %s", what, i, d);
}

/* The key a FieldService request names: visible to the caller, allowed for
 * op, a metadata key, enabled, served here. */
static kms_err metadata_key(struct kms_call *call, enum pol_op op, const char *key_id,
                            struct kms_key_record *k, struct p11_token **out_tok)
{
    KMS_GUARD(kms_rpc_authorize_key(call, op, key_id, k));
    KMS_ENSURE(k->spec == KMS_KEY_SPEC_METADATA, KMS_ERR_INVALID_ARGUMENT,
               "key %s is not a METADATA_AES_HMAC key", k->key_id);
    KMS_ENSURE(k->state == KMS_KEY_ENABLED, KMS_ERR_FAILED_PRECONDITION, "key is %s",
               kms_key_state_name(k->state));
    return kms_keyuse_token(call, k, out_tok);
}

/* A version of k as an HSM key. from_blob: the version number came from a
 * ciphertext, so an unknown one means the blob is not this key's. */
static kms_err version_key(struct kms_call *call, const struct kms_key_record *k,
                           struct p11_token *tok, uint32_t version, bool from_blob,
                           struct kms_field_key *out)
{
    struct kms_version_record v;
    KMS_GUARD(kms_keyuse_version(call, k->key_id, version, from_blob, &v));
    out->tok = tok;
    memcpy(out->hsm_id.b, v.hsm_id, sizeof(out->hsm_id.b));
    out->version = v.version;
    return KMS_OK;
}

static kms_err check_count(size_t n, const char *what)
{
    KMS_ENSURE(n >= 1 && n <= KMS_FIELDS_MAX, KMS_ERR_INVALID_ARGUMENT, "%s: 1..%d per request",
               what, KMS_FIELDS_MAX);
    return KMS_OK;
}

/* EncryptFields and DecryptFields: the key, the number of fields, and the
 * encryption context encoded into ctx. */
static kms_err fields_request(struct kms_call *call, enum pol_op op, const char *key_id, size_t n,
                              size_t n_ctx, void *const *ctx_pairs, struct kms_key_record *k,
                              struct p11_token **out_tok, uint8_t ctx[KMS_CTX_ENCODED_MAX],
                              size_t *ctx_len)
{
    KMS_GUARD(metadata_key(call, op, key_id, k, out_tok));
    KMS_GUARD(check_count(n, "fields"));
    return kms_keyuse_context(n_ctx, ctx_pairs, ctx, ctx_len);
}

/* Value i of a request and the canonicalizer it is put through. */
typedef void (*canon_input_fn)(const void *req, size_t i, const ProtobufCBinaryData **out_value,
                               enum kms_canon *out_canon);

/* Canonicalise the n values of req (total bytes in all) back to back into
 * *out (malloc'd, total bytes: canonical forms are never longer than their
 * input), with the length of each in (*out_len)[i]. The caller frees both,
 * whatever this returns; what names a value in errors. */
static kms_err canon_values(const void *req, canon_input_fn input, size_t n, size_t total,
                            const char *what, uint8_t **out, size_t **out_len)
{
    KMS_ENSURE(total <= KMS_FIELDS_TOTAL_MAX, KMS_ERR_INVALID_ARGUMENT,
               "values longer than %d bytes in all", KMS_FIELDS_TOTAL_MAX);
    *out = malloc(total ? total : 1);
    *out_len = calloc(n, sizeof(**out_len));
    KMS_ENSURE(*out && *out_len, KMS_ERR_NOMEM, "out of memory");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const ProtobufCBinaryData *v = NULL;
        enum kms_canon c = KMS_CANON_RAW;
        input(req, i, &v, &c);
        kms_err rc = kms_canon_apply(c, v->data, v->len, *out + off, total - off, &(*out_len)[i]);
        if (rc != KMS_OK)
            return at_index(rc, what, i);
        off += (*out_len)[i];
    }
    return KMS_OK;
}

/* ---- EncryptFields --------------------------------------------------------------- */

static enum kms_canon field_canon(const Custos__V1__PlaintextField *f)
{
    return f->canonicalizer ? (enum kms_canon)f->canonicalizer : KMS_CANON_RAW;
}

static void plaintext_field_input(const void *varg, size_t i, const ProtobufCBinaryData **out_value,
                                  enum kms_canon *out_canon)
{
    const Custos__V1__EncryptFieldsRequest *req = varg;
    *out_value = &req->fields[i]->value;
    *out_canon = field_canon(req->fields[i]);
}

/* Check every field of an EncryptFields request before any HSM work, and
 * add up the values' lengths into *out_total. */
static kms_err check_plaintext_fields(const Custos__V1__EncryptFieldsRequest *req,
                                      size_t *out_total)
{
    size_t total = 0;
    for (size_t i = 0; i < req->n_fields; i++) {
        const Custos__V1__PlaintextField *f = req->fields[i];
        if (kms_field_name_check(f->name, strlen(f->name)) != KMS_OK)
            return at_index(KMS_ERR_INVALID_ARGUMENT, "field", i);
        KMS_ENSURE(f->mode == CUSTOS__V1__FIELD_MODE__FIELD_MODE_RANDOMIZED ||
                       f->mode == CUSTOS__V1__FIELD_MODE__FIELD_MODE_DETERMINISTIC,
                   KMS_ERR_INVALID_ARGUMENT, "field %zu: mode must be RANDOMIZED or DETERMINISTIC",
                   i);
        KMS_ENSURE(f->canonicalizer == 0 || kms_canon_valid((int)f->canonicalizer),
                   KMS_ERR_INVALID_ARGUMENT, "field %zu: unknown canonicalizer", i);
        KMS_ENSURE(f->value.len <= KMS_FIELD_VALUE_MAX, KMS_ERR_INVALID_ARGUMENT,
                   "field %zu: value longer than %d bytes", i, KMS_FIELD_VALUE_MAX);
        KMS_ENSURE(f->index_length_bits == 0 || (f->index_length_bits >= KMS_INDEX_BITS_MIN &&
                                                 f->index_length_bits <= KMS_INDEX_BITS_MAX),
                   KMS_ERR_INVALID_ARGUMENT, "field %zu: index_length_bits must be 0 or %d..%d", i,
                   KMS_INDEX_BITS_MIN, KMS_INDEX_BITS_MAX);
        total += f->value.len;
    }
    *out_total = total;
    return KMS_OK;
}

kms_err kms_rpc_encrypt_fields(struct kms_call *call, const ProtobufCMessage *msg,
                               struct kms_reply *reply)
{
    const Custos__V1__EncryptFieldsRequest *req = (const void *)msg;
    kms_err rc = KMS_OK;
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    struct kms_field_key fk;
    uint8_t ctx[KMS_CTX_ENCODED_MAX];
    size_t ctx_len = 0, n = req->n_fields, total = 0, arena_len = 0;
    uint8_t *arena = NULL, *canon = NULL;
    size_t *canon_len = NULL;
    Custos__V1__EncryptedField *outs = NULL, **outp = NULL;

    KMS_GUARD_GOTO(fields_request(call, POL_OP_ENCRYPT_FIELDS, req->key_id, n,
                                  req->n_encryption_context, (void *const *)req->encryption_context,
                                  &k, &tok, ctx, &ctx_len),
                   done);
    /* Check every field, and canonicalise where asked, before any HSM work. */
    KMS_GUARD_GOTO(check_plaintext_fields(req, &total), done);
    KMS_GUARD_GOTO(canon_values(req, plaintext_field_input, n, total, "field", &canon, &canon_len),
                   done);
    for (size_t i = 0; i < n; i++) /* the blob, and room for a blind index */
        arena_len += canon_len[i] + KMS_FIELD_OVERHEAD + 32;

    KMS_GUARD_GOTO(version_key(call, &k, tok, k.current_version, false, &fk), done);
    call->audit.key_version = fk.version;
    KMS_GUARD_GOTO(kms_usage_encrypt(call->svc, k.key_id, fk.version, n), done); /* GCM limit */
    arena = malloc(arena_len);
    outs = calloc(n, sizeof(*outs));
    outp = calloc(n, sizeof(*outp));
    KMS_ENSURE_GOTO(arena && outs && outp, done, KMS_ERR_NOMEM, "out of memory");
    size_t in_off = 0, out_off = 0;
    for (size_t i = 0; i < n; i++) {
        const Custos__V1__PlaintextField *f = req->fields[i];
        size_t bl = 0;
        rc = kms_field_seal(&fk, (enum kms_field_mode)f->mode, f->name, strlen(f->name), ctx,
                            ctx_len, canon + in_off, canon_len[i], arena + out_off,
                            arena_len - out_off, &bl);
        if (rc != KMS_OK) {
            rc = at_index(rc, "field", i);
            goto done;
        }
        custos__v1__encrypted_field__init(&outs[i]);
        outs[i].name = f->name;
        outs[i].ciphertext.data = arena + out_off;
        outs[i].ciphertext.len = bl;
        outp[i] = &outs[i];
        out_off += bl;
        if (f->index_length_bits) {
            /* Exactly BlindIndex's answer for this field, in the same trip. */
            size_t il = 0;
            rc =
                kms_field_blind_index(&fk, field_canon(f), f->name, strlen(f->name), canon + in_off,
                                      canon_len[i], f->index_length_bits, arena + out_off, &il);
            if (rc != KMS_OK) {
                rc = at_index(rc, "field", i);
                goto done;
            }
            outs[i].blind_index.data = arena + out_off;
            outs[i].blind_index.len = il;
            out_off += 32;
        }
        in_off += canon_len[i];
    }
    Custos__V1__EncryptFieldsResponse resp = CUSTOS__V1__ENCRYPT_FIELDS_RESPONSE__INIT;
    resp.key_id = k.key_id;
    resp.key_version = fk.version;
    resp.n_fields = n;
    resp.fields = outp;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    free(outs);
    free(outp);
    free(arena);
    kms_keyuse_free_secret(canon, total);
    free(canon_len);
    return rc;
}

/* ---- DecryptFields --------------------------------------------------------------- */

kms_err kms_rpc_decrypt_fields(struct kms_call *call, const ProtobufCMessage *msg,
                               struct kms_reply *reply)
{
    const Custos__V1__DecryptFieldsRequest *req = (const void *)msg;
    kms_err rc = KMS_OK;
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    uint8_t ctx[KMS_CTX_ENCODED_MAX];
    size_t ctx_len = 0, n = req->n_fields, arena_len = 0;
    uint8_t *arena = NULL;
    Custos__V1__DecryptedField *outs = NULL, **outp = NULL;
    /* The versions this request uses, each looked up once. */
    struct kms_field_key vers[KMS_FIELDS_MAX];
    size_t n_vers = 0;
    uint32_t *ver_of = NULL;

    KMS_GUARD_GOTO(fields_request(call, POL_OP_DECRYPT_FIELDS, req->key_id, n,
                                  req->n_encryption_context, (void *const *)req->encryption_context,
                                  &k, &tok, ctx, &ctx_len),
                   done);
    ver_of = calloc(n, sizeof(*ver_of));
    KMS_ENSURE_GOTO(ver_of != NULL, done, KMS_ERR_NOMEM, "out of memory");
    uint32_t oldest = 0;
    for (size_t i = 0; i < n; i++) {
        const Custos__V1__EncryptedField *f = req->fields[i];
        enum kms_field_mode mode;
        const uint8_t *iv;
        rc = kms_field_name_check(f->name, strlen(f->name));
        if (rc == KMS_OK)
            rc = kms_field_blob_parse(f->ciphertext.data, f->ciphertext.len, &mode, &ver_of[i],
                                      &iv);
        if (rc != KMS_OK) {
            rc = at_index(rc, "field", i);
            goto done;
        }
        arena_len += f->ciphertext.len - KMS_FIELD_OVERHEAD;
        if (oldest == 0 || ver_of[i] < oldest)
            oldest = ver_of[i];
    }
    call->audit.key_version = oldest;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < n_vers && vers[j].version != ver_of[i])
            j++;
        if (j == n_vers) {
            rc = version_key(call, &k, tok, ver_of[i], true, &vers[n_vers]);
            if (rc != KMS_OK) {
                rc = at_index(rc, "field", i);
                goto done;
            }
            n_vers++;
        }
    }
    arena = malloc(arena_len ? arena_len : 1);
    outs = calloc(n, sizeof(*outs));
    outp = calloc(n, sizeof(*outp));
    KMS_ENSURE_GOTO(arena && outs && outp, done, KMS_ERR_NOMEM, "out of memory");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const Custos__V1__EncryptedField *f = req->fields[i];
        const struct kms_field_key *fk = NULL;
        for (size_t j = 0; j < n_vers && fk == NULL; j++)
            if (vers[j].version == ver_of[i])
                fk = &vers[j];
        size_t pl = 0;
        enum kms_field_mode mode = KMS_FIELD_RANDOMIZED;
        rc = kms_field_open(fk, f->name, strlen(f->name), ctx, ctx_len, f->ciphertext.data,
                            f->ciphertext.len, arena + off, arena_len - off, &pl, &mode);
        if (rc != KMS_OK) {
            rc = at_index(rc, "field", i);
            goto done;
        }
        custos__v1__decrypted_field__init(&outs[i]);
        outs[i].name = f->name;
        outs[i].value.data = arena + off;
        outs[i].value.len = pl;
        outs[i].mode = (Custos__V1__FieldMode)mode;
        outs[i].key_version = ver_of[i];
        outp[i] = &outs[i];
        off += pl;
    }
    Custos__V1__DecryptFieldsResponse resp = CUSTOS__V1__DECRYPT_FIELDS_RESPONSE__INIT;
    resp.key_id = k.key_id;
    resp.n_fields = n;
    resp.fields = outp;
    rc = kms_rpc_pack_secret(&resp.base, reply);
done:
    free(outs);
    free(outp);
    kms_keyuse_free_secret(arena, arena_len);
    free(ver_of);
    return rc;
}

/* ---- BlindIndex ------------------------------------------------------------------ */

static int cmp_version_desc(const void *a, const void *b)
{
    const struct kms_field_key *x = a, *y = b;
    return x->version < y->version ? 1 : x->version > y->version ? -1 : 0;
}

/* The versions to index under: the current one, or every active one,
 * newest first. *out is malloc'd. */
static kms_err index_versions(struct kms_call *call, const struct kms_key_record *k,
                              struct p11_token *tok, bool all, struct kms_field_key **out,
                              size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    if (!all) {
        struct kms_field_key *one = malloc(sizeof(*one));
        KMS_ENSURE(one != NULL, KMS_ERR_NOMEM, "out of memory");
        kms_err rc = version_key(call, k, tok, k->current_version, false, one);
        if (rc != KMS_OK) {
            free(one);
            return rc;
        }
        *out = one;
        *out_n = 1;
        return KMS_OK;
    }
    struct kms_version_record *vr = NULL;
    size_t n = 0;
    KMS_GUARD(kms_store_versions_list(kms_service_store(call->svc), k->key_id, &vr, &n));
    struct kms_field_key *ks = calloc(n ? n : 1, sizeof(*ks));
    if (ks == NULL) {
        free(vr);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (vr[i].state != KMS_VERSION_ACTIVE)
            continue;
        ks[m].tok = tok;
        memcpy(ks[m].hsm_id.b, vr[i].hsm_id, sizeof(ks[m].hsm_id.b));
        ks[m].version = vr[i].version;
        m++;
    }
    free(vr);
    qsort(ks, m, sizeof(*ks), cmp_version_desc);
    if (m == 0) {
        free(ks);
        return kms_err_set(KMS_ERR_FAILED_PRECONDITION, "key has no active version");
    }
    *out = ks;
    *out_n = m;
    return KMS_OK;
}

static void index_value_input(const void *varg, size_t i, const ProtobufCBinaryData **out_value,
                              enum kms_canon *out_canon)
{
    const Custos__V1__BlindIndexRequest *req = varg;
    *out_value = &req->values[i];
    *out_canon = (enum kms_canon)req->canonicalizer;
}

kms_err kms_rpc_blind_index(struct kms_call *call, const ProtobufCMessage *msg,
                            struct kms_reply *reply)
{
    const Custos__V1__BlindIndexRequest *req = (const void *)msg;
    kms_err rc = KMS_OK;
    struct kms_key_record k;
    struct p11_token *tok = NULL;
    size_t n = req->n_values, total = 0, nl = strlen(req->field);
    unsigned bits = req->length_bits ? req->length_bits : KMS_INDEX_BITS_DEFAULT;
    uint8_t *canon = NULL, *idx = NULL;
    size_t *canon_len = NULL;
    struct kms_field_key *vers = NULL;
    size_t n_vers = 0;
    Custos__V1__VersionIndexes *vouts = NULL, **voutp = NULL;
    ProtobufCBinaryData *blobs = NULL;

    KMS_GUARD_GOTO(metadata_key(call, POL_OP_BLIND_INDEX, req->key_id, &k, &tok), done);
    KMS_GUARD_GOTO(kms_field_name_check(req->field, nl), done);
    KMS_ENSURE_GOTO(kms_canon_valid((int)req->canonicalizer), done, KMS_ERR_INVALID_ARGUMENT,
                    "canonicalizer is required (RAW, E164, EMAIL or EMAIL_CASE_INSENSITIVE)");
    KMS_ENSURE_GOTO(bits >= KMS_INDEX_BITS_MIN && bits <= KMS_INDEX_BITS_MAX, done,
                    KMS_ERR_INVALID_ARGUMENT, "length_bits must be %d..%d (0 means %d)",
                    KMS_INDEX_BITS_MIN, KMS_INDEX_BITS_MAX, KMS_INDEX_BITS_DEFAULT);
    KMS_GUARD_GOTO(check_count(n, "values"), done);
    for (size_t i = 0; i < n; i++) {
        KMS_ENSURE_GOTO(req->values[i].len <= KMS_FIELD_VALUE_MAX, done, KMS_ERR_INVALID_ARGUMENT,
                        "value %zu: longer than %d bytes", i, KMS_FIELD_VALUE_MAX);
        total += req->values[i].len;
    }
    KMS_GUARD_GOTO(canon_values(req, index_value_input, n, total, "value", &canon, &canon_len),
                   done);
    size_t off = 0;

    KMS_GUARD_GOTO(index_versions(call, &k, tok, req->all_versions, &vers, &n_vers), done);
    call->audit.key_version = vers[n_vers - 1].version;
    KMS_ENSURE_GOTO(n_vers * n <= KMS_INDEX_OPS_MAX, done, KMS_ERR_INVALID_ARGUMENT,
                    "%zu versions x %zu values is over %d indexes per request; send fewer values",
                    n_vers, n, KMS_INDEX_OPS_MAX);
    idx = calloc(n_vers * n, 32);
    blobs = calloc(n_vers * n, sizeof(*blobs));
    vouts = calloc(n_vers, sizeof(*vouts));
    voutp = calloc(n_vers, sizeof(*voutp));
    KMS_ENSURE_GOTO(idx && blobs && vouts && voutp, done, KMS_ERR_NOMEM, "out of memory");
    for (size_t v = 0; v < n_vers; v++) {
        custos__v1__version_indexes__init(&vouts[v]);
        vouts[v].key_version = vers[v].version;
        vouts[v].n_indexes = n;
        vouts[v].indexes = blobs + v * n;
        voutp[v] = &vouts[v];
        off = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t *slot = idx + (v * n + i) * 32;
            size_t il = 0;
            rc = kms_field_blind_index(&vers[v], (enum kms_canon)req->canonicalizer, req->field,
                                       nl, canon + off, canon_len[i], bits, slot, &il);
            if (rc != KMS_OK) {
                rc = at_index(rc, "value", i);
                goto done;
            }
            blobs[v * n + i].data = slot;
            blobs[v * n + i].len = il;
            off += canon_len[i];
        }
    }
    Custos__V1__BlindIndexResponse resp = CUSTOS__V1__BLIND_INDEX_RESPONSE__INIT;
    resp.key_id = k.key_id;
    resp.length_bits = bits;
    resp.n_versions = n_vers;
    resp.versions = voutp;
    rc = kms_rpc_pack(&resp.base, reply);
done:
    free(vouts);
    free(voutp);
    free(blobs);
    free(idx);
    free(vers);
    kms_keyuse_free_secret(canon, total);
    free(canon_len);
    return rc;
}
