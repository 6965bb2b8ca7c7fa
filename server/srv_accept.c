/* srv_accept.c: the front door: accept, hold until the request head is complete, check its
 * framing, hand over to libmicrohttpd (see srv_accept.h). One thread, one epoll set. */
#include "srv_accept.h"
#include "srv_id.h"
#include "srv_job.h"
#include "srv_request.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX     SRV_HEAD_MAX
#define LINGER_S     2.0 /* after an error answer, how long the rest of the request is drained */
#define OVER_SHARE_S 1.0 /* head deadline past max_connections_per_ip heads from one address */
#define TAG_LISTEN   0
#define TAG_STOP     1
#define TAG_FIRST    2 /* epoll tags from here on are entry index + TAG_FIRST */

/* A connection whose request head has not fully arrived, or one answered here and draining. */
typedef struct entry {
    int fd; /* -1: free */
    int closing;
    double deadline;
    double t0;
    struct sockaddr_storage addr;
    socklen_t alen;
} entry;

struct srv_accept {
    srv_door_ops ops;
    int listen_fd, ep, stop_fd, port;
    int n_max, per_ip, max_body;
    double read_timeout;
    entry *e;
    pthread_t thread;
    char head[HEAD_MAX];
};

/* ---- entries ---- */

static int same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET)
        return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                       &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr));
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return 0;
}

static void drop(srv_accept *a, entry *x) {
    epoll_ctl(a->ep, EPOLL_CTL_DEL, x->fd, NULL);
    close(x->fd);
    x->fd = -1;
}

/* A place for a new connection from addr; *over says that its address already holds its share
 * of heads in progress. When all places are taken the oldest connection is closed: under a
 * flood of slow heads a new client still gets in, and a slow head only loses its place to
 * younger ones. */
static entry *place_for(srv_accept *a, const struct sockaddr_storage *addr, int *over) {
    entry *free_e = NULL, *oldest = NULL;
    int same = 0;
    for (int i = 0; i < a->n_max; i++) {
        entry *x = &a->e[i];
        if (x->fd < 0) {
            if (!free_e) free_e = x;
            continue;
        }
        if (!x->closing && same_host(&x->addr, addr)) same++;
        if (!oldest || x->t0 < oldest->t0) oldest = x;
    }
    *over = a->per_ip > 0 && same >= a->per_ip;
    if (free_e) return free_e;
    drop(a, oldest);
    return oldest;
}

/* accept() found no free descriptor. The listening socket stays readable, so the loop would
 * spin: the oldest held connection gives its descriptor up, or, holding none, the thread
 * pauses 10 ms (libmicrohttpd's connections end meanwhile). */
static void out_of_descriptors(srv_accept *a) {
    entry *oldest = NULL;
    for (int i = 0; i < a->n_max; i++)
        if (a->e[i].fd >= 0 && (!oldest || a->e[i].t0 < oldest->t0)) oldest = &a->e[i];
    if (oldest) {
        drop(a, oldest);
        return;
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void accept_all(srv_accept *a) {
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof addr;
        int fd =
            accept4(a->listen_fd, (struct sockaddr *)&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) out_of_descriptors(a);
            return; /* EAGAIN: the next event brings more */
        }
        int over;
        entry *x = place_for(a, &addr, &over);
        *x = (entry){.fd = fd, .t0 = srv_now(), .addr = addr, .alen = alen};
        /* Past its address's share a connection is not refused (a client that opens many at
         * once sends each head at once), but it has OVER_SHARE_S for its head, not the whole
         * request_read_timeout_s: a single address cannot hold many slow heads for long. */
        x->deadline =
            x->t0 + (over && OVER_SHARE_S < a->read_timeout ? OVER_SHARE_S : a->read_timeout);
        /* Edge-triggered: peeking leaves the bytes in the socket, so only new bytes wake us. */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
                                 .data.u64 = (uint64_t)(x - a->e) + TAG_FIRST};
        if (epoll_ctl(a->ep, EPOLL_CTL_ADD, fd, &ev)) {
            close(fd);
            x->fd = -1;
        }
    }
}

