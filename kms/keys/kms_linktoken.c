/*
 * kms_linktoken.c - link token bytes and MAC input (kms_linktoken.h).
 */
#include "kms_linktoken.h"

#include <stdio.h>
#include <string.h>

#include "kms_b64.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

kms_err kms_linktoken_raw(const struct kms_linktoken *t, uint8_t out[KMS_LINKTOKEN_RAW_LEN])
{
    KMS_ENSURE(t->key_version >= 1 && t->key_version <= KMS_LINKTOKEN_VERSION_MAX,
               KMS_ERR_INVALID_ARGUMENT, "link token: key version must be 1..%d",
               KMS_LINKTOKEN_VERSION_MAX);
    KMS_ENSURE(t->expires_at > 0 && t->expires_at <= KMS_LINKTOKEN_EXPIRY_MAX,
               KMS_ERR_INVALID_ARGUMENT, "link token: expiry out of range");
    out[0] = KMS_LINKTOKEN_FORMAT;
    out[1] = (uint8_t)(t->key_version >> 8);
    out[2] = (uint8_t)t->key_version;
    memcpy(out + 3, t->id, KMS_LINKTOKEN_ID_LEN);
    uint64_t e = (uint64_t)t->expires_at;
    for (int i = 0; i < 5; i++)
        out[15 + i] = (uint8_t)(e >> (8 * (4 - i)));
    memcpy(out + 20, t->mac, KMS_LINKTOKEN_MAC_LEN);
    return KMS_OK;
}

kms_err kms_linktoken_encode(const struct kms_linktoken *t, char out[KMS_LINKTOKEN_TEXT_LEN + 1])
{
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN];
    KMS_GUARD(kms_linktoken_raw(t, raw));
    /* 36 bytes are 12 groups of 3: no padding, no partial group. */
    for (size_t g = 0; g < KMS_LINKTOKEN_RAW_LEN / 3; g++) {
        uint32_t v = (uint32_t)raw[3 * g] << 16 | (uint32_t)raw[3 * g + 1] << 8 | raw[3 * g + 2];
        for (int k = 0; k < 4; k++)
            out[4 * g + (size_t)k] = b64url[(v >> (18 - 6 * k)) & 63];
    }
    out[KMS_LINKTOKEN_TEXT_LEN] = '\0';
    return KMS_OK;
}

kms_err kms_linktoken_decode(const char *text, size_t len, struct kms_linktoken *out,
                             uint8_t out_raw[KMS_LINKTOKEN_RAW_LEN])
{
    memset(out, 0, sizeof(*out));
    KMS_ENSURE(text != NULL && len == KMS_LINKTOKEN_TEXT_LEN, KMS_ERR_INVALID_ARGUMENT,
               "link token: must be %d characters", KMS_LINKTOKEN_TEXT_LEN);
    uint8_t raw[KMS_LINKTOKEN_RAW_LEN];
    for (size_t g = 0; g < KMS_LINKTOKEN_RAW_LEN / 3; g++) {
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int d = kms_b64_digit((unsigned char)text[4 * g + (size_t)k], KMS_B64_URL, NULL);
            KMS_ENSURE(d >= 0, KMS_ERR_INVALID_ARGUMENT,
                       "link token: not base64url (RFC 4648 section 5, no padding)");
            v = v << 6 | (uint32_t)d;
        }
        raw[3 * g] = (uint8_t)(v >> 16);
        raw[3 * g + 1] = (uint8_t)(v >> 8);
        raw[3 * g + 2] = (uint8_t)v;
    }
    KMS_ENSURE(raw[0] == KMS_LINKTOKEN_FORMAT, KMS_ERR_INVALID_ARGUMENT,
               "link token: unknown format");
    out->key_version = (uint32_t)raw[1] << 8 | raw[2];
    KMS_ENSURE(out->key_version >= 1, KMS_ERR_INVALID_ARGUMENT, "link token: key version 0");
    memcpy(out->id, raw + 3, KMS_LINKTOKEN_ID_LEN);
    uint64_t e = 0;
    for (int i = 0; i < 5; i++)
        e = e << 8 | raw[15 + i];
    out->expires_at = (int64_t)e;
    KMS_ENSURE(out->expires_at > 0, KMS_ERR_INVALID_ARGUMENT, "link token: expiry 0");
    memcpy(out->mac, raw + 20, KMS_LINKTOKEN_MAC_LEN);
    if (out_raw)
        memcpy(out_raw, raw, sizeof(raw));
    return KMS_OK;
}

