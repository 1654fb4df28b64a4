/*
 * kmsctl_backup.c - `kmsctl backup --config PATH --out DIR` (kmsctl_backup.h).
 *
 * Runs on the kmsd host, as the kmsd user, beside a running kmsd: it reads
 * the store with SQLite's own locks (one read transaction) and the audit
 * logs as append-only files. It never needs a PIN, and it copies no PIN or
 * credential: those belong in the secret store they came from.
 */
#include "kmsctl_backup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "audit_log.h"
#include "kms_config.h"
#include "kms_error.h"
#include "kms_store_epoch.h"

/* Largest single file copied (the audit logs are rotated long before). */
#define BACKUP_FILE_MAX ((off_t)64 << 30)
#define BACKUP_FILES_MAX 4096

static void backup_usage(FILE *f)
{
    fprintf(f,
            "usage: kmsctl backup --config PATH --out DIR\n"
            "\n"
            "A consistent backup of this node's state while kmsd runs, into DIR (which\n"
            "must not exist; made mode 0700):\n"
            "  1. the metadata store, one read transaction (SQLite VACUUM INTO): a\n"
            "     single instant, never a torn copy; the copy gets a fresh store_id and\n"
            "     remembers the original's (backup_of) and the time (backup_at);\n"
            "  2. then the audit logs (append-only: the copy covers everything the\n"
            "     store copy knows, and perhaps more, which a restore reattaches),\n"
            "     per region heads, then keys, then events; the copy is then opened\n"
            "     read-only with kmsd's start-up checks before success is reported;\n"
            "  3. the configuration file and the policy it names;\n"
            "  4. MANIFEST: every file with its SHA-256 and size.\n"
            "Then back up the HSM tokens (vendor backup; SoftHSMv2 in dev: its token\n"
            "directory) AFTER this command, never before. PIN files, API keys and TLS\n"
            "keys are not copied: keep them in their secret store.\n"
            "Restore: docs/operations.md, \"Backup and restore\".\n");
}

/* Copy src to dst (new, 0600), hashing what was copied. Copies what src
 * holds now; an append-only file may grow meanwhile, and a torn last record
 * is what kmsd's audit log already recovers from at open. */
static kms_err copy_file(const char *src, const char *dst, char hex[65], off_t *out_size)
{
    kms_err rc = KMS_OK;
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    KMS_ENSURE_GOTO(in >= 0, done, KMS_ERR_IO, "%s: %s", src, strerror(errno));
    KMS_ENSURE_GOTO(md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1, done, KMS_ERR_NOMEM,
                    "sha256: out of memory");
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    KMS_ENSURE_GOTO(out >= 0, done, KMS_ERR_IO, "%s: %s", dst, strerror(errno));
    off_t total = 0;
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        KMS_ENSURE_GOTO(n >= 0, done, KMS_ERR_IO, "%s: %s", src, strerror(errno));
        if (n == 0)
            break;
        KMS_ENSURE_GOTO(total + n <= BACKUP_FILE_MAX, done, KMS_ERR_TOO_LARGE,
                        "%s: larger than the backup limit", src);
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            KMS_ENSURE_GOTO(w > 0, done, errno == ENOSPC ? KMS_ERR_NOSPC : KMS_ERR_IO, "%s: %s",
                            dst, strerror(errno));
            off += w;
        }
        EVP_DigestUpdate(md, buf, (size_t)n);
        total += n;
    }
    KMS_ENSURE_GOTO(fsync(out) == 0, done, KMS_ERR_IO, "%s: fsync: %s", dst, strerror(errno));
    uint8_t d[32];
    unsigned dl = 0;
    EVP_DigestFinal_ex(md, d, &dl);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    *out_size = total;
