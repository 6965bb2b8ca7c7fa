/* srv_accept.h: the front door of the daemon. One thread accepts connections and keeps each one
 * until its request head has fully arrived, looking at it without reading it (MSG_PEEK); only
 * then is the socket handed to libmicrohttpd. A client that sends its head slowly therefore holds
 * one entry here and nothing in libmicrohttpd: it is closed at request_read_timeout_s, an
 * address holding max_connections_per_ip such entries gets 1 s for the head of each further
 * one, and when all max_connections entries are taken the oldest makes room. Framing that
 * libmicrohttpd would answer in its own way (a Content-Length that is not a number or is too large,
 * a first chunk that is too large) is answered here with the JSON error format. */
#ifndef SRV_ACCEPT_H
#define SRV_ACCEPT_H

#include "cfg.h"
#include "srv_request.h"

#include <sys/socket.h>

typedef struct srv_accept srv_accept;

typedef struct srv_door_ops {
    void *arg;
    /* The head of the request on fd has arrived and looks sane: the callee owns fd and returns
     * 0, or returns -1 without taking it when it cannot take another connection (then the
     * client gets a 503). */
    int (*handoff)(void *arg, int fd, const struct sockaddr *addr, socklen_t len);
    /* The door answered a request itself (for the metrics and the log); method and url are as
     * the client sent them, untrusted. */
    void (*answered)(void *arg, const char *id, const char *method, const char *url, int status,
                     size_t bytes_out);
    /* The port the door listens on (the one chosen, for port 0), told before any connection is
     * taken; NULL: not wanted. */
    void (*bound)(void *arg, int port);
} srv_door_ops;

#define SRV_HEAD_MAX 16384 /* a longer request head gets 431 (libmicrohttpd's buffer: 32 KiB) */

/* What the door says about a request head (and, for the log, its method and url). */
typedef struct srv_head {
    int status; /* the error to answer with: 400, 413 or 431 */
    const char *code;
    char msg[96];
    char method[16], url[160];
    char rid[SRV_ID_MAX]; /* the client's X-Request-Id when it is a valid id, else "" */
} srv_head;

/* The door's verdict on buf[0..n), the bytes a new connection has sent so far (n at most
 * SRV_HEAD_MAX): 0 while its head (and for a chunked body not awaiting "100 Continue", the
 * first chunk's size line) has not all arrived, 1 when it has and its framing
 * (Content-Length, Transfer-Encoding, the first chunk size) is sane, -1 with the error in h
 * otherwise. Exposed for the fuzzer. */
int srv_head_check(const char *buf, size_t n, int max_body, srv_head *h);

/* Listens on c->host:c->port and starts the thread; NULL with a message in err. */
srv_accept *srv_accept_start(const cfg *c, const srv_door_ops *ops, char *err, size_t n);
int srv_accept_port(const srv_accept *a);
/* Stops the thread and closes the listening socket and every connection still held. */
void srv_accept_stop(srv_accept *a);

#endif
