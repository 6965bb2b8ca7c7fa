/* srv_response.c: JSON bodies and SSE framing for generation answers. */
#include "srv_response.h"
#include "srv_base64.h"
#include "srv_text.h"

#include <cJSON.h>
#include <math.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *srv_finish_name(srv_finish f) {
    switch (f) {
    case SRV_FINISH_LENGTH:
        return "length";
    case SRV_FINISH_STOP:
        return "stop";
    case SRV_FINISH_TIMEOUT:
        return "timeout";
    case SRV_FINISH_CANCELLED:
        return "cancelled";
    default:
        return NULL;
    }
}

/* bytes as text (invalid UTF-8 replaced) in a JSON string literal, added raw: cJSON strings
 * stop at NUL, and a byte model may well write one. */
static void add_text(cJSON *o, const char *name, const uint8_t *b, size_t n, int final,
                     size_t *used) {
    char *t = malloc(3 * n + 1);
    size_t u = 0, len = t ? srv_utf8_text(b, n, final, t, &u) : 0;
    char *q = t ? srv_json_quote(t, len) : NULL;
    cJSON_AddRawToObject(o, name, q ? q : "\"\"");
    free(t);
    free(q);
    if (used) *used = t ? u : n;
}

static void add_base64(cJSON *o, const char *name, const uint8_t *b, size_t n) {
    char *s = srv_base64_encode(b, n);
    cJSON_AddStringToObject(o, name, s ? s : "");
    free(s);
}

static double ms(double a, double b) {
    return a > 0 && b > 0 && b >= a ? (b - a) * 1e3 : 0;
}

static void add_timings(cJSON *o, const srv_job *j) {
    cJSON *t = cJSON_AddObjectToObject(o, "timings");
    cJSON_AddNumberToObject(t, "queue_ms", ms(j->t_arrive, j->t_admit));
    cJSON_AddNumberToObject(t, "prefill_ms", ms(j->t_admit, j->t_prefilled));
    cJSON_AddNumberToObject(t, "ttfb_ms", ms(j->t_arrive, j->t_first));
    double decode = ms(j->t_first, j->t_done);
    cJSON_AddNumberToObject(t, "decode_ms", decode);
    cJSON_AddNumberToObject(t, "total_ms", ms(j->t_arrive, j->t_done));
    cJSON_AddNumberToObject(
        t, "bytes_per_second",
        decode > 0 && j->out_len > 1 ? round((double)(j->out_len - 1) * 1e4 / decode) / 10 : 0);
    cJSON_AddNumberToObject(t, "drafts", (double)j->drafts);
    cJSON_AddNumberToObject(t, "drafted_bytes", (double)j->drafted);
    cJSON_AddNumberToObject(t, "accepted_bytes", (double)j->accepted);
}

static void add_usage(cJSON *o, const srv_job *j) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    double p = (double)j->req.prompt_len, c = (double)j->out_visible;
    if (j->req.api == SRV_API_COMPLETIONS) {
        /* For a byte model a token is a byte. */
        cJSON_AddNumberToObject(u, "prompt_tokens", p);
        cJSON_AddNumberToObject(u, "completion_tokens", c);
        cJSON_AddNumberToObject(u, "total_tokens", p + c);
    } else {
        cJSON_AddNumberToObject(u, "prompt_bytes", p);
        cJSON_AddNumberToObject(u, "completion_bytes", c);
        cJSON_AddNumberToObject(u, "generated_bytes", (double)j->out_len);
    }
}

static cJSON *head(const srv_job *j, const char *object, const char *model, long created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", model);
    return o;
}

static void add_native_tail(cJSON *o, const srv_job *j) {
    const char *f = srv_finish_name(j->finish);
    if (f)
        cJSON_AddStringToObject(o, "finish_reason", f);
    else
        cJSON_AddNullToObject(o, "finish_reason");
    /* Raw: cJSON prints doubles with 15 significant digits, which would change a 53-bit seed. */
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)j->req.sampling.seed);
    cJSON_AddRawToObject(o, "seed", seed);
    if (j->req.session[0]) cJSON_AddStringToObject(o, "session", j->req.session);
    add_usage(o, j);
    add_timings(o, j);
}

/* The token string of byte b, as OpenAI writes one: the byte itself when it is text on its
 * own (printable ASCII, tab, newline, carriage return), else "bytes:\xNN". */
