/*
 * kmsctl_hsm.c - local HSM administration for operators and the dev setup.
 *
 * PINs are named by source (file:/path with mode 0600, or env:NAME), never
 * given on the command line, where `ps` and shell history would show them.
 */
#include "kmsctl_hsm.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_error.h"
#include "kms_secret.h"
#include "p11_escrow_key.h"
#include "p11_module.h"
#include "p11_token.h"

#define DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"

static const char *default_module(void)
{
    const char *m = getenv("CUSTOS_PKCS11_MODULE");
    return m && *m ? m : DEFAULT_MODULE;
}

/* The module's initialisation string (NSS's softoken needs one; most
 * modules take none): --module-args, else $CUSTOS_PKCS11_MODULE_ARGS. */
static const char *default_module_args(void)
{
    const char *a = getenv("CUSTOS_PKCS11_MODULE_ARGS");
    return a && *a ? a : NULL;
}

static void hsm_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl hsm <command> [options]\n"
            "\n"
            "Local PKCS#11 administration (talks to the module, not to kmsd).\n"
            "\n"
            "commands:\n"
            "  list                         list slots and their tokens\n"
            "  init-token                   initialise a free slot's token and set its user PIN\n"
            "  init-region                  create the region's escrow key in its token (once;\n"
            "                               a no-op when it exists)\n"
            "  check                        run the capability probes against a token (--label,\n"
            "                               --pin-source) and print its row of the matrix of\n"
            "                               docs/pkcs11.md; exit 1 when it cannot serve Encrypt\n"
            "\n"
            "options:\n"
            "  --module PATH                PKCS#11 module (default $CUSTOS_PKCS11_MODULE or\n"
            "                               " DEFAULT_MODULE ")\n"
            "  --module-args STRING         the module's initialisation string (C_Initialize\n"
            "                               pReserved; NSS softoken: tokens=<...>; default\n"
            "                               $CUSTOS_PKCS11_MODULE_ARGS; never a PIN)\n"
            "  --label LABEL                token label, 1..32 bytes (init-token), or the\n"
            "                               token label or RFC 7512 URI (init-region)\n"
            "  --region REGION              the region the token serves (init-region)\n"
            "  --so-pin-source SRC          SO PIN source: file:/path (mode 0600) or env:NAME\n"
            "  --pin-source SRC             user PIN source, same forms\n"
            "  -h, --help                   this text\n"
            "\n"
            "exit codes: 0 success, 1 operation failed, 2 usage error\n");
}

/* The region's escrow key: AES-256, wrap/unwrap only, made inside the
 * token (docs/escrow-recovery.md, "Key ceremony"). */
static int init_region(const char *module, const char *margs, const char *selector,
                       const char *region, const char *pin_src)
{
    struct p11_module *mod = NULL;
    struct p11_token *tok = NULL;
    struct p11_key_id id;
    bool created = false;
    kms_err rc = p11_module_load_args(module, margs, &mod);
    if (rc == KMS_OK) {
        struct p11_token_config tc = {region, selector, pin_src, 2};
        rc = p11_tokens_open(mod, &tc, 1, &tok);
    }
    if (rc == KMS_OK)
        rc = p11_escrow_key_init(tok, &id, &created);
    if (rc == KMS_OK) {
        char hex[33];
        p11_key_id_hex(&id, hex);
        printf("region %s: escrow key %s %s in token '%s'\n", region, hex,
               created ? "created" : "already present", p11_token_label(tok));
    }
    p11_token_free(tok);
    p11_module_free(mod);
    if (rc != KMS_OK) {
        fprintf(stderr, "kmsctl hsm init-region: %s\n", kms_err_detail());
        return 1;
    }
    return 0;
}

/* The token's row of the capability matrix (docs/pkcs11.md). The probes
 * make throw-away session keys and, for the token-object rules, token keys
 * labelled custos:probe that are destroyed at once. */
