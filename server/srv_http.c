/* srv_http.c: routes and the life of one HTTP request. libmicrohttpd runs one thread per
 * connection, so a handler may block waiting for its job; while it waits it watches the socket
 * and cancels the job if the client hangs up. */
#include "srv_http.h"
#include "srv_id.h"
#include "srv_response.h"

#include <cJSON.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum { ST_LOADING, ST_READY, ST_DRAINING };

struct srv_http {
    struct MHD_Daemon *d;
    cfg c;
    srv_metrics *mx;
    srv_sched *sched;
    char model[256];
    mb_config mc;
    atomic_int state;
    int port;
};

typedef enum {
    R_NONE,
    R_HEALTH,
    R_METRICS,
    R_MODELS,
    R_COMPLETIONS,
    R_GENERATE,
    R_SESSIONS,
    R_SESSION,
    R_SESSION_FORK,
    R_SESSION_SAVE,
    R_SESSION_RESTORE,
} route;

/* What one request carries from its first callback to its completion notice. */
typedef struct req {
    srv_http *h;
    char method[8];
    char url[160];
    char id[SRV_ID_MAX];
    route rt;
    char session[SRV_ID_MAX]; /* the {id} of /v1/sessions/{id}[/...] */
    double t0;
    char *body;
    size_t body_len, body_cap;
    int too_large, responded;
    int status;
    size_t bytes_out;
    srv_job *job; /* the generation job, for cancel on hang-up and the log line */
} req;

/* ---- routing ---- */

static route match(const char *url, char *session) {
    static const struct {
        const char *path;
        route r;
    } fixed[] = {{"/health", R_HEALTH},        {"/metrics", R_METRICS},
                 {"/v1/models", R_MODELS},     {"/v1/completions", R_COMPLETIONS},
                 {"/v1/generate", R_GENERATE}, {"/v1/sessions", R_SESSIONS}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(url, fixed[i].path)) return fixed[i].r;
    if (strncmp(url, "/v1/sessions/", 13)) return R_NONE;
    const char *id = url + 13, *slash = strchr(id, '/');
    size_t n = slash ? (size_t)(slash - id) : strlen(id);
    if (n == 0 || n >= SRV_ID_MAX) return R_NONE;
    memcpy(session, id, n);
    session[n] = 0;
    if (!srv_id_valid(session)) return R_NONE;
    if (!slash) return R_SESSION;
    if (!strcmp(slash, "/fork")) return R_SESSION_FORK;
    if (!strcmp(slash, "/save")) return R_SESSION_SAVE;
    if (!strcmp(slash, "/restore")) return R_SESSION_RESTORE;
    return R_NONE;
}

static const char *allowed(route r) {
    switch (r) {
    case R_HEALTH:
    case R_METRICS:
    case R_MODELS:
        return "GET";
    case R_SESSIONS:
        return "GET, POST";
    case R_SESSION:
        return "GET, DELETE";
    default:
        return "POST";
    }
}

static int method_ok(route r, const char *m) {
    const char *a = allowed(r);
    size_t n = strlen(m);
    for (const char *p = strstr(a, m); p; p = strstr(p + 1, m))
        if ((p == a || p[-1] == ' ') && (p[n] == 0 || p[n] == ',')) return 1;
    return 0;
}

/* ---- responses ---- */

