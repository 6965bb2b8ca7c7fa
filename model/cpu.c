/* cpu.c: the CPU backend's batched forward pass (DESIGN.md, "The maths").
 *
 * Batch invariance is built in: every dot product runs through dot_block() in one fixed order
 * (one 8-lane accumulator over 8-float chunks, a fixed horizontal sum, a scalar tail), and
 * every per-token or per-channel loop computes each output from its own inputs only. So a
 * token's logits are the same bits whether it came alone, inside a span, or beside other
 * sequences, and whatever the number of threads. */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"

/* ---------------------------------------------------------------- maths helpers */

/* exp(x) for float32, written so that loops over it vectorize: Cody-Waite reduction to
 * r in [-ln2/2, ln2/2] and a degree-6 polynomial (relative error about 1e-7). */
/* dot blocks for up to this many tokens prefetch the next rows: they stream the weights */
#define PREFETCH_T 3

static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float silu(float x) {
    return x / (1.0f + fast_expf(-x));
}

static inline float softplus(float x) {
    return x > 20.0f ? x : log1pf(expf(x));
}

/* exp on 8 lanes: the same reduction and polynomial as fast_expf, with FMAs. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* log on 8 lanes for x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then a degree-9
 * polynomial in m - 1 (relative error about 1e-7). */
static inline __m256 log8(__m256 x) {
    __m256i xi = _mm256_castps_si256(x);
    __m256 e =
        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(126)));
    __m256 m =
        _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32(0x007fffff)),
                                            _mm256_set1_epi32(0x3f000000))); /* [0.5, 1) */
    __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
    m = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), _mm256_set1_ps(1.0f));
    __m256 z = _mm256_mul_ps(m, m);
    __m256 y = _mm256_set1_ps(7.0376836292e-2f);
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.1514610310e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.1676998740e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.2420140846e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.4249322787e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.6668057665e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(2.0000714765e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-2.4999993993e-1f));
    y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(3.3333331174e-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
    return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(m, y));
}

static inline __m256 silu8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* softplus(x) = log1p(exp(x)), x itself above 20; log1p(y) = log(u) + (y - (u - 1)) / u with
 * u = 1 + y keeps the small values (dt is often 1e-3) accurate. */
static inline __m256 softplus8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f), y = exp8(x), u = _mm256_add_ps(one, y);
    __m256 r = _mm256_add_ps(log8(u), _mm256_div_ps(_mm256_sub_ps(y, _mm256_sub_ps(u, one)), u));
    return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, _mm256_set1_ps(20.0f), _CMP_GT_OQ));
}

/* ---------------------------------------------------------------- matrix x vectors */

/* 8 weights from element i as float32: float32, bf16 (widened) or q8 (the int8 values; the
 * row's scale is applied to the finished dot product, mb_cpu_store_group) */
static inline __m256 load8(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_F32) return _mm256_loadu_ps((const float *)w + i);
    if (dt == MB_Q8)
        return _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load1(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_F32) return ((const float *)w)[i];
    if (dt == MB_Q8) return (float)((const int8_t *)w)[i];
    uint32_t b = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[t * ldo + r] = W[r0 + r, :] . X[t, :] for R rows and T tokens (R, T and the dtype are
 * compile-time constants after inlining). Every (row, token) pair has one 8-lane accumulator over
 * the 8-float chunks in order, a fixed horizontal sum and a scalar tail: the same bits for every R
 * and T. R x T independent chains keep the FMA units busy; each weight chunk is loaded once per T
 * tokens. Up to ROWWISE_FLOAT_T tokens of streamed weights (cpu.h) take R = 1: each row read
 * front to back. */
