/*
 * kmsctl_audit.c - `kmsctl audit <verb>`: signed tree heads, audit keys and
 * exports from kmsd's AuditService, and the offline verifier.
 *
 * The verifier trusts nothing but the public keys it is given (and the heads
 * it kept in its state file from earlier runs). It shares the RFC 9162
 * hashing and proof verification with kmsd (audit_merkle.h) and the signed
 * head bytes (audit_head_signed_bytes), and needs only OpenSSL: no server,
 * no HSM. It stops at the first thing that is wrong and names it: the file,
 * the entry's seq and its index in the bundle.
 *
 * Files written here (heads, bundles, key PEMs, the state file) are written
 * to a temporary name, synced and renamed, so a crash never leaves half of
 * one behind.
 */
#include "kmsctl_audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit_log.h"
#include "audit_merkle.h"
#include "kmsctl_rpc.h"
#include "proto/audit.pb-c.h"

#define AUDIT_SERVICE "custos.v1.AuditService"
#define EXPORT_MAX 10000
/* Nothing kmsd exports comes near these; they bound what a hostile file
 * can make us allocate. */
#define BUNDLE_FILE_MAX ((size_t)256 << 20)
#define TEXT_FILE_MAX ((size_t)16 << 20)
#define HEAD_FILE_MAX ((size_t)64 << 10)
#define REGION_MAX 255 /* one length byte in the signed bytes */
#define KEY_ID_MAX 64
#define SIG_MAX 144    /* DER ECDSA P-256 is at most 72 bytes; room to spare */
#define SIGNED_MAX (13 + 1 + REGION_MAX + 48)
#define STATE_MAGIC "custos-audit-state 1"

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

#define F(o) (1u << ((o) - O_REGION))

struct verb {
    const char *name;
    unsigned opts; /* options it accepts, F(O_...) */
    int online;
    const char *synopsis;
    const char *help;
};

