/* cu_ops.h: the work of one thread block, for each operation of a Mamba forward, as device
 * functions. The one-kernel-per-operation launches (cu_matmul.cu, cu_mamba.cu) and the
 * persistent step kernel (cu_step.cu) run the same functions, so a token's result is the same
 * bits whichever runs it (batch invariance across paths; tests/gpu proves it: a sequence alone
 * takes the step kernel, the same sequence in a large batch the per-operation kernels).
 *
 * Every block has CU_BLOCK threads. A block function is given its block coordinates (bx, by)
 * and the shared memory it may use; block-uniform early returns only, and a caller that runs
 * several items one after another puts a __syncthreads() between them (shared memory reuse). */
#ifndef CU_OPS_H
#define CU_OPS_H

#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include "cu_kernels.h"

#define CU_BLOCK 256

/* MB_CUDA_TRACE=1 (cu_backend.cu): a buffer of a count and then one time (ns) per kernel, the
 * moment its first block got past pdl_wait_then_release, so the time from one kernel's entry to
 * the next one's is what the first kernel adds to the forward. NULL: no trace. Each translation
 * unit has its copy, set by trace_bind through the unit's cu_trace_bind_* function. */
static __device__ unsigned long long *ops_trace;
static inline cudaError_t trace_bind(unsigned long long *buf) {
    return cudaMemcpyToSymbol(ops_trace, &buf, sizeof buf);
}

/* The start of every kernel launched by cu_launch, after any weight prefetch and before it reads
 * what the kernel before wrote or writes anything: waits until that kernel has completed (its
 * writes visible), then lets the next kernel start. No-ops without a programmatic predecessor. */
static __device__ __forceinline__ void pdl_wait_then_release() {
    /* the trace pointer is set before the forward: read while the kernel before still runs */
    unsigned long long *trace = blockIdx.x | blockIdx.y | threadIdx.x ? nullptr : ops_trace;
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (trace) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        const unsigned long long i = atomicAdd(trace, 1ull);
        if (i < CU_TRACE_MAX) trace[1 + i] = t;
    }
}

/* What a block function runs once it has issued the loads that do not depend on the kernel
 * before (weights, the states of the sequences): PdlWait in the per-operation kernels, so those
 * loads overlap the kernel before; nothing in the step kernel, whose phases are ordered by grid
 * barriers. The state a scan reads before the wait was written two kernels or more before it (or
 * by the forward before), which completed before the kernel before it passed its own wait. */
struct NoPre {
    __device__ __forceinline__ void operator()() const {}
};
struct PdlWait {
    __device__ __forceinline__ void operator()() const { pdl_wait_then_release(); }
};

/* Fetches bytes (a multiple of 16, from a 16-byte aligned address) into L2: Hopper's bulk
 * prefetch, one instruction for a block's weight rows. */
