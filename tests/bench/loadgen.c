/*
 * loadgen.c - the HTTP/1.1 load generator of the soak (tests/bench/soak.py)
 * and of anyone measuring kmsd without wrk: one thread, epoll, non-blocking
 * keep-alive connections, each posting the same protobuf body.
 *
 *   loadgen --port P --path /twirp/... --body FILE --key-file FILE
 *   loadgen --port P --path PATH --body FILE --head-file FILE (header lines
 *           sent instead of Content-Type and Authorization: a pre-signed
 *           SigV4 request, tests/bench/bench_xks.py)
 *           [--host 127.0.0.1] [-c CONNS] [-d SECONDS] [-R RATE]
 *           [--hostile PERMILLE] [--timeout SECONDS] [--label TEXT]
 *
 * Without -R the loop is closed: each connection sends its next request as
 * soon as the answer to the previous one is read. With -R the loop is open
 * (wrk2's constant rate): request i is due at start + i/RATE whatever the
 * server does, is sent on the first idle connection, and its latency is
 * measured from when it was due, so a stalled server is charged for the
 * requests that queued behind the stall (coordinated omission counted).
 *
 * --hostile N makes N per mille of all requests hostile, each on a fresh
 * connection of its own (Connection: close), so honest keep-alive
 * connections never carry one and honest figures are not disturbed by the
 * way kmsd ends a hostile connection. The shapes take turns; whether kmsd
 * audits a shape is the caller's business (soak.py documents it).
 *
 * The API key is read from --key-file, never argv; it is copied into the
 * request bytes only and both copies are wiped before exit.
 *
 * Prints one JSON object on stdout: honest requests, throughput, latency
 * percentiles, status counts, transport errors, hostile outcomes by shape.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000ULL

/* ---- latency histogram ------------------------------------------------------------------
 * Log-linear over microseconds: values below 64 exactly, then 32 linear
 * buckets per power of two (about 3 % resolution) up to 2^41 us. A fixed
 * array: recording never allocates. */
enum { HIST_SUB = 32, HIST_MAX_MAG = 40, HIST_N = 64 + (HIST_MAX_MAG - 6 + 1) * HIST_SUB };

struct hist {
    uint64_t b[HIST_N];
    uint64_t n;
    uint64_t max_us;
};

static size_t hist_index(uint64_t us)
{
    if (us < 64)
        return (size_t)us;
    unsigned m = 63u - (unsigned)__builtin_clzll(us);
    if (m > HIST_MAX_MAG)
        return HIST_N - 1;
    return 64 + (size_t)(m - 6) * HIST_SUB + (size_t)((us >> (m - 5)) - 32);
}

/* The largest value a bucket holds: percentiles are never optimistic. */
static uint64_t hist_upper(size_t i)
{
    if (i < 64)
        return i;
    size_t j = i - 64;
    unsigned m = 6 + (unsigned)(j / HIST_SUB);
    uint64_t lower = (uint64_t)(32 + j % HIST_SUB) << (m - 5);
    return lower + (1ULL << (m - 5)) - 1;
}

static void hist_add(struct hist *h, uint64_t us)
{
    h->b[hist_index(us)]++;
    h->n++;
    if (us > h->max_us)
        h->max_us = us;
}

