/* cpu_avx512.c: the CPU backend's dot products on AVX-512, built with -mavx512f -mavx512dq
 * -mavx512bw -mavx512vl (Makefile) and called only on a processor that has them (cpu.c,
 * isa_best); the functions that use vdpbf16ps also carry target("avx512bf16").
 *
 * avx512: the AVX2 kernel's scheme on 16 lanes and 32 registers: one 16-lane accumulator per
 *   (row, token) over the 16-float chunks in order, a fixed horizontal sum, a scalar tail; blocks
 *   of 4 rows x 6 tokens (24 accumulators) load each weight chunk once per 6 tokens, and blocks
 *   of up to ROWWISE_FLOAT_T tokens of streamed weights (cpu.h) read one row at a time, front to
 *   back, with one accumulator per token. BF16 rows are widened exactly, as in cpu.c.
 * avx512bf16: BF16 weights through vdpbf16ps, which multiplies bf16 pairs. Each activation x is
 *   split into hi = bf16(x) and lo = bf16(x - hi) (16 of its 24 significand bits; the rest is
 *   below 2^-16 x), and each 32-element chunk adds its products with hi, then with lo, into one
 *   16-lane accumulator; then the fixed horizontal sum and a scalar float32 tail. Up to
 *   ROWWISE_FLOAT_T tokens: one row at a time, as avx512. float32 weights take the avx512 kernel.
 * avx512vnni: avx512bf16, and q8 weights through vpdpbusd (64 byte products per instruction):
 *   each token's inputs quantized to int8 with a float32 scale of its own, exact int32 sums,
 *   then the token's and the row's scales; the matrices whose inputs 8 bits would blur
 *   (out_proj's, cpu.c) take int16 inputs through vpdpwssd (32 products per instruction).
 *   Blocks of up to 4 tokens (decode at small batches, short spans) read each row front to back
 *   instead (rows_vnni: the same integer sums, about twice the stream rate of rows side by
 *   side). On a processor with AVX512_BF16 (all that have it also have AVX512_VNNI); the
 *   functions that use vpdpbusd carry target("avx512vnni").
 * All compute each (row, token) dot product in the same order for every block shape, so a
 * token's result does not depend on the batch or span around it. */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#define PREFETCH_T 3 /* dot blocks for up to this many tokens prefetch the next rows */
#define AI         __attribute__((always_inline)) inline
#define BF16_FN    __attribute__((target("avx512bf16")))
#define VNNI_FN    __attribute__((target("avx512vnni")))

static AI float bf16_to_f32(uint16_t v) {
    uint32_t b = (uint32_t)v << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static AI float load1(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_Q8) return (float)((const int8_t *)w)[i];
    return dt == MB_F32 ? ((const float *)w)[i] : bf16_to_f32(((const uint16_t *)w)[i]);
}

static AI __m512 widen16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static AI __m512 load16(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_F32) return _mm512_loadu_ps((const float *)w + i);
    if (dt == MB_Q8) /* the int8 values; the row's scale comes after the sum (cpu.c) */
        return _mm512_cvtepi32_ps(
            _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))));
    return widen16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
}

static AI void prefetch_rows(const void *w, size_t ld, int row, int R, size_t k, size_t esize) {
    for (int r = 0; r < R; r++)
        _mm_prefetch((const char *)w + ((size_t)(row + r) * ld + k) * esize, _MM_HINT_T0);
}

/* ---------------------------------------------------------------- avx512: float32 FMAs */

/* out[t * ldo + r] = W[r0 + r, :] . X[t, :] for R rows and T tokens (compile-time constants
 * after inlining, as the dtype). */
