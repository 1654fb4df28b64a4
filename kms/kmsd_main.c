/*
 * kmsd_main.c - the Custos key service daemon.
 *
 *   kmsd [--config PATH] [--check-config]
 *
 * Config: --config, else $CUSTOS_CONFIG, else /etc/custos/kmsd.json.
 * Signals: SIGHUP reloads the policy and the XKS endpoints file (a bad
 * document is refused and the old one stays) and reopens the log file;
 * SIGTERM and SIGINT stop accepting, finish in-flight requests, flush the
 * audit log and exit 0.
 *
 * Under systemd (Type=notify) it reports READY=1 once it listens,
 * RELOADING=1/READY=1 around a reload, STOPPING=1 at shutdown, and pings
 * WATCHDOG=1 at half of $WATCHDOG_USEC from the main loop.
 */
#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>

#include "kms_config.h"
#include "kms_crash.h"
#include "kms_http.h"
#include "kms_log.h"
#include "kms_notify.h"
#include "kms_reconcile.h"
#include "kms_secret.h"
#include "kms_service.h"
#include "kms_sweeper.h"

/* Exit status when a token refused its PIN at start: never restart on it
 * (deploy/systemd/kmsd.service: RestartPreventExitStatus=3). */
#define KMS_EXIT_PIN 3

static void usage(FILE *f)
{
    fprintf(f, "usage: kmsd [--config PATH] [--check-config | --reconcile [--confirm]]\n"
               "\n"
               "  --config PATH     configuration file (default $CUSTOS_CONFIG or\n"
               "                    /etc/custos/kmsd.json); see docs/configuration.md\n"
               "  --check-config    validate the configuration and policy, then exit\n"
               "  --reconcile       with kmsd stopped: compare the store with the audit\n"
               "                    logs and the tokens, print the plan (what would be\n"
               "                    rebuilt, reattached, kept), change nothing, exit\n"
               "  --confirm         with --reconcile: apply that plan (audited), exit;\n"
               "                    nothing is ever destroyed (docs/operations.md)\n"
               "  -h, --help        this text\n"
               "\n"
               "signals: SIGHUP reloads the policy and the XKS endpoints, reopens the log file;\n"
               "         SIGTERM/SIGINT shut down gracefully\n"
               "see kmsd(8), kmsd.json(5)\n"
               "exit codes: 0 clean shutdown or valid config, 1 start-up failure, 2 usage,\n"
               "            3 a token refused its PIN (do not restart: fix the PIN source)\n");
}

/* The environment switch that keeps kmsd dumpable, honoured in dev mode only
 * (docs/hardening.md "Core dumps"). */
#define KMS_DUMPABLE_ENV "CUSTOS_DEV_DUMPABLE"

/*
 * kmsd holds PINs and, per request, plaintext data keys: a core file or a
 * ptrace by another process of the same user would carry them off. So no
 * core file (RLIMIT_CORE 0, soft and hard: an unprivileged process cannot
 * raise it again) and not dumpable (PR_SET_DUMPABLE 0: no core even through
 * a core_pattern pipe, /proc/<pid>/mem and ptrace only for root). Called
 * before any secret is read; -1 with errno on failure, which is fatal.
 */
static int no_core_dumps(void)
{
    struct rlimit zero = {0, 0};
    if (setrlimit(RLIMIT_CORE, &zero) != 0)
        return -1;
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/* The kernel resets the flag when credentials change; a PKCS#11 module
 * loaded since could have done that. Set it again and say so. */
static void keep_no_core_dumps(void)
{
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
        return;
    kms_log_warn("kmsd", "the process became dumpable again (credentials changed?); "
                         "turning core dumps off again");
    if (no_core_dumps() != 0)
        kms_log_error("kmsd", "cannot turn core dumps off: %s", strerror(errno));
}

/* Core dumps off, unless KMS_DUMPABLE_ENV=1 in dev mode (*out_keep).
 * -1 when they cannot be turned off: fatal. */
static int core_dumps_off(const struct kms_config *cfg, bool *out_keep)
{
    const char *dumpable = getenv(KMS_DUMPABLE_ENV);
    bool keep_dumpable = dumpable != NULL && strcmp(dumpable, "1") == 0;
    *out_keep = false;
    if (keep_dumpable && cfg->dev_mode) {
        kms_log_warn("kmsd", "%s=1 in dev mode: core dumps and ptrace stay ALLOWED; a core "
                             "file may hold PINs and data keys", KMS_DUMPABLE_ENV);
        *out_keep = true;
        return 0;
    }
    if (keep_dumpable)
        kms_log_warn("kmsd", "%s=1 is ignored outside dev mode: core dumps stay off",
                     KMS_DUMPABLE_ENV);
    if (no_core_dumps() != 0) {
        kms_log_error("kmsd", "cannot turn core dumps off (RLIMIT_CORE, PR_SET_DUMPABLE): %s",
                      strerror(errno));
        return -1;
    }
    return 0;
}

/* Failures to notify are logged, never fatal: systemd would notice the
 * missing READY=1 or watchdog ping by itself. */
static void notify(const char *state)
{
    if (kms_notify(state) != KMS_OK)
        kms_log_warn("kmsd", "sd_notify: %s", kms_err_detail());
}

/* What the command line asks for. */
struct kmsd_args {
    const char *path;
    bool check_only, reconcile, confirm;
};

/* -1: go on; else the exit status (help printed, or a usage error). */
static int parse_args(int argc, char **argv, struct kmsd_args *a)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"reconcile", no_argument, NULL, 'r'},
        {"confirm", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    a->path = kms_config_default_path();
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            a->path = optarg;
            break;
        case 'k':
            a->check_only = true;
            break;
        case 'r':
            a->reconcile = true;
            break;
        case 'y':
            a->confirm = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || (a->confirm && !a->reconcile) || (a->reconcile && a->check_only)) {
        usage(stderr);
        return 2;
    }
    return -1;
}

