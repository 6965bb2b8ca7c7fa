/* lg_report.c: loadgen's records and figures (lg.h): latency summaries, totals, failures by
 * cause, goodput under an SLO, what the server's /metrics counted during the run; a table on
 * stdout and every figure with the settings in a JSON file. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lg.h"

int lg_run_add(lg_run *r, const lg_rec *rec) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        lg_rec *t = realloc(r->rec, cap * sizeof *t);
        if (!t) return -1;
        r->rec = t, r->cap = cap;
    }
    r->rec[r->n++] = *rec;
    return 0;
}

int lg_run_gap(lg_run *r, double gap) {
    if (r->n_gaps == r->cap_gaps) {
        size_t cap = r->cap_gaps ? r->cap_gaps * 2 : 4096;
        double *t = realloc(r->gaps, cap * sizeof *t);
        if (!t) return -1;
        r->gaps = t, r->cap_gaps = cap;
    }
    r->gaps[r->n_gaps++] = gap;
    return 0;
}

void lg_run_free(lg_run *r) {
    free(r->rec);
    free(r->gaps);
    memset(r, 0, sizeof *r);
}

void lg_progress(const lg_run *r, long sent, int inflight, double now, int final) {
    size_t ok = 0, failed = 0, out = 0;
    for (size_t i = 0; i < r->n; i++) {
        ok += r->rec[i].fail == LG_OK;
        failed += r->rec[i].fail != LG_OK;
        out += r->rec[i].out_bytes;
    }
    fprintf(stderr,
            "%s[%7.1f s] sent %ld  completed %zu  failed %zu  in flight %d  output %.0f B/s%s",
            isatty(2) ? "\r" : "", now, sent, ok, failed, inflight, now > 0 ? (double)out / now : 0,
            isatty(2) && !final ? "   " : "\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double rank(const double *v, size_t n, double q) {
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)pos;
    if (lo + 1 >= n) return v[n - 1];
    return v[lo] + (pos - (double)lo) * (v[lo + 1] - v[lo]);
}

lg_stat lg_stats(double *v, size_t n) {
    lg_stat s = {n, 0, 0, 0, 0, 0};
    if (!n) return s;
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    s.mean = sum / (double)n;
    s.median = rank(v, n, 0.5);
    s.p90 = rank(v, n, 0.9);
    s.p99 = rank(v, n, 0.99);
    s.max = v[n - 1];
    return s;
}

/* ---- the figures of a run ---- */

enum { ST_TTFB, ST_TPOB, ST_GAP, ST_E2E, ST_COUNT };
static const char *const ST_NAME[ST_COUNT] = {"time to first byte", "time per output byte",
                                              "inter-chunk", "end-to-end"};
static const char *const ST_KEY[ST_COUNT] = {"ttfb", "tpob", "inter_chunk", "e2e"};

#define MAX_GROUPS 32

typedef struct fail_group {
    char key[64];
    const lg_rec *example;
    long count;
} fail_group;

typedef struct figures {
    long sent, completed, failed, good;
    size_t in_bytes, out_bytes;
    long usage_out; /* -1: the server reported none */
    lg_stat st[ST_COUNT];
    fail_group groups[MAX_GROUPS];
    int n_groups;
} figures;

/* Time per output byte after the first; -1 where there is none (a whole answer: no stream). */
static double tpob_ms(const lg_opts *o, const lg_rec *x) {
    return o->stream && x->out_bytes >= 2 && x->t_first >= 0
               ? (x->t_end - x->t_first) * 1e3 / (double)(x->out_bytes - 1)
               : -1;
}

/* Failures grouped by what went wrong: an HTTP status, a transport error (curl's reason
 * without the detail), an error event, a malformed answer. */
static void group_failure(figures *f, const lg_rec *x) {
    char key[64];
    if (x->fail == LG_HTTP)
        snprintf(key, sizeof key, "http %d", x->status);
    else if (x->fail == LG_TRANSPORT)
        snprintf(key, sizeof key, "transport: %.*s", (int)strcspn(x->why, ":"), x->why);
    else
        snprintf(key, sizeof key, "%s", x->fail == LG_STREAM ? "error event" : "bad answer");
    int g = 0;
    while (g < f->n_groups && strcmp(f->groups[g].key, key)) g++;
    if (g == f->n_groups) {
        if (g == MAX_GROUPS)
            g = MAX_GROUPS - 1, snprintf(key, sizeof key, "other");
        else
            f->n_groups++;
        snprintf(f->groups[g].key, sizeof f->groups[g].key, "%s", key);
        f->groups[g].example = x;
    }
    f->groups[g].count++;
}

