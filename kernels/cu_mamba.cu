/* cu_mamba.cu: the per-token and per-sequence kernels of a Mamba-1 block (../shared/DESIGN.md,
 * "The maths"): embedding gather, RMSNorm / LayerNorm, the causal depthwise conv with its
 * window carried in the slot, the selective scan from each slot's state, and rollback.
 *
 * States are addressed in place by slot index: sequence s reads buffer cur[s] of slot[s] and
 * writes the other one, so the state before a span survives and rollback replays the span's
 * saved inputs from it. Conv, scan and rollback share conv_step / scan_step, so a rolled-back
 * state is bit-identical to feeding the kept tokens (compiled with --fmad=false: no contraction
 * that could differ between two inlined copies). The plain C reference is model/cpu.c. */
#include <cuda_bf16.h>

#include "cu_kernels.h"

/* Shapes compiled: d_conv 2-4 (4 in every Mamba checkpoint), d_state 4, 8, 16, 32 or 64 (16 in
 * every Mamba-1 checkpoint); the backend refuses others at load (cu_backend.cu). */
#define NORM_T     256
#define CHAN_T     128 /* channels per block of conv, scan and rollback */
#define SPAN_CHUNK 8   /* tokens of a span whose inputs conv and scan load at once */

static __device__ __forceinline__ float silu_f(float x) {
    return x / (1.0f + expf(-x));
}

/* ---------------------------------------------------------------- embedding */

__global__ void k_embed(const void *W, int bf16, const int32_t *tokens, float *h, int D) {
    const int t = blockIdx.x;
    const size_t base = (size_t)tokens[t] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v;
        if (bf16)
            v = __uint_as_float((uint32_t) static_cast<const unsigned short *>(W)[base + i] << 16);
        else
            v = static_cast<const float *>(W)[base + i];
        h[(size_t)t * D + i] = v;
    }
}

void cu_embed(const cu_mat *embed, const cu_batch *b, float *h, int D, cudaStream_t st) {
    if (b->T) k_embed<<<b->T, 128, 0, st>>>(embed->w, embed->dtype != 0, b->tokens, h, D);
}

/* ---------------------------------------------------------------- norms */

/* Sum over the block in a fixed order: each thread's strided partial, a butterfly inside each
 * warp, then the warps' sums one after another. Every thread gets the result. */
static __device__ float block_sum(float v, float *sh) {
#pragma unroll
    for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    const int warp = threadIdx.x >> 5;
    __syncthreads(); /* sh may still be read from the last call */
    if ((threadIdx.x & 31) == 0) sh[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < NORM_T / 32; w++) s += sh[w];
    return s;
}

__global__ void __launch_bounds__(NORM_T)
    k_norm(const float *x, const int *rows, float *out, const float *w, const float *bias, int D,
           float eps) {
    __shared__ float sh[NORM_T / 32];
    const int i = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[i] : i) * D;
    float *o = out + (size_t)i * D;
    if (!bias) { /* RMSNorm */
        float ss = 0.0f;
        for (int j = threadIdx.x; j < D; j += NORM_T) ss = fmaf(xr[j], xr[j], ss);
        const float inv = 1.0f / sqrtf(block_sum(ss, sh) / (float)D + eps);
        for (int j = threadIdx.x; j < D; j += NORM_T) o[j] = xr[j] * inv * w[j];
        return;
    }
    float s = 0.0f; /* LayerNorm: mean, then the variance around it */
    for (int j = threadIdx.x; j < D; j += NORM_T) s += xr[j];
    const float mean = block_sum(s, sh) / (float)D;
    float v = 0.0f;
    for (int j = threadIdx.x; j < D; j += NORM_T) v = fmaf(xr[j] - mean, xr[j] - mean, v);
    const float inv = 1.0f / sqrtf(block_sum(v, sh) / (float)D + eps);
    for (int j = threadIdx.x; j < D; j += NORM_T) o[j] = (xr[j] - mean) * inv * w[j] + bias[j];
}

void cu_norm(const float *x, const int *rows, int n, float *out, const float *w, const float *bias,
             int D, float eps, cudaStream_t st) {
    if (n) k_norm<<<n, NORM_T, 0, st>>>(x, rows, out, w, bias, D, eps);
}

/* ---------------------------------------------------------------- conv and scan steps */

/* One conv + SiLU step of channel c: win[0..K-2] is the window, oldest first; shifts x in. */
template <int K>
static __device__ __forceinline__ float conv_step(float *win, const float *cw, int E, float bias,
                                                  float x) {
    float acc = bias;
#pragma unroll
    for (int k = 0; k < K - 1; k++) acc = fmaf(cw[(size_t)k * E], win[k], acc);
    acc = fmaf(cw[(size_t)(K - 1) * E], x, acc);
#pragma unroll
    for (int k = 0; k + 1 < K - 1; k++) win[k] = win[k + 1];
    if (K > 1) win[K - 2] = x;
    return silu_f(acc);
}