static double hist_pct_ms(const struct hist *h, double p)
{
    if (h->n == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)h->n + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_N; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_upper(i);
            return (double)(v < h->max_us ? v : h->max_us) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

/* ---- configuration and counters ---------------------------------------------------------- */

enum shape {
    SHAPE_MALFORMED, /* honest headers, a body that is not protobuf */
    SHAPE_BAD_PATH,  /* a Twirp method that does not exist */
    SHAPE_HUGE_LEN,  /* Content-Length: 10 GiB, no body */
    SHAPE_DUP_LEN,   /* two different Content-Length headers */
    SHAPE_BAD_AUTH,  /* a bearer key nobody has */
    SHAPE_COUNT
};
static const char *const shape_name[SHAPE_COUNT] = {
    "malformed_protobuf", "bad_path", "oversized_content_length", "duplicate_content_length",
    "bad_auth"};

enum terr { TE_CONNECT, TE_RESET, TE_EOF, TE_TIMEOUT, TE_PARSE, TE_UNFINISHED, TE_COUNT };
static const char *const terr_name[TE_COUNT] = {"connect", "reset", "eof", "timeout",
                                                "parse", "unfinished"};

enum { MAX_STATUS = 600, HOSTILE_SLOTS = 4, RBUF = 16384 };

struct shape_stats {
    uint64_t sent;
    uint64_t status[MAX_STATUS];
    uint64_t err[TE_COUNT];
};

static struct {
    const char *host, *path, *body_file, *key_file, *head_file, *label;
    unsigned port, conns, seconds, hostile_permille, timeout_s;
    double rate; /* 0: closed loop */
} opt = {.host = "127.0.0.1", .conns = 16, .seconds = 10, .timeout_s = 30, .label = ""};

static struct {
    uint64_t sent, done, missed, idle_closed;
    uint64_t status[MAX_STATUS];
    uint64_t err[TE_COUNT];
    struct hist lat;
    struct shape_stats shape[SHAPE_COUNT];
    uint64_t hostile_started;
} st;

/* ---- connections ------------------------------------------------------------------------ */

enum cstate { C_CLOSED, C_CONNECTING, C_IDLE, C_SENDING, C_READING };

struct conn {
    int fd;
    bool hostile;
    enum cstate state;
    int shape;
    const char *req;
    size_t req_len, sent;
    char buf[RBUF];
    size_t blen;
    bool head_done, close_after;
    unsigned status;
    uint64_t body_left;
    uint64_t due_ns;      /* latency origin: when the request was due */
    uint64_t deadline_ns; /* transport timeout of the request or connect */
};

static int ep = -1;
static struct sockaddr_in addr;
static char *honest_req, *hostile_req[SHAPE_COUNT];
static size_t honest_len, hostile_len[SHAPE_COUNT];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        die("epoll_ctl MOD failed");
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_CLOSED;
}

static bool conn_open(struct conn *c, uint64_t now)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return false;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int rc = connect(c->fd, (struct sockaddr *)&addr, sizeof(addr));
    if (rc != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl ADD failed");
    c->state = C_CONNECTING;
    c->deadline_ns = now + (uint64_t)opt.timeout_s * NS;
    return true;
}

static void start_send(struct conn *c, const char *req, size_t len, uint64_t due, uint64_t now)
{
    c->req = req;
    c->req_len = len;
    c->sent = 0;
    c->blen = 0;
    c->head_done = false;
    c->close_after = false;
    c->body_left = 0;
    c->due_ns = due;
    c->deadline_ns = now + (uint64_t)opt.timeout_s * NS;
    c->state = C_SENDING;
    watch(c, EPOLLOUT | EPOLLIN | EPOLLRDHUP);
}

/* A request ended without an answer. Honest connections reconnect; a
 * hostile one is finished. */
static void fail(struct conn *c, enum terr e, uint64_t now)
{
    if (c->hostile)
        st.shape[c->shape].err[e]++;
    else
        st.err[e]++;
    conn_close(c);
    if (!c->hostile && !conn_open(c, now))
        st.err[TE_CONNECT]++;
}

/* ---- response parsing ------------------------------------------------------------------- */

/* Parses the head once it is complete; false on a malformed response. */
static bool parse_head(struct conn *c, size_t head_len)
{
    if (head_len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0)
        return false;
    unsigned s = 0;
    for (int i = 9; i < 12; i++) {
        if (c->buf[i] < '0' || c->buf[i] > '9')
            return false;
        s = s * 10 + (unsigned)(c->buf[i] - '0');
    }
    c->status = s;
    bool have_len = false;
    const char *p = memchr(c->buf, '\n', head_len);
    const char *end = c->buf + head_len;
    while (p != NULL && p + 1 < end) {
        const char *line = p + 1;
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (nl == NULL)
            break;
        size_t n = (size_t)(nl - line);
        if (n >= 15 && strncasecmp(line, "content-length:", 15) == 0) {
            char *e;
            unsigned long long v = strtoull(line + 15, &e, 10);
            if (e == line + 15)
                return false;
            c->body_left = v;
            have_len = true;
        } else if (n >= 17 && strncasecmp(line, "transfer-encoding:", 17) == 0) {
            return false; /* kmsd answers with a length; anything else is a finding */
        } else if (n >= 11 && strncasecmp(line, "connection:", 11) == 0 &&
                   memmem(line, n, "close", 5) != NULL) {
            c->close_after = true;
        }
        p = nl;
    }
    if (!have_len)
        c->body_left = 0;
    return true;
}