/* ---- the request head ---- */

static int bad_head(srv_head *h, int status, const char *code, const char *msg) {
    h->status = status, h->code = code;
    snprintf(h->msg, sizeof h->msg, "%s", msg);
    return -1;
}

/* 413 with the limit in the message. */
static int too_large(srv_head *h, int max_body) {
    h->status = 413, h->code = "body_too_large";
    snprintf(h->msg, sizeof h->msg, "the body is larger than %d bytes", max_body);
    return -1;
}

/* Content-Length: decimal digits only; a number too long for 64 bits reads as LLONG_MAX, which
 * is as much too large as it is. */
static int content_length(const char *v, size_t n, long long *out) {
    if (n == 0) return -1;
    long long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x > (LLONG_MAX - 9) / 10 ? LLONG_MAX : x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

/* The size line of the first chunk, when it has arrived with the head: hex digits, then an
 * optional extension. -1: not a size (empty, or beyond 2^63 - 1). */
static int first_chunk(const char *p, size_t n, long long *out) {
    size_t i = 0;
    unsigned long long x = 0;
    for (; i < n && isxdigit((unsigned char)p[i]); i++) {
        if (x >> 59) return -1;
        int d = p[i] <= '9' ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10;
        x = x * 16 + (unsigned)d;
    }
    if (i == 0 || x > 0x7FFFFFFFFFFFFFFFull) return -1;
    *out = (long long)x;
    return 0;
}

/* Checks the head buf[0..end) (which ends with its empty line) and, for a chunked body, the
 * first chunk's size line among the avail bytes peeked. Fills h (method and url for the log,
 * the error if any). 0: libmicrohttpd may have the request; 1: wait for the first chunk's size
 * line (a client sends a chunked body right after its head, unless it waits for
 * "100 Continue", which libmicrohttpd sends); -1: answer with h's error. */
static int check_head(int max_body, const char *buf, size_t end, size_t avail, srv_head *h) {
    const char *sp = memchr(buf, ' ', end), *eol = memchr(buf, '\n', end);
    if (sp && eol && sp < eol) {
        snprintf(h->method, sizeof h->method, "%.*s", (int)(sp - buf), buf);
        const char *u = sp + 1, *sp2 = memchr(u, ' ', (size_t)(eol - u));
        snprintf(h->url, sizeof h->url, "%.*s", (int)((sp2 ? sp2 : eol) - u), u);
    }
    int n_cl = 0, chunked = 0, expect = 0;
    long long cl = 0;
    for (const char *line = eol ? eol + 1 : buf + end; line < buf + end;) {
        const char *nl = memchr(line, '\n', (size_t)(buf + end - line));
        if (!nl) break;
        const char *colon = memchr(line, ':', (size_t)(nl - line));
        if (colon) {
            const char *v = colon + 1, *ve = nl;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            size_t name = (size_t)(colon - line);
            if (name == 14 && !strncasecmp(line, "Content-Length", 14)) {
                long long x;
                if (content_length(v, (size_t)(ve - v), &x) || (n_cl++ && x != cl))
                    return bad_head(h, 400, "invalid_content_length",
                                    "Content-Length must be one non-negative decimal number");
                cl = x;
            } else if (name == 12 && !strncasecmp(line, "X-Request-Id", 12)) {
                snprintf(h->rid, sizeof h->rid, "%.*s", (int)(ve - v), v);
                if ((size_t)(ve - v) >= sizeof h->rid || !srv_id_valid(h->rid)) h->rid[0] = 0;
            } else if (name == 6 && !strncasecmp(line, "Expect", 6)) {
                expect = 1;
            } else if (name == 17 && !strncasecmp(line, "Transfer-Encoding", 17)) {
                for (const char *p = v; p + 7 <= ve; p++)
                    if (!strncasecmp(p, "chunked", 7)) chunked = 1;
            }
        }
        line = nl + 1;
    }
    if (chunked && n_cl)
        return bad_head(h, 400, "invalid_content_length",
                        "give Content-Length or Transfer-Encoding: chunked, not both");
    if (cl > max_body) return too_large(h, max_body);
    const char *body = buf + end, *nl = memchr(body, '\n', avail - end);
    long long size;
    if (!chunked || (!nl && expect)) return 0;
    if (!nl && avail < HEAD_MAX) return 1;
    if (!nl || first_chunk(body, (size_t)(nl - body), &size))
        return bad_head(h, 400, "invalid_chunk_size", "a chunk size is not a valid size");
    if (size > max_body) return too_large(h, max_body);
    return 0;
}

/* Writes the JSON error for h and lets the client read it before the socket closes: the rest of
 * its request is drained for LINGER_S (closing with unread bytes would reset the connection
 * and could destroy the answer in flight). */
static void answer(srv_accept *a, entry *x, srv_head *h) {
    char id[SRV_ID_MAX], text[1024];
    if (h->rid[0])
        snprintf(id, sizeof id, "%s", h->rid);
    else
        srv_new_id("req-", id, sizeof id);
    srv_error e;
    srv_error_set(&e, h->status, h->status == 503 ? "server_error" : "invalid_request_error",
                  h->code, "%s", h->msg);
    char *body = srv_error_json(&e);
    const char *reason = h->status == 413   ? "Content Too Large"
                         : h->status == 431 ? "Request Header Fields Too Large"
                         : h->status == 503 ? "Service Unavailable"
                                            : "Bad Request";
    int n = snprintf(text, sizeof text,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\nX-Request-Id: %s\r\n%s\r\n%s",
                     h->status, reason, body ? strlen(body) : 0, id,
                     h->status == 503 ? "Retry-After: 1\r\n" : "", body ? body : "");
    free(body);
    /* what the client sent so far is read away first, so it cannot turn the close into a reset */
    while (recv(x->fd, a->head, HEAD_MAX, MSG_DONTWAIT) > 0) {
    }
    ssize_t w = send(x->fd, text, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(x->fd, SHUT_WR);
    x->closing = 1;
    x->deadline = srv_now() + LINGER_S;
    if (a->ops.answered)
        a->ops.answered(a->ops.arg, id, h->method, h->url, h->status, w > 0 ? (size_t)w : 0);
}

/* The length of the head in buf (up to and with its empty line, CRLF or bare LF, whichever
 * comes first), or 0 while it has not all arrived. */
static size_t head_end(const char *buf, size_t n) {
    const char *crlf = memmem(buf, n, "\r\n\r\n", 4), *lf = memmem(buf, n, "\n\n", 2);
    if (lf && (!crlf || lf < crlf)) return (size_t)(lf - buf) + 2;
    return crlf ? (size_t)(crlf - buf) + 4 : 0;
}

int srv_head_check(const char *buf, size_t n, int max_body, srv_head *h) {
    memset(h, 0, sizeof *h);
    size_t len = head_end(buf, n);
    if (!len)
        return n < HEAD_MAX
                   ? 0
                   : bad_head(h, 431, "header_too_large", "the request head is larger than 16 KiB");
    int rc = check_head(max_body, buf, len, n, h);
    return rc < 0 ? -1 : rc == 1 ? 0 : 1;
}

/* New bytes on a held connection: hand it over once its head is complete. */
static void readable(srv_accept *a, entry *x) {
    if (x->closing) {
        ssize_t n;
        while ((n = recv(x->fd, a->head, HEAD_MAX, MSG_DONTWAIT)) > 0) {
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) drop(a, x);
        return;
    }
    ssize_t n = recv(x->fd, a->head, HEAD_MAX, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        drop(a, x);
        return;
    }
    srv_head h;
    int verdict = srv_head_check(a->head, (size_t)n, a->max_body, &h);
    if (verdict <= 0) {
        if (verdict < 0) answer(a, x, &h);
        return;
    }
    epoll_ctl(a->ep, EPOLL_CTL_DEL, x->fd, NULL);
    if (a->ops.handoff(a->ops.arg, x->fd, (struct sockaddr *)&x->addr, x->alen)) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
                                 .data.u64 = (uint64_t)(x - a->e) + TAG_FIRST};
        epoll_ctl(a->ep, EPOLL_CTL_ADD, x->fd, &ev);
        bad_head(&h, 503, "too_many_connections", "too many connections; retry later");
        answer(a, x, &h);
        return;
    }
    x->fd = -1;
}

