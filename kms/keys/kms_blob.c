/*
 * kms_blob.c - ciphertext header and context encoding (see kms_blob.h).
 */
#include "kms_blob.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kms_utf8.h"

static bool region_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static bool kind_known(unsigned k)
{
    return k == KMS_BLOB_KIND_LEGACY || k == KMS_BLOB_KIND_DATA || k == KMS_BLOB_KIND_DATA_KEY;
}

const char *kms_blob_kind_name(enum kms_blob_kind kind)
{
    switch (kind) {
    case KMS_BLOB_KIND_LEGACY:
        return "legacy";
    case KMS_BLOB_KIND_DATA:
        return "data";
    case KMS_BLOB_KIND_DATA_KEY:
        return "data key";
    }
    return "?";
}

kms_err kms_blob_write_header(const struct kms_blob_header *h, uint8_t *out, size_t *out_len)
{
    size_t r = strlen(h->region);
    KMS_ENSURE(r >= 1 && r <= KMS_BLOB_REGION_MAX, KMS_ERR_USAGE, "region length %zu", r);
    KMS_ENSURE(h->format == KMS_BLOB_VERSION || h->format == KMS_BLOB_VERSION_1, KMS_ERR_USAGE,
               "blob format %u", h->format);
    KMS_ENSURE(kind_known((unsigned)h->kind) &&
                   (h->format == KMS_BLOB_VERSION || h->kind == KMS_BLOB_KIND_LEGACY),
               KMS_ERR_USAGE, "blob kind %u in format %u", (unsigned)h->kind, h->format);
    size_t o = 0;
    out[o++] = KMS_BLOB_MAGIC;
    out[o++] = h->format;
    out[o++] = (uint8_t)r;
    memcpy(out + o, h->region, r);
    o += r;
    memcpy(out + o, h->key_id, KMS_BLOB_KEY_ID_LEN);
    o += KMS_BLOB_KEY_ID_LEN;
    out[o++] = (uint8_t)(h->version >> 24);
    out[o++] = (uint8_t)(h->version >> 16);
    out[o++] = (uint8_t)(h->version >> 8);
    out[o++] = (uint8_t)h->version;
    memcpy(out + o, h->iv, KMS_BLOB_IV_LEN);
    o += KMS_BLOB_IV_LEN;
    if (h->format == KMS_BLOB_VERSION)
        out[o++] = (uint8_t)h->kind;
    *out_len = o;
    return KMS_OK;
}

kms_err kms_blob_parse(const uint8_t *blob, size_t len, struct kms_blob_header *h,
                       size_t *out_header_len)
{
    KMS_ENSURE(blob != NULL && len >= 3, KMS_ERR_BAD_CIPHERTEXT, "ciphertext too short");
    KMS_ENSURE(len <= KMS_BLOB_MAX, KMS_ERR_BAD_CIPHERTEXT, "ciphertext longer than %d bytes",
               KMS_BLOB_MAX);
    KMS_ENSURE(blob[0] == KMS_BLOB_MAGIC, KMS_ERR_BAD_CIPHERTEXT,
               "not a Custos ciphertext (bad magic byte)");
    KMS_ENSURE(blob[1] == KMS_BLOB_VERSION || blob[1] == KMS_BLOB_VERSION_1,
               KMS_ERR_BAD_CIPHERTEXT, "unsupported ciphertext format version %u", blob[1]);
    size_t r = blob[2];
    KMS_ENSURE(r >= 1 && r <= KMS_BLOB_REGION_MAX, KMS_ERR_BAD_CIPHERTEXT,
               "bad region length in ciphertext");
    size_t hl = 3 + r + KMS_BLOB_KEY_ID_LEN + 4 + KMS_BLOB_IV_LEN;
    if (blob[1] == KMS_BLOB_VERSION)
        hl += 1; /* the kind byte */
    KMS_ENSURE(len >= hl + KMS_BLOB_TAG_LEN, KMS_ERR_BAD_CIPHERTEXT, "ciphertext truncated");
    for (size_t i = 0; i < r; i++)
        KMS_ENSURE(region_char(blob[3 + i]), KMS_ERR_BAD_CIPHERTEXT,
                   "bad region name in ciphertext");
    memcpy(h->region, blob + 3, r);
    h->region[r] = '\0';
    const uint8_t *p = blob + 3 + r;
    memcpy(h->key_id, p, KMS_BLOB_KEY_ID_LEN);
    p += KMS_BLOB_KEY_ID_LEN;
    h->version = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    KMS_ENSURE(h->version >= 1, KMS_ERR_BAD_CIPHERTEXT, "bad key version in ciphertext");
    p += 4;
    memcpy(h->iv, p, KMS_BLOB_IV_LEN);
    p += KMS_BLOB_IV_LEN;
    h->format = blob[1];
    h->kind = KMS_BLOB_KIND_LEGACY;
    if (h->format == KMS_BLOB_VERSION) {
        KMS_ENSURE(kind_known(p[0]), KMS_ERR_BAD_CIPHERTEXT, "unknown kind %u in ciphertext",
                   p[0]);
        h->kind = (enum kms_blob_kind)p[0];
    }
    *out_header_len = hl;
    return KMS_OK;
}

