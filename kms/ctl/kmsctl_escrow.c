/*
 * kmsctl_escrow.c - `kmsctl recovery <verb>` and `kmsctl officer sign`:
 * M-of-N recovery of escrowed keys, for compliance officers (and key
 * admins, who may list and show recoveries of their keys).
 *
 * An officer's private key never leaves the officer's machine: `approve`
 * fetches the recovery's canonical statement, shows it, signs it locally
 * (ECDSA P-256, SHA-256, DER) and sends only the signature. `officer sign`
 * does the signing alone, offline, for officers who keep their key on a
 * machine that never talks to kmsd; `approve --signature FILE` then sends
 * the result. docs/escrow-recovery.md walks through both.
 */
#include "kmsctl_escrow.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit_verify_util.h"
#include "kmsctl_print.h"
#include "kmsctl_rpc.h"
#include "proto/escrow.pb-c.h"

#define SERVICE "custos.v1.EscrowService"
#define MAX_STATEMENT 4096
#define MAX_SIG 80

enum {
    O_MODE = 0x2000,
    O_JUSTIFICATION,
    O_TEXT,
    O_CASE,
    O_VERSIONS,
    O_STATE,
    O_RECIPIENT,
    O_OFFICER_KEY,
    O_SIGNATURE,
    O_OUT_DIR,
    O_REASON,
    O_KEY_ID,
    O_OPEN,
    O_STATEMENT_OUT,
    O_IN,
    O_OUT,
    O_JSON_UNUSED,
};

struct args {
    const char *verb, *id, *mode, *justification, *text, *case_ref, *versions, *state,
        *recipient, *officer_key, *signature, *out_dir, *reason, *key_id, *statement_out, *in,
        *out;
    int open_only;
    struct kmsctl_common o; /* connection, -q */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl recovery <command> [options]\n"
            "       kmsctl officer sign --officer-key PEM --in STATEMENT [--out SIG]\n"
            "\n"
            "M-of-N recovery of escrowed keys (role officer; list and show also key-admin).\n"
            "\n"
            "commands:\n"
            "  request KEY_ID --mode restore|export --justification CODE --text TEXT\n"
            "          --case REF [--versions 1,2] [--state disabled|enabled]\n"
            "          [--recipient ID]    ask for a recovery; CODE is one of\n"
            "                              accidental-deletion, lawful-request,\n"
            "                              regulatory-examination, disaster-recovery,\n"
            "                              tenant-exit; export needs a recipient the\n"
            "                              tenant's policy registers for the key's region\n"
            "  show ID [--statement-out F] show a recovery; write its statement to F\n"
            "  list [--key-id K] [--open]  the tenant's recoveries, newest first\n"
            "  approve ID --officer-key PEM\n"
            "                              show the statement, sign it with your key, send\n"
            "  approve ID --signature F    send a signature made offline (officer sign)\n"
            "  execute ID [--out-dir D]    execute an approved recovery; export writes\n"
            "                              D/<key>-v<N>.wrapped (default .) for the recipient\n"
            "  cancel ID [--reason TEXT]   cancel an open recovery\n"
            "\n"
            "  officer sign --officer-key PEM --in F [--out SIG]\n"
            "                              sign a statement offline (DER, default stdout)\n"
            "\n"
            "options:\n"
            "  -q, --quiet                 request: print only the recovery id\n"
            "  -h, --help                  this text\n"
            "\n" KMSCTL_CONN_USAGE "\n" KMSCTL_EXIT_USAGE_TEXT);
}

/* ---- local files ----------------------------------------------------------------- */

/* The audit verifier's file helpers: bounded reads, and writes that are
 * atomic (temporary file, rename) and durable. */
static int read_file(const char *path, size_t max, uint8_t **out, size_t *out_len)
{
    if (audit_file_read(path, max, out, out_len) == KMS_OK)
        return KMSCTL_EXIT_OK;
    fprintf(stderr, "kmsctl: %s\n", kms_err_detail());
    return KMSCTL_EXIT_LOCAL;
}

static int write_file(const char *path, const uint8_t *data, size_t len)
{
    if (audit_file_write(path, data, len, 0600) == KMS_OK)
        return KMSCTL_EXIT_OK;
    fprintf(stderr, "kmsctl: %s\n", kms_err_detail());
    return KMSCTL_EXIT_LOCAL;
}