static __device__ __forceinline__ void prefetch_l2(const void *p, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

/* Fetches the line holding p into the SM's L1 (no register waits for it). */
static __device__ __forceinline__ void prefetch_l1(const void *p) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

/* ---------------------------------------------------------------- small helpers */

static __device__ __forceinline__ float silu_f(float x) {
    return x / (1.0f + expf(-x));
}

/* dt's softplus, linear past 20 (where log1p(exp(d)) == d in float). */
static __device__ __forceinline__ float softplus_f(float d) {
    return d > 20.0f ? d : log1pf(expf(d));
}

static __device__ __forceinline__ float bf16_bits(uint32_t h) {
    return __uint_as_float(h << 16);
}

static __device__ __forceinline__ void load8(const float *w, float *out) {
    float4 a = *reinterpret_cast<const float4 *>(w), b = *reinterpret_cast<const float4 *>(w + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

static __device__ __forceinline__ void load8(const __nv_bfloat16 *w, float *out) {
    uint4 v = *reinterpret_cast<const uint4 *>(w);
    const uint32_t q[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = bf16_bits(q[i] & 0xffffu);
        out[2 * i + 1] = bf16_bits(q[i] >> 16);
    }
}

static __device__ __forceinline__ float load1(const float *w) {
    return *w;
}
static __device__ __forceinline__ float load1(const __nv_bfloat16 *w) {
    return bf16_bits(*reinterpret_cast<const unsigned short *>(w));
}

static __device__ __forceinline__ float *slot_buf(float *state, size_t sf, int slot, int which) {
    return state + ((size_t)slot * 2 + (size_t)which) * sf;
}

/* ---------------------------------------------------------------- embedding */

static __device__ void embed_block(const void *W, int bf16, const int32_t *tokens, float *h, int D,
                                   int t) {
    const size_t base = (size_t)tokens[t] * D;
    for (int i = threadIdx.x; i < D; i += CU_BLOCK) {
        float v;
        if (bf16)
            v = __uint_as_float((uint32_t) static_cast<const unsigned short *>(W)[base + i] << 16);
        else
            v = static_cast<const float *>(W)[base + i];
        h[(size_t)t * D + i] = v;
    }
}

/* ---------------------------------------------------------------- norms
 *
 * A row's sum is fixed in order: thread j of the block sums elements j, j + 256, ... (strided
 * partials), a butterfly adds each warp's 32 partials, then the 8 warp sums are added in order.
 * norm_stats_block computes the same sums for several rows at once, so a norm folded into a
 * matrix product is bit-identical to norm_block's output. */

static __device__ float block_sum(float v, float *sh) {
#pragma unroll
    for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    const int warp = threadIdx.x >> 5;
    __syncthreads(); /* sh may still be read from the last call */
    if ((threadIdx.x & 31) == 0) sh[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < CU_BLOCK / 32; w++) s += sh[w];
    return s;
}

/* out[i] = norm(x[row]) * w (+ bias): LayerNorm with a bias, RMSNorm without. */
static __device__ void norm_block(const float *x, const int *rows, float *out, const float *w,
                                  const float *bias, int D, float eps, int i, float *sh) {
    const float *xr = x + (size_t)(rows ? rows[i] : i) * D;
    float *o = out + (size_t)i * D;
    if (!bias) { /* RMSNorm */
        float ss = 0.0f;
        for (int j = threadIdx.x; j < D; j += CU_BLOCK) ss = fmaf(xr[j], xr[j], ss);
        const float inv = 1.0f / sqrtf(block_sum(ss, sh) / (float)D + eps);
        for (int j = threadIdx.x; j < D; j += CU_BLOCK) o[j] = xr[j] * inv * w[j];
        return;
    }
    float s = 0.0f; /* LayerNorm: mean, then the variance around it */
    for (int j = threadIdx.x; j < D; j += CU_BLOCK) s += xr[j];
    const float mean = block_sum(s, sh) / (float)D;
    float v = 0.0f;
    for (int j = threadIdx.x; j < D; j += CU_BLOCK) v = fmaf(xr[j] - mean, xr[j] - mean, v);
    const float inv = 1.0f / sqrtf(block_sum(v, sh) / (float)D + eps);
    for (int j = threadIdx.x; j < D; j += CU_BLOCK) o[j] = (xr[j] - mean) * inv * w[j] + bias[j];
}

/* The (mean, inv) pair of norm_block for each of T rows (mean 0 for RMSNorm) into st, with the
 * same partials, butterflies and warp order as block_sum: the values norm_block multiplies by.
 * sh: CU_BLOCK / 32 x T floats. Rows one after another, their loads independent. */
static __device__ void norm_stats_block(const float *x, int T, int D, float eps, bool layer,
                                        float2 *st, float *sh) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int pass = 0; pass < (layer ? 2 : 1); pass++) {
#pragma unroll 4
        for (int t = 0; t < T; t++) {
            const float *xr = x + (size_t)t * D, mean = pass ? st[t].x : 0.0f;
            float v = 0.0f;
            for (int j = threadIdx.x; j < D; j += CU_BLOCK) {
                if (!layer)
                    v = fmaf(xr[j], xr[j], v);
                else if (!pass)
                    v += xr[j];
                else
                    v = fmaf(xr[j] - mean, xr[j] - mean, v);
            }
#pragma unroll
            for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
            if (!lane) sh[warp * T + t] = v;
        }
        __syncthreads();
        if (threadIdx.x < T) {
            const int t = threadIdx.x;
            float s = 0.0f;
            for (int w = 0; w < CU_BLOCK / 32; w++) s += sh[w * T + t];
            if (layer && !pass)
                st[t] = make_float2(s / (float)D, 0.0f);
            else
                st[t] = make_float2(layer ? st[t].x : 0.0f, 1.0f / sqrtf(s / (float)D + eps));
        }
        __syncthreads();
    }
}

/* ---------------------------------------------------------------- projections, CUDA cores
 *
 *   Y[t, r] (op)= W[r, :] . X[t, :] + bias[r]      W (rows, K) F32 or BF16, X (T, ldx) F32
 *
 * A warp owns MM_RW rows and MM_TT tokens; lane l sums the K-chunks l, l + 32, l + 64, ... (8
 * elements each, in order, when rows are 16-byte aligned multiples of 8; single elements
 * otherwise) into one accumulator per (row, token), then a butterfly of shuffles adds the 32
 * lanes. SPLIT = 1: each of the block's 8 warps owns its rows. SPLIT = 8 (matrices with few
 * rows): the 8 warps share MM_RW rows and split K, warp w taking the 32-chunk groups w, w + 8,
 * ...; their sums are added in warp order. The order depends on the shape alone. */

#define MM_RW     4 /* rows per warp */
#define MM_TT     8 /* tokens per warp */
#define MM_KCHUNK 8 /* elements per lane per step on the vector path */
#define MM_WARPS  (CU_BLOCK / 32)

template <typename WT, bool VEC, int SPLIT, typename Pre = NoPre>
static __device__ void matmul_block(const WT *__restrict__ W, int n_rows, int K,
                                    const float *__restrict__ X, int ldx, float *Y, int ldy, int T,
                                    const float *__restrict__ bias, int epi, int bx, int by,
                                    float *sh, Pre pre = Pre()) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = SPLIT > 1 ? bx * MM_RW : (bx * MM_WARPS + warp) * MM_RW, t0 = by * MM_TT,
              kw = SPLIT > 1 ? warp : 0;
    if (r0 >= n_rows) return;
    const int nr = n_rows - r0 < MM_RW ? n_rows - r0 : MM_RW, nt = T - t0 < MM_TT ? T - t0 : MM_TT;
    float acc[MM_RW][MM_TT];
#pragma unroll
    for (int r = 0; r < MM_RW; r++)
#pragma unroll
        for (int t = 0; t < MM_TT; t++) acc[r][t] = 0.0f;
    if (VEC) {
        const int k_first = (lane + 32 * kw) * MM_KCHUNK;
        float w[MM_RW][MM_KCHUNK];
        auto load_w = [&](int k) {
#pragma unroll
            for (int r = 0; r < MM_RW; r++) {
                if (r < nr) {
                    load8(W + (size_t)(r0 + r) * K + k, w[r]);
                } else {
#pragma unroll
                    for (int j = 0; j < MM_KCHUNK; j++) w[r][j] = 0.0f;
                }
            }
        };
        if (k_first < K) load_w(k_first); /* before the wait */
        pre();
        for (int k = k_first; k < K; k += 32 * SPLIT * MM_KCHUNK) {
            if (k != k_first) load_w(k);
#pragma unroll
            for (int t = 0; t < MM_TT; t++) {
                if (t >= nt) break;
                float x[MM_KCHUNK];
                load8(X + (size_t)(t0 + t) * ldx + k, x);
#pragma unroll
                for (int r = 0; r < MM_RW; r++)
#pragma unroll
                    for (int j = 0; j < MM_KCHUNK; j++) acc[r][t] = fmaf(w[r][j], x[j], acc[r][t]);
            }
        }
    } else {
        pre();
        for (int k = lane + 32 * kw; k < K; k += 32 * SPLIT) {
            float w[MM_RW];
#pragma unroll
            for (int r = 0; r < MM_RW; r++)
                w[r] = r < nr ? load1(W + (size_t)(r0 + r) * K + k) : 0.0f;
#pragma unroll
            for (int t = 0; t < MM_TT; t++) {
                if (t >= nt) break;
                float x = X[(size_t)(t0 + t) * ldx + k];
#pragma unroll
                for (int r = 0; r < MM_RW; r++) acc[r][t] = fmaf(w[r], x, acc[r][t]);
            }
        }
    }
    /* butterfly: every lane ends with the same sum (a + b == b + a), in a fixed order; with one
     * token only its sums (the others hold zeros nothing reads; a bound inside the unrolled loop
     * would serialise the shuffles of many tokens) */
    if (nt == 1) {
#pragma unroll
        for (int r = 0; r < MM_RW; r++)
#pragma unroll
            for (int m = 16; m; m >>= 1) acc[r][0] += __shfl_xor_sync(0xffffffffu, acc[r][0], m);
    } else {
#pragma unroll
        for (int r = 0; r < MM_RW; r++)
#pragma unroll
            for (int t = 0; t < MM_TT; t++)
#pragma unroll
                for (int m = 16; m; m >>= 1)
                    acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], m);
    }
    if (SPLIT > 1) { /* the warps' sums, added in warp order by warp 0; sh: SPLIT x 32 floats */
#pragma unroll
        for (int r = 0; r < MM_RW; r++)
#pragma unroll
            for (int t = 0; t < MM_TT; t++)
                if (lane == r * MM_TT + t) sh[warp * 32 + lane] = acc[r][t];
        __syncthreads();
        if (warp) return;
        float sum = 0.0f;
        for (int w = 0; w < SPLIT; w++) sum += sh[w * 32 + lane];
#pragma unroll
        for (int r = 0; r < MM_RW; r++)
#pragma unroll
            for (int t = 0; t < MM_TT; t++)
                if (lane == r * MM_TT + t) acc[r][t] = sum;
    }
    /* lane r * MM_TT + t writes (row r, token t) */
#pragma unroll
    for (int r = 0; r < MM_RW; r++)
#pragma unroll
        for (int t = 0; t < MM_TT; t++) {
            if (lane != r * MM_TT + t || r >= nr || t >= nt) continue;
            const int row = r0 + r;
            float v = acc[r][t] + (bias ? bias[row] : 0.0f);
            float *y = Y + (size_t)(t0 + t) * ldy + row;
            *y = epi == CU_EPI_ADD ? *y + v : v;
        }
}

