/* lg.h: what the parts of `mambabyte loadgen` share: its settings, the prompts it sends, one
 * record per request, and the two ways to run a workload: over HTTP (lg_http.c, libcurl's multi
 * interface on one thread) or through the engine alone, in this process (lg_engine.c), so the
 * daemon's cost can be measured against the engine it drives. lg_report.c turns the records
 * into figures, the table on stdout and the JSON file. */
#ifndef LG_H
#define LG_H

#include <stddef.h>
#include <stdint.h>

#include "mambabyte.h"

#define LG_MAX_CONCURRENCY 65536
#define LG_SYNTHETIC_POOL  1024 /* distinct synthetic prompts, sent in turn */

typedef struct lg_opts {
    const char *url;   /* as given */
    char *endpoint;    /* where requests go: the URL, or URL + /v1/completions */
    char *metrics_url; /* GET before and after the run; NULL: not scraped */
    int native;        /* endpoint is our /v1/generate: output arrives as exact bytes */
    int concurrency;   /* closed loop: requests in flight; with rate > 0: the cap */
    double rate;       /* requests per second, arrivals drawn at random (0: closed loop) */
    double burstiness; /* shape of the gamma inter-arrival times: 1 Poisson, < 1 burstier */
    long requests;     /* measured requests (0: until the duration ends) */
    double duration;   /* seconds to send for (0: until the requests are sent) */
    int warmup;        /* requests sent first and not counted */
    const char
        *prompts;     /* text file of documents split by lines holding only \f; NULL: synthetic */
    int prompt_bytes; /* bytes per prompt */
    int max_tokens;
    mb_sampling sampling; /* seed: of the first request; request i gets seed + i */
    int temperature_set, top_k_set, top_p_set, min_p_set; /* sent only when given */
    int stream;
    int speculative;     /* sends "speculative": {"enabled": ...}: 1, 0; -1: not sent */
    const char *api_key; /* Authorization: Bearer KEY */
    const char *model;   /* the "model" field; NULL: not sent */
    double timeout_s;    /* per request */
    double slo_ttfb_ms;  /* goodput: time to first byte at most this (0: no bound) */
    double slo_tpob_ms;  /* and time per output byte at most this (0: no bound) */
    const char *json;    /* write every figure here */
    const char *engine;  /* model folder: run the workload through the engine, no HTTP */
    int threads;         /* engine threads (0: one per core) */
    int quiet;           /* no progress line */
} lg_opts;

/* ---- prompts (lg_prompts.c) ---- */

typedef struct lg_prompts {
    char **text; /* NUL-terminated, valid UTF-8 */
    size_t *len;
    size_t n;
} lg_prompts;

/* Prompts of `bytes` bytes (a little less where a UTF-8 character would be cut) from the
 * documents of path, each cut into consecutive pieces, in an order shuffled by seed; or, with
 * path NULL, LG_SYNTHETIC_POOL prompts of lower-case words drawn from seed. 0, or -1 with a
 * message in e. */
int lg_prompts_load(lg_prompts *p, const char *path, int bytes, uint64_t seed, mb_err *e);
void lg_prompts_free(lg_prompts *p);

/* A small counter-free generator (splitmix64) for prompt order, words and arrival times. */
uint64_t lg_rand(uint64_t *state);
double lg_uniform(uint64_t *state); /* in (0, 1) */
/* A gamma(shape) draw with mean 1: inter-arrival times of mean 1/rate once divided by rate. */
double lg_gamma1(uint64_t *state, double shape);

/* ---- records ---- */

typedef enum lg_fail {
    LG_OK,
    LG_HTTP,      /* an answer with a status other than 200 */
    LG_TRANSPORT, /* no complete answer: refused, reset, timed out, cut short */
    LG_STREAM,    /* a 200 whose stream carried an error event */
    LG_BAD,       /* a 200 whose body was not the answer expected */
} lg_fail;

typedef struct lg_rec {
    long idx;               /* request number: prompt idx mod n, seed + idx */
    double t_send, t_first; /* seconds since the run began; t_first < 0: no text came */
    double t_end;           /* the answer complete (or failed) */
    size_t prompt_bytes;    /* bytes of the prompt sent */
    size_t out_bytes;       /* bytes of generated text received (exact bytes: native) */
    size_t chunks;          /* events that carried text */
    long usage_prompt;      /* what the server's usage says; -1: nothing said */
    long usage_out;
    int status; /* HTTP status; 0: none */
    lg_fail fail;
    char why[160]; /* curl's error or the server's message */
} lg_rec;