/* ECDSA P-256 / SHA-256 over the statement with the officer's PEM key; the
 * key is read, used and freed here and goes nowhere else. */
static int sign_statement(const char *key_path, const uint8_t *stmt, size_t len,
                          uint8_t sig[MAX_SIG], size_t *sig_len)
{
    FILE *f = fopen(key_path, "r");
    if (f == NULL) {
        fprintf(stderr, "kmsctl: %s: %s\n", key_path, strerror(errno));
        return KMSCTL_EXIT_LOCAL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0) {
        fprintf(stderr, "kmsctl: %s: a private key must not be readable by group or others "
                        "(chmod 600)\n",
                key_path);
        fclose(f);
        return KMSCTL_EXIT_LOCAL;
    }
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    int rc = KMSCTL_EXIT_LOCAL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t n = MAX_SIG;
    char group[32] = "";
    size_t glen = 0;
    if (pk == NULL || !EVP_PKEY_is_a(pk, "EC") ||
        EVP_PKEY_get_group_name(pk, group, sizeof(group), &glen) != 1 ||
        (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
        fprintf(stderr, "kmsctl: %s: not an ECDSA P-256 private key (PEM)\n", key_path);
    } else if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pk) != 1 ||
               EVP_DigestSign(ctx, sig, &n, stmt, len) != 1) {
        fprintf(stderr, "kmsctl: signing failed\n");
    } else {
        *sig_len = n;
        rc = KMSCTL_EXIT_OK;
    }
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    ERR_clear_error();
    return rc;
}

/* ---- printing ----------------------------------------------------------------------- */

/* ---- verbs ---------------------------------------------------------------------------- */

static int get(struct kmsctl_rpc *rpc, const char *id, Custos__V1__GetRecoveryResponse **out)
{
    Custos__V1__GetRecoveryRequest req = CUSTOS__V1__GET_RECOVERY_REQUEST__INIT;
    req.recovery_id = (char *)id;
    return kmsctl_rpc_call_service(rpc, SERVICE, "GetRecovery", &req.base,
                                   &custos__v1__get_recovery_response__descriptor,
                                   (ProtobufCMessage **)out, NULL, NULL);
}

static int parse_mode(const char *s, Custos__V1__RecoveryMode *out)
{
    if (s && strcmp(s, "restore") == 0)
        *out = CUSTOS__V1__RECOVERY_MODE__RESTORE;
    else if (s && strcmp(s, "export") == 0)
        *out = CUSTOS__V1__RECOVERY_MODE__EXPORT_WRAPPED;
    else
        return 0;
    return 1;
}

static int parse_justification(const char *s, Custos__V1__Justification *out)
{
    static const char *const names[] = {NULL, "accidental-deletion", "lawful-request",
                                        "regulatory-examination", "disaster-recovery",
                                        "tenant-exit"};
    for (int i = 1; s && i < 6; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (Custos__V1__Justification)i;
            return 1;
        }
    return 0;
}

static int parse_versions(const char *s, uint32_t *v, size_t max, size_t *n)
{
    *n = 0;
    while (s && *s) {
        char *end = NULL;
        errno = 0;
        unsigned long x = strtoul(s, &end, 10);
        if (errno || end == s || x < 1 || x > UINT32_MAX || *n >= max ||
            (*end != ',' && *end != '\0'))
            return 0;
        v[(*n)++] = (uint32_t)x;
        s = *end ? end + 1 : end;
    }
    return 1;
}