static void dispatch_hostile(uint64_t now);

static void response_done(struct conn *c, uint64_t now)
{
    unsigned s = c->status < MAX_STATUS ? c->status : 0;
    if (c->hostile) {
        st.shape[c->shape].status[s]++;
        conn_close(c);
        dispatch_hostile(now);
        return;
    }
    st.done++;
    st.status[s]++;
    hist_add(&st.lat, (now - c->due_ns) / 1000);
    if (c->close_after) {
        conn_close(c);
        if (!conn_open(c, now))
            st.err[TE_CONNECT]++;
        return;
    }
    c->state = C_IDLE;
    watch(c, EPOLLIN | EPOLLRDHUP);
}

static void on_readable(struct conn *c, uint64_t now)
{
    for (;;) {
        if (c->head_done) {
            /* Body bytes are only counted: the answer's content is not
             * checked here (the soak checks status codes and the log). */
            char sink[RBUF];
            ssize_t r = recv(c->fd, sink, sizeof(sink), 0);
            if (r == 0) {
                fail(c, TE_EOF, now);
                return;
            }
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail(c, TE_RESET, now);
                return;
            }
            if ((uint64_t)r > c->body_left) {
                fail(c, TE_PARSE, now); /* bytes nobody asked for */
                return;
            }
            c->body_left -= (uint64_t)r;
            if (c->body_left == 0) {
                response_done(c, now);
                return;
            }
            continue;
        }
        if (c->blen == sizeof(c->buf)) {
            fail(c, TE_PARSE, now); /* a head larger than any kmsd sends */
            return;
        }
        ssize_t r = recv(c->fd, c->buf + c->blen, sizeof(c->buf) - c->blen, 0);
        if (r == 0) {
            if (c->state == C_IDLE && !c->hostile) {
                /* The server closed an idle keep-alive connection (its
                 * idle timeout): not an error, reconnect. */
                st.idle_closed++;
                conn_close(c);
                if (!conn_open(c, now))
                    st.err[TE_CONNECT]++;
                return;
            }
            fail(c, TE_EOF, now);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fail(c, TE_RESET, now);
            return;
        }
        if (c->state == C_IDLE) {
            fail(c, TE_PARSE, now); /* an answer to nothing */
            return;
        }
        c->blen += (size_t)r;
        char *e = memmem(c->buf, c->blen, "\r\n\r\n", 4);
        if (e == NULL)
            continue;
        size_t head_len = (size_t)(e - c->buf) + 4;
        if (!parse_head(c, head_len)) {
            fail(c, TE_PARSE, now);
            return;
        }
        c->head_done = true;
        size_t extra = c->blen - head_len;
        if (extra > c->body_left) {
            fail(c, TE_PARSE, now);
            return;
        }
        c->body_left -= extra;
        if (c->body_left == 0) {
            response_done(c, now);
            return;
        }
    }
}

static void on_writable(struct conn *c, uint64_t now)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0) {
            fail(c, TE_CONNECT, now);
            return;
        }
        /* A stale event of a descriptor closed earlier in the same epoll
         * batch can reach the new one while it still connects. */
        struct sockaddr_in peer;
        socklen_t pl = sizeof(peer);
        if (getpeername(c->fd, (struct sockaddr *)&peer, &pl) != 0)
            return;
        if (c->hostile) {
            start_send(c, hostile_req[c->shape], hostile_len[c->shape], now, now);
        } else {
            c->state = C_IDLE;
            watch(c, EPOLLIN | EPOLLRDHUP);
            return;
        }
    }
    if (c->state != C_SENDING)
        return;
    while (c->sent < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* A hostile request may be answered and closed before all of it
             * is sent (a refused header block): read what came back. */
            if (c->hostile) {
                c->state = C_READING;
                on_readable(c, now);
                return;
            }
            fail(c, TE_RESET, now);
            return;
        }
        c->sent += (size_t)w;
    }
    c->state = C_READING;
    watch(c, EPOLLIN | EPOLLRDHUP);
}

