/*
 * kmsctl_audit_offline.c - the offline audit commands (kmsctl_audit_offline.h):
 * sth-bytes, events and verify read files and use OpenSSL only, never the
 * network or an HSM. The checks themselves are the audit_verify library;
 * this turns their results into output and exit codes.
 */
#include "kmsctl_audit_offline.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "audit_keyset.h"
#include "audit_state.h"
#include "audit_verify.h"
#include "audit_verify_util.h"
#include "kms_error.h"
#include "kmsctl.h"
#include "kmsctl_print.h"
#include "proto/audit.pb-c.h"

/* A failed verification: the bundle, keys or state say something is wrong. */
#define EXIT_BAD KMSCTL_EXIT_REFUSED

/* ---- helpers, shared with kmsctl_audit.c ------------------------------------------ */

/* A local file could not be read, decoded or written: the library's detail. */
int kmsctl_audit_local_error(void)
{
    fprintf(stderr, "kmsctl: %s\n", kms_err_detail());
    return KMSCTL_EXIT_LOCAL;
}

int kmsctl_audit_write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    return audit_file_write(path, data, len, mode) == KMS_OK ? KMSCTL_EXIT_OK : kmsctl_audit_local_error();
}

/* ---- heads ----------------------------------------------------------------------- */

/* A head from a file: a SignedTreeHead (`audit head --out`) or a bundle. */
int kmsctl_audit_load_head(const char *path, Custos__V1__SignedTreeHead **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    if (audit_file_read(path, AUDIT_BUNDLE_FILE_MAX, &buf, &len) != KMS_OK)
        return kmsctl_audit_local_error();
    *out = audit_verify_head_unpack(buf, len);
    free(buf);
    if (*out == NULL) {
        fprintf(stderr, "kmsctl: %s: neither a signed tree head nor an audit bundle\n", path);
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

/* ---- offline: sth-bytes -------------------------------------------------------------- */

int kmsctl_audit_sth_bytes(const char *head, const char *out_bin, const char *out_sig)
{
    Custos__V1__SignedTreeHead *h = NULL;
    int ret = kmsctl_audit_load_head(head, &h);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    uint8_t sb[AUDIT_VERIFY_SIGNED_MAX];
    size_t n = audit_verify_head_signed_bytes(h, sb);
    if (out_bin && (ret = kmsctl_audit_write_file(out_bin, sb, n, 0644)) != KMSCTL_EXIT_OK)
        goto done;
    if (out_sig &&
        (ret = kmsctl_audit_write_file(out_sig, h->signature.data, h->signature.len, 0644)) != KMSCTL_EXIT_OK)
        goto done;
    FILE *f = (out_bin && strcmp(out_bin, "-") == 0) ||
                      (out_sig && strcmp(out_sig, "-") == 0)
                  ? stderr
                  : stdout;
    fprintf(f, "head of region %s, tree_size %" PRIu64 ", timestamp_ms %" PRId64
               ", signed by key %s: %zu signed bytes, %zu-byte DER signature\n",
            h->region, h->tree_size, h->timestamp_ms, h->key_id, n, h->signature.len);
    fprintf(f, "check with: openssl dgst -sha256 -verify %s-%s.pem -signature %s %s\n", h->region,
            h->key_id, out_sig ? out_sig : "STH.SIG", out_bin ? out_bin : "STH.BIN");
done:
    custos__v1__signed_tree_head__free_unpacked(h, NULL);
    return ret;
}

/* ---- offline: events ------------------------------------------------------------------- */

static json_t *event_json(uint64_t seq, const Custos__V1__AuditEvent *e)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    json_object_set_new(o, "time_ms", json_integer(e->time_ms));
    const struct {
        const char *name, *value;
    } str[] = {
        {"request_id", e->request_id},   {"principal", e->principal},
        {"role", e->role},               {"tenant", e->tenant},
        {"operation", e->operation},     {"key_id", e->key_id},
        {"region", e->region},           {"token", e->token},
        {"outcome", e->outcome},         {"rule", e->rule},
        {"correlation_id", e->correlation_id}, {"policy_sha256", e->policy_sha256},
        {"detail", e->detail},           {"recovery_id", e->recovery_id},
        {"statement", e->statement},     {"statement_sha256", e->statement_sha256},
        {"officer_key_sha256", e->officer_key_sha256}, {"grant_sid", e->grant_sid},
    };
    for (size_t i = 0; i < sizeof(str) / sizeof(str[0]); i++)
        json_object_set_new(o, str[i].name, kmsctl_jstr_escaped(str[i].value));
    json_object_set_new(o, "key_version", json_integer(e->key_version));
    char sig[2 * AUDIT_SIG_MAX + 1] = "";
    if (e->approval_signature.len <= AUDIT_SIG_MAX)
        audit_hex(e->approval_signature.data, e->approval_signature.len, sig);
    json_object_set_new(o, "approval_signature", kmsctl_jstr_escaped(sig));
    if (e->xks != NULL) { /* an XKS call's requestMetadata (docs/xks.md) */
        const Custos__V1__XksRequestMetadata *x = e->xks;
        json_t *m = json_object();
        json_object_set_new(m, "kms_request_id", kmsctl_jstr_escaped(x->kms_request_id));
        json_object_set_new(m, "kms_operation", kmsctl_jstr_escaped(x->kms_operation));
        json_object_set_new(m, "aws_principal_arn", kmsctl_jstr_escaped(x->aws_principal_arn));
        json_object_set_new(m, "kms_key_arn", kmsctl_jstr_escaped(x->kms_key_arn));
        json_object_set_new(m, "kms_via_service", kmsctl_jstr_escaped(x->kms_via_service));
        json_object_set_new(m, "aws_source_vpc", kmsctl_jstr_escaped(x->aws_source_vpc));
        json_object_set_new(m, "aws_source_vpce", kmsctl_jstr_escaped(x->aws_source_vpce));
        json_object_set_new(o, "xks", m);
    }
    return o;
}

int kmsctl_audit_events(char **files, size_t nfiles)
{
    for (size_t f = 0; f < nfiles; f++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (audit_file_read(files[f], AUDIT_BUNDLE_FILE_MAX, &buf, &len) != KMS_OK)
            return kmsctl_audit_local_error();
        Custos__V1__ExportAuditLogResponse *b =
            custos__v1__export_audit_log_response__unpack(NULL, len, buf);
        free(buf);
        if (b == NULL) {
            fprintf(stderr, "kmsctl: %s: not an audit bundle (ExportAuditLogResponse)\n",
                    files[f]);
            return KMSCTL_EXIT_LOCAL;
        }
        int ret = KMSCTL_EXIT_OK;
        for (size_t i = 0; i < b->n_entries && ret == KMSCTL_EXIT_OK; i++) {
            const Custos__V1__AuditEntry *en = b->entries[i];
            Custos__V1__AuditEvent *e =
                custos__v1__audit_event__unpack(NULL, en->event.len, en->event.data);
            if (e == NULL) {
                fprintf(stderr, "kmsctl: %s: entry seq %" PRIu64 " is not an AuditEvent\n",
                        files[f], en->seq);
                ret = KMSCTL_EXIT_LOCAL;
                break;
            }
            json_t *j = event_json(en->seq, e);
            custos__v1__audit_event__free_unpacked(e, NULL);
            if (json_dumpf(j, stdout, JSON_COMPACT | JSON_ENSURE_ASCII) != 0) {
                fprintf(stderr, "kmsctl: cannot format JSON output\n");
                ret = KMSCTL_EXIT_LOCAL;
            }
            putchar('\n');
            json_decref(j);
        }
        custos__v1__export_audit_log_response__free_unpacked(b, NULL);
        if (ret != KMSCTL_EXIT_OK)
            return ret;
    }
    return KMSCTL_EXIT_OK;
}

/* ---- offline: verify -------------------------------------------------------------------- */

static void print_verified(const struct audit_verify *v)
{
    char t[40];
    for (size_t i = 0; i < audit_verify_n_bundles(v); i++) {
        struct audit_verify_bundle b;
        audit_verify_bundle_at(v, i, &b);
        printf("%s: region %s, head tree_size %" PRIu64 " at %s signed by key %s; ", b.name,
               b.head->region, b.head->size, audit_iso_ms(b.head->ts, t), b.head->key_id);
        if (b.n_entries)
            printf("entries %" PRIu64 "..%" PRIu64 " (%zu) %s", b.first, b.end - 1, b.n_entries,
                   b.whole ? "give the root" : "each proven included");
        else
            printf("no entries");
        if (b.known_tree_size)
            printf("; consistent with tree_size %" PRIu64, b.known_tree_size);
        putchar('\n');
    }
}

/* Read the keys, the state and each bundle, and let audit_verify judge. */
int kmsctl_audit_verify(const char *const *keys, size_t n_keys, const char *state, int partial,
                        char **files, size_t nfiles)
{
    struct audit_keyset *ks = NULL;
    struct audit_state *st = NULL;
    struct audit_verify *v = NULL;
    int ret = KMSCTL_EXIT_LOCAL;
    kms_err rc = KMS_OK;
    char t[40];

    if (audit_keyset_new(&ks) != KMS_OK)
        goto local;
    for (size_t i = 0; i < n_keys; i++)
        if (audit_keyset_load(ks, keys[i]) != KMS_OK)
            goto local;
    if ((state && audit_state_load(state, &st) != KMS_OK) ||
        audit_verify_new(ks, st, partial, &v) != KMS_OK)
        goto local;
    /* One bundle at a time, so that the first bad one stops the run before
     * a later one is even read. */
    for (size_t i = 0; i < nfiles && rc == KMS_OK; i++) {
        uint8_t *raw = NULL;
        size_t len = 0;
        if (audit_file_read(files[i], AUDIT_BUNDLE_FILE_MAX, &raw, &len) != KMS_OK)
            goto local;
        rc = audit_verify_add_bundle(v, files[i], raw, len);
        free(raw);
    }
    if (rc == KMS_OK)
        rc = audit_verify_finish(v);
    /* Regions that verified are reported even when a later one failed. */
    for (size_t i = 0; i < audit_verify_n_regions(v); i++) {
        const struct audit_verify_region *r = audit_verify_region_at(v, i);
        printf("region %s: newest head tree_size %" PRIu64 " at %s; ", r->region, r->newest->size,
               audit_iso_ms(r->newest->ts, t));
        if (r->verified_to > 0)
            printf("entries 0..%" PRIu64 " verified with nothing missing\n", r->verified_to - 1);
        else
            printf("no entries from seq 0 verified\n");
    }
    if (rc != KMS_OK) {
        const struct audit_verify_failure *f = audit_verify_failure(v);
        fprintf(stderr, "kmsctl audit verify: FAILED: ");
        if (f->where)
            fprintf(stderr, "%s: ", f->where);
        fprintf(stderr, "%s\n", f->what);
        ret = EXIT_BAD;
        goto done;
    }
    print_verified(v);
    if (st && audit_state_save(st, state) != KMS_OK)
        goto local;
    printf("OK: %zu bundle%s verified%s%s\n", audit_verify_n_bundles(v),
           audit_verify_n_bundles(v) == 1 ? "" : "s", st ? "; state kept in " : "",
           st ? state : "");
    ret = KMSCTL_EXIT_OK;
    goto done;
local:
    ret = kmsctl_audit_local_error();
done:
    audit_verify_free(v);
    audit_state_free(st);
    audit_keyset_free(ks);
    return ret;
}