static enum MHD_Result send_body(struct MHD_Connection *c, req *r, int status, char *body,
                                 const char *type) {
    size_t n = body ? strlen(body) : 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        n, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 405) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allowed(r->rt));
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    r->status = status;
    r->bytes_out = n;
    r->responded = 1;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, req *r, int status, char *body) {
    return send_body(c, r, status, body, "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *c, req *r, const srv_error *e) {
    return send_json(c, r, e->status, srv_error_json(e));
}

static enum MHD_Result fail(struct MHD_Connection *c, req *r, int status, const char *type,
                            const char *code, const char *msg) {
    srv_error e;
    srv_error_set(&e, status, type, code, "%s", msg);
    return send_error(c, r, &e);
}

/* ---- authentication ---- */

/* Constant time in the length of the expected key, whatever the client sent. */
static int key_equal(const char *given, const char *key) {
    size_t gl = strlen(given), kl = strlen(key);
    unsigned char d = gl != kl;
    for (size_t i = 0; i < kl; i++) d |= (unsigned char)(key[i] ^ (i < gl ? given[i] : 0));
    return d == 0;
}

static int authorized(struct MHD_Connection *c, const srv_http *h) {
    if (!h->c.api_key[0]) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return a && !strncmp(a, "Bearer ", 7) && key_equal(a + 7, h->c.api_key);
}

/* ---- simple routes ---- */

static enum MHD_Result health(struct MHD_Connection *c, req *r) {
    int st = atomic_load(&r->h->state);
    const char *s = st == ST_READY ? "ok" : st == ST_LOADING ? "loading" : "shutting_down";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", s);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, st == ST_READY ? 200 : 503, body);
}

static enum MHD_Result models(struct MHD_Connection *c, req *r) {
    const srv_http *h = r->h;
    cJSON *o = cJSON_CreateObject(), *a, *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    a = cJSON_AddArrayToObject(o, "data");
    cJSON_AddItemToArray(a, m);
    cJSON_AddStringToObject(m, "id", h->model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "mambabyte");
    cJSON_AddNumberToObject(m, "n_vocab", h->mc.n_vocab);
    cJSON_AddNumberToObject(m, "d_model", h->mc.d_model);
    cJSON_AddNumberToObject(m, "n_layer", h->mc.n_layer);
    cJSON_AddNumberToObject(m, "max_tokens_limit", h->c.max_tokens_limit);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(c, r, 200, body);
}

/* ---- jobs ---- */

static int client_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static srv_limits limits(const cfg *c) {
    return (srv_limits){c->max_prompt_bytes, c->max_tokens_limit, c->default_max_tokens,
                        c->max_stop,         c->max_stop_bytes,   c->request_timeout_s};
}

/* Submits j and waits until it is done; -1 if the client hung up (j is then cancelled). */
static int run_job(struct MHD_Connection *c, req *r, srv_job *j, srv_error *e) {
    if (srv_sched_submit(r->h->sched, j, e)) return 1;
    if (srv_job_wait(j, SRV_WAIT_DONE, 0, client_fd(c))) {
        atomic_store(&j->cancelled, 1);
        return -1;
    }
    if (j->failed) *e = j->err;
    return j->failed;
}

static enum MHD_Result generate(struct MHD_Connection *c, req *r) {
    srv_http *h = r->h;
    srv_gen_req g;
    srv_error e;
    srv_limits lim = limits(&h->c);
    srv_api api = r->rt == R_COMPLETIONS ? SRV_API_COMPLETIONS : SRV_API_GENERATE;
    if (srv_request_parse(api, r->body ? r->body : "", r->body_len, &lim, &g, &e))
        return send_error(c, r, &e);
    /* An unseeded request still gets a reported seed, so it can be replayed; 53 bits keep it
     * exact in JSON. */
    if (!g.seed_given) g.sampling.seed = srv_random_u64() >> 11;
    srv_job *j = srv_job_new(SRV_JOB_GENERATE, &g);
    if (!j) {
        srv_gen_req_free(&g);
        return fail(c, r, 500, "server_error", "out_of_memory", "out of memory");
    }
    snprintf(j->id, sizeof j->id, "%s", r->id);
    j->t_arrive = r->t0;
    j->deadline = r->t0 + j->req.timeout_s;
    r->job = j;
    long created = (long)time(NULL);
    if (srv_sched_submit(h->sched, j, &e)) return send_error(c, r, &e);
    int fd = client_fd(c);
    if (srv_job_wait(j, j->req.stream ? SRV_WAIT_ADMITTED : SRV_WAIT_DONE, 0, fd)) {
        atomic_store(&j->cancelled, 1);
        return MHD_NO;
    }
    pthread_mutex_lock(&j->mu);
    int failed = j->failed;
    pthread_mutex_unlock(&j->mu);
    if (failed) return send_error(c, r, &j->err);
    if (!j->req.stream) return send_json(c, r, 200, srv_response_body(j, h->model, created));

    srv_stream *st = srv_stream_new(j, h->model, created, fd, &r->bytes_out);
    struct MHD_Response *resp =
        st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, srv_stream_read, st,
                                               srv_stream_free)
           : NULL;
    if (!resp) {
        if (st) srv_stream_free(st);
        atomic_store(&j->cancelled, 1);
        return fail(c, r, 500, "server_error", "out_of_memory", "out of memory");
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    r->status = 200;
    r->responded = 1;
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

static srv_job *session_job(srv_job_kind kind, const char *session) {
    srv_job *j = srv_job_new(kind, NULL);
    if (j && session) snprintf(j->session, sizeof j->session, "%s", session);
    return j;
}

/* Runs one session job and answers with its result. */
static enum MHD_Result session_simple(struct MHD_Connection *c, req *r, srv_job_kind kind) {
    srv_job *j = session_job(kind, r->session);
    if (!j) return fail(c, r, 500, "server_error", "out_of_memory", "out of memory");
    srv_error e;
    int rc = run_job(c, r, j, &e);
    enum MHD_Result ok = rc < 0   ? MHD_NO
                         : rc > 0 ? send_error(c, r, &e)
                                  : send_json(c, r, 200, j->result ? strdup(j->result) : NULL);
    srv_job_unref(j);
    return ok;
}

/* POST /v1/sessions: a new session, optionally fed a first prompt (nothing is generated). */
static enum MHD_Result session_create(struct MHD_Connection *c, req *r) {
    srv_gen_req g;
    srv_error e;
    srv_limits lim = limits(&r->h->c);
    const char *body = r->body_len ? r->body : "{}";
    if (srv_request_parse(SRV_API_SESSION_CREATE, body, r->body_len ? r->body_len : 2, &lim, &g,
                          &e))
        return send_error(c, r, &e);
    srv_job *j = session_job(SRV_JOB_SESSION_CREATE, NULL);
    if (!j) {
        srv_gen_req_free(&g);
        return fail(c, r, 500, "server_error", "out_of_memory", "out of memory");
    }
    int rc = run_job(c, r, j, &e);
    char id[SRV_ID_MAX];
    snprintf(id, sizeof id, "%s", j->session_out);
    srv_job_unref(j);
    if (rc == 0 && g.prompt_len > 0) {
        g.api = SRV_API_GENERATE;
        g.max_tokens = 0;
        g.timeout_s = r->h->c.request_timeout_s;
        snprintf(g.session, sizeof g.session, "%s", id);
        srv_job *p = srv_job_new(SRV_JOB_GENERATE, &g);
        if (!p) {
            srv_gen_req_free(&g);
            return fail(c, r, 500, "server_error", "out_of_memory", "out of memory");
        }
        p->deadline = r->t0 + r->h->c.request_timeout_s;
        rc = run_job(c, r, p, &e);
        srv_job_unref(p);
    }
    srv_gen_req_free(&g);
    if (rc < 0) return MHD_NO;
    if (rc > 0) return send_error(c, r, &e);
    snprintf(r->session, sizeof r->session, "%s", id);
    return session_simple(c, r, SRV_JOB_SESSION_INFO);
}

static enum MHD_Result dispatch(struct MHD_Connection *c, req *r) {
    int post = !strcmp(r->method, "POST");
    switch (r->rt) {
    case R_HEALTH:
        return health(c, r);
    case R_METRICS: {
        char *t = srv_metrics_render(r->h->mx);
        return send_body(c, r, 200, t, "text/plain; version=0.0.4");
    }
    case R_MODELS:
        return models(c, r);
    case R_COMPLETIONS:
    case R_GENERATE:
        return generate(c, r);
    case R_SESSIONS:
        return post ? session_create(c, r) : session_simple(c, r, SRV_JOB_SESSION_LIST);
    case R_SESSION:
        return session_simple(
            c, r, strcmp(r->method, "DELETE") ? SRV_JOB_SESSION_INFO : SRV_JOB_SESSION_DELETE);
    case R_SESSION_FORK:
        return session_simple(c, r, SRV_JOB_SESSION_FORK);
    case R_SESSION_SAVE:
        return session_simple(c, r, SRV_JOB_SESSION_SAVE);
    case R_SESSION_RESTORE:
        return session_simple(c, r, SRV_JOB_SESSION_RESTORE);
    default:
        return fail(c, r, 404, "not_found_error", "not_found", "no such route");
    }
}

/* Checks that need no body: route, method, readiness, key, declared size. */
static enum MHD_Result first_call(struct MHD_Connection *c, req *r) {
    srv_http *h = r->h;
    char msg[256];
    if (r->rt == R_NONE) {
        snprintf(msg, sizeof msg, "no route %s %s", r->method, r->url);
        return fail(c, r, 404, "not_found_error", "not_found", msg);
    }
    if (!method_ok(r->rt, r->method)) {
        snprintf(msg, sizeof msg, "%s does not allow %s (allowed: %s)", r->url, r->method,
                 allowed(r->rt));
        return fail(c, r, 405, "invalid_request_error", "method_not_allowed", msg);
    }
    if (r->rt == R_HEALTH) return MHD_YES;
    if (!authorized(c, h))
        return fail(c, r, 401, "authentication_error", "invalid_api_key",
                    "missing or wrong API key (Authorization: Bearer <key>)");
    int st = atomic_load(&h->state);
    if (st != ST_READY)
        return fail(c, r, 503, "server_error", st == ST_LOADING ? "loading" : "shutting_down",
                    st == ST_LOADING ? "the model is loading" : "the server is shutting down");
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > (unsigned long long)h->c.max_body_bytes) {
        snprintf(msg, sizeof msg, "the body is larger than %d bytes", h->c.max_body_bytes);
        return fail(c, r, 413, "invalid_request_error", "body_too_large", msg);
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        r->h = cls;
        r->t0 = srv_now();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->url, sizeof r->url, "%s", url);
        srv_new_id("cmpl-", r->id, sizeof r->id);
        r->rt = match(url, r->session);
        return first_call(c, r);
    }
    if (r->responded) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->too_large || r->body_len + n > (size_t)r->h->c.max_body_bytes) {
            r->too_large = 1;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            size_t cap = (r->body_len + n + 1) * 2;
            char *b = realloc(r->body, cap);
            if (!b) return MHD_NO;
            r->body = b, r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    if (r->too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "the body is larger than %d bytes", r->h->c.max_body_bytes);
        return fail(c, r, 413, "invalid_request_error", "body_too_large", msg);
    }
    return dispatch(c, r);
}