/* One scan step of channel c: s = exp(dt A) s + B (dt u); returns s . C when C is given. */
template <int N>
static __device__ __forceinline__ float scan_step(float *s, const float *A, float dt, float u,
                                                  const float *B, const float *C) {
    const float du = dt * u;
    float y = 0.0f;
#pragma unroll
    for (int n = 0; n < N; n++) {
        s[n] = fmaf(expf(dt * A[n]), s[n], B[n] * du);
        if (C) y = fmaf(s[n], C[n], y);
    }
    return y;
}

static __device__ __forceinline__ float *slot_buf(float *state, size_t sf, int slot, int which) {
    return state + ((size_t)slot * 2 + (size_t)which) * sf;
}

/* ---------------------------------------------------------------- conv */

/* Thread = (sequence, channel); walks its span in order. */
template <int K>
__global__ void __launch_bounds__(CHAN_T)
    k_conv(const float *conv_w, const float *conv_b, const int *off, const int *slot,
           const int *cur, float *state, size_t sf, size_t lofs, const float *xz, float *u,
           float *j_xin, int E) {
    const int c = blockIdx.x * CHAN_T + threadIdx.x, s = blockIdx.y;
    if (c >= E) return;
    const float *src = slot_buf(state, sf, slot[s], cur[s]) + lofs;
    float *dst = slot_buf(state, sf, slot[s], !cur[s]) + lofs;
    float win[K > 1 ? K - 1 : 1];
#pragma unroll
    for (int k = 0; k < K - 1; k++) win[k] = src[(size_t)k * E + c];
    const float bias = conv_b[c];
    const int end = off[s + 1];
    for (int t0 = off[s]; t0 < end; t0 += SPAN_CHUNK) {
        /* a chunk's inputs are loaded before any step: one memory latency per chunk, not per
         * token, on long spans (prefill, verification) */
        float xs[SPAN_CHUNK];
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++)
            xs[i] = t0 + i < end ? xz[(size_t)(t0 + i) * 2 * E + c] : 0.0f;
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (t0 + i >= end) break;
            const size_t t = (size_t)(t0 + i);
            u[t * E + c] = conv_step<K>(win, conv_w + c, E, bias, xs[i]);
            j_xin[t * E + c] = xs[i];
        }
    }
#pragma unroll
    for (int k = 0; k < K - 1; k++) dst[(size_t)k * E + c] = win[k];
}

template <int K>
static void launch_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                        const float *xz, float *u, int E, cudaStream_t st) {
    dim3 grid((E + CHAN_T - 1) / CHAN_T, b->n_seq);
    k_conv<K><<<grid, CHAN_T, 0, st>>>(L->conv_w, L->conv_b, b->off, b->slot, b->cur, ls->state,
                                       ls->state_floats, ls->layer_ofs, xz, u, ls->j_xin, E);
}

void cu_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *xz,
             float *u, int E, int K, cudaStream_t st) {
    if (!b->n_seq) return;
    switch (K) { /* the backend refuses other widths at load */
    case 2:
        launch_conv<2>(L, b, ls, xz, u, E, st);
        break;
    case 3:
        launch_conv<3>(L, b, ls, xz, u, E, st);
        break;
    default:
        launch_conv<4>(L, b, ls, xz, u, E, st);
        break;
    }
}

/* ---------------------------------------------------------------- scan */

/* dt of channel c for one token: softplus(dt_proj[c, :] . dt_low + dt_bias[c]), the row's R
 * products summed in order (8 at a time when rows are 16-byte aligned: the same order). */
static __device__ __forceinline__ float dt_of(const void *W, int bf16, int R, int c, const float *x,
                                              float bias) {
    float d = 0.0f;
    if (bf16) {
        const unsigned short *w = static_cast<const unsigned short *>(W) + (size_t)c * R;
        int r = 0;
        if (R % 8 == 0)
            for (; r < R; r += 8) {
                const uint4 v = *reinterpret_cast<const uint4 *>(w + r);
                const uint32_t q[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    d = fmaf(__uint_as_float(q[i] << 16), x[r + 2 * i], d);
                    d = fmaf(__uint_as_float(q[i] & 0xffff0000u), x[r + 2 * i + 1], d);
                }
            }
        for (; r < R; r++) d = fmaf(__uint_as_float((uint32_t)w[r] << 16), x[r], d);
    } else {
        const float *w = static_cast<const float *>(W) + (size_t)c * R;
        for (int r = 0; r < R; r++) d = fmaf(w[r], x[r], d);
    }
    d = d + bias;
    return d > 20.0f ? d : log1pf(expf(d));
}

