/*
 * prov_uri.c - custos: key URIs (prov.h). A bad URI is refused here, before
 * any network call, with a reason that says what is wrong (never echoing
 * more of the URI than the caller already knows).
 */
#include <string.h>

#include "prov.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int prov_uri_parse(const char *uri, struct prov_uri *out, const char **why)
{
    static const char scheme[] = "custos:";
    static const char key[] = "key=";
    static const char ver[] = ";version=";
    const char *p;

    memset(out, 0, sizeof(*out));
    if (uri == NULL || strnlen(uri, PROV_URI_MAX + 1) > PROV_URI_MAX) {
        *why = "URI longer than 256 characters";
        return 0;
    }
    if (strncmp(uri, scheme, sizeof(scheme) - 1) != 0) {
        *why = "not a custos: URI";
        return 0;
    }
    p = uri + sizeof(scheme) - 1;
    if (strncmp(p, key, sizeof(key) - 1) != 0) {
        *why = "expected custos:key=<32 hex digits>[;version=<n>]";
        return 0;
    }
    p += sizeof(key) - 1;
    for (int i = 0; i < 32; i++) {
        int v = hexval(p[i]);
        if (v < 0) {
            *why = p[i] == '\0' || p[i] == ';' ? "key id must be 32 hex digits"
                                               : "key id is not hexadecimal";
            return 0;
        }
        out->key_id[i] = "0123456789abcdef"[v];
    }
    out->key_id[32] = '\0';
    p += 32;
    if (*p == '\0')
        return 1;
    if (hexval(*p) >= 0) {
        *why = "key id must be 32 hex digits";
        return 0;
    }
    if (strncmp(p, ver, sizeof(ver) - 1) != 0) {
        *why = "unexpected text after the key id (only ;version=<n> may follow)";
        return 0;
    }
    p += sizeof(ver) - 1;
    if (*p < '1' || *p > '9') {
        *why = "version must be a decimal number from 1";
        return 0;
    }
    uint64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX) {
            *why = "version too large";
            return 0;
        }
    }
    if (*p != '\0') {
        *why = "unexpected text after the version";
        return 0;
    }
    out->version = (uint32_t)v;
    return 1;
}
