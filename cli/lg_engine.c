/* lg_engine.c: loadgen's workload through the engine alone, in this process (lg.h): what the
 * daemon could do at best with the same requests, so that its cost (HTTP, JSON, the scheduler's
 * bookkeeping, threads) is the ratio of the two. Each step is one batched forward built as the
 * daemon's scheduler builds it with its default settings: a byte for every decoding sequence
 * first, then prompt chunks of PREFILL_CHUNK bytes within BATCH_TOKENS tokens; a sequence that
 * ends frees its slot and the next request takes it at once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "lg.h"

#define BATCH_TOKENS  512 /* the daemon's max_batch_tokens default */
#define PREFILL_CHUNK 128 /* and its prefill_chunk */

typedef struct eseq {
    int active;
    const uint8_t *prompt;
    size_t plen, fed; /* prompt bytes, and how many the slot has read */
    int n_out;        /* bytes generated */
    int last;         /* the latest byte, fed at the next step */
    double last_text;
    mb_sampling s;
    lg_rec rec;
} eseq;

typedef struct engine {
    const lg_opts *o;
    const lg_prompts *p;
    mb_model *m;
    mb_pool *pool;
    eseq *seq;       /* concurrency entries; entry i uses slot i */
    int32_t *tokens; /* BATCH_TOKENS */
    uint8_t *want;
    int *off, *slot, *entry; /* per batch entry: offsets (one more), slot, sequence */
    float *logits;           /* concurrency rows of 256 */
    const mb_sampling **set; /* per row: the draw's settings, logits row, position and byte */
    int *row, *byte;
    uint64_t *pos;
} engine;

static void start(engine *g, eseq *q, long idx, double t) {
    memset(q, 0, sizeof *q);
    q->active = 1;
    size_t k = (size_t)idx % g->p->n;
    q->prompt = (const uint8_t *)g->p->text[k];
    q->plen = g->p->len[k];
    q->s = g->o->sampling;
    q->s.seed = (g->o->sampling.seed + (uint64_t)idx) & ((1ull << 53) - 1); /* as lg_body */
    q->rec.idx = idx, q->rec.t_send = t, q->rec.t_first = -1;
    q->rec.prompt_bytes = q->plen;
    q->rec.usage_prompt = (long)q->plen;
}

/* One forward over every active sequence; the bytes sampled go to their records, finished ones
 * to r (when recording). Returns 0, or -1 with e. */
static int step(engine *g, lg_run *r, int recording, double t0, mb_err *e) {
    const int C = g->o->concurrency;
    int n = 0, nt = 0;
    for (int i = 0; i < C; i++) { /* decoding sequences: their latest byte */
        eseq *q = &g->seq[i];
        if (!q->active || q->n_out == 0) continue;
        g->off[n] = nt, g->slot[n] = i, g->entry[n++] = i;
        g->want[nt] = 1;
        g->tokens[nt++] = q->last;
    }
    for (int i = 0; i < C && nt < BATCH_TOKENS; i++) { /* then prompt chunks */
        eseq *q = &g->seq[i];
        if (!q->active || q->n_out > 0) continue;
        size_t take = q->plen - q->fed;
        if (take > PREFILL_CHUNK) take = PREFILL_CHUNK;
        if (take > (size_t)(BATCH_TOKENS - nt)) take = (size_t)(BATCH_TOKENS - nt);
        g->off[n] = nt, g->slot[n] = i, g->entry[n++] = i;
        for (size_t t = 0; t < take; t++) {
            g->want[nt] = 0;
            g->tokens[nt++] = q->prompt[q->fed + t];
        }
        q->fed += take;
        if (q->fed == q->plen) g->want[nt - 1] = 1;
    }
    g->off[n] = nt;
    mb_batch b = {n, g->tokens, g->off, g->slot, g->want};
    if (mb_forward(g->m, g->pool, &b, g->logits, e)) return -1;
    int nd = 0; /* the draws, all at once (as the daemon makes them) */
    for (int k = 0; k < n; k++) {
        const eseq *q = &g->seq[g->entry[k]];
        if (!g->want[g->off[k + 1] - 1]) continue;
        g->set[nd] = &q->s, g->row[nd] = nd, g->pos[nd] = q->plen + (size_t)q->n_out;
        nd++;
    }
    if (mb_sample_rows(g->m, nd, g->set, g->logits, g->row, g->pos, g->byte, e)) return -1;
    const double now = cli_now();
    for (int k = 0, row = 0; k < n; k++) {
        eseq *q = &g->seq[g->entry[k]];
        if (!g->want[g->off[k + 1] - 1]) continue;
        q->last = g->byte[row++];
        q->n_out++;
        q->rec.out_bytes++, q->rec.chunks++;
        if (q->rec.t_first < 0)
            q->rec.t_first = now - t0;
        else if (recording && lg_run_gap(r, now - q->last_text))
            return mb_fail(e, "out of memory");
        q->last_text = now;
        if (q->n_out == g->o->max_tokens) {
            q->active = 0;
            q->rec.t_end = now - t0;
            q->rec.usage_out = q->n_out;
            q->rec.status = 200;
            if (recording && lg_run_add(r, &q->rec)) return mb_fail(e, "out of memory");
        }
    }
    return 0;
}