/* Thread = (sequence, channel), its N states in registers, walking its span in order. dt is
 * computed here from dt_low (dt_proj fused in) and kept in j_dt for rollback. */
template <int N>
__global__ void __launch_bounds__(CHAN_T)
    k_scan(const float *A_all, const float *Dv, const int *off, const int *slot, const int *cur,
           float *state, size_t sf, size_t lofs, const float *u, const void *Wdt, int wdt_bf16,
           const float *dt_b, float *j_dt, const float *dbl, const float *xz, float *y, float *j_B,
           int E, int R) {
    extern __shared__ float rows_sh[]; /* SPAN_CHUNK rows of dbl: [dt_low, B, C] */
    const int c = blockIdx.x * CHAN_T + threadIdx.x, s = blockIdx.y;
    const bool live = c < E; /* every thread joins the block's loads of dbl rows */
    const float *src = slot_buf(state, sf, slot[s], cur[s]) + lofs + (size_t)c * N;
    float *dst = slot_buf(state, sf, slot[s], !cur[s]) + lofs + (size_t)c * N;
    float st[N], A[N];
#pragma unroll
    for (int n = 0; n < N; n++)
        st[n] = live ? src[n] : 0.0f, A[n] = live ? A_all[(size_t)c * N + n] : 0.0f;
    const float Dc = live ? Dv[c] : 0.0f, bias = live ? dt_b[c] : 0.0f;
    const int ld = R + 2 * N, end = off[s + 1];
    for (int t0 = off[s]; t0 < end; t0 += SPAN_CHUNK) {
        /* the chunk's dbl rows (shared by every channel) into shared memory, and this
         * channel's u and z into registers, before any step */
        const int n_t = end - t0 < SPAN_CHUNK ? end - t0 : SPAN_CHUNK;
        __syncthreads(); /* the last chunk's rows are no longer read */
        for (int i = threadIdx.x; i < n_t * ld; i += CHAN_T) rows_sh[i] = dbl[(size_t)t0 * ld + i];
        float us[SPAN_CHUNK], zs[SPAN_CHUNK];
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            const bool in = live && i < n_t;
            us[i] = in ? u[(size_t)(t0 + i) * E + c] : 0.0f;
            zs[i] = in ? xz[(size_t)(t0 + i) * 2 * E + E + c] : 0.0f;
        }
        __syncthreads();
        if (!live) continue;
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (i >= n_t) break;
            const size_t t = (size_t)(t0 + i);
            const float *row = rows_sh + i * ld, *B = row + R, *C = B + N;
            const float dt = dt_of(Wdt, wdt_bf16, R, c, row, bias);
            j_dt[t * E + c] = dt;
            float yt = scan_step<N>(st, A, dt, us[i], B, C);
            yt = yt + Dc * us[i];
            y[t * E + c] = yt * silu_f(zs[i]);
            if (c < N) j_B[t * N + c] = B[c]; /* the span's B, for rollback */
        }
    }
    if (!live) return;
#pragma unroll
    for (int n = 0; n < N; n++) dst[n] = st[n];
}

template <int N>
static void launch_scan(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                        const float *u, const float *dbl, const float *xz, float *y, int E, int R,
                        int K, cudaStream_t st) {
    dim3 grid((E + CHAN_T - 1) / CHAN_T, b->n_seq);
    const size_t lofs = ls->layer_ofs + (size_t)E * (size_t)(K - 1);
    const size_t shared = (size_t)SPAN_CHUNK * (size_t)(R + 2 * N) * sizeof(float);
    k_scan<N><<<grid, CHAN_T, shared, st>>>(
        L->A, L->D, b->off, b->slot, b->cur, ls->state, ls->state_floats, lofs, u, L->dt_proj.w,
        L->dt_proj.dtype != 0, L->dt_b, ls->j_dt, dbl, xz, y, ls->j_B, E, R);
}

void cu_scan(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *u,
             const float *dbl, const float *xz, float *y, int E, int N, int R, int K,
             cudaStream_t st) {
    if (!b->n_seq) return;
    switch (N) { /* the backend refuses other sizes at load */
    case 4:
        launch_scan<4>(L, b, ls, u, dbl, xz, y, E, R, K, st);
        break;
    case 8:
        launch_scan<8>(L, b, ls, u, dbl, xz, y, E, R, K, st);
        break;
    case 16:
        launch_scan<16>(L, b, ls, u, dbl, xz, y, E, R, K, st);
        break;
    case 32:
        launch_scan<32>(L, b, ls, u, dbl, xz, y, E, R, K, st);
        break;
    default:
        launch_scan<64>(L, b, ls, u, dbl, xz, y, E, R, K, st);
        break;
    }
}

/* ---------------------------------------------------------------- rollback */

/* Thread = (layer, channel) of one slot: the state before the span, advanced by the first
 * n_keep saved inputs through conv_step and scan_step, as the forward advanced it. */