/* ---------------------------------------------------------------- projections, tensor cores
 *
 * For BF16 weights (K a multiple of 32): mma.sync m16n8k16, bf16 x bf16 -> f32. A 16-row tile
 * and up to TC_TOK tokens (8-token MMA columns) belong to SPLIT warps that split K in 32-wide
 * steps (warp w takes steps w, w + SPLIT, ...), their sums added in warp order; a block of 8
 * warps holds 8 / SPLIT tiles. The activations stay f32 in memory; each is split into hi =
 * bf16(x) and lo = bf16(x - hi) and both are multiplied (two MMAs), so the product keeps about 16
 * bits of x, not 8. Thread (g, q) of a warp loads 8 consecutive weights of rows g and g + 8 at k
 * = 8q and the same 8 activations of token g, and feeds them to two MMAs as their k indices {2q,
 * 2q+1, 2q+8, 2q+9}: a fixed permutation of K inside the step, the same for every launch. A
 * warp loads the weights of AHEAD steps before multiplying (one memory latency for several
 * steps; the MMAs keep their order). Invariance: an MMA output depends only on its own row and
 * column, missing tokens are zero columns, and the K order is fixed by the shape.
 *
 * With nstat (a (mean, inv) pair per token of the block's tile, in shared memory), the activations
 * are norm_block's output computed on the fly from the residual stream X: the same expression,
 * the same bits, without a separate norm pass. */

#define TC_TOK   32 /* tokens per tile: 4 MMA columns of 8 */
#define TC_AHEAD 4

static __device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0,
                                                uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as a bf16 pair (first in the low half), and their remainders as another. */
static __device__ __forceinline__ void split2(float x0, float x1, uint32_t *hi, uint32_t *lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    __nv_bfloat162 l = __floats2bfloat162_rn(x0 - __low2float(h), x1 - __high2float(h));
    *hi = *reinterpret_cast<uint32_t *>(&h);
    *lo = *reinterpret_cast<uint32_t *>(&l);
}

/* sh: CU_BLOCK / 32 x (TT / 8 * 4) x 32 floats (16 KB at TC_TOK). NORM: X is the residual stream
 * and nstat/nw/nb the norm (nb NULL for RMSNorm). TT: the block's tokens (8 or TC_TOK); a token's
 * MMAs are the same whichever tile holds it, so the tile size is free to follow the batch: small
 * tiles give a forward of tens of tokens more blocks (more loads in flight), large ones read each
 * weight fewer times for long forwards. */