/* --check-config: the policy parses and every PIN source is readable. */
static int check_config(const struct kms_config *cfg, const char *path)
{
    struct pol_doc *doc = NULL;
    kms_err rc = pol_doc_load_file(cfg->policy_path, &doc);
    if (rc != KMS_OK)
        fprintf(stderr, "kmsd: policy %s: %s\n", cfg->policy_path, kms_err_detail());
    /* PIN sources are read (and wiped at once) so that a missing file,
     * a file readable by others or an unset variable shows here and
     * not at the next restart. The HSM is not touched. */
    for (size_t i = 0; rc == KMS_OK && i < cfg->n_tokens; i++) {
        struct kms_secret pin = {0};
        rc = kms_secret_read_source(cfg->tokens[i].pin_source, &pin);
        kms_secret_wipe(&pin);
        if (rc != KMS_OK)
            fprintf(stderr, "kmsd: %s: pkcs11.tokens[%zu].pin: %s\n", path, i,
                    kms_err_detail());
    }
    if (rc == KMS_OK)
        printf("kmsd: %s and policy %s are valid\n", path, cfg->policy_path);
    pol_doc_unref(doc);
    return rc == KMS_OK ? 0 : 1;
}

/* The registry first; then, before anything serves, restore detection
 * and reconcile (kmsd --reconcile stops after its plan: *out_stop); then
 * the background sweeper. In safe mode the sweeper still runs but sweeps
 * nothing. -1: go on; else the exit status. */
static int start(const struct kms_config *cfg, const struct kmsd_args *a,
                 struct kms_service **svc, struct kms_sweeper **sweeper)
{
    bool stop_here = false;
    kms_err src = kms_service_start(cfg, svc);
    if (src == KMS_OK)
        src = kms_reconcile_start(*svc,
                                  !a->reconcile ? KMS_RESTORE_MODE_SERVE
                                  : a->confirm  ? KMS_RESTORE_MODE_CONFIRM
                                                : KMS_RESTORE_MODE_PLAN,
                                  stdout, &stop_here);
    if (src == KMS_OK && !stop_here)
        src = kms_sweeper_start(*svc, sweeper);
    if (src != KMS_OK) {
        kms_log_error("kmsd", "start-up failed: %s", kms_err_detail());
        /* A wrong or locked PIN is not a transient failure: restarting
         * would present the same PIN again, every RestartSec, and tokens
         * lock a PIN after a few wrong tries. Exit 3 is listed in the
         * unit's RestartPreventExitStatus=, so systemd does not retry. */
        if (src == KMS_ERR_HSM_PIN) {
            kms_log_error("kmsd", "a token refused its PIN: not retrying; fix the PIN source, "
                                  "then start kmsd again");
            return KMS_EXIT_PIN;
        }
        return 1;
    }
    /* The plan was printed (or applied): nothing is served. */
    return stop_here ? 0 : -1;
}

/* Serve until SIGTERM or SIGINT; SIGHUP reloads the policy and reopens the
 * log file. The watchdog is pinged from this loop, at half the interval
 * systemd gave: a main thread stuck anywhere gets kmsd restarted. */
