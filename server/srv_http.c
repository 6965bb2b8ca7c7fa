/* srv_http.c: routes and the life of one HTTP request. Connections come from the front door
 * (srv_accept.c) with their request head complete and are served by a few libmicrohttpd event
 * loops (epoll, a thread pool). No handler ever blocks: a request whose job is in the scheduler
 * parks its connection (MHD_suspend_connection) and the job wakes it (MHD_resume_connection)
 * when it has news. Parked connections are invisible to libmicrohttpd, so a watcher thread
 * looks after them: it notices clients that hang up, wakes waiting streams for their keep-alive
 * comments, and closes connections whose request does not arrive in time. */
#include "srv_http.h"
#include "srv_accept.h"
#include "srv_id.h"
#include "srv_response.h"

#include <cJSON.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_LOADING, ST_READY, ST_DRAINING };

/* server/openapi.json, NUL-terminated (build/gen/openapi_json.c, made by the Makefile). */
extern const char srv_openapi_json[];

typedef struct req req;

struct srv_http {
    struct MHD_Daemon *d;
    srv_accept *door;
    cfg c;
    srv_metrics *mx;
    srv_sched *sched;
    char model[256];
    mb_config mc;
    atomic_int state;
    atomic_int n_conns; /* connections libmicrohttpd holds */
    int port;
    char daemon_id[192]; /* X-Mambabyte-Daemon: daemon_id, or <hostname>:<port> */

    pthread_mutex_t mu; /* guards live, woken and every req's watcher fields */
    pthread_cond_t cv;  /* the watcher waits on it between rounds: woken has work */
    req *live;          /* requests the watcher looks after */
    req *woken;         /* parked requests whose job has news, for the watcher to resume */
    pthread_t watcher;
    int stopping;
};

typedef enum {
    R_NONE,
    R_HEALTH,
    R_OPENAPI,
    R_METRICS,
    R_MODELS,
    R_MODEL,
    R_COMPLETIONS,
    R_GENERATE,
    R_SESSIONS,
    R_SESSION,
    R_SESSION_FORK,
    R_SESSION_SAVE,
    R_SESSION_RESTORE,
} route;

typedef enum { P_READING, P_BUSY, P_CUT } phase;

/* What one request carries from its first callback to its completion notice. */
struct req {
    srv_http *h;
    struct MHD_Connection *c;
    int fd;
    char method[8];
    char url[160];
    char id[SRV_ID_MAX];  /* completion id, "cmpl-..." */
    char rid[SRV_ID_MAX]; /* X-Request-Id: the client's, or id */
    const char *origin;   /* the CORS origin to allow, NULL: none */
    route rt;
    char session[SRV_ID_MAX];      /* the session the request is about: its X-Session-Id answer */
    char ignored[SRV_IGNORED_MAX]; /* X-Ignored-Fields: unknown body fields that were ignored */
    double t0;
    char *body;
    size_t body_len, body_cap;
    int too_large, responded;
    int status;
    size_t bytes_out;
    srv_job *job;   /* the job the request waits on (cancelled on hang-up; for the log line) */
    srv_job **jobs; /* several completions (n, best_of, prompts): all of them, job the first */
    int n_jobs;
    int stage;     /* POST /v1/sessions: 0 create, 1 prefill, 2 info */
    srv_gen_req g; /* POST /v1/sessions: the prompt to prefill */
    long created;

    /* the watcher's fields, under h->mu */
    req *prev, *next;
    phase ph;
    double read_deadline, give_up;
    int suspended; /* parked by us and not yet woken */
    int queued;    /* on h->woken */
    req *woken_next;
    int gone;          /* the client hung up while parked */
    int expired;       /* parked past any deadline: the job was lost */
    int quiet;         /* woken because a keep-alive is due */
    double last_write; /* a stream's last bytes out (its arrival until then); 0: not a stream */
};

/* ---- routing ---- */

static route match(const char *url, char *session) {
    static const struct {
        const char *path;
        route r;
    } fixed[] = {{"/health", R_HEALTH},
                 {"/openapi.json", R_OPENAPI},
                 {"/metrics", R_METRICS},
                 {"/v1/models", R_MODELS},
                 {"/v1/completions", R_COMPLETIONS},
                 {"/v1/generate", R_GENERATE},
                 {"/v1/sessions", R_SESSIONS}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(url, fixed[i].path)) return fixed[i].r;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) return R_MODEL; /* ids may hold '/' */
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
        return "GET, HEAD";
    case R_OPENAPI:
    case R_METRICS:
    case R_MODELS:
    case R_MODEL:
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

/* ---- parking: a connection waits for its job without holding a thread ---- */

static void resume(req *r) {
    pthread_mutex_lock(&r->h->mu);
    if (r->suspended) {
        r->suspended = 0;
        MHD_resume_connection(r->c);
    }
    pthread_mutex_unlock(&r->h->mu);
}

/* The job's waker: it runs on the scheduler thread with the job's lock held. Resuming a
 * connection costs a system call (libmicrohttpd signals its polling thread), one per stream and
 * step: the watcher does it, so the scheduler goes on to the next step. */