template <int SPLIT, bool NORM, int TT = TC_TOK, int AHEAD = TC_AHEAD, typename Pre = NoPre>
static __device__ void matmul_tc_block(const __nv_bfloat16 *__restrict__ W, int n_rows, int K,
                                       const float *__restrict__ X, int ldx, float *Y, int ldy,
                                       int T, const float *__restrict__ bias, int epi, int bx,
                                       int by, float *sh, const float2 *nstat, const float *nw,
                                       const float *nb, Pre pre = Pre()) {
    constexpr int TILES = CU_BLOCK / 32 / SPLIT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int kw = warp % SPLIT, tile = warp / SPLIT;
    const int r0 = (bx * TILES + tile) * 16, t0 = by * TT;
    const int nt = T - t0 < TT ? T - t0 : TT, tiles = (nt + 7) / 8;
    const bool va = r0 + g < n_rows, vb = r0 + g + 8 < n_rows;
    const __nv_bfloat16 *wa = W + (size_t)(r0 + g) * K, *wb = W + (size_t)(r0 + g + 8) * K;
    float acc[TT / 8][4];
#pragma unroll
    for (int i = 0; i < TT / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 A0[AHEAD], A1[AHEAD];
    auto load_w = [&](int kb0) {
#pragma unroll
        for (int a = 0; a < AHEAD; a++) {
            const int k = kb0 + 32 * SPLIT * a + 8 * q;
            const bool in = kb0 + 32 * SPLIT * a < K;
            A0[a] = va && in ? *reinterpret_cast<const uint4 *>(wa + k) : zero;
            A1[a] = vb && in ? *reinterpret_cast<const uint4 *>(wb + k) : zero;
        }
    };
    load_w(kw * 32); /* the first group's weights before the wait */
    pre();
    for (int kb0 = kw * 32; kb0 < K; kb0 += 32 * SPLIT * AHEAD) {
        /* every load of AHEAD steps first: weights, norm weights, then per column tile the
         * activations, so a warp waits for memory once per group, not once per step */
        if (kb0 != kw * 32) load_w(kb0);
        float nw8[NORM ? AHEAD : 1][8], nb8[NORM ? AHEAD : 1][8];
#pragma unroll
        for (int a = 0; a < AHEAD; a++) {
            const int k = kb0 + 32 * SPLIT * a + 8 * q;
            const bool in = kb0 + 32 * SPLIT * a < K;
            if (NORM && in) {
                load8(nw + k, nw8[a]);
                if (nb) load8(nb + k, nb8[a]);
            }
        }
#pragma unroll
        for (int i = 0; i < TT / 8; i++) {
            if (i >= tiles) break;
            const int t = t0 + 8 * i + g;
            float x[AHEAD][8];
#pragma unroll
            for (int a = 0; a < AHEAD; a++) {
#pragma unroll
                for (int j = 0; j < 8; j++) x[a][j] = 0.0f;
                const int kb = kb0 + 32 * SPLIT * a;
                if (kb < K && t < T) load8(X + (size_t)t * ldx + kb + 8 * q, x[a]);
            }
            const float2 ms = NORM && t < T ? nstat[t - t0] : make_float2(0.0f, 0.0f);
#pragma unroll
            for (int a = 0; a < AHEAD; a++) {
                if (kb0 + 32 * SPLIT * a >= K) break;
                if (NORM && t < T) {
                    if (nb) {
#pragma unroll
                        for (int j = 0; j < 8; j++)
                            x[a][j] = (x[a][j] - ms.x) * ms.y * nw8[a][j] + nb8[a][j];
                    } else {
#pragma unroll
                        for (int j = 0; j < 8; j++) x[a][j] = x[a][j] * ms.y * nw8[a][j];
                    }
                }
                const uint32_t a1[4] = {A0[a].x, A1[a].x, A0[a].y, A1[a].y},
                               a2[4] = {A0[a].z, A1[a].z, A0[a].w, A1[a].w};
                uint32_t h01, l01, h23, l23, h45, l45, h67, l67;
                split2(x[a][0], x[a][1], &h01, &l01);
                split2(x[a][2], x[a][3], &h23, &l23);
                split2(x[a][4], x[a][5], &h45, &l45);
                split2(x[a][6], x[a][7], &h67, &l67);
                mma_bf16(acc[i], a1, h01, h23);
                mma_bf16(acc[i], a1, l01, l23);
                mma_bf16(acc[i], a2, h45, h67);
                mma_bf16(acc[i], a2, l45, l67);
            }
        }
    }
    float(*part)[TT / 8 * 4][32] = reinterpret_cast<float(*)[TT / 8 * 4][32]>(sh);
#pragma unroll
    for (int i = 0; i < TT / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) part[warp][i * 4 + j][lane] = acc[i][j];
    __syncthreads();
    if (kw) return;
#pragma unroll
    for (int i = 0; i < TT / 8; i++) {
        if (i >= tiles) break;
#pragma unroll
        for (int j = 0; j < 4; j++) { /* c0, c1: row g; c2, c3: row g + 8; tokens 2q, 2q + 1 */
            float v = part[warp][i * 4 + j][lane];
            for (int w = 1; w < SPLIT; w++) v += part[warp + w][i * 4 + j][lane];
            const int row = r0 + g + (j >= 2 ? 8 : 0), t = t0 + 8 * i + 2 * q + (j & 1);
            if (row >= n_rows || t >= T) continue;
            v = v + (bias ? bias[row] : 0.0f);
            float *y = Y + (size_t)t * ldy + row;
            *y = epi == CU_EPI_ADD ? *y + v : v;
        }
    }
}

/* The same products with the block's activations shared (matmul_tcs_block): CU_BLOCK / 32 warps,
 * each owning a 16-row tile and the whole of K, with SPLIT accumulator sets (set j takes the K
 * steps j, j + SPLIT, ... in order: warp j's steps in matmul_tc_block), added in set order; the
 * block's TT tokens are loaded once, split into bf16 hi and lo as matmul_tc_block splits them,
 * and kept in shared memory, (TT, K / 2 + TCS_PAD) words each, for every warp. Same fragments,
 * same MMAs in the same order, same sums: the same bits, with the activations read once per
 * 128 rows instead of once per 16 or 32. For forwards of tens of tokens and more. */
#define TCS_ROWS (CU_BLOCK / 32 * 16)
#define TCS_PAD  16 /* words: lanes of a quarter-warp read different banks */

static __host__ __device__ inline size_t tcs_smem(int K, int TT) {
    return 2 * (size_t)TT * (size_t)(K / 2 + TCS_PAD) * sizeof(uint32_t);
}

template <int SPLIT, int TT>
static __device__ void matmul_tcs_block(const __nv_bfloat16 *__restrict__ W, int n_rows, int K,
                                        const float *__restrict__ X, int ldx, float *Y, int ldy,
                                        int T, const float *__restrict__ bias, int epi, int bx,
                                        int by, uint32_t *sh) {
    const int ld = K / 2 + TCS_PAD, t0 = by * TT;
    uint32_t *hs = sh, *ls = sh + (size_t)TT * ld;
    /* the tokens' activations, split as split2 splits them, zero past T */
    for (int i = threadIdx.x; i < TT * (K / 4); i += CU_BLOCK) {
        const int t = i / (K / 4), k = (i % (K / 4)) * 4;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t0 + t < T) x = *reinterpret_cast<const float4 *>(X + (size_t)(t0 + t) * ldx + k);
        uint32_t h0, l0, h1, l1;
        split2(x.x, x.y, &h0, &l0);
        split2(x.z, x.w, &h1, &l1);
        *reinterpret_cast<uint2 *>(hs + (size_t)t * ld + k / 2) = make_uint2(h0, h1);
        *reinterpret_cast<uint2 *>(ls + (size_t)t * ld + k / 2) = make_uint2(l0, l1);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int r0 = bx * TCS_ROWS + warp * 16;
    if (r0 >= n_rows) return;
    const int nt = T - t0 < TT ? T - t0 : TT, tiles = (nt + 7) / 8;
    const bool va = r0 + g < n_rows, vb = r0 + g + 8 < n_rows;
    const __nv_bfloat16 *wa = W + (size_t)(r0 + g) * K, *wb = W + (size_t)(r0 + g + 8) * K;
    float acc[SPLIT][TT / 8][4];
#pragma unroll
    for (int j = 0; j < SPLIT; j++)
#pragma unroll
        for (int i = 0; i < TT / 8; i++)
            acc[j][i][0] = acc[j][i][1] = acc[j][i][2] = acc[j][i][3] = 0.0f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int kb0 = 0; kb0 < K; kb0 += 32 * SPLIT) {
        uint4 A0[SPLIT], A1[SPLIT];
#pragma unroll
        for (int j = 0; j < SPLIT; j++) {
            const int k = kb0 + 32 * j + 8 * q;
            const bool in = kb0 + 32 * j < K;
            A0[j] = va && in ? *reinterpret_cast<const uint4 *>(wa + k) : zero;
            A1[j] = vb && in ? *reinterpret_cast<const uint4 *>(wb + k) : zero;
        }
#pragma unroll
        for (int i = 0; i < TT / 8; i++) {
            if (i >= tiles) break;
            const uint32_t *hr = hs + (size_t)(8 * i + g) * ld, *lr = ls + (size_t)(8 * i + g) * ld;
#pragma unroll
            for (int j = 0; j < SPLIT; j++) {
                const int kb = kb0 + 32 * j;
                if (kb >= K) break;
                const uint4 h = *reinterpret_cast<const uint4 *>(hr + kb / 2 + 4 * q),
                            l = *reinterpret_cast<const uint4 *>(lr + kb / 2 + 4 * q);
                const uint32_t a1[4] = {A0[j].x, A1[j].x, A0[j].y, A1[j].y},
                               a2[4] = {A0[j].z, A1[j].z, A0[j].w, A1[j].w};
                mma_bf16(acc[j][i], a1, h.x, h.y);
                mma_bf16(acc[j][i], a1, l.x, l.y);
                mma_bf16(acc[j][i], a2, h.z, h.w);
                mma_bf16(acc[j][i], a2, l.z, l.w);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < TT / 8; i++) {
        if (i >= tiles) break;
#pragma unroll
        for (int c = 0; c < 4; c++) { /* c0, c1: row g; c2, c3: row g + 8; tokens 2q, 2q + 1 */
            float v = acc[0][i][c];
#pragma unroll
            for (int j = 1; j < SPLIT; j++) v += acc[j][i][c];
            const int row = r0 + g + (c >= 2 ? 8 : 0), t = t0 + 8 * i + 2 * q + (c & 1);
            if (row >= n_rows || t >= T) continue;
            v = v + (bias ? bias[row] : 0.0f);
            float *y = Y + (size_t)t * ldy + row;
            *y = epi == CU_EPI_ADD ? *y + v : v;
        }
    }
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

/* ---------------------------------------------------------------- conv */

#define SPAN_CHUNK 8 /* tokens of a span whose inputs the scan loads at once */
static_assert(SPAN_CHUNK == CU_SCAN_LONG_T, "CU_SCAN_LONG means a whole chunk");

/* The conv with a thread per (channel c, token t of the forward), so a long span runs on many
 * threads: the token's window is read from the span's inputs (or the slot's window before the
 * span's start), then conv_step (which rollback replays). The window after each span goes to the
 * slot's other buffer. */
template <int K>
static __device__ void conv_tok(const float *conv_w, const float *conv_b, const int *off, int n_seq,
                                const int *slot, const int *cur, float *state, size_t sf,
                                size_t lofs, const float *xz, float *u, float *j_xin, int E, int c,
                                int t) {
    int s = 0, hi = n_seq - 1; /* the sequence of token t: off[s] <= t < off[s + 1] */
    while (s < hi) {
        const int mid = (s + hi + 1) / 2;
        if (off[mid] <= t)
            s = mid;
        else
            hi = mid - 1;
    }
    const int start = off[s], end = off[s + 1];
    const float *src = slot_buf(state, sf, slot[s], cur[s]) + lofs;
    float *dst = slot_buf(state, sf, slot[s], !cur[s]) + lofs;
    float win[K > 1 ? K - 1 : 1];
#pragma unroll
    for (int k = 0; k < K - 1; k++) { /* entry k: position t - (K - 1) + k */
        const int p = t - (K - 1) + k;
        win[k] = p >= start ? xz[(size_t)p * 2 * E + c] : src[(size_t)(K - 1 + p - start) * E + c];
    }
    if (t == start) /* a span shorter than the window keeps part of the old one */
        for (int p = end - (K - 1); p < start; p++)
            dst[(size_t)(K - 1 - (end - p)) * E + c] = src[(size_t)(K - 1 + p - start) * E + c];
    const float x = xz[(size_t)t * 2 * E + c];
    u[(size_t)t * E + c] = conv_step<K>(win, conv_w + c, E, conv_b[c], x);
    j_xin[(size_t)t * E + c] = x;
    if (t >= end - (K - 1)) dst[(size_t)(K - 1 - (end - t)) * E + c] = x;
}

/* ---------------------------------------------------------------- scan
 *
 * A channel's N states belong to SCAN_G(N) neighbouring threads of a warp (all N when N <= 32),
 * each holding N / SCAN_G of them; a block holds SCAN_CPB(N) channels of one sequence and walks
 * its span in order. Per token: dt = softplus(dt_proj[c, :] . dt_low + dt_bias[c]), lane j of the
 * group summing r = j, j + G, ... in order and a butterfly over the group adding the lanes; each
 * state s = exp(dt A) s + B (dt u) (scan_step's expression, which rollback replays); y = the
 * group's butterfly of its lanes' sums of s C (in state order within a lane), + D u, times
 * silu(z). These orders are fixed by the model's shape: the same bits for every batch and span.
 * Threads of consecutive states read consecutive floats of the state and A, the dt_proj columns
 * are staged once per block in shared memory, and a long single sequence still fills the GPU
 * (E / SCAN_CPB blocks). */

#define SCAN_G(N)   ((N) < 32 ? (N) : 32)
#define SCAN_CPB(N) (CU_BLOCK / SCAN_G(N))

/* One stage of a butterfly sum done as a reduce-scatter over lane bit `bit` (lanes in groups of
 * G): of the 2H values in v, the lane keeps the upper H where hi (its bit) is set, else the lower
 * H, and adds its partner's copy of that half, handing over the other: out[k] = kept[k] +
 * partner's. a + b and b + a are the same bits, so each sum is the butterfly's pair sum. */
template <int H, int G = 32>
static __device__ __forceinline__ void rs_stage(const float *v, float *out, bool hi, int bit) {
#pragma unroll
    for (int k = 0; k < H; k++)
        out[k] =
            (hi ? v[k + H] : v[k]) + __shfl_xor_sync(0xffffffffu, hi ? v[k] : v[k + H], bit, G);
}

/* Bytes of shared memory scan_block takes: two chunks of dbl rows, then its dt_proj rows. */
static __host__ __device__ inline size_t scan_smem(int R, int N, int wdt_bf16) {
    return 2 * (size_t)SPAN_CHUNK * (size_t)(R + 2 * N) * sizeof(float) +
           (size_t)R * (size_t)SCAN_CPB(N) * (wdt_bf16 ? 2 : 4);
}

/* Channels c0 .. c0 + SCAN_CPB(N) - 1 of sequence s. WT: dt_proj's element type; Wdt is dt_proj
 * transposed, (R, E). */
template <int N, typename WT, bool PRE, typename Pre = NoPre>
static __device__ void
scan_block(const float *A_all, const float *Dv, const int *off, const int *slot, const int *cur,
           float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt, const float *dt_b,
           float *j_dt, const float *dbl, const float *xz, float *y, float *j_B, int E, int R,
           int c0, int s, float *rows_sh, Pre pre = Pre()) {
    constexpr int G = SCAN_G(N), SPT = N / G, CPB = SCAN_CPB(N);
    const int j = threadIdx.x % G, cl = threadIdx.x / G, c = c0 + cl;
    const bool live = c < E; /* every thread joins the block's loads and barriers */
    const int ld = R + 2 * N;
    WT *w_sh = reinterpret_cast<WT *>(rows_sh + 2 * SPAN_CHUNK * ld); /* (CPB, R) */
    for (int i = threadIdx.x; i < (PRE ? 0 : R * CPB); i += CU_BLOCK) {
        const int r = i / CPB, k = i % CPB; /* consecutive threads: consecutive channels of row r */
        if (c0 + k < E) w_sh[k * R + r] = Wdt[(size_t)r * E + c0 + k];
    }
    const size_t at = (size_t)c * N + (size_t)(j * SPT);
    const float *src = slot_buf(state, sf, slot[s], cur[s]) + lofs + at;
    float *dst = slot_buf(state, sf, slot[s], !cur[s]) + lofs + at;
    float st[SPT], A[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++) {
        st[k] = live ? src[k] : 0.0f;
        A[k] = live ? A_all[at + k] : 0.0f;
    }
    const float Dc = live ? Dv[c] : 0.0f, bias = live ? dt_b[c] : 0.0f;
    const WT *wc = w_sh + cl * R;
    const int end = off[s + 1];
    /* chunks of SPAN_CHUNK tokens, double-buffered: while one is computed, the next one's dbl
     * rows copy into the other shared buffer (cp.async) and its u and z load into registers */
    const int start = off[s];
    float us[SPAN_CHUNK] = {}, zs[SPAN_CHUNK] = {}, un[SPAN_CHUNK] = {}, zn[SPAN_CHUNK] = {};
    float ds[PRE ? SPAN_CHUNK : 1] = {}, dn[PRE ? SPAN_CHUNK : 1] = {};
    auto fetch = [&](int t0, float *buf, float *uu, float *zz, float *dd) {
        const int n = end - t0 < SPAN_CHUNK ? end - t0 : SPAN_CHUNK;
        for (int i = threadIdx.x; i < n * ld; i += CU_BLOCK)
            __pipeline_memcpy_async(buf + i, dbl + (size_t)t0 * ld + i, sizeof(float));
        __pipeline_commit();
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            const bool in = live && i < n;
            uu[i] = in ? u[(size_t)(t0 + i) * E + c] : 0.0f;
            zz[i] = in ? xz[(size_t)(t0 + i) * 2 * E + E + c] : 0.0f;
            if (PRE) dd[i] = in ? j_dt[(size_t)(t0 + i) * E + c] : 0.0f;
        }
    };
    pre();
    if (start < end) fetch(start, rows_sh, us, zs, ds);
    for (int t0 = start, cb = 0; t0 < end; t0 += SPAN_CHUNK, cb ^= 1) {
        const int n_t = end - t0 < SPAN_CHUNK ? end - t0 : SPAN_CHUNK;
        const float *rows = rows_sh + cb * SPAN_CHUNK * ld;
        __pipeline_wait_prior(0);
        __syncthreads(); /* this chunk's rows are in; the other buffer is no longer read */
        if (t0 + SPAN_CHUNK < end)
            fetch(t0 + SPAN_CHUNK, rows_sh + (cb ^ 1) * SPAN_CHUNK * ld, un, zn, dn);
        /* the chunk in three passes, each token's values by the same expressions: dt and the
         * state's inputs (independent of the recurrence), the recurrence, then y; so the
         * tokens' chains overlap */
        float dts[SPAN_CHUNK], dA[SPAN_CHUNK][SPT], Bdu[SPAN_CHUNK][SPT], yp[SPAN_CHUNK];
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (i >= n_t) break;
            const float *row = rows + i * ld, *B = row + R + j * SPT;
            if (PRE) {
                dts[i] = ds[i];
            } else {
                float d = 0.0f;
                for (int r = j; r < R; r += G) d = fmaf(load1(wc + r), row[r], d);
#pragma unroll
                for (int m = G / 2; m; m >>= 1) d += __shfl_xor_sync(0xffffffffu, d, m, G);
                d = d + bias;
                dts[i] = softplus_f(d);
            }
            const float du = dts[i] * us[i];
#pragma unroll
            for (int k = 0; k < SPT; k++) dA[i][k] = expf(dts[i] * A[k]), Bdu[i][k] = B[k] * du;
        }
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (i >= n_t) break;
            const float *C = rows + i * ld + R + N + j * SPT;
            float p = 0.0f;
#pragma unroll
            for (int k = 0; k < SPT; k++) {
                st[k] = fmaf(dA[i][k], st[k], Bdu[i][k]);
                p = fmaf(st[k], C[k], p);
            }
            yp[i] = p;
        }
        if constexpr (G == 16 && SPAN_CHUNK == 8) {
            /* the butterfly as a reduce-scatter: at the stage over lane bit m each lane adds its
             * partner's value to its own for the half of the tokens it keeps (the butterfly's
             * pair sums; a + b and b + a are the same bits) and hands over the other half, so
             * after the four stages lanes 2k and 2k + 1 hold token k's sum, and the gate, the
             * stores and their loads run once a token, not once a token and lane. H200
             * (bench/RESULTS.md): one prompt of 512 on 354M 19.9 -> 16.7 ms, a span of 32
             * 2.62 -> 2.33 ms */
            float v[8], w4[4], w2[2], w1;
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = i < n_t ? yp[i] : 0.0f;
            rs_stage<4, G>(v, w4, j & 8, 8);
            rs_stage<2, G>(w4, w2, j & 4, 4);
            rs_stage<1, G>(w2, &w1, j & 2, 2);
            const float p = w1 + __shfl_xor_sync(0xffffffffu, w1, 1, G);
            const int k = j >> 1; /* this lane's token */
            float uk = 0.0f, zk = 0.0f, dk = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (i == k && i < n_t) uk = us[i], zk = zs[i], dk = dts[i];
            if (live && !(j & 1) && k < n_t) {
                const size_t t = (size_t)(t0 + k);
                if (!PRE) j_dt[t * E + c] = dk;
                const float yt = p + Dc * uk;
                y[t * E + c] = yt * silu_f(zk);
            }
            if (c == 0) /* the span's B, for rollback */
#pragma unroll
                for (int i = 0; i < SPAN_CHUNK; i++)
                    if (i < n_t) j_B[(size_t)(t0 + i) * N + j] = rows[i * ld + R + j];
        } else {
#pragma unroll
            for (int i = 0; i < SPAN_CHUNK; i++) {
                if (i >= n_t) break;
                const size_t t = (size_t)(t0 + i);
                float p = yp[i];
#pragma unroll
                for (int m = G / 2; m; m >>= 1) p += __shfl_xor_sync(0xffffffffu, p, m, G);
                if (live && j == 0) {
                    if (!PRE) j_dt[t * E + c] = dts[i];
                    const float yt = p + Dc * us[i];
                    y[t * E + c] = yt * silu_f(zs[i]);
                }
                if (c == 0) /* the span's B, for rollback */
#pragma unroll
                    for (int k = 0; k < SPT; k++)
                        j_B[t * N + j * SPT + k] = rows[i * ld + R + j * SPT + k];
            }
        }
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            us[i] = un[i], zs[i] = zn[i];
            if (PRE) ds[i] = dn[i];
        }
    }
    if (!live) return;