static inline __attribute__((always_inline)) void dot_block_dt(const mb_mat *W, int r0,
                                                               const float *X, int ldx, float *out,
                                                               int ldo, const int R, const int T,
                                                               const mb_dtype dt) {
    const int n = W->cols;
    const size_t ld = (size_t)n;
    __m256 acc[12]; /* R * T <= 12: with the R weight chunks, all in the 16 ymm registers */
    for (int i = 0; i < R * T; i++) acc[i] = _mm256_setzero_ps();
    int k = 0;
    const size_t esize = mb_dtype_size(dt);
    for (; k + 8 <= n; k += 8) {
        __m256 w[8];
        /* Decode and short spans stream each row once and rows are short (1 KB for a bf16 row
         * of 512): ask for the next row group's cache line now, or the hardware prefetcher
         * starts too late (+20% at batch 1 with bf16 weights, 1.4-1.6x for spans of 2-4
         * tokens; a prefetch past the end is harmless). */
        if (T <= PREFETCH_T && (size_t)k * esize % 64 == 0)
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)((uintptr_t)W->w +
                                            ((size_t)(r0 + R + r) * ld + (size_t)k) * esize),
                             _MM_HINT_T0);
        for (int r = 0; r < R; r++) w[r] = load8(W->w, dt, (size_t)(r0 + r) * ld + (size_t)k);
        for (int t = 0; t < T; t++) {
            __m256 x = _mm256_loadu_ps(X + (size_t)t * (size_t)ldx + (size_t)k);
            for (int r = 0; r < R; r++) acc[t * R + r] = _mm256_fmadd_ps(w[r], x, acc[t * R + r]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            float s = hsum(acc[t * R + r]);
            const float *x = X + (size_t)t * (size_t)ldx;
            for (int kk = k; kk < n; kk++)
                s = fmaf(load1(W->w, dt, (size_t)(r0 + r) * ld + (size_t)kk), x[kk], s);
            out[(size_t)t * (size_t)ldo + (size_t)r] = s;
        }
}

static inline __attribute__((always_inline)) void dot_block(const mb_mat *W, int r0, const float *X,
                                                            int ldx, float *out, int ldo,
                                                            const int R, const int T) {
    if (W->dtype == MB_F32)
        dot_block_dt(W, r0, X, ldx, out, ldo, R, T, MB_F32);
    else if (W->dtype == MB_Q8)
        dot_block_dt(W, r0, X, ldx, out, ldo, R, T, MB_Q8);
    else
        dot_block_dt(W, r0, X, ldx, out, ldo, R, T, MB_BF16);
}

void mb_cpu_store_group(const matmul_task *m, int t0, int nt, int r, int rows, const float *out) {
    for (int t = 0; t < nt; t++) {
        float *y = m->Y + (size_t)(t0 + t) * (size_t)m->ldy + r;
        const float *o = out + t * ROW_GROUP;
        if (rows == ROW_GROUP) { /* a full group: 8 lanes (the same rows always are) */
            __m256 v = _mm256_loadu_ps(o);
            if (m->W->dtype == MB_Q8) v = _mm256_mul_ps(v, _mm256_loadu_ps(m->W->scale + r));
            if (m->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(m->bias + r));
            if (m->epi == EPI_ADD) v = _mm256_add_ps(_mm256_loadu_ps(y), v);
            if (m->epi == EPI_SOFTPLUS) v = softplus8(v);
            _mm256_storeu_ps(y, v);
            continue;
        }
        for (int i = 0; i < rows; i++) {
            float v = (m->W->dtype == MB_Q8 ? o[i] * m->W->scale[r + i] : o[i]) +
                      (m->bias ? m->bias[r + i] : 0.0f);
            y[i] = m->epi == EPI_ADD ? y[i] + v : m->epi == EPI_SOFTPLUS ? softplus(v) : v;
        }
    }
}