static void wake(void *arg) {
    req *r = arg;
    srv_http *h = r->h;
    pthread_mutex_lock(&h->mu);
    if (r->suspended && !r->queued) {
        r->queued = 1;
        r->woken_next = h->woken;
        if (!h->woken) pthread_cond_signal(&h->cv);
        h->woken = r;
    }
    pthread_mutex_unlock(&h->mu);
}

/* Resumes the parked requests a job woke (h->mu held, and let go while resuming: the scheduler
 * waits on it to wake the next ones). A request taken off the list here is still suspended in
 * libmicrohttpd until resumed, so it cannot complete (and be freed) before; after its resume it
 * may, so the next one is read first. */
static void resume_woken(srv_http *h) {
    req *take = NULL;
    for (req *r = h->woken, *next; r; r = next) {
        next = r->woken_next;
        r->queued = 0;
        if (r->suspended) {
            r->suspended = 0;
            r->woken_next = take;
            take = r;
        }
    }
    h->woken = NULL;
    pthread_mutex_unlock(&h->mu);
    for (req *r = take, *next; r; r = next) {
        next = r->woken_next;
        MHD_resume_connection(r->c);
    }
    pthread_mutex_lock(&h->mu);
}

/* The request's jobs are ready for `what`: its job, or when it has several, every one (for
 * SRV_WAIT_ADMITTED every one it submitted: each prompt's first; its forks are admitted as they
 * start). */
static int ready(req *r, srv_wait what) {
    if (!r->jobs) return srv_job_ready(r->job, what, 0);
    const int step = what == SRV_WAIT_ADMITTED ? r->job->req.best_of : 1;
    for (int i = 0; i < r->n_jobs; i += step)
        if (!srv_job_ready(r->jobs[i], what, 0)) return 0;
    return 1;
}

/* 1 when the request need not wait: its stream has news (st), or its jobs are ready for
 * `what` (st NULL). */
static int news(req *r, srv_wait what, srv_stream *st) {
    return st ? srv_stream_news(st) : ready(r, what);
}

/* 1: the connection is parked until the stream st has news, or (st NULL) the request's jobs are
 * ready for `what` (a handler then returns and is called again); 0: go on now. Parking comes
 * before the second look, so a job that becomes ready in between still wakes us. */
static int park(req *r, srv_wait what, srv_stream *st) {
    if (r->gone || r->expired || news(r, what, st)) return 0;
    pthread_mutex_lock(&r->h->mu);
    if (r->h->stopping) { /* libmicrohttpd must not stop with a parked connection */
        r->expired = 1;
        pthread_mutex_unlock(&r->h->mu);
        return 0;
    }
    r->suspended = 1;
    MHD_suspend_connection(r->c);
    pthread_mutex_unlock(&r->h->mu);
    if (news(r, what, st)) resume(r);
    return 1;
}

/* Makes j the job the request waits on (dropping the previous one) and submits it. */
static int submit(req *r, srv_job *j, srv_error *e) {
    if (r->job) {
        srv_job_set_waker(r->job, NULL, NULL);
        srv_job_unref(r->job);
    }
    r->job = j;
    srv_job_set_waker(j, wake, r);
    return srv_sched_submit(r->h->sched, j, e);
}

/* ---- responses ---- */

/* A path of this server in a message becomes a name: clients need not know the layout. Only
 * where the directory stands as a path (at the start or after a space or quote, and followed
 * by '/' or ':'): "sessions", the default session_dir, is also a word of other messages. */
static void hide_paths(const srv_http *h, char *msg, size_t n) {
    const char *dirs[][2] = {{h->c.session_dir, "<session_dir>"}, {h->c.model, "<model>"}};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        size_t dl = strlen(dirs[i][0]), nl = strlen(dirs[i][1]);
        if (dl == 0) continue;
        for (char *p = strstr(msg, dirs[i][0]); p; p = strstr(p + 1, dirs[i][0])) {
            int starts = p == msg || strchr(" '\"(", p[-1]);
            if (!starts || (p[dl] != '/' && p[dl] != ':')) continue;
            size_t rest = strlen(p + dl);
            if ((size_t)(p - msg) + nl + rest + 1 > n) break;
            memmove(p + nl, p + dl, rest + 1);
            memcpy(p, dirs[i][1], nl);
        }
    }
}

/* Headers every answer carries. X-Session-Id lets a proxy learn a session's id (and route its
 * next requests) without parsing the body; X-Mambabyte-Daemon says which daemon answered. */