static int compute(const lg_opts *o, const lg_run *r, figures *f) {
    memset(f, 0, sizeof *f);
    f->usage_out = -1;
    double *v[ST_COUNT];
    size_t n[ST_COUNT] = {0};
    for (int k = 0; k < ST_COUNT; k++) v[k] = malloc((r->n + 1) * sizeof(double));
    double *gaps = malloc((r->n_gaps + 1) * sizeof(double));
    if (!v[0] || !v[1] || !v[2] || !v[3] || !gaps) {
        for (int k = 0; k < ST_COUNT; k++) free(v[k]);
        free(gaps);
        return -1;
    }
    for (size_t i = 0; i < r->n; i++) {
        const lg_rec *x = &r->rec[i];
        f->sent++;
        if (x->fail != LG_OK) {
            f->failed++;
            group_failure(f, x);
            continue;
        }
        f->completed++;
        f->in_bytes += x->prompt_bytes;
        f->out_bytes += x->out_bytes;
        if (x->usage_out >= 0) f->usage_out = (f->usage_out < 0 ? 0 : f->usage_out) + x->usage_out;
        double ttfb = x->t_first >= 0 ? (x->t_first - x->t_send) * 1e3 : -1, tp = tpob_ms(o, x);
        if (ttfb >= 0) v[ST_TTFB][n[ST_TTFB]++] = ttfb;
        if (tp >= 0) v[ST_TPOB][n[ST_TPOB]++] = tp;
        v[ST_E2E][n[ST_E2E]++] = (x->t_end - x->t_send) * 1e3;
        /* goodput: within both bounds (a bound on a figure the request lacks is met) */
        if ((!o->slo_ttfb_ms || (ttfb >= 0 && ttfb <= o->slo_ttfb_ms)) &&
            (!o->slo_tpob_ms || tp <= o->slo_tpob_ms))
            f->good++;
    }
    for (size_t i = 0; i < r->n_gaps; i++) gaps[i] = r->gaps[i] * 1e3;
    f->st[ST_TTFB] = lg_stats(v[ST_TTFB], n[ST_TTFB]);
    f->st[ST_TPOB] = lg_stats(v[ST_TPOB], n[ST_TPOB]);
    f->st[ST_GAP] = lg_stats(gaps, r->n_gaps);
    f->st[ST_E2E] = lg_stats(v[ST_E2E], n[ST_E2E]);
    for (int k = 0; k < ST_COUNT; k++) free(v[k]);
    free(gaps);
    return 0;
}

/* ---- /metrics (Prometheus text) ---- */

/* The value of the sample named exactly `series` (labels included); 0 if absent. */
static double prom(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (!strncmp(l, series, n) && l[n] == ' ') return strtod(l + n + 1, NULL);
    return 0;
}

static double delta(const char *before, const char *after, const char *series) {
    return prom(after, series) - prom(before, series);
}

/* For every sample "<prefix>LABEL\"} V" (a label's value, e.g. a histogram's le or a status
 * code), LABEL: V(after) - V(before) in obj, when not 0 or keep_zero. */
static void labelled(cJSON *obj, const char *before, const char *after, const char *prefix,
                     int keep_zero) {
    size_t n = strlen(prefix);
    for (const char *l = after; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, prefix, n)) continue;
        const char *q = strchr(l + n, '"');
        if (!q || q[1] != '}' || q[2] != ' ') continue;
        char series[256], label[64];
        snprintf(series, sizeof series, "%.*s", (int)(q + 2 - l), l);
        snprintf(label, sizeof label, "%.*s", (int)(q - l - (long)n), l + n);
        double d = delta(before, after, series);
        if (d != 0 || keep_zero) cJSON_AddNumberToObject(obj, label, d);
    }
}