#pragma unroll
    for (int k = 0; k < SPT; k++) dst[k] = st[k];
}

/* The sum of G lane values as the butterfly of scan_block leaves it in every lane: at each stage
 * lane j adds lane j ^ m (the two orders of a pair give the same bits). Each stage is its own
 * instantiation, so every index is a constant and v stays in registers (a loop over the stages
 * left v in local memory: a store and reloads per token in the scans). */
template <int M> static __device__ __forceinline__ void tree_stage(float *v) {
#pragma unroll
    for (int j = 0; j < M; j++) v[j] = v[j] + v[j + M];
}
template <int G> static __device__ __forceinline__ float tree_sum(float *v) {
    if constexpr (G >= 64) tree_stage<32>(v);
    if constexpr (G >= 32) tree_stage<16>(v);
    if constexpr (G >= 16) tree_stage<8>(v);
    if constexpr (G >= 8) tree_stage<4>(v);
    if constexpr (G >= 4) tree_stage<2>(v);
    if constexpr (G >= 2) tree_stage<1>(v);
    return v[0];
}

/* The columns c0 .. c0 + CW - 1 of dt_proj^T (R, E) into shared memory, (R, CW), 16 bytes a
 * load, 8 loads in flight per thread; read after a barrier. */
template <typename WT, int CW = CU_BLOCK>
static __device__ void stage_wdt(const WT *Wdt, int E, int R, int c0, WT *w_sh) {
    constexpr int PER = 16 / sizeof(WT), VROW = CW / PER;
    if (E % PER == 0) {
        for (int i0 = 0; i0 < R * VROW; i0 += 8 * CU_BLOCK) {
            uint4 v[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int i = i0 + k * CU_BLOCK + threadIdx.x, r = i / VROW,
                          col = c0 + (i % VROW) * PER;
                v[k] = i < R * VROW && col < E
                           ? *reinterpret_cast<const uint4 *>(Wdt + (size_t)r * E + col)
                           : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int i = i0 + k * CU_BLOCK + threadIdx.x;
                if (i < R * VROW) reinterpret_cast<uint4 *>(w_sh)[i] = v[k];
            }
        }
    } else {
        for (int i = threadIdx.x; i < R * CW; i += CU_BLOCK) {
            const int c = c0 + i % CW;
            if (c < E) w_sh[i] = Wdt[(size_t)(i / CW) * E + c];
        }
    }
}

