/*
 * kmsctl_print.c - the printers kmsctl's commands share (kmsctl_print.h).
 */
#include "kmsctl_print.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit_merkle.h"
#include "audit_verify_util.h"
#include "kms_utf8.h"
#include "kmsctl.h"
#include "proto/audit.pb-c.h"
#include "proto/escrow.pb-c.h"
#include "proto/key.pb-c.h"

/* ---- strings, times, enums, JSON -------------------------------------------------- */

void kmsctl_print_safe(FILE *f, const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t left = strlen(s);
    while (left > 0) {
        /* Let well-formed UTF-8 through (descriptions may be in any
         * language) but not C1 controls (U+0080..U+009F), which some
         * terminals obey; anything else byte by byte. */
        uint32_t cp;
        size_t n = kms_utf8_next(p, left, &cp);
        if (cp != KMS_UTF8_BAD && cp >= 0xa0) {
            fwrite(p, 1, n, f);
        } else {
            n = 1;
            if (*p >= 0x20 && *p < 0x7f)
                fputc(*p, f);
            else
                fprintf(f, "\\x%02x", *p);
        }
        p += n;
        left -= n;
    }
}

const char *kmsctl_enum_name(const ProtobufCEnumDescriptor *d, int v)
{
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
    return ev ? ev->name : "UNKNOWN";
}

const char *kmsctl_iso8601(int64_t t, char buf[32])
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (gmtime_r(&tt, &tm) == NULL || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, 32, "@%" PRId64, t);
    return buf;
}

/* json_string refuses invalid UTF-8; the server should never send it, but a
 * lossy ASCII copy beats dropping the field. */
json_t *kmsctl_jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j || s == NULL)
        return j;
    char *c = strdup(s);
    if (c == NULL)
        return NULL;
    for (char *p = c; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(c);
    free(c);
    return j;
}

json_t *kmsctl_jstr_escaped(const char *s)
{
    char buf[1024];
    json_t *j = json_string(s ? s : "");
    return j ? j : json_string(audit_printable(s, buf, sizeof(buf)));
}