/* What our daemon counted between the two scrapes; NULL for another server. */
static cJSON *server_figures(const char *before, const char *after, double duration) {
    if (!before || !after || !strstr(before, "mambabyte_build_info") ||
        !strstr(after, "mambabyte_build_info"))
        return NULL;
    cJSON *s = cJSON_CreateObject();
    double steps = delta(before, after, "mambabyte_steps_total");
    double busy = delta(before, after, "mambabyte_step_seconds_total");
    double seqs = delta(before, after, "mambabyte_batch_sequences_sum");
    double toks = delta(before, after, "mambabyte_batch_tokens_sum");
    double fwd = delta(before, after, "mambabyte_batch_sequences_count");
    double drafted = delta(before, after, "mambabyte_spec_drafted_bytes_total");
    double accepted = delta(before, after, "mambabyte_spec_accepted_bytes_total");
    cJSON_AddNumberToObject(s, "generated_bytes",
                            delta(before, after, "mambabyte_generated_bytes_total"));
    cJSON_AddNumberToObject(s, "prompt_bytes",
                            delta(before, after, "mambabyte_prompt_bytes_total"));
    cJSON_AddNumberToObject(s, "steps", steps);
    cJSON_AddNumberToObject(s, "step_seconds", busy);
    double fwd_s = delta(before, after, "mambabyte_forward_seconds_total");
    cJSON_AddNumberToObject(s, "forward_seconds", fwd_s);
    cJSON_AddNumberToObject(s, "forward_fraction", duration > 0 ? fwd_s / duration : 0);
    cJSON_AddNumberToObject(s, "busy_fraction", duration > 0 ? busy / duration : 0);
    cJSON_AddNumberToObject(s, "cpu_seconds", delta(before, after, "process_cpu_seconds_total"));
    cJSON_AddNumberToObject(s, "batch_sequences_mean", fwd > 0 ? seqs / fwd : 0);
    cJSON_AddNumberToObject(s, "batch_tokens_mean", fwd > 0 ? toks / fwd : 0);
    labelled(cJSON_AddObjectToObject(s, "batch_sequences_le"), before, after,
             "mambabyte_batch_sequences_bucket{le=\"", 1);
    labelled(cJSON_AddObjectToObject(s, "requests_by_code"), before, after,
             "mambabyte_requests_total{code=\"", 0);
    cJSON_AddNumberToObject(s, "spec_drafts", delta(before, after, "mambabyte_spec_drafts_total"));
    cJSON_AddNumberToObject(s, "spec_drafted_bytes", drafted);
    cJSON_AddNumberToObject(s, "spec_accepted_bytes", accepted);
    if (drafted > 0)
        cJSON_AddNumberToObject(s, "spec_acceptance", accepted / drafted);
    else
        cJSON_AddNullToObject(s, "spec_acceptance");
    /* drafts that reached each draft position, and those that kept it, by source */
    cJSON *pos = cJSON_AddObjectToObject(s, "spec_by_position");
    static const char *const src[2] = {"lookup", "model"};
    for (int k = 0; k < 2; k++) {
        char pre[2][96];
        snprintf(pre[0], sizeof pre[0],
                 "mambabyte_spec_position_drafted_total{source=\"%s\",position=\"", src[k]);
        snprintf(pre[1], sizeof pre[1],
                 "mambabyte_spec_position_accepted_total{source=\"%s\",position=\"", src[k]);
        cJSON *o = cJSON_AddObjectToObject(pos, src[k]);
        labelled(cJSON_AddObjectToObject(o, "drafted"), before, after, pre[0], 0);
        labelled(cJSON_AddObjectToObject(o, "accepted"), before, after, pre[1], 0);
    }
    return s;
}