static void byte_token(uint8_t b, char out[12]) {
    if ((b >= 0x20 && b < 0x7f) || b == '\t' || b == '\n' || b == '\r')
        out[0] = (char)b, out[1] = 0;
    else
        snprintf(out, 12, "bytes:\\x%02x", b);
}

/* OpenAI's completions "logprobs" for bytes b[0..n), entries from..from+n of the job's scores:
 * tokens, token_logprobs (null for the prompt's first byte), top_logprobs (the k likeliest
 * bytes, and the byte itself when it is not among them), text_offset (characters of the text
 * before the byte's character; chars0 before b). */
static void add_logprobs(cJSON *c, const srv_job *j, const uint8_t *b, size_t n, size_t from,
                         size_t chars0) {
    const srv_scores *sc = &j->sc;
    size_t *off = malloc((n + 1) * sizeof *off);
    if (!off || from + n > sc->n) {
        free(off);
        cJSON_AddNullToObject(c, "logprobs");
        return;
    }
    srv_utf8_offsets(b, n, off);
    cJSON *lp = cJSON_AddObjectToObject(c, "logprobs");
    cJSON *tokens = cJSON_AddArrayToObject(lp, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(lp, "text_offset");
    char tok[12];
    for (size_t i = 0; i < n; i++) {
        const size_t e = from + i;
        byte_token(b[i], tok);
        cJSON_AddItemToArray(tokens, cJSON_CreateString(tok));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(chars0 + off[i])));
        if (isnan(sc->lp[e])) {
            cJSON_AddItemToArray(tlp, cJSON_CreateNull());
            cJSON_AddItemToArray(top, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(sc->lp[e]));
        cJSON *alt = cJSON_CreateObject();
        int self = 0;
        for (int t = 0; t < sc->k; t++) {
            uint8_t a = sc->top[e * (size_t)sc->k + (size_t)t];
            byte_token(a, tok);
            cJSON_AddNumberToObject(alt, tok, sc->top_lp[e * (size_t)sc->k + (size_t)t]);
            self |= a == b[i];
        }
        if (!self) {
            byte_token(b[i], tok);
            cJSON_AddNumberToObject(alt, tok, sc->lp[e]);
        }
        cJSON_AddItemToArray(top, alt);
    }
    free(off);
}

/* A completions choice, added to the array ch, for the answer's bytes b[0..n) (entries from..
 * of the scores; chars0 characters of text before them): *used tells how many bytes its text
 * took (whole UTF-8 unless final), and the log-probabilities cover those. */
static cJSON *completion_choice(cJSON *ch, const srv_job *j, const uint8_t *b, size_t n, int final,
                                size_t *used, const char *finish, size_t from, size_t chars0,
                                int index) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    size_t u = 0;
    add_text(c, "text", b, n, final, &u);
    if (used) *used = u;
    cJSON_AddNumberToObject(c, "index", index);
    if (j->req.logprobs >= 0 && u > 0)
        add_logprobs(c, j, b, u, from, chars0);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

/* The answer's bytes [from, to): with echo the prompt then the output, else the output; *tmp
 * holds a copy (to free) when they reach into the prompt. NULL when out of memory. */
static const uint8_t *answer_bytes(const srv_job *j, size_t from, size_t to, uint8_t **tmp) {
    const size_t base = j->req.echo ? j->req.prompt_len : 0;
    *tmp = NULL;
    if (from >= base) return j->out + (from - base);
    if (!(*tmp = malloc(to - from + 1))) return NULL;
    size_t p = (to < base ? to : base) - from;
    memcpy(*tmp, j->req.prompt + from, p);
    if (to > base) memcpy(*tmp + p, j->out, to - base);
    return *tmp;
}