static AI void dot16(const mb_mat *W, int r0, const float *X, int ldx, float *out, int ldo,
                     const int R, const int T, const mb_dtype dt) {
    const int n = W->cols;
    const size_t ld = (size_t)n, esize = mb_dtype_size(dt);
    __m512 acc[24]; /* R * T <= 24: with R weight chunks and an input, in the 32 zmm registers */
    for (int i = 0; i < R * T; i++) acc[i] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 w[8];
        /* streaming decode and short spans: the next row group's line now (see cpu.c) */
        if (T <= PREFETCH_T && (size_t)k * esize % 64 == 0)
            prefetch_rows(W->w, ld, r0 + R, R, (size_t)k, esize);
        for (int r = 0; r < R; r++) w[r] = load16(W->w, dt, (size_t)(r0 + r) * ld + (size_t)k);
        for (int t = 0; t < T; t++) {
            __m512 x = _mm512_loadu_ps(X + (size_t)t * (size_t)ldx + (size_t)k);
            for (int r = 0; r < R; r++) acc[t * R + r] = _mm512_fmadd_ps(w[r], x, acc[t * R + r]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            float s = _mm512_reduce_add_ps(acc[t * R + r]);
            const float *x = X + (size_t)t * (size_t)ldx;
            for (int kk = k; kk < n; kk++)
                s = fmaf(load1(W->w, dt, (size_t)(r0 + r) * ld + (size_t)kk), x[kk], s);
            out[(size_t)t * (size_t)ldo + (size_t)r] = s;
        }
}

/* rows [r0, r0 + rows) of W times nt tokens of X into out (ROW_GROUP x nt) */
static AI void group16(const mb_mat *W, int r0, int rows, const float *X, int ldx, int nt,
                       int rowwise, float *out, const mb_dtype dt) {
    int q = 0;
    if (rowwise &&
        nt <= ROWWISE_FLOAT_T) { /* decode, short spans: each row front to back (cpu.h) */
        for (; q < rows; q++)
            if (nt == 1)
                dot16(W, r0 + q, X, ldx, out + q, ROW_GROUP, 1, 1, dt);
            else
                dot16(W, r0 + q, X, ldx, out + q, ROW_GROUP, 1, 2, dt);
        return;
    }
    for (; q + 4 <= rows; q += 4) {
        int t = 0;
        for (; t + 6 <= nt; t += 6)
            dot16(W, r0 + q, X + (size_t)t * (size_t)ldx, ldx, out + t * ROW_GROUP + q, ROW_GROUP,
                  4, 6, dt);
        const float *x = X + (size_t)t * (size_t)ldx;
        float *o = out + t * ROW_GROUP + q;
        switch (nt - t) {
        case 5:
            dot16(W, r0 + q, x, ldx, o, ROW_GROUP, 4, 5, dt);
            break;
        case 4:
            dot16(W, r0 + q, x, ldx, o, ROW_GROUP, 4, 4, dt);
            break;
        case 3:
            dot16(W, r0 + q, x, ldx, o, ROW_GROUP, 4, 3, dt);
            break;
        case 2:
            dot16(W, r0 + q, x, ldx, o, ROW_GROUP, 4, 2, dt);
            break;
        case 1:
            dot16(W, r0 + q, x, ldx, o, ROW_GROUP, 4, 1, dt);
            break;
        default:
            break;
        }
    }
    for (; q < rows; q++)
        for (int t = 0; t < nt; t++)
            dot16(W, r0 + q, X + (size_t)t * (size_t)ldx, ldx, out + t * ROW_GROUP + q, ROW_GROUP,
                  1, 1, dt);
}

static inline void thread_rows(const matmul_task *m, int ti, int nt, int *r0, int *r1) {
    int groups = (m->n_rows + ROW_GROUP - 1) / ROW_GROUP;
    int g0 = (int)((long)groups * ti / nt), g1 = (int)((long)groups * (ti + 1) / nt);
    *r0 = g0 * ROW_GROUP;
    *r1 = g1 * ROW_GROUP < m->n_rows ? g1 * ROW_GROUP : m->n_rows;
}

void mb_matmul_avx512(void *ctx, int ti, int nt) {
    const matmul_task *m = ctx;
    int r_begin, r_end;
    thread_rows(m, ti, nt, &r_begin, &r_end);
    const int n = m->W->cols;
    float out[ROW_GROUP * TOKEN_BLOCK];
    /* many tokens and BF16 or q8 weights: each row group widened to F32 once per token block
     * (exact: the same bits as the direct path, which serves if the buffer cannot be had) */
    float *wide = m->W->dtype != MB_F32 && m->T >= WIDEN_MIN_T
                      ? malloc((size_t)ROW_GROUP * (size_t)n * 4)
                      : NULL;
    for (int t0 = 0; t0 < m->T; t0 += TOKEN_BLOCK) {
        int nt_blk = m->T - t0 < TOKEN_BLOCK ? m->T - t0 : TOKEN_BLOCK;
        const float *X = m->X + (size_t)t0 * (size_t)m->ldx;
        for (int r = r_begin; r < r_end; r += ROW_GROUP) {
            int rows = r_end - r < ROW_GROUP ? r_end - r : ROW_GROUP;
            if (wide) {
                size_t len = (size_t)rows * (size_t)n, base = (size_t)r * (size_t)n, i = 0;
                for (; i + 16 <= len; i += 16)
                    _mm512_storeu_ps(wide + i, load16(m->W->w, m->W->dtype, base + i));
                for (; i < len; i++) wide[i] = load1(m->W->w, m->W->dtype, base + i);
                mb_mat Wf = *m->W;
                Wf.w = wide;
                Wf.dtype = MB_F32;
                group16(&Wf, 0, rows, X, m->ldx, nt_blk, m->rowwise, out, MB_F32);
            } else if (m->W->dtype == MB_F32)
                group16(m->W, r, rows, X, m->ldx, nt_blk, m->rowwise, out, MB_F32);
            else if (m->W->dtype == MB_Q8)
                group16(m->W, r, rows, X, m->ldx, nt_blk, m->rowwise, out, MB_Q8);
            else
                group16(m->W, r, rows, X, m->ldx, nt_blk, m->rowwise, out, MB_BF16);
            mb_cpu_store_group(m, t0, nt_blk, r, rows, out);
        }
    }
    free(wide);
}

/* ---------------------------------------------------------------- avx512bf16: vdpbf16ps */

/* hi = bf16(x), lo = bf16(x - hi) for the first n32 inputs of T tokens, rows of n32 */
BF16_FN static void split_bf16(const float *X, int ldx, int T, int n32, uint16_t *hi,
                               uint16_t *lo) {
    for (int t = 0; t < T; t++)
        for (int k = 0; k < n32; k += 16) {
            __m512 x = _mm512_loadu_ps(X + (size_t)t * (size_t)ldx + (size_t)k);
            __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
            __m256i l = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, widen16(h)));
            size_t o = (size_t)t * (size_t)n32 + (size_t)k;
            _mm256_storeu_si256((__m256i *)(hi + o), h);
            _mm256_storeu_si256((__m256i *)(lo + o), l);
        }
}