static double num(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* ---- the table ---- */

static void print_workload(const lg_opts *o) {
    if (o->engine)
        printf("mambabyte loadgen: the engine alone (no HTTP) on %s\n", o->engine);
    else
        printf("mambabyte loadgen: POST %s\n", o->endpoint);
    if (o->rate > 0)
        printf("  open loop: %.3g requests/s (burstiness %.3g), at most %d in flight", o->rate,
               o->burstiness, o->concurrency);
    else
        printf("  closed loop: concurrency %d", o->concurrency);
    if (o->requests) printf("; %ld requests", o->requests);
    if (o->duration > 0) printf("; for %.3g s", o->duration);
    printf("; warm-up %d\n  prompts %d bytes (%s); max_tokens %d; %s", o->warmup, o->prompt_bytes,
           o->prompts ? o->prompts : "synthetic", o->max_tokens,
           o->stream ? "stream" : "no stream");
    if (o->speculative >= 0) printf("; speculative %s", o->speculative ? "on" : "off");
    printf("; seed %llu\n", (unsigned long long)o->sampling.seed);
}

static void print_table(const lg_opts *o, const lg_run *r, const figures *f, const cJSON *srv) {
    const double d = r->duration;
    print_workload(o);
    printf("\nrequests   sent %ld, completed %ld, failed %ld\n", f->sent, f->completed, f->failed);
    for (int g = 0; g < f->n_groups; g++)
        printf("  failed   %ld  %s (%s)\n", f->groups[g].count, f->groups[g].key,
               f->groups[g].example->why[0] ? f->groups[g].example->why : "no message");
    if (r->stopped[0]) printf("  note     %s\n", r->stopped);
    printf("duration   %.3f s; %.3f requests/s; peak concurrency %d", d,
           d > 0 ? (double)f->completed / d : 0, r->peak);
    if (r->delayed)
        printf("; %ld arrivals sent over 1 ms late (the client busy or at its cap)", r->delayed);
    printf("\nbytes      input %zu (%.1f/s), output %zu (%.1f/s)", f->in_bytes,
           d > 0 ? (double)f->in_bytes / d : 0, f->out_bytes, d > 0 ? (double)f->out_bytes / d : 0);
    if (f->usage_out >= 0 && !o->engine) printf("; the server's usage: %ld output", f->usage_out);
    printf("\n%s %.3f CPU s (%.1f%% of a core)\n", o->engine ? "engine    " : "client    ",
           r->cpu_s, d > 0 ? 100 * r->cpu_s / d : 0);
    if (o->slo_ttfb_ms || o->slo_tpob_ms)
        printf("goodput    %ld requests within the SLO (ttfb <= %g ms, tpob <= %g ms): %.3f "
               "requests/s, %.1f%% of those sent\n",
               f->good, o->slo_ttfb_ms, o->slo_tpob_ms, d > 0 ? (double)f->good / d : 0,
               f->sent ? 100.0 * (double)f->good / (double)f->sent : 0);
    printf("\n%-22s %8s %10s %10s %10s %10s %10s\n", "latency (ms)", "n", "mean", "median", "p90",
           "p99", "max");
    for (int k = 0; k < ST_COUNT; k++) {
        const lg_stat *s = &f->st[k];
        printf("%-22s %8zu %10.3f %10.3f %10.3f %10.3f %10.3f\n", ST_NAME[k], s->n, s->mean,
               s->median, s->p90, s->p99, s->max);
    }
    if (srv) {
        const cJSON *acc = cJSON_GetObjectItemCaseSensitive(srv, "spec_acceptance");
        printf("\nserver (/metrics)  generated %.0f bytes, prompts %.0f bytes; %.0f steps, busy "
               "%.1f%% of the run (forwards %.1f%%); %.2f CPU s\n"
               "  batches: %.2f sequences, %.2f tokens per forward (mean)\n"
               "  speculation: %.0f drafts, %.0f bytes drafted, %.0f accepted",
               num(srv, "generated_bytes"), num(srv, "prompt_bytes"), num(srv, "steps"),
               100 * num(srv, "busy_fraction"), 100 * num(srv, "forward_fraction"),
               num(srv, "cpu_seconds"), num(srv, "batch_sequences_mean"),
               num(srv, "batch_tokens_mean"), num(srv, "spec_drafts"),
               num(srv, "spec_drafted_bytes"), num(srv, "spec_accepted_bytes"));
        if (cJSON_IsNumber(acc)) printf(" (%.1f%%)", 100 * acc->valuedouble);
        printf("\n");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(srv, "spec_by_position"), *o;
        cJSON_ArrayForEach(o, pos) {
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "drafted"),
                        *a = cJSON_GetObjectItemCaseSensitive(o, "accepted"), *x;
            if (!cJSON_GetArraySize(d)) continue;
            printf("  kept by draft position (%s):", o->string);
            cJSON_ArrayForEach(x, d) {
                const cJSON *k = cJSON_GetObjectItemCaseSensitive(a, x->string);
                printf(" %s: %.2f", x->string,
                       (cJSON_IsNumber(k) ? k->valuedouble : 0) / x->valuedouble);
            }
            printf("\n");
        }
    }
    fflush(stdout);
}

/* ---- the JSON file ---- */

