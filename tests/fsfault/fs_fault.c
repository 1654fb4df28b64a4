/*
 * fs_fault.c - an LD_PRELOAD interposer for tests that fails fsync() and
 * fdatasync() the way a failing disk does, on chosen files, as a control
 * file says ($CUSTOS_FSFAULT_CONTROL):
 *
 *   # comment
 *   fdatasync .events EIO count=1           next fdatasync of a *.events file: EIO, once
 *   fsync audit/ ENOSPC after=3 count=2     4th and 5th fsync of a file under audit/
 *   any eu-west EIO                         every fsync and fdatasync of such files
 *
 * A line is CALL SUBSTRING ERRNO [after=N] [count=N]: CALL is fsync,
 * fdatasync or any; SUBSTRING must occur in the path of the descriptor
 * (readlink of /proc/self/fd/N); ERRNO is EIO, ENOSPC, EDQUOT or EROFS. The
 * rule lets its first `after` matching calls through, then fails the next
 * `count` (0 or absent: every one). A failed call does not call the real
 * one: what happened to the data is unknown, as after a real write-back
 * error. Each injected failure is reported on stderr
 * ("fs_fault: fdatasync(PATH) -> EIO"), so a test can count them.
 *
 * The file is re-read when its mtime, size or inode changes (checked on
 * every fsync/fdatasync: they are rare and slow anyway); rewriting it
 * resets every rule's counters; no file means no faults.
 *
 * Build: make builds $(BUILD)/lib/fs_fault.so. Under AddressSanitizer the
 * interposer must come after the sanitizer's runtime: the tests set
 * ASAN_OPTIONS=verify_asan_link_order=0 (tests/e2e/test_audit_eio.sh).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RULES_MAX 16
#define LINE_MAX_ 512

enum call { CALL_FSYNC = 1, CALL_FDATASYNC = 2, CALL_ANY = 3 };

struct rule {
    int calls; /* enum call bits */
    char match[256];
    int err;
    unsigned long after, count, seen, fired;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[RULES_MAX];
static size_t n_rules;
static struct stat loaded;
static int present;

static int parse_errno(const char *s)
{
    if (strcmp(s, "EIO") == 0)
        return EIO;
    if (strcmp(s, "ENOSPC") == 0)
        return ENOSPC;
    if (strcmp(s, "EDQUOT") == 0)
        return EDQUOT;
    if (strcmp(s, "EROFS") == 0)
        return EROFS;
    return 0;
}

static int parse_num(const char *s, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return 0;
    *out = v;
    return 1;
}

static int parse_rule(char *line, struct rule *r)
{
    memset(r, 0, sizeof(*r));
    char *save = NULL;
    char *call = strtok_r(line, " \t", &save);
    char *match = strtok_r(NULL, " \t", &save);
    char *err = strtok_r(NULL, " \t", &save);
    if (call == NULL || match == NULL || err == NULL)
        return 0;
    if (strcmp(call, "fsync") == 0)
        r->calls = CALL_FSYNC;
    else if (strcmp(call, "fdatasync") == 0)
        r->calls = CALL_FDATASYNC;
    else if (strcmp(call, "any") == 0)
        r->calls = CALL_ANY;
    else
        return 0;
    if (strlen(match) >= sizeof(r->match) || (r->err = parse_errno(err)) == 0)
        return 0;
    strcpy(r->match, match);
    char *tok;
    while ((tok = strtok_r(NULL, " \t", &save)) != NULL) {
        if (strncmp(tok, "after=", 6) == 0 && parse_num(tok + 6, &r->after))
            continue;
        if (strncmp(tok, "count=", 6) == 0 && parse_num(tok + 6, &r->count))
            continue;
        return 0;
    }
    return 1;
}

/* Called with the lock held. */
static void maybe_reload(void)
{
    const char *path = getenv("CUSTOS_FSFAULT_CONTROL");
    struct stat st;
    int now = path != NULL && stat(path, &st) == 0;
    if (now == present && (!now || (st.st_ino == loaded.st_ino && st.st_size == loaded.st_size &&
                                    st.st_mtim.tv_sec == loaded.st_mtim.tv_sec &&
                                    st.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec)))
        return;
    present = now;
    n_rules = 0;
    if (!now)
        return;
    loaded = st;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    char line[LINE_MAX_];
    unsigned lineno = 0;
    while (fgets(line, sizeof(line), f) && n_rules < RULES_MAX) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        char *p = line + strspn(line, " \t");
        if (*p == '\0' || *p == '#')
            continue;
        if (parse_rule(p, &rules[n_rules]))
            n_rules++;
        else
            fprintf(stderr, "fs_fault: %s:%u: line ignored\n", path, lineno);
    }
    fclose(f);
}

/* The errno to fail this call with, or 0 to let it through. */
static int fault(int fd, enum call call, const char *name)
{
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    int err = 0;
    pthread_mutex_lock(&lock);
    maybe_reload();
    for (size_t i = 0; i < n_rules && err == 0; i++) {
        struct rule *r = &rules[i];
        if (!(r->calls & (int)call) || strstr(path, r->match) == NULL)
            continue;
        if (++r->seen <= r->after)
            continue;
        if (r->count != 0 && r->fired >= r->count)
            continue;
        r->fired++;
        err = r->err;
    }
    pthread_mutex_unlock(&lock);
    if (err != 0)
        fprintf(stderr, "fs_fault: %s(%s) -> %s\n", name, path, strerror(err));
    return err;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int err = fault(fd, CALL_FSYNC, "fsync");
    if (err != 0) {
        errno = err;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int err = fault(fd, CALL_FDATASYNC, "fdatasync");
    if (err != 0) {
        errno = err;
        return -1;
    }
    return real(fd);
}