/* out[t * ldo + r] = W[r0 + r, :] . X[t, :] with X given as hi, lo (rows of n32) and, for the
 * tail past n32, as float32 X. */
BF16_FN static AI void dot_bf16(const mb_mat *W, int r0, const uint16_t *hi, const uint16_t *lo,
                                int n32, const float *X, int ldx, float *out, int ldo, const int R,
                                const int T) {
    const int n = W->cols;
    const size_t ld = (size_t)n;
    const uint16_t *w = W->w;
    __m512 acc[24];
    for (int i = 0; i < R * T; i++) acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < n32; k += 32) {
        __m512i wv[8];
        if (T <= PREFETCH_T) prefetch_rows(w, ld, r0 + R, R, (size_t)k, 2);
        for (int r = 0; r < R; r++)
            wv[r] = _mm512_loadu_si512(w + (size_t)(r0 + r) * ld + (size_t)k);
        for (int t = 0; t < T; t++) {
            size_t o = (size_t)t * (size_t)n32 + (size_t)k;
            __m512bh h = (__m512bh)_mm512_loadu_si512(hi + o);
            __m512bh l = (__m512bh)_mm512_loadu_si512(lo + o);
            for (int r = 0; r < R; r++) {
                __m512 a = _mm512_dpbf16_ps(acc[t * R + r], (__m512bh)wv[r], h);
                acc[t * R + r] = _mm512_dpbf16_ps(a, (__m512bh)wv[r], l);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) {
            float s = _mm512_reduce_add_ps(acc[t * R + r]);
            const float *x = X + (size_t)t * (size_t)ldx;
            for (int kk = n32; kk < n; kk++)
                s = fmaf(bf16_to_f32(w[(size_t)(r0 + r) * ld + (size_t)kk]), x[kk], s);
            out[(size_t)t * (size_t)ldo + (size_t)r] = s;
        }
}

BF16_FN static void group_bf16(const mb_mat *W, int r0, int rows, const uint16_t *hi,
                               const uint16_t *lo, int n32, const float *X, int ldx, int nt,
                               int rowwise, float *out) {
    int q = 0;
    if (rowwise &&
        nt <= ROWWISE_FLOAT_T) { /* decode, short spans: each row front to back (cpu.h) */
        for (; q < rows; q++)
            if (nt == 1)
                dot_bf16(W, r0 + q, hi, lo, n32, X, ldx, out + q, ROW_GROUP, 1, 1);
            else
                dot_bf16(W, r0 + q, hi, lo, n32, X, ldx, out + q, ROW_GROUP, 1, 2);
        return;
    }
    for (; q + 4 <= rows; q += 4) {
        int t = 0;
        for (; t + 6 <= nt; t += 6)
            dot_bf16(W, r0 + q, hi + (size_t)t * (size_t)n32, lo + (size_t)t * (size_t)n32, n32,
                     X + (size_t)t * (size_t)ldx, ldx, out + t * ROW_GROUP + q, ROW_GROUP, 4, 6);
        const uint16_t *h = hi + (size_t)t * (size_t)n32, *l = lo + (size_t)t * (size_t)n32;
        const float *x = X + (size_t)t * (size_t)ldx;
        float *o = out + t * ROW_GROUP + q;
        switch (nt - t) {
        case 5:
            dot_bf16(W, r0 + q, h, l, n32, x, ldx, o, ROW_GROUP, 4, 5);
            break;
        case 4:
            dot_bf16(W, r0 + q, h, l, n32, x, ldx, o, ROW_GROUP, 4, 4);
            break;
        case 3:
            dot_bf16(W, r0 + q, h, l, n32, x, ldx, o, ROW_GROUP, 4, 3);
            break;
        case 2:
            dot_bf16(W, r0 + q, h, l, n32, x, ldx, o, ROW_GROUP, 4, 2);
            break;
        case 1:
            dot_bf16(W, r0 + q, h, l, n32, x, ldx, o, ROW_GROUP, 4, 1);
            break;
        default:
            break;
        }
    }
    for (; q < rows; q++)
        for (int t = 0; t < nt; t++)
            dot_bf16(W, r0 + q, hi + (size_t)t * (size_t)n32, lo + (size_t)t * (size_t)n32, n32,
                     X + (size_t)t * (size_t)ldx, ldx, out + t * ROW_GROUP + q, ROW_GROUP, 1, 1);
}

BF16_FN void mb_matmul_avx512bf16(void *ctx, int ti, int nt) {
    const matmul_task *m = ctx;
    if (m->W->dtype != MB_BF16) {
        mb_matmul_avx512(ctx, ti, nt);
        return;
    }
    int r_begin, r_end;
    thread_rows(m, ti, nt, &r_begin, &r_end);
    const int n32 = m->W->cols & ~31;
    /* this thread's hi and lo halves of a token block (cpu.c sizes the scratch) */
    uint16_t *hi = (uint16_t *)m->scratch + (size_t)ti * m->scratch_per_thread;
    uint16_t *lo = hi + (size_t)TOKEN_BLOCK * (size_t)n32;
    float out[ROW_GROUP * TOKEN_BLOCK];
    for (int t0 = 0; t0 < m->T; t0 += TOKEN_BLOCK) {
        int nt_blk = m->T - t0 < TOKEN_BLOCK ? m->T - t0 : TOKEN_BLOCK;
        const float *X = m->X + (size_t)t0 * (size_t)m->ldx;
        split_bf16(X, m->ldx, nt_blk, n32, hi, lo);
        for (int r = r_begin; r < r_end; r += ROW_GROUP) {
            int rows = r_end - r < ROW_GROUP ? r_end - r : ROW_GROUP;
            group_bf16(m->W, r, rows, hi, lo, n32, X, m->ldx, nt_blk, m->rowwise, out);
            mb_cpu_store_group(m, t0, nt_blk, r, rows, out);
        }
    }
}

/* ---------------------------------------------------------------- avx512vnni: vpdpbusd */

/* Each token's inputs as integers for q8 weights, in rows of ldq bytes: with amax = max|x|
 * over the token's n inputs and qmax = 127 (int8) or mb_cpu_int16_qmax(n) (int16),
 * q = round(x * (qmax / amax)) in [-qmax, qmax] (nearest, ties to even) and the token's scale
 * sx = amax / qmax (0 for a token of zeros); zeros past n. vpdpbusd multiplies unsigned by
 * signed bytes, so int8 inputs are stored as q + 128 (1..255) and each row's dot product takes
 * 128 times the weights' row sum back off (mb_cpu_q8_row_sums). A token's integers and scale
 * depend on its own inputs only. */
static void quantize_inputs(const float *X, int ldx, int T, int n, const int int16, size_t ldq,
                            uint8_t *xq, float *sx) {
    const int qmax = int16 ? mb_cpu_int16_qmax(n) : 127;
    const __m512i lo = _mm512_set1_epi32(-qmax), hi = _mm512_set1_epi32(qmax),
                  bias = _mm512_set1_epi32(int16 ? 0 : 128);
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * (size_t)ldx;
        uint8_t *q = xq + (size_t)t * ldq;
        __m512 mv = _mm512_setzero_ps();
        int k = 0;
        for (; k + 16 <= n; k += 16) mv = _mm512_max_ps(mv, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
        float amax = _mm512_reduce_max_ps(mv);
        for (; k < n; k++) amax = fmaxf(amax, fabsf(x[k]));
        float inv = amax > 0.0f ? (float)qmax / amax : 0.0f;
        sx[t] = amax / (float)qmax;
        const __m512 iv = _mm512_set1_ps(inv);
        for (k = 0; k + 16 <= n; k += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), iv));
            v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi), bias);
            if (int16)
                _mm256_storeu_si256((__m256i *)(q + 2 * k), _mm512_cvtepi32_epi16(v));
            else
                _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
        }
        for (; k < n; k++) {
            int v = (int)fmaxf((float)-qmax, fminf((float)qmax, nearbyintf(x[k] * inv)));
            if (int16)
                memcpy(q + 2 * k, &(int16_t){(int16_t)v}, 2);
            else
                q[k] = (uint8_t)(v + 128);
        }
        size_t used = (size_t)n * (int16 ? 2 : 1);
        memset(q + used, 0, ldq - used);
    }
}