int kmsctl_print_json(json_t *j)
{
    if (j == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    int rc = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    putchar('\n');
    json_decref(j);
    if (rc != 0) {
        fprintf(stderr, "kmsctl: cannot format JSON output\n");
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

void kmsctl_print_field(const char *name, const char *value)
{
    printf("%s: ", name);
    kmsctl_print_safe(stdout, value);
    putchar('\n');
}

/* ---- key metadata ------------------------------------------------------------------ */

/* The summary; its first line is "key_id: <id>" so scripts may sed it. */
void kmsctl_print_key_text(const Custos__V1__KeyMetadata *k)
{
    char t[32];
    kmsctl_print_field("key_id", k->key_id);
    kmsctl_print_field("tenant", k->tenant);
    kmsctl_print_field("region", k->region);
    kmsctl_print_field("state", kmsctl_enum_name(&custos__v1__key_state__descriptor, (int)k->state));
    kmsctl_print_field("spec", kmsctl_enum_name(&custos__v1__key_spec__descriptor, (int)k->spec));
    kmsctl_print_field("usage", kmsctl_enum_name(&custos__v1__key_usage__descriptor, (int)k->usage));
    kmsctl_print_field("origin", kmsctl_enum_name(&custos__v1__key_origin__descriptor, (int)k->origin));
    if (k->description && *k->description)
        kmsctl_print_field("description", k->description);
    kmsctl_print_field("created", kmsctl_iso8601(k->created_at, t));
    if (k->deletion_at != 0)
        kmsctl_print_field("deletion", kmsctl_iso8601(k->deletion_at, t));
    printf("current_version: %" PRIu32 "\n", k->current_version);
    if (k->rotation_period_s > 0) {
        printf("rotation_period: %" PRIu64 " s\n", k->rotation_period_s);
        if (k->next_rotation_at > 0)
            kmsctl_print_field("next_rotation", kmsctl_iso8601(k->next_rotation_at, t));
    }
    /* Encryptions per version: AES-GCM with random IVs allows 2^32 per
     * version; the server rotates before (docs/ciphertext-format.md). */
    printf("versions:\n");
    for (size_t i = 0; i < k->n_versions; i++) {
        const Custos__V1__KeyVersion *v = k->versions[i];
        printf("  %" PRIu32 "  ", v->version);
        kmsctl_print_safe(stdout, v->state);
        printf("  %s  encryptions %" PRIu64 "\n", kmsctl_iso8601(v->created_at, t),
               v->encryptions);
    }
}

json_t *kmsctl_key_json(const Custos__V1__KeyMetadata *k)
{
    char t[32];
    json_t *o = json_object(), *vs = json_array();
    json_object_set_new(o, "key_id", kmsctl_jstr(k->key_id));
    json_object_set_new(o, "tenant", kmsctl_jstr(k->tenant));
    json_object_set_new(o, "region", kmsctl_jstr(k->region));
    json_object_set_new(o, "state",
                        kmsctl_jstr(kmsctl_enum_name(&custos__v1__key_state__descriptor, (int)k->state)));
    json_object_set_new(o, "spec",
                        kmsctl_jstr(kmsctl_enum_name(&custos__v1__key_spec__descriptor, (int)k->spec)));
    json_object_set_new(o, "usage",
                        kmsctl_jstr(kmsctl_enum_name(&custos__v1__key_usage__descriptor, (int)k->usage)));
    json_object_set_new(o, "origin",
                        kmsctl_jstr(kmsctl_enum_name(&custos__v1__key_origin__descriptor, (int)k->origin)));
    json_object_set_new(o, "description", kmsctl_jstr(k->description));
    json_object_set_new(o, "created_at", kmsctl_jstr(kmsctl_iso8601(k->created_at, t)));
    json_object_set_new(o, "deletion_at",
                        k->deletion_at ? kmsctl_jstr(kmsctl_iso8601(k->deletion_at, t)) : json_null());
    json_object_set_new(o, "current_version", json_integer(k->current_version));
    json_object_set_new(o, "rotation_period_s", json_integer((json_int_t)k->rotation_period_s));
    json_object_set_new(o, "next_rotation_at", k->next_rotation_at
                                                   ? kmsctl_jstr(kmsctl_iso8601(k->next_rotation_at, t))
                                                   : json_null());
    for (size_t i = 0; i < k->n_versions; i++) {
        const Custos__V1__KeyVersion *v = k->versions[i];
        json_t *vo = json_object();
        json_object_set_new(vo, "version", json_integer(v->version));
        json_object_set_new(vo, "state", kmsctl_jstr(v->state));
        json_object_set_new(vo, "created_at", kmsctl_jstr(kmsctl_iso8601(v->created_at, t)));
        json_object_set_new(vo, "encryptions", json_integer((json_int_t)v->encryptions));
        json_array_append_new(vs, vo);
    }
    json_object_set_new(o, "versions", vs);
    return o;
}

/* A table cell: escaped, then padded to width (ids and regions are ASCII)
 * and followed by the column gap. */
static void print_cell(const char *s, int width)
{
    kmsctl_print_safe(stdout, s);
    for (int n = (int)strlen(s); n < width + 2; n++)
        putchar(' ');
}

void kmsctl_print_key_header(void)
{
    printf("%-32s  %-10s  %-16s  %-7s  %-20s  %s\n", "KEY_ID", "REGION", "STATE", "VERSION",
           "CREATED", "DESCRIPTION");
}

void kmsctl_print_key_row(const Custos__V1__KeyMetadata *k)
{
    char t[32], v[16];
    snprintf(v, sizeof(v), "%" PRIu32, k->current_version);
    print_cell(k->key_id, 32);
    print_cell(k->region, 10);
    print_cell(kmsctl_enum_name(&custos__v1__key_state__descriptor, (int)k->state), 16);
    print_cell(v, 7);
    if (k->description && *k->description) {
        print_cell(kmsctl_iso8601(k->created_at, t), 20);
        kmsctl_print_safe(stdout, k->description);
    } else {
        fputs(kmsctl_iso8601(k->created_at, t), stdout); /* no trailing blanks */
    }
    putchar('\n');
}

/* ---- recoveries -------------------------------------------------------------------- */

const char *kmsctl_when(int64_t t, char buf[32])
{
    return t == 0 ? "-" : kmsctl_iso8601(t, buf);
}
static void field(const char *name, const char *value)
{
    printf("%-19s ", name);
    kmsctl_print_safe(stdout, value);
    putchar('\n');
}

/* Multi-line text from the server, each line escaped on its own. */
void kmsctl_print_lines(FILE *f, const char *s)
{
    while (s && *s) {
        const char *nl = strchr(s, '\n');
        size_t n = nl ? (size_t)(nl - s) : strlen(s);
        char line[1024];
        snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1), s);
        kmsctl_print_safe(f, line);
        fputc('\n', f);
        s += n + (nl ? 1 : 0);
    }
}

void kmsctl_print_recovery(const Custos__V1__Recovery *r, int with_statement)
{
    char t[32], buf[64];
    field("recovery_id:", r->recovery_id);
    field("state:", kmsctl_enum_name(&custos__v1__recovery_state__descriptor, (int)r->state));
    field("key_id:", r->key_id);
    field("region:", r->region);
    field("mode:", kmsctl_enum_name(&custos__v1__recovery_mode__descriptor, (int)r->mode));
    field("justification:", kmsctl_enum_name(&custos__v1__justification__descriptor,
                                      (int)r->justification));
    field("case:", r->case_reference);
    field("requester:", r->requester);
    snprintf(buf, sizeof(buf), "%zu of %" PRIu32, r->n_approvals, r->approvals_required);
    field("approvals:", buf);
    for (size_t i = 0; i < r->n_approvals; i++) {
        printf("  ");
        kmsctl_print_safe(stdout, r->approvals[i]->officer);
        printf("  %s\n", kmsctl_when(r->approvals[i]->approved_at, t));
    }
    field("expires:", kmsctl_when(r->expires_at, t));
    if (r->executable_at)
        field("executable_from:", kmsctl_when(r->executable_at, t));
    if (r->executed_at)
        field("executed:", kmsctl_when(r->executed_at, t));
    if (r->cancelled_by && *r->cancelled_by)
        field("cancelled_by:", r->cancelled_by);
    if (with_statement) {
        printf("statement (what approvers sign):\n");
        kmsctl_print_lines(stdout, r->statement);
    }
}

/* ---- audit tree heads ------------------------------------------------------------ */

void kmsctl_print_head_text(const Custos__V1__SignedTreeHead *h)
{
    char t[40], root[2 * AUDIT_HASH_LEN + 1], sig[2 * AUDIT_SIG_MAX + 1];
    audit_hex(h->root_hash.data, h->root_hash.len <= AUDIT_HASH_LEN ? h->root_hash.len : 0, root);
    audit_hex(h->signature.data, h->signature.len <= AUDIT_SIG_MAX ? h->signature.len : 0, sig);
    fputs("region: ", stdout);
    kmsctl_print_safe(stdout, h->region);
    printf("\ntree_size: %" PRIu64 "\n", h->tree_size);
    printf("timestamp: %s (%" PRId64 " ms)\n", audit_iso_ms(h->timestamp_ms, t), h->timestamp_ms);
    printf("root_hash: %s\n", root);
    fputs("key_id: ", stdout);
    kmsctl_print_safe(stdout, h->key_id);
    printf("\nsignature: %s\n", sig);
}

json_t *kmsctl_head_json(const Custos__V1__SignedTreeHead *h)
{
    char t[40], root[2 * AUDIT_HASH_LEN + 1], sig[2 * AUDIT_SIG_MAX + 1];
    audit_hex(h->root_hash.data, h->root_hash.len <= AUDIT_HASH_LEN ? h->root_hash.len : 0, root);
    audit_hex(h->signature.data, h->signature.len <= AUDIT_SIG_MAX ? h->signature.len : 0, sig);
    json_t *o = json_object();
    json_object_set_new(o, "region", kmsctl_jstr_escaped(h->region));
    json_object_set_new(o, "tree_size", json_integer((json_int_t)h->tree_size));
    json_object_set_new(o, "timestamp_ms", json_integer(h->timestamp_ms));
    json_object_set_new(o, "timestamp", kmsctl_jstr_escaped(audit_iso_ms(h->timestamp_ms, t)));
    json_object_set_new(o, "root_hash", kmsctl_jstr_escaped(root));
    json_object_set_new(o, "key_id", kmsctl_jstr_escaped(h->key_id));
    json_object_set_new(o, "signature", kmsctl_jstr_escaped(sig));
    return o;
}