template <int K, int N>
__global__ void __launch_bounds__(CHAN_T)
    k_rollback(const cu_layer *layers, float *state, size_t sf, int slot, int cur,
               const float *j_xin, const float *j_dt, const float *j_B, int max_tokens, int j_start,
               int n_keep, int E) {
    const int c = blockIdx.x * CHAN_T + threadIdx.x, l = blockIdx.y;
    if (c >= E) return;
    const cu_layer *L = &layers[l];
    const size_t lofs = (size_t)l * (size_t)E * (size_t)(K - 1 + N);
    const float *src = slot_buf(state, sf, slot, !cur) + lofs;
    float *dst = slot_buf(state, sf, slot, cur) + lofs;
    float win[K > 1 ? K - 1 : 1], st[N], A[N];
#pragma unroll
    for (int k = 0; k < K - 1; k++) win[k] = src[(size_t)k * E + c];
    const float *ssrc = src + (size_t)E * (K - 1) + (size_t)c * N;
#pragma unroll
    for (int n = 0; n < N; n++) st[n] = ssrc[n], A[n] = L->A[(size_t)c * N + n];
    const float bias = L->conv_b[c];
    const size_t lt = (size_t)l * (size_t)max_tokens;
    for (int i = 0; i < n_keep; i++) {
        const size_t t = lt + (size_t)(j_start + i);
        const float ut = conv_step<K>(win, L->conv_w + c, E, bias, j_xin[t * E + c]);
        scan_step<N>(st, A, j_dt[t * E + c], ut, j_B + t * N, nullptr);
    }
#pragma unroll
    for (int k = 0; k < K - 1; k++) dst[(size_t)k * E + c] = win[k];
    float *sdst = dst + (size_t)E * (K - 1) + (size_t)c * N;
#pragma unroll
    for (int n = 0; n < N; n++) sdst[n] = st[n];
}

template <int K, int N>
static void launch_rollback(const cu_layer *layers, int n_layer, float *state, size_t sf, int slot,
                            int cur, const float *j_xin, const float *j_dt, const float *j_B,
                            int max_tokens, int j_start, int n_keep, int E, cudaStream_t st) {
    dim3 grid((E + CHAN_T - 1) / CHAN_T, n_layer);
    k_rollback<K, N><<<grid, CHAN_T, 0, st>>>(layers, state, sf, slot, cur, j_xin, j_dt, j_B,
                                              max_tokens, j_start, n_keep, E);
}

template <int K>
static void rollback_n(const cu_layer *layers, int n_layer, float *state, size_t sf, int slot,
                       int cur, const float *j_xin, const float *j_dt, const float *j_B,
                       int max_tokens, int j_start, int n_keep, int E, int N, cudaStream_t st) {
    switch (N) {
    case 4:
        launch_rollback<K, 4>(layers, n_layer, state, sf, slot, cur, j_xin, j_dt, j_B, max_tokens,
                              j_start, n_keep, E, st);
        break;
    case 8:
        launch_rollback<K, 8>(layers, n_layer, state, sf, slot, cur, j_xin, j_dt, j_B, max_tokens,
                              j_start, n_keep, E, st);
        break;
    case 16:
        launch_rollback<K, 16>(layers, n_layer, state, sf, slot, cur, j_xin, j_dt, j_B, max_tokens,
                               j_start, n_keep, E, st);
        break;
    case 32:
        launch_rollback<K, 32>(layers, n_layer, state, sf, slot, cur, j_xin, j_dt, j_B, max_tokens,
                               j_start, n_keep, E, st);
        break;
    default:
        launch_rollback<K, 64>(layers, n_layer, state, sf, slot, cur, j_xin, j_dt, j_B, max_tokens,
                               j_start, n_keep, E, st);
        break;
    }
}

void cu_rollback(const cu_layer *layers_dev, int n_layer, float *state, size_t state_floats,
                 int slot, int cur, const float *j_xin, const float *j_dt, const float *j_B,
                 int max_tokens, int j_start, int n_keep, int E, int N, int K, cudaStream_t st) {
    switch (K) { /* the backend refuses other widths at load */
    case 2:
        rollback_n<2>(layers_dev, n_layer, state, state_floats, slot, cur, j_xin, j_dt, j_B,
                      max_tokens, j_start, n_keep, E, N, st);
        break;
    case 3:
        rollback_n<3>(layers_dev, n_layer, state, state_floats, slot, cur, j_xin, j_dt, j_B,
                      max_tokens, j_start, n_keep, E, N, st);
        break;
    default:
        rollback_n<4>(layers_dev, n_layer, state, state_floats, slot, cur, j_xin, j_dt, j_B,
                      max_tokens, j_start, n_keep, E, N, st);
        break;
    }
}