/* out[t * ldo + r] = sx[t] * (W[r0 + r, :] . q[t, :]) with the int8 weights (their row scale
 * comes in mb_cpu_store_group) and int8 inputs through vpdpbusd, or int16 inputs through
 * vpdpwssd (the weights sign-extended): one 16-lane int32 accumulator per (row, token) over
 * the 64-byte chunks of inputs, the weights of the last one masked to the row's end. The
 * integer sums are exact, so the result is the same bits for every block shape. */
VNNI_FN static AI void dot_vnni(const mb_mat *W, int r0, const uint8_t *xq, size_t ldq,
                                const float *sx, float *out, int ldo, const int R, const int T,
                                const int int16) {
    const int n = W->cols, step = int16 ? 32 : 64; /* inputs per chunk */
    const size_t ld = (size_t)n;
    const int8_t *w = W->w;
    __m512i acc[24];
    for (int i = 0; i < R * T; i++) acc[i] = _mm512_setzero_si512();
    for (int k = 0; k < n; k += step) {
        const int left = n - k;
        const __mmask32 m32 = left >= 32 ? ~(__mmask32)0 : ~(__mmask32)0 >> (32 - left);
        const __mmask64 m64 = left >= 64 ? ~(__mmask64)0 : ~(__mmask64)0 >> (64 - left);
        __m512i wv[8];
        if (T <= PREFETCH_T && k % 64 == 0) prefetch_rows(w, ld, r0 + R, R, (size_t)k, 1);
        for (int r = 0; r < R; r++) {
            const int8_t *wr = w + (size_t)(r0 + r) * ld + (size_t)k;
            wv[r] = int16 ? _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m32, wr))
                          : _mm512_maskz_loadu_epi8(m64, wr);
        }
        for (int t = 0; t < T; t++) {
            __m512i x = _mm512_loadu_si512(xq + (size_t)t * ldq + (size_t)k * (int16 ? 2 : 1));
            for (int r = 0; r < R; r++)
                acc[t * R + r] = int16 ? _mm512_dpwssd_epi32(acc[t * R + r], x, wv[r])
                                       : _mm512_dpbusd_epi32(acc[t * R + r], x, wv[r]);
        }
    }
    const int32_t *sums = mb_cpu_q8_row_sums(W);
    /* unrolled whole, or GCC keeps acc in memory as well and stores every vpdpbusd's result
     * (half the speed of a block of 4 x 6) */
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t s = _mm512_reduce_add_epi32(acc[t * R + r]);
            if (!int16) s -= 128 * sums[r0 + r];
            out[(size_t)t * (size_t)ldo + (size_t)r] = (float)s * sx[t];
        }
}