static void common_headers(req *r, struct MHD_Response *resp, int status) {
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    MHD_add_response_header(resp, "X-Mambabyte-Daemon", r->h->daemon_id);
    if (r->session[0]) MHD_add_response_header(resp, "X-Session-Id", r->session);
    if (r->ignored[0]) MHD_add_response_header(resp, "X-Ignored-Fields", r->ignored);
    /* One request per connection: every request passes the front door's deadline and checks. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (r->origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, X-Session-Id, X-Mambabyte-Daemon, Retry-After, "
                                "X-Ignored-Fields");
        if (strcmp(r->origin, "*")) MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
}

static enum MHD_Result queue(req *r, int status, struct MHD_Response *resp) {
    common_headers(r, resp, status);
    r->status = status;
    r->responded = 1;
    enum MHD_Result ok = MHD_queue_response(r->c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_body(req *r, int status, char *body, const char *type) {
    size_t n = body ? strlen(body) : 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        n, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 405) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allowed(r->rt));
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    r->bytes_out = n;
    return queue(r, status, resp);
}

static enum MHD_Result send_json(req *r, int status, char *body) {
    return send_body(r, status, body, "application/json");
}

static enum MHD_Result send_error(req *r, const srv_error *e) {
    srv_error shown = *e;
    hide_paths(r->h, shown.message, sizeof shown.message);
    return send_json(r, e->status, srv_error_json(&shown));
}

static enum MHD_Result fail(req *r, int status, const char *type, const char *code,
                            const char *msg) {
    srv_error e;
    srv_error_set(&e, status, type, code, "%s", msg);
    return send_error(r, &e);
}

static enum MHD_Result out_of_memory(req *r) {
    return fail(r, 500, "server_error", "out_of_memory", "out of memory");
}

/* The job was lost or the client left: what every waiting handler checks when it wakes. */
static enum MHD_Result abandoned(req *r) {
    if (r->gone) return MHD_NO;
    return fail(r, 503, "server_error", "timeout", "the request got no answer in time");
}

/* ---- authentication and CORS ---- */

/* Constant time in the length of the expected key, whatever the client sent. */
static int key_equal(const char *given, const char *key) {
    size_t gl = strlen(given), kl = strlen(key);
    unsigned char d = gl != kl;
    for (size_t i = 0; i < kl; i++) d |= (unsigned char)(key[i] ^ (i < gl ? given[i] : 0));
    return d == 0;
}

/* "Bearer" is a scheme name, which HTTP compares without regard to case (RFC 9110 11.1). */
static int authorized(struct MHD_Connection *c, const srv_http *h) {
    if (!h->c.api_key[0]) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
    a += 7;
    while (*a == ' ') a++;
    return key_equal(a, h->c.api_key);
}

/* The Origin header when cors_origins allows it ("*" when any is), else NULL. */
static const char *cors_origin(struct MHD_Connection *c, const srv_http *h) {
    const char *o = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *list = h->c.cors_origins;
    if (!o || !list[0]) return NULL;
    if (!strcmp(list, "*")) return "*";
    size_t n = strlen(o);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        if ((size_t)(e - p) == n && n && !strncmp(p, o, n)) return o;
        p = e;
    }
    return NULL;
}

/* A CORS preflight: which methods and headers a browser may use on this route. */
static enum MHD_Result preflight(req *r) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(0, (char *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    if (r->origin) {
        char methods[64];
        snprintf(methods, sizeof methods, "%s, OPTIONS", allowed(r->rt));
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", methods);
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, X-Request-Id, X-Session-Id");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allowed(r->rt));
    return queue(r, 204, resp);
}

/* ---- simple routes ---- */

static enum MHD_Result health(req *r) {
    int st = atomic_load(&r->h->state);
    const char *s = st == ST_READY ? "ok" : st == ST_LOADING ? "loading" : "shutting_down";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", s);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(r, st == ST_READY ? 200 : 503, body);
}

/* 1 if name is the loaded model's id or one of model_aliases ("*" there: any name). */
static int model_known(const srv_http *h, const char *name) {
    if (!strcmp(name, h->model)) return 1;
    size_t n = strlen(name);
    for (const char *p = h->c.model_aliases; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && t[-1] == ' ') t--;
        if ((t - p == 1 && *p == '*') || ((size_t)(t - p) == n && n && !strncmp(p, name, n)))
            return 1;
        p = e;
    }
    return 0;
}

static enum MHD_Result model_not_found(req *r, const char *name) {
    srv_error e;
    srv_error_set(&e, 404, "invalid_request_error", "model_not_found",
                  "the model '%.128s' does not exist here (this server has '%.64s')", name,
                  r->h->model);
    return send_error(r, &e);
}

/* The loaded model as a /v1/models entry, under the id asked for (an alias stays the alias). */
static cJSON *model_object(const srv_http *h, const char *id) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "mambabyte");
    cJSON_AddNumberToObject(m, "n_vocab", h->mc.n_vocab);
    cJSON_AddNumberToObject(m, "d_model", h->mc.d_model);
    cJSON_AddNumberToObject(m, "n_layer", h->mc.n_layer);
    cJSON_AddNumberToObject(m, "max_tokens_limit", h->c.max_tokens_limit);
    return m;
}

static enum MHD_Result models(req *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), model_object(r->h, r->h->model));
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_json(r, 200, body);
}

/* GET /v1/models/{id}: the model when id names it (or an alias does), else 404. */
static enum MHD_Result model_info(req *r) {
    const char *id = r->url + 11;
    if (!model_known(r->h, id)) return model_not_found(r, id);
    cJSON *m = model_object(r->h, id);
    char *body = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return send_json(r, 200, body);
}

/* ---- streams ---- */

typedef struct stream_ctx {
    srv_stream *st;
    req *r; /* valid while MHD calls the reader: the request is not complete yet */
} stream_ctx;