static const struct verb verbs[] = {
    {"head", F(O_REGION) | F(O_OUT) | F(O_JSON), 1, "head --region R [--out HEAD] [--json]",
     "Fetch the latest signed tree head of region R (role auditor) and print it.\n"
     "  --region R                the region (required)\n"
     "  --out HEAD                also save it (a SignedTreeHead message; '-' = stdout)\n"
     "  --json                    print a JSON object\n"},
    {"keys", F(O_REGION) | F(O_OUT_DIR) | F(O_JSON), 1, "keys [--region R] [--out-dir DIR] [--json]",
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
     1,
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
     "                            state file\n"},
    {"sth-bytes", F(O_HEAD) | F(O_OUT_BIN) | F(O_OUT_SIG), 0,
     "sth-bytes --head HEAD [--out-bin STH.BIN] [--out-sig STH.SIG]",
     "Write the exact bytes a head's signature covers, and the DER signature, so\n"
     "that `openssl dgst -sha256 -verify KEY.pem -signature STH.SIG STH.BIN` checks\n"
     "it. Offline.\n"
     "  --head HEAD               a head file (`audit head --out`) or a bundle\n"
     "  --out-bin FILE            the signed bytes\n"
     "  --out-sig FILE            the DER signature\n"},
    {"verify", F(O_KEYS) | F(O_STATE) | F(O_PARTIAL), 0,
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
               "verify: 1 means a check failed; sth-bytes and verify never use the network\n");
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

static const char *option_name(int o)
{
    static const char *const names[] = {
        "--region",     "--out",         "--json",  "--out-dir", "--start",
        "--count",      "--proofs",      "--known-head", "--known-state", "--head",
        "--out-bin",    "--out-sig",     "--keys",  "--state",   "--partial",
    };
    return names[o - O_REGION];
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    if (s[0] < '0' || s[0] > '9')
        return 0;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return 0;
    *out = v;
    return 1;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end = NULL;
    if (!((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && s[1] >= '0' && s[1] <= '9')))
        return 0;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

static void to_hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Lowercase hex of exactly max_out bytes or fewer; returns the byte count or
 * -1. */
static long from_hex(const char *s, uint8_t *out, size_t max_out)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > max_out)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

/* UTC with milliseconds: 2026-11-26T11:55:32.396Z. */
static const char *iso_ms(int64_t ms, char buf[40])
{
    struct tm tm;
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int frac = (int)(ms - (int64_t)t * 1000);
    char s[32];
    if (gmtime_r(&t, &tm) == NULL || strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        snprintf(buf, 40, "@%" PRId64 "ms", ms);
    else
        snprintf(buf, 40, "%s.%03dZ", s, frac);
    return buf;
}

/* A region name or key id as it may appear in a file name and in the state
 * file: letters, digits, '.', '_', '-'. */
static int name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int key_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > KEY_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return 0;
    return 1;
}

/* A printable, bounded copy of a string that came from a file or the
 * server, for messages. */
static const char *safe(const char *s, char *buf, size_t n)
{
    size_t o = 0;
    for (; s && *s && o + 4 < n; s++)
        buf[o++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (s && *s && n >= 4) {
        memcpy(buf + (o < n - 4 ? o : n - 4), "...", 4);
        return buf;
    }
    buf[o] = '\0';
    return buf;
}

static int read_file(const char *path, size_t max, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    size_t cap = 65536, len = 0;
    uint8_t *buf = malloc(cap + 1);
    int ret = KMSCTL_EXIT_LOCAL;
    for (;;) {
        if (buf == NULL) {
            fprintf(stderr, "kmsctl: out of memory\n");
            goto done;
        }
        if (len == cap) {
            if (cap >= max) {
                fprintf(stderr, "kmsctl: %s: larger than %zu bytes\n", path, max);
                goto done;
            }
            cap = cap * 2 > max ? max : cap * 2;
            uint8_t *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                fprintf(stderr, "kmsctl: out of memory\n");
                goto done;
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0'; /* text files are parsed as strings */
    *out = buf;
    *out_len = len;
    buf = NULL;
    ret = KMSCTL_EXIT_OK;
done:
    free(buf);
    if (fd > STDIN_FILENO)
        close(fd);
    return ret;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return 0;
        p += w;
        n -= (size_t)w;
    }
    return 1;
}

/* Write path whole or not at all: a temporary file in the same directory,
 * fsync, rename, fsync of the directory. '-' is stdout. */
static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    if (strcmp(path, "-") == 0) {
        if (!write_all(STDOUT_FILENO, data, len)) {
            fprintf(stderr, "kmsctl: stdout: %s\n", strerror(errno));
            return KMSCTL_EXIT_LOCAL;
        }
        return KMSCTL_EXIT_OK;
    }
    char *tmp = NULL, *dcopy = strdup(path);
    int fd = -1, ret = KMSCTL_EXIT_LOCAL;
    if (dcopy == NULL || asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        tmp = NULL;
        fprintf(stderr, "kmsctl: out of memory\n");
        goto done;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0 || !write_all(fd, data, len) || fsync(fd) != 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", fd < 0 ? tmp : path, strerror(errno));
        goto done;
    }
    if (close(fd) != 0) {
        fd = -1;
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        goto done;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        goto done;
    }
    int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    ret = KMSCTL_EXIT_OK;
done:
    if (fd >= 0)
        close(fd);
    if (ret != KMSCTL_EXIT_OK && tmp)
        unlink(tmp);
    free(tmp);
    free(dcopy);
    return ret;
}

static json_t *jstr(const char *s)
{
    char buf[1024];
    json_t *j = json_string(s ? s : "");
    return j ? j : json_string(safe(s, buf, sizeof(buf)));
}

static int print_json(json_t *j)
{
    int rc = json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    putchar('\n');
    json_decref(j);
    if (rc != 0) {
        fprintf(stderr, "kmsctl: cannot format JSON output\n");
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

/* ---- heads ----------------------------------------------------------------------- */

/* A head that could have come from kmsd: the shape, not the signature. */
static int head_shape_ok(const Custos__V1__SignedTreeHead *h)
{
    return h && h->region && name_ok(h->region, REGION_MAX) && h->root_hash.len == AUDIT_HASH_LEN &&
           h->signature.len > 0 && h->signature.len <= SIG_MAX && h->key_id &&
           key_id_ok(h->key_id);
}

/* A head from a file: a SignedTreeHead (`audit head --out`) or a bundle
 * (its head). A bundle read as a SignedTreeHead either fails to decode
 * (entries, field 2, are not a varint) or has no signature. */
static int load_head(const char *path, Custos__V1__SignedTreeHead **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    *out = NULL;
    int ret = read_file(path, BUNDLE_FILE_MAX, &buf, &len);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    Custos__V1__SignedTreeHead *h =
        len <= HEAD_FILE_MAX ? custos__v1__signed_tree_head__unpack(NULL, len, buf) : NULL;
    if (h && !head_shape_ok(h)) {
        custos__v1__signed_tree_head__free_unpacked(h, NULL);
        h = NULL;
    }
    if (h == NULL) {
        Custos__V1__ExportAuditLogResponse *b =
            custos__v1__export_audit_log_response__unpack(NULL, len, buf);
        if (b && head_shape_ok(b->head)) {
            size_t n = custos__v1__signed_tree_head__get_packed_size(b->head);
            uint8_t *p = malloc(n ? n : 1);
            if (p) {
                custos__v1__signed_tree_head__pack(b->head, p);
                h = custos__v1__signed_tree_head__unpack(NULL, n, p);
                free(p);
            }
        }
        if (b)
            custos__v1__export_audit_log_response__free_unpacked(b, NULL);
    }
    free(buf);
    if (h == NULL) {
        fprintf(stderr, "kmsctl: %s: neither a signed tree head nor an audit bundle\n", path);
        return KMSCTL_EXIT_LOCAL;
    }
    *out = h;
    return KMSCTL_EXIT_OK;
}

static void print_head_text(const Custos__V1__SignedTreeHead *h)
{
    char t[40], root[2 * AUDIT_HASH_LEN + 1], sig[2 * SIG_MAX + 1];
    to_hex(h->root_hash.data, h->root_hash.len <= AUDIT_HASH_LEN ? h->root_hash.len : 0, root);
    to_hex(h->signature.data, h->signature.len <= SIG_MAX ? h->signature.len : 0, sig);
    fputs("region: ", stdout);
    kmsctl_print_safe(stdout, h->region);
    printf("\ntree_size: %" PRIu64 "\n", h->tree_size);
    printf("timestamp: %s (%" PRId64 " ms)\n", iso_ms(h->timestamp_ms, t), h->timestamp_ms);
    printf("root_hash: %s\n", root);
    fputs("key_id: ", stdout);
    kmsctl_print_safe(stdout, h->key_id);
    printf("\nsignature: %s\n", sig);
}

static json_t *head_json(const Custos__V1__SignedTreeHead *h)
{
    char t[40], root[2 * AUDIT_HASH_LEN + 1], sig[2 * SIG_MAX + 1];
    to_hex(h->root_hash.data, h->root_hash.len <= AUDIT_HASH_LEN ? h->root_hash.len : 0, root);
    to_hex(h->signature.data, h->signature.len <= SIG_MAX ? h->signature.len : 0, sig);
    json_t *o = json_object();
    json_object_set_new(o, "region", jstr(h->region));
    json_object_set_new(o, "tree_size", json_integer((json_int_t)h->tree_size));
    json_object_set_new(o, "timestamp_ms", json_integer(h->timestamp_ms));
    json_object_set_new(o, "timestamp", jstr(iso_ms(h->timestamp_ms, t)));
    json_object_set_new(o, "root_hash", jstr(root));
    json_object_set_new(o, "key_id", jstr(h->key_id));
    json_object_set_new(o, "signature", jstr(sig));
    return o;
}

/* ---- online: head, keys, export ----------------------------------------------------- */

static int do_head(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__GetSignedTreeHeadRequest req = CUSTOS__V1__GET_SIGNED_TREE_HEAD_REQUEST__INIT;
    Custos__V1__GetSignedTreeHeadResponse *resp = NULL;
    req.region = (char *)a->region;
    int ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "GetSignedTreeHead", &req.base,
                                      &custos__v1__get_signed_tree_head_response__descriptor,
                                      (ProtobufCMessage **)&resp, NULL, NULL);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    if (!head_shape_ok(resp->head)) {
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
        ret = print_json(head_json(resp->head));
    else
        print_head_text(resp->head);
done:
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* A PEM public key and nothing else: the BEGIN line, base64 lines, the END
 * line. (Anything more could smuggle header lines into the key files.) */
static int pem_ok(const char *pem)
{
    static const char begin[] = "-----BEGIN PUBLIC KEY-----\n", end[] = "-----END PUBLIC KEY-----";
    if (strncmp(pem, begin, sizeof(begin) - 1) != 0)
        return 0;
    const char *p = pem + sizeof(begin) - 1;
    while (*p && *p != '-') {
        size_t n = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=");
        if (n == 0 || n > 76 || p[n] != '\n')
            return 0;
        p += n + 1;
    }
    if (strncmp(p, end, sizeof(end) - 1) != 0)
        return 0;
    p += sizeof(end) - 1;
    return strcmp(p, "") == 0 || strcmp(p, "\n") == 0;
}

/* A key as verify reads it: header lines, then the PEM block (which OpenSSL
 * reads on its own, skipping the headers). */
static char *key_text(const Custos__V1__AuditKey *k)
{
    char *s = NULL;
    if (asprintf(&s,
                 "Custos-Audit-Region: %s\n"
                 "Custos-Audit-Key-Id: %s\n"
                 "Custos-Audit-Not-Before-Ms: %" PRId64 "\n"
                 "Custos-Audit-Not-After-Ms: %" PRId64 "\n"
                 "%s%s",
                 k->region, k->key_id, k->not_before_ms, k->not_after_ms, k->public_key_pem,
                 strchr(k->public_key_pem, '\0')[-1] == '\n' ? "" : "\n") < 0)
        return NULL;
    return s;
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
        if (!name_ok(k->region, REGION_MAX) || !key_id_ok(k->key_id) ||
            !pem_ok(k->public_key_pem)) {
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
        char *text = key_text(k), *path = NULL, nb[40], na[40];
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
                json_object_set_new(o, "region", jstr(k->region));
                json_object_set_new(o, "key_id", jstr(k->key_id));
                json_object_set_new(o, "not_before_ms", json_integer(k->not_before_ms));
                json_object_set_new(o, "not_after_ms", json_integer(k->not_after_ms));
                json_object_set_new(o, "public_key_pem", jstr(k->public_key_pem));
                if (path)
                    json_object_set_new(o, "file", jstr(path));
                json_array_append_new(arr, o);
            } else if (a->out_dir) {
                printf("%-10s  %-32s  %-24s  %-24s  %s\n", k->region, k->key_id,
                       iso_ms(k->not_before_ms, nb),
                       k->not_after_ms ? iso_ms(k->not_after_ms, na) : "(current)", path);
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
        ret = print_json(arr);
    else if (resp->n_keys == 0)
        fprintf(stderr, "no audit keys\n");
done:
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return ret;
}

/* ---- the verify state file ----------------------------------------------------------- */

/* A head whose signature has been verified (now, or in an earlier run when
 * it comes from the state file). */
struct vhead {
    char region[REGION_MAX + 1];
    uint64_t size;
    int64_t ts;
    audit_hash root;
    char key_id[KEY_ID_MAX + 1];
    uint8_t sig[SIG_MAX];
    size_t sig_len;
    const char *src; /* where it came from, for messages */
    struct bundle *b; /* NULL for heads of the state file */
};

struct verified {
    char region[REGION_MAX + 1];
    uint64_t to; /* entries [0, to) have been verified */
};

struct state {
    const char *path;
    struct vhead *heads;
    size_t n_heads, cap_heads;
    struct verified *ver;
    size_t n_ver, cap_ver;
};

static void state_free(struct state *st)
{
    free(st->heads);
    free(st->ver);
    memset(st, 0, sizeof(*st));
}

static int state_add_head(struct state *st, const struct vhead *h)
{
    for (size_t i = 0; i < st->n_heads; i++)
        if (strcmp(st->heads[i].region, h->region) == 0 && st->heads[i].size == h->size &&
            st->heads[i].ts == h->ts && memcmp(st->heads[i].root, h->root, AUDIT_HASH_LEN) == 0)
            return 1; /* kept already */
    if (st->n_heads == st->cap_heads) {
        size_t nc = st->cap_heads ? 2 * st->cap_heads : 16;
        struct vhead *nh = realloc(st->heads, nc * sizeof(*nh));
        if (nh == NULL)
            return 0;
        st->heads = nh;
        st->cap_heads = nc;
    }
    st->heads[st->n_heads] = *h;
    st->heads[st->n_heads].b = NULL;
    st->heads[st->n_heads].src = st->path;
    st->n_heads++;
    return 1;
}

static struct verified *state_verified(struct state *st, const char *region, int create)
{
    for (size_t i = 0; i < st->n_ver; i++)
        if (strcmp(st->ver[i].region, region) == 0)
            return &st->ver[i];
    if (!create)
        return NULL;
    if (st->n_ver == st->cap_ver) {
        size_t nc = st->cap_ver ? 2 * st->cap_ver : 8;
        struct verified *nv = realloc(st->ver, nc * sizeof(*nv));
        if (nv == NULL)
            return NULL;
        st->ver = nv;
        st->cap_ver = nc;
    }
    struct verified *v = &st->ver[st->n_ver++];
    snprintf(v->region, sizeof(v->region), "%s", region);
    v->to = 0;
    return v;
}

/* The newest kept head of a region: the largest, then the latest. */
static const struct vhead *state_latest(const struct state *st, const char *region)
{
    const struct vhead *best = NULL;
    for (size_t i = 0; i < st->n_heads; i++) {
        const struct vhead *h = &st->heads[i];
        if (strcmp(h->region, region) != 0)
            continue;
        if (best == NULL || h->size > best->size || (h->size == best->size && h->ts > best->ts))
            best = h;
    }
    return best;
}

/* Format (text, one record per line, '#' comments):
 *   custos-audit-state 1
 *   head REGION TREE_SIZE TIMESTAMP_MS ROOT_HEX KEY_ID SIGNATURE_HEX
 *   verified REGION N
 * A missing file is an empty state. */
static int state_load(const char *path, struct state *st)
{
    memset(st, 0, sizeof(*st));
    st->path = path;
    uint8_t *buf = NULL;
    size_t len = 0;
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT)
        return KMSCTL_EXIT_OK;
    int ret = read_file(path, TEXT_FILE_MAX, &buf, &len);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    ret = KMSCTL_EXIT_LOCAL;
    if (memchr(buf, '\0', len) != NULL) {
        fprintf(stderr, "kmsctl: %s: not a verify state file\n", path);
        goto done;
    }
    char *save = NULL, *line;
    int lineno = 0, magic = 0;
    for (line = strtok_r((char *)buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *tok[8], *ts = NULL;
        int n = 0;
        for (char *t = strtok_r(line, " \t\r", &ts); t && n < 8; t = strtok_r(NULL, " \t\r", &ts))
            tok[n++] = t;
        if (!magic) {
            if (n != 2 || strcmp(tok[0], "custos-audit-state") != 0 || strcmp(tok[1], "1") != 0) {
                fprintf(stderr, "kmsctl: %s: not a verify state file (want \"%s\" first)\n",
                        path, STATE_MAGIC);
                goto done;
            }
            magic = 1;
            continue;
        }
        if (n == 7 && strcmp(tok[0], "head") == 0) {
            struct vhead h;
            memset(&h, 0, sizeof(h));
            long sl = 0;
            if (!name_ok(tok[1], REGION_MAX) || !parse_u64(tok[2], UINT64_MAX, &h.size) ||
                !parse_i64(tok[3], &h.ts) || from_hex(tok[4], h.root, AUDIT_HASH_LEN) != 32 ||
                !key_id_ok(tok[5]) || (sl = from_hex(tok[6], h.sig, SIG_MAX)) <= 0) {
                fprintf(stderr, "kmsctl: %s: line %d: malformed head record\n", path, lineno);
                goto done;
            }
            snprintf(h.region, sizeof(h.region), "%s", tok[1]);
            snprintf(h.key_id, sizeof(h.key_id), "%s", tok[5]);
            h.sig_len = (size_t)sl;
            if (!state_add_head(st, &h))
                goto nomem;
        } else if (n == 3 && strcmp(tok[0], "verified") == 0) {
            uint64_t to = 0;
            if (!name_ok(tok[1], REGION_MAX) || !parse_u64(tok[2], UINT64_MAX, &to)) {
                fprintf(stderr, "kmsctl: %s: line %d: malformed verified record\n", path, lineno);
                goto done;
            }
            struct verified *v = state_verified(st, tok[1], 1);
            if (v == NULL)
                goto nomem;
            v->to = to;
        } else {
            fprintf(stderr, "kmsctl: %s: line %d: unknown record\n", path, lineno);
            goto done;
        }
    }
    if (!magic && len > 0) {
        fprintf(stderr, "kmsctl: %s: not a verify state file\n", path);
        goto done;
    }
    ret = KMSCTL_EXIT_OK;
    goto done;
nomem:
    fprintf(stderr, "kmsctl: out of memory\n");
done:
    free(buf);
    if (ret != KMSCTL_EXIT_OK)
        state_free(st);
    return ret;
}

static int state_save(const struct state *st)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL) {
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    fprintf(f, "# kmsctl audit verify state: signed tree heads verified so far, per region\n"
               "# (see docs/audit.md). Edit only to forget a region.\n" STATE_MAGIC "\n");
    for (size_t i = 0; i < st->n_heads; i++) {
        const struct vhead *h = &st->heads[i];
        char root[2 * AUDIT_HASH_LEN + 1], sig[2 * SIG_MAX + 1];
        to_hex(h->root, AUDIT_HASH_LEN, root);
        to_hex(h->sig, h->sig_len, sig);
        fprintf(f, "head %s %" PRIu64 " %" PRId64 " %s %s %s\n", h->region, h->size, h->ts, root,
                h->key_id, sig);
    }
    for (size_t i = 0; i < st->n_ver; i++)
        fprintf(f, "verified %s %" PRIu64 "\n", st->ver[i].region, st->ver[i].to);
    if (fclose(f) != 0) {
        free(text);
        fprintf(stderr, "kmsctl: out of memory\n");
        return KMSCTL_EXIT_LOCAL;
    }
    int ret = write_file(st->path, text, len, 0600);
    free(text);
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
    if (a->known_head) {
        Custos__V1__SignedTreeHead *h = NULL;
        if ((ret = load_head(a->known_head, &h)) != KMSCTL_EXIT_OK)
            return ret;
        int same = strcmp(h->region, a->region) == 0;
        req.known_tree_size = h->tree_size;
        custos__v1__signed_tree_head__free_unpacked(h, NULL);
        if (!same) {
            fprintf(stderr, "kmsctl audit export: %s is a head of another region\n",
                    a->known_head);
            return KMSCTL_EXIT_USAGE;
        }
    } else if (a->known_state) {
        struct state st;
        if ((ret = state_load(a->known_state, &st)) != KMSCTL_EXIT_OK)
            return ret;
        const struct vhead *h = state_latest(&st, a->region);
        const struct verified *v = state_verified(&st, a->region, 0);
        if (h) {
            req.known_tree_size = h->size;
            if (!a->have_start)
                req.start = v ? v->to : 0;
        } else {
            fprintf(stderr, "kmsctl audit export: %s keeps no head of region %s yet: "
                            "exporting without a consistency proof\n",
                    a->known_state, a->region);
        }
        state_free(&st);
    }
    ret = kmsctl_rpc_call_service(rpc, AUDIT_SERVICE, "ExportAuditLog", &req.base,
                                  &custos__v1__export_audit_log_response__descriptor,
                                  (ProtobufCMessage **)&resp, &body, &body_len);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    if (!head_shape_ok(resp->head)) {
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
    fprintf(f, ", head tree_size %" PRIu64 " at %s, ", h->tree_size, iso_ms(h->timestamp_ms, t));
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
    uint8_t sb[SIGNED_MAX];
    size_t n = audit_head_signed_bytes(h->region, h->tree_size, h->timestamp_ms,
                                       h->root_hash.data, sb);
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

/* ---- offline: verify -------------------------------------------------------------------- */

struct vkey {
    char region[REGION_MAX + 1];
    char key_id[KEY_ID_MAX + 1];
    int64_t not_before, not_after; /* ms; not_after 0: current */
    EVP_PKEY *pk;
    char *file;
};

struct keyring {
    struct vkey *k;
    size_t n, cap;
};

static void keyring_free(struct keyring *kr)
{
    for (size_t i = 0; i < kr->n; i++) {
        EVP_PKEY_free(kr->k[i].pk);
        free(kr->k[i].file);
    }
    free(kr->k);
}

static int is_p256(EVP_PKEY *pk)
{
    char group[64];
    size_t gl = 0;
    return EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
           EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                          &gl) == 1 &&
           strcmp(group, "prime256v1") == 0;
}

static int keyring_add(struct keyring *kr, const char *path, struct vkey *k)
{
    for (size_t i = 0; i < kr->n; i++) {
        struct vkey *o = &kr->k[i];
        if (strcmp(o->region, k->region) != 0 || strcmp(o->key_id, k->key_id) != 0)
            continue;
        if (EVP_PKEY_eq(o->pk, k->pk) != 1) {
            fprintf(stderr, "kmsctl: %s: key %s of region %s differs from the one in %s\n", path,
                    k->key_id, k->region, o->file);
            return KMSCTL_EXIT_LOCAL;
        }
        /* The same key twice (an old and a new copy): the newer file has
         * the end of its validity filled in. */
        if (k->not_after != 0 && (o->not_after == 0 || k->not_after < o->not_after))
            o->not_after = k->not_after;
        EVP_PKEY_free(k->pk);
        return KMSCTL_EXIT_OK;
    }
    if (kr->n == kr->cap) {
        size_t nc = kr->cap ? 2 * kr->cap : 8;
        struct vkey *nk = realloc(kr->k, nc * sizeof(*nk));
        if (nk == NULL) {
            EVP_PKEY_free(k->pk);
            fprintf(stderr, "kmsctl: out of memory\n");
            return KMSCTL_EXIT_LOCAL;
        }
        kr->k = nk;
        kr->cap = nc;
    }
    k->file = strdup(path);
    kr->k[kr->n++] = *k;
    return KMSCTL_EXIT_OK;
}

static const char *header_value(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    if (len > n + 1 && strncasecmp(line, name, n) == 0 && line[n] == ':') {
        const char *v = line + n + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        return v;
    }
    return NULL;
}

/* One file of keys as `audit keys` writes them: for each key, header lines
 * (region, key id, validity) and a PEM public key. */
static int load_key_file(struct keyring *kr, const char *path)
{
    uint8_t *buf = NULL;
    size_t len = 0, found = 0;
    int ret = read_file(path, TEXT_FILE_MAX, &buf, &len);
    if (ret != KMSCTL_EXIT_OK)
        return ret;
    const char *text = (const char *)buf, *p = text, *end = text + len;
    struct vkey k;
    int have = 0; /* bits: region, key id, not before, not after */
    memset(&k, 0, sizeof(k));
    ret = KMSCTL_EXIT_LOCAL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        char val[REGION_MAX + 2];
        const char *v;
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if ((v = header_value(p, ll, "Custos-Audit-Region")) ||
            (v = header_value(p, ll, "Custos-Audit-Key-Id")) ||
            (v = header_value(p, ll, "Custos-Audit-Not-Before-Ms")) ||
            (v = header_value(p, ll, "Custos-Audit-Not-After-Ms"))) {
            size_t vl = ll - (size_t)(v - p);
            if (vl >= sizeof(val)) {
                fprintf(stderr, "kmsctl: %s: header value too long\n", path);
                goto done;
            }
            memcpy(val, v, vl);
            val[vl] = '\0';
            int ok = 1;
            if (header_value(p, ll, "Custos-Audit-Region")) {
                ok = name_ok(val, REGION_MAX);
                snprintf(k.region, sizeof(k.region), "%.*s", REGION_MAX, val);
                have |= 1;
            } else if (header_value(p, ll, "Custos-Audit-Key-Id")) {
                ok = key_id_ok(val);
                snprintf(k.key_id, sizeof(k.key_id), "%.*s", KEY_ID_MAX, val);
                have |= 2;
            } else if (header_value(p, ll, "Custos-Audit-Not-Before-Ms")) {
                ok = parse_i64(val, &k.not_before);
                have |= 4;
            } else {
                ok = parse_i64(val, &k.not_after);
                have |= 8;
            }
            if (!ok) {
                fprintf(stderr, "kmsctl: %s: bad header line '%.*s'\n", path, (int)ll, p);
                goto done;
            }
        } else if (ll == 26 && memcmp(p, "-----BEGIN PUBLIC KEY-----", 26) == 0) {
            const char *stop = strstr(p, "-----END PUBLIC KEY-----");
            if (stop == NULL) {
                fprintf(stderr, "kmsctl: %s: unterminated PEM block\n", path);
                goto done;
            }
            stop += 24;
            if (have != 15) {
                fprintf(stderr,
                        "kmsctl: %s: a public key without its Custos-Audit-Region, -Key-Id,\n"
                        "  -Not-Before-Ms and -Not-After-Ms lines (write keys with\n"
                        "  `kmsctl audit keys --out-dir DIR`)\n",
                        path);
                goto done;
            }
            BIO *bio = BIO_new_mem_buf(p, (int)(stop - p));
            k.pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
            BIO_free(bio);
            ERR_clear_error();
            if (k.pk == NULL || !is_p256(k.pk)) {
                fprintf(stderr, "kmsctl: %s: key %s is not an ECDSA P-256 public key\n", path,
                        k.key_id);
                EVP_PKEY_free(k.pk);
                goto done;
            }
            if ((ret = keyring_add(kr, path, &k)) != KMSCTL_EXIT_OK)
                goto done;
            ret = KMSCTL_EXIT_LOCAL;
            found++;
            memset(&k, 0, sizeof(k));
            have = 0;
            nl = memchr(stop, '\n', (size_t)(end - stop));
        }
        p = nl ? nl + 1 : end;
    }
    if (found == 0) {
        fprintf(stderr, "kmsctl: %s: no audit public key in it\n", path);
        goto done;
    }
    ret = KMSCTL_EXIT_OK;
done:
    free(buf);
    return ret;
}

static int pem_name(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".pem") == 0;
}

static int load_keys(struct keyring *kr, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    if (!S_ISDIR(sb.st_mode))
        return load_key_file(kr, path);
    struct dirent **list = NULL;
    int n = scandir(path, &list, pem_name, alphasort);
    if (n < 0) {
        fprintf(stderr, "kmsctl: %s: %s\n", path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    int ret = n == 0 ? KMSCTL_EXIT_LOCAL : KMSCTL_EXIT_OK;
    if (n == 0)
        fprintf(stderr, "kmsctl: %s: no .pem files\n", path);
    for (int i = 0; i < n; i++) {
        char *f = NULL;
        if (ret == KMSCTL_EXIT_OK) {
            if (asprintf(&f, "%s/%s", path, list[i]->d_name) < 0) {
                f = NULL;
                ret = KMSCTL_EXIT_LOCAL;
            } else {
                ret = load_key_file(kr, f);
            }
        }
        free(f);
        free(list[i]);
    }
    free(list);
    return ret;
}

struct bundle {
    const char *path;
    Custos__V1__ExportAuditLogResponse *msg;
    struct vhead head;
    size_t n;              /* entries */
    uint64_t first, end;   /* they hold seqs [first, end) */
    audit_hash *leaf;      /* leaf hash of each entry */
    struct audit_tree *tree; /* the entries as a tree when first == 0 */
    int any_proof;
};

static void bundle_free(struct bundle *b)
{
    if (b->msg)
        custos__v1__export_audit_log_response__free_unpacked(b->msg, NULL);
    free(b->leaf);
    audit_tree_free(b->tree);
}

/* Print the first failure, in one line on stderr. */
__attribute__((format(printf, 2, 3))) static int fail(const char *where, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kmsctl audit verify: FAILED: ");
    if (where)
        fprintf(stderr, "%s: ", where);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_BAD;
}

static const struct vkey *find_key(const struct keyring *kr, const char *region, const char *id)
{
    for (size_t i = 0; i < kr->n; i++)
        if (strcmp(kr->k[i].region, region) == 0 && strcmp(kr->k[i].key_id, id) == 0)
            return &kr->k[i];
    return NULL;
}

static int sig_ok(EVP_PKEY *pk, const uint8_t *msg, size_t len, const uint8_t *sig, size_t sl)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, pk) == 1 &&
             EVP_DigestVerify(c, sig, sl, msg, len) == 1;
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    return ok;
}

/* The head: its shape, its key (known, of its region, valid at the head's
 * time) and its signature. */
static int check_head(struct bundle *b, const struct keyring *kr)
{
    const Custos__V1__SignedTreeHead *h = b->msg->head;
    char s1[96], s2[96], t[40], t1[40], t2[40];
    if (h == NULL)
        return fail(b->path, "no signed tree head");
    if (h->region == NULL || !name_ok(h->region, REGION_MAX))
        return fail(b->path, "head region \"%s\" is not a region name",
                    safe(h->region, s1, sizeof(s1)));
    if (h->root_hash.len != AUDIT_HASH_LEN)
        return fail(b->path, "head root hash is %zu bytes, not 32", h->root_hash.len);
    if (h->key_id == NULL || !key_id_ok(h->key_id))
        return fail(b->path, "head key id \"%s\" is malformed", safe(h->key_id, s1, sizeof(s1)));
    if (h->signature.len == 0 || h->signature.len > SIG_MAX)
        return fail(b->path, "head signature invalid (%zu bytes)", h->signature.len);
    const struct vkey *k = find_key(kr, h->region, h->key_id);
    if (k == NULL)
        return fail(b->path,
                    "head signed by unknown key %s of region %s (fetch the keys again: "
                    "kmsctl audit keys --out-dir DIR)",
                    h->key_id, h->region);
    uint8_t sb[SIGNED_MAX];
    size_t n = audit_head_signed_bytes(h->region, h->tree_size, h->timestamp_ms,
                                       h->root_hash.data, sb);
    if (!sig_ok(k->pk, sb, n, h->signature.data, h->signature.len))
        return fail(b->path, "head signature invalid (key %s, %s)", h->key_id,
                    safe(k->file, s2, sizeof(s2)));
    /* Signed, so the timestamp is the HSM's claim: it must fall within the
     * key's life. */
    if (h->timestamp_ms < k->not_before || (k->not_after != 0 && h->timestamp_ms >= k->not_after))
        return fail(b->path,
                    "head timestamp %s is outside the validity of key %s (%s to %s)",
                    iso_ms(h->timestamp_ms, t), h->key_id, iso_ms(k->not_before, t1),
                    k->not_after ? iso_ms(k->not_after, t2) : "now");
    struct vhead *v = &b->head;
    snprintf(v->region, sizeof(v->region), "%s", h->region);
    v->size = h->tree_size;
    v->ts = h->timestamp_ms;
    memcpy(v->root, h->root_hash.data, AUDIT_HASH_LEN);
    snprintf(v->key_id, sizeof(v->key_id), "%s", h->key_id);
    memcpy(v->sig, h->signature.data, h->signature.len);
    v->sig_len = h->signature.len;
    v->src = b->path;
    v->b = b;
    return KMSCTL_EXIT_OK;
}

static int proof_hashes(ProtobufCBinaryData *p, size_t n, audit_hash out[AUDIT_PROOF_MAX])
{
    if (n > AUDIT_PROOF_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].len != AUDIT_HASH_LEN)
            return 0;
        memcpy(out[i], p[i].data, AUDIT_HASH_LEN);
    }
    return 1;
}

/* Entries: consecutive seqs, each an AuditEvent of this seq and region, each
 * in the tree (by inclusion proof, or by the root when the bundle holds the
 * whole tree). */
static int check_entries(struct bundle *b)
{
    const Custos__V1__ExportAuditLogResponse *m = b->msg;
    const struct vhead *h = &b->head;
    char s1[96];
    b->n = m->n_entries;
    b->leaf = calloc(b->n ? b->n : 1, sizeof(audit_hash));
    if (b->leaf == NULL)
        return fail(b->path, "out of memory");
    for (size_t i = 0; i < b->n; i++)
        if (m->entries[i]->n_inclusion_proof > 0)
            b->any_proof = 1;
    b->first = b->n ? m->entries[0]->seq : 0;
    /* Whole tree: [0, tree_size) exactly, if the seqs turn out consecutive. */
    int whole = b->n == h->size && (b->n == 0 || b->first == 0);
    for (size_t i = 0; i < b->n; i++) {
        const Custos__V1__AuditEntry *e = m->entries[i];
        uint64_t seq = e->seq;
        if (i > 0) {
            uint64_t prev = m->entries[i - 1]->seq, want = prev + 1;
            if (seq <= prev)
                return fail(b->path, "entries out of order at index %zu (seq %" PRIu64
                                     " after seq %" PRIu64 ")",
                            i, seq, prev);
            if (seq != want) {
                for (size_t j = i + 1; j < b->n; j++)
                    if (m->entries[j]->seq == want)
                        return fail(b->path,
                                    "entries out of order at index %zu (seq %" PRIu64
                                    " where seq %" PRIu64 " belongs; it is at index %zu)",
                                    i, seq, want, j);
                return fail(b->path, "entry seq %" PRIu64 " missing (found %" PRIu64
                                     " at index %zu)",
                            want, seq, i);
            }
        }
        if (seq >= h->size)
            return fail(b->path,
                        "entry seq %" PRIu64 " (index %zu in the bundle) is beyond the head's "
                        "tree size %" PRIu64,
                        seq, i, h->size);
        Custos__V1__AuditEvent *ev =
            custos__v1__audit_event__unpack(NULL, e->event.len, e->event.data);
        if (ev == NULL)
            return fail(b->path, "entry seq %" PRIu64
                                 " (index %zu in the bundle): does not decode as an AuditEvent",
                        seq, i);
        uint64_t ev_seq = ev->seq;
        int region_ok = ev->region && strcmp(ev->region, h->region) == 0;
        safe(ev->region, s1, sizeof(s1));
        custos__v1__audit_event__free_unpacked(ev, NULL);
        if (ev_seq != seq)
            return fail(b->path,
                        "entry seq %" PRIu64 " (index %zu in the bundle): the event says seq %" PRIu64,
                        seq, i, ev_seq);
        if (!region_ok)
            return fail(b->path,
                        "entry seq %" PRIu64
                        " (index %zu in the bundle): an event of region \"%s\" in the log of %s",
                        seq, i, s1, h->region);
        audit_leaf_hash(e->event.data, e->event.len, b->leaf[i]);
        if (e->n_inclusion_proof > 0) {
            audit_hash p[AUDIT_PROOF_MAX];
            if (!proof_hashes(e->inclusion_proof, e->n_inclusion_proof, p))
                return fail(b->path,
                            "entry seq %" PRIu64 " (index %zu in the bundle): malformed inclusion "
                            "proof",
                            seq, i);
            if (!audit_verify_inclusion(seq, h->size, b->leaf[i], (const audit_hash *)p,
                                        e->n_inclusion_proof, h->root))
                return fail(b->path,
                            "entry seq %" PRIu64
                            " (index %zu in the bundle): inclusion proof does not verify",
                            seq, i);
        } else if (!whole && b->any_proof) {
            return fail(b->path,
                        "entry seq %" PRIu64 " (index %zu in the bundle): no inclusion proof, and "
                        "the bundle does not hold the whole tree",
                        seq, i);
        }
    }
    b->end = b->n ? m->entries[b->n - 1]->seq + 1 : b->first;
    if (!whole && !b->any_proof && b->n > 0) {
        /* A range without proofs: nothing ties it to the head. Say which
         * entries keep it from being the whole tree. */
        if (b->first != 0)
            return fail(b->path,
                        "entry seq 0 missing: the bundle starts at seq %" PRIu64
                        ", carries no inclusion proofs, and its head covers %" PRIu64 " entries",
                        b->first, h->size);
        return fail(b->path,
                    "entry seq %" PRIu64 " missing: the bundle ends at seq %" PRIu64
                    " but its head covers %" PRIu64 " entries (and it carries no inclusion proofs)",
                    b->end, b->end - 1, h->size);
    }
    if (b->n > 0 && b->first == 0) {
        if (audit_tree_new(&b->tree) != KMS_OK)
            return fail(b->path, "out of memory");
        for (size_t i = 0; i < b->n; i++)
            if (audit_tree_append(b->tree, b->leaf[i]) != KMS_OK)
                return fail(b->path, "out of memory");
    }
    if (whole) {
        audit_hash root;
        if (b->n == 0) {
            /* The empty tree's root is SHA-256 of nothing. */
            EVP_Digest("", 0, root, NULL, EVP_sha256(), NULL);
        } else if (audit_tree_root(b->tree, b->n, root) != KMS_OK) {
            return fail(b->path, "cannot compute the root");
        }
        if (memcmp(root, h->root, AUDIT_HASH_LEN) != 0) {
            char hex1[65], hex2[65];
            to_hex(root, AUDIT_HASH_LEN, hex1);
            to_hex(h->root, AUDIT_HASH_LEN, hex2);
            return fail(b->path,
                        "the root recomputed from entries 0..%" PRIu64
                        " (%s) does not match the signed head's root (%s)",
                        h->size ? h->size - 1 : 0, hex1, hex2);
        }
    }
    return KMSCTL_EXIT_OK;
}

/* Root of the first m entries of b, if b holds them. */
static int prefix_root(const struct bundle *b, uint64_t m, audit_hash out)
{
    if (b->tree == NULL || m == 0 || b->end < m)
        return 0;
    return audit_tree_root(b->tree, m, out) == KMS_OK;
}

struct verify {
    struct keyring kr;
    struct state st;
    int have_state;
    struct bundle *b;
    size_t nb;
    int partial;
};

/* The consistency proof of a bundle, from known_tree_size to its head,
 * checked against every verified head of that size (kept in the state or
 * in another bundle) and against the bundle's own entries when they hold
 * that prefix. */
static int check_consistency(struct verify *v, struct bundle *b)
{
    const Custos__V1__ExportAuditLogResponse *m = b->msg;
    uint64_t k = m->known_tree_size, n = b->head.size;
    if (k == 0) {
        if (m->n_consistency_proof > 0)
            return fail(b->path, "a consistency proof without known_tree_size");
        return KMSCTL_EXIT_OK;
    }
    if (k > n)
        return fail(b->path,
                    "known_tree_size %" PRIu64 " is larger than the head's tree size %" PRIu64, k,
                    n);
    audit_hash p[AUDIT_PROOF_MAX];
    if (!proof_hashes(m->consistency_proof, m->n_consistency_proof, p))
        return fail(b->path, "malformed consistency proof");
    size_t checked = 0;
    for (size_t i = 0; i < v->st.n_heads + v->nb; i++) {
        const struct vhead *o =
            i < v->st.n_heads ? &v->st.heads[i] : &v->b[i - v->st.n_heads].head;
        if (o->size != k || strcmp(o->region, b->head.region) != 0)
            continue;
        if (!audit_verify_consistency(k, n, o->root, b->head.root, (const audit_hash *)p,
                                      m->n_consistency_proof))
            return fail(b->path,
                        "consistency proof from tree_size %" PRIu64 " to %" PRIu64
                        " does not verify against the head of size %" PRIu64 " in %s",
                        k, n, k, o->src);
        checked++;
    }
    audit_hash own;
    if (prefix_root(b, k, own)) {
        if (!audit_verify_consistency(k, n, own, b->head.root, (const audit_hash *)p,
                                      m->n_consistency_proof))
            return fail(b->path,
                        "consistency proof from tree_size %" PRIu64 " to %" PRIu64
                        " does not verify against the bundle's own first %" PRIu64 " entries",
                        k, n, k);
        checked++;
    }
    if (checked == 0)
        return fail(b->path,
                    "consistency proof from tree_size %" PRIu64
                    " cannot be checked: no verified head of that size (give the bundle or the "
                    "--state that holds it)",
                    k);
    return KMSCTL_EXIT_OK;
}

struct leafref {
    uint64_t seq;
    size_t bundle, index;
};

static int leafref_cmp(const void *x, const void *y)
{
    const struct leafref *a = x, *b = y;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return a->bundle < b->bundle ? -1 : a->bundle > b->bundle;
}

/* Order of heads: by tree size, then time. */
static int vhead_order(const struct vhead *a, const struct vhead *b)
{
    if (a->size != b->size)
        return a->size < b->size ? -1 : 1;
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    return 0;
}

static int vhead_cmp(const void *x, const void *y)
{
    return vhead_order(*(const struct vhead *const *)x, *(const struct vhead *const *)y);
}

struct span {
    uint64_t first, end;
    const char *src;
};

static int span_cmp(const void *x, const void *y)
{
    const struct span *a = x, *b = y;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    return a->end < b->end ? -1 : a->end > b->end;
}

/* Is `later` (a bundle's head) proven to extend `earlier`? */
static int extends(const struct verify *v, const struct vhead *earlier, const struct vhead *later)
{
    if (later->size == earlier->size)
        return memcmp(later->root, earlier->root, AUDIT_HASH_LEN) == 0;
    /* Any bundle under a head equal to `later` may carry the proof. */
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = &v->b[i];
        if (b->head.size != later->size || memcmp(b->head.root, later->root, AUDIT_HASH_LEN) != 0)
            continue;
        /* Its consistency proof was checked against every head of the
         * known size, `earlier` included. */
        if (b->msg->known_tree_size == earlier->size)
            return 1;
        audit_hash r;
        if (prefix_root(b, earlier->size, r) && memcmp(r, earlier->root, AUDIT_HASH_LEN) == 0)
            return 1;
    }
    return 0;
}

/* Does some bundle under `later` hold the first earlier->size entries, and
 * do they give another root? (A proof of a fork, not just of no link.) */
static const struct bundle *prefix_differs(const struct verify *v, const struct vhead *earlier,
                                           const struct vhead *later)
{
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = &v->b[i];
        audit_hash r;
        if (b->head.size == later->size && memcmp(b->head.root, later->root, AUDIT_HASH_LEN) == 0 &&
            prefix_root(b, earlier->size, r) && memcmp(r, earlier->root, AUDIT_HASH_LEN) != 0)
            return b;
    }
    return NULL;
}