/* Closes what is past its deadline: heads that did not arrive in time, drained answers. */
static void sweep(srv_accept *a, double now) {
    for (int i = 0; i < a->n_max; i++)
        if (a->e[i].fd >= 0 && now > a->e[i].deadline) drop(a, &a->e[i]);
}

static void *door_main(void *arg) {
    srv_accept *a = arg;
    struct epoll_event ev[64];
    double next_sweep = 0;
    for (;;) {
        int n = epoll_wait(a->ep, ev, 64, 50);
        for (int i = 0; i < n; i++) {
            uint64_t tag = ev[i].data.u64;
            if (tag == TAG_STOP) return NULL;
            if (tag == TAG_LISTEN)
                accept_all(a);
            else if (a->e[tag - TAG_FIRST].fd >= 0)
                readable(a, &a->e[tag - TAG_FIRST]);
        }
        double now = srv_now();
        if (now >= next_sweep) {
            sweep(a, now);
            next_sweep = now + 0.05;
        }
    }
}

/* ---- life cycle ---- */

static int listen_on(const cfg *c, char *err, size_t n) {
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    int gai = getaddrinfo(c->host, port, &hints, &ai);
    if (gai) {
        snprintf(err, n, "cannot resolve host %s: %s", c->host, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
                    bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024))) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        snprintf(err, n, "cannot listen on %s:%d (in use, or no permission)", c->host, c->port);
    return fd;
}