static char *print_free(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* j's whole answer as a choice of the array ch; -1 when out of memory. */
static int whole_choice(cJSON *ch, const srv_job *j, int index) {
    size_t n = (j->req.echo ? j->req.prompt_len : 0) + j->out_visible;
    uint8_t *tmp;
    const uint8_t *b = answer_bytes(j, 0, n, &tmp);
    if (!b) return -1;
    completion_choice(ch, j, b, n, 1, NULL, srv_finish_name(j->finish), 0, 0, index);
    free(tmp);
    return 0;
}

/* The mean raw log-probability per byte of a best_of completion (none: the least). */
static double mean_lp(const srv_job *j) {
    return j->n_lp ? j->sum_lp / (double)j->n_lp : -HUGE_VAL;
}

char *srv_response_choices(srv_job *const *jobs, int n_jobs, int best_of, int n, const char *model,
                           long created) {
    cJSON *o = head(jobs[0], "text_completion", model, created);
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    double prompt = 0, completion = 0;
    for (int p = 0; p * best_of < n_jobs; p++) {
        srv_job *const *g = jobs + p * best_of;
        prompt += (double)g[0]->req.prompt_len;
        int kept[SRV_CHOICES_MAX] = {0};
        for (int c = 0; c < n; c++) {
            /* the best not yet kept: highest mean log-probability, the earlier on a tie */
            int best = -1;
            for (int k = 0; k < best_of; k++)
                if (!kept[k] && (best < 0 || (best_of > n && mean_lp(g[k]) > mean_lp(g[best]))))
                    best = k;
            kept[best] = 1;
            completion += (double)g[best]->out_visible;
            if (whole_choice(ch, g[best], p * n + c)) {
                cJSON_Delete(o);
                return NULL;
            }
        }
    }
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", completion);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + completion);
    return print_free(o);
}

char *srv_response_body(const srv_job *j, const char *model, long created) {
    if (j->req.api == SRV_API_COMPLETIONS) {
        cJSON *o = head(j, "text_completion", model, created);
        if (whole_choice(cJSON_AddArrayToObject(o, "choices"), j, 0)) {
            cJSON_Delete(o);
            return NULL;
        }
        add_usage(o, j);
        return print_free(o);
    }
    cJSON *o = head(j, "generation", model, created);
    add_text(o, "text", j->out, j->out_visible, 1, NULL);
    add_base64(o, "bytes_base64", j->out, j->out_visible);
    add_native_tail(o, j);
    return print_free(o);
}

/* ---- Server-Sent Events ---- */

/* One completion of a stream: what of its job has been sent. */
typedef struct stream_choice {
    srv_job *job;
    size_t seen;  /* out_visible when last looked at */
    size_t taken; /* bytes of the answer (with echo: the prompt, then the output) sent as text */
    size_t chars; /* characters of the text sent */
    int ended;    /* its closing event (finish reason, or error) is framed */
} stream_choice;

struct srv_stream {
    stream_choice *ch;
    int n;
    char model[256];
    long created;
    char *buf; /* framed events not yet handed to MHD */
    size_t len, off, cap;
    int ended;
};

srv_stream *srv_stream_new(srv_job *const *jobs, int n, const char *model, long created) {
    srv_stream *st = calloc(1, sizeof *st);
    if (!st || !(st->ch = calloc((size_t)n, sizeof *st->ch))) {
        free(st);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        srv_job_ref(jobs[i]);
        st->ch[i].job = jobs[i];
    }
    st->n = n;
    snprintf(st->model, sizeof st->model, "%s", model);
    st->created = created;
    return st;
}

void srv_stream_free(srv_stream *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) srv_job_unref(st->ch[i].job);
    free(st->ch);
    free(st->buf);
    free(st);
}

/* Appends s to the unsent buffer. */
static int append(srv_stream *st, const char *s) {
    size_t n = strlen(s);
    if (st->len + n + 1 > st->cap) {
        size_t cap = (st->len + n + 1) * 2;
        char *b = realloc(st->buf, cap);
        if (!b) return -1;
        st->buf = b, st->cap = cap;
    }
    memcpy(st->buf + st->len, s, n + 1);
    st->len += n;
    return 0;
}

/* Appends "data: <json>\n\n"; frees json. */
static int event(srv_stream *st, char *json) {
    int rc = !json || append(st, "data: ") || append(st, json) || append(st, "\n\n") ? -1 : 0;
    free(json);
    return rc;
}

/* The usage of every completion of a stream: each prompt counted once (its first completion's,
 * as in the whole answer), the output of all. */
static void add_usage_sum(cJSON *o, const srv_stream *st) {
    if (st->n == 1) {
        add_usage(o, st->ch[0].job);
        return;
    }
    double p = 0, c = 0;
    for (int i = 0; i < st->n; i++) {
        const srv_job *j = st->ch[i].job;
        if (j->index % j->req.best_of == 0) p += (double)j->req.prompt_len;
        c += (double)j->out_visible;
    }
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", p);
    cJSON_AddNumberToObject(u, "completion_tokens", c);
    cJSON_AddNumberToObject(u, "total_tokens", p + c);
}