static void stream_free(void *cls) {
    stream_ctx *x = cls;
    srv_stream_free(x->st);
    free(x);
}

/* MHD's content reader: what each job has shown since the last call goes out as one event (a
 * request with several completions has several jobs, all waking it); with nothing new, a
 * keep-alive comment when one is due, else the connection parks until a job (or the watcher,
 * for the next keep-alive) wakes it. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *x = cls;
    req *r = x->r;
    if (r->gone || r->expired) return MHD_CONTENT_READER_END_WITH_ERROR;
    ssize_t n = srv_stream_take(x->st, buf, max);
    if (n == 0) {
        int f = srv_stream_fill(x->st);
        if (f < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
        pthread_mutex_lock(&r->h->mu);
        double silent = srv_now() - r->last_write;
        pthread_mutex_unlock(&r->h->mu);
        if (!f && silent >= r->h->c.keepalive_s) {
            if (srv_stream_keepalive(x->st)) return MHD_CONTENT_READER_END_WITH_ERROR;
            f = 1;
        }
        if (!f) {
            park(r, SRV_WAIT_MORE, x->st);
            return 0;
        }
        n = srv_stream_take(x->st, buf, max);
    }
    if (n > 0) {
        r->bytes_out += (size_t)n;
        pthread_mutex_lock(&r->h->mu);
        r->last_write = srv_now();
        pthread_mutex_unlock(&r->h->mu);
    }
    return n;
}

/* Cancels every job of the request. */
static void cancel_all(req *r) {
    atomic_store(&r->job->cancelled, 1);
    for (int i = 0; i < r->n_jobs; i++) atomic_store(&r->jobs[i]->cancelled, 1);
}

static enum MHD_Result start_stream(req *r) {
    stream_ctx *x = calloc(1, sizeof *x);
    if (x) {
        x->r = r;
        x->st = r->jobs ? srv_stream_new(r->jobs, r->n_jobs, r->h->model, r->created)
                        : srv_stream_new(&r->job, 1, r->h->model, r->created);
    }
    struct MHD_Response *resp = x && x->st
                                    ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                        stream_read, x, stream_free)
                                    : NULL;
    if (!resp) {
        if (x) stream_free(x);
        cancel_all(r);
        return out_of_memory(r);
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    /* nginx passes a stream on as it comes even where its proxy buffering is on */
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return queue(r, 200, resp);
}

/* ---- jobs ---- */

static srv_limits limits(const cfg *c) {
    return (srv_limits){c->strict_fields,      c->max_prompt_bytes, c->max_tokens_limit,
                        c->default_max_tokens, c->max_stop,         c->max_stop_bytes,
                        c->request_timeout_s};
}

/* Several completions (n, best_of, a list of prompts): one job per completion, in answer order
 * (each prompt's best_of together; completion i's seed is the request's + i). The first of a
 * prompt reads it and the others are its forks (they copy its state), so only it is submitted.
 * Returns 0, or -1 with e filled (the jobs made so far are let go with the request). */
static int submit_many(req *r, const srv_gen_req *g, srv_error *e) {
    const int per = g->best_of, total = (g->n_more + 1) * per;
    if (!(r->jobs = calloc((size_t)total, sizeof *r->jobs)))
        return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    for (int i = 0; i < total; i++) {
        const int p = i / per;
        srv_gen_req c;
        srv_job *j = NULL;
        if (!srv_gen_req_copy(g, p ? g->more[p - 1] : g->prompt,
                              p ? g->more_len[p - 1] : g->prompt_len,
                              g->sampling.seed + (uint64_t)i, &c) &&
            !(j = srv_job_new(SRV_JOB_GENERATE, &c)))
            srv_gen_req_free(&c);
        if (!j) return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
        r->jobs[r->n_jobs++] = j;
        snprintf(j->id, sizeof j->id, "%s", r->id);
        j->index = i;
        j->t_arrive = r->t0;
        j->deadline = r->t0 + j->req.timeout_s;
        srv_job_set_waker(j, wake, r);
        if (i % per == 0 && per > 1 && !(j->forks = calloc((size_t)per - 1, sizeof *j->forks)))
            return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
        if (i % per == 0) continue;
        srv_job *lead = r->jobs[i - i % per];
        srv_job_ref(j);
        lead->forks[lead->n_forks++] = j;
    }
    srv_job_ref(r->jobs[0]);
    r->job = r->jobs[0];
    for (int p = 0; p < total; p += per)
        if (srv_sched_submit(r->h->sched, r->jobs[p], e)) return -1;
    return 0;
}

/* Generation: parse and submit on the first call, then answer once the job is admitted (a
 * stream) or done (a whole answer). */
