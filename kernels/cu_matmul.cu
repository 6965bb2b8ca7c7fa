/* cu_matmul.cu: the projections (in_proj, x_proj, out_proj, the head) as one
 * batch-invariant matrix product over all tokens of a forward.
 *
 *   Y[t, r] (op)= W[r, :] . X[t, :] + bias[r]      W (rows, K) F32 or BF16, X (T, ldx) F32
 *
 * Version 1 (this one): CUDA cores, F32 accumulation. A warp owns RW rows and TT tokens; lane
 * l sums the K-chunks l, l + 32, l + 64, ... (8 elements each, in order, when rows are 16-byte
 * aligned multiples of 8; single elements otherwise) into one accumulator per (row, token),
 * then a butterfly of shuffles adds the 32 lanes. Matrices with few rows split K over the 8
 * warps of a block instead, added in warp order. That order depends on the shape alone: the same
 * bits for a token whether the launch holds 1 token or 512, whatever tile or block it lands in.
 * Each weight chunk is loaded once per TT tokens. Why not cuBLAS: its kernels (tile, split-K,
 * reduction order) are chosen per shape, so a token's result would change with the batch;
 * bench/bench_gpu measures what the invariant product costs against cuBLAS's choice.
 * The reference is the CPU backend (model/cpu.c), compared on every fixture by tests/gpu. */
#include <cuda_bf16.h>

#include "cu_kernels.h"

#define RW     4 /* rows per warp */
#define TT     8 /* tokens per warp */
#define WARPS  4 /* warps per block: a block covers RW * WARPS rows */
#define KCHUNK 8 /* elements per lane per step on the vector path */
/* Matrices of fewer rows than this (x_proj, the head) would leave most of the GPU idle at a few
 * tokens: SPLIT_K warps share their rows and split K. */
#define SPLIT_BELOW 512
#define SPLIT_K     8

static __device__ __forceinline__ void load8(const float *w, float *out) {
    float4 a = *reinterpret_cast<const float4 *>(w), b = *reinterpret_cast<const float4 *>(w + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

static __device__ __forceinline__ float bf16_bits(uint32_t h) {
    return __uint_as_float(h << 16);
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

/* SPLIT = 1: each warp owns its RW rows (WARPS warps per block). SPLIT > 1: the block's SPLIT
 * warps share RW rows and split K, warp w taking the 32-chunk groups w, w + SPLIT, ...; their
 * sums are added in warp order. Which one a matrix gets depends on its shape alone. */
template <typename WT, bool VEC, int SPLIT>
__global__ void __launch_bounds__(SPLIT > 1 ? 32 * SPLIT : 32 * WARPS)
    k_matmul(const WT *__restrict__ W, int n_rows, int K, const float *__restrict__ X, int ldx,
             float *Y, int ldy, int T, const float *__restrict__ bias, int epi) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = SPLIT > 1 ? blockIdx.x * RW : (blockIdx.x * WARPS + warp) * RW,
              t0 = blockIdx.y * TT, kw = SPLIT > 1 ? warp : 0;
    if (r0 >= n_rows) return;
    const int nr = n_rows - r0 < RW ? n_rows - r0 : RW, nt = T - t0 < TT ? T - t0 : TT;
    float acc[RW][TT];
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
    if (VEC) {
        for (int k = (lane + 32 * kw) * KCHUNK; k < K; k += 32 * SPLIT * KCHUNK) {
            float w[RW][KCHUNK];
#pragma unroll
            for (int r = 0; r < RW; r++) {
                if (r < nr) {
                    load8(W + (size_t)(r0 + r) * K + k, w[r]);
                } else {
#pragma unroll
                    for (int j = 0; j < KCHUNK; j++) w[r][j] = 0.0f;
                }
            }
#pragma unroll
            for (int t = 0; t < TT; t++) {
                if (t >= nt) break;
                float x[KCHUNK];
                load8(X + (size_t)(t0 + t) * ldx + k, x);
#pragma unroll
                for (int r = 0; r < RW; r++)
#pragma unroll
                    for (int j = 0; j < KCHUNK; j++) acc[r][t] = fmaf(w[r][j], x[j], acc[r][t]);
            }
        }
    } else {
        for (int k = lane + 32 * kw; k < K; k += 32 * SPLIT) {
            float w[RW];
#pragma unroll
            for (int r = 0; r < RW; r++) w[r] = r < nr ? load1(W + (size_t)(r0 + r) * K + k) : 0.0f;
#pragma unroll
            for (int t = 0; t < TT; t++) {
                if (t >= nt) break;
                float x = X[(size_t)(t0 + t) * ldx + k];
#pragma unroll
                for (int r = 0; r < RW; r++) acc[r][t] = fmaf(w[r], x, acc[r][t]);
            }
        }
    }
    /* butterfly: every lane ends with the same sum (a + b == b + a), in a fixed order */
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < TT; t++)
#pragma unroll
            for (int m = 16; m; m >>= 1) acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], m);
    __shared__ float part[SPLIT > 1 ? SPLIT : 1][RW * TT];
    if (SPLIT > 1) { /* the warps' sums, added in warp order by warp 0 */
#pragma unroll
        for (int r = 0; r < RW; r++)
#pragma unroll
            for (int t = 0; t < TT; t++)
                if (lane == r * TT + t) part[warp][lane] = acc[r][t];
        __syncthreads();
        if (warp) return;
        float sum = 0.0f;
        for (int w = 0; w < SPLIT; w++) sum += part[w][lane];
#pragma unroll
        for (int r = 0; r < RW; r++)
#pragma unroll
            for (int t = 0; t < TT; t++)
                if (lane == r * TT + t) acc[r][t] = sum;
    }
    /* lane r * TT + t writes (row r, token t) */
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) {
            if (lane != r * TT + t || r >= nr || t >= nt) continue;
            const int row = r0 + r;
            float v = acc[r][t] + (bias ? bias[row] : 0.0f);
            float *y = Y + (size_t)(t0 + t) * ldy + row;
            *y = epi == CU_EPI_ADD ? *y + v : v;
        }
}