/* Everything about one region across bundles and the state. */
static int check_region(struct verify *v, const char *region, uint64_t *out_verified_to)
{
    char t1[40], t2[40];
    int ret = EXIT_BAD;
    struct leafref *refs = NULL;
    const struct vhead **heads = NULL;
    struct span *spans = NULL;
    size_t nrefs = 0, nheads = 0, nspans = 0;

    for (size_t i = 0; i < v->nb; i++)
        if (strcmp(v->b[i].head.region, region) == 0)
            nrefs += v->b[i].n, nheads++;
    refs = calloc(nrefs ? nrefs : 1, sizeof(*refs));
    heads = calloc(nheads + 1, sizeof(*heads));
    spans = calloc(nheads + 1, sizeof(*spans));
    if (!refs || !heads || !spans) {
        fail(NULL, "out of memory");
        goto done;
    }
    nrefs = nheads = 0;
    for (size_t i = 0; i < v->nb; i++) {
        const struct bundle *b = &v->b[i];
        if (strcmp(b->head.region, region) != 0)
            continue;
        heads[nheads++] = &b->head;
        if (b->n > 0)
            spans[nspans++] = (struct span){b->first, b->end, b->path};
        for (size_t j = 0; j < b->n; j++)
            refs[nrefs++] = (struct leafref){b->first + j, i, j};
    }

    /* 1. Two bundles never disagree about an entry. */
    qsort(refs, nrefs, sizeof(*refs), leafref_cmp);
    for (size_t i = 1; i < nrefs; i++) {
        const struct leafref *a = &refs[i - 1], *c = &refs[i];
        if (a->seq != c->seq ||
            memcmp(v->b[a->bundle].leaf[a->index], v->b[c->bundle].leaf[c->index],
                   AUDIT_HASH_LEN) == 0)
            continue;
        fail(v->b[c->bundle].path,
             "entry seq %" PRIu64 " (index %zu in the bundle) differs from the same entry in %s "
             "(spliced or forked exports)",
             c->seq, c->index, v->b[a->bundle].path);
        goto done;
    }

    /* 2. No head older or smaller than the newest kept one; none that
     * contradicts a kept head of its size. */
    const struct vhead *kept = v->have_state ? state_latest(&v->st, region) : NULL;
    for (size_t i = 0; i < nheads; i++) {
        const struct vhead *h = heads[i];
        if (kept && (h->size < kept->size || h->ts < kept->ts)) {
            fail(h->src,
                 "head of region %s (tree_size %" PRIu64 ", %s) is older or smaller than the "
                 "head kept in %s (tree_size %" PRIu64 ", %s): refusing an older, smaller head",
                 region, h->size, iso_ms(h->ts, t1), v->st.path, kept->size, iso_ms(kept->ts, t2));
            goto done;
        }
        for (size_t j = 0; j < v->st.n_heads; j++) {
            const struct vhead *o = &v->st.heads[j];
            if (strcmp(o->region, region) == 0 && o->size == h->size &&
                memcmp(o->root, h->root, AUDIT_HASH_LEN) != 0) {
                fail(h->src,
                     "head of tree_size %" PRIu64 " has another root than the head of the same "
                     "size kept in %s: the log forked",
                     h->size, v->st.path);
                goto done;
            }
        }
    }

    /* 3. The heads, smallest first, each extend the one before (starting at
     * the kept head), and time never goes backwards. */
    qsort(heads, nheads, sizeof(*heads), vhead_cmp);
    const struct vhead *prev = kept;
    for (size_t i = 0; i < nheads; i++) {
        const struct vhead *h = heads[i];
        if (prev == NULL) {
            prev = h;
            continue;
        }
        if (h->ts < prev->ts) {
            fail(h->src,
                 "head tree_size %" PRIu64 " at %s is dated before the smaller head (tree_size %" PRIu64
                 ", %s) in %s: time went backwards",
                 h->size, iso_ms(h->ts, t1), prev->size, iso_ms(prev->ts, t2), prev->src);
            goto done;
        }
        if (h->size == prev->size && memcmp(h->root, prev->root, AUDIT_HASH_LEN) != 0) {
            fail(h->src, "head of tree_size %" PRIu64 " has another root than the head of the "
                         "same size in %s: the log forked",
                 h->size, prev->src);
            goto done;
        }
        if (!extends(v, prev, h)) {
            const struct bundle *d = prefix_differs(v, prev, h);
            if (d)
                fail(d->path,
                     "its first %" PRIu64 " entries do not give the root of the head of tree_size %" PRIu64
                     " in %s: the log was rewritten or forked",
                     prev->size, prev->size, prev->src);
            else
                fail(h->src,
                     "nothing proves that this head (tree_size %" PRIu64
                     ") extends the head of tree_size %" PRIu64
                     " in %s (export it with --known-head or --known-state, or from seq 0)",
                     h->size, prev->size, prev->src);
            goto done;
        }
        prev = h;
    }

    /* 4. Completeness: from 0 (or where the state has verified) to the
     * newest head, no entry missing. */
    const struct vhead *top = prev;
    const struct verified *ver = v->have_state ? state_verified(&v->st, region, 0) : NULL;
    uint64_t covered = ver ? ver->to : 0;
    qsort(spans, nspans, sizeof(*spans), span_cmp);
    for (size_t i = 0; i < nspans; i++) {
        if (spans[i].first > covered)
            break;
        if (spans[i].end > covered)
            covered = spans[i].end;
    }
    if (!v->partial && top && covered < top->size) {
        uint64_t next = top->size;
        for (size_t i = 0; i < nspans; i++)
            if (spans[i].first > covered && spans[i].first < next)
                next = spans[i].first;
        if (covered == 0 && nspans == 0)
            fail(top->src,
                 "entry seq 0 missing: the bundles of region %s hold no entries but the head "
                 "covers %" PRIu64 " (use --partial to verify heads alone)",
                 region, top->size);
        else if (covered == 0 && next < top->size)
            fail(spans[0].src,
                 "entry seq 0 missing: the bundles of region %s start at seq %" PRIu64
                 " (use --partial to verify a range)",
                 region, spans[0].first);
        else if (next < top->size)
            fail(NULL,
                 "region %s: entry seq %" PRIu64 " missing: no bundle holds seqs %" PRIu64
                 "..%" PRIu64 " (use --partial to verify a range)",
                 region, covered, covered, next - 1);
        else
            fail(top->src,
                 "entry seq %" PRIu64 " missing: the entries of region %s end at seq %" PRIu64
                 " but the head covers %" PRIu64
                 " entries (the tail is missing; use --partial to verify a range)",
                 covered, region, covered ? covered - 1 : 0, top->size);
        goto done;
    }
    *out_verified_to = covered;
    ret = KMSCTL_EXIT_OK;
done:
    free(refs);
    free(heads);
    free(spans);
    return ret;
}

