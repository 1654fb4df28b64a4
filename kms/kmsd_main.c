/*
 * kmsd_main.c - the Custos key service daemon.
 *
 *   kmsd [--config PATH] [--check-config]
 *
 * Config: --config, else $CUSTOS_CONFIG, else /etc/custos/kmsd.json.
 * Signals: SIGHUP reloads the policy (a bad document is refused and the old
 * one stays); SIGTERM and SIGINT stop accepting, finish in-flight requests
 * and exit 0.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_config.h"
#include "kms_http.h"
#include "kms_log.h"
#include "kms_service.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: kmsd [--config PATH] [--check-config]\n"
               "\n"
               "  --config PATH     configuration file (default $CUSTOS_CONFIG or\n"
               "                    /etc/custos/kmsd.json); see docs/configuration.md\n"
               "  --check-config    validate the configuration and policy, then exit\n"
               "  -h, --help        this text\n"
               "\n"
               "signals: SIGHUP reloads the policy; SIGTERM/SIGINT shut down gracefully\n"
               "exit codes: 0 clean shutdown or valid config, 1 start-up failure, 2 usage\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = getenv("CUSTOS_CONFIG");
    if (path == NULL || *path == '\0')
        path = "/etc/custos/kmsd.json";
    bool check_only = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check_only = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Block the signals before any thread starts so that every thread
     * inherits the mask and only sigwait below sees them. SIGPIPE is
     * ignored: a client that hangs up must not kill the service. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit must fail the write (EFBIG -> the audit log fails
     * closed), not kill the service. */
    signal(SIGXFSZ, SIG_IGN);

    struct kms_config *cfg = NULL;
    if (kms_config_load(path, &cfg) != KMS_OK) {
        kms_log_error("kmsd", "configuration: %s", kms_err_detail());
        return 1;
    }
    if (check_only) {
        struct pol_doc *doc = NULL;
        kms_err rc = pol_doc_load_file(cfg->policy_path, &doc);
        if (rc != KMS_OK)
            fprintf(stderr, "kmsd: policy %s: %s\n", cfg->policy_path, kms_err_detail());
        else
            printf("kmsd: %s and policy %s are valid\n", path, cfg->policy_path);
        pol_doc_unref(doc);
        kms_config_free(cfg);
        return rc == KMS_OK ? 0 : 1;
    }

    struct kms_service *svc = NULL;
    struct kms_http *http = NULL;
    int status = 1;
    if (kms_service_start(cfg, &svc) != KMS_OK) {
        kms_log_error("kmsd", "start-up failed: %s", kms_err_detail());
        goto done;
    }
    if (kms_http_start(svc, &http) != KMS_OK) {
        kms_log_error("kmsd", "start-up failed: %s", kms_err_detail());
        goto done;
    }
    kms_log_info("kmsd", "ready (%s mode)", cfg->dev_mode ? "dev" : "production");

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            kms_log_info("kmsd", "SIGHUP: reloading policy");
            kms_service_reload_policy(svc);
            continue;
        }
        kms_log_info("kmsd", "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    status = 0;
done:
    /* The HTTP front first: in-flight requests finish while the service
     * they use still exists. */
    kms_http_stop(http);
    kms_service_free(svc);
    kms_config_free(cfg);
    kms_log_info("kmsd", "stopped");
    return status;
}