/* The chunk of a span from token t0 (n_t of its tokens) for the thread-per-channel scans: the
 * block's rows of dbl into rows_sh and channel c's u, z and (with PRE) dt into registers, between
 * barriers (before: the last chunk's rows are no longer read and the staged dt_proj columns are
 * written; after: the new rows are all in). */
template <bool PRE>
static __device__ __forceinline__ void
chan_chunk(const float *dbl, int ld, const float *u, const float *xz, const float *j_dt, int E,
           int c, bool live, int t0, int n_t, float *rows_sh, float *us, float *zs, float *ds) {
    __syncthreads();
    for (int i = threadIdx.x; i < n_t * ld; i += CU_BLOCK) rows_sh[i] = dbl[(size_t)t0 * ld + i];
#pragma unroll
    for (int i = 0; i < SPAN_CHUNK; i++) {
        const bool in = live && i < n_t;
        us[i] = in ? u[(size_t)(t0 + i) * E + c] : 0.0f;
        zs[i] = in ? xz[(size_t)(t0 + i) * 2 * E + E + c] : 0.0f;
        ds[i] = PRE && in ? j_dt[(size_t)(t0 + i) * E + c] : 0.0f;
    }
    __syncthreads();
}

/* dt = softplus(dt_proj[c, :] . dt_low + dt_bias[c]) of channel c: lane partials r = j, j + G,
 * ... in order, added by tree_sum (the butterfly's order). wc: the channel's column in shared
 * memory, CU_BLOCK apart. */