void mb_matmul_avx2(void *ctx, int ti, int nt) {
    const matmul_task *m = ctx;
    int groups = (m->n_rows + ROW_GROUP - 1) / ROW_GROUP;
    int g0 = (int)((long)groups * ti / nt), g1 = (int)((long)groups * (ti + 1) / nt);
    int r_begin = g0 * ROW_GROUP, r_end = g1 * ROW_GROUP < m->n_rows ? g1 * ROW_GROUP : m->n_rows;
    float out[ROW_GROUP * TOKEN_BLOCK];
    /* Many tokens and BF16 or q8 weights: widen each row group to F32 once, not once per token
     * block (exact, so the sums are the same bits). A short span (a verification, a few prompt
     * bytes) reads the narrow rows directly: widening costs more than it saves there. */
    float *wide = m->W->dtype != MB_F32 && m->T >= WIDEN_MIN_T
                      ? malloc((size_t)ROW_GROUP * (size_t)m->W->cols * 4)
                      : NULL;
    for (int t0 = 0; t0 < m->T; t0 += TOKEN_BLOCK) {
        int nt_blk = m->T - t0 < TOKEN_BLOCK ? m->T - t0 : TOKEN_BLOCK;
        const float *X = m->X + (size_t)t0 * (size_t)m->ldx;
        for (int r = r_begin; r < r_end; r += ROW_GROUP) {
            int rows = r_end - r < ROW_GROUP ? r_end - r : ROW_GROUP, q = 0, rw = r;
            mb_mat Wf = *m->W;
            if (wide) {
                size_t n = (size_t)rows * (size_t)Wf.cols, base = (size_t)r * (size_t)Wf.cols,
                       i = 0;
                for (; i + 8 <= n; i += 8)
                    _mm256_storeu_ps(wide + i, load8(m->W->w, m->W->dtype, base + i));
                for (; i < n; i++) wide[i] = load1(m->W->w, m->W->dtype, base + i);
                Wf.w = wide;
                Wf.dtype = MB_F32;
                rw = 0;
            }
            const mb_mat *W = &Wf;
            /* decode and short spans of streamed weights: each row front to back */
            if (m->rowwise && nt_blk <= ROWWISE_FLOAT_T) {
                for (; q < rows; q++)
                    if (nt_blk == 1)
                        dot_block(W, rw + q, X, m->ldx, out + q, ROW_GROUP, 1, 1);
                    else
                        dot_block(W, rw + q, X, m->ldx, out + q, ROW_GROUP, 1, 2);
            }
            for (; q + 4 <= rows; q += 4) {
                int t = 0;
                for (; t + 3 <= nt_blk; t += 3)
                    dot_block(W, rw + q, X + (size_t)t * (size_t)m->ldx, m->ldx,
                              out + t * ROW_GROUP + q, ROW_GROUP, 4, 3);
                if (nt_blk - t == 2) {
                    dot_block(W, rw + q, X + (size_t)t * (size_t)m->ldx, m->ldx,
                              out + t * ROW_GROUP + q, ROW_GROUP, 4, 2);
                    t += 2;
                }
                for (; t < nt_blk; t++)
                    dot_block(W, rw + q, X + (size_t)t * (size_t)m->ldx, m->ldx,
                              out + t * ROW_GROUP + q, ROW_GROUP, 4, 1);
            }
            for (; q < rows; q++)
                for (int t = 0; t < nt_blk; t++)
                    dot_block(W, rw + q, X + (size_t)t * (size_t)m->ldx, m->ldx,
                              out + t * ROW_GROUP + q, ROW_GROUP, 1, 1);
            mb_cpu_store_group(m, t0, nt_blk, r, rows, out);
        }
    }
    free(wide);
}

/* ---------------------------------------------------------------- dispatch by CPU features */

/* The variants in order of preference, lowest first: each needs the features of the ones
 * before it. A variant serves every matmul of a process (all batch sizes and spans), so batch
 * invariance holds per variant; results differ between variants in the last bits (avx512: 16
 * lanes, another summation order) or a little more (avx512bf16: bf16 dot products;
 * avx512vnni: as avx512bf16, and q8 weights times each token's inputs in int8, or int16 for
 * out_proj, with a scale per token). */
typedef struct isa_variant {
    const char *name;
    void (*matmul)(void *task, int ti, int nt);
} isa_variant;

static const isa_variant isa_variants[] = {
    {"avx2", mb_matmul_avx2},
    {"avx512", mb_matmul_avx512},
    {"avx512bf16", mb_matmul_avx512bf16},
    {"avx512vnni", mb_matmul_avx512vnni},
};
enum { ISA_AVX2, ISA_AVX512, ISA_AVX512BF16, ISA_AVX512VNNI, ISA_COUNT };

/* The best variant this processor and its operating system support (CPUID; XGETBV for the
 * zmm and mask registers' state). The binary's baseline is x86-64-v3, so AVX2 and FMA are
 * given. */
static int isa_best(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return ISA_AVX2;
    unsigned xlo, xhi;
    __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 0xe6) != 0xe6) return ISA_AVX2; /* SSE, AVX, opmask, zmm state enabled */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return ISA_AVX2;
    const unsigned need = bit_AVX512F | bit_AVX512DQ | bit_AVX512BW | bit_AVX512VL;
    if ((b & need) != need) return ISA_AVX2;
    int vnni = (c & bit_AVX512VNNI) != 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return ISA_AVX512;
    return vnni ? ISA_AVX512VNNI : ISA_AVX512BF16;
}

static int isa_max = -1, isa_cur = -1;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static int isa_index(const char *name) {
    for (int i = 0; i < ISA_COUNT; i++)
        if (!strcmp(name, isa_variants[i].name)) return i;
    return -1;
}

/* The best variant, or the one $MB_CPU_ISA names if this machine supports it. */
static void isa_init(void) {
    isa_max = isa_best();
    isa_cur = isa_max;
    const char *env = getenv("MB_CPU_ISA");
    if (!env || !*env) return;
    int i = isa_index(env);
    if (i >= 0 && i <= isa_max)
        isa_cur = i;
    else
        fprintf(stderr, "mambabyte: MB_CPU_ISA=%s is not a variant this CPU supports; using %s\n",
                env, isa_variants[isa_cur].name);
}