static int do_request(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__RequestRecoveryRequest req = CUSTOS__V1__REQUEST_RECOVERY_REQUEST__INIT;
    uint32_t versions[64];
    size_t nv = 0;
    if (!parse_mode(a->mode, &req.mode) || !parse_justification(a->justification, &req.justification) ||
        !a->text || !a->case_ref || !parse_versions(a->versions, versions, 64, &nv) ||
        (a->state && strcmp(a->state, "enabled") != 0 && strcmp(a->state, "disabled") != 0)) {
        fprintf(stderr, "kmsctl recovery request: needs KEY_ID, --mode restore|export, "
                        "--justification CODE, --text, --case (see --help)\n");
        return KMSCTL_EXIT_USAGE;
    }
    req.key_id = (char *)a->id;
    req.justification_text = (char *)a->text;
    req.case_reference = (char *)a->case_ref;
    req.versions = versions;
    req.n_versions = nv;
    req.restore_state = a->state && strcmp(a->state, "enabled") == 0
                            ? CUSTOS__V1__RESTORE_STATE__RESTORE_ENABLED
                            : CUSTOS__V1__RESTORE_STATE__RESTORE_DISABLED;
    req.recipient = (char *)(a->recipient ? a->recipient : "");
    Custos__V1__RequestRecoveryResponse *resp = NULL;
    int rc = kmsctl_rpc_call_service(rpc, SERVICE, "RequestRecovery", &req.base,
                                     &custos__v1__request_recovery_response__descriptor,
                                     (ProtobufCMessage **)&resp, NULL, NULL);
    if (rc == KMSCTL_EXIT_OK && resp->recovery) {
        if (a->o.quiet) {
            kmsctl_print_safe(stdout, resp->recovery->recovery_id);
            putchar('\n');
        } else {
            kmsctl_print_recovery(resp->recovery, 1);
        }
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

static int do_show(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__GetRecoveryResponse *resp = NULL;
    int rc = get(rpc, a->id, &resp);
    if (rc == KMSCTL_EXIT_OK && resp->recovery) {
        kmsctl_print_recovery(resp->recovery, a->statement_out == NULL);
        if (a->statement_out)
            rc = write_file(a->statement_out, (const uint8_t *)resp->recovery->statement,
                            strlen(resp->recovery->statement));
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

static int do_list(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__ListRecoveriesRequest req = CUSTOS__V1__LIST_RECOVERIES_REQUEST__INIT;
    req.key_id = (char *)(a->key_id ? a->key_id : "");
    req.open_only = a->open_only;
    Custos__V1__ListRecoveriesResponse *resp = NULL;
    int rc = kmsctl_rpc_call_service(rpc, SERVICE, "ListRecoveries", &req.base,
                                     &custos__v1__list_recoveries_response__descriptor,
                                     (ProtobufCMessage **)&resp, NULL, NULL);
    for (size_t i = 0; rc == KMSCTL_EXIT_OK && i < resp->n_recoveries; i++) {
        const Custos__V1__Recovery *r = resp->recoveries[i];
        char t[32];
        kmsctl_print_safe(stdout, r->recovery_id);
        printf("  %-16s %-14s ", kmsctl_enum_name(&custos__v1__recovery_state__descriptor, (int)r->state),
               kmsctl_enum_name(&custos__v1__recovery_mode__descriptor, (int)r->mode));
        kmsctl_print_safe(stdout, r->key_id);
        printf("  %s\n", kmsctl_when(r->created_at, t));
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

static int do_approve(struct kmsctl_rpc *rpc, const struct args *a)
{
    uint8_t sig[MAX_SIG];
    size_t sig_len = 0;
    int rc = KMSCTL_EXIT_OK;
    if ((a->officer_key == NULL) == (a->signature == NULL)) {
        fprintf(stderr, "kmsctl recovery approve: give exactly one of --officer-key, --signature\n");
        return KMSCTL_EXIT_USAGE;
    }
    if (a->signature) {
        uint8_t *buf = NULL;
        rc = read_file(a->signature, MAX_SIG, &buf, &sig_len);
        if (rc != KMSCTL_EXIT_OK)
            return rc;
        memcpy(sig, buf, sig_len);
        free(buf);
    } else {
        Custos__V1__GetRecoveryResponse *g = NULL;
        rc = get(rpc, a->id, &g);
        if (rc == KMSCTL_EXIT_OK && g->recovery) {
            /* The officer sees what they approve before it is signed. */
            fprintf(stderr, "signing this statement:\n");
            kmsctl_print_lines(stderr, g->recovery->statement);
            rc = sign_statement(a->officer_key, (const uint8_t *)g->recovery->statement,
                                strlen(g->recovery->statement), sig, &sig_len);
        }
        if (g)
            protobuf_c_message_free_unpacked(&g->base, NULL);
        if (rc != KMSCTL_EXIT_OK)
            return rc;
    }
    Custos__V1__ApproveRecoveryRequest req = CUSTOS__V1__APPROVE_RECOVERY_REQUEST__INIT;
    req.recovery_id = (char *)a->id;
    req.signature.data = sig;
    req.signature.len = sig_len;
    Custos__V1__ApproveRecoveryResponse *resp = NULL;
    rc = kmsctl_rpc_call_service(rpc, SERVICE, "ApproveRecovery", &req.base,
                                 &custos__v1__approve_recovery_response__descriptor,
                                 (ProtobufCMessage **)&resp, NULL, NULL);
    if (rc == KMSCTL_EXIT_OK && resp->recovery) {
        if (!resp->counted)
            printf("(you had already approved: counted once)\n");
        kmsctl_print_recovery(resp->recovery, 0);
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

static int do_execute(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__ExecuteRecoveryRequest req = CUSTOS__V1__EXECUTE_RECOVERY_REQUEST__INIT;
    req.recovery_id = (char *)a->id;
    Custos__V1__ExecuteRecoveryResponse *resp = NULL;
    int rc = kmsctl_rpc_call_service(rpc, SERVICE, "ExecuteRecovery", &req.base,
                                     &custos__v1__execute_recovery_response__descriptor,
                                     (ProtobufCMessage **)&resp, NULL, NULL);
    if (rc == KMSCTL_EXIT_OK && resp->recovery) {
        kmsctl_print_recovery(resp->recovery, 0);
        if (resp->key_state && *resp->key_state)
            printf("key is %s again, current version %" PRIu32 "\n", resp->key_state,
                   resp->current_version);
        for (size_t i = 0; i < resp->n_wrapped && rc == KMSCTL_EXIT_OK; i++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s-v%" PRIu32 ".wrapped",
                     a->out_dir ? a->out_dir : ".", resp->recovery->key_id,
                     resp->wrapped[i]->version);
            rc = write_file(path, resp->wrapped[i]->wrapped_key.data,
                            resp->wrapped[i]->wrapped_key.len);
            if (rc == KMSCTL_EXIT_OK) {
                printf("wrote %s (", path);
                kmsctl_print_safe(stdout, resp->wrapped[i]->algorithm);
                printf(")\n");
            }
        }
    }
    if (resp) {
        for (size_t i = 0; i < resp->n_wrapped; i++)
            OPENSSL_cleanse(resp->wrapped[i]->wrapped_key.data, resp->wrapped[i]->wrapped_key.len);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return rc;
}

static int do_cancel(struct kmsctl_rpc *rpc, const struct args *a)
{
    Custos__V1__CancelRecoveryRequest req = CUSTOS__V1__CANCEL_RECOVERY_REQUEST__INIT;
    req.recovery_id = (char *)a->id;
    req.reason = (char *)(a->reason ? a->reason : "");
    Custos__V1__CancelRecoveryResponse *resp = NULL;
    int rc = kmsctl_rpc_call_service(rpc, SERVICE, "CancelRecovery", &req.base,
                                     &custos__v1__cancel_recovery_response__descriptor,
                                     (ProtobufCMessage **)&resp, NULL, NULL);
    if (rc == KMSCTL_EXIT_OK && resp->recovery)
        kmsctl_print_recovery(resp->recovery, 0);
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

/* ---- entry points --------------------------------------------------------------------- */

static int parse(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        KMSCTL_CONN_LONGOPTS,
        {"mode", required_argument, NULL, O_MODE},
        {"justification", required_argument, NULL, O_JUSTIFICATION},
        {"text", required_argument, NULL, O_TEXT},
        {"case", required_argument, NULL, O_CASE},
        {"versions", required_argument, NULL, O_VERSIONS},
        {"state", required_argument, NULL, O_STATE},
        {"recipient", required_argument, NULL, O_RECIPIENT},
        {"officer-key", required_argument, NULL, O_OFFICER_KEY},
        {"signature", required_argument, NULL, O_SIGNATURE},
        {"out-dir", required_argument, NULL, O_OUT_DIR},
        {"reason", required_argument, NULL, O_REASON},
        {"key-id", required_argument, NULL, O_KEY_ID},
        {"open", no_argument, NULL, O_OPEN},
        {"statement-out", required_argument, NULL, O_STATEMENT_OUT},
        {"in", required_argument, NULL, O_IN},
        {"out", required_argument, NULL, O_OUT},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char **slot[] = {
        [O_MODE - O_MODE] = &a->mode,
        [O_JUSTIFICATION - O_MODE] = &a->justification,
        [O_TEXT - O_MODE] = &a->text,
        [O_CASE - O_MODE] = &a->case_ref,
        [O_VERSIONS - O_MODE] = &a->versions,
        [O_STATE - O_MODE] = &a->state,
        [O_RECIPIENT - O_MODE] = &a->recipient,
        [O_OFFICER_KEY - O_MODE] = &a->officer_key,
        [O_SIGNATURE - O_MODE] = &a->signature,
        [O_OUT_DIR - O_MODE] = &a->out_dir,
        [O_REASON - O_MODE] = &a->reason,
        [O_KEY_ID - O_MODE] = &a->key_id,
        [O_OPEN - O_MODE] = NULL,
        [O_STATEMENT_OUT - O_MODE] = &a->statement_out,
        [O_IN - O_MODE] = &a->in,
        [O_OUT - O_MODE] = &a->out,
    };
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        if (kmsctl_common_option(&a->o, c, optarg))
            continue;
        if (c == 'h') {
            usage(stdout);
            return -1;
        }
        if (c == O_OPEN) {
            a->open_only = 1;
        } else if (c >= O_MODE && c <= O_OUT && slot[c - O_MODE]) {
            *slot[c - O_MODE] = optarg;
        } else {
            usage(stderr);
            return KMSCTL_EXIT_USAGE;
        }
    }
    if (optind < argc)
        a->id = argv[optind++];
    if (optind != argc) {
        fprintf(stderr, "kmsctl: unexpected argument '%s'\n", argv[optind]);
        return KMSCTL_EXIT_USAGE;
    }
    return KMSCTL_EXIT_OK;
}

int kmsctl_officer_main(int argc, char **argv)
{
    struct args a = {0};
    kmsctl_common_init(&a.o);
    if (argc < 2 || strcmp(argv[1], "sign") != 0) {
        usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : KMSCTL_EXIT_USAGE;
    }
    int rc = parse(argc, argv, &a);
    if (rc != KMSCTL_EXIT_OK)
        return rc < 0 ? 0 : rc;
    if (!a.officer_key || !a.in || a.id) {
        fprintf(stderr, "kmsctl officer sign: --officer-key PEM and --in STATEMENT are required\n");
        return KMSCTL_EXIT_USAGE;
    }
    uint8_t *stmt = NULL, sig[MAX_SIG];
    size_t len = 0, sig_len = 0;
    rc = read_file(a.in, MAX_STATEMENT, &stmt, &len);
    if (rc == KMSCTL_EXIT_OK)
        rc = sign_statement(a.officer_key, stmt, len, sig, &sig_len);
    free(stmt);
    if (rc != KMSCTL_EXIT_OK)
        return rc;
    if (a.out)
        return write_file(a.out, sig, sig_len);
    if (fwrite(sig, 1, sig_len, stdout) != sig_len || fflush(stdout) != 0) {
        fprintf(stderr, "kmsctl officer sign: cannot write the signature\n");
        return KMSCTL_EXIT_LOCAL;
    }
    return KMSCTL_EXIT_OK;
}

int kmsctl_recovery_main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(struct kmsctl_rpc *, const struct args *);
        int needs_id;
    } verbs[] = {
        {"request", do_request, 1}, {"show", do_show, 1},     {"list", do_list, 0},
        {"approve", do_approve, 1}, {"execute", do_execute, 1}, {"cancel", do_cancel, 1},
    };
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? KMSCTL_EXIT_USAGE : 0;
    }
    size_t v = 0;
    while (v < sizeof(verbs) / sizeof(verbs[0]) && strcmp(verbs[v].name, argv[1]) != 0)
        v++;
    if (v == sizeof(verbs) / sizeof(verbs[0])) {
        fprintf(stderr, "kmsctl recovery: unknown command '%s'\n", argv[1]);
        return KMSCTL_EXIT_USAGE;
    }
    struct args a = {0};
    kmsctl_common_init(&a.o);
    int rc = parse(argc, argv, &a);
    if (rc != KMSCTL_EXIT_OK)
        return rc < 0 ? 0 : rc;
    if (verbs[v].needs_id != (a.id != NULL)) {
        fprintf(stderr, "kmsctl recovery %s: %s\n", verbs[v].name,
                verbs[v].needs_id ? "needs an id" : "takes no id");
        return KMSCTL_EXIT_USAGE;
    }
    struct kmsctl_rpc *rpc = NULL;
    rc = kmsctl_rpc_open(&a.o.conn, &rpc);
    if (rc == KMSCTL_EXIT_OK)
        rc = verbs[v].fn(rpc, &a);
    kmsctl_rpc_free(rpc);
    return rc;
}