/* ---- scheduling ------------------------------------------------------------------------- */

static struct conn *honest;
static struct conn hostile_conn[HOSTILE_SLOTS];
static uint64_t t0, t_end;
static bool stopping;

/* Hostile requests follow the honest ones: after k honest sends, k * N /
 * (1000 - N) hostile ones have been started, so they are N per mille of all. */
static void dispatch_hostile(uint64_t now)
{
    if (opt.hostile_permille == 0 || stopping)
        return;
    uint64_t due = st.sent * opt.hostile_permille / (1000 - opt.hostile_permille);
    for (int i = 0; i < HOSTILE_SLOTS && st.hostile_started < due; i++) {
        struct conn *c = &hostile_conn[i];
        if (c->state != C_CLOSED)
            continue;
        c->hostile = true;
        c->shape = (int)(st.hostile_started % SHAPE_COUNT);
        st.shape[c->shape].sent++;
        st.hostile_started++;
        if (!conn_open(c, now)) {
            st.shape[c->shape].err[TE_CONNECT]++;
            conn_close(c);
        }
    }
}

/* Open loop: request i is due at t0 + i / rate. */
static uint64_t due_of(uint64_t i)
{
    return t0 + (uint64_t)((double)i * 1e9 / opt.rate);
}

/* Sends what is due on idle connections; returns when the next request is
 * due (0 if no idle connection is waiting for one). */
static uint64_t dispatch(uint64_t now)
{
    if (stopping)
        return 0;
    for (unsigned i = 0; i < opt.conns; i++) {
        struct conn *c = &honest[i];
        if (c->state == C_CLOSED && !conn_open(c, now)) {
            st.err[TE_CONNECT]++;
            continue;
        }
        if (c->state != C_IDLE)
            continue;
        uint64_t due = now;
        if (opt.rate > 0) {
            due = due_of(st.sent);
            if (due > now)
                break;
        }
        start_send(c, honest_req, honest_len, due, now);
        st.sent++;
        on_writable(c, now);
    }
    dispatch_hostile(now);
    return opt.rate > 0 ? due_of(st.sent) : 0;
}

static void check_timeouts(uint64_t now)
{
    for (unsigned i = 0; i < opt.conns; i++) {
        struct conn *c = &honest[i];
        if ((c->state == C_SENDING || c->state == C_READING || c->state == C_CONNECTING) &&
            now > c->deadline_ns)
            fail(c, c->state == C_CONNECTING ? TE_CONNECT : TE_TIMEOUT, now);
    }
    for (int i = 0; i < HOSTILE_SLOTS; i++) {
        struct conn *c = &hostile_conn[i];
        if (c->state != C_CLOSED && now > c->deadline_ns)
            fail(c, TE_TIMEOUT, now);
    }
}

static unsigned inflight(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < opt.conns; i++)
        n += honest[i].state == C_SENDING || honest[i].state == C_READING;
    for (int i = 0; i < HOSTILE_SLOTS; i++)
        n += hostile_conn[i].state != C_CLOSED;
    return n;
}

/* ---- setup ------------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t max, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *b = malloc(max + 1);
    if (b == NULL)
        die("out of memory");
    size_t n = fread(b, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        free(b);
        return NULL;
    }
    b[n] = '\0';
    *out_len = n;
    return b;
}

/* --head-file: header lines sent instead of Content-Type and Authorization
 * (e.g. a SigV4-signed XKS request: tests/bench/bench_xks.py). */
static char *head_lines;

