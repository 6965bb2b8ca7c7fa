/* srv_http.h: the libmicrohttpd daemon behind the front door (srv_accept.h): routes,
 * authentication, CORS, request bodies, responses and the per-request log line. HTTP threads
 * never touch the engine and never block: they parse, submit a job to the scheduler and park
 * the connection until the job wakes it. */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include "cfg.h"
#include "srv_metrics.h"
#include "srv_sched.h"

typedef struct srv_http srv_http;

/* Starts listening at once; until srv_http_ready every route but /health answers 503. */
srv_http *srv_http_start(const cfg *c, srv_metrics *mx, char *err, size_t n);
/* The model is loaded: serve it. model_name is what /v1/models and responses report. */
void srv_http_ready(srv_http *h, srv_sched *s, const char *model_name, const mb_config *mc);
/* Shutting down: new requests get 503, /health too; running ones go on. */
void srv_http_draining(srv_http *h);
int srv_http_port(const srv_http *h);
/* Closes the listening socket and waits for every connection to end. */
void srv_http_stop(srv_http *h);

#endif
