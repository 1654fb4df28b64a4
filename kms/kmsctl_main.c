/*
 * kmsctl_main.c - the Custos command-line client: dispatch to subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "kmsctl_audit.h"
#include "kmsctl_backup.h"
#include "kmsctl_reconcile.h"
#include "kmsctl_byok.h"
#include "kmsctl_crypto.h"
#include "kmsctl_escrow.h"
#include "kmsctl_fields.h"
#include "kmsctl_hsm.h"
#include "kmsctl_key.h"
#include "kmsctl_rpc.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl <command> [options]\n"
            "\n"
            "commands:\n"
            "  hsm        local PKCS#11 administration (list, init-token, init-region)\n"
            "  key        key lifecycle on kmsd: create, describe, list, rotate, enable,\n"
            "             disable, schedule-deletion, cancel-deletion\n"
            "  encrypt    encrypt up to 64 KiB under a key\n"
            "  decrypt    decrypt a ciphertext blob\n"
            "  re-encrypt decrypt and encrypt under another key inside kmsd\n"
            "  data-key   generate a data key, or decrypt a data-key blob\n"
            "  byok       bring your own key: wrap a key locally for `key import`\n"
            "  index      blind indexes of values (short for fields blind-index)\n"
            "  fields     field-level encryption and blind indexes (encrypt, decrypt,\n"
            "             blind-index) with a metadata key\n"
            "  audit      audit log: signed heads, keys, exports; offline verify\n"
            "  backup     consistent backup of this node's store, audit logs and\n"
            "             configuration while kmsd runs (no server call)\n"
            "  reconcile  after a restore, with kmsd stopped: print the plan (reattach,\n"
            "             rebuild; never destroy), apply it with --confirm (runs kmsd)\n"
            "  recovery   M-of-N recovery of escrowed keys: request, show, list, approve,\n"
            "             execute, cancel\n"
            "  officer    officer sign: sign a recovery statement offline\n"
            "\n"
            "Run 'kmsctl <command> --help' for the options of a command. Connection\n"
            "options (--addr, --api-key-file, --cacert, --cert, --key, --correlation-id)\n"
            "may come before or after the command.\n"
            "exit codes: 0 success; 1 operation failed (kmsd: the server refused or failed\n"
            "the request); 2 usage error; 3 transport error (connect, TLS, timeout,\n"
            "non-Twirp reply); 4 local file or secret error\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    /* Connection options may precede the command: move the command word to
     * argv[1] so the command parses them as its own. */
    kmsctl_conn_hoist(argc, argv);
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "hsm") == 0)
        return kmsctl_hsm_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "key") == 0)
        return kmsctl_key_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "byok") == 0)
        return kmsctl_byok_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "fields") == 0)
        return kmsctl_fields_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "index") == 0) {
        /* `kmsctl index ...` is short for `kmsctl fields blind-index ...`:
         * brokers compute lookup indexes far more often than anything else. */
        argv[1] = (char *)"blind-index";
        return kmsctl_fields_main(argc, argv);
    }
    if (strcmp(argv[1], "recovery") == 0)
        return kmsctl_recovery_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "officer") == 0)
        return kmsctl_officer_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "audit") == 0)
        return kmsctl_audit_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "backup") == 0)
        return kmsctl_backup_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "reconcile") == 0)
        return kmsctl_reconcile_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "encrypt") == 0 || strcmp(argv[1], "decrypt") == 0 ||
        strcmp(argv[1], "re-encrypt") == 0 || strcmp(argv[1], "data-key") == 0)
        return kmsctl_crypto_main(argc - 1, argv + 1);
    fprintf(stderr, "kmsctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