typedef struct lg_run {
    lg_rec *rec;
    size_t n, cap;
    double *gaps; /* seconds between consecutive text events of a request, every request */
    size_t n_gaps, cap_gaps;
    double t0;         /* cli_now() when the run began */
    double duration;   /* from the run's start to its last answer */
    double cpu_s;      /* CPU seconds this process used in the run (with --engine: the engine) */
    int peak;          /* most requests in flight at once */
    long delayed;      /* arrivals sent late because the concurrency cap was reached */
    char stopped[200]; /* why sending stopped before its end; "" */
} lg_run;

/* Adds a finished record (copied) and its gaps; -1 when out of memory. */
int lg_run_add(lg_run *r, const lg_rec *rec);
int lg_run_gap(lg_run *r, double gap);
void lg_run_free(lg_run *r);
/* The progress line on stderr: rewritten in place on a terminal, else one line each call. */
void lg_progress(const lg_run *r, long sent, int inflight, double now, int final);

/* True while a measured run may start request number `sent` at time now (seconds since its
 * start): fewer than o->requests sent, before o->duration. */
int lg_may_send(const lg_opts *o, long sent, double now);

/* Set by SIGINT: stop sending, finish what is in flight, report. */
extern volatile int lg_interrupted;

/* ---- running (lg_http.c, lg_engine.c) ---- */

/* One answer being read (lg_answer.c). Fill native, rec, t0 (the run's start: times in the
 * record are relative to it) and run (where gaps go; NULL: nowhere); the rest starts at 0. */
typedef struct lg_answer {
    int native;  /* our /v1/generate: bytes_base64 gives the exact bytes */
    lg_rec *rec; /* gets out_bytes, chunks, t_first, usage, and fail/why on an error */
    lg_run *run;
    double t0;
    char *buf; /* bytes not yet handled (a stream's partial event) or the whole body */
    size_t len, cap;
    double last_text; /* time of the latest text event */
    int done;         /* data: [DONE] seen */
    int events;       /* JSON events seen */
} lg_answer;

/* Appends n bytes of the body at time now, keeping at most `keep` bytes (0: all); with events,
 * handles every complete event of a stream. -1 when out of memory. */
int lg_answer_add(lg_answer *a, const char *data, size_t n, int events, size_t keep, double now);
/* A streamed 200 ended: handles a last event without its blank line; no event or no
 * "data: [DONE]" is a malformed answer. */
void lg_answer_stream_end(lg_answer *a, double now);
/* A whole (not streamed) 200 answer: its text and usage, or an error in it. */
void lg_answer_whole(lg_answer *a, double now);
/* A failed answer: its message ({"error": {"message"}}, else the first line) into rec->why. */
void lg_answer_error(lg_answer *a);
void lg_answer_free(lg_answer *a);

/* The request body for request idx (cJSON text, malloc'd), NULL when out of memory. */
char *lg_body(const lg_opts *o, const lg_prompts *p, long idx, size_t *prompt_bytes);

/* Runs n requests (n > 0) or, with n 0, the measured workload of o over HTTP; measured runs
 * print progress. 0, or -1 with a message in e when nothing could be run (out of memory). */
int lg_http_run(const lg_opts *o, const lg_prompts *p, long n, int measured, lg_run *r, mb_err *e);
/* GET url into a malloc'd NUL-terminated text; NULL (with e) on any failure or status. */
char *lg_http_get(const char *url, const char *api_key, double timeout_s, mb_err *e);
/* Connects to the endpoint's host and port and nothing more; 0, or -1 with a message. */
int lg_http_probe(const lg_opts *o, mb_err *e);

/* The same workload through the engine in this process, its warm-up first: closed loop at
 * o->concurrency (at most LG_ENGINE_MAX_CONCURRENCY), prompts fed in chunks beside the decoding
 * sequences as the daemon's scheduler does, sampled with the same settings and seeds. */
#define LG_ENGINE_MAX_CONCURRENCY 256
int lg_engine_run(const lg_opts *o, const lg_prompts *p, lg_run *r, mb_err *e);

/* ---- figures (lg_report.c) ---- */

typedef struct lg_stat {
    size_t n;
    double mean, median, p90, p99, max;
} lg_stat;

/* Prints the table on stdout and, with o->json, writes the JSON file; metrics texts before and
 * after may be NULL. 0, or -1 with e when the file cannot be written. */
int lg_report(const lg_opts *o, const lg_run *r, const char *metrics_before,
              const char *metrics_after, mb_err *e);
/* Summary of v[0..n) in the order mean, median (linear interpolation between ranks), p90, p99,
 * max; sorts v. */
lg_stat lg_stats(double *v, size_t n);

#endif