VNNI_FN static AI void group_vnni(const mb_mat *W, int r0, int rows, const uint8_t *xq, size_t ldq,
                                  const float *sx, int nt, float *out, const int int16) {
    int q = 0;
    for (; q + 4 <= rows; q += 4) {
        int t = 0;
        for (; t + 6 <= nt; t += 6)
            dot_vnni(W, r0 + q, xq + (size_t)t * ldq, ldq, sx + t, out + t * ROW_GROUP + q,
                     ROW_GROUP, 4, 6, int16);
        const uint8_t *x = xq + (size_t)t * ldq;
        float *o = out + t * ROW_GROUP + q;
        switch (nt - t) {
        case 5:
            dot_vnni(W, r0 + q, x, ldq, sx + t, o, ROW_GROUP, 4, 5, int16);
            break;
        case 4:
            dot_vnni(W, r0 + q, x, ldq, sx + t, o, ROW_GROUP, 4, 4, int16);
            break;
        case 3:
            dot_vnni(W, r0 + q, x, ldq, sx + t, o, ROW_GROUP, 4, 3, int16);
            break;
        case 2:
            dot_vnni(W, r0 + q, x, ldq, sx + t, o, ROW_GROUP, 4, 2, int16);
            break;
        case 1:
            dot_vnni(W, r0 + q, x, ldq, sx + t, o, ROW_GROUP, 4, 1, int16);
            break;
        default:
            break;
        }
    }
    for (; q < rows; q++)
        for (int t = 0; t < nt; t++)
            dot_vnni(W, r0 + q, xq + (size_t)t * ldq, ldq, sx + t, out + t * ROW_GROUP + q,
                     ROW_GROUP, 1, 1, int16);
}