template <int G, typename WT>
static __device__ __forceinline__ float dt_of(const WT *wc, const float *row, int R, float bias) {
    float v[G];
#pragma unroll
    for (int j = 0; j < G; j++) v[j] = 0.0f;
    for (int r0 = 0; r0 < R; r0 += G)
#pragma unroll
        for (int j = 0; j < G; j++)
            if (r0 + j < R) v[j] = fmaf(load1(wc + (size_t)(r0 + j) * CU_BLOCK), row[r0 + j], v[j]);
    const float d = tree_sum<G>(v) + bias;
    return softplus_f(d);
}

#define DT_TOK 16 /* tokens per block of dt_block */
#define DT_PAR 2  /* of which a thread computes side by side (one weight load for each) */

/* Shared memory of dt_block: its dt_proj columns, then its tokens' dt_low rows. */
static __host__ __device__ inline size_t dt_smem(int R, int wdt_bf16) {
    return (size_t)R * CU_BLOCK * (wdt_bf16 ? 2 : 4) + (size_t)DT_TOK * R * sizeof(float);
}

/* dt of channels c0 .. c0 + CU_BLOCK - 1 for tokens t0 .. t0 + DT_TOK - 1 (< T) into j_dt, by
 * dt_of's sums in dt_of's order (DT_PAR tokens at once, each with its own partials): the bits
 * the scans compute themselves. For forwards with long spans (cu_scan's pre), where the scan
 * then reads dt instead of spending its serial walk through the span on it. */
template <int G, typename WT>
static __device__ void dt_block(const WT *Wdt, const float *dt_b, const float *dbl, float *j_dt,
                                int E, int R, int ld, int T, int c0, int t0, float *sh) {
    WT *w_sh = reinterpret_cast<WT *>(sh);
    float *rows = sh + (R * CU_BLOCK * sizeof(WT) + 15) / 16 * 4;
    const int n = T - t0 < DT_TOK ? T - t0 : DT_TOK;
    stage_wdt(Wdt, E, R, c0, w_sh);
    for (int i = threadIdx.x; i < n * R; i += CU_BLOCK)
        rows[i] = dbl[(size_t)(t0 + i / R) * ld + i % R];
    __syncthreads();
    const int c = c0 + threadIdx.x;
    if (c >= E) return;
    const float bias = dt_b[c];
    const WT *wc = w_sh + threadIdx.x;
    for (int i0 = 0; i0 < n; i0 += DT_PAR) {
        float v[DT_PAR][G];
#pragma unroll
        for (int p = 0; p < DT_PAR; p++)
#pragma unroll
            for (int j = 0; j < G; j++) v[p][j] = 0.0f;
        for (int r0 = 0; r0 < R; r0 += G)
#pragma unroll
            for (int j = 0; j < G; j++) {
                if (r0 + j >= R) break;
                const float w = load1(wc + (size_t)(r0 + j) * CU_BLOCK);
#pragma unroll
                for (int p = 0; p < DT_PAR; p++)
                    v[p][j] = fmaf(w, rows[(i0 + p) * R + r0 + j], v[p][j]);
            }
#pragma unroll
        for (int p = 0; p < DT_PAR; p++) {
            if (i0 + p >= n) break;
            const float d = tree_sum<G>(v[p]) + bias;
            j_dt[(size_t)(t0 + i0 + p) * E + c] = softplus_f(d);
        }
    }
}

/* Bytes of shared memory scan_chan_block takes: the chunk's dbl rows, then its dt_proj rows. */
static __host__ __device__ inline size_t scan_chan_smem(int R, int N, int wdt_bf16) {
    return (size_t)SPAN_CHUNK * (size_t)(R + 2 * N) * sizeof(float) +
           (size_t)R * CU_BLOCK * (wdt_bf16 ? 2 : 4);
}

/* scan_block's arithmetic with one thread per channel (c = c0 + thread) holding all N states:
 * the lanes' partial sums are computed side by side and added by tree_sum in the butterfly's
 * order, so the bits are scan_block's. Fewer, fuller threads: the better shape for many
 * sequences of a few tokens (batched decode); scan_block fills the GPU for few long spans. */
template <int N, typename WT, bool PRE, typename Pre = NoPre>
static __device__ void
scan_chan_block(const float *A_all, const float *Dv, const int *off, const int *slot,
                const int *cur, float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt,
                const float *dt_b, float *j_dt, const float *dbl, const float *xz, float *y,
                float *j_B, int E, int R, int c0, int s, float *rows_sh, Pre pre = Pre()) {
    constexpr int G = SCAN_G(N), SPT = N / G;
    const int c = c0 + threadIdx.x;
    const bool live = c < E; /* every thread joins the block's loads of dbl rows */
    WT *w_sh = reinterpret_cast<WT *>(rows_sh + SPAN_CHUNK * (R + 2 * N));
    if (!PRE) stage_wdt(Wdt, E, R, c0, w_sh);
    const float *src = slot_buf(state, sf, slot[s], cur[s]) + lofs + (size_t)c * N;
    float *dst = slot_buf(state, sf, slot[s], !cur[s]) + lofs + (size_t)c * N;
    float st[N], A[N];
    if (live) {
#pragma unroll
        for (int n = 0; n < N; n += 4) {
            const float4 a = *reinterpret_cast<const float4 *>(src + n),
                         b = *reinterpret_cast<const float4 *>(A_all + (size_t)c * N + n);
            st[n] = a.x, st[n + 1] = a.y, st[n + 2] = a.z, st[n + 3] = a.w;
            A[n] = b.x, A[n + 1] = b.y, A[n + 2] = b.z, A[n + 3] = b.w;
        }
    } else {
#pragma unroll
        for (int n = 0; n < N; n++) st[n] = 0.0f, A[n] = 0.0f;
    }
    const float Dc = live ? Dv[c] : 0.0f, bias = live ? dt_b[c] : 0.0f;
    pre();
    const WT *wc = w_sh + threadIdx.x;
    const int ld = R + 2 * N, end = off[s + 1];
    for (int t0 = off[s]; t0 < end; t0 += SPAN_CHUNK) {
        const int n_t = end - t0 < SPAN_CHUNK ? end - t0 : SPAN_CHUNK;
        float us[SPAN_CHUNK], zs[SPAN_CHUNK], ds[SPAN_CHUNK];
        chan_chunk<PRE>(dbl, ld, u, xz, j_dt, E, c, live, t0, n_t, rows_sh, us, zs, ds);
        if (!live) continue;
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (i >= n_t) break;
            const size_t t = (size_t)(t0 + i);
            const float *row = rows_sh + i * ld, *B = row + R, *C = B + N;
            const float dt = PRE ? ds[i] : dt_of<G>(wc, row, R, bias), du = dt * us[i];
            float v[G];
#pragma unroll
            for (int j = 0; j < G; j++) {
                float yp = 0.0f;
#pragma unroll
                for (int k = 0; k < SPT; k++) {
                    const int n = j * SPT + k;
                    st[n] = fmaf(expf(dt * A[n]), st[n], B[n] * du);
                    yp = fmaf(st[n], C[n], yp);
                }
                v[j] = yp;
            }
            if (!PRE) j_dt[t * E + c] = dt;
            const float yt = tree_sum<G>(v) + Dc * us[i];
            y[t * E + c] = yt * silu_f(zs[i]);
            if (c < N) j_B[t * N + c] = B[c]; /* the span's B, for rollback */
        }
    }
    if (!live) return;
