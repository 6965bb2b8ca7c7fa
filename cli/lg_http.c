/* lg_http.c: loadgen over HTTP (lg.h). One thread drives every request through libcurl's multi
 * interface: a closed loop keeps `concurrency` requests in flight, an open loop starts them at
 * random arrival times (gamma gaps of mean 1/rate). A streamed answer is read event by event as
 * it arrives, so the time of the first generated text and the gaps between chunks are the
 * client's own, not the response headers'. */
#include <cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "lg.h"

#define MAX_ERROR_BODY 4096 /* bytes of a failed answer kept for its message */

char *lg_body(const lg_opts *o, const lg_prompts *p, long idx, size_t *prompt_bytes) {
    size_t k = (size_t)idx % p->n;
    cJSON *b = cJSON_CreateObject();
    if (!b) return NULL;
    if (o->model) cJSON_AddStringToObject(b, "model", o->model);
    cJSON_AddStringToObject(b, "prompt", p->text[k]);
    cJSON_AddNumberToObject(b, "max_tokens", o->max_tokens);
    if (o->stream) cJSON_AddTrueToObject(b, "stream");
    if (o->temperature_set) cJSON_AddNumberToObject(b, "temperature", o->sampling.temperature);
    if (o->top_k_set) cJSON_AddNumberToObject(b, "top_k", o->sampling.top_k);
    if (o->top_p_set) cJSON_AddNumberToObject(b, "top_p", o->sampling.top_p);
    if (o->min_p_set) cJSON_AddNumberToObject(b, "min_p", o->sampling.min_p);
    /* seeds stay below 2^53: JSON numbers are doubles */
    cJSON_AddNumberToObject(b, "seed",
                            (double)((o->sampling.seed + (uint64_t)idx) & ((1ull << 53) - 1)));
    if (o->speculative >= 0) {
        cJSON *s = cJSON_AddObjectToObject(b, "speculative");
        cJSON_AddBoolToObject(s, "enabled", o->speculative);
    }
    char *text = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    *prompt_bytes = p->len[k];
    return text;
}

/* ---- one request ---- */

typedef struct conn {
    CURL *h;
    char *body;
    lg_answer ans;
    lg_rec rec;
    const lg_opts *o;
    struct conn *prev, *next; /* the transfers in flight */
    char err[CURL_ERROR_SIZE];
} conn;

static size_t on_data(char *data, size_t size, size_t nmemb, void *userp) {
    conn *c = userp;
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    /* a stream is read as it comes; a failure's body is kept for its message only */
    int events = c->o->stream && status == 200;
    if (lg_answer_add(&c->ans, data, size * nmemb, events, status == 200 ? 0 : MAX_ERROR_BODY,
                      cli_now()))
        return 0; /* curl fails the transfer: a transport error */
    return size * nmemb;
}

static conn *conn_start(CURLM *multi, const lg_opts *o, const lg_prompts *p, long idx,
                        struct curl_slist *hdrs, lg_run *run) {
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->o = o;
    c->ans.native = o->native, c->ans.rec = &c->rec, c->ans.run = run, c->ans.t0 = run->t0;
    c->rec.idx = idx, c->rec.t_first = -1, c->rec.usage_prompt = c->rec.usage_out = -1;
    c->body = lg_body(o, p, idx, &c->rec.prompt_bytes);
    c->h = curl_easy_init();
    if (!c->body || !c->h) goto fail;
    curl_easy_setopt(c->h, CURLOPT_URL, o->endpoint);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->h, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->h, CURLOPT_ERRORBUFFER, c->err);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, (long)(o->timeout_s * 1e3));
    curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->h, CURLOPT_TCP_NODELAY, 1L);
    c->rec.t_send = cli_now() - run->t0;
    if (curl_multi_add_handle(multi, c->h) != CURLM_OK) goto fail;
    return c;
fail:
    curl_easy_cleanup(c->h);
    free(c->body);
    free(c);
    return NULL;
}

/* A transfer has ended with result res: completes the record. */
static void conn_finish(conn *c, CURLcode res, double now) {
    lg_rec *r = &c->rec;
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    r->status = (int)status;
    if (res != CURLE_OK) {
        r->fail = LG_TRANSPORT;
        snprintf(r->why, sizeof r->why, "%.60s%s%.90s", curl_easy_strerror(res),
                 c->err[0] ? ": " : "", c->err);
    } else if (status != 200) {
        r->fail = LG_HTTP;
        lg_answer_error(&c->ans);
    } else if (c->o->stream) {
        lg_answer_stream_end(&c->ans, now);
    } else {
        lg_answer_whole(&c->ans, now);
    }
    r->t_end = now - c->ans.t0;
}

static void conn_free(CURLM *multi, conn **live, conn *c) {
    if (c->prev) c->prev->next = c->next;
    if (c->next) c->next->prev = c->prev;
    if (*live == c) *live = c->next;
    curl_multi_remove_handle(multi, c->h);
    curl_easy_cleanup(c->h);
    free(c->body);
    lg_answer_free(&c->ans);
    free(c);
}

/* ---- the loop ---- */

/* Whether request number `sent` may start now: within the run's count and time, not stopped. */
static int may_send(const lg_opts *o, long n, int measured, long sent, double now,
                    const lg_run *r) {
    if (lg_interrupted || r->stopped[0]) return 0;
    return measured ? lg_may_send(o, sent, now) : sent < n;
}

