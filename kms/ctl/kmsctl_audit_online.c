/*
 * kmsctl_audit_online.c - the online audit commands (kmsctl_audit_online.h):
 * head, keys and export over AuditService (role auditor), with the
 * rollback alarm for a head the auditor already holds.
 */
#include "kmsctl_audit_online.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "audit_log_pg.h"
#include "audit_state.h"
#include "audit_verify.h"
#include "audit_verify_util.h"
#include "kms_error.h"
#include "kmsctl_audit_offline.h"
#include "kmsctl_print.h"
#include "proto/audit.pb-c.h"

#define AUDIT_SERVICE "custos.v1.AuditService"

/* ---- online: head, keys, export ----------------------------------------------------- */

/* The tree size of the head the auditor holds for a->region (--known-head,
 * or the newest head of --known-state; 0: none) and, from the state, how
 * far its entries were verified (*out_verified; 0 without a state). */
static int known_size(const char *cmd, const struct kmsctl_audit_args *a, uint64_t *out_size,
                      uint64_t *out_verified)
{
    *out_size = *out_verified = 0;
    if (a->known_head) {
        Custos__V1__SignedTreeHead *h = NULL;
        int ret = kmsctl_audit_load_head(a->known_head, &h);
        if (ret != KMSCTL_EXIT_OK)
            return ret;
        int same = strcmp(h->region, a->region) == 0;
        *out_size = h->tree_size;
        custos__v1__signed_tree_head__free_unpacked(h, NULL);
        if (!same) {
            fprintf(stderr, "kmsctl audit %s: %s is a head of another region\n", cmd,
                    a->known_head);
            return KMSCTL_EXIT_USAGE;
        }
    } else if (a->known_state) {
        struct audit_state *st = NULL;
        if (audit_state_load(a->known_state, &st) != KMS_OK)
            return kmsctl_audit_local_error();
        const struct audit_head *h = audit_state_latest(st, a->region);
        if (h) {
            *out_size = h->size;
            audit_state_verified(st, a->region, out_verified);
        } else {
            fprintf(stderr, "kmsctl audit %s: %s keeps no head of region %s yet: %s\n", cmd,
                    a->known_state, a->region,
                    strcmp(cmd, "export") == 0 ? "exporting without a consistency proof"
                                               : "nothing to compare with");
        }
        audit_state_free(st);
    }
    return KMSCTL_EXIT_OK;
}

/* After a refused call that named a known head: the rollback alarm
 * (failed_precondition) gets its own exit code and a line that says what
 * it means, for auditors' scripts and eyes. */
static int known_refused(struct kmsctl_rpc *rpc, const char *cmd, const struct kmsctl_audit_args *a,
                         uint64_t known, int ret)
{
    if (ret != KMSCTL_EXIT_REFUSED || known == 0 ||
        strcmp(kmsctl_rpc_last_code(rpc), "failed_precondition") != 0)
        return ret;
    fprintf(stderr,
            "kmsctl audit %s: ALARM: the log of region %s is shorter than the head you hold "
            "(tree_size %" PRIu64 "): it was rolled back or forked\n",
            cmd, a->region, known);
    return KMSCTL_EXIT_ROLLBACK;
}

