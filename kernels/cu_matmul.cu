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
    } else {
        const __nv_bfloat16 *w = static_cast<const __nv_bfloat16 *>(W->w);
        if (vec)
            launch<__nv_bfloat16, true>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
        else
            launch<__nv_bfloat16, false>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st);
    }
}