int lg_http_run(const lg_opts *o, const lg_prompts *p, long n, int measured, lg_run *r, mb_err *e) {
    CURLM *multi = curl_multi_init();
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    char *auth = NULL;
    if (hdrs && o->api_key) {
        size_t al = strlen(o->api_key) + sizeof "Authorization: Bearer ";
        if ((auth = malloc(al))) {
            snprintf(auth, al, "Authorization: Bearer %s", o->api_key);
            struct curl_slist *h2 = curl_slist_append(hdrs, auth);
            if (!h2) curl_slist_free_all(hdrs);
            hdrs = h2;
        }
    }
    /* Stops libcurl from waiting for "100 Continue" before a large body. */
    struct curl_slist *h3 = hdrs ? curl_slist_append(hdrs, "Expect:") : NULL;
    if (!h3) curl_slist_free_all(hdrs);
    hdrs = h3;
    if (!multi || !hdrs || (o->api_key && !auth)) {
        curl_multi_cleanup(multi);
        curl_slist_free_all(hdrs);
        free(auth);
        return mb_fail(e, "out of memory");
    }
    /* requests in flight at most: a warm-up sends at most its count at once */
    int cap = o->concurrency;
    if (!measured && n < cap) cap = (int)n;
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)(cap < 1024 ? cap : 1024));
    uint64_t arrivals = o->sampling.seed ^ 0xa5a5a5a5a5a5a5a5ull;
    const int open_loop = measured && o->rate > 0;
    const double tick = isatty(2) ? 0.25 : 10.0;
    r->t0 = cli_now();
    const double cpu0 = cli_cpu_now();
    double next_arrival = 0, next_tick = tick, t_last = 0;
    long sent = 0;
    int inflight = 0, rc = 0;
    conn *live = NULL;
    for (;;) {
        double now = cli_now() - r->t0;
        int may = may_send(o, n, measured, sent, now, r);
        while (may && inflight < cap && (!open_loop || now >= next_arrival)) {
            conn *c = conn_start(multi, o, p, sent, hdrs, r);
            if (!c) {
                rc = mb_fail(e, "out of memory");
                break;
            }
            if (open_loop && now - next_arrival > 0.001) r->delayed++;
            c->next = live;
            if (live) live->prev = c;
            live = c;
            sent++, inflight++;
            if (inflight > r->peak) r->peak = inflight;
            if (open_loop) next_arrival += lg_gamma1(&arrivals, o->burstiness) / o->rate;
            may = may_send(o, n, measured, sent, now, r);
        }
        if (rc || (!may && inflight == 0)) break;
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            conn *c;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
            double t = cli_now();
            conn_finish(c, m->data.result, t);
            t_last = t - r->t0;
            if (m->data.result == CURLE_COULDNT_CONNECT && !r->stopped[0])
                snprintf(
                    r->stopped, sizeof r->stopped,
                    "stopped sending after %ld requests: the server refused a connection (%.100s)",
                    sent, c->rec.why);
            if (lg_run_add(r, &c->rec)) rc = mb_fail(e, "out of memory");
            conn_free(multi, &live, c);
            inflight--;
        }
        if (rc) break;
        now = cli_now() - r->t0;
        if (measured && !o->quiet && now >= next_tick) {
            lg_progress(r, sent, inflight, now, 0);
            next_tick = now + tick;
        }
        /* wait for the sockets, unless a request may start now (a slot freed in a closed loop),
         * and no further than the next arrival */
        double wait = 0.1;
        if (inflight < cap && may_send(o, n, measured, sent, now, r))
            wait = open_loop ? next_arrival - now : 0;
        if (wait > 0) curl_multi_poll(multi, NULL, 0, (int)(wait * 1e3) + 1, NULL);
    }
    r->duration = t_last;
    r->cpu_s = cli_cpu_now() - cpu0;
    if (measured && !o->quiet) lg_progress(r, sent, inflight, cli_now() - r->t0, 1);
    while (live) conn_free(multi, &live, live); /* after an out-of-memory stop */
    curl_multi_cleanup(multi);
    curl_slist_free_all(hdrs);
    free(auth);
    return rc;
}

/* ---- single requests: /metrics and the reachability check ---- */

typedef struct text_buf {
    char *s;
    size_t len;
    int oom;
} text_buf;

static size_t on_text(char *data, size_t size, size_t nmemb, void *userp) {
    text_buf *t = userp;
    size_t n = size * nmemb;
    char *s = realloc(t->s, t->len + n + 1);
    if (!s) {
        t->oom = 1;
        return 0;
    }
    memcpy(s + t->len, data, n);
    t->s = s, t->len += n, s[t->len] = 0;
    return n;
}

char *lg_http_get(const char *url, const char *api_key, double timeout_s, mb_err *e) {
    CURL *h = curl_easy_init();
    if (!h) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    text_buf t = {0};
    char err[CURL_ERROR_SIZE] = "", auth[512];
    struct curl_slist *hdrs = NULL;
    if (api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
        hdrs = curl_slist_append(NULL, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_text);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1e3));
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode res = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(hdrs);
    if (res == CURLE_OK && status == 200 && t.s) return t.s;
    if (res != CURLE_OK)
        mb_fail(e, "GET %s: %s", url, err[0] ? err : curl_easy_strerror(res));
    else
        mb_fail(e, "GET %s: status %ld", url, status);
    free(t.s);
    return NULL;
}

int lg_http_probe(const lg_opts *o, mb_err *e) {
    CURL *h = curl_easy_init();
    if (!h) return mb_fail(e, "out of memory");
    char err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, o->endpoint);
    curl_easy_setopt(h, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(o->timeout_s < 10 ? o->timeout_s * 1e3 : 1e4));
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode res = curl_easy_perform(h);
    curl_easy_cleanup(h);
    if (res == CURLE_OK) return 0;
    return mb_fail(e, "cannot reach %s: %s", o->endpoint, err[0] ? err : curl_easy_strerror(res));
}