/* ---------------------------------------------------------------- version 2: tensor cores
 *
 * For BF16 weights (K a multiple of 32): mma.sync m16n8k16, bf16 x bf16 -> f32. A warp owns 16
 * rows and up to TC_TOK tokens (8-token tiles); the block's SPLIT warps share the rows and
 * split K in 32-wide steps (warp w takes steps w, w + SPLIT, ...), their sums added in warp
 * order. The activations stay f32 in memory; each is split into hi = bf16(x) and lo = bf16(x -
 * hi) and both are multiplied (two MMAs), so the product keeps about 16 bits of x, not 8.
 * Thread (g, q) of a warp loads 8 consecutive weights of rows g and g + 8 at k = 8q and the same
 * 8 activations of token g, and feeds them to two MMAs as their k indices {2q, 2q+1, 2q+8, 2q+9}:
 * a fixed permutation of K inside the step, the same for every launch. Invariance: an MMA output
 * depends only on its own row and column, missing tokens are zero columns, and the K order is
 * fixed by the shape. */

#define TC_TOK 32 /* tokens per block: 4 tiles of 8 */

static __device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0,
                                                uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
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

template <int SPLIT>
__global__ void __launch_bounds__(32 * SPLIT)
    k_matmul_tc(const __nv_bfloat16 *__restrict__ W, int n_rows, int K, const float *__restrict__ X,
                int ldx, float *Y, int ldy, int T, const float *__restrict__ bias, int epi) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int r0 = blockIdx.x * 16, t0 = blockIdx.y * TC_TOK;
    const int nt = T - t0 < TC_TOK ? T - t0 : TC_TOK, tiles = (nt + 7) / 8;
    const bool va = r0 + g < n_rows, vb = r0 + g + 8 < n_rows;
    const __nv_bfloat16 *wa = W + (size_t)(r0 + g) * K, *wb = W + (size_t)(r0 + g + 8) * K;
    float acc[TC_TOK / 8][4];