/* One event for choice c's out[taken..visible) (all of it that is whole UTF-8), and its
 * closing event once its job is done: the finish reason, or the error it failed with. */
static int frame(srv_stream *st, stream_choice *c, size_t visible, int done) {
    srv_job *j = c->job;
    int native = j->req.api != SRV_API_COMPLETIONS;
    /* the answer's visible bytes: with echo, the prompt comes first (once the output starts or
     * the job ends, so its log-probabilities are known) */
    size_t to = (!native && j->req.echo ? j->req.prompt_len : 0) + visible;
    size_t n = to - c->taken, used = 0;
    if (n > 0) {
        uint8_t *tmp = NULL;
        const uint8_t *b = native ? j->out + c->taken : answer_bytes(j, c->taken, to, &tmp);
        if (!b) return -1;
        cJSON *o = head(j, native ? "generation.chunk" : "text_completion", st->model, st->created);
        if (native) {
            add_text(o, "text", b, n, done, &used);
            add_base64(o, "bytes_base64", b, used);
        } else {
            completion_choice(cJSON_AddArrayToObject(o, "choices"), j, b, n, done, &used, NULL,
                              c->taken, c->chars, j->index);
        }
        c->chars += srv_utf8_offsets(b, used, NULL);
        free(tmp);
        /* A chunk that is only the start of a UTF-8 sequence waits for the rest. */
        if (used > 0) {
            if (event(st, print_free(o))) return -1;
        } else {
            cJSON_Delete(o);
        }
        c->taken += used;
    }
    if (!done) return 0;
    c->ended = 1;
    if (j->failed) return event(st, srv_error_json(&j->err));
    cJSON *o;
    if (native) {
        o = head(j, "generation.done", st->model, st->created);
        add_native_tail(o, j);
    } else {
        o = head(j, "text_completion", st->model, st->created);
        completion_choice(cJSON_AddArrayToObject(o, "choices"), j, NULL, 0, 1, NULL,
                          srv_finish_name(j->finish), c->taken, c->chars, j->index);
        /* one completion without stream_options.include_usage: its usage comes here */
        if (st->n == 1 && !j->req.include_usage) add_usage(o, j);
    }
    return event(st, print_free(o));
}

/* The events after every choice's last: with stream_options.include_usage, OpenAI's usage
 * chunk with no choices (every completion's usage summed), then "data: [DONE]". A failed
 * completion ends the stream after its error, the others' events unsent. */
static int close_stream(srv_stream *st, int failed) {
    srv_job *j = st->ch[0].job;
    st->ended = 1;
    if (!failed && j->req.api == SRV_API_COMPLETIONS && j->req.include_usage) {
        cJSON *o = head(j, "text_completion", st->model, st->created);
        cJSON_AddArrayToObject(o, "choices");
        add_usage_sum(o, st);
        if (event(st, print_free(o))) return -1;
    }
    return event(st, strdup("[DONE]"));
}

int srv_stream_fill(srv_stream *st) {
    if (st->off < st->len || st->ended) return 1;
    st->off = st->len = 0;
    int open = 0, failed = 0;
    for (int i = 0; i < st->n && !failed; i++) {
        stream_choice *c = &st->ch[i];
        if (c->ended) continue;
        pthread_mutex_lock(&c->job->mu);
        size_t visible = c->job->out_visible;
        int done = c->job->done;
        failed = c->job->failed;
        pthread_mutex_unlock(&c->job->mu);
        open += !done;
        if (visible == c->seen && !done) continue;
        c->seen = visible;
        if (frame(st, c, visible, done)) return -1;
    }
    if ((failed || !open) && close_stream(st, failed)) return -1;
    return st->len > 0;
}

int srv_stream_news(srv_stream *st) {
    for (int i = 0; i < st->n; i++)
        if (!st->ch[i].ended && srv_job_ready(st->ch[i].job, SRV_WAIT_MORE, st->ch[i].seen))
            return 1;
    return 0;
}

int srv_stream_keepalive(srv_stream *st) {
    return append(st, ": keep-alive\n\n");
}

ssize_t srv_stream_take(srv_stream *st, char *buf, size_t max) {
    if (st->off == st->len && st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    if (n == 0) return 0;
    memcpy(buf, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}