static void serve(const struct kms_config *cfg, struct kms_service *svc, struct kms_http *http,
                  const sigset_t *set, bool keep_dumpable)
{
    uint64_t wd_usec = kms_notify_watchdog_usec();
    if (wd_usec > 0)
        kms_log_info("kmsd", "systemd watchdog every %" PRIu64 " ms", wd_usec / 1000);
    for (;;) {
        int sig = 0;
        if (wd_usec > 0) {
            struct timespec ts = {(time_t)(wd_usec / 2 / 1000000),
                                  (long)(wd_usec / 2 % 1000000) * 1000};
            notify("WATCHDOG=1");
            sig = sigtimedwait(set, NULL, &ts);
            if (sig < 0)
                continue; /* EAGAIN: time for the next ping; EINTR */
        } else if (sigwait(set, &sig) != 0) {
            continue;
        }
        if (sig == SIGHUP) {
            notify("RELOADING=1\nSTATUS=reloading");
            /* Reopen first, so that this reload's lines are in the new file. */
            if (cfg->log_file && kms_log_open_file(cfg->log_file) != KMS_OK)
                kms_log_error("kmsd", "log file not reopened, still writing the old one: %s",
                              kms_err_detail());
            kms_log_info("kmsd", "SIGHUP: reloading policy%s",
                         cfg->log_file ? ", log file reopened" : "");
            kms_service_reload_policy(svc);
            kms_http_reload(http);
            if (!keep_dumpable)
                keep_no_core_dumps();
            notify("READY=1\nSTATUS=serving");
            continue;
        }
        kms_log_info("kmsd", "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
}

int main(int argc, char **argv)
{
    /* Before anything parses JSON: request bodies in Twirp's JSON encoding
     * carry plaintext through jansson's own buffers (kms_secret.h). */
    json_set_alloc_funcs(kms_secret_alloc, kms_secret_free);
    struct kmsd_args a = {0};
    int st = parse_args(argc, argv, &a);
    if (st >= 0)
        return st;
    const char *path = a.path;

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
    /* Core dumps go off below; a fault still leaves a backtrace in the log. */
    kms_crash_install();

    /* The configuration names PIN sources but holds no secret; everything
     * after it may read one. */
    struct kms_config *cfg = NULL;
    if (kms_config_load(path, &cfg) != KMS_OK) {
        kms_log_error("kmsd", "configuration: %s", kms_err_detail());
        return 1;
    }
    kms_log_configure_level((enum kms_log_level)cfg->log_level);
    bool keep_dumpable = false;
    if (core_dumps_off(cfg, &keep_dumpable) != 0) {
        kms_config_free(cfg);
        return 1;
    }
    if (a.check_only) {
        int rc = check_config(cfg, path);
        kms_config_free(cfg);
        return rc;
    }
    if (cfg->log_file && kms_log_open_file(cfg->log_file) != KMS_OK) {
        kms_log_error("kmsd", "configuration: log.file: %s", kms_err_detail());
        kms_config_free(cfg);
        return 1;
    }

    struct kms_service *svc = NULL;
    struct kms_sweeper *sweeper = NULL;
    struct kms_http *http = NULL;
    int status = start(cfg, &a, &svc, &sweeper);
    if (status >= 0)
        goto done;
    status = 1;
    if (kms_http_start(svc, &http) != KMS_OK) {
        kms_log_error("kmsd", "start-up failed: %s", kms_err_detail());
        goto done;
    }
    if (!keep_dumpable)
        keep_no_core_dumps();
    const char *safe = NULL;
    if (kms_service_safe_mode(svc, &safe))
        kms_log_warn("kmsd", "ready (%s mode) in %s", cfg->dev_mode ? "dev" : "production", safe);
    else
        kms_log_info("kmsd", "ready (%s mode)", cfg->dev_mode ? "dev" : "production");
    notify("READY=1\nSTATUS=serving");

    serve(cfg, svc, http, &set, keep_dumpable);
    notify("STOPPING=1\nSTATUS=draining");
    unsigned left = kms_http_drain(http, cfg->drain_timeout_s);
    if (left > 0)
        kms_log_warn("kmsd", "%u request(s) still in flight after %u s; closing their connections",
                     left, cfg->drain_timeout_s);
    else
        kms_log_info("kmsd", "drained: no request in flight");
    status = 0;
done:
    /* The HTTP front first: in-flight requests finish while the service
     * they use still exists. The service then closes the audit logs, which
     * writes what is queued and signs a final head. */
    kms_http_stop(http);
    kms_sweeper_stop(sweeper);
    kms_service_free(svc);
    kms_config_free(cfg);
    kms_log_info("kmsd", "stopped");
    return status;
}