#pragma unroll
    for (int i = 0; i < TC_TOK / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int kb = warp * 32; kb < K; kb += 32 * SPLIT) {
        const int k = kb + 8 * q;
        const uint4 A0 = va ? *reinterpret_cast<const uint4 *>(wa + k) : zero,
                    A1 = vb ? *reinterpret_cast<const uint4 *>(wb + k) : zero;
        const uint32_t a1[4] = {A0.x, A1.x, A0.y, A1.y}, a2[4] = {A0.z, A1.z, A0.w, A1.w};
#pragma unroll
        for (int i = 0; i < TC_TOK / 8; i++) {
            if (i >= tiles) break;
            const int t = t0 + 8 * i + g;
            float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (t < T) load8(X + (size_t)t * ldx + k, x);
            uint32_t h01, l01, h23, l23, h45, l45, h67, l67;
            split2(x[0], x[1], &h01, &l01);
            split2(x[2], x[3], &h23, &l23);
            split2(x[4], x[5], &h45, &l45);
            split2(x[6], x[7], &h67, &l67);
            mma_bf16(acc[i], a1, h01, h23);
            mma_bf16(acc[i], a1, l01, l23);
            mma_bf16(acc[i], a2, h45, h67);
            mma_bf16(acc[i], a2, l45, l67);
        }
    }
    __shared__ float part[SPLIT][TC_TOK / 8 * 4][32];
#pragma unroll
    for (int i = 0; i < TC_TOK / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) part[warp][i * 4 + j][lane] = acc[i][j];
    __syncthreads();
    if (warp) return;
#pragma unroll
    for (int i = 0; i < TC_TOK / 8; i++) {
        if (i >= tiles) break;
#pragma unroll
        for (int j = 0; j < 4; j++) { /* c0, c1: row g; c2, c3: row g + 8; tokens 2q, 2q + 1 */
            float v = part[0][i * 4 + j][lane];
            for (int w = 1; w < SPLIT; w++) v += part[w][i * 4 + j][lane];
            const int row = r0 + g + (j >= 2 ? 8 : 0), t = t0 + 8 * i + 2 * q + (j & 1);
            if (row >= n_rows || t >= T) continue;
            v = v + (bias ? bias[row] : 0.0f);
            float *y = Y + (size_t)t * ldy + row;
            *y = epi == CU_EPI_ADD ? *y + v : v;
        }
    }
}

template <typename WT, bool VEC>
static void launch(const WT *w, int n_rows, int K, const float *X, int ldx, float *Y, int ldy,
                   int T, const float *bias, int epi, cudaStream_t st) {
    if (n_rows < SPLIT_BELOW) {
        dim3 grid((n_rows + RW - 1) / RW, (T + TT - 1) / TT);
        k_matmul<WT, VEC, SPLIT_K>
            <<<grid, 32 * SPLIT_K, 0, st>>>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
    } else {
        dim3 grid((n_rows + RW * WARPS - 1) / (RW * WARPS), (T + TT - 1) / TT);
        k_matmul<WT, VEC, 1>
            <<<grid, 32 * WARPS, 0, st>>>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
    }
}

void cu_matmul(const cu_mat *W, int n_rows, const float *X, int ldx, float *Y, int ldy, int T,
               const float *bias, int epi, cudaStream_t st) {
    if (T <= 0 || n_rows <= 0) return;
    const int K = W->cols;
    /* 16-byte vector loads need rows and X rows that start on 16 bytes: a property of the
     * model's shape, so the same path serves every batch */
    const size_t esize = W->dtype == 0 ? 4 : 2;
    const bool vec = K % KCHUNK == 0 && ((size_t)K * esize) % 16 == 0 && ldx % 4 == 0 &&
                     (uintptr_t)W->w % 16 == 0 && (uintptr_t)X % 16 == 0;
    if (W->dtype == 0) {
        const float *w = static_cast<const float *>(W->w);
        if (vec)
            launch<float, true>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
        else
            launch<float, false>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
    } else if (vec && K % 32 == 0 && n_rows >= SPLIT_BELOW) {
        /* tensor cores for the large matrices (in_proj, out_proj); longer rows: K split more
         * ways. The short ones (x_proj, the head) have too few 16-row tiles to fill the GPU and
         * run faster on the CUDA-core kernel below (measured: bench/RESULTS.md) */
        const __nv_bfloat16 *w = static_cast<const __nv_bfloat16 *>(W->w);
        dim3 grid((n_rows + 15) / 16, (T + TC_TOK - 1) / TC_TOK);
        if (K >= 2048)
            k_matmul_tc<8><<<grid, 32 * 8, 0, st>>>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
        else
            k_matmul_tc<4><<<grid, 32 * 4, 0, st>>>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
    } else {
        const __nv_bfloat16 *w = static_cast<const __nv_bfloat16 *>(W->w);
        if (vec)
            launch<__nv_bfloat16, true>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
        else
            launch<__nv_bfloat16, false>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
    }
}
