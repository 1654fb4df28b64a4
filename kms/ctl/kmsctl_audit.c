/*
 * kmsctl_audit.c - `kmsctl audit <verb>`: the command line of the auditor's
 * side of the audit log. Option parsing and help; the online commands
 * (head, keys, export: AuditService over kmsctl_rpc.h); sth-bytes; and
 * verify, which reads the files and hands them to the offline verifier.
 *
 * What is checked lives in audit_verify.h, the trusted keys and their file
 * format in audit_keyset.h, the verify state file in audit_state.h. This
 * file only turns their results into output and exit codes: a failed check
 * is exit 1 with "kmsctl audit verify: FAILED: WHERE: WHAT", a file that
 * cannot be read or written exit 4 with "kmsctl: DETAIL".
 *
 * Files written here (heads, bundles, key PEMs, the state file) are written
 * to a temporary name, synced and renamed (audit_file_write), so a crash
 * never leaves half of one behind.
 */
#include "kmsctl_audit.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "audit_keyset.h"
#include "audit_state.h"
#include "audit_verify.h"
#include "audit_verify_util.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/audit.pb-c.h"

#define AUDIT_SERVICE "custos.v1.AuditService"
#define EXPORT_MAX 10000

/* A failed verification: the bundle, keys or state say something is wrong. */
#define EXIT_BAD KMSCTL_EXIT_REFUSED

enum {
    O_REGION = 0x2000,
    O_OUT,
    O_JSON,
    O_OUT_DIR,
    O_START,
    O_COUNT,
    O_PROOFS,
    O_KNOWN_HEAD,
    O_KNOWN_STATE,
    O_HEAD,
    O_OUT_BIN,
    O_OUT_SIG,
    O_KEYS,
    O_STATE,
    O_PARTIAL,
    O_LAST = O_PARTIAL,
};

#define IX(o) ((o) - O_REGION)
#define F(o) (1u << IX(o))

struct verb {
    const char *name;
    unsigned opts; /* options it accepts, F(O_...) */
    unsigned need; /* ... and of those, the ones it requires */
    int online;
    const char *synopsis;
    const char *help;
};

#define KNOWN_EXIT_TEXT                                                                    \
    "exit code 5 (with --known-head or --known-state): the ALARM: R's log is shorter\n"   \
    "than the head you hold: it was rolled back or forked (the server answered\n"        \
    "failed_precondition). Keep your state and bundles; do not retry it away.\n"