const char *mb_cpu_isa(void) {
    pthread_once(&isa_once, isa_init);
    return isa_variants[isa_cur].name;
}

int mb_cpu_isa_supported(int i) {
    pthread_once(&isa_once, isa_init);
    return i >= 0 && i < ISA_COUNT && i <= isa_max ? 1 : 0;
}

const char *mb_cpu_isa_name(int i) {
    return i >= 0 && i < ISA_COUNT ? isa_variants[i].name : NULL;
}

int mb_cpu_isa_set(const char *name) {
    pthread_once(&isa_once, isa_init);
    int i = isa_index(name);
    if (i < 0 || i > isa_max) return -1;
    isa_cur = i;
    return 0;
}

/* The widest input of any matrix: d_model, d_inner or dt_rank. */
static size_t max_cols(const mb_config *c) {
    int n = c->d_model > c->d_inner ? c->d_model : c->d_inner;
    return (size_t)(n > c->dt_rank ? n : c->dt_rank);
}

/* uint16 per thread: avx512bf16's two halves of a token block or avx512vnni's int8 or int16
 * inputs of one (64-byte rows) and their scales, whichever is larger, rounded up to 64 bytes */
size_t mb_cpu_scratch_per_thread(size_t cols) {
    size_t halves = 2 * (size_t)TOKEN_BLOCK * cols,
           ints = (size_t)TOKEN_BLOCK * ((cols + 31) / 32 * 32 + 2);
    return ((halves > ints ? halves : ints) + 31) / 32 * 32;
}

/* The CPU backend's own model data (m->dev). */
typedef struct cpu_model {
    uint16_t *scratch; /* (threads, scratch_per_thread) for the kernels */
    void *q8;          /* the layers' weights in q8 and their scales, when asked for */
    int rowwise;       /* matmul_task.rowwise */
} cpu_model;

/* Weights of more than this many bytes stream from memory at every step, past any last-level
 * cache we run on: the float kernels then read rows front to back (cpu.h, ROWWISE_FLOAT_T). On
 * the bundled 20M model (21 MB of bf16, in Zen 4's 32 MB L3) that was 15-20% slower at batch 1. */
#define STREAM_MIN_BYTES ((size_t)64 << 20)

/* Y = X W^T (+ bias, epilogue) on the thread team; int16_inputs: see matmul_task. */
static void matmul(mb_model *mdl, const mb_mat *W, int n_rows, const float *X, int ldx, float *Y,
                   int ldy, int T, const float *bias, int epi, int int16_inputs) {
    const cpu_model *cm = mdl->dev;
    matmul_task m = {.W = W,
                     .n_rows = n_rows,
                     .X = X,
                     .ldx = ldx,
                     .Y = Y,
                     .ldy = ldy,
                     .T = T,
                     .bias = bias,
                     .epi = epi,
                     .int16_inputs = int16_inputs,
                     .rowwise = cm->rowwise,
                     .scratch = cm->scratch,
                     .scratch_per_thread = mb_cpu_scratch_per_thread(max_cols(&mdl->c))};
    mb_threads_run(mdl->threads, isa_variants[isa_cur].matmul, &m);
}

/* ---------------------------------------------------------------- conv and scan steps */

void mb_conv_step(const mb_layer *L, const mb_config *c, const float *win_in, float *win_out,
                  const float *x, float *u, int c0, int c1) {
    const int K = c->d_conv, W = K - 1;
    const size_t E = (size_t)c->d_inner;
    int ch = c0;
    for (; ch + 8 <= c1; ch += 8) { /* 8 channels per instruction: taps are channel-contiguous */
        __m256 acc = _mm256_loadu_ps(L->conv_b + ch), xv = _mm256_loadu_ps(x + ch);
        for (int k = 0; k < W; k++)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(L->conv_w + (size_t)k * E + ch),
                                  _mm256_loadu_ps(win_in + (size_t)k * E + ch), acc);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(L->conv_w + (size_t)W * E + ch), xv, acc);
        for (int k = 0; k + 1 < W; k++)
            _mm256_storeu_ps(win_out + (size_t)k * E + ch,
                             _mm256_loadu_ps(win_in + (size_t)(k + 1) * E + ch));
        if (W) _mm256_storeu_ps(win_out + (size_t)(W - 1) * E + ch, xv);
        _mm256_storeu_ps(u + ch, silu8(acc));
    }
    for (; ch < c1; ch++) {
        float acc = L->conv_b[ch];
        for (int k = 0; k < W; k++)
            acc += L->conv_w[(size_t)k * E + ch] * win_in[(size_t)k * E + ch];
        acc += L->conv_w[(size_t)W * E + ch] * x[ch];
        for (int k = 0; k + 1 < W; k++)
            win_out[(size_t)k * E + ch] = win_in[(size_t)(k + 1) * E + ch];
        if (W) win_out[(size_t)(W - 1) * E + ch] = x[ch];
        u[ch] = silu(acc);
    }
}

