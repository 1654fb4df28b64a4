/*
 * kms_fieldblob.c - field blob header and the encodings authenticated or
 * MACed for FieldService (see kms_fieldblob.h).
 */
#include "kms_fieldblob.h"

#include <string.h>

#include <openssl/crypto.h>

static bool name_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
}

kms_err kms_field_name_check(const char *name, size_t len)
{
    KMS_ENSURE(name != NULL && len >= 1 && len <= KMS_FIELD_NAME_MAX, KMS_ERR_INVALID_ARGUMENT,
               "field name must be 1..%d bytes", KMS_FIELD_NAME_MAX);
    for (size_t i = 0; i < len; i++)
        KMS_ENSURE(name_char((uint8_t)name[i]), KMS_ERR_INVALID_ARGUMENT,
                   "field name may hold only letters, digits and . _ : / -");
    return KMS_OK;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void kms_field_header_write(enum kms_field_mode mode, uint32_t version,
                            const uint8_t iv[KMS_FIELD_IV_LEN], uint8_t out[KMS_FIELD_HEADER_LEN])
{
    out[0] = KMS_FIELD_FORMAT;
    out[1] = (uint8_t)mode;
    put32(out + 2, version);
    memcpy(out + 6, iv, KMS_FIELD_IV_LEN);
}

kms_err kms_field_blob_parse(const uint8_t *blob, size_t len, enum kms_field_mode *out_mode,
                             uint32_t *out_version, const uint8_t **out_iv)
{
    KMS_ENSURE(blob != NULL && len >= KMS_FIELD_OVERHEAD, KMS_ERR_BAD_CIPHERTEXT,
               "field ciphertext truncated");
    KMS_ENSURE(len <= KMS_FIELD_BLOB_MAX, KMS_ERR_BAD_CIPHERTEXT,
               "field ciphertext longer than %d bytes", KMS_FIELD_BLOB_MAX);
    KMS_ENSURE(blob[0] == KMS_FIELD_FORMAT, KMS_ERR_BAD_CIPHERTEXT,
               "not a Custos field ciphertext (format byte)");
    KMS_ENSURE(blob[1] == KMS_FIELD_RANDOMIZED || blob[1] == KMS_FIELD_DETERMINISTIC,
               KMS_ERR_BAD_CIPHERTEXT, "unknown mode in field ciphertext");
    uint32_t v = (uint32_t)blob[2] << 24 | (uint32_t)blob[3] << 16 | (uint32_t)blob[4] << 8 |
                 blob[5];
    KMS_ENSURE(v >= 1, KMS_ERR_BAD_CIPHERTEXT, "bad key version in field ciphertext");
    *out_mode = (enum kms_field_mode)blob[1];
    *out_version = v;
    *out_iv = blob + 6;
    return KMS_OK;
}

/* A small bounded writer: every append checks room, so the encoders below
 * cannot overrun whatever the caller passes. */
struct w {
    uint8_t *p;
    size_t cap, n;
    bool overflow;
};

static void put(struct w *w, const void *src, size_t len)
{
    if (w->overflow || len > w->cap - w->n) {
        w->overflow = true;
        return;
    }
    if (len)
        memcpy(w->p + w->n, src, len);
    w->n += len;
}

static void put_u8(struct w *w, uint8_t v)
{
    put(w, &v, 1);
}

static void put_u32(struct w *w, uint32_t v)
{
    uint8_t b[4];
    put32(b, v);
    put(w, b, 4);
}

static kms_err done(struct w *w, size_t *out_len)
{
    if (w->overflow) {
        OPENSSL_cleanse(w->p, w->cap);
        *out_len = 0;
        return kms_err_set(KMS_ERR_USAGE, "field encoding buffer too small");
    }
    *out_len = w->n;
    return KMS_OK;
}

kms_err kms_field_aad(const uint8_t header[KMS_FIELD_HEADER_LEN], const char *name,
                      size_t name_len, const uint8_t *ctx, size_t ctx_len, uint8_t *out,
                      size_t out_cap, size_t *out_len)
{
    KMS_GUARD(kms_field_name_check(name, name_len));
    struct w w = {out, out_cap, 0, false};
    put(&w, header, KMS_FIELD_HEADER_LEN);
    put_u8(&w, (uint8_t)name_len);
    put(&w, name, name_len);
    put(&w, ctx, ctx_len);
    return done(&w, out_len);
}

kms_err kms_field_iv_input(uint32_t version, const char *name, size_t name_len,
                           const uint8_t *ctx, size_t ctx_len, const uint8_t *value,
                           size_t value_len, uint8_t *out, size_t out_cap, size_t *out_len)
{
    KMS_GUARD(kms_field_name_check(name, name_len));
    KMS_ENSURE(value_len <= KMS_FIELD_VALUE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "field value longer than %d bytes", KMS_FIELD_VALUE_MAX);
    struct w w = {out, out_cap, 0, false};
    put_u8(&w, sizeof(KMS_FIELD_IV_LABEL) - 1);
    put(&w, KMS_FIELD_IV_LABEL, sizeof(KMS_FIELD_IV_LABEL) - 1);
    put_u32(&w, version);
    put_u8(&w, (uint8_t)name_len);
    put(&w, name, name_len);
    put(&w, ctx, ctx_len);
    put_u32(&w, (uint32_t)value_len);
    put(&w, value, value_len);
    return done(&w, out_len);
}

kms_err kms_field_index_input(int canonicalizer, const char *name, size_t name_len,
                              const uint8_t *cv, size_t cv_len, uint8_t *out, size_t out_cap,
                              size_t *out_len)
{
    KMS_GUARD(kms_field_name_check(name, name_len));
    KMS_ENSURE(canonicalizer >= 1 && canonicalizer <= 255, KMS_ERR_USAGE, "bad canonicalizer");
    KMS_ENSURE(cv_len <= KMS_FIELD_VALUE_MAX, KMS_ERR_INVALID_ARGUMENT,
               "value longer than %d bytes", KMS_FIELD_VALUE_MAX);
    struct w w = {out, out_cap, 0, false};
    put_u8(&w, sizeof(KMS_FIELD_INDEX_LABEL) - 1);
    put(&w, KMS_FIELD_INDEX_LABEL, sizeof(KMS_FIELD_INDEX_LABEL) - 1);
    put_u8(&w, (uint8_t)canonicalizer);
    put_u8(&w, (uint8_t)name_len);
    put(&w, name, name_len);
    put_u32(&w, (uint32_t)cv_len);
    put(&w, cv, cv_len);
    return done(&w, out_len);
}

size_t kms_field_index_truncate(uint8_t mac[32], unsigned bits)
{
    if (bits < KMS_INDEX_BITS_MIN)
        bits = KMS_INDEX_BITS_MIN;
    if (bits > KMS_INDEX_BITS_MAX)
        bits = KMS_INDEX_BITS_MAX;
    size_t n = (bits + 7) / 8;
    if (bits % 8)
        mac[n - 1] &= (uint8_t)(0xFF << (8 - bits % 8));
    if (n < 32)
        OPENSSL_cleanse(mac + n, 32 - n);
    return n;
}