static char *build(const char *path, const char *auth, const char *extra, const char *body,
                   size_t body_len, bool with_len, size_t *out_len)
{
    char head[8192];
    int n = head_lines != NULL
                ? snprintf(head, sizeof(head), "POST %s HTTP/1.1\r\nHost: %s:%u\r\n%s%s", path,
                           opt.host, opt.port, head_lines, extra)
                : snprintf(head, sizeof(head),
                           "POST %s HTTP/1.1\r\nHost: %s:%u\r\nContent-Type: "
                           "application/protobuf\r\nAuthorization: Bearer %s\r\n%s",
                           path, opt.host, opt.port, auth, extra);
    if (n < 0 || (size_t)n >= sizeof(head))
        die("request head too long");
    if (with_len) {
        int m = snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n", body_len);
        if (m < 0 || (size_t)m >= sizeof(head) - (size_t)n)
            die("request head too long");
        n += m;
    }
    if ((size_t)n + 2 >= sizeof(head))
        die("request head too long");
    memcpy(head + n, "\r\n", 2);
    n += 2;
    char *r = malloc((size_t)n + body_len);
    if (r == NULL)
        die("out of memory");
    memcpy(r, head, (size_t)n);
    if (body_len)
        memcpy(r + n, body, body_len);
    explicit_bzero(head, sizeof(head)); /* it held the API key */
    *out_len = (size_t)n + body_len;
    return r;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port P --path PATH --body FILE (--key-file FILE | --head-file FILE)\n"
            "               [--host H] [-c CONNS] [-d SECONDS] [-R RATE] [--hostile PERMILLE]\n"
            "               [--timeout SECONDS] [--label TEXT]\n");
    exit(2);
}

static unsigned long num(const char *s, unsigned long lo, unsigned long hi)
{
    char *e;
    errno = 0;
    unsigned long v = strtoul(s, &e, 10);
    if (errno || e == s || *e || v < lo || v > hi)
        usage();
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", required_argument, NULL, 'h'},     {"port", required_argument, NULL, 'p'},
        {"path", required_argument, NULL, 'P'},     {"body", required_argument, NULL, 'b'},
        {"key-file", required_argument, NULL, 'k'}, {"hostile", required_argument, NULL, 'H'},
        {"label", required_argument, NULL, 'l'},    {"timeout", required_argument, NULL, 't'},
        {"head-file", required_argument, NULL, 'F'}, {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:d:R:", lo, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = (unsigned)num(optarg, 1, 65535); break;
        case 'P': opt.path = optarg; break;
        case 'b': opt.body_file = optarg; break;
        case 'k': opt.key_file = optarg; break;
        case 'F': opt.head_file = optarg; break;
        case 'H': opt.hostile_permille = (unsigned)num(optarg, 0, 500); break;
        case 'l': opt.label = optarg; break;
        case 't': opt.timeout_s = (unsigned)num(optarg, 1, 3600); break;
        case 'c': opt.conns = (unsigned)num(optarg, 1, 10000); break;
        case 'd': opt.seconds = (unsigned)num(optarg, 1, 30 * 86400); break;
        case 'R': opt.rate = (double)num(optarg, 1, 10000000); break;
        default: usage();
        }
    }
    if (optind != argc || opt.port == 0 || !opt.path || !opt.body_file ||
        !(opt.key_file || opt.head_file))
        usage();
    for (const char *s = opt.label; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20)
            die("--label: no quotes, backslashes or control characters");
}