static enum MHD_Result generate(req *r) {
    srv_http *h = r->h;
    srv_error e;
    if (!r->job && !r->jobs) {
        srv_gen_req g;
        srv_limits lim = limits(&h->c);
        srv_api api = r->rt == R_COMPLETIONS ? SRV_API_COMPLETIONS : SRV_API_GENERATE;
        const char *hdr = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "X-Session-Id");
        if (srv_request_parse(api, r->body ? r->body : "", r->body_len, &lim, hdr, &g, &e))
            return send_error(r, &e);
        snprintf(r->session, sizeof r->session, "%s", g.session);
        snprintf(r->ignored, sizeof r->ignored, "%s", g.ignored);
        if (g.ignored[0] && h->c.log_requests)
            fprintf(stderr, "mambabyte: req=%s: ignored unknown fields: %s\n", r->rid, g.ignored);
        if (g.model && !model_known(h, g.model)) {
            enum MHD_Result rc = model_not_found(r, g.model);
            srv_gen_req_free(&g);
            return rc;
        }
        /* An unseeded request still gets a reported seed, so it can be replayed; 53 bits keep
         * it exact in JSON. */
        if (!g.seed_given) g.sampling.seed = srv_random_u64() >> 11;
        r->created = (long)time(NULL);
        if (g.stream) {
            pthread_mutex_lock(&h->mu);
            r->last_write = r->t0; /* quiet since arrival: a keep-alive is due keepalive_s on */
            pthread_mutex_unlock(&h->mu);
        }
        if (g.n_more || g.best_of > 1) {
            int rc = submit_many(r, &g, &e);
            srv_gen_req_free(&g);
            if (rc) return send_error(r, &e);
        } else {
            srv_job *j = srv_job_new(SRV_JOB_GENERATE, &g);
            if (!j) {
                srv_gen_req_free(&g);
                return out_of_memory(r);
            }
            snprintf(j->id, sizeof j->id, "%s", r->id);
            j->t_arrive = r->t0;
            j->deadline = r->t0 + j->req.timeout_s;
            if (submit(r, j, &e)) return send_error(r, &e);
        }
    }
    srv_job *j = r->job;
    /* A stream still queued when a keep-alive is due starts now, with the keep-alive; should it
     * then fail to be admitted, its error comes as an event. */
    if (j->req.stream && r->quiet) return start_stream(r);
    if (park(r, j->req.stream ? SRV_WAIT_ADMITTED : SRV_WAIT_DONE, NULL)) return MHD_YES;
    if (r->gone || r->expired) return abandoned(r);
    for (int i = 0; i < (r->jobs ? r->n_jobs : 1); i++) {
        srv_job *f = r->jobs ? r->jobs[i] : j;
        pthread_mutex_lock(&f->mu);
        int failed = f->failed;
        pthread_mutex_unlock(&f->mu);
        if (failed) return send_error(r, &f->err);
    }
    if (j->req.stream) return start_stream(r);
    char *body = r->jobs ? srv_response_choices(r->jobs, r->n_jobs, j->req.best_of, j->req.n,
                                                h->model, r->created)
                         : srv_response_body(j, h->model, r->created);
    return body ? send_json(r, 200, body) : out_of_memory(r);
}

static srv_job *session_job(srv_job_kind kind, const char *session) {
    srv_job *j = srv_job_new(kind, NULL);
    if (j && session) snprintf(j->session, sizeof j->session, "%s", session);
    return j;
}

/* Runs one session job (submitted on the first call) and answers with its result. */
static enum MHD_Result session_simple(req *r, srv_job_kind kind) {
    srv_error e;
    if (!r->job || r->job->kind != kind) {
        srv_job *j = session_job(kind, r->session);
        if (!j) return out_of_memory(r);
        if (submit(r, j, &e)) return send_error(r, &e);
    }
    if (park(r, SRV_WAIT_DONE, NULL)) return MHD_YES;
    if (r->gone || r->expired) return abandoned(r);
    srv_job *j = r->job;
    if (j->failed) return send_error(r, &j->err);
    if (j->session_out[0]) snprintf(r->session, sizeof r->session, "%s", j->session_out);
    return send_json(r, 200, j->result ? strdup(j->result) : NULL);
}

/* POST /v1/sessions: a new session (stage 0), optionally fed a first prompt (stage 1, nothing
 * is generated), then its description (stage 2). */
static enum MHD_Result session_create(req *r) {
    srv_error e;
    if (!r->job) {
        srv_limits lim = limits(&r->h->c);
        const char *body = r->body_len ? r->body : "{}";
        if (srv_request_parse(SRV_API_SESSION_CREATE, body, r->body_len ? r->body_len : 2, &lim,
                              NULL, &r->g, &e))
            return send_error(r, &e);
        snprintf(r->ignored, sizeof r->ignored, "%s", r->g.ignored);
        /* X-Session-Id on a creation names the new session (a load balancer picks ids it can
         * route on) */
        const char *id = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "X-Session-Id");
        if (id && !srv_id_valid(id))
            return fail(r, 400, "invalid_request_error", "invalid_value",
                        "X-Session-Id must be a session id (1-64 of A-Z a-z 0-9 _ -)");
        srv_job *j = session_job(SRV_JOB_SESSION_CREATE, id);
        if (!j) return out_of_memory(r);
        if (submit(r, j, &e)) return send_error(r, &e);
    }
    if (r->stage == 2) return session_simple(r, SRV_JOB_SESSION_INFO);
    if (park(r, SRV_WAIT_DONE, NULL)) return MHD_YES;
    if (r->gone || r->expired) return abandoned(r);
    if (r->job->failed) return send_error(r, &r->job->err);
    if (r->stage == 0) {
        snprintf(r->session, sizeof r->session, "%s", r->job->session_out);
        if (r->g.prompt_len > 0) {
            r->g.api = SRV_API_GENERATE;
            r->g.max_tokens = 0;
            r->g.timeout_s = r->h->c.request_timeout_s;
            snprintf(r->g.session, sizeof r->g.session, "%s", r->session);
            srv_job *p = srv_job_new(SRV_JOB_GENERATE, &r->g);
            if (!p) return out_of_memory(r);
            p->deadline = r->t0 + r->h->c.request_timeout_s;
            r->stage = 1;
            if (submit(r, p, &e)) return send_error(r, &e);
            if (park(r, SRV_WAIT_DONE, NULL)) return MHD_YES;
            if (r->gone || r->expired) return abandoned(r);
            if (r->job->failed) return send_error(r, &r->job->err);
        }
    }
    r->stage = 2;
    return session_simple(r, SRV_JOB_SESSION_INFO);
}

