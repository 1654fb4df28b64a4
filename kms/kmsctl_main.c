/*
 * kmsctl_main.c - the Custos command-line client: the verb table, and
 * dispatch through it.
 *
 * Every subcommand is a row (kmsctl.h). A group's first row carries its
 * line of `kmsctl --help`; the verbs of the group are listed after it from
 * the rows' names. A row whose function differs from its group's first row
 * (the BYOK verbs of `key`) is chosen by the verb word; everything else,
 * including a missing or unknown verb and --help, goes to the group's first
 * row, whose own parser gives the group's help and usage errors.
 *
 * To add a command: write its function (argv[0] is the group word) and add
 * one row here.
 */
#include <stdio.h>
#include <string.h>

#include "kmsctl.h"
#include "kmsctl_audit.h"
#include "kmsctl_backup.h"
#include "kmsctl_reconcile.h"
#include "kmsctl_byok.h"
#include "kmsctl_crypto.h"
#include "kmsctl_escrow.h"
#include "kmsctl_fields.h"
#include "kmsctl_link.h"
#include "kmsctl_hsm.h"
#include "kmsctl_key.h"
#include "kmsctl_key_import.h"
#include "kmsctl_sign.h"
#include "kmsctl_opt.h"

static int index_main(int argc, char **argv);

/* clang-format off */
static const struct kmsctl_verb verbs[] = {
    {"hsm", "list", kmsctl_hsm_main, "local PKCS#11 administration"},
    {"hsm", "init-token", kmsctl_hsm_main, NULL},
    {"hsm", "init-region", kmsctl_hsm_main, NULL},
    {"key", "create", kmsctl_key_main, "key lifecycle on kmsd"},
    {"key", "describe", kmsctl_key_main, NULL},
    {"key", "list", kmsctl_key_main, NULL},
    {"key", "rotate", kmsctl_key_main, NULL},
    {"key", "set-rotation", kmsctl_key_main, NULL},
    {"key", "enable", kmsctl_key_main, NULL},
    {"key", "disable", kmsctl_key_main, NULL},
    {"key", "schedule-deletion", kmsctl_key_main, NULL},
    {"key", "cancel-deletion", kmsctl_key_main, NULL},
    {"key", "import-params", kmsctl_key_import_params_main, NULL},
    {"key", "import", kmsctl_key_import_main, NULL},
    {"key", "public-key", kmsctl_sign_main, NULL},
    {"key", "sign", kmsctl_sign_main, NULL},
    {"key", "verify", kmsctl_sign_main, NULL},
    {"encrypt", NULL, kmsctl_crypto_main, "encrypt up to 64 KiB under a key"},
    {"decrypt", NULL, kmsctl_crypto_main, "decrypt a ciphertext blob"},
    {"re-encrypt", NULL, kmsctl_crypto_main, "decrypt and encrypt under another key inside kmsd"},
    {"data-key", "generate", kmsctl_crypto_main, "generate a data key, or decrypt a data-key blob"},
    {"data-key", "decrypt", kmsctl_crypto_main, NULL},
    {"byok", "wrap", kmsctl_byok_main, "bring your own key: wrap a key locally for `key import`"},
    {"index", NULL, index_main, "blind indexes of values (short for fields blind-index)"},
    {"fields", "encrypt", kmsctl_fields_main,
     "field-level encryption and blind indexes with a metadata key"},
    {"fields", "decrypt", kmsctl_fields_main, NULL},
    {"fields", "blind-index", kmsctl_fields_main, NULL},
    {"link", "mint", kmsctl_link_main, "SMS-fallback link tokens: mint, redeem, revoke"},
    {"link", "redeem", kmsctl_link_main, NULL},
    {"link", "revoke", kmsctl_link_main, NULL},
    {"audit", "head", kmsctl_audit_main, "audit log: signed heads, keys, exports; offline verify"},
    {"audit", "keys", kmsctl_audit_main, NULL},
    {"audit", "export", kmsctl_audit_main, NULL},
    {"audit", "sth-bytes", kmsctl_audit_main, NULL},
    {"audit", "events", kmsctl_audit_main, NULL},
    {"audit", "verify", kmsctl_audit_main, NULL},
    {"backup", NULL, kmsctl_backup_main,
     "consistent backup of this node's store, audit logs and\n"
     "configuration while kmsd runs (no server call)"},
    {"reconcile", NULL, kmsctl_reconcile_main,
     "after a restore, with kmsd stopped: print the plan (reattach,\n"
     "rebuild; never destroy), apply it with --confirm (runs kmsd)"},
    {"recovery", "request", kmsctl_recovery_main, "M-of-N recovery of escrowed keys"},
    {"recovery", "show", kmsctl_recovery_main, NULL},
    {"recovery", "list", kmsctl_recovery_main, NULL},
    {"recovery", "approve", kmsctl_recovery_main, NULL},
    {"recovery", "execute", kmsctl_recovery_main, NULL},
    {"recovery", "cancel", kmsctl_recovery_main, NULL},
    {"officer", "sign", kmsctl_officer_main, "sign a recovery statement offline"},
};
/* clang-format on */
#define N_VERBS (sizeof(verbs) / sizeof(verbs[0]))

