/*
 * kmsctl_audit.c - `kmsctl audit <verb>`: the command line of the auditor's
 * side of the audit log: the verbs and their help, option parsing, and
 * dispatch to the online commands (head, keys, export: kmsctl_audit_online.c)
 * or the offline ones (sth-bytes, events, verify: kmsctl_audit_offline.c).
 *
 * What is checked lives in audit_verify.h, the trusted keys and their file
 * format in audit_keyset.h, the verify state file in audit_state.h. A failed
 * check is exit 1 with "kmsctl audit verify: FAILED: WHERE: WHAT", a file
 * that cannot be read or written exit 4 with "kmsctl: DETAIL".
 *
 * Files written (heads, bundles, key PEMs, the state file) are written to a
 * temporary name, synced and renamed (audit_file_write), so a crash never
 * leaves half of one behind.
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
#include "kmsctl_audit_offline.h"
#include "kmsctl_audit_online.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/audit.pb-c.h"

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
    O_PG,
    O_PG_PASSWORD,
    O_LAST = O_PG_PASSWORD,
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

#define PG_TEXT                                                                            \
    "  --pg CONNINFO             read region R's log straight from its PostgreSQL\n"       \
    "                            database (libpq keywords or a postgresql:// URL, no\n"     \
    "                            password) instead of asking kmsd: for a fleet whose\n"     \
    "                            log is in PostgreSQL (docs/audit.md); the same output\n"  \
    "  --pg-password SOURCE      the database password: file:/path (or a path) or\n"      \
    "                            env:NAME, never on the command line\n"

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
    {"keys", F(O_REGION) | F(O_OUT_DIR) | F(O_JSON) | F(O_PG) | F(O_PG_PASSWORD), 0, 1,
     "keys [--region R] [--out-dir DIR] [--json] [--pg CONNINFO [--pg-password SOURCE]]",
     "Fetch the audit public keys (every region served, or R) with their validity.\n"
     "Without --out-dir, print each key as a PEM block preceded by Custos-Audit-*\n"
     "header lines (region, key id, validity), the form `verify --keys` reads and\n"
     "`openssl` accepts as it is.\n"
     "  --region R                only region R's keys\n"
     "  --out-dir DIR             write DIR/<region>-<key_id>.pem per key and list them\n"
     "  --json                    print a JSON array instead\n" PG_TEXT},
    {"export",
     F(O_REGION) | F(O_OUT) | F(O_START) | F(O_COUNT) | F(O_PROOFS) | F(O_KNOWN_HEAD) |
         F(O_KNOWN_STATE) | F(O_PG) | F(O_PG_PASSWORD),
     F(O_REGION) | F(O_OUT), 1,
     "export --region R --out BUNDLE [--start N] [--count M] [--proofs]\n"
     "                            [--known-head HEAD | --known-state STATE]\n"
     "                            [--pg CONNINFO [--pg-password SOURCE]]",
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
     PG_TEXT
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
    unsigned seen;              /* F() bits of the options given */
    struct kmsctl_audit_args v; /* their values */
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
    {"pg", required_argument, NULL, O_PG},
    {"pg-password", required_argument, NULL, O_PG_PASSWORD},
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


/* ---- main ------------------------------------------------------------------------------ */

/* One of this command's own options (c in O_REGION..O_LAST): record it,
 * or print why not and return 0. */
static int audit_option(struct args *a, int c, const char *arg)
{
    /* Where the value of each plain option goes. */
    const char **text[IX(O_LAST) + 1] = {
        [IX(O_REGION)] = &a->v.region,        [IX(O_OUT)] = &a->v.out,
        [IX(O_OUT_DIR)] = &a->v.out_dir,      [IX(O_KNOWN_HEAD)] = &a->v.known_head,
        [IX(O_KNOWN_STATE)] = &a->v.known_state, [IX(O_HEAD)] = &a->v.head,
        [IX(O_OUT_BIN)] = &a->v.out_bin,      [IX(O_OUT_SIG)] = &a->v.out_sig,
        [IX(O_STATE)] = &a->v.state,          [IX(O_PG)] = &a->v.pg,
        [IX(O_PG_PASSWORD)] = &a->v.pg_password,
    };
    int *flag[IX(O_LAST) + 1] = {
        [IX(O_JSON)] = &a->v.json, [IX(O_PROOFS)] = &a->v.proofs, [IX(O_PARTIAL)] = &a->v.partial,
    };
    uint64_t v64 = 0;
    if (text[IX(c)]) {
        *text[IX(c)] = arg;
    } else if (flag[IX(c)]) {
        *flag[IX(c)] = 1;
    } else if (c == O_START) {
        if (!audit_parse_u64(arg, UINT64_MAX, &a->v.start)) {
            fprintf(stderr, "kmsctl audit: --start must be a seq (0 or more)\n");
            return 0;
        }
        a->v.have_start = 1;
    } else if (c == O_COUNT) {
        if (!audit_parse_u64(arg, KMSCTL_AUDIT_EXPORT_MAX, &v64) || v64 == 0) {
            fprintf(stderr, "kmsctl audit: --count must be 1..%d\n", KMSCTL_AUDIT_EXPORT_MAX);
            return 0;
        }
        a->v.count = (uint32_t)v64;
    } else if (a->v.n_keys == sizeof(a->v.keys) / sizeof(a->v.keys[0])) { /* O_KEYS */
        fprintf(stderr, "kmsctl audit: too many --keys\n");
        return 0;
    } else {
        a->v.keys[a->v.n_keys++] = arg;
    }
    a->seen |= F(c);
    return 1;
}