void mb_scan_step(const mb_layer *L, const mb_config *c, const float *s_in, float *s_out,
                  const float *u, const float *dt, const float *B, const float *C, float *y, int c0,
                  int c1) {
    const int N = c->d_state;
    for (int ch = c0; ch < c1; ch++) {
        const float *A = L->A + (size_t)ch * (size_t)N;
        const float *si = s_in + (size_t)ch * (size_t)N;
        float *so = s_out + (size_t)ch * (size_t)N;
        float acc;
        if (N % 8 == 0) { /* the common case (d_state 16): 8 states per instruction */
            const __m256 d = _mm256_set1_ps(dt[ch]), du = _mm256_set1_ps(dt[ch] * u[ch]);
            __m256 ya = _mm256_setzero_ps();
            for (int n = 0; n < N; n += 8) {
                __m256 dA = exp8(_mm256_mul_ps(d, _mm256_loadu_ps(A + n)));
                __m256 s = _mm256_fmadd_ps(dA, _mm256_loadu_ps(si + n),
                                           _mm256_mul_ps(_mm256_loadu_ps(B + n), du));
                _mm256_storeu_ps(so + n, s);
                if (y) ya = _mm256_fmadd_ps(s, _mm256_loadu_ps(C + n), ya);
            }
            acc = hsum(ya);
        } else {
            const float d = dt[ch], du = dt[ch] * u[ch];
            acc = 0.0f;
            for (int n = 0; n < N; n++) {
                float s = fast_expf(d * A[n]) * si[n] + B[n] * du;
                so[n] = s;
                if (y) acc += s * C[n];
            }
        }
        if (y) y[ch] = acc + L->D[ch] * u[ch];
    }
}

/* ---------------------------------------------------------------- the forward */

typedef struct fwd {
    mb_model *m;
    mb_pool *p;
    const mb_batch *b;
    int T, layer;
    int n_out;       /* rows of logits */
    const int *rows; /* token index of each logits row */
} fwd;

static inline void channel_range(int E, int ti, int nt, int *c0, int *c1) {
    int blocks = (E + 7) / 8;
    *c0 = (int)((long)blocks * ti / nt) * 8;
    *c1 = (int)((long)blocks * (ti + 1) / nt) * 8;
    if (*c1 > E) *c1 = E;
}

static void norm_row(const float *x, float *out, const float *w, const float *bias, int n,
                     float eps) {
    if (!bias) { /* RMSNorm */
        float ss = 0.0f;
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
        return;
    }
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + bias[i];
}

static void norm_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const int D = c->d_model;
    if (f->layer < c->n_layer) {
        const mb_layer *L = &f->m->layers[f->layer];
        for (int t = ti; t < f->T; t += nt)
            norm_row(f->p->h + (size_t)t * D, f->p->xn + (size_t)t * D, L->norm_w, L->norm_b, D,
                     c->norm_eps);
    } else {
        for (int i = ti; i < f->n_out; i += nt)
            norm_row(f->p->h + (size_t)f->rows[i] * D, f->p->xn + (size_t)i * D, f->m->nf_w,
                     f->m->nf_b, D, c->norm_eps);
    }
}

static void conv_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const mb_layer *L = &f->m->layers[f->layer];
    mb_pool *p = f->p;
    const int E = c->d_inner;
    const size_t lofs = (size_t)f->layer * mb_layer_state_floats(c);
    int c0, c1;
    channel_range(E, ti, nt, &c0, &c1);
    float *jx = p->j_xin + (size_t)f->layer * (size_t)p->max_tokens * E;
    for (int s = 0; s < f->b->n_seq; s++) {
        int slot = f->b->slot[s];
        const float *src = mb_slot_state(p, slot, p->cur[slot]) + lofs;
        float *dst = mb_slot_state(p, slot, !p->cur[slot]) + lofs;
        for (int t = f->b->off[s]; t < f->b->off[s + 1]; t++) {
            const float *x = p->xz + (size_t)t * 2 * E;
            mb_conv_step(L, c, t == f->b->off[s] ? src : dst, dst, x, p->u + (size_t)t * E, c0, c1);
            memcpy(jx + (size_t)t * E + c0, x + c0, (size_t)(c1 - c0) * sizeof(float));
        }
    }
}