done:
    EVP_MD_CTX_free(md);
    if (out >= 0)
        close(out);
    if (in >= 0)
        close(in);
    return rc;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static kms_err manifest_add(FILE *m, const char *src, const char *dir, const char *rel)
{
    char dst[PATH_MAX], hex[65];
    off_t size = 0;
    KMS_ENSURE((size_t)snprintf(dst, sizeof(dst), "%s/%s", dir, rel) < sizeof(dst),
               KMS_ERR_INVALID_ARGUMENT, "path too long");
    KMS_GUARD(copy_file(src, dst, hex, &size));
    fprintf(m, "%s  %lld  %s\n", hex, (long long)size, rel);
    return KMS_OK;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_ext(const char *name, const char *ext, size_t *out_base)
{
    size_t n = strlen(name), e = strlen(ext);
    if (n <= e + 1 || name[n - e - 1] != '.' || strcmp(name + n - e, ext) != 0)
        return false;
    *out_base = n - e - 1;
    return true;
}

/* kmsd appends to a region's three files while they are copied. Each is
 * copied after the ones it must cover, as kmsd's start-up scan reads them:
 * .heads first (every head it holds was signed after its events were
 * durable and by a key already in .keys), then .keys (every key that signed
 * one of those heads), then .events (every event those heads cover). A
 * later write only adds records the copy does not need; a torn last record
 * is what the scan cuts. Other files (archives) follow. */
static kms_err backup_audit(FILE *m, const char *audit_dir, const char *out, size_t *out_n)
{
    char sub[PATH_MAX];
    snprintf(sub, sizeof(sub), "%s/audit", out);
    KMS_ENSURE(mkdir(sub, 0700) == 0, KMS_ERR_IO, "%s: %s", sub, strerror(errno));
    DIR *d = opendir(audit_dir);
    KMS_ENSURE(d != NULL, KMS_ERR_IO, "audit directory %s: %s", audit_dir, strerror(errno));
    kms_err rc = KMS_OK;
    struct dirent *e;
    char **names = calloc(BACKUP_FILES_MAX, sizeof(*names));
    size_t n = 0;
    *out_n = 0;
    if (names == NULL) {
        closedir(d);
        return kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    while (rc == KMS_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char src[PATH_MAX];
        struct stat st;
        if ((size_t)snprintf(src, sizeof(src), "%s/%s", audit_dir, e->d_name) >= sizeof(src) ||
            lstat(src, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n >= BACKUP_FILES_MAX) {
            rc = kms_err_set(KMS_ERR_TOO_LARGE, "more than %d files in %s", BACKUP_FILES_MAX,
                             audit_dir);
            break;
        }
        names[n] = strdup(e->d_name);
        if (names[n++] == NULL)
            rc = kms_err_set(KMS_ERR_NOMEM, "out of memory");
    }
    closedir(d);
    if (rc == KMS_OK)
        qsort(names, n, sizeof(*names), cmp_name);
    /* Pass 0: heads, 1: keys, 2: events, 3: anything else. A region's three
     * passes run one after the other over all regions: every region's heads
     * are copied before any region's keys, which keeps the order per region. */
    static const char *const exts[3] = {"heads", "keys", "events"};
    for (int pass = 0; pass < 4 && rc == KMS_OK; pass++)
        for (size_t i = 0; i < n && rc == KMS_OK; i++) {
            size_t base = 0;
            int kind = 3;
            for (int k = 0; k < 3 && kind == 3; k++)
                if (has_ext(names[i], exts[k], &base))
                    kind = k;
            if (kind != pass)
                continue;
            char src[PATH_MAX], rel[PATH_MAX];
            snprintf(src, sizeof(src), "%s/%s", audit_dir, names[i]);
            snprintf(rel, sizeof(rel), "audit/%s", names[i]);
            rc = manifest_add(m, src, out, rel);
            (*out_n)++;
        }
    /* The copy must open as kmsd would open it: the same start-up scan, on
     * the copy, read-only (no token needed, nothing changed). */
    for (size_t i = 0; i < n && rc == KMS_OK; i++) {
        size_t base = 0;
        if (!has_ext(names[i], "events", &base) || base >= 64)
            continue;
        char region[64];
        uint64_t events = 0, signed_size = 0;
        snprintf(region, sizeof(region), "%.*s", (int)base, names[i]);
        rc = audit_log_check_files(sub, region, &events, &signed_size);
        if (rc != KMS_OK)
            rc = kms_err_set(rc, "the copied audit log of region %s would not open: %s", region,
                             kms_err_detail());
        else
            printf("audit log of region %s: %" PRIu64 " events, signed to %" PRIu64
                   ", checked\n", region, events, signed_size);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int run_backup(const char *config, const char *out)
{
    struct kms_config *cfg = NULL;
    FILE *m = NULL;
    char path[PATH_MAX], store_id[33] = "", backup_of[33] = "";
    kms_err rc = kms_config_load(config, &cfg);
    if (rc != KMS_OK) {
        fprintf(stderr, "kmsctl backup: %s: %s\n", config, kms_err_detail());
        return 1;
    }
    if (cfg->store_path == NULL) {
        fprintf(stderr, "kmsctl backup: the store is on PostgreSQL: back it up with "
                        "PostgreSQL's own tools (pg_dump, base backups; docs/fleet.md)\n");
        kms_config_free(cfg);
        return 1;
    }
    mode_t old = umask(077);
    if (mkdir(out, 0700) != 0) {
        fprintf(stderr, "kmsctl backup: %s: %s (the directory must not exist)\n", out,
                strerror(errno));
        rc = KMS_ERR_IO;
        goto done;
    }
    snprintf(path, sizeof(path), "%s/MANIFEST", out);
    m = fopen(path, "wx");
    KMS_ENSURE_GOTO(m != NULL, done, KMS_ERR_IO, "%s: %s", path, strerror(errno));
    int64_t now = (int64_t)time(NULL);
    /* 1. The store first. */
    const char *db = base_name(cfg->store_path);
    KMS_ENSURE_GOTO((size_t)snprintf(path, sizeof(path), "%s/%s", out, db) < sizeof(path), done,
                    KMS_ERR_INVALID_ARGUMENT, "path too long");
    KMS_GUARD_GOTO(kms_store_snapshot(cfg->store_path, path, now, store_id, backup_of), done);
    /* 2. Then the audit logs: they cover everything the store copy has. */
    size_t n_audit = 0;
    if (cfg->audit_enabled)
        KMS_GUARD_GOTO(backup_audit(m, cfg->audit_dir, out, &n_audit), done);
    /* 3. Configuration and policy. */
    KMS_GUARD_GOTO(manifest_add(m, config, out, base_name(config)), done);
    KMS_GUARD_GOTO(manifest_add(m, cfg->policy_path, out, base_name(cfg->policy_path)), done);
    fprintf(m, "# store %s: store_id %s, a backup of store %s taken at %" PRId64
               " (unix time)\n# order: store, then audit logs; back up the HSM tokens now\n",
            db, store_id, backup_of, now);
    KMS_ENSURE_GOTO(fflush(m) == 0 && fsync(fileno(m)) == 0, done, KMS_ERR_IO,
                    "MANIFEST: %s", strerror(errno));
    printf("backup in %s: store %s (store_id %s, a backup of %s), %zu audit file(s), "
           "configuration and policy\n"
           "now back up the HSM tokens (vendor backup; SoftHSMv2: its token directory)\n",
           out, db, store_id, backup_of, n_audit);
done:
    if (m)
        fclose(m);
    umask(old);
    if (rc != KMS_OK)
        fprintf(stderr, "kmsctl backup: %s\n", kms_err_detail());
    kms_config_free(cfg);
    return rc == KMS_OK ? 0 : rc == KMS_ERR_IO || rc == KMS_ERR_NOSPC ? 4 : 1;
}

int kmsctl_backup_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = kms_config_default_path(), *out = NULL;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'h':
            backup_usage(stdout);
            return 0;
        default:
            backup_usage(stderr);
            return 2;
        }
    }
    if (out == NULL || optind != argc) {
        backup_usage(stderr);
        return 2;
    }
    return run_backup(config, out);
}