/* The 8 lanes' sums of a[0..7] in order: each 512-bit accumulator's halves added, then pairwise
 * horizontal adds (integers, so any order gives the same sums). */
static AI __m256i reduce8_epi32(const __m512i *a) {
    __m256i v[8];
    for (int i = 0; i < 8; i++)
        v[i] = _mm256_add_epi32(_mm512_castsi512_si256(a[i]), _mm512_extracti64x4_epi64(a[i], 1));
    __m256i p = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i q = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(p, q, 0x20),
                            _mm256_permute2x128_si256(p, q, 0x31));
}

/* One row's integer dot products with T tokens' inputs (rows of ldq bytes), each as 16 int32
 * lanes in acc[t]: the row's weights read front to back, 64 bytes at a time (vpdpbusd, or two
 * vpdpwssd on int16 inputs), the last chunk masked to the row's end. */
VNNI_FN static AI void row_vnni(const int8_t *w, const uint8_t *xq, size_t ldq, int n, __m512i *acc,
                                const int T, const int int16) {
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_si512();
    int k = 0;
    for (; k + 64 <= n; k += 64)
        if (int16) {
            const __m256i *wk = (const __m256i *)(w + k);
            __m512i lo = _mm512_cvtepi8_epi16(_mm256_loadu_si256(wk)),
                    hi = _mm512_cvtepi8_epi16(_mm256_loadu_si256(wk + 1));
            for (int t = 0; t < T; t++) {
                const uint8_t *x = xq + (size_t)t * ldq + 2 * (size_t)k;
                acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_loadu_si512(x), lo);
                acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_loadu_si512(x + 64), hi);
            }
        } else {
            __m512i wv = _mm512_loadu_si512(w + k);
            for (int t = 0; t < T; t++)
                acc[t] = _mm512_dpbusd_epi32(
                    acc[t], _mm512_loadu_si512(xq + (size_t)t * ldq + (size_t)k), wv);
        }
    for (; k < n; k += int16 ? 32 : 64) {
        const int left = n - k;
        if (int16) {
            const __mmask32 m = left >= 32 ? ~(__mmask32)0 : ~(__mmask32)0 >> (32 - left);
            __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w + k));
            for (int t = 0; t < T; t++)
                acc[t] = _mm512_dpwssd_epi32(
                    acc[t], _mm512_loadu_si512(xq + (size_t)t * ldq + 2 * (size_t)k), wv);
        } else {
            __m512i wv = _mm512_maskz_loadu_epi8(~(__mmask64)0 >> (64 - left), w + k);
            for (int t = 0; t < T; t++)
                acc[t] = _mm512_dpbusd_epi32(
                    acc[t], _mm512_loadu_si512(xq + (size_t)t * ldq + (size_t)k), wv);
        }
    }
}