static int cmp_pair(const void *a, const void *b)
{
    const struct kms_ctx_pair *x = *(const struct kms_ctx_pair *const *)a;
    const struct kms_ctx_pair *y = *(const struct kms_ctx_pair *const *)b;
    return strcmp(x->key, y->key);
}

kms_err kms_ctx_encode(const struct kms_ctx_pair *pairs, size_t n, uint8_t *out, size_t *out_len)
{
    KMS_ENSURE(n <= KMS_CTX_MAX_PAIRS, KMS_ERR_INVALID_ARGUMENT,
               "encryption context has %zu pairs (at most %d)", n, KMS_CTX_MAX_PAIRS);
    const struct kms_ctx_pair *sorted[KMS_CTX_MAX_PAIRS];
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = pairs[i].key ? pairs[i].key : "";
        const char *v = pairs[i].value ? pairs[i].value : "";
        size_t kl = strlen(k), vl = strlen(v);
        KMS_ENSURE(kl >= 1 && kl <= KMS_CTX_KEY_MAX, KMS_ERR_INVALID_ARGUMENT,
                   "encryption context pair %zu: key must be 1..%d bytes", i, KMS_CTX_KEY_MAX);
        KMS_ENSURE(vl <= KMS_CTX_VALUE_MAX, KMS_ERR_INVALID_ARGUMENT,
                   "encryption context pair %zu: value longer than %d bytes", i,
                   KMS_CTX_VALUE_MAX);
        KMS_ENSURE(kms_utf8_valid_nonul((const uint8_t *)k, kl) &&
                       kms_utf8_valid_nonul((const uint8_t *)v, vl),
                   KMS_ERR_INVALID_ARGUMENT, "encryption context pair %zu: not valid UTF-8", i);
        total += kl + vl;
        sorted[i] = &pairs[i];
    }
    KMS_ENSURE(total <= KMS_CTX_TOTAL_MAX, KMS_ERR_INVALID_ARGUMENT,
               "encryption context larger than %d bytes", KMS_CTX_TOTAL_MAX);
    qsort(sorted, n, sizeof(sorted[0]), cmp_pair);
    size_t o = 0;
    out[o++] = (uint8_t)(n >> 8);
    out[o++] = (uint8_t)n;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            KMS_ENSURE(strcmp(sorted[i - 1]->key, sorted[i]->key) != 0,
                       KMS_ERR_INVALID_ARGUMENT, "encryption context repeats a key");
        const char *k = sorted[i]->key, *v = sorted[i]->value ? sorted[i]->value : "";
        size_t kl = strlen(k), vl = strlen(v);
        out[o++] = (uint8_t)(kl >> 8);
        out[o++] = (uint8_t)kl;
        memcpy(out + o, k, kl);
        o += kl;
        out[o++] = (uint8_t)(vl >> 8);
        out[o++] = (uint8_t)vl;
        memcpy(out + o, v, vl);
        o += vl;
    }
    *out_len = o;
    return KMS_OK;
}
