/* bench_engine.c: CPU engine throughput. Decode bytes/s at several batch sizes, prefill
 * bytes/s, the machine's read bandwidth (a large streaming read on every thread) and the
 * decode step's share of the bandwidth bound (weights + states touched per step / time).
 * Medians of repeated runs; run it through bench/engine.sh. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "mambabyte.h"

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

/* bytes/s of decode at batch B: B sequences, one byte each per forward; median of reps. */
static double decode(mb_model *m, int B, int steps, int reps) {
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
    double r[16];
    for (int rep = 0; rep < reps; rep++) {
        for (int i = 0; i < B; i++) toks[i] = 'a' + i % 26;
        for (int s = -3; s < steps; s++) {
            if (s == 0) r[rep] = now_s();
            mb_batch b = {B, toks, off, slot, NULL};
            if (mb_forward(m, p, &b, logits, &e)) exit(1);
            for (int i = 0; i < B; i++) toks[i] = (toks[i] * 7 + 3) & 0x7f;
        }
        r[rep] = (double)B * steps / (now_s() - r[rep]);
    }
    free(logits);
    mb_pool_free(p);
    return median(r, reps);
}

static double prefill(mb_model *m, int chunk, int n_chunks, int reps) {
    mb_err e;
    mb_pool *p = mb_pool_create(m, 1, chunk, &e);
    int32_t *toks = malloc((size_t)chunk * sizeof *toks);
    for (int i = 0; i < chunk; i++) toks[i] = "the quick brown fox "[i % 20];
    float logits[256];
    double r[16];
    for (int rep = 0; rep < reps; rep++) {
        mb_pool_reset(p, 0, NULL);
        double t0 = now_s();
        for (int c = 0; c < n_chunks; c++) {
            int off[2] = {0, chunk}, slot = 0;
            mb_batch b = {1, toks, off, &slot, NULL};
            if (mb_forward(m, p, &b, logits, &e)) exit(1);
        }
        r[rep] = (double)chunk * n_chunks / (now_s() - t0);
    }
    free(toks);
    mb_pool_free(p);
    return median(r, reps);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_engine MODEL_DIR [threads]\n");
        return 2;
    }
    mb_err e;
    mb_backend_opts o = {argc > 2 ? atoi(argv[2]) : 0, MB_DEVICE_CPU, 0};
    mb_model *m = mb_model_load(argv[1], &o, &e);
    if (!m) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    const mb_config *c = mb_model_config(m);
    int th = mb_model_threads(m);
    mb_pool *p1 = mb_pool_create(m, 1, 1, &e);
    double state = (double)mb_pool_state_bytes(p1);
    mb_pool_free(p1);
    double wbytes = (double)mb_model_weight_bytes(m);
    double bw = bandwidth(th);
    printf("model %s: d_model %d, layers %d, d_inner %d, d_state %d, weights %s (%.1f MB per "
           "step), state %.2f MB, threads %d\n",
           argv[1], c->d_model, c->n_layer, c->d_inner, c->d_state,
           mb_model_dtype(m) == MB_F32 ? "f32" : "bf16", wbytes / 1e6, state / 1e6, th);
    printf("read bandwidth: %.1f GB/s\n", bw);
    int batches[] = {1, 8, 32};
    for (int i = 0; i < 3; i++) {
        int B = batches[i];
        double bps = decode(m, B, B == 1 ? 200 : 40, 5);
        /* per step: the weights once, each sequence's state read and written */
        double bound = bw * 1e9 / (wbytes + 2.0 * state * B) * B;
        printf("decode batch %2d: %8.1f bytes/s  (bandwidth bound %.1f, %.0f%% of it)\n", B, bps,
               bound, 100.0 * bps / bound);
    }
    printf("prefill (chunks of 512): %8.1f bytes/s\n", prefill(m, 512, 4, 3));
    mb_model_free(m);
    return 0;
}