static enum MHD_Result dispatch(req *r) {
    int post = !strcmp(r->method, "POST");
    switch (r->rt) {
    case R_HEALTH:
        return health(r);
    case R_OPENAPI:
        return send_body(r, 200, strdup(srv_openapi_json), "application/json");
    case R_METRICS:
        return send_body(r, 200, srv_metrics_render(r->h->mx), "text/plain; version=0.0.4");
    case R_MODELS:
        return models(r);
    case R_MODEL:
        return model_info(r);
    case R_COMPLETIONS:
    case R_GENERATE:
        return generate(r);
    case R_SESSIONS:
        return post ? session_create(r) : session_simple(r, SRV_JOB_SESSION_LIST);
    case R_SESSION:
        return session_simple(r, strcmp(r->method, "DELETE") ? SRV_JOB_SESSION_INFO
                                                             : SRV_JOB_SESSION_DELETE);
    case R_SESSION_FORK:
        return session_simple(r, SRV_JOB_SESSION_FORK);
    case R_SESSION_SAVE:
        return session_simple(r, SRV_JOB_SESSION_SAVE);
    case R_SESSION_RESTORE:
        return session_simple(r, SRV_JOB_SESSION_RESTORE);
    default:
        return fail(r, 404, "not_found_error", "not_found", "no such route");
    }
}

/* Checks that need no body: route, method, readiness, key. */
static enum MHD_Result first_call(req *r) {
    srv_http *h = r->h;
    char msg[256];
    if (r->rt == R_NONE) {
        snprintf(msg, sizeof msg, "no route %s %s", r->method, r->url);
        return fail(r, 404, "not_found_error", "not_found", msg);
    }
    if (!strcmp(r->method, "OPTIONS")) return preflight(r);
    if (!method_ok(r->rt, r->method)) {
        snprintf(msg, sizeof msg, "%s does not allow %s (allowed: %s)", r->url, r->method,
                 allowed(r->rt));
        return fail(r, 405, "invalid_request_error", "method_not_allowed", msg);
    }
    if (r->rt == R_HEALTH || r->rt == R_OPENAPI) return MHD_YES; /* public, like the docs */
    /* On a session's own routes the header, when sent, must name the session of the path. */
    const char *hdr = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "X-Session-Id");
    if (r->session[0] && hdr && strcmp(hdr, r->session)) {
        snprintf(msg, sizeof msg, "X-Session-Id names a session other than the path's (%s)",
                 r->session);
        return fail(r, 400, "invalid_request_error", "invalid_value", msg);
    }
    if (!authorized(r->c, h))
        return fail(r, 401, "authentication_error", "invalid_api_key",
                    "missing or wrong API key (Authorization: Bearer <key>)");
    int st = atomic_load(&h->state);
    if (st != ST_READY)
        return fail(r, 503, "server_error", st == ST_LOADING ? "loading" : "shutting_down",
                    st == ST_LOADING ? "the model is loading" : "the server is shutting down");
    return MHD_YES;
}

/* The request id a client sent, if it is one we can echo safely. */
static void request_id(req *r) {
    const char *v = MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "X-Request-Id");
    snprintf(r->rid, sizeof r->rid, "%s", v && srv_id_valid(v) ? v : r->id);
}

static req *new_req(srv_http *h, struct MHD_Connection *c, const char *url, const char *method) {
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->h = h;
    r->c = c;
    r->t0 = srv_now();
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->url, sizeof r->url, "%s", url);
    srv_new_id("cmpl-", r->id, sizeof r->id);
    request_id(r);
    r->origin = cors_origin(c, h);
    r->rt = match(url, r->session);
    r->ph = P_READING;
    r->read_deadline = r->t0 + h->c.request_read_timeout_s;
    /* a bound on every wait, in case a job were lost: its deadline, and some slack */
    r->give_up = r->t0 + h->c.request_timeout_s + 30;
    pthread_mutex_lock(&h->mu);
    r->next = h->live;
    if (h->live) h->live->prev = r;
    h->live = r;
    pthread_mutex_unlock(&h->mu);
    return r;
}