/* out[t * ROW_GROUP + i] = sx[t] * (W[r0 + i, :] . q[t, :]) for i < rows <= ROW_GROUP and
 * T <= ROWWISE_T tokens: decode at small batches and short spans, where the time is the
 * weights' stream. The rows are read one after the other, so a thread's share of W is one
 * front-to-back stream that the hardware prefetcher follows (dot_vnni's blocks read rows side
 * by side: 8 of them at one token streamed half as fast on Zen 4), and each token's 8 rows'
 * lanes are summed together. The same integer sums as dot_vnni, and the same float steps after. */
VNNI_FN static AI void rows_vnni(const mb_mat *W, int r0, int rows, const uint8_t *xq, size_t ldq,
                                 const float *sx, float *out, const int T, const int int16) {
    const int n = W->cols;
    const int8_t *w = (const int8_t *)W->w + (size_t)r0 * (size_t)n;
    __m512i acc[ROWWISE_T][ROW_GROUP], a[ROWWISE_T];
    for (int i = 0; i < ROW_GROUP; i++) {
        if (i < rows)
            row_vnni(w + (size_t)i * (size_t)n, xq, ldq, n, a, T, int16);
        else
            for (int t = 0; t < T; t++) a[t] = _mm512_setzero_si512();
        for (int t = 0; t < T; t++) acc[t][i] = a[t];
    }
    const __mmask8 m = (__mmask8)((1u << rows) - 1);
    const __m256i corr =
        int16 ? _mm256_setzero_si256()
              : _mm256_slli_epi32(_mm256_maskz_loadu_epi32(m, mb_cpu_q8_row_sums(W) + r0), 7);
    for (int t = 0; t < T; t++) {
        __m256i s = _mm256_sub_epi32(reduce8_epi32(acc[t]), corr);
        _mm256_storeu_ps(out + t * ROW_GROUP,
                         _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(sx[t])));
    }
}