/* `kmsctl index ...` is short for `kmsctl fields blind-index ...`: brokers
 * compute lookup indexes far more often than anything else. */
static int index_main(int argc, char **argv)
{
    /* argv[-1] is the program name (main passes argv + 1). */
    argv[0] = (char *)"blind-index";
    return kmsctl_fields_main(argc + 1, argv - 1);
}

#define HELP_COL 13 /* where a group's help starts */
#define HELP_WIDTH 79

/* Print s, wrapping at blanks past HELP_WIDTH; *col is the current column. */
static void help_words(FILE *f, const char *s, int *col)
{
    while (*s) {
        if (*s == '\n') {
            fprintf(f, "\n%*s", HELP_COL, "");
            *col = HELP_COL;
            s++;
            continue;
        }
        size_t n = strcspn(s, " \n");
        if (*col > HELP_COL && *col + (int)n > HELP_WIDTH) {
            fprintf(f, "\n%*s", HELP_COL, "");
            *col = HELP_COL;
        }
        fwrite(s, 1, n, f);
        *col += (int)n;
        s += n;
        if (*s == ' ') {
            /* A blank at a wrap point is dropped; otherwise kept. */
            size_t m = strcspn(s + 1, " \n");
            if (*col + 1 + (int)m > HELP_WIDTH) {
                fprintf(f, "\n%*s", HELP_COL, "");
                *col = HELP_COL;
            } else {
                fputc(' ', f);
                (*col)++;
            }
            s++;
        }
    }
}

/* One group's line(s): its help, then its verbs from the rows. */
static void usage_group(FILE *f, size_t first)
{
    int col = fprintf(f, "  %-10s ", verbs[first].group);
    char list[512] = "";
    size_t len = 0;
    for (size_t i = first; i < N_VERBS && strcmp(verbs[i].group, verbs[first].group) == 0; i++)
        if (verbs[i].name)
            len += (size_t)snprintf(list + len, len < sizeof(list) ? sizeof(list) - len : 0,
                                    "%s%s", len ? ", " : " (", verbs[i].name);
    if (len > 0 && len + 1 < sizeof(list))
        strcat(list, ")");
    help_words(f, verbs[first].help, &col);
    help_words(f, list, &col);
    fputc('\n', f);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kmsctl <command> [options]\n"
               "\n"
               "commands:\n");
    for (size_t i = 0; i < N_VERBS; i++)
        if (verbs[i].help)
            usage_group(f, i);
    fprintf(f,
            "\n"
            "Run 'kmsctl <command> --help' for the options of a command. Connection\n"
            "options (--addr, --api-key-file, --cacert, --cert, --key, --correlation-id)\n"
            "may come before or after the command.\n"
            "exit codes: 0 success; 1 operation failed (kmsd: the server refused or failed\n"
            "the request); 2 usage error; 3 transport error (connect, TLS, timeout,\n"
            "non-Twirp reply); 4 local file or secret error\n");
}

/* The verb word of `kmsctl GROUP ...`: the first argument after argv[0] that
 * is neither an option nor an option's value. Long options that take a
 * separate value are listed so their values are skipped; a wrong guess
 * only sends the command to its group's first row, whose parser reports
 * it. */
static const char *verb_word(int argc, char **argv)
{
    static const char *const with_value[] = {
        "addr",       "api-key-file", "cacert",         "cert",      "key",
        "correlation-id", "region",   "description",    "origin",    "page-size",
        "page-token", "days",         "out-public-key", "out-token", "token",
        "wrapped",    "algorithm",    "spec",           "usage",     "version",
        "in",         "digest",       "alg",            "out",       "signature", NULL,
    };
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--") == 0)
            return i + 1 < argc ? argv[i + 1] : NULL;
        if (s[0] != '-' || s[1] == '\0')
            return s;
        if (s[1] != '-' || strchr(s, '='))
            continue;
        for (size_t k = 0; with_value[k]; k++)
            if (strcmp(s + 2, with_value[k]) == 0) {
                i++;
                break;
            }
    }
    return NULL;
}

/* The row for argv (argv[0] the group word); NULL for an unknown group. */
static const struct kmsctl_verb *find_verb(int argc, char **argv)
{
    const struct kmsctl_verb *group = NULL;
    const char *word = NULL;
    for (size_t i = 0; i < N_VERBS; i++) {
        if (strcmp(verbs[i].group, argv[0]) != 0)
            continue;
        if (group == NULL) {
            group = &verbs[i];
            word = verb_word(argc, argv);
        }
        if (word && verbs[i].name && strcmp(verbs[i].name, word) == 0)
            return &verbs[i];
    }
    return group;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    /* Connection options may precede the command: move the command word to
     * argv[1] so the command parses them as its own. */
    kmsctl_conn_hoist(argc, argv);
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return KMSCTL_EXIT_OK;
    }
    const struct kmsctl_verb *v = find_verb(argc - 1, argv + 1);
    if (v == NULL) {
        fprintf(stderr, "kmsctl: unknown command '%s'\n", argv[1]);
        usage(stderr);
        return KMSCTL_EXIT_USAGE;
    }
    return v->run(argc - 1, argv + 1);
}