/* Appends upload bytes to the body; past max_body_bytes they are only counted. */
static int take_upload(req *r, const char *upload, size_t n) {
    if (r->too_large || r->body_len + n > (size_t)r->h->c.max_body_bytes) {
        r->too_large = 1;
        return 0;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = (r->body_len + n + 1) * 2;
        char *b = realloc(r->body, cap);
        if (!b) return -1;
        r->body = b, r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, upload, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    req *r = *con_cls;
    if (!r) {
        if (!(r = new_req(cls, c, url, method))) return MHD_NO;
        *con_cls = r;
        return first_call(r);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (srv_now() > r->read_deadline) return MHD_NO; /* a body that trickles in */
        if (r->responded) return MHD_YES;
        return take_upload(r, upload, n) ? MHD_NO : MHD_YES;
    }
    pthread_mutex_lock(&r->h->mu);
    int cut = r->ph == P_CUT; /* the watcher shut the socket as the body came in */
    if (r->ph == P_READING) r->ph = P_BUSY;
    pthread_mutex_unlock(&r->h->mu);
    if (cut) return MHD_NO;
    if (r->responded) return MHD_YES;
    if (r->too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "the body is larger than %d bytes", r->h->c.max_body_bytes);
        return fail(r, 413, "invalid_request_error", "body_too_large", msg);
    }
    return dispatch(r);
}

/* ---- the log line ---- */

/* s with every byte that could forge or garble a log line (control bytes, quotes, backslash,
 * non-ASCII) written as \xHH: a URL may carry %0A, which libmicrohttpd decodes to a newline. */
static void log_escape(const char *s, char *out, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (; *s && o + 5 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
            out[o++] = '\\', out[o++] = 'x', out[o++] = hex[ch >> 4], out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = 0;
}

static void log_line(const srv_http *h, const char *id, const char *method, const char *url,
                     int status, size_t in, size_t out, double ttfb, double dur) {
    if (!h->c.log_requests) return;
    char ts[32], tt[32] = "-", m[40], u[4 * 160 + 8];
    time_t t = time(NULL);
    struct tm tm;
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    if (ttfb >= 0) snprintf(tt, sizeof tt, "%.1f", ttfb * 1e3);
    log_escape(method, m, sizeof m);
    log_escape(url, u, sizeof u);
    fprintf(stderr, "%s req=%s %s %s status=%d in=%zu out=%zu ttfb_ms=%s dur_ms=%.1f\n", ts, id, m,
            u, status, in, out, tt, dur * 1e3);
}

/* The end of a request, however it ended: cancel its job if the client left early, count it
 * and write its log line. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv_http *h = cls;
    req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    pthread_mutex_lock(&h->mu);
    if (r->prev) r->prev->next = r->next;
    if (r->next) r->next->prev = r->prev;
    if (h->live == r) h->live = r->next;
    for (req **p = &h->woken; r->queued && *p; p = &(*p)->woken_next)
        if (*p == r) {
            *p = r->woken_next;
            r->queued = 0;
            break;
        }
    pthread_mutex_unlock(&h->mu);
    double now = srv_now(), ttfb = -1;
    /* 499: the client closed the connection first (nginx's convention). */
    int status = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || !r->status ? r->status : 499;
    if (!status) status = 499;
    if (r->job) {
        srv_job_set_waker(r->job, NULL, NULL);
        pthread_mutex_lock(&r->job->mu);
        if (!r->job->done) atomic_store(&r->job->cancelled, 1);
        if (r->job->t_first > 0) ttfb = r->job->t_first - r->t0;
        pthread_mutex_unlock(&r->job->mu);
        srv_job_unref(r->job);
    }
    for (int i = 0; i < r->n_jobs; i++) {
        srv_job_set_waker(r->jobs[i], NULL, NULL);
        atomic_store(&r->jobs[i]->cancelled, 1); /* no effect on a job that is done */
        srv_job_unref(r->jobs[i]);
    }
    free(r->jobs);
    srv_metrics_request(h->mx, status, r->body_len, r->bytes_out, now - r->t0);
    log_line(h, r->rid, r->method, r->url, status, r->body_len, r->bytes_out, ttfb, now - r->t0);
    srv_gen_req_free(&r->g);
    free(r->body);
    free(r);
}

/* ---- the watcher ---- */

/* Which parked clients hung up: a peer that closed its end shows POLLRDHUP (or POLLHUP/POLLERR
 * once reset). One poll() for all of them, h->mu held: (*fds)[i].revents answers for the i-th
 * parked request in list order. -1 when out of memory or poll fails: nobody is marked. */
static int hang_ups(srv_http *h, struct pollfd **fds, size_t *cap) {
    size_t n = 0;
    for (req *r = h->live; r; r = r->next) n += r->suspended;
    if (n > *cap) {
        struct pollfd *f = realloc(*fds, n * sizeof *f);
        if (!f) return -1;
        *fds = f, *cap = n;
    }
    n = 0;
    for (req *r = h->live; r; r = r->next)
        if (r->suspended) (*fds)[n++] = (struct pollfd){.fd = r->fd, .events = POLLRDHUP};
    if (n && poll(*fds, n, 0) < 0) return -1;
    return 0;
}