static void scan_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const mb_layer *L = &f->m->layers[f->layer];
    mb_pool *p = f->p;
    const int E = c->d_inner, N = c->d_state, R = c->dt_rank, ld = R + 2 * N;
    const size_t lofs =
        (size_t)f->layer * mb_layer_state_floats(c) + (size_t)E * (size_t)(c->d_conv - 1);
    const float *dt = p->j_dt + (size_t)f->layer * (size_t)p->max_tokens * E;
    int c0, c1;
    channel_range(E, ti, nt, &c0, &c1);
    for (int s = 0; s < f->b->n_seq; s++) {
        int slot = f->b->slot[s];
        const float *src = mb_slot_state(p, slot, p->cur[slot]) + lofs;
        float *dst = mb_slot_state(p, slot, !p->cur[slot]) + lofs;
        for (int t = f->b->off[s]; t < f->b->off[s + 1]; t++) {
            const float *dbl = p->dbl + (size_t)t * ld;
            float *y = p->y + (size_t)t * E;
            mb_scan_step(L, c, t == f->b->off[s] ? src : dst, dst, p->u + (size_t)t * E,
                         dt + (size_t)t * E, dbl + R, dbl + R + N, y, c0, c1);
            const float *z = p->xz + (size_t)t * 2 * E + E;
            int ch = c0;
            for (; ch + 8 <= c1; ch += 8)
                _mm256_storeu_ps(
                    y + ch, _mm256_mul_ps(_mm256_loadu_ps(y + ch), silu8(_mm256_loadu_ps(z + ch))));
            for (; ch < c1; ch++) y[ch] *= silu(z[ch]);
        }
    }
}

static void embed_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const int D = f->m->c.d_model;
    const mb_mat *E = &f->m->embed;
    for (int t = ti; t < f->T; t += nt) {
        size_t base = (size_t)f->b->tokens[t] * (size_t)D;
        float *h = f->p->h + (size_t)t * D;
        for (int i = 0; i < D; i++) h[i] = load1(E->w, E->dtype, base + (size_t)i);
    }
}

static int cpu_forward(mb_model *m, mb_pool *p, const mb_batch *b, const int *rows, int n_out,
                       float *logits, mb_err *e) {
    const mb_config *c = &m->c;
    const int T = b->n_seq ? b->off[b->n_seq] : 0, D = c->d_model, E = c->d_inner, N = c->d_state,
              R = c->dt_rank;
    fwd f = {m, p, b, T, 0, n_out, rows};
    mb_threads *th = m->threads;
    mb_threads_run(th, embed_worker, &f);
    for (int l = 0; l < c->n_layer; l++) {
        const mb_layer *L = &m->layers[l];
        f.layer = l;
        /* xz = in_proj(norm(h)) */
        mb_threads_run(th, norm_worker, &f);
        matmul(m, &L->in_proj, 2 * E, p->xn, D, p->xz, 2 * E, T, L->in_b, EPI_STORE, 0);
        /* u = silu(conv(x)), advancing each sequence's conv window */
        mb_threads_run(th, conv_worker, &f);
        /* [dt_low, B, C] = x_proj(u); dt = softplus(dt_proj(dt_low) + dt_bias) */
        matmul(m, &L->x_proj, R + 2 * N, p->u, E, p->dbl, R + 2 * N, T, NULL, EPI_STORE, 0);
        float *jdt = p->j_dt + (size_t)l * (size_t)p->max_tokens * E;
        matmul(m, &L->dt_proj, E, p->dbl, R + 2 * N, jdt, E, T, L->dt_b, EPI_SOFTPLUS, 0);
        float *jB = p->j_B + (size_t)l * (size_t)p->max_tokens * N;
        for (int t = 0; t < T; t++)
            memcpy(jB + (size_t)t * N, p->dbl + (size_t)t * (R + 2 * N) + R,
                   (size_t)N * sizeof(float));
        /* selective scan, then y * silu(z) */
        mb_threads_run(th, scan_worker, &f);
        /* residual connection: h += out_proj(y); y has outliers that int8 inputs blur
         * (avx512vnni with q8 weights, the bundled model on 100 KB of books_test: +0.0026
         * bits per byte against float32 inputs, +0.00001 with int16), so int16 there */
        matmul(m, &L->out_proj, D, p->y, E, p->h, D, T, L->out_b, EPI_ADD, 1);
    }
    /* final norm and the head, only for the rows asked for */
    f.layer = c->n_layer;
    if (n_out) {
        mb_threads_run(th, norm_worker, &f);
        matmul(m, &m->head, c->n_vocab, p->xn, D, logits, c->n_vocab, n_out, NULL, EPI_STORE, 0);
    }
    return 0;
}