static const char *fail_name(lg_fail f) {
    static const char *const names[] = {"ok", "http", "transport", "error_event", "bad_answer"};
    return names[f];
}

static cJSON *settings_json(const lg_opts *o) {
    cJSON *s = cJSON_CreateObject();
    if (o->engine)
        cJSON_AddStringToObject(s, "engine", o->engine);
    else
        cJSON_AddStringToObject(s, "url", o->endpoint);
    cJSON_AddStringToObject(s, "api", o->native ? "native" : "completions");
    cJSON_AddStringToObject(s, "mode", o->rate > 0 ? "rate" : "concurrency");
    cJSON_AddNumberToObject(s, "concurrency", o->concurrency);
    cJSON_AddNumberToObject(s, "rate", o->rate);
    cJSON_AddNumberToObject(s, "burstiness", o->burstiness);
    cJSON_AddNumberToObject(s, "requests", (double)o->requests);
    cJSON_AddNumberToObject(s, "duration_s", o->duration);
    cJSON_AddNumberToObject(s, "warmup", o->warmup);
    if (o->prompts)
        cJSON_AddStringToObject(s, "prompts", o->prompts);
    else
        cJSON_AddStringToObject(s, "prompts", "synthetic");
    cJSON_AddNumberToObject(s, "prompt_bytes", o->prompt_bytes);
    cJSON_AddNumberToObject(s, "max_tokens", o->max_tokens);
    cJSON_AddBoolToObject(s, "stream", o->stream);
    if (o->speculative >= 0)
        cJSON_AddBoolToObject(s, "speculative", o->speculative);
    else
        cJSON_AddNullToObject(s, "speculative");
    cJSON *smp = cJSON_AddObjectToObject(s, "sampling");
    if (o->temperature_set) cJSON_AddNumberToObject(smp, "temperature", o->sampling.temperature);
    if (o->top_k_set) cJSON_AddNumberToObject(smp, "top_k", o->sampling.top_k);
    if (o->top_p_set) cJSON_AddNumberToObject(smp, "top_p", o->sampling.top_p);
    if (o->min_p_set) cJSON_AddNumberToObject(smp, "min_p", o->sampling.min_p);
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->sampling.seed);
    cJSON_AddRawToObject(s, "seed", seed);
    cJSON_AddNumberToObject(s, "timeout_s", o->timeout_s);
    cJSON_AddNumberToObject(s, "slo_ttfb_ms", o->slo_ttfb_ms);
    cJSON_AddNumberToObject(s, "slo_tpob_ms", o->slo_tpob_ms);
    if (o->engine) cJSON_AddNumberToObject(s, "threads", o->threads);
    return s;
}

static cJSON *stat_json(const lg_stat *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "n", (double)s->n);
    cJSON_AddNumberToObject(o, "mean", s->mean);
    cJSON_AddNumberToObject(o, "median", s->median);
    cJSON_AddNumberToObject(o, "p90", s->p90);
    cJSON_AddNumberToObject(o, "p99", s->p99);
    cJSON_AddNumberToObject(o, "max", s->max);
    return o;
}

static cJSON *record_json(const lg_rec *x) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "idx", (double)x->idx);
    cJSON_AddNumberToObject(o, "status", x->status);
    cJSON_AddStringToObject(o, "result", fail_name(x->fail));
    if (x->why[0]) cJSON_AddStringToObject(o, "why", x->why);
    cJSON_AddNumberToObject(o, "t_send_s", x->t_send);
    if (x->t_first >= 0)
        cJSON_AddNumberToObject(o, "ttfb_ms", (x->t_first - x->t_send) * 1e3);
    else
        cJSON_AddNullToObject(o, "ttfb_ms");
    cJSON_AddNumberToObject(o, "e2e_ms", (x->t_end - x->t_send) * 1e3);
    cJSON_AddNumberToObject(o, "prompt_bytes", (double)x->prompt_bytes);
    cJSON_AddNumberToObject(o, "output_bytes", (double)x->out_bytes);
    cJSON_AddNumberToObject(o, "chunks", (double)x->chunks);
    if (x->usage_prompt >= 0) cJSON_AddNumberToObject(o, "usage_prompt", (double)x->usage_prompt);
    if (x->usage_out >= 0) cJSON_AddNumberToObject(o, "usage_output", (double)x->usage_out);
    return o;
}