static const struct verb verbs[] = {
    {"head", F(O_REGION) | F(O_OUT) | F(O_JSON) | F(O_KNOWN_HEAD) | F(O_KNOWN_STATE),
     F(O_REGION), 1,
     "head --region R [--out HEAD] [--json] [--known-head HEAD | --known-state STATE]",
     "Fetch the latest signed tree head of region R (role auditor) and print it.\n"
     "  --region R                the region (required)\n"
     "  --out HEAD                also save it (a SignedTreeHead message; '-' = stdout)\n"
     "  --json                    print a JSON object\n"
     "  --known-head HEAD         a head you hold (a head file or a bundle): exit 5 if\n"
     "                            R's log is now shorter (rolled back or forked)\n"
     "  --known-state STATE       the same, with region R's latest head in a verify\n"
     "                            state file\n"
     KNOWN_EXIT_TEXT},
    {"keys", F(O_REGION) | F(O_OUT_DIR) | F(O_JSON), 0, 1,
     "keys [--region R] [--out-dir DIR] [--json]",
     "Fetch the audit public keys (every region served, or R) with their validity.\n"
     "Without --out-dir, print each key as a PEM block preceded by Custos-Audit-*\n"
     "header lines (region, key id, validity), the form `verify --keys` reads and\n"
     "`openssl` accepts as it is.\n"
     "  --region R                only region R's keys\n"
     "  --out-dir DIR             write DIR/<region>-<key_id>.pem per key and list them\n"
     "  --json                    print a JSON array instead\n"},
    {"export",
     F(O_REGION) | F(O_OUT) | F(O_START) | F(O_COUNT) | F(O_PROOFS) | F(O_KNOWN_HEAD) |
         F(O_KNOWN_STATE),
     F(O_REGION) | F(O_OUT), 1,
     "export --region R --out BUNDLE [--start N] [--count M] [--proofs]\n"
     "                            [--known-head HEAD | --known-state STATE]",
     "Export entries [N, N+M) of region R's log under its latest signed head and save\n"
     "the reply (an ExportAuditLogResponse) exactly as received: the bundle.\n"
     "  --region R                the region (required)\n"
     "  --out BUNDLE              where to save it (required; '-' = stdout)\n"
     "  --start N                 first seq (default 0, or with --known-state the end\n"
     "                            of what that state has verified)\n"
     "  --count M                 1..10000 entries (default 10000)\n"
     "  --proofs                  an inclusion proof with every entry (needed to verify\n"
     "                            a bundle that does not hold the whole log)\n"
     "  --known-head HEAD         a head you hold (a head file or a bundle): the reply\n"
     "                            proves the new head extends it (consistency proof)\n"
     "  --known-state STATE       the same, with region R's latest head in a verify\n"
     "                            state file\n"
     KNOWN_EXIT_TEXT},
    {"sth-bytes", F(O_HEAD) | F(O_OUT_BIN) | F(O_OUT_SIG), F(O_HEAD), 0,
     "sth-bytes --head HEAD [--out-bin STH.BIN] [--out-sig STH.SIG]",
     "Write the exact bytes a head's signature covers, and the DER signature, so\n"
     "that `openssl dgst -sha256 -verify KEY.pem -signature STH.SIG STH.BIN` checks\n"
     "it. Offline.\n"
     "  --head HEAD               a head file (`audit head --out`) or a bundle\n"
     "  --out-bin FILE            the signed bytes\n"
     "  --out-sig FILE            the DER signature\n"},
    {"verify", F(O_KEYS) | F(O_STATE) | F(O_PARTIAL), F(O_KEYS), 0,
     "verify --keys KEYS [--keys KEYS]... [--state STATE] [--partial] BUNDLE...",
     "Verify exported bundles offline (OpenSSL only; no server, no HSM): head\n"
     "signatures and key validity, entry order and continuity, events (seq, region),\n"
     "the root recomputed from a whole log or every entry's inclusion proof,\n"
     "consistency proofs, that the bundles of one region agree and extend each\n"
     "other, that nothing is missing, and that no head is older or smaller than the\n"
     "one kept in STATE. Stops at the first bad thing and names it.\n"
     "  --keys KEYS               a directory of .pem files or a PEM file from\n"
     "                            `audit keys` (repeatable; required)\n"
     "  --state STATE             heads kept from earlier runs; created if missing,\n"
     "                            updated when everything verifies\n"
     "  --partial                 the bundles may hold a range of the log: do not\n"
     "                            require every entry from seq 0 (or from where STATE\n"
     "                            has verified) to the newest head\n"
     "exit codes: 0 verified; 1 verification failed (the first failure is printed);\n"
     "            2 usage error; 4 a file could not be read or written\n"},
    {"events", 0, 0, 0, "events BUNDLE...",
     "Print the events of exported bundles, one JSON object per line, in the order\n"
     "held (bytes as lowercase hex). Recovery evidence (recovery_id, statement,\n"
     "statement_sha256, approval_signature, officer_key_sha256) appears on the\n"
     "events that carry it: docs/escrow-recovery.md shows how openssl re-verifies\n"
     "every approval from it. Offline; run `audit verify` on the bundles first.\n"},
};

struct args {
    const struct verb *verb;
    const char *region, *out, *out_dir, *known_head, *known_state, *head, *out_bin, *out_sig,
        *state;
    const char *keys[64];
    size_t n_keys;
    uint64_t start;
    uint32_t count;
    int json, proofs, partial, have_start;
};

