/* bench_engine.c: CPU engine throughput. Decode bytes/s at several batch sizes, prefill
 * bytes/s, the machine's read bandwidth (a large streaming read on every thread) and the
 * decode step's share of the bandwidth bound (weights + states touched per step / time); each
 * figure for every CPU variant (cpu.c) this machine runs, alternating rep by rep, with its
 * ratio to the first and its share of the measured peak FLOP rate. Two other modes: q8 (decode
 * of the weights as loaded against the same weights in q8, alternating) and spans (the cost of
 * a span of k bytes against a decode step, k = 1..16: issue 16's item 4).
 * Medians of repeated runs; run it through bench/engine.sh. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct bw_arg {
    const float *p;
    size_t n;
    float out;
} bw_arg;

static void *bw_read(void *a) {
    bw_arg *b = a;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 32 <= b->n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(b->p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(b->p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(b->p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(b->p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    b->out = t[0];
    return NULL;
}

/* GB/s of a 1 GiB read (2 MB pages) split over `threads` threads; median of 5. */
static double bandwidth(int threads) {
    size_t n = (size_t)1 << 28;
    float *buf = aligned_alloc((size_t)2 << 20, n * sizeof(float));
    if (!buf) return 0;
    madvise(buf, n * sizeof(float), MADV_HUGEPAGE); /* as the engine's weights (model.c) */
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    double r[5];
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        bw_arg a[64];
        double t0 = now_s();
        for (int i = 0; i < threads; i++) {
            a[i] = (bw_arg){buf + n / (size_t)threads * (size_t)i, n / (size_t)threads, 0};
            pthread_create(&th[i], NULL, bw_read, &a[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        r[rep] = (double)(n * sizeof(float)) / (now_s() - t0) / 1e9;
    }
    free(buf);
    return median(r, 5);
}

/* ---- FLOP rate: independent FMA chains on every thread, the machine's peak for a kernel ---- */

typedef struct peak_arg {
    int kind; /* 0: ymm FMA, 1: zmm FMA, 2: zmm vdpbf16ps, 3: zmm vpdpbusd */
    double flops;
    float out;
} peak_arg;

#define PEAK_ITERS 20000000L

static void *peak_ymm(void *a) {
    peak_arg *p = a;
    __m256 acc[10], x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 10; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 10; i++) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    p->out = _mm256_cvtss_f32(acc[0]);
    p->flops = 10.0 * 8 * 2 * PEAK_ITERS;
    return NULL;
}

__attribute__((target("avx512f"))) static void *peak_zmm(void *a) {
    peak_arg *p = a;
    __m512 acc[10], x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 10; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    for (int i = 1; i < 10; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    p->out = _mm512_reduce_add_ps(acc[0]);
    p->flops = 10.0 * 16 * 2 * PEAK_ITERS;
    return NULL;
}

/* 32 bf16 products and their sums per instruction: 64 flops */
__attribute__((target("avx512f,avx512bf16"))) static void *peak_bf16(void *a) {
    peak_arg *p = a;
    __m512 acc[10];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3300);
    for (int i = 0; i < 10; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 10; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
    for (int i = 1; i < 10; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    p->out = _mm512_reduce_add_ps(acc[0]);
    p->flops = 10.0 * 32 * 2 * PEAK_ITERS;
    return NULL;
}

/* 64 int8 products and their sums per instruction: 128 integer ops, counted as flops */
__attribute__((target("avx512f,avx512vnni"))) static void *peak_vnni(void *a) {
    peak_arg *p = a;
    __m512i acc[10], x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(-1);
    for (int i = 0; i < 10; i++) acc[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < PEAK_ITERS; it++)
        for (int i = 0; i < 10; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], x, y);
    for (int i = 1; i < 10; i++) acc[0] = _mm512_add_epi32(acc[0], acc[i]);
    p->out = (float)_mm512_reduce_add_epi32(acc[0]);
    p->flops = 10.0 * 64 * 2 * PEAK_ITERS;
    return NULL;
}

/* GFLOP/s of `kind` on `threads` threads at once */
static double peak_gflops(int kind, int threads) {
    void *(*fn[])(void *) = {peak_ymm, peak_zmm, peak_bf16, peak_vnni};
    pthread_t th[64];
    peak_arg a[64];
    double t0 = now_s(), flops = 0;
    for (int i = 0; i < threads; i++) {
        a[i].kind = kind;
        pthread_create(&th[i], NULL, fn[kind], &a[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        flops += a[i].flops;
    }
    return flops / (now_s() - t0) / 1e9;
}

/* ---- the engine, each measurement alternating over the CPU variants rep by rep ---- */

#define MAX_VAR 8
static const char *variants[MAX_VAR];
static int n_var;

/* bytes/s of decode at batch B (B sequences, one byte each per forward) per variant: medians */
static void decode(mb_model *m, int B, int steps, int reps, double *med) {
    mb_err e;
    mb_pool *p = mb_pool_create(m, B, B, &e);
    if (!p) {
        fprintf(stderr, "%s\n", e.msg);
        exit(1);
    }
    int32_t toks[256];
    int off[257], slot[256];
    for (int i = 0; i <= B; i++) off[i] = i;
    for (int i = 0; i < B; i++) slot[i] = i;
    float *logits = malloc((size_t)B * 256 * sizeof(float));
    double r[MAX_VAR][16];
    for (int rep = 0; rep < reps; rep++)
        for (int v = 0; v < n_var; v++) {
            mb_cpu_isa_set(variants[v]);
            for (int i = 0; i < B; i++) toks[i] = 'a' + i % 26;
            double t0 = 0;
            for (int s = -2; s < steps; s++) {
                if (s == 0) t0 = now_s();
                mb_batch b = {B, toks, off, slot, NULL};
                if (mb_forward(m, p, &b, logits, &e)) exit(1);
                for (int i = 0; i < B; i++) toks[i] = (toks[i] * 7 + 3) & 0x7f;
            }
            r[v][rep] = (double)B * steps / (now_s() - t0);
        }
    for (int v = 0; v < n_var; v++) med[v] = median(r[v], reps);
    free(logits);
    mb_pool_free(p);
}

static void prefill(mb_model *m, int chunk, int n_chunks, int reps, double *med) {
    mb_err e;
    mb_pool *p = mb_pool_create(m, 1, chunk, &e);
    int32_t *toks = malloc((size_t)chunk * sizeof *toks);
    for (int i = 0; i < chunk; i++) toks[i] = "the quick brown fox "[i % 20];
    float logits[256];
    double r[MAX_VAR][16];
    for (int rep = 0; rep < reps; rep++)
        for (int v = 0; v < n_var; v++) {
            mb_cpu_isa_set(variants[v]);
            mb_pool_reset(p, 0, NULL);
            double t0 = now_s();
            for (int c = 0; c < n_chunks; c++) {
                int off[2] = {0, chunk}, slot = 0;
                mb_batch b = {1, toks, off, &slot, NULL};
                if (mb_forward(m, p, &b, logits, &e)) exit(1);
            }
            r[v][rep] = (double)chunk * n_chunks / (now_s() - t0);
        }
    for (int v = 0; v < n_var; v++) med[v] = median(r[v], reps);
    free(toks);
    mb_pool_free(p);
}

/* decode at batch B of two models (the same weights as loaded and in q8), alternating rep by
 * rep; bytes/s medians */
static void decode_pair(mb_model *const ms[2], int B, int steps, int reps, double med[2]) {
    double r[2][16];
    int32_t toks[256];
    int off[257], slot[256];
    for (int i = 0; i <= B; i++) off[i] = i;
    for (int i = 0; i < B; i++) slot[i] = i;
    float *logits = malloc((size_t)B * 256 * sizeof(float));
    for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < 2; k++) {
            mb_err e;
            mb_pool *p = mb_pool_create(ms[k], B, B, &e);
            if (!p) {
                fprintf(stderr, "%s\n", e.msg);
                exit(1);
            }
            for (int i = 0; i < B; i++) toks[i] = 'a' + i % 26;
            double t0 = 0;
            for (int s = -2; s < steps; s++) {
                if (s == 0) t0 = now_s();
                mb_batch b = {B, toks, off, slot, NULL};
                if (mb_forward(ms[k], p, &b, logits, &e)) exit(1);
                for (int i = 0; i < B; i++) toks[i] = (toks[i] * 7 + 3) & 0x7f;
            }
            r[k][rep] = (double)B * steps / (now_s() - t0);
            mb_pool_free(p);
        }
    for (int k = 0; k < 2; k++) med[k] = median(r[k], reps);
    free(logits);
}

/* Seconds of one forward of a span of k bytes (logits at every position, as a verification
 * asks) for one sequence, k = 1 .. max_k, alternating k within each rep; medians into sec[k]. */
static void spans(mb_model *m, int max_k, int fwd_per_rep, int reps, double *sec) {
    mb_err e;
    mb_pool *p = mb_pool_create(m, 1, max_k, &e);
    if (!p) {
        fprintf(stderr, "%s\n", e.msg);
        exit(1);
    }
    int32_t toks[64];
    uint8_t want[64];
    memset(want, 1, sizeof want);
    float *logits = malloc((size_t)max_k * 256 * sizeof(float));
    double r[65][16];
    for (int rep = 0; rep < reps; rep++)
        for (int k = 1; k <= max_k; k++) {
            for (int i = 0; i < k; i++) toks[i] = 'a' + (i * 7 + rep) % 26;
            int off[2] = {0, k}, slot = 0;
            mb_batch b = {1, toks, off, &slot, want};
            if (mb_forward(m, p, &b, logits, &e)) exit(1); /* warm */
            double t0 = now_s();
            for (int f = 0; f < fwd_per_rep; f++)
                if (mb_forward(m, p, &b, logits, &e)) exit(1);
            r[k][rep] = (now_s() - t0) / fwd_per_rep;
        }
    for (int k = 1; k <= max_k; k++) sec[k] = median(r[k], reps);
    free(logits);
    mb_pool_free(p);
}

static void print_row(const char *what, const double *bps, double flops_per_byte, double peak) {
    printf("%-22s", what);
    for (int v = 0; v < n_var; v++)
        printf(" %10.1f (%4.2fx, %5.1f GFLOP/s, %3.0f%%)", bps[v], bps[v] / bps[0],
               bps[v] * flops_per_byte / 1e9, 100.0 * bps[v] * flops_per_byte / 1e9 / peak);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_engine MODEL_DIR [threads [variant,variant,... [q8|spans]]]\n"
                        "  threads 0: one per core; no variants or \"\": all this machine runs\n"
                        "  q8: decode at batch 1, 8 and 32, the weights as loaded against q8\n"
                        "  spans: a span of k = 1..16 bytes against a decode step\n");
        return 2;
    }
    mb_err e;
    mb_backend_opts o = {argc > 2 ? atoi(argv[2]) : 0, MB_DEVICE_CPU, 0};
    mb_model *m = mb_model_load(argv[1], &o, &e);
    if (!m) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    char list[256], want[64];
    snprintf(list, sizeof list, ",%s,", argc > 3 ? argv[3] : "");
    for (int i = 0; mb_cpu_isa_name(i) && n_var < MAX_VAR; i++) {
        snprintf(want, sizeof want, ",%s,", mb_cpu_isa_name(i));
        if (mb_cpu_isa_supported(i) && (argc < 4 || !*argv[3] || strstr(list, want)))
            variants[n_var++] = mb_cpu_isa_name(i);
    }
    if (!n_var) {
        fprintf(stderr, "no CPU variant of %s runs here\n", argv[3]);
        return 2;
    }
    /* steps per repetition: about the 20M shape's 200 at batch 1, fewer for larger models */
    double wbytes = (double)mb_model_weight_bytes(m), scale = 82e6 / wbytes < 1 ? 82e6 / wbytes : 1;
    if (argc > 4 && !strcmp(argv[4], "q8")) { /* the same weights in q8, the last variant */
        setenv("MB_WEIGHTS", "q8", 1);
        mb_model *mq = mb_model_load(argv[1], &o, &e);
        if (!mq) {
            fprintf(stderr, "%s\n", e.msg);
            return 1;
        }
        mb_cpu_isa_set(variants[n_var - 1]);
        mb_model *const ms[2] = {m, mq};
        int batches[] = {1, 8, 32};
        for (int i = 0; i < 3; i++) {
            int B = batches[i], steps = (int)((B == 1 ? 200 : 40) * scale);
            double med[2];
            decode_pair(ms, B, steps < 8 ? 8 : steps, 9, med);
            printf("decode batch %d (%s, %s): as loaded %.1f bytes/s, q8 %.1f bytes/s: %.2fx\n", B,
                   argv[1], variants[n_var - 1], med[0], med[1], med[1] / med[0]);
        }
        mb_model_free(mq);
        mb_model_free(m);
        return 0;
    }
    if (argc > 4 && !strcmp(argv[4], "spans")) { /* span cost against a decode step */
        mb_cpu_isa_set(variants[n_var - 1]);
        enum { MAX_K = 16 };
        double sec[MAX_K + 1];
        int fwd = (int)(20 * scale);
        spans(m, MAX_K, fwd < 2 ? 2 : fwd, 7, sec);
        printf("spans (%s, %s%s, one sequence, logits at every position): ms per forward, x the "
               "decode step\n",
               argv[1], variants[n_var - 1], mb_model_dtype(m) == MB_Q8 ? ", q8" : "");
        for (int k = 1; k <= MAX_K; k++)
            printf("k %2d: %8.2f ms %5.2fx\n", k, 1e3 * sec[k], sec[k] / sec[1]);
        mb_model_free(m);
        return 0;
    }
    const mb_config *c = mb_model_config(m);
    int th = mb_model_threads(m);
    mb_pool *p1 = mb_pool_create(m, 1, 1, &e);
    double state = (double)mb_pool_state_bytes(p1);
    mb_pool_free(p1);
    mb_dtype dt = mb_model_dtype(m);
    int esize = dt == MB_F32 ? 4 : dt == MB_Q8 ? 1 : 2;
    double flops_per_byte = 2.0 * wbytes / esize; /* one multiply-add per weight per token */
    double bw = bandwidth(th);
    printf("model %s: d_model %d, layers %d, d_inner %d, d_state %d, weights %s (%.1f MB per "
           "step), state %.2f MB, threads %d\n",
           argv[1], c->d_model, c->n_layer, c->d_inner, c->d_state,
           dt == MB_F32  ? "f32"
           : dt == MB_Q8 ? "q8"
                         : "bf16",
           wbytes / 1e6, state / 1e6, th);
    double peak = peak_gflops(0, th);
    printf("read bandwidth: %.1f GB/s; peak FLOP rate (%d threads): ymm FMA %.1f GFLOP/s", bw, th,
           peak);
    if (mb_cpu_isa_supported(1)) printf(", zmm FMA %.1f", peak_gflops(1, th));
    if (mb_cpu_isa_supported(2)) printf(", zmm vdpbf16ps %.1f", peak_gflops(2, th));
    if (mb_cpu_isa_supported(3)) printf(", zmm vpdpbusd %.1f", peak_gflops(3, th));
    printf("\nper cell: bytes/s (x the first variant, GFLOP/s at %.0f flops a byte, %% of the ymm "
           "FMA peak)\n%-22s",
           flops_per_byte, "");
    for (int v = 0; v < n_var; v++) printf(" %-45s", variants[v]);
    printf("\n");
    int batches[] = {1, 8, 32};
    for (int i = 0; i < 3; i++) {
        int B = batches[i], steps = (int)((B == 1 ? 200 : 40) * scale);
        double bps[MAX_VAR];
        decode(m, B, steps < 4 ? 4 : steps, 5, bps);
        char what[64];
        snprintf(what, sizeof what, "decode batch %d", B);
        print_row(what, bps, flops_per_byte, peak);
        /* per step: the weights once, each sequence's state read and written */
        double bound = bw * 1e9 / (wbytes + 2.0 * state * B) * B;
        printf("%-22s bandwidth bound %.1f bytes/s: %.0f%% of it (%s)\n", "", bound,
               100.0 * bps[n_var - 1] / bound, variants[n_var - 1]);
    }
    double bps[MAX_VAR];
    int chunks = (int)(4 * scale + 0.5);
    prefill(m, 512, chunks < 1 ? 1 : chunks, 3, bps);
    print_row("prefill (512 chunks)", bps, flops_per_byte, peak);
    mb_model_free(m);
    return 0;
}