static int write_json(const lg_opts *o, const lg_run *r, const figures *f, cJSON *srv, mb_err *e) {
    const double d = r->duration;
    cJSON *j = cJSON_CreateObject();
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    cJSON_AddStringToObject(j, "tool", "mambabyte loadgen " MB_VERSION);
    cJSON_AddStringToObject(j, "date", date);
    cJSON_AddItemToObject(j, "settings", settings_json(o));
    cJSON_AddNumberToObject(j, "sent", (double)f->sent);
    cJSON_AddNumberToObject(j, "completed", (double)f->completed);
    cJSON_AddNumberToObject(j, "failed", (double)f->failed);
    cJSON *fl = cJSON_AddArrayToObject(j, "failures");
    for (int g = 0; g < f->n_groups; g++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "cause", f->groups[g].key);
        cJSON_AddNumberToObject(x, "count", (double)f->groups[g].count);
        cJSON_AddStringToObject(x, "example", f->groups[g].example->why);
        cJSON_AddItemToArray(fl, x);
    }
    if (r->stopped[0])
        cJSON_AddStringToObject(j, "stopped_early", r->stopped);
    else
        cJSON_AddNullToObject(j, "stopped_early");
    cJSON_AddNumberToObject(j, "duration_s", d);
    cJSON_AddNumberToObject(j, "request_throughput", d > 0 ? (double)f->completed / d : 0);
    cJSON_AddNumberToObject(j, "input_bytes", (double)f->in_bytes);
    cJSON_AddNumberToObject(j, "output_bytes", (double)f->out_bytes);
    cJSON_AddNumberToObject(j, "input_bytes_per_s", d > 0 ? (double)f->in_bytes / d : 0);
    cJSON_AddNumberToObject(j, "output_bytes_per_s", d > 0 ? (double)f->out_bytes / d : 0);
    if (f->usage_out >= 0)
        cJSON_AddNumberToObject(j, "usage_output_bytes", (double)f->usage_out);
    else
        cJSON_AddNullToObject(j, "usage_output_bytes");
    cJSON_AddNumberToObject(j, "peak_concurrency", r->peak);
    cJSON_AddNumberToObject(j, "loadgen_cpu_seconds", r->cpu_s);
    cJSON_AddNumberToObject(j, "delayed_arrivals", (double)r->delayed);
    if (o->slo_ttfb_ms || o->slo_tpob_ms) {
        cJSON *g = cJSON_AddObjectToObject(j, "goodput");
        cJSON_AddNumberToObject(g, "requests", (double)f->good);
        cJSON_AddNumberToObject(g, "requests_per_s", d > 0 ? (double)f->good / d : 0);
        cJSON_AddNumberToObject(g, "fraction", f->sent ? (double)f->good / (double)f->sent : 0);
    } else {
        cJSON_AddNullToObject(j, "goodput");
    }
    cJSON *lat = cJSON_AddObjectToObject(j, "latency_ms");
    for (int k = 0; k < ST_COUNT; k++) cJSON_AddItemToObject(lat, ST_KEY[k], stat_json(&f->st[k]));
    if (srv)
        cJSON_AddItemReferenceToObject(j, "server", srv);
    else
        cJSON_AddNullToObject(j, "server");
    cJSON *per = cJSON_AddArrayToObject(j, "per_request");
    for (size_t i = 0; i < r->n; i++) cJSON_AddItemToArray(per, record_json(&r->rec[i]));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *fp = text ? fopen(o->json, "w") : NULL;
    int rc = 0;
    if (!text)
        rc = mb_fail(e, "out of memory");
    else if (!fp || fputs(text, fp) < 0 || fputc('\n', fp) < 0)
        rc = mb_fail(e, "cannot write %s", o->json);
    if (fp && fclose(fp) && !rc) rc = mb_fail(e, "cannot write %s", o->json);
    free(text);
    return rc;
}

int lg_report(const lg_opts *o, const lg_run *r, const char *metrics_before,
              const char *metrics_after, mb_err *e) {
    figures f;
    if (compute(o, r, &f)) return mb_fail(e, "out of memory");
    cJSON *srv = server_figures(metrics_before, metrics_after, r->duration);
    print_table(o, r, &f, srv);
    int rc = o->json ? write_json(o, r, &f, srv, e) : 0;
    cJSON_Delete(srv);
    return rc;
}