static void audit_usage(FILE *f)
{
    fprintf(f, "usage: kmsctl audit <command> [options]\n"
               "\n"
               "The audit log: signed tree heads, keys and exports from kmsd (role auditor),\n"
               "and offline verification. See docs/audit.md.\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        fprintf(f, "  %s\n", verbs[i].synopsis);
    fprintf(f, "\n"
               "Run 'kmsctl audit <command> --help' for a command's options.\n"
               "\n" KMSCTL_CONN_USAGE "(head, keys, export; ignored by sth-bytes and verify)\n"
               "\n" KMSCTL_EXIT_USAGE_TEXT
               "verify: 1 means a check failed; sth-bytes, verify and events never use the\n"
               "network\n");
}

static void verb_usage(FILE *f, const struct verb *v)
{
    fprintf(f, "usage: kmsctl audit %s\n\n%s", v->synopsis, v->help);
    if (v->online)
        fprintf(f, "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
    else if (strcmp(v->name, "verify") != 0)
        fprintf(f, "\nexit codes: 0 success; 2 usage error; 4 a file could not be read,\n"
                   "            decoded or written\n");
}

/* ---- small helpers ------------------------------------------------------------ */

static const struct option audit_opts[] = {
    KMSCTL_CONN_LONGOPTS,
    {"region", required_argument, NULL, O_REGION},
    {"out", required_argument, NULL, O_OUT},
    {"json", no_argument, NULL, O_JSON},
    {"out-dir", required_argument, NULL, O_OUT_DIR},
    {"start", required_argument, NULL, O_START},
    {"count", required_argument, NULL, O_COUNT},
    {"proofs", no_argument, NULL, O_PROOFS},
    {"known-head", required_argument, NULL, O_KNOWN_HEAD},
    {"known-state", required_argument, NULL, O_KNOWN_STATE},
    {"head", required_argument, NULL, O_HEAD},
    {"out-bin", required_argument, NULL, O_OUT_BIN},
    {"out-sig", required_argument, NULL, O_OUT_SIG},
    {"keys", required_argument, NULL, O_KEYS},
    {"state", required_argument, NULL, O_STATE},
    {"partial", no_argument, NULL, O_PARTIAL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* "--name" of option o, as the getopt table spells it. */
static const char *option_name(int o)
{
    static char buf[32];
    const struct option *p = audit_opts;
    while (p->name && p->val != o)
        p++;
    snprintf(buf, sizeof(buf), "--%s", p->name ? p->name : "?");
    return buf;
}

/* A local file could not be read, decoded or written: the library's detail. */
static int local_error(void)
{
    fprintf(stderr, "kmsctl: %s\n", kms_err_detail());
    return KMSCTL_EXIT_LOCAL;
}

static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    return audit_file_write(path, data, len, mode) == KMS_OK ? KMSCTL_EXIT_OK : local_error();
}

/* ---- heads ----------------------------------------------------------------------- */

/* A head from a file: a SignedTreeHead (`audit head --out`) or a bundle. */
static int load_head(const char *path, Custos__V1__SignedTreeHead **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    if (audit_file_read(path, AUDIT_BUNDLE_FILE_MAX, &buf, &len) != KMS_OK)
        return local_error();
    *out = audit_verify_head_unpack(buf, len);
    free(buf);
    if (*out == NULL) {
        fprintf(stderr, "kmsctl: %s: neither a signed tree head nor an audit bundle\n", path);
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

/* ---- online: head, keys, export ----------------------------------------------------- */

/* The tree size of the head the auditor holds for a->region (--known-head,
 * or the newest head of --known-state; 0: none) and, from the state, how
 * far its entries were verified (*out_verified; 0 without a state). */
static int known_size(const char *cmd, const struct args *a, uint64_t *out_size,
                      uint64_t *out_verified)
{
    *out_size = *out_verified = 0;
    if (a->known_head) {
        Custos__V1__SignedTreeHead *h = NULL;
        int ret = load_head(a->known_head, &h);
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
            return local_error();
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
static int known_refused(struct kmsctl_rpc *rpc, const char *cmd, const struct args *a,
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

static int do_head(struct kmsctl_rpc *rpc, const struct args *a)
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
        ret = write_file(a->out, p, n, 0644);
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

static int do_keys(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__GetAuditKeysRequest req = CUSTOS__V1__GET_AUDIT_KEYS_REQUEST__INIT;
    Custos__V1__GetAuditKeysResponse *resp = NULL;
    req.region = (char *)(a->region ? a->region : "");
    int ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "GetAuditKeys", &req.base,
                                      &custos__v1__get_audit_keys_response__descriptor,
                                      (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
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
                ret = write_file(path, text, strlen(text), 0644);
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
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

static int do_export(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__ExportAuditLogRequest req = CUSTOS__V1__EXPORT_AUDIT_LOG_REQUEST__INIT;
    Custos__V1__ExportAuditLogResponse *resp = NULL;
    uint8_t *body = NULL;
    size_t body_len = 0;
    int ret;

    req.region = (char *)a->region;
    req.start = a->start;
    req.count = a->count ? a->count : EXPORT_MAX;
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
    if (!audit_verify_head_shape_ok(resp->head)) {
        fprintf(stderr, "kmsctl: the reply carries no well-formed signed head\n");
        ret = KMSCTL_EXIT_TRANSPORT;
        goto done;
    }
    if ((ret = write_file(a->out, body, body_len, 0644)) != KMSCTL_EXIT_OK)
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
    uint64_t end = resp->n_entries ? resp->entries[resp->n_entries - 1]->seq + 1 : req.start;
    if (end < h->tree_size)
        fprintf(f, "more entries under this head: continue with --start %" PRIu64 "\n", end);
done:
    free(body);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* ---- offline: sth-bytes -------------------------------------------------------------- */

static int do_sth_bytes(const struct args *a)
{
    Custos__V1__SignedTreeHead *h = NULL;
    int ret = load_head(a->head, &h);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    uint8_t sb[AUDIT_VERIFY_SIGNED_MAX];
    size_t n = audit_verify_head_signed_bytes(h, sb);
    if (a->out_bin && (ret = write_file(a->out_bin, sb, n, 0644)) != KMSCTL_EXIT_OK)
        goto done;
    if (a->out_sig &&
        (ret = write_file(a->out_sig, h->signature.data, h->signature.len, 0644)) != KMSCTL_EXIT_OK)
        goto done;
    FILE *f = (a->out_bin && strcmp(a->out_bin, "-") == 0) ||
                      (a->out_sig && strcmp(a->out_sig, "-") == 0)
                  ? stderr
                  : stdout;
    fprintf(f, "head of region %s, tree_size %" PRIu64 ", timestamp_ms %" PRId64
               ", signed by key %s: %zu signed bytes, %zu-byte DER signature\n",
            h->region, h->tree_size, h->timestamp_ms, h->key_id, n, h->signature.len);
    fprintf(f, "check with: openssl dgst -sha256 -verify %s-%s.pem -signature %s %s\n", h->region,
            h->key_id, a->out_sig ? a->out_sig : "STH.SIG", a->out_bin ? a->out_bin : "STH.BIN");
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
        {"officer_key_sha256", e->officer_key_sha256},
    };
    for (size_t i = 0; i < sizeof(str) / sizeof(str[0]); i++)
        json_object_set_new(o, str[i].name, kmsctl_jstr_escaped(str[i].value));
    json_object_set_new(o, "key_version", json_integer(e->key_version));
    char sig[2 * AUDIT_SIG_MAX + 1] = "";
    if (e->approval_signature.len <= AUDIT_SIG_MAX)
        audit_hex(e->approval_signature.data, e->approval_signature.len, sig);
    json_object_set_new(o, "approval_signature", kmsctl_jstr_escaped(sig));
    return o;
}

static int do_events(char **files, size_t nfiles)
{
    for (size_t f = 0; f < nfiles; f++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (audit_file_read(files[f], AUDIT_BUNDLE_FILE_MAX, &buf, &len) != KMS_OK)
            return local_error();
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
static int do_verify(const struct args *a, char **files, size_t nfiles)
{
    struct audit_keyset *ks = NULL;
    struct audit_state *st = NULL;
    struct audit_verify *v = NULL;
    int ret = KMSCTL_EXIT_LOCAL;
    kms_err rc = KMS_OK;
    char t[40];

    if (audit_keyset_new(&ks) != KMS_OK)
        goto local;
    for (size_t i = 0; i < a->n_keys; i++)
        if (audit_keyset_load(ks, a->keys[i]) != KMS_OK)
            goto local;
    if ((a->state && audit_state_load(a->state, &st) != KMS_OK) ||
        audit_verify_new(ks, st, a->partial, &v) != KMS_OK)
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
    if (st && audit_state_save(st, a->state) != KMS_OK)
        goto local;
    printf("OK: %zu bundle%s verified%s%s\n", audit_verify_n_bundles(v),
           audit_verify_n_bundles(v) == 1 ? "" : "s", st ? "; state kept in " : "",
           st ? a->state : "");
    ret = KMSCTL_EXIT_OK;
    goto done;
local:
    ret = local_error();
done:
    audit_verify_free(v);
    audit_state_free(st);
    audit_keyset_free(ks);
    return ret;
}

/* ---- main ------------------------------------------------------------------------------ */

int kmsctl_audit_main(int argc, char **argv)
{
    struct kmsctl_conn conn;
    struct args a;
    unsigned seen = 0;
    int c, bad_opt = 0, help = 0;
    uint64_t v64 = 0;

    memset(&a, 0, sizeof(a));
    kmsctl_conn_init(&conn);
    optind = 1;
    /* Where the value of each plain option goes. */
    const char **text[IX(O_LAST) + 1] = {
        [IX(O_REGION)] = &a.region,        [IX(O_OUT)] = &a.out,
        [IX(O_OUT_DIR)] = &a.out_dir,      [IX(O_KNOWN_HEAD)] = &a.known_head,
        [IX(O_KNOWN_STATE)] = &a.known_state, [IX(O_HEAD)] = &a.head,
        [IX(O_OUT_BIN)] = &a.out_bin,      [IX(O_OUT_SIG)] = &a.out_sig,
        [IX(O_STATE)] = &a.state,
    };
    int *flag[IX(O_LAST) + 1] = {
        [IX(O_JSON)] = &a.json, [IX(O_PROOFS)] = &a.proofs, [IX(O_PARTIAL)] = &a.partial,
    };
    while ((c = getopt_long(argc, argv, "h", audit_opts, NULL)) != -1) {
        if (kmsctl_conn_option(&conn, c, optarg))
            continue;
        if (c < O_REGION || c > O_LAST) {
            help |= c == 'h';
            bad_opt |= c != 'h';
            continue;
        }
        if (text[IX(c)]) {
            *text[IX(c)] = optarg;
        } else if (flag[IX(c)]) {
            *flag[IX(c)] = 1;
        } else if (c == O_START) {
            if (!audit_parse_u64(optarg, UINT64_MAX, &a.start)) {
                fprintf(stderr, "kmsctl audit: --start must be a seq (0 or more)\n");
                return KMSCTL_EXIT_USAGE;
            }
            a.have_start = 1;
        } else if (c == O_COUNT) {
            if (!audit_parse_u64(optarg, EXPORT_MAX, &v64) || v64 == 0) {
                fprintf(stderr, "kmsctl audit: --count must be 1..%d\n", EXPORT_MAX);
                return KMSCTL_EXIT_USAGE;
            }
            a.count = (uint32_t)v64;
        } else if (a.n_keys == sizeof(a.keys) / sizeof(a.keys[0])) { /* O_KEYS */
            fprintf(stderr, "kmsctl audit: too many --keys\n");
            return KMSCTL_EXIT_USAGE;
        } else {
            a.keys[a.n_keys++] = optarg;
        }
        seen |= F(c);
    }
    const char *name = optind < argc ? argv[optind++] : NULL;
    if (name && strcmp(name, "help") == 0) {
        audit_usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    for (size_t i = 0; name && i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(name, verbs[i].name) == 0)
            a.verb = &verbs[i];
    if (help) {
        if (a.verb)
            verb_usage(stdout, a.verb);
        else
            audit_usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    if (bad_opt || name == NULL) {
        audit_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (a.verb == NULL) {
        fprintf(stderr, "kmsctl audit: unknown command '%s'\n", name);
        audit_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    unsigned extra = seen & ~a.verb->opts;
    if (extra) {
        fprintf(stderr, "kmsctl audit %s: %s does not apply\n", name,
                option_name(O_REGION + __builtin_ctz(extra)));
        return KMSCTL_EXIT_USAGE;
    }
    int is_verify = strcmp(name, "verify") == 0;
    int is_events = strcmp(name, "events") == 0;
    if (!is_verify && !is_events && optind < argc) {
        fprintf(stderr, "kmsctl audit %s: unexpected argument '%s'\n", name, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    unsigned lacking = a.verb->need & ~seen;
    const char *missing = NULL;
    if (lacking)
        missing = option_name(O_REGION + __builtin_ctz(lacking));
    else if (strcmp(name, "sth-bytes") == 0 && !a.out_bin && !a.out_sig)
        missing = "--out-bin or --out-sig";
    else if ((is_verify || is_events) && optind >= argc)
        missing = "a BUNDLE";
    if (missing) {
        fprintf(stderr, "kmsctl audit %s: %s is required\n", name, missing);
        verb_usage(stderr, a.verb);
        return KMSCTL_EXIT_USAGE;
    }
    if ((a.region && !audit_region_ok(a.region))) {
        fprintf(stderr, "kmsctl audit %s: --region: not a region name\n", name);
        return KMSCTL_EXIT_USAGE;
    }
    if (a.known_head && a.known_state) {
        fprintf(stderr, "kmsctl audit %s: --known-head and --known-state exclude each other\n",
                name);
        return KMSCTL_EXIT_USAGE;
    }
    if (a.out && strcmp(a.out, "-") == 0 && a.json) {
        fprintf(stderr, "kmsctl audit head: --out - and --json both want stdout\n");
        return KMSCTL_EXIT_USAGE;
    }

    int ret;
    if (is_verify) {
        ret = do_verify(&a, argv + optind, (size_t)(argc - optind));
    } else if (is_events) {
        ret = do_events(argv + optind, (size_t)(argc - optind));
    } else if (strcmp(name, "sth-bytes") == 0) {
        ret = do_sth_bytes(&a);
    } else {
        struct kmsctl_rpc *rpc = NULL;
        ret = kmsctl_rpc_open(&conn, &rpc);
        if (ret != KMSCTL_EXIT_OK)
            return ret;
        if (strcmp(name, "head") == 0)
            ret = do_head(rpc, &a);
        else if (strcmp(name, "keys") == 0)
            ret = do_keys(rpc, &a);
        else
            ret = do_export(rpc, &a);
        kmsctl_rpc_free(rpc);
    }
    if (fflush(stdout) != 0 && ret == KMSCTL_EXIT_OK) {
        fprintf(stderr, "kmsctl: cannot write output: %s\n", strerror(errno));
        ret = KMSCTL_EXIT_LOCAL;
    }
    return ret;
}