/* The end of a request, however it ended: cancel its job if the client left early, count it
 * and write its log line. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv_http *h = cls;
    req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    double now = srv_now(), ttfb = -1;
    /* 499: the client closed the connection first (nginx's convention). */
    int status = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || !r->status ? r->status : 499;
    if (!status) status = 499;
    if (r->job) {
        pthread_mutex_lock(&r->job->mu);
        if (!r->job->done) atomic_store(&r->job->cancelled, 1);
        if (r->job->t_first > 0) ttfb = r->job->t_first - r->t0;
        pthread_mutex_unlock(&r->job->mu);
        srv_job_unref(r->job);
    }
    srv_metrics_request(h->mx, status, r->body_len, r->bytes_out, now - r->t0);
    if (h->c.log_requests) {
        char ts[32];
        time_t t = time(NULL);
        struct tm tm;
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
        char tt[32] = "-";
        if (ttfb >= 0) snprintf(tt, sizeof tt, "%.1f", ttfb * 1e3);
        fprintf(stderr, "%s req=%s %s %s status=%d in=%zu out=%zu ttfb_ms=%s dur_ms=%.1f\n", ts,
                r->id, r->method, r->url, status, r->body_len, r->bytes_out, tt,
                (now - r->t0) * 1e3);
    }
    free(r->body);
    free(r);
}

/* ---- the daemon ---- */

srv_http *srv_http_start(const cfg *c, srv_metrics *mx, char *err, size_t n) {
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    h->c = *c;
    h->mx = mx;
    atomic_store(&h->state, ST_LOADING);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    int gai = getaddrinfo(c->host, port, &hints, &ai);
    if (gai) {
        snprintf(err, n, "cannot resolve host %s: %s", c->host, gai_strerror(gai));
        free(h);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, (uint16_t)c->port, NULL, NULL, on_request, h,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)c->connection_timeout_s, MHD_OPTION_LISTEN_BACKLOG_SIZE,
                            1024u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        snprintf(err, n, "cannot listen on %s:%d (in use, or no permission)", c->host, c->port);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : c->port;
    return h;
}

void srv_http_ready(srv_http *h, srv_sched *s, const char *model_name, const mb_config *mc) {
    h->sched = s;
    h->mc = *mc;
    snprintf(h->model, sizeof h->model, "%s", model_name);
    atomic_store(&h->state, ST_READY);
}

void srv_http_draining(srv_http *h) {
    atomic_store(&h->state, ST_DRAINING);
}

int srv_http_port(const srv_http *h) {
    return h->port;
}

void srv_http_stop(srv_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