static void setup_requests(void)
{
    size_t body_len, key_len;
    char *body = read_file(opt.body_file, 16 * 1024 * 1024, &body_len);
    if (body == NULL)
        die("cannot read --body (missing or over 16 MiB)");
    if (opt.head_file != NULL) {
        size_t hl;
        head_lines = read_file(opt.head_file, 6144, &hl);
        if (head_lines == NULL || hl < 2 || memcmp(head_lines + hl - 2, "\r\n", 2) != 0)
            die("--head-file: header lines, each ending in CRLF, at most 6 KiB");
    }
    char *key = opt.key_file ? read_file(opt.key_file, 4096, &key_len) : strdup("unused");
    key_len = opt.key_file ? key_len : 6;
    if (key == NULL)
        die("cannot read --key-file");
    while (key_len && (key[key_len - 1] == '\n' || key[key_len - 1] == '\r' ||
                       key[key_len - 1] == ' '))
        key[--key_len] = '\0';
    for (size_t i = 0; i < key_len; i++)
        if ((unsigned char)key[i] <= 0x20 || (unsigned char)key[i] >= 0x7f)
            die("--key-file: the key must be one line of printable ASCII");
    if (key_len == 0)
        die("--key-file is empty");

    honest_req = build(opt.path, key, "", body, body_len, true, &honest_len);
    static const char junk[] = "\xff\xff\xff\xff";
    hostile_req[SHAPE_MALFORMED] = build(opt.path, key, "Connection: close\r\n", junk, 4, true,
                                         &hostile_len[SHAPE_MALFORMED]);
    hostile_req[SHAPE_BAD_PATH] =
        build("/twirp/custos.v1.KeyService/NoSuchMethod", key, "Connection: close\r\n", body,
              body_len, true, &hostile_len[SHAPE_BAD_PATH]);
    hostile_req[SHAPE_HUGE_LEN] =
        build(opt.path, key, "Connection: close\r\nContent-Length: 10737418240\r\n", "", 0, false,
              &hostile_len[SHAPE_HUGE_LEN]);
    hostile_req[SHAPE_DUP_LEN] =
        build(opt.path, key, "Connection: close\r\nContent-Length: 5\r\nContent-Length: 7\r\n",
              "0123456", 7, false, &hostile_len[SHAPE_DUP_LEN]);
    /* A well-formed key nobody holds: refused by the credential check. */
    hostile_req[SHAPE_BAD_AUTH] =
        build(opt.path, "custos-loadgen-not-a-key-0000000000000000", "Connection: close\r\n", body,
              body_len, true, &hostile_len[SHAPE_BAD_AUTH]);
    explicit_bzero(key, key_len);
    free(key);
    free(body);
}

static void wipe_requests(void)
{
    explicit_bzero(honest_req, honest_len);
    free(honest_req);
    for (int i = 0; i < SHAPE_COUNT; i++) {
        explicit_bzero(hostile_req[i], hostile_len[i]);
        free(hostile_req[i]);
    }
    if (head_lines != NULL) {
        explicit_bzero(head_lines, strlen(head_lines));
        free(head_lines);
    }
}

/* ---- report ----------------------------------------------------------------------------- */

static void print_status(const uint64_t *s)
{
    bool first = true;
    printf("{");
    for (int i = 0; i < MAX_STATUS; i++)
        if (s[i]) {
            printf("%s\"%d\": %" PRIu64, first ? "" : ", ", i, s[i]);
            first = false;
        }
    printf("}");
}

static void print_errs(const uint64_t *e)
{
    uint64_t total = 0;
    printf("{");
    for (int i = 0; i < TE_COUNT; i++) {
        printf("\"%s\": %" PRIu64 ", ", terr_name[i], e[i]);
        total += e[i];
    }
    printf("\"total\": %" PRIu64 "}", total);
}