/* ---------------------------------------------------------------- the pool */

static void *zalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p) memset(p, 0, n);
    return p;
}

static void cpu_pool_free(mb_pool *p) {
    free(p->state);
    free(p->j_xin);
    free(p->j_dt);
    free(p->j_B);
    free(p->h);
    free(p->xn);
    free(p->xz);
    free(p->u);
    free(p->dbl);
    free(p->y);
}

static int cpu_pool_init(mb_pool *p, mb_err *e) {
    const mb_config *c = &p->m->c;
    const size_t T = (size_t)p->max_tokens, L = (size_t)c->n_layer, E = (size_t)c->d_inner,
                 D = (size_t)c->d_model, N = (size_t)c->d_state, F = sizeof(float);
    p->state = zalloc((size_t)p->n_slots * 2 * p->state_floats * F);
    p->j_xin = zalloc(L * T * E * F);
    p->j_dt = zalloc(L * T * E * F);
    p->j_B = zalloc(L * T * N * F);
    p->h = zalloc(T * D * F);
    p->xn = zalloc(T * D * F);
    p->xz = zalloc(T * 2 * E * F);
    p->u = zalloc(T * E * F);
    p->dbl = zalloc(T * (size_t)(c->dt_rank + 2 * c->d_state) * F);
    p->y = zalloc(T * E * F);
    if (!p->state || !p->j_xin || !p->j_dt || !p->j_B || !p->h || !p->xn || !p->xz || !p->u ||
        !p->dbl || !p->y)
        return mb_fail(e, "pool: out of memory for %d slots x %d tokens", p->n_slots,
                       p->max_tokens);
    return 0;
}

static int cpu_rollback(mb_pool *p, int slot, int j_start, int n_keep, mb_err *e) {
    const mb_config *c = &p->m->c;
    const size_t E = (size_t)c->d_inner, N = (size_t)c->d_state, T = (size_t)p->max_tokens;
    const size_t lsz = mb_layer_state_floats(c), wsz = E * (size_t)(c->d_conv - 1);
    const float *start = mb_slot_state(p, slot, !p->cur[slot]);
    float *st = mb_slot_state(p, slot, p->cur[slot]);
    memcpy(st, start, mb_pool_state_bytes(p));
    float *u = p->u; /* activation scratch is free between forwards */
    for (int l = 0; l < c->n_layer; l++) {
        const mb_layer *L = &p->m->layers[l];
        float *win = st + (size_t)l * lsz, *ssm = win + wsz;
        for (int i = 0; i < n_keep; i++) {
            size_t t = (size_t)(j_start + i);
            mb_conv_step(L, c, win, win, p->j_xin + ((size_t)l * T + t) * E, u, 0, (int)E);
            mb_scan_step(L, c, ssm, ssm, u, p->j_dt + ((size_t)l * T + t) * E,
                         p->j_B + ((size_t)l * T + t) * N, NULL, NULL, 0, (int)E);
        }
    }
    return 0;
}

static int cpu_reset(mb_pool *p, int slot, mb_err *e) {
    memset(mb_slot_state(p, slot, p->cur[slot]), 0, mb_pool_state_bytes(p));
    return 0;
}

static int cpu_copy(mb_pool *p, int dst, int src, mb_err *e) {
    memcpy(mb_slot_state(p, dst, p->cur[dst]), mb_slot_state(p, src, p->cur[src]),
           mb_pool_state_bytes(p));
    return 0;
}

static int cpu_read(mb_pool *p, int slot, void *dst, mb_err *e) {
    memcpy(dst, mb_slot_state(p, slot, p->cur[slot]), mb_pool_state_bytes(p));
    return 0;
}

static int cpu_write(mb_pool *p, int slot, const void *src, mb_err *e) {
    memcpy(mb_slot_state(p, slot, p->cur[slot]), src, mb_pool_state_bytes(p));
    return 0;
}

/* ---------------------------------------------------------------- the model */

size_t mb_cpu_q8_bytes(int rows, int cols) {
    return ((size_t)rows * (size_t)cols + 63) / 64 * 64 + 2 * (((size_t)rows * 4 + 63) / 64 * 64);
}