static int check_token(const char *module, const char *margs, const char *selector,
                       const char *pin_src)
{
    struct p11_module *mod = NULL;
    struct p11_token *tok = NULL;
    struct p11_cap_report rows[P11_REPORT_MAX];
    size_t n = 0;
    kms_err rc = p11_module_load_args(module, margs, &mod);
    if (rc == KMS_OK) {
        struct p11_token_config tc = {"check", selector, pin_src, 2};
        rc = p11_tokens_open(mod, &tc, 1, &tok);
    }
    if (rc == KMS_OK)
        rc = p11_token_report(tok, rows, P11_REPORT_MAX, &n);
    const char *core = rc == KMS_OK ? p11_token_missing_core(tok) : NULL;
    if (rc == KMS_OK) {
        printf("token '%s' (serial %s) in %s\n", p11_token_label(tok), p11_token_serial(tok),
               module);
        for (size_t i = 0; i < n; i++)
            printf("  %-44s %s%s\n", rows[i].name, rows[i].value, rows[i].ok ? "" : "  [!]");
        if (core)
            printf("this token cannot serve Custos: it lacks %s\n", core);
    }
    p11_token_free(tok);
    p11_module_free(mod);
    if (rc != KMS_OK) {
        fprintf(stderr, "kmsctl hsm check: %s\n", kms_err_detail());
        return 1;
    }
    return core ? 1 : 0;
}

int kmsctl_hsm_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"module", required_argument, NULL, 'm'},
        {"module-args", required_argument, NULL, 'a'},
        {"label", required_argument, NULL, 'l'},
        {"so-pin-source", required_argument, NULL, 's'},
        {"pin-source", required_argument, NULL, 'p'},
        {"region", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *module = default_module(), *margs = default_module_args(), *label = NULL,
               *so_src = NULL, *pin_src = NULL, *region = NULL;
    if (argc < 2) {
        hsm_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        hsm_usage(stdout);
        return 0;
    }
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            module = optarg;
            break;
        case 'a':
            margs = optarg;
            break;
        case 'l':
            label = optarg;
            break;
        case 's':
            so_src = optarg;
            break;
        case 'p':
            pin_src = optarg;
            break;
        case 'r':
            region = optarg;
            break;
        case 'h':
            hsm_usage(stdout);
            return 0;
        default:
            hsm_usage(stderr);
            return 2;
        }
    }
    if (strcmp(cmd, "check") == 0) {
        if (!label || !pin_src) {
            fprintf(stderr, "kmsctl hsm check: --label and --pin-source are required\n");
            return 2;
        }
        return check_token(module, margs, label, pin_src);
    }
    if (strcmp(cmd, "init-region") == 0) {
        if (!label || !pin_src || !region) {
            fprintf(stderr, "kmsctl hsm init-region: --label, --region and --pin-source are required\n");
            return 2;
        }
        return init_region(module, margs, label, region, pin_src);
    }
    if (strcmp(cmd, "list") != 0 && strcmp(cmd, "init-token") != 0) {
        fprintf(stderr, "kmsctl hsm: unknown command '%s'\n", cmd);
        hsm_usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "init-token") == 0 && (!label || !so_src || !pin_src)) {
        fprintf(stderr, "kmsctl hsm init-token: --label, --so-pin-source and --pin-source are required\n");
        return 2;
    }

    struct p11_module *mod = NULL;
    struct kms_secret so = {0}, pin = {0};
    kms_err rc = p11_module_load_args(module, margs, &mod);
    if (rc == KMS_OK) {
        if (strcmp(cmd, "list") == 0) {
            rc = p11_module_list_tokens(mod, stdout);
        } else {
            rc = kms_secret_read_source(so_src, &so);
            if (rc == KMS_OK)
                rc = kms_secret_read_source(pin_src, &pin);
            if (rc == KMS_OK)
                rc = p11_module_init_token(mod, label, &so, &pin);
            if (rc == KMS_OK)
                printf("initialised token '%s'\n", label);
        }
    }
    kms_secret_wipe(&so);
    kms_secret_wipe(&pin);
    p11_module_free(mod);
    if (rc != KMS_OK) {
        fprintf(stderr, "kmsctl hsm %s: %s\n", cmd, kms_err_detail());
        return 1;
    }
    return 0;
}