/* rows_vnni for nt (1..ROWWISE_T) tokens, the count a compile-time constant in each call */
VNNI_FN static AI void group_rowwise(const mb_mat *W, int r0, int rows, const uint8_t *xq,
                                     size_t ldq, const float *sx, int nt, float *out,
                                     const int int16) {
    switch (nt) {
    case 1:
        rows_vnni(W, r0, rows, xq, ldq, sx, out, 1, int16);
        break;
    case 2:
        rows_vnni(W, r0, rows, xq, ldq, sx, out, 2, int16);
        break;
    case 3:
        rows_vnni(W, r0, rows, xq, ldq, sx, out, 3, int16);
        break;
    default:
        rows_vnni(W, r0, rows, xq, ldq, sx, out, 4, int16);
        break;
    }
}

/* one function per input width, not inlined into the caller: inlined, acc goes to memory again
 * (see dot_vnni) */
VNNI_FN __attribute__((noinline)) static void group_vnni8(const mb_mat *W, int r0, int rows,
                                                          const uint8_t *xq, size_t ldq,
                                                          const float *sx, int nt, float *out) {
    group_vnni(W, r0, rows, xq, ldq, sx, nt, out, 0);
}

VNNI_FN __attribute__((noinline)) static void group_vnni16(const mb_mat *W, int r0, int rows,
                                                           const uint8_t *xq, size_t ldq,
                                                           const float *sx, int nt, float *out) {
    group_vnni(W, r0, rows, xq, ldq, sx, nt, out, 1);
}

VNNI_FN __attribute__((noinline)) static void group_rowwise8(const mb_mat *W, int r0, int rows,
                                                             const uint8_t *xq, size_t ldq,
                                                             const float *sx, int nt, float *out) {
    group_rowwise(W, r0, rows, xq, ldq, sx, nt, out, 0);
}

VNNI_FN __attribute__((noinline)) static void group_rowwise16(const mb_mat *W, int r0, int rows,
                                                              const uint8_t *xq, size_t ldq,
                                                              const float *sx, int nt, float *out) {
    group_rowwise(W, r0, rows, xq, ldq, sx, nt, out, 1);
}

VNNI_FN void mb_matmul_avx512vnni(void *ctx, int ti, int nt) {
    const matmul_task *m = ctx;
    if (m->W->dtype != MB_Q8) {
        mb_matmul_avx512bf16(ctx, ti, nt);
        return;
    }
    int r_begin, r_end;
    thread_rows(m, ti, nt, &r_begin, &r_end);
    const int n = m->W->cols, int16 = m->int16_inputs;
    const size_t ldq = int16 ? (size_t)(n + 31) / 32 * 64 : (size_t)(n + 63) / 64 * 64;
    /* this thread's integer inputs of a token block and their scales (cpu.c sizes the
     * scratch) */
    uint8_t *xq = (uint8_t *)((uint16_t *)m->scratch + (size_t)ti * m->scratch_per_thread);
    float *sx = (float *)(xq + (size_t)TOKEN_BLOCK * ldq);
    float out[ROW_GROUP * TOKEN_BLOCK];
    for (int t0 = 0; t0 < m->T; t0 += TOKEN_BLOCK) {
        int nt_blk = m->T - t0 < TOKEN_BLOCK ? m->T - t0 : TOKEN_BLOCK;
        quantize_inputs(m->X + (size_t)t0 * (size_t)m->ldx, m->ldx, nt_blk, n, int16, ldq, xq, sx);
        for (int r = r_begin; r < r_end; r += ROW_GROUP) {
            int rows = r_end - r < ROW_GROUP ? r_end - r : ROW_GROUP;
            if (nt_blk <= ROWWISE_T)
                (int16 ? group_rowwise16 : group_rowwise8)(m->W, r, rows, xq, ldq, sx, nt_blk, out);
            else if (int16)
                group_vnni16(m->W, r, rows, xq, ldq, sx, nt_blk, out);
            else
                group_vnni8(m->W, r, rows, xq, ldq, sx, nt_blk, out);
            mb_cpu_store_group(m, t0, nt_blk, r, rows, out);
        }
    }
}