#pragma unroll
    for (int n = 0; n < N; n += 4)
        *reinterpret_cast<float4 *>(dst + n) = make_float4(st[n], st[n + 1], st[n + 2], st[n + 3]);
}

/* Shared memory of scan_quad_block: the chunk's dbl rows, then its dt_proj rows (QUAD_CH
 * channels). */
#define QUAD_CH (CU_BLOCK / 4)
static __host__ __device__ inline size_t scan_quad_smem(int R, int wdt_bf16) {
    return (size_t)SPAN_CHUNK * (size_t)(R + 32) * sizeof(float) +
           (size_t)R * QUAD_CH * (wdt_bf16 ? 2 : 4);
}

/* scan_chan_block's arithmetic for d_state 16 with four threads per channel (lane q of the four
 * holds states and partial sums 4q .. 4q + 3): fewer registers a thread, so more of them in
 * flight, and each state read as one float4. tree_sum<16>'s stages 8 and 4 add values of the
 * lanes q ^ 2 and q ^ 1 (shuffles: a + b and b + a are the same bits), stages 2 and 1 stay in the
 * lane, so every sum is added in tree_sum's order and the bits are scan_chan_block's. RS: the
 * chunk's y sums as a reduce-scatter, so the gate and stores run once a token instead of once
 * a token and quad; it holds the chunk's partial sums (more registers), which costs occupancy
 * where only short spans run. H200 (bench/RESULTS.md, 354M): 8 sequences x 8 tokens 3.08 ->
 * 2.46 ms, 16 x 16 7.45 -> 7.21, a prompt chunk of 448 beside 63 decoders 21.7 -> 20.0; 64 x 4
 * 7.31 -> 8.15 and 64 x 2 4.46 -> 5.10 (hence cu_scan's CU_SCAN_LONG). */
template <typename WT, bool PRE, bool RS, typename Pre = NoPre>
static __device__ void
scan_quad_block(const float *A_all, const float *Dv, const int *off, const int *slot,
                const int *cur, float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt,
                const float *dt_b, float *j_dt, const float *dbl, const float *xz, float *y,
                float *j_B, int E, int R, int c0, int s, float *rows_sh, Pre pre = Pre()) {
    constexpr int N = 16;
    const int q = threadIdx.x & 3, cl = threadIdx.x >> 2, c = c0 + cl;
    const bool live = c < E; /* every thread joins the block's loads and barriers */
    const int ld = R + 2 * N;
    WT *w_sh = reinterpret_cast<WT *>(rows_sh + SPAN_CHUNK * ld);
    if (!PRE) stage_wdt<WT, QUAD_CH>(Wdt, E, R, c0, w_sh);
    const size_t at = (size_t)c * N + 4 * q;
    float4 st4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), A4 = st4;
    if (live) {
        st4 = *reinterpret_cast<const float4 *>(slot_buf(state, sf, slot[s], cur[s]) + lofs + at);
        A4 = *reinterpret_cast<const float4 *>(A_all + at);
    }
    float st[4] = {st4.x, st4.y, st4.z, st4.w};
    const float A[4] = {A4.x, A4.y, A4.z, A4.w};
    const float Dc = live ? Dv[c] : 0.0f, bias = live ? dt_b[c] : 0.0f;
    pre();
    /* tree_sum<16> of the 16 values v[4q .. 4q + 3] of the four lanes */
    auto tree16 = [](float *v) {
#pragma unroll
        for (int k = 0; k < 4; k++) v[k] = v[k] + __shfl_xor_sync(0xffffffffu, v[k], 2);
#pragma unroll
        for (int k = 0; k < 4; k++) v[k] = v[k] + __shfl_xor_sync(0xffffffffu, v[k], 1);
        v[0] = v[0] + v[2], v[1] = v[1] + v[3];
        return v[0] + v[1];
    };
    const int end = off[s + 1];
    for (int t0 = off[s]; t0 < end; t0 += SPAN_CHUNK) {
        const int n_t = end - t0 < SPAN_CHUNK ? end - t0 : SPAN_CHUNK;
        float us[SPAN_CHUNK], zs[SPAN_CHUNK], ds[SPAN_CHUNK];
        chan_chunk<PRE>(dbl, ld, u, xz, j_dt, E, c, live, t0, n_t, rows_sh, us, zs, ds);
        float yv[SPAN_CHUNK][4] = {}, dts[SPAN_CHUNK];
#pragma unroll
        for (int i = 0; i < SPAN_CHUNK; i++) {
            if (i >= n_t) break;
            const float *row = rows_sh + i * ld, *B = row + R + 4 * q, *C = B + N;
            float dt;
            if (PRE) {
                dt = ds[i];
            } else { /* dt_of<16>: partial j sums rows j, j + 16, ... in order */
                float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int r0 = 0; r0 < R; r0 += 16)
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        const int r = r0 + 4 * q + k;
                        if (r < R)
                            v[k] = fmaf(load1(w_sh + (size_t)r * QUAD_CH + cl), row[r], v[k]);
                    }
                const float d = tree16(v) + bias;
                dt = softplus_f(d);
            }
            const float du = dt * us[i];
            float v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                st[k] = fmaf(expf(dt * A[k]), st[k], B[k] * du);
                v[k] = fmaf(st[k], C[k], 0.0f);
            }
            if constexpr (RS) {
                dts[i] = dt;
#pragma unroll
                for (int k = 0; k < 4; k++) yv[i][k] = v[k];
            } else { /* tree16 a token, lane 0 gates and stores */
                const float yt = tree16(v) + Dc * us[i];
                if (!live || q) continue;
                const size_t t = (size_t)(t0 + i);
                if (!PRE) j_dt[t * E + c] = dt;
                y[t * E + c] = yt * silu_f(zs[i]);
            }
        }
        if constexpr (RS) {
            /* tree16 of the chunk's tokens as a reduce-scatter: at the stage over lane bit 2
             * (then 1) each lane adds its partner's four values to its own for the half of the
             * tokens it keeps and hands over the other half; lane q ends with tokens 2q and 2q
             * + 1, whose four values it adds as tree16 does, and runs their gate and stores */
            float w[4][4], x[2][4]; /* a token's four values are one row: halves are rows */
            rs_stage<16>(yv[0], w[0], q & 2, 2);
            rs_stage<8>(w[0], x[0], q & 1, 1);
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const int i = 2 * q + k;
                float uk = 0.0f, zk = 0.0f, dk = 0.0f;
#pragma unroll
                for (int ii = 0; ii < SPAN_CHUNK; ii++)
                    if (ii == i && ii < n_t) uk = us[ii], zk = zs[ii], dk = dts[ii];
                if (!live || i >= n_t) continue;
                const size_t t = (size_t)(t0 + i);
                const float yt = ((x[k][0] + x[k][2]) + (x[k][1] + x[k][3])) + Dc * uk;
                if (!PRE) j_dt[t * E + c] = dk;
                y[t * E + c] = yt * silu_f(zk);
            }
        }
        if (c < N && !q) /* the span's B, for rollback */
#pragma unroll
            for (int i = 0; i < SPAN_CHUNK; i++)
                if (i < n_t) j_B[(size_t)(t0 + i) * N + c] = rows_sh[i * ld + R + c];
    }
    if (live)
        *reinterpret_cast<float4 *>(slot_buf(state, sf, slot[s], !cur[s]) + lofs + at) =
            make_float4(st[0], st[1], st[2], st[3]);
}

#endif