/* The options, then the verb word. Returns -1 to go on, or the exit code
 * (help, usage error). */
static int audit_parse(int argc, char **argv, struct kmsctl_conn *conn, struct args *a)
{
    int c, bad_opt = 0, help = 0;
    kmsctl_conn_init(conn);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", audit_opts, NULL)) != -1) {
        if (kmsctl_conn_option(conn, c, optarg))
            continue;
        if (c < O_REGION || c > O_LAST) {
            help |= c == 'h';
            bad_opt |= c != 'h';
            continue;
        }
        if (!audit_option(a, c, optarg))
            return KMSCTL_EXIT_USAGE;
    }
    const char *name = optind < argc ? argv[optind++] : NULL;
    if (name && strcmp(name, "help") == 0) {
        audit_usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    for (size_t i = 0; name && i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(name, verbs[i].name) == 0)
            a->verb = &verbs[i];
    if (help) {
        if (a->verb)
            verb_usage(stdout, a->verb);
        else
            audit_usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    if (bad_opt || name == NULL) {
        audit_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    if (a->verb == NULL) {
        fprintf(stderr, "kmsctl audit: unknown command '%s'\n", name);
        audit_usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    return -1;
}

/* Checks that need the verb; n_files operands follow it. 0 after printing
 * why not. */
static int audit_check(const struct args *a, int n_files, char **files)
{
    const char *name = a->verb->name;
    unsigned extra = a->seen & ~a->verb->opts;
    if (extra) {
        fprintf(stderr, "kmsctl audit %s: %s does not apply\n", name,
                option_name(O_REGION + __builtin_ctz(extra)));
        return 0;
    }
    int takes_files = strcmp(name, "verify") == 0 || strcmp(name, "events") == 0;
    if (!takes_files && n_files > 0) {
        fprintf(stderr, "kmsctl audit %s: unexpected argument '%s'\n", name, files[0]);
        return 0;
    }
    unsigned lacking = a->verb->need & ~a->seen;
    const char *missing = NULL;
    if (lacking)
        missing = option_name(O_REGION + __builtin_ctz(lacking));
    else if (strcmp(name, "sth-bytes") == 0 && !a->v.out_bin && !a->v.out_sig)
        missing = "--out-bin or --out-sig";
    else if (takes_files && n_files <= 0)
        missing = "a BUNDLE";
    if (missing) {
        fprintf(stderr, "kmsctl audit %s: %s is required\n", name, missing);
        verb_usage(stderr, a->verb);
        return 0;
    }
    if ((a->v.region && !audit_region_ok(a->v.region))) {
        fprintf(stderr, "kmsctl audit %s: --region: not a region name\n", name);
        return 0;
    }
    if (a->v.pg_password && !a->v.pg) {
        fprintf(stderr, "kmsctl audit %s: --pg-password needs --pg\n", name);
        return 0;
    }
    if (a->v.known_head && a->v.known_state) {
        fprintf(stderr, "kmsctl audit %s: --known-head and --known-state exclude each other\n",
                name);
        return 0;
    }
    if (a->v.out && strcmp(a->v.out, "-") == 0 && a->v.json) {
        fprintf(stderr, "kmsctl audit head: --out - and --json both want stdout\n");
        return 0;
    }
    return 1;
}

int kmsctl_audit_main(int argc, char **argv)
{
    struct kmsctl_conn conn;
    struct args a;
    memset(&a, 0, sizeof(a));
    int ret = audit_parse(argc, argv, &conn, &a);
    if (ret >= 0)
        return ret;
    char **files = argv + optind;
    size_t n_files = (size_t)(argc - optind);
    if (!audit_check(&a, argc - optind, files))
        return KMSCTL_EXIT_USAGE;
    const char *name = a.verb->name;
    if (strcmp(name, "verify") == 0)
        ret = kmsctl_audit_verify(a.v.keys, a.v.n_keys, a.v.state, a.v.partial, files, n_files);
    else if (strcmp(name, "events") == 0)
        ret = kmsctl_audit_events(files, n_files);
    else if (strcmp(name, "sth-bytes") == 0)
        ret = kmsctl_audit_sth_bytes(a.v.head, a.v.out_bin, a.v.out_sig);
    else
        return kmsctl_audit_online(&conn, name, &a.v);
    return kmsctl_flush_stdout(ret);
}