srv_accept *srv_accept_start(const cfg *c, const srv_door_ops *ops, char *err, size_t n) {
    srv_accept *a = calloc(1, sizeof *a);
    if (!a || !(a->e = calloc((size_t)c->max_connections, sizeof *a->e))) {
        free(a);
        snprintf(err, n, "out of memory");
        return NULL;
    }
    a->ops = *ops;
    a->n_max = c->max_connections, a->per_ip = c->max_connections_per_ip;
    a->max_body = c->max_body_bytes, a->read_timeout = c->request_read_timeout_s;
    for (int i = 0; i < a->n_max; i++) a->e[i].fd = -1;
    a->ep = a->stop_fd = -1;
    if ((a->listen_fd = listen_on(c, err, n)) < 0) goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(a->listen_fd, (struct sockaddr *)&ss, &sl);
    a->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    if (a->ops.bound) a->ops.bound(a->ops.arg, a->port);
    a->ep = epoll_create1(EPOLL_CLOEXEC);
    a->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event l = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
    struct epoll_event s = {.events = EPOLLIN, .data.u64 = TAG_STOP};
    if (a->ep < 0 || a->stop_fd < 0 || epoll_ctl(a->ep, EPOLL_CTL_ADD, a->listen_fd, &l) ||
        epoll_ctl(a->ep, EPOLL_CTL_ADD, a->stop_fd, &s) ||
        pthread_create(&a->thread, NULL, door_main, a)) {
        snprintf(err, n, "cannot start the accepting thread: %s", strerror(errno));
        goto fail;
    }
    return a;
fail:
    if (a->listen_fd >= 0) close(a->listen_fd);
    if (a->ep >= 0) close(a->ep);
    if (a->stop_fd >= 0) close(a->stop_fd);
    free(a->e);
    free(a);
    return NULL;
}

int srv_accept_port(const srv_accept *a) {
    return a->port;
}

void srv_accept_stop(srv_accept *a) {
    if (!a) return;
    uint64_t one = 1;
    if (write(a->stop_fd, &one, sizeof one) != sizeof one) abort();
    pthread_join(a->thread, NULL);
    for (int i = 0; i < a->n_max; i++)
        if (a->e[i].fd >= 0) drop(a, &a->e[i]);
    close(a->listen_fd);
    close(a->ep);
    close(a->stop_fd);
    free(a->e);
    free(a);
}