static void report(double elapsed)
{
    printf("{\"label\": \"%s\", \"mode\": \"%s\", \"rate\": %.0f, \"connections\": %u, "
           "\"duration_s\": %.3f,\n",
           opt.label, opt.rate > 0 ? "open" : "closed", opt.rate, opt.conns, elapsed);
    printf(" \"requests\": %" PRIu64 ", \"sent\": %" PRIu64 ", \"missed\": %" PRIu64
           ", \"throughput\": %.1f,\n",
           st.done, st.sent, st.missed, (double)st.done / elapsed);
    printf(" \"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
           "\"max\": %.3f},\n",
           hist_pct_ms(&st.lat, 0.50), hist_pct_ms(&st.lat, 0.90), hist_pct_ms(&st.lat, 0.99),
           hist_pct_ms(&st.lat, 0.999), (double)st.lat.max_us / 1000.0);
    printf(" \"status\": ");
    print_status(st.status);
    printf(",\n \"transport_errors\": ");
    print_errs(st.err);
    printf(",\n \"idle_closed\": %" PRIu64 ",\n \"hostile\": {\"permille\": %u, \"sent\": %" PRIu64
           ", \"shapes\": {",
           st.idle_closed, opt.hostile_permille, st.hostile_started);
    for (int i = 0; i < SHAPE_COUNT; i++) {
        printf("%s\n   \"%s\": {\"sent\": %" PRIu64 ", \"status\": ", i ? "," : "", shape_name[i],
               st.shape[i].sent);
        print_status(st.shape[i].status);
        printf(", \"errors\": ");
        print_errs(st.shape[i].err);
        printf("}");
    }
    printf("}}}\n");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
        die("--host must be an IPv4 address");
    setup_requests();

    ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ep < 0 || tfd < 0)
        die("epoll or timerfd");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) != 0)
        die("epoll_ctl timerfd");
    honest = calloc(opt.conns, sizeof(*honest));
    if (honest == NULL)
        die("out of memory");
    for (unsigned i = 0; i < opt.conns; i++)
        honest[i].fd = -1;
    for (int i = 0; i < HOSTILE_SLOTS; i++)
        hostile_conn[i].fd = -1;

    uint64_t now = now_ns();
    for (unsigned i = 0; i < opt.conns; i++)
        if (!conn_open(&honest[i], now))
            st.err[TE_CONNECT]++;
    /* Connections are opened before the clock starts, so the first
     * requests are not charged for the handshakes. */
    for (int spins = 0; spins < 1000; spins++) {
        unsigned ready = 0;
        for (unsigned i = 0; i < opt.conns; i++)
            ready += honest[i].state == C_IDLE;
        if (ready == opt.conns)
            break;
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++)
            if (evs[i].data.ptr)
                on_writable(evs[i].data.ptr, now_ns());
    }

    t0 = now_ns();
    t_end = t0 + (uint64_t)opt.seconds * NS;
    /* In-flight requests get their own timeout to finish after the end. */
    uint64_t drain_end = 0;
    struct epoll_event evs[256];
    for (;;) {
        now = now_ns();
        if (!stopping && now >= t_end) {
            stopping = true;
            drain_end = now + (uint64_t)opt.timeout_s * NS;
            if (opt.rate > 0) {
                uint64_t owed = (uint64_t)((double)(t_end - t0) / 1e9 * opt.rate);
                st.missed = owed > st.sent ? owed - st.sent : 0;
            }
        }
        uint64_t next = dispatch(now);
        check_timeouts(now);
        if (stopping && inflight() == 0)
            break;
        if (stopping && now > drain_end) {
            for (unsigned i = 0; i < opt.conns; i++)
                if (honest[i].state == C_SENDING || honest[i].state == C_READING)
                    st.err[TE_UNFINISHED]++;
            for (int i = 0; i < HOSTILE_SLOTS; i++)
                if (hostile_conn[i].state != C_CLOSED)
                    st.shape[hostile_conn[i].shape].err[TE_UNFINISHED]++;
            break;
        }
        /* Wake at the next due time (ns precision through the timerfd), and
         * at least every 10 ms for timeouts and the end. */
        int wait_ms = 10;
        if (next > now && next - now < 10 * 1000000ULL) {
            struct itimerspec its = {.it_value = {.tv_sec = (time_t)(next / NS),
                                                  .tv_nsec = (long)(next % NS)}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        if (!stopping && t_end > now && t_end - now < 10 * 1000000ULL)
            wait_ms = (int)((t_end - now) / 1000000ULL) + 1;
        int n = epoll_wait(ep, evs, 256, wait_ms);
        now = now_ns();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
                    die("timerfd read");
                continue;
            }
            if (c->state == C_CLOSED)
                continue; /* closed by an earlier event of this batch */
            if (evs[i].events & (EPOLLOUT | EPOLLERR))
                on_writable(c, now);
            if (c->state != C_CLOSED && c->fd >= 0 &&
                (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) &&
                c->state != C_CONNECTING)
                on_readable(c, now);
        }
    }
    double elapsed = (double)(t_end - t0) / 1e9;
    for (unsigned i = 0; i < opt.conns; i++)
        conn_close(&honest[i]);
    for (int i = 0; i < HOSTILE_SLOTS; i++)
        conn_close(&hostile_conn[i]);
    report(elapsed);
    wipe_requests();
    free(honest);
    close(tfd);
    close(ep);
    return 0;
}