static int do_verify(const struct args *a, char **files, size_t nfiles)
{
    struct verify v;
    memset(&v, 0, sizeof(v));
    v.partial = a->partial;
    int ret = KMSCTL_EXIT_OK;
    char t[40];

    for (size_t i = 0; i < a->n_keys && ret == KMSCTL_EXIT_OK; i++)
        ret = load_keys(&v.kr, a->keys[i]);
    if (ret == KMSCTL_EXIT_OK && a->state) {
        ret = state_load(a->state, &v.st);
        v.have_state = ret == KMSCTL_EXIT_OK;
    }
    if (ret != KMSCTL_EXIT_OK)
        goto done;
    v.b = calloc(nfiles, sizeof(*v.b));
    if (v.b == NULL) {
        ret = fail(NULL, "out of memory");
        goto done;
    }
    /* Pass 1: each bundle on its own. */
    for (size_t i = 0; i < nfiles; i++) {
        struct bundle *b = &v.b[v.nb++];
        uint8_t *raw = NULL;
        size_t len = 0;
        b->path = files[i];
        if ((ret = read_file(files[i], BUNDLE_FILE_MAX, &raw, &len)) != KMSCTL_EXIT_OK)
            goto done;
        b->msg = custos__v1__export_audit_log_response__unpack(NULL, len, raw);
        free(raw);
        if (b->msg == NULL) {
            ret = fail(b->path,
                       "not an ExportAuditLogResponse: truncated or damaged (%zu bytes)", len);
            goto done;
        }
        if ((ret = check_head(b, &v.kr)) != KMSCTL_EXIT_OK ||
            (ret = check_entries(b)) != KMSCTL_EXIT_OK)
            goto done;
    }
    /* Pass 2: consistency proofs, against every head now verified. */
    for (size_t i = 0; i < v.nb; i++)
        if ((ret = check_consistency(&v, &v.b[i])) != KMSCTL_EXIT_OK)
            goto done;
    /* Pass 3: per region, the bundles together and against the state. */
    for (size_t i = 0; i < v.nb; i++) {
        const char *region = v.b[i].head.region;
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(v.b[j].head.region, region) == 0;
        if (seen)
            continue;
        uint64_t to = 0;
        if ((ret = check_region(&v, region, &to)) != KMSCTL_EXIT_OK)
            goto done;
        const struct vhead *top = NULL;
        for (size_t j = 0; j < v.nb; j++)
            if (strcmp(v.b[j].head.region, region) == 0 &&
                (top == NULL || vhead_order(&v.b[j].head, top) > 0))
                top = &v.b[j].head;
        printf("region %s: newest head tree_size %" PRIu64 " at %s; ", region, top->size,
               iso_ms(top->ts, t));
        if (to > 0)
            printf("entries 0..%" PRIu64 " verified with nothing missing\n", to - 1);
        else
            printf("no entries from seq 0 verified\n");
        if (v.have_state) {
            for (size_t j = 0; j < v.nb; j++)
                if (strcmp(v.b[j].head.region, region) == 0 && !state_add_head(&v.st, &v.b[j].head)) {
                    ret = fail(NULL, "out of memory");
                    goto done;
                }
            struct verified *ver = state_verified(&v.st, region, 1);
            if (ver == NULL) {
                ret = fail(NULL, "out of memory");
                goto done;
            }
            if (to > ver->to)
                ver->to = to;
        }
    }
    for (size_t i = 0; i < v.nb; i++) {
        const struct bundle *b = &v.b[i];
        printf("%s: region %s, head tree_size %" PRIu64 " at %s signed by key %s; ", b->path,
               b->head.region, b->head.size, iso_ms(b->head.ts, t), b->head.key_id);
        if (b->n)
            printf("entries %" PRIu64 "..%" PRIu64 " (%zu) %s", b->first, b->end - 1, b->n,
                   b->tree && b->n == b->head.size ? "give the root"
                                                   : "each proven included");
        else
            printf("no entries");
        if (b->msg->known_tree_size)
            printf("; consistent with tree_size %" PRIu64, b->msg->known_tree_size);
        putchar('\n');
    }
    if (v.have_state && (ret = state_save(&v.st)) != KMSCTL_EXIT_OK)
        goto done;
    printf("OK: %zu bundle%s verified%s%s\n", v.nb, v.nb == 1 ? "" : "s",
           v.have_state ? "; state kept in " : "", v.have_state ? a->state : "");
done:
    for (size_t i = 0; i < v.nb; i++)
        bundle_free(&v.b[i]);
    free(v.b);
    keyring_free(&v.kr);
    state_free(&v.st);
    return ret;
}