/* Runs n requests (the warm-up, not recorded) or, with n 0, the measured workload into r. */
static int phase(engine *g, long n, lg_run *r, mb_err *e) {
    const int C = g->o->concurrency, recording = n == 0;
    const double tick = isatty(2) ? 0.25 : 10.0;
    lg_run scratch_run = {0};
    if (!recording) r = &scratch_run;
    r->t0 = cli_now();
    const double cpu0 = cli_cpu_now();
    long sent = 0;
    double next_tick = tick;
    for (;;) {
        double now = cli_now() - r->t0;
        int active = 0;
        for (int i = 0; i < C; i++) {
            eseq *q = &g->seq[i];
            int may = !lg_interrupted && (recording ? lg_may_send(g->o, sent, now) : sent < n);
            if (!q->active && may) {
                if (mb_pool_reset(g->pool, i, e)) return -1;
                start(g, q, sent++, now);
            }
            active += q->active;
        }
        if (r->peak < active) r->peak = active;
        if (!active) break;
        if (step(g, r, recording, r->t0, e)) return -1;
        now = cli_now() - r->t0;
        if (recording && !g->o->quiet && now >= next_tick) {
            lg_progress(r, sent, active, now, 0);
            next_tick = now + tick;
        }
    }
    if (recording) {
        r->cpu_s = cli_cpu_now() - cpu0;
        r->duration = r->n ? cli_now() - r->t0 : 0;
        for (size_t i = 0; i < r->n; i++)
            if (r->rec[i].t_end > r->duration) r->duration = r->rec[i].t_end;
        if (!g->o->quiet) lg_progress(r, sent, 0, r->duration, 1);
    }
    return 0;
}

int lg_engine_run(const lg_opts *o, const lg_prompts *p, lg_run *r, mb_err *e) {
    const int C = o->concurrency;
    mb_backend_opts bo = {0};
    bo.n_threads = o->threads;
    engine g = {o, p, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int rc = -1;
    if (!(g.m = mb_model_load(o->engine, &bo, e))) return -1;
    if (mb_model_config(g.m)->n_vocab != 256) {
        mb_fail(e, "%s: loadgen --engine needs a byte-level model (vocabulary 256)", o->engine);
        goto out;
    }
    if (!(g.pool = mb_pool_create(g.m, C, BATCH_TOKENS, e))) goto out;
    g.seq = calloc((size_t)C, sizeof *g.seq);
    g.tokens = malloc(BATCH_TOKENS * sizeof *g.tokens);
    g.want = malloc(BATCH_TOKENS);
    g.off = malloc(((size_t)C + 1) * sizeof *g.off);
    g.slot = malloc((size_t)C * sizeof *g.slot);
    g.entry = malloc((size_t)C * sizeof *g.entry);
    g.logits = malloc((size_t)C * 256 * sizeof *g.logits);
    g.set = malloc((size_t)C * sizeof *g.set);
    g.row = malloc((size_t)C * sizeof *g.row);
    g.byte = malloc((size_t)C * sizeof *g.byte);
    g.pos = malloc((size_t)C * sizeof *g.pos);
    if (!g.seq || !g.tokens || !g.want || !g.off || !g.slot || !g.entry || !g.logits || !g.set ||
        !g.row || !g.byte || !g.pos) {
        mb_fail(e, "out of memory");
        goto out;
    }
    if (o->warmup && phase(&g, o->warmup, NULL, e)) goto out;
    rc = phase(&g, 0, r, e);
out:
    free(g.pos);
    free(g.byte);
    free(g.row);
    free(g.set);
    free(g.logits);
    free(g.entry);
    free(g.slot);
    free(g.off);
    free(g.want);
    free(g.tokens);
    free(g.seq);
    mb_pool_free(g.pool);
    mb_model_free(g.m);
    return rc;
}