/* ---- MAC input ------------------------------------------------------------------- */

struct w {
    uint8_t *p;
    size_t cap, n;
    bool over;
};

static void put(struct w *w, const void *b, size_t len)
{
    if (w->over || len > w->cap - w->n) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->n, b, len);
    w->n += len;
}

static void put_be(struct w *w, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(w, b, (size_t)bytes);
}

static kms_err put_str(struct w *w, const char *s, size_t max, const char *what)
{
    KMS_ENSURE(s != NULL, KMS_ERR_INVALID_ARGUMENT, "link token: %s missing", what);
    size_t n = strnlen(s, max + 1);
    KMS_ENSURE(n <= max, KMS_ERR_INVALID_ARGUMENT, "link token: %s longer than %zu bytes", what,
               max);
    put_be(w, n, 2);
    put(w, s, n);
    return KMS_OK;
}

kms_err kms_linktoken_mac_input(const struct kms_linkmac *m, uint8_t *out, size_t cap,
                                size_t *out_len)
{
    static const char domain[] = "custos.link-token.v1";
    *out_len = 0;
    KMS_ENSURE(m->id != NULL && m->device_sha256 != NULL, KMS_ERR_INVALID_ARGUMENT,
               "link token: id or device hash missing");
    struct w w = {out, cap, 0, false};
    put(&w, domain, sizeof(domain)); /* with its NUL */
    put_be(&w, KMS_LINKTOKEN_FORMAT, 1);
    put_be(&w, m->key_version, 4);
    put(&w, m->id, KMS_LINKTOKEN_ID_LEN);
    put_be(&w, (uint64_t)m->expires_at, 8);
    KMS_GUARD(put_str(&w, m->tenant, 64, "tenant"));
    KMS_GUARD(put_str(&w, m->key_id, 32, "key id"));
    KMS_GUARD(put_str(&w, m->region, 64, "region"));
    KMS_GUARD(put_str(&w, m->purpose, 64, "purpose"));
    KMS_GUARD(put_str(&w, m->phone, 16, "phone"));
    KMS_GUARD(put_str(&w, m->message_ref ? m->message_ref : "", 128, "message_ref"));
    put(&w, m->device_sha256, 32);
    KMS_ENSURE(!w.over, KMS_ERR_INVALID_ARGUMENT, "link token: MAC input over %zu bytes", cap);
    *out_len = w.n;
    return KMS_OK;
}

kms_err kms_linktoken_recipient_input(const char *phone, uint8_t *out, size_t cap, size_t *out_len)
{
    static const char domain[] = "custos.link-recipient.v1";
    *out_len = 0;
    struct w w = {out, cap, 0, false};
    put(&w, domain, sizeof(domain));
    KMS_GUARD(put_str(&w, phone, 16, "phone"));
    KMS_ENSURE(!w.over, KMS_ERR_INVALID_ARGUMENT, "link token: recipient input too long");
    *out_len = w.n;
    return KMS_OK;
}

void kms_linktoken_id_hex(const uint8_t id[KMS_LINKTOKEN_ID_LEN],
                          char out[2 * KMS_LINKTOKEN_ID_LEN + 1])
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < KMS_LINKTOKEN_ID_LEN; i++) {
        out[2 * i] = hx[id[i] >> 4];
        out[2 * i + 1] = hx[id[i] & 15];
    }
    out[2 * KMS_LINKTOKEN_ID_LEN] = '\0';
}

bool kms_linktoken_id_parse(const char *hex, uint8_t out[KMS_LINKTOKEN_ID_LEN])
{
    if (hex == NULL || strlen(hex) != 2 * KMS_LINKTOKEN_ID_LEN)
        return false;
    for (size_t i = 0; i < 2 * KMS_LINKTOKEN_ID_LEN; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return false;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return true;
}