static int do_head(struct kmsctl_rpc *rpc, const struct kmsctl_audit_args *a)
{
    Custos__V1__GetSignedTreeHeadRequest req = CUSTOS__V1__GET_SIGNED_TREE_HEAD_REQUEST__INIT;
    Custos__V1__GetSignedTreeHeadResponse *resp = NULL;
    uint64_t verified = 0;
    req.region = (char *)a->region;
    int ret = known_size("head", a, &req.known_tree_size, &verified);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "GetSignedTreeHead", &req.base,
                                  &custos__v1__get_signed_tree_head_response__descriptor,
                                  (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return known_refused(rpc, "head", a, req.known_tree_size, ret);
    if (!audit_verify_head_shape_ok(resp->head)) {
        fprintf(stderr, "kmsctl: the reply carries no well-formed signed head\n");
        ret = KMSCTL_EXIT_TRANSPORT;
        goto done;
    }
    if (a->out) {
        size_t n = custos__v1__signed_tree_head__get_packed_size(resp->head);
        uint8_t *p = malloc(n ? n : 1);
        if (p == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            ret = KMSCTL_EXIT_LOCAL;
            goto done;
        }
        custos__v1__signed_tree_head__pack(resp->head, p);
        ret = kmsctl_audit_write_file(a->out, p, n, 0644);
        free(p);
        if (ret != KMSCTL_EXIT_OK)
            goto done;
        if (strcmp(a->out, "-") == 0)
            goto done; /* the head itself is the output */
    }
    if (a->json)
        ret = kmsctl_print_json(kmsctl_head_json(resp->head));
    else
        kmsctl_print_head_text(resp->head);
done:
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* Print or write the keys of resp (from kmsd or from PostgreSQL). */
static int keys_out(const Custos__V1__GetAuditKeysResponse *resp, const struct kmsctl_audit_args *a)
{
    int ret = KMSCTL_EXIT_OK;
    /* Names become file names and header lines: refuse anything odd before
     * writing a single file. */
    for (size_t i = 0; i < resp->n_keys; i++) {
        const Custos__V1__AuditKey *k = resp->keys[i];
        if (!audit_region_ok(k->region) || !audit_key_id_ok(k->key_id) ||
            !audit_key_pem_ok(k->public_key_pem)) {
            fprintf(stderr, "kmsctl: the reply holds a malformed audit key (#%zu)\n", i + 1);
            ret = KMSCTL_EXIT_TRANSPORT;
            goto done;
        }
    }
    if (a->out_dir && mkdir(a->out_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "kmsctl: %s: %s\n", a->out_dir, strerror(errno));
        ret = KMSCTL_EXIT_LOCAL;
        goto done;
    }
    json_t *arr = a->json ? json_array() : NULL;
    if (!a->json && a->out_dir && resp->n_keys > 0)
        printf("%-10s  %-32s  %-24s  %-24s  %s\n", "REGION", "KEY_ID", "NOT_BEFORE", "NOT_AFTER",
               "FILE");
    for (size_t i = 0; i < resp->n_keys; i++) {
        const Custos__V1__AuditKey *k = resp->keys[i];
        char *text = audit_key_file_text(k), *path = NULL, nb[40], na[40];
        if (text == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            ret = KMSCTL_EXIT_LOCAL;
            json_decref(arr);
            goto done;
        }
        if (a->out_dir) {
            if (asprintf(&path, "%s/%s-%s.pem", a->out_dir, k->region, k->key_id) < 0) {
                path = NULL;
                ret = KMSCTL_EXIT_LOCAL;
            } else {
                ret = kmsctl_audit_write_file(path, text, strlen(text), 0644);
            }
        }
        if (ret == KMSCTL_EXIT_OK) {
            if (a->json) {
                json_t *o = json_object();
                json_object_set_new(o, "region", kmsctl_jstr_escaped(k->region));
                json_object_set_new(o, "key_id", kmsctl_jstr_escaped(k->key_id));
                json_object_set_new(o, "not_before_ms", json_integer(k->not_before_ms));
                json_object_set_new(o, "not_after_ms", json_integer(k->not_after_ms));
                json_object_set_new(o, "public_key_pem", kmsctl_jstr_escaped(k->public_key_pem));
                if (path)
                    json_object_set_new(o, "file", kmsctl_jstr_escaped(path));
                json_array_append_new(arr, o);
            } else if (a->out_dir) {
                printf("%-10s  %-32s  %-24s  %-24s  %s\n", k->region, k->key_id,
                       audit_iso_ms(k->not_before_ms, nb),
                       k->not_after_ms ? audit_iso_ms(k->not_after_ms, na) : "(current)", path);
            } else {
                fputs(text, stdout);
            }
        }
        free(path);
        free(text);
        if (ret != KMSCTL_EXIT_OK) {
            json_decref(arr);
            goto done;
        }
    }
    if (a->json)
        ret = kmsctl_print_json(arr);
    else if (resp->n_keys == 0)
        fprintf(stderr, "no audit keys\n");
done:
    return ret;
}

static int do_keys(struct kmsctl_rpc *rpc, const struct kmsctl_audit_args *a)
{
    Custos__V1__GetAuditKeysRequest req = CUSTOS__V1__GET_AUDIT_KEYS_REQUEST__INIT;
    Custos__V1__GetAuditKeysResponse *resp = NULL;
    req.region = (char *)(a->region ? a->region : "");
    int ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "GetAuditKeys", &req.base,
                                      &custos__v1__get_audit_keys_response__descriptor,
                                      (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = keys_out(resp, a);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

static int export_out(const struct kmsctl_audit_args *a,
                      const Custos__V1__ExportAuditLogResponse *resp, const uint8_t *body,
                      size_t body_len, uint64_t start);

static int do_export(struct kmsctl_rpc *rpc, const struct kmsctl_audit_args *a)
{
    Custos__V1__ExportAuditLogRequest req = CUSTOS__V1__EXPORT_AUDIT_LOG_REQUEST__INIT;
    Custos__V1__ExportAuditLogResponse *resp = NULL;
    uint8_t *body = NULL;
    size_t body_len = 0;
    int ret;

    req.region = (char *)a->region;
    req.start = a->start;
    req.count = a->count ? a->count : KMSCTL_AUDIT_EXPORT_MAX;
    req.inclusion_proofs = a->proofs != 0;
    uint64_t verified = 0;
    if ((ret = known_size("export", a, &req.known_tree_size, &verified)) != KMSCTL_EXIT_OK)
        return ret;
    if (a->known_state && req.known_tree_size > 0 && !a->have_start)
        req.start = verified;
    ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "ExportAuditLog", &req.base,
                                  &custos__v1__export_audit_log_response__descriptor,
                                  (ProtobufCMessage **)&resp, &body, &body_len);
    if (ret != KMSCTL_EXIT_OK)
        return known_refused(rpc, "export", a, req.known_tree_size, ret);
    ret = export_out(a, resp, body, body_len, req.start);
    free(body);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* Save the bundle (body, which decodes as resp) and print its summary. */
static int export_out(const struct kmsctl_audit_args *a,
                      const Custos__V1__ExportAuditLogResponse *resp, const uint8_t *body,
                      size_t body_len, uint64_t start)
{
    int ret = KMSCTL_EXIT_OK;
    if (!audit_verify_head_shape_ok(resp->head)) {
        fprintf(stderr, "kmsctl: the reply carries no well-formed signed head\n");
        ret = KMSCTL_EXIT_TRANSPORT;
        goto done;
    }
    if ((ret = kmsctl_audit_write_file(a->out, body, body_len, 0644)) != KMSCTL_EXIT_OK)
        goto done;
    /* The summary goes to stderr when the bundle itself went to stdout. */
    FILE *f = strcmp(a->out, "-") == 0 ? stderr : stdout;
    char t[40];
    const Custos__V1__SignedTreeHead *h = resp->head;
    fprintf(f, "wrote %s (%zu bytes): region ", a->out, body_len);
    kmsctl_print_safe(f, h->region);
    fprintf(f, ", head tree_size %" PRIu64 " at %s, ", h->tree_size,
            audit_iso_ms(h->timestamp_ms, t));
    if (resp->n_entries > 0)
        fprintf(f, "entries %" PRIu64 "..%" PRIu64 " (%zu)", resp->entries[0]->seq,
                resp->entries[resp->n_entries - 1]->seq, resp->n_entries);
    else
        fprintf(f, "no entries");
    fprintf(f, ", inclusion proofs: %s", a->proofs ? "yes" : "no");
    if (resp->known_tree_size > 0)
        fprintf(f, ", consistency proof from tree_size %" PRIu64, resp->known_tree_size);
    fputc('\n', f);
    uint64_t end = resp->n_entries ? resp->entries[resp->n_entries - 1]->seq + 1 : start;
    if (end < h->tree_size)
        fprintf(f, "more entries under this head: continue with --start %" PRIu64 "\n", end);
done:
    return ret;
}

/* ---- from PostgreSQL: keys and export without kmsd ---------------------------------- */

/* A kms_err of the PostgreSQL read side as kmsctl's exit codes. */
static int pg_exit(const char *cmd, kms_err rc)
{
    fprintf(stderr, "kmsctl audit %s: %s\n", cmd, kms_err_detail());
    switch (rc) {
    case KMS_ERR_CONFIG:
        return KMSCTL_EXIT_USAGE;
    case KMS_ERR_IO:
    case KMS_ERR_NOSPC:
        return KMSCTL_EXIT_TRANSPORT;
    case KMS_ERR_NOMEM:
        return KMSCTL_EXIT_LOCAL;
    default:
        return KMSCTL_EXIT_REFUSED;
    }
}

static int pg_open(const char *cmd, const struct kmsctl_audit_args *a, PGconn **out)
{
    char src[4200];
    const char *pw = a->pg_password;
    /* A bare path is a password file. */
    if (pw != NULL && strncmp(pw, "file:", 5) != 0 && strncmp(pw, "env:", 4) != 0) {
        snprintf(src, sizeof(src), "file:%s", pw);
        pw = src;
    }
    struct kms_pg_target t = {a->pg, pw};
    kms_err rc = kms_pg_connect(&t, "kmsctl", out);
    return rc == KMS_OK ? KMSCTL_EXIT_OK : pg_exit(cmd, rc);
}

static int pg_keys(PGconn *c, const struct kmsctl_audit_args *a)
{
    Custos__V1__GetAuditKeysResponse resp = CUSTOS__V1__GET_AUDIT_KEYS_RESPONSE__INIT;
    kms_err rc = audit_pg_keys(c, a->region, &resp.keys, &resp.n_keys);
    if (rc != KMS_OK)
        return pg_exit("keys", rc);
    int ret = keys_out(&resp, a);
    audit_log_keys_free(resp.keys, resp.n_keys);
    return ret;
}

static int pg_export(PGconn *c, const struct kmsctl_audit_args *a)
{
    uint64_t known = 0, verified = 0, start = a->start;
    int ret = known_size("export", a, &known, &verified);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    if (a->known_state && known > 0 && !a->have_start)
        start = verified;
    uint8_t *body = NULL;
    size_t len = 0;
    kms_err rc = audit_pg_export(c, a->region, start, a->count ? a->count : KMSCTL_AUDIT_EXPORT_MAX,
                                 a->proofs != 0, known, &body, &len);
    if (rc != KMS_OK) {
        ret = pg_exit("export", rc);
        if (rc == KMS_ERR_FAILED_PRECONDITION && known > 0) {
            fprintf(stderr,
                    "kmsctl audit export: ALARM: the log of region %s is shorter than the head "
                    "you hold (tree_size %" PRIu64 "): it was rolled back or forked\n",
                    a->region, known);
            ret = KMSCTL_EXIT_ROLLBACK;
        }
        return ret;
    }
    Custos__V1__ExportAuditLogResponse *resp =
        custos__v1__export_audit_log_response__unpack(NULL, len, body);
    if (resp == NULL) {
        free(body);
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    ret = export_out(a, resp, body, len, start);
    custos__v1__export_audit_log_response__free_unpacked(resp, NULL);
    free(body);
    return ret;
}

static int audit_pg(const char *verb, const struct kmsctl_audit_args *a)
{
    if (strcmp(verb, "head") == 0) {
        fprintf(stderr, "kmsctl audit head: --pg does not apply (export holds the head)\n");
        return KMSCTL_EXIT_USAGE;
    }
    PGconn *c = NULL;
    int ret = pg_open(verb, a, &c);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = strcmp(verb, "keys") == 0 ? pg_keys(c, a) : pg_export(c, a);
    PQfinish(c);
    return kmsctl_flush_stdout(ret);
}

/* head, keys or export over one connection. */
int kmsctl_audit_online(const struct kmsctl_conn *conn, const char *verb,
                        const struct kmsctl_audit_args *a)
{
    if (a->pg != NULL)
        return audit_pg(verb, a);
    struct kmsctl_rpc *rpc = NULL;
    int ret = kmsctl_rpc_open(conn, &rpc);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    if (strcmp(verb, "head") == 0)
        ret = do_head(rpc, a);
    else if (strcmp(verb, "keys") == 0)
        ret = do_keys(rpc, a);
    else
        ret = do_export(rpc, a);
    kmsctl_rpc_free(rpc);
    return kmsctl_flush_stdout(ret);
}