/* ---- main ------------------------------------------------------------------------------ */

int kmsctl_audit_main(int argc, char **argv)
{
    static const struct option opts[] = {
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
    struct kmsctl_conn conn;
    struct args a;
    unsigned seen = 0;
    int c, bad_opt = 0, help = 0;
    uint64_t v64 = 0;

    memset(&a, 0, sizeof(a));
    kmsctl_conn_init(&conn);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (kmsctl_conn_option(&conn, c, optarg))
            continue;
        switch (c) {
        case O_REGION:
            a.region = optarg;
            break;
        case O_OUT:
            a.out = optarg;
            break;
        case O_JSON:
            a.json = 1;
            break;
        case O_OUT_DIR:
            a.out_dir = optarg;
            break;
        case O_START:
            if (!parse_u64(optarg, UINT64_MAX, &a.start)) {
                fprintf(stderr, "kmsctl audit: --start must be a seq (0 or more)\n");
                return KMSCTL_EXIT_USAGE;
            }
            a.have_start = 1;
            break;
        case O_COUNT:
            if (!parse_u64(optarg, EXPORT_MAX, &v64) || v64 == 0) {
                fprintf(stderr, "kmsctl audit: --count must be 1..%d\n", EXPORT_MAX);
                return KMSCTL_EXIT_USAGE;
            }
            a.count = (uint32_t)v64;
            break;
        case O_PROOFS:
            a.proofs = 1;
            break;
        case O_KNOWN_HEAD:
            a.known_head = optarg;
            break;
        case O_KNOWN_STATE:
            a.known_state = optarg;
            break;
        case O_HEAD:
            a.head = optarg;
            break;
        case O_OUT_BIN:
            a.out_bin = optarg;
            break;
        case O_OUT_SIG:
            a.out_sig = optarg;
            break;
        case O_KEYS:
            if (a.n_keys == sizeof(a.keys) / sizeof(a.keys[0])) {
                fprintf(stderr, "kmsctl audit: too many --keys\n");
                return KMSCTL_EXIT_USAGE;
            }
            a.keys[a.n_keys++] = optarg;
            break;
        case O_STATE:
            a.state = optarg;
            break;
        case O_PARTIAL:
            a.partial = 1;
            break;
        case 'h':
            help = 1;
            continue;
        default:
            bad_opt = 1;
            continue;
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
    if (!is_verify && optind < argc) {
        fprintf(stderr, "kmsctl audit %s: unexpected argument '%s'\n", name, argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    const char *missing = NULL;
    if ((strcmp(name, "head") == 0 || strcmp(name, "export") == 0) && !a.region)
        missing = "--region";
    else if (strcmp(name, "export") == 0 && !a.out)
        missing = "--out";
    else if (strcmp(name, "sth-bytes") == 0 && !a.head)
        missing = "--head";
    else if (strcmp(name, "sth-bytes") == 0 && !a.out_bin && !a.out_sig)
        missing = "--out-bin or --out-sig";
    else if (is_verify && a.n_keys == 0)
        missing = "--keys";
    else if (is_verify && optind >= argc)
        missing = "a BUNDLE";
    if (missing) {
        fprintf(stderr, "kmsctl audit %s: %s is required\n", name, missing);
        verb_usage(stderr, a.verb);
        return KMSCTL_EXIT_USAGE;
    }
    if ((a.region && !name_ok(a.region, REGION_MAX))) {
        fprintf(stderr, "kmsctl audit %s: --region: not a region name\n", name);
        return KMSCTL_EXIT_USAGE;
    }
    if (a.known_head && a.known_state) {
        fprintf(stderr, "kmsctl audit export: --known-head and --known-state exclude each other\n");
        return KMSCTL_EXIT_USAGE;
    }
    if (a.out && strcmp(a.out, "-") == 0 && a.json) {
        fprintf(stderr, "kmsctl audit head: --out - and --json both want stdout\n");
        return KMSCTL_EXIT_USAGE;
    }

    int ret;
    if (is_verify) {
        ret = do_verify(&a, argv + optind, (size_t)(argc - optind));
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