/* Resumes the parked requests their jobs woke, as soon as they are woken; and every 50 ms: a
 * request that has not arrived by its deadline loses its connection (shutdown wakes
 * libmicrohttpd, which closes it); a parked request whose client left, or which waited past
 * any deadline, is woken to end; a parked stream is woken when a keep-alive is due. */
static void *watch(void *arg) {
    srv_http *h = arg;
    struct pollfd *fds = NULL;
    size_t cap = 0;
    struct timespec tick;
    clock_gettime(CLOCK_MONOTONIC, &tick);
    pthread_mutex_lock(&h->mu);
    for (;;) {
        tick.tv_nsec += 50 * 1000 * 1000;
        if (tick.tv_nsec >= 1000 * 1000 * 1000) tick.tv_sec++, tick.tv_nsec -= 1000 * 1000 * 1000;
        while (!h->stopping && (h->woken || pthread_cond_timedwait(&h->cv, &h->mu, &tick) == 0))
            resume_woken(h);
        if (h->stopping) {
            pthread_mutex_unlock(&h->mu);
            free(fds);
            return NULL;
        }
        double now = srv_now();
        int polled = !hang_ups(h, &fds, &cap);
        size_t k = 0;
        for (req *r = h->live; r; r = r->next) {
            if (r->ph == P_READING && now > r->read_deadline) {
                shutdown(r->fd, SHUT_RDWR);
                r->ph = P_CUT;
            }
            if (!r->suspended) continue;
            short ev = polled ? fds[k++].revents : 0;
            if (ev & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                r->gone = 1;
                cancel_all(r);
            } else if (now > r->give_up) {
                r->expired = 1;
            } else if (r->last_write <= 0 || now - r->last_write < h->c.keepalive_s) {
                continue;
            } else {
                r->quiet = 1;
            }
            r->suspended = 0;
            MHD_resume_connection(r->c);
        }
        clock_gettime(CLOCK_MONOTONIC, &tick); /* the next round 50 ms after this one */
    }
}

/* ---- the daemon ---- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    srv_http *h = cls;
    atomic_fetch_add(&h->n_conns, toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
}

static int handoff(void *arg, int fd, const struct sockaddr *addr, socklen_t len) {
    srv_http *h = arg;
    if (atomic_load(&h->n_conns) >= h->c.max_connections) return -1;
    MHD_add_connection(h->d, fd, addr, len);
    return 0;
}

static void answered(void *arg, const char *id, const char *method, const char *url, int status,
                     size_t bytes_out) {
    srv_http *h = arg;
    srv_metrics_request(h->mx, status, 0, bytes_out, 0);
    log_line(h, id, method, url, status, 0, bytes_out, -1, 0);
}

/* The name in X-Mambabyte-Daemon: daemon_id (printable ASCII, checked at start), or the host's
 * name and the port, which tell apart daemons behind one load balancer. Set once the port is
 * known and before the door takes a connection. */
static void daemon_name(void *arg, int port) {
    srv_http *h = arg;
    if (h->c.daemon_id[0]) {
        snprintf(h->daemon_id, sizeof h->daemon_id, "%s", h->c.daemon_id);
        return;
    }
    char host[128] = "";
    if (gethostname(host, sizeof host - 1)) snprintf(host, sizeof host, "localhost");
    snprintf(h->daemon_id, sizeof h->daemon_id, "%s:%d", host, port);
}

static int header_safe(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

srv_http *srv_http_start(const cfg *c, srv_metrics *mx, char *err, size_t n) {
    if (!header_safe(c->daemon_id)) {
        snprintf(err, n, "daemon_id must be printable ASCII without spaces");
        return NULL;
    }
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    h->c = *c;
    h->mx = mx;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_store(&h->state, ST_LOADING);
    srv_metrics_set_limits(mx, c->request_timeout_s);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)c->connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, n, "cannot start the HTTP daemon");
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        free(h);
        return NULL;
    }
    srv_door_ops ops = {.arg = h, .handoff = handoff, .answered = answered, .bound = daemon_name};
    int watching = !pthread_create(&h->watcher, NULL, watch, h);
    if (!watching) snprintf(err, n, "cannot start the watcher thread");
    if (!watching || !(h->door = srv_accept_start(c, &ops, err, n))) {
        if (watching) {
            pthread_mutex_lock(&h->mu);
            h->stopping = 1;
            pthread_cond_signal(&h->cv);
            pthread_mutex_unlock(&h->mu);
            pthread_join(h->watcher, NULL);
        }
        MHD_stop_daemon(h->d);
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        free(h);
        return NULL;
    }
    h->port = srv_accept_port(h->door);
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
    srv_accept_stop(h->door);
    /* libmicrohttpd must not stop with parked connections: wake them to end */
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    pthread_cond_signal(&h->cv);
    for (req *r = h->live; r; r = r->next)
        if (r->suspended) {
            r->suspended = 0;
            r->gone = 1;
            MHD_resume_connection(r->c);
        }
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->watcher, NULL);
    MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}
