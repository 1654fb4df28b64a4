/*
 * kmsctl_reconcile.c - `kmsctl reconcile [--config PATH] [--confirm]
 * [--kmsd PATH]`: see kmsctl_reconcile.h.
 */
#include "kmsctl_reconcile.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "kms_config.h"
#include "kms_error.h"

static void reconcile_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl reconcile [--config PATH] [--confirm] [--kmsd PATH]\n"
            "\n"
            "After a restore, with kmsd stopped: compare the store with the audit logs\n"
            "and the tokens and print the plan (what would be reattached, rebuilt or\n"
            "accepted as lost; nothing is ever destroyed). With --confirm, apply it\n"
            "(audited as RestoreConfirmed); then start kmsd. Runs kmsd's own reconcile\n"
            "(kmsd --reconcile), which reads the PIN files named in the configuration.\n"
            "\n"
            "  --config PATH  kmsd's configuration (default $CUSTOS_CONFIG or\n"
            "                 /etc/custos/kmsd.json)\n"
            "  --confirm      apply the plan\n"
            "  --kmsd PATH    the kmsd binary (default $CUSTOS_KMSD, else kmsd beside\n"
            "                 kmsctl, else ../sbin/kmsd from kmsctl's directory)\n"
            "exit codes: 0 plan printed or applied; 1 refused or failed (kmsd running,\n"
            "no store, start-up failure); 2 usage; 3 a token refused its PIN\n");
}

static bool executable(const char *path)
{
    return access(path, X_OK) == 0;
}

/* The kmsd to run: --kmsd, $CUSTOS_KMSD, or found from kmsctl's own path
 * (a build tree keeps both in build/bin, an installation kmsctl in
 * PREFIX/bin and kmsd in PREFIX/sbin). */
static kms_err find_kmsd(const char *given, char *out, size_t n)
{
    if (given == NULL || *given == '\0')
        given = getenv("CUSTOS_KMSD");
    if (given != NULL && *given != '\0') {
        KMS_ENSURE(executable(given), KMS_ERR_CONFIG, "kmsd %s: %s", given, strerror(errno));
        KMS_ENSURE((size_t)snprintf(out, n, "%s", given) < n, KMS_ERR_INVALID_ARGUMENT,
                   "kmsd path too long");
        return KMS_OK;
    }
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    KMS_ENSURE(len > 0, KMS_ERR_CONFIG, "cannot find kmsctl's own path (%s); name kmsd with "
               "--kmsd PATH", strerror(errno));
    self[len] = '\0';
    const char *dir = dirname(self);
    static const char *const rel[] = {"kmsd", "../sbin/kmsd"};
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        if ((size_t)snprintf(out, n, "%s/%s", dir, rel[i]) < n && executable(out))
            return KMS_OK;
    }
    return kms_err_set(KMS_ERR_CONFIG, "no kmsd in %s or %s/../sbin; name it with --kmsd PATH "
                       "or CUSTOS_KMSD", dir, dir);
}

/* kmsd holds an exclusive flock on its store file while it runs (and
 * reconcile needs it): say so plainly instead of letting kmsd log in to
 * every token first and then fail. A missing store is refused too: kmsd
 * would create an empty one, and an empty store reconciled against the
 * tokens and audit log is not what a restore means. */
static kms_err store_free(const char *store)
{
    int fd = open(store, O_RDONLY | O_CLOEXEC);
    KMS_ENSURE(fd >= 0, errno == ENOENT ? KMS_ERR_NOT_FOUND : KMS_ERR_IO,
               "store %s: %s (restore it first: docs/operations.md \"Restore runbook\")", store,
               strerror(errno));
    kms_err rc = KMS_OK;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK
                 ? kms_err_set(KMS_ERR_FAILED_PRECONDITION,
                               "kmsd is running: it holds the lock of store %s; stop it first "
                               "(systemctl stop kmsd), then run kmsctl reconcile again",
                               store)
                 : kms_err_set(KMS_ERR_IO, "store %s: lock: %s", store, strerror(errno));
    }
    close(fd); /* drops the probe's lock, if taken */
    return rc;
}

int kmsctl_reconcile_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"confirm", no_argument, NULL, 'y'},
        {"kmsd", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = kms_config_default_path(), *kmsd_given = NULL;
    bool confirm = false;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'y':
            confirm = true;
            break;
        case 'k':
            kmsd_given = optarg;
            break;
        case 'h':
            reconcile_usage(stdout);
            return 0;
        default:
            reconcile_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        reconcile_usage(stderr);
        return 2;
    }

    struct kms_config *cfg = NULL;
    char kmsd[PATH_MAX];
    kms_err rc = kms_config_load(config, &cfg);
    /* A store on PostgreSQL has no file lock to probe (docs/fleet.md). */
    if (rc == KMS_OK && cfg->store_path != NULL)
        rc = store_free(cfg->store_path);
    if (rc == KMS_OK)
        rc = find_kmsd(kmsd_given, kmsd, sizeof(kmsd));
    kms_config_free(cfg);
    if (rc != KMS_OK) {
        fprintf(stderr, "kmsctl reconcile: %s\n", kms_err_detail());
        return 1;
    }
    /* The PINs stay in their files: kmsd reads them from the configuration. */
    char *const args[] = {(char *)"kmsd", (char *)"--config", (char *)config,
                          (char *)"--reconcile", confirm ? (char *)"--confirm" : NULL, NULL};
    fflush(stdout);
    execv(kmsd, args);
    fprintf(stderr, "kmsctl reconcile: cannot run %s: %s\n", kmsd, strerror(errno));
    return 1;
}