void mb_cpu_quantize_q8(mb_mat *W, void *mem) {
    const size_t n = (size_t)W->cols;
    int8_t *q = mem;
    float *scale = (float *)((uint8_t *)mem + ((size_t)W->rows * n + 63) / 64 * 64);
    W->scale = scale;
    int32_t *sums = (int32_t *)mb_cpu_q8_row_sums(W);
    for (size_t r = 0; r < (size_t)W->rows; r++) {
        float amax = 0.0f;
        for (size_t k = 0; k < n; k++) amax = fmaxf(amax, fabsf(load1(W->w, W->dtype, r * n + k)));
        scale[r] = amax / 127.0f;
        sums[r] = 0;
        for (size_t k = 0; k < n; k++) {
            float v = amax > 0.0f ? load1(W->w, W->dtype, r * n + k) / scale[r] : 0.0f;
            q[r * n + k] = (int8_t)fmaxf(-127.0f, fminf(127.0f, nearbyintf(v)));
            sums[r] += q[r * n + k];
        }
    }
    W->w = q;
    W->dtype = MB_Q8;
}

/* The layers' four matrices in q8 ($MB_WEIGHTS=q8); the embedding and the head stay as they
 * are (the head is the embedding when tied, and small). */
static int weights_q8(mb_model *m, cpu_model *cm, mb_err *e) {
    size_t bytes = 0;
    for (int l = 0; l < m->c.n_layer; l++) {
        mb_layer *L = &m->layers[l];
        mb_mat *mats[] = {&L->in_proj, &L->x_proj, &L->dt_proj, &L->out_proj};
        for (int i = 0; i < 4; i++) bytes += mb_cpu_q8_bytes(mats[i]->rows, mats[i]->cols);
    }
    uint8_t *mem = cm->q8 = aligned_alloc(64, bytes);
    if (!mem) return mb_fail(e, "out of memory for q8 weights (%zu bytes)", bytes);
    for (int l = 0; l < m->c.n_layer; l++) {
        mb_layer *L = &m->layers[l];
        mb_mat *mats[] = {&L->in_proj, &L->x_proj, &L->dt_proj, &L->out_proj};
        for (int i = 0; i < 4; i++) {
            size_t b = mb_cpu_q8_bytes(mats[i]->rows, mats[i]->cols);
            mb_cpu_quantize_q8(mats[i], mem);
            mem += b;
        }
    }
    return 0;
}

static void cpu_model_free(mb_model *m) {
    cpu_model *cm = m->dev;
    if (cm) {
        free(cm->scratch);
        free(cm->q8);
        free(cm);
    }
    m->dev = NULL;
    if (m->threads) mb_threads_free(m->threads);
    m->threads = NULL;
}

static int cpu_model_init(mb_model *m, const mb_backend_opts *o, char *note, size_t note_len,
                          mb_err *e) {
    const char *wt = getenv("MB_WEIGHTS");
    int q8 = wt && !strcmp(wt, "q8");
    if (wt && *wt && !q8) return mb_fail(e, "MB_WEIGHTS=%s: the one choice is q8", wt);
    int nt = o && o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    m->threads = mb_threads_create(nt < 1 ? 1 : nt > 256 ? 256 : nt);
    cpu_model *cm = m->dev = calloc(1, sizeof *cm);
    if (!m->threads || !cm) {
        cpu_model_free(m);
        return mb_fail(e, "cannot start worker threads");
    }
    cm->scratch = malloc((size_t)mb_threads_count(m->threads) *
                         mb_cpu_scratch_per_thread(max_cols(&m->c)) * sizeof(uint16_t));
    if (!cm->scratch) {
        cpu_model_free(m);
        return mb_fail(e, "out of memory for the CPU kernels' scratch");
    }
    if (q8 && weights_q8(m, cm, e)) {
        cpu_model_free(m);
        return -1;
    }
    cm->rowwise = mb_model_weight_bytes(m) > STREAM_MIN_BYTES;
    snprintf(note, note_len, "%d threads, %s%s", mb_threads_count(m->threads), mb_cpu_isa(),
             q8 ? ", q8 weights" : "");
    return 0;
}

static int cpu_fit_slots(const mb_model *m, int max_tokens) {
    return 0;
}

const mb_backend mb_cpu_backend = {
    .name = "cpu",
    .model_init = cpu_model_init,
    .model_free = cpu_model_free,
    .fit_slots = cpu_fit_slots,
    .pool_init = cpu_pool_init,
    .pool_free = cpu_pool_free,
    .forward = cpu_forward,
    .rollback = cpu_rollback,
    .reset = cpu_reset,
    .copy = cpu_copy,
    .read = cpu_read,
    .write = cpu_write,
};
