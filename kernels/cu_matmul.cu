/* cu_matmul.cu: the projections (in_proj, x_proj, out_proj, the head) as one batch-invariant
 * matrix product over all tokens of a forward (the block functions are in cu_ops.h):
 *
 *   Y[t, r] (op)= W[r, :] . X[t, :] + bias[r]      W (rows, K) F32 or BF16, X (T, ldx) F32
 *
 * Which kernel a matrix gets (cu_mm_plan) depends on its shape and alignment alone, never on T:
 * tensor cores for BF16 matrices of 512+ rows, the CUDA-core kernel otherwise (K split over the
 * block's warps below 512 rows, where few row tiles would leave most of the GPU idle). So a
 * token's bits are the same whether the launch holds 1 token or 512. Why not cuBLAS: its
 * kernels (tile, split-K, reduction order) are chosen per shape and batch, so a token's result
 * would change with the batch; bench/bench_gpu measures what the invariant product costs against
 * cuBLAS's choice. The reference is the CPU backend (model/cpu.c), compared on every fixture by
 * tests/gpu. */
#include <cooperative_groups.h>

#include "cu_ops.h"

namespace cg = cooperative_groups;

#define SPLIT_BELOW 512 /* matrices with fewer rows split K over the block's warps */

bool cu_pdl = true; /* cu_kernels.h */

cu_mm cu_mm_plan(const cu_mat *W, int n_rows, const float *X, int ldx, int T) {
    const int K = W->cols;
    /* 16-byte vector loads need rows and X rows that start on 16 bytes: a property of the
     * model's shape, so the same path serves every batch */
    const size_t esize = W->dtype == 0 ? 4 : 2;
    const bool vec = K % MM_KCHUNK == 0 && ((size_t)K * esize) % 16 == 0 && ldx % 4 == 0 &&
                     (uintptr_t)W->w % 16 == 0 && (uintptr_t)X % 16 == 0;
    const bool split = n_rows < SPLIT_BELOW;
    cu_mm p;
    if (W->dtype != 0 && vec && K % 32 == 0 && !split) {
        /* longer rows: K split more ways (8 warps per 16-row tile, else 4, two tiles a block) */
        p.kind = K >= 2048 ? CU_MM_TC8 : CU_MM_TC4;
        p.gx = (n_rows + (p.kind == CU_MM_TC8 ? 15 : 31)) / (p.kind == CU_MM_TC8 ? 16 : 32);
        p.gy = (T + TC_TOK - 1) / TC_TOK;
        return p;
    }
    p.kind = (W->dtype != 0 ? CU_MM_BF16 : 0) | (vec ? CU_MM_VEC : 0) | (split ? CU_MM_SPLIT : 0);
    p.gx =
        split ? (n_rows + MM_RW - 1) / MM_RW : (n_rows + MM_RW * MM_WARPS - 1) / (MM_RW * MM_WARPS);
    p.gy = (T + MM_TT - 1) / MM_TT;
    return p;
}

/* Before the wait: the first token tile's block of each row tile prefetches its weight rows
 * (rows r0 .. r0 + n, whole rows of K, 16-byte aligned when VEC). */
template <typename WT>
static __device__ __forceinline__ void prefetch_rows(const WT *W, int n_rows, int K, int r0, int n,
                                                     bool aligned) {
    if (!aligned || threadIdx.x || blockIdx.y || r0 >= n_rows) return;
    if (n > n_rows - r0) n = n_rows - r0;
    prefetch_l2(W + (size_t)r0 * K, (unsigned)((size_t)n * K * sizeof(WT)));
}

template <typename WT, bool VEC, int SPLIT>
__global__ void __launch_bounds__(CU_BLOCK)
    k_matmul(const WT *__restrict__ W, int n_rows, int K, const float *__restrict__ X, int ldx,
             float *Y, int ldy, int T, const float *__restrict__ bias, int epi) {
    __shared__ float sh[MM_WARPS * 32];
    const int rows = SPLIT > 1 ? MM_RW : MM_RW * MM_WARPS;
    prefetch_rows(W, n_rows, K, blockIdx.x * rows, rows, VEC);
    matmul_block<WT, VEC, SPLIT>(W, n_rows, K, X, ldx, Y, ldy, T, bias, epi, blockIdx.x, blockIdx.y,
                                 sh, PdlWait());
}

template <int SPLIT, int TT, int AHEAD>
__global__ void __launch_bounds__(CU_BLOCK)
    k_matmul_tc(const __nv_bfloat16 *__restrict__ W, int n_rows, int K, const float *__restrict__ X,
                int ldx, float *Y, int ldy, int T, const float *__restrict__ bias, int epi) {
    __shared__ float sh[MM_WARPS * TT / 8 * 4 * 32];
    const int rows = SPLIT == 8 ? 16 : 32;
    prefetch_rows(W, n_rows, K, blockIdx.x * rows, rows, true);
    matmul_tc_block<SPLIT, false, TT, AHEAD>(W, n_rows, K, X, ldx, Y, ldy, T, bias, epi, blockIdx.x,
                                             blockIdx.y, sh, nullptr, nullptr, nullptr, PdlWait());
}

/* H200 (bench/RESULTS.md): 8 up to 16 tokens (354M 16 x 1 1.58 -> 1.48 ms, span of 16 1.87 ->
 * 1.81), 16 up to 64 (354M batch 64 best; bundled within 3 % of 8), 32 beyond (354M batch 256:
 * 16 was 8 % slower). */
int cu_tt_tiny = 8, cu_tt_small = 16, cu_tt_mid = TC_TOK; /* cu_kernels.h */
int cu_ahead8 = 1;                                        /* cu_kernels.h */
int cu_tcs_min_t = 32;                                    /* cu_kernels.h */

template <int SPLIT, int TT>
__global__ void __launch_bounds__(CU_BLOCK)
    k_matmul_tcs(const __nv_bfloat16 *__restrict__ W, int n_rows, int K,
                 const float *__restrict__ X, int ldx, float *Y, int ldy, int T,
                 const float *__restrict__ bias, int epi) {
    extern __shared__ uint32_t tcs_sh[]; /* tcs_smem */
    prefetch_rows(W, n_rows, K, blockIdx.x * TCS_ROWS, TCS_ROWS, true);
    pdl_wait_then_release();
    matmul_tcs_block<SPLIT, TT>(W, n_rows, K, X, ldx, Y, ldy, T, bias, epi, blockIdx.x, blockIdx.y,
                                tcs_sh);
}

/* The activation-sharing kernel for a tensor-core plan, when the forward is long enough for a
 * wave of blocks (one a SM: TCS_MIN_BLOCKS) and the block's activations fit shared memory at 8
 * tokens or more: false where it does not apply. H200 (bench/RESULTS.md): with fewer blocks it
 * lost (354M batch 64: out_proj 11 -> 25 us a layer); with a wave it gained (batch 256: 36 -> 27;
 * 512 tokens: 69 -> 52). */
#define TCS_MIN_BLOCKS 128
template <int SPLIT>
static bool launch_tcs(const __nv_bfloat16 *W, int n_rows, int K, const float *X, int ldx, float *Y,
                       int ldy, int T, const float *bias, int epi, cudaStream_t st) {
    if (T < cu_tcs_min_t || ldx % 4 || (uintptr_t)X % 16) return false;
    const size_t limit = 200 * 1024;
    const int tt = tcs_smem(K, 32) <= limit ? 32 : tcs_smem(K, 16) <= limit ? 16 : 8;
    const size_t shared = tcs_smem(K, tt);
    if (shared > limit) return false;
    auto k = tt == 32   ? k_matmul_tcs<SPLIT, 32>
             : tt == 16 ? k_matmul_tcs<SPLIT, 16>
                        : k_matmul_tcs<SPLIT, 8>;
    const dim3 grid((n_rows + TCS_ROWS - 1) / TCS_ROWS, (T + tt - 1) / tt);
    if (grid.x * grid.y < TCS_MIN_BLOCKS ||
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared) !=
            cudaSuccess)
        return false;
    cu_launch(k, grid, CU_BLOCK, shared, st, W, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
    return true;
}

/* ---------------------------------------------------------------- K split over a cluster
 *
 * Decode batches of cu_fold_max + 1 to cu_kc_max_t tokens (every span one token, RMSNorm,
 * d_conv 4): the norm, in_proj and the conv in one kernel whose SPLIT blocks of a thread-block
 * cluster are the SPLIT warps that split K in matmul_tc_block. Block kw of a cluster owns the K
 * steps kw, kw + SPLIT, ... (warp kw's steps) of KC_RB(RT) rows and KC_TOK tokens. The norm's
 * statistics first: the cluster's blocks hold between them every strided partial of
 * norm_stats_block, whose warp sums they exchange through distributed shared memory and add in
 * its order. Then the block stages its steps of its tokens' normalised activations once in
 * shared memory, split into bf16 hi and lo as split2 splits them, and each warp multiplies 16
 * rows by its share of the tokens with warp kw's fragments and MMAs in warp kw's order. The
 * SPLIT partial sums are added in rank order through distributed shared memory, then the bias;
 * the block that adds a token's x channel runs its conv step (kc_conv). matmul_tc_block's,
 * norm_block's and conv_tok's bits, in one kernel instead of three. */
#define KC_TOK    32 /* tokens a block */
#define KC_RB(RT) (16 * (RT))

/* Words per token row of one half (hi or lo) of the staged activations: 16 a step, padded so
 * rows are 16 banks apart (a quarter-warp reads two rows). */
static __host__ __device__ inline int kc_ld(int steps) {
    return steps * 16 + (steps % 2 ? 0 : 16);
}

static size_t kc_smem(int K, int split, int rt) {
    const int steps = (K / 32 + split - 1) / split;
    return (2 * (size_t)KC_TOK * kc_ld(steps) + (size_t)KC_TOK * (KC_RB(rt) + 4) +
            8 * (size_t)KC_TOK + 2 * (size_t)KC_TOK) *
           sizeof(float);
}

/* The conv's operands for kc_conv. */
struct kc_fold {
    const float *conv_w, *conv_b;
    cu_batch b;
    cu_layer_state ls;
    float *u;
    int E;
};

/* The conv step of a decode batch (token t is sequence t's only token) for the x channels among a
 * thread's EB outputs (e0 + k * CU_BLOCK + thread, k < EB: token e / RB, row rb0 + e % RB), whose
 * in_proj values x[k] it holds: conv_tok's reads, arithmetic and writes for such a span, with
 * each phase's loads issued together. */
template <int EB>
static __device__ __forceinline__ void kc_conv(const kc_fold &f, int e0, int hi, int RB, int rb0,
                                               int c0, const float *x) {
    const int E = f.E;
    const float *src[EB];
    float *dst[EB];
    bool on[EB];
#pragma unroll
    for (int k = 0; k < EB; k++) {
        const int e = e0 + k * CU_BLOCK + threadIdx.x, s = c0 + e / RB;
        on[k] = e < hi && rb0 + e % RB < E;
        const int sl = on[k] ? f.b.slot[s] : 0, cu = on[k] ? f.b.cur[s] : 0;
        src[k] = slot_buf(f.ls.state, f.ls.state_floats, sl, cu) + f.ls.layer_ofs;
        dst[k] = slot_buf(f.ls.state, f.ls.state_floats, sl, !cu) + f.ls.layer_ofs;
    }
    float win[EB][3], cw[EB][4], cb[EB];
#pragma unroll
    for (int k = 0; k < EB; k++) {
        const int c = rb0 + (e0 + k * CU_BLOCK + (int)threadIdx.x) % RB;
#pragma unroll
        for (int j = 0; j < 3; j++) win[k][j] = on[k] ? src[k][(size_t)j * E + c] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) cw[k][j] = on[k] ? f.conv_w[(size_t)j * E + c] : 0.0f;
        cb[k] = on[k] ? f.conv_b[c] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < EB; k++) {
        if (!on[k]) continue;
        const int e = e0 + k * CU_BLOCK + threadIdx.x, t = c0 + e / RB, c = rb0 + e % RB;
        const float ut = conv_step<4>(win[k], cw[k], 1, cb[k], x[k]);
        f.u[(size_t)t * E + c] = ut;
        f.ls.j_xin[(size_t)t * E + c] = x[k];
#pragma unroll
        for (int j = 0; j < 3; j++) dst[k][(size_t)j * E + c] = win[k][j];
    }
}

/* W: in_proj (n_rows = 2E, K = D), X: the residual stream h (T, K), nw: the norm's weights, Y: xz
 * (T, n_rows). */
template <int SPLIT, int RT>
__global__ void __cluster_dims__(1, SPLIT, 1) __launch_bounds__(CU_BLOCK, 2)
    k_in_proj_kc(const __nv_bfloat16 *__restrict__ W, int n_rows, int K,
                 const float *__restrict__ X, const float *__restrict__ nw, float eps, float *Y,
                 int T, const float *__restrict__ bias, const kc_fold f) {
    extern __shared__ uint32_t kc_sh[]; /* kc_smem */
    constexpr int RB = KC_RB(RT), TG = 8 / RT, WTOK = KC_TOK / TG, NI = WTOK / 8, PLD = RB + 4;
    constexpr int AH = 2, VW = 8 / SPLIT, EB = (KC_TOK * RB / SPLIT + CU_BLOCK - 1) / CU_BLOCK;
    constexpr int TPW = KC_TOK / 8; /* tokens a warp stages */
    cg::cluster_group cluster = cg::this_cluster();
    const int kw = (int)cluster.block_rank();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int rt = warp % RT, tg = warp / RT, rb0 = blockIdx.x * RB, r0 = rb0 + rt * 16;
    const int c0 = blockIdx.z * KC_TOK, nt = T - c0 < KC_TOK ? T - c0 : KC_TOK;
    const int steps = K / 32, S = steps > kw ? (steps - kw + SPLIT - 1) / SPLIT : 0;
    const int ld = kc_ld((steps + SPLIT - 1) / SPLIT);
    uint32_t *hs = kc_sh, *ls = kc_sh + KC_TOK * ld;
    float *part = reinterpret_cast<float *>(kc_sh + 2 * KC_TOK * ld); /* (KC_TOK, PLD) */
    float *wsum = part + KC_TOK * PLD;                                /* (8, KC_TOK) */
    float2 *nst = reinterpret_cast<float2 *>(wsum + 8 * KC_TOK);      /* (KC_TOK) */
    const bool va = r0 + g < n_rows, vb = r0 + g + 8 < n_rows;
    const __nv_bfloat16 *wa = W + (size_t)(r0 + g) * K, *wb = W + (size_t)(r0 + g + 8) * K;
    if (threadIdx.x == 0 && blockIdx.z == 0 && rb0 < n_rows) { /* the rows towards L2 */
        const int nr = n_rows - rb0 < RB ? n_rows - rb0 : RB;
        const size_t bytes = (size_t)nr * K * sizeof(__nv_bfloat16),
                     share = bytes / SPLIT / 16 * 16;
        const size_t at = share * kw, n = kw == SPLIT - 1 ? bytes - at : share;
        if (n) prefetch_l2(reinterpret_cast<const char *>(W + (size_t)rb0 * K) + at, (unsigned)n);
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 A0[2][AH], A1[2][AH];
    auto load_w = [&](uint4 *a0, uint4 *a1, int m0) {
#pragma unroll
        for (int a = 0; a < AH; a++) {
            const int m = m0 + a, k = 32 * (kw + SPLIT * m) + 8 * q;
            a0[a] = va && m < S ? *reinterpret_cast<const uint4 *>(wa + k) : zero;
            a1[a] = vb && m < S ? *reinterpret_cast<const uint4 *>(wb + k) : zero;
        }
    };
    load_w(A0[0], A1[0], 0); /* before the wait */
    pdl_wait_then_release();
    { /* norm_stats_block's warp sums w = kw, kw + SPLIT, ... of each token */
        const int vw = kw + SPLIT * (warp % VW);
        for (int t0 = warp / VW; t0 < nt; t0 += 4 * SPLIT) { /* 4 tokens at once */
            float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
            for (int j = 32 * vw + lane; j < K; j += CU_BLOCK) {
                float x[4];
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    const int t = t0 + a * SPLIT;
                    x[a] = t < nt ? X[(size_t)(c0 + t) * K + j] : 0.0f;
                }
#pragma unroll
                for (int a = 0; a < 4; a++) v[a] = fmaf(x[a], x[a], v[a]);
            }
#pragma unroll
            for (int a = 0; a < 4; a++) {
#pragma unroll
                for (int m = 16; m; m >>= 1) v[a] += __shfl_xor_sync(0xffffffffu, v[a], m);
                if (!lane && t0 + a * SPLIT < nt) wsum[vw * KC_TOK + t0 + a * SPLIT] = v[a];
            }
        }
        cluster.sync();
        if (threadIdx.x < nt) { /* the 8 warp sums in warp order, from their blocks */
            const int t = threadIdx.x;
            float w8[8];
#pragma unroll
            for (int w = 0; w < 8; w++)
                w8[w] = *cluster.map_shared_rank(wsum + w * KC_TOK + t, w % SPLIT);
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < 8; w++) sum += w8[w];
            nst[t] = make_float2(0.0f, 1.0f / sqrtf(sum / (float)K + eps));
        }
        __syncthreads();
    }
    /* the activations of this block's steps: warp w stages tokens w, w + 8, ... (zero past nt
     * to a whole MMA column tile), its lanes the step's float4s, every load of a round first */
    const int per_tok = S * 8;
    for (int j0 = 0; j0 < per_tok; j0 += 64) {
        float4 x[TPW][2];
#pragma unroll
        for (int p = 0; p < TPW; p++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int t = warp + 8 * p, j = j0 + 32 * h + lane;
                const int k = 32 * (kw + SPLIT * (j >> 3)) + 4 * (j & 7);
                x[p][h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (t < nt && j < per_tok)
                    x[p][h] = *reinterpret_cast<const float4 *>(X + (size_t)(c0 + t) * K + k);
            }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int j = j0 + 32 * h + lane;
            if (j >= per_tok) continue;
            const float4 w4 =
                *reinterpret_cast<const float4 *>(nw + 32 * (kw + SPLIT * (j >> 3)) + 4 * (j & 7));
#pragma unroll
            for (int p = 0; p < TPW; p++) {
                const int t = warp + 8 * p;
                float4 v = x[p][h];
                if (t < nt) {
                    const float inv = nst[t].y;
                    v = make_float4(v.x * inv * w4.x, v.y * inv * w4.y, v.z * inv * w4.z,
                                    v.w * inv * w4.w);
                }
                const int w = t * ld + 16 * (j >> 3) + 2 * (j & 7);
                uint32_t h0, l0, h1, l1;
                split2(v.x, v.y, &h0, &l0);
                split2(v.z, v.w, &h1, &l1);
                *reinterpret_cast<uint2 *>(hs + w) = make_uint2(h0, h1);
                *reinterpret_cast<uint2 *>(ls + w) = make_uint2(l0, l1);
            }
        }
    }
    __syncthreads();
    float acc[NI][4];
#pragma unroll
    for (int i = 0; i < NI; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    const int tiles = (nt - tg * WTOK + 7) / 8; /* this warp's column tiles holding tokens */
    const uint32_t *hw = hs + (tg * WTOK + g) * ld + 4 * q, *lw = ls + (tg * WTOK + g) * ld + 4 * q;
    auto mma_group = [&](const uint4 *a0, const uint4 *a1, int m0) {
#pragma unroll
        for (int a = 0; a < AH; a++) {
            const int m = m0 + a;
            const uint32_t f1[4] = {a0[a].x, a1[a].x, a0[a].y, a1[a].y},
                           f2[4] = {a0[a].z, a1[a].z, a0[a].w, a1[a].w};
#pragma unroll
            for (int i = 0; i < NI; i++) {
                if (m < S && i < tiles) {
                    const uint4 h = *reinterpret_cast<const uint4 *>(hw + 8 * i * ld + 16 * m),
                                l = *reinterpret_cast<const uint4 *>(lw + 8 * i * ld + 16 * m);
                    mma_bf16(acc[i], f1, h.x, h.y);
                    mma_bf16(acc[i], f1, l.x, l.y);
                    mma_bf16(acc[i], f2, h.z, h.w);
                    mma_bf16(acc[i], f2, l.z, l.w);
                }
            }
        }
    };
    for (int m0 = 0; m0 < S; m0 += 2 * AH) { /* the next group's weights load during the MMAs */
        load_w(A0[1], A1[1], m0 + AH);
        mma_group(A0[0], A1[0], m0);
        if (m0 + 2 * AH < S) load_w(A0[0], A1[0], m0 + 2 * AH);
        mma_group(A0[1], A1[1], m0 + AH);
    }
    /* c0, c1: row g; c2, c3: row g + 8; tokens 2q, 2q + 1 of the column tile */
#pragma unroll
    for (int i = 0; i < NI; i++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            part[(tg * WTOK + 8 * i + 2 * q + (c & 1)) * PLD + rt * 16 + g + (c >= 2 ? 8 : 0)] =
                acc[i][c];
    cluster.sync();
    /* this block's share of the outputs: the SPLIT partials in rank order, every load first */
    const int n = nt * RB, lo = n * kw / SPLIT, hi = n * (kw + 1) / SPLIT;
    float p[EB][SPLIT], add[EB], v[EB];
#pragma unroll
    for (int k = 0; k < EB; k++) {
        const int e = lo + k * CU_BLOCK + threadIdx.x, t = e / RB, r = e % RB;
        const bool in = e < hi && rb0 + r < n_rows;
#pragma unroll
        for (int w = 0; w < SPLIT; w++)
            p[k][w] = in ? *cluster.map_shared_rank(part + t * PLD + r, w) : 0.0f;
        add[k] = in && bias ? bias[rb0 + r] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < EB; k++) {
        const int e = lo + k * CU_BLOCK + threadIdx.x, t = e / RB, r = e % RB;
        v[k] = p[k][0];
#pragma unroll
        for (int w = 1; w < SPLIT; w++) v[k] += p[k][w];
        v[k] = v[k] + add[k];
        if (e < hi && rb0 + r < n_rows) Y[(size_t)(c0 + t) * n_rows + rb0 + r] = v[k];
    }
    kc_conv<EB>(f, lo, hi, RB, rb0, c0, v);
    cluster.sync(); /* every block's partials have been read */
}

/* Row tiles a block of the cluster kernel: the most that still give a wave of ~128 blocks. */
static int kc_rt(int n_rows, int split) {
    for (int rt = 8; rt > 2; rt /= 2)
        if ((n_rows + KC_RB(rt) - 1) / KC_RB(rt) * split >= 120) return rt;
    return 2;
}

/* H200 (bench/RESULTS.md): decode batches of 12 and 16 5-7 % faster (354M 1.478 -> 1.396 ms,
 * bundled 0.136 -> 0.127), 24 and 32 1-3 %; 64 even on 354M and 11 % slower on the bundled
 * model; as the generic product (any T, no norm or conv folded) it was 0-17 % slower than
 * k_matmul_tc at most shapes, and with K split 8 ways (d_model 2048) 4 % slower at 16. */
int cu_kc_max_t = 32; /* cu_kernels.h */

/* Whether the cluster kernel takes in_proj (d_model D) of a batch: RMSNorm, d_conv 4, a decode
 * batch in its range, K split 4 ways, and its shared memory within what two blocks an SM hold. */
static bool kc_applies(const cu_layer *L, const cu_batch *b, const cu_mm *p, int D, int d_conv) {
    return p->kind == CU_MM_TC4 && !L->norm_b && d_conv == 4 && b->T == b->n_seq &&
           b->T > cu_fold_max && b->T <= cu_kc_max_t && kc_smem(D, 4, 8) <= 100 * 1024;
}

/* The plan has already left out the norm and conv kernels: a launch that cannot start leaves its
 * error for the forward's check, which fails the forward (no silent fallback). */
template <int SPLIT>
static void launch_in_proj_kc(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                              const float *h, float *xz, float *u, int D, int E, float eps,
                              cudaStream_t st) {
    const int rt = kc_rt(2 * E, SPLIT), T = b->T;
    auto k = rt == 8   ? k_in_proj_kc<SPLIT, 8>
             : rt == 4 ? k_in_proj_kc<SPLIT, 4>
                       : k_in_proj_kc<SPLIT, 2>;
    const size_t shared = kc_smem(D, SPLIT, rt);
    cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared);
    const dim3 grid((2 * E + KC_RB(rt) - 1) / KC_RB(rt), SPLIT, (T + KC_TOK - 1) / KC_TOK);
    const kc_fold f = {L->conv_w, L->conv_b, *b, *ls, u, E};
    cu_launch(k, grid, CU_BLOCK, shared, st, static_cast<const __nv_bfloat16 *>(L->in_proj.w),
              2 * E, D, h, L->norm_w, eps, xz, T, L->in_b, f);
}

/* Forwards of a few tokens on matrices of 1024+ rows: each warp's loads of 8 K steps at once (one
 * L2 round trip, not two), in 16-token tiles. H200: 354M batch 1 1.071 -> 1.007 ms; the bundled
 * model's out_proj (512 rows, 16 blocks) was 2 % slower with it, hence the row count. */
static bool tc_few(int n_rows, int T) {
    return T <= 8 && n_rows >= 1024 && cu_ahead8;
}

/* The tile of a forward of T tokens (8, 16 or TC_TOK): the same bits whichever. */
static int tc_tile(int T) {
    const int tt = T <= 16 ? cu_tt_tiny : T <= 64 ? cu_tt_small : T <= 256 ? cu_tt_mid : TC_TOK;
    return tt == 8 || tt == 16 ? tt : TC_TOK;
}

/* in_proj (with the norm folded in when NORM), then the conv of the block's x channels for its
 * tile's tokens (cu_in_proj_conv). A token's conv reads the span's earlier tokens from xz, so
 * every span must lie within one tile: one tile for the whole forward, or spans of one token. */
template <int SPLIT, int K, int TT, int AHEAD, bool NORM>
__global__ void __launch_bounds__(CU_BLOCK)
    k_in_proj_conv(const cu_layer L, const cu_batch b, const cu_layer_state ls, const float *x,
                   float *xz, float *u, int D, int E, float eps) {
    __shared__ float2 nstat[NORM ? TT : 1];
    __shared__ float sh[MM_WARPS * TT / 8 * 4 * 32];
    const int rows = SPLIT == 8 ? 16 : 32, r0 = blockIdx.x * rows, T = b.T, t0 = blockIdx.y * TT;
    const int nt = T - t0 < TT ? T - t0 : TT;
    const __nv_bfloat16 *w = static_cast<const __nv_bfloat16 *>(L.in_proj.w);
    prefetch_rows(w, 2 * E, D, r0, rows, true);
    auto pre = [&] {
        /* the conv's weights and its sequences' windows (K - 1 taps, E apart), towards L1 */
        const int i = threadIdx.x, n_win = b.n_seq * (K - 1);
        if (r0 < E && i < n_win) {
            const int s = i / (K - 1), k = i % (K - 1);
            prefetch_l1(slot_buf(ls.state, ls.state_floats, b.slot[s], b.cur[s]) + ls.layer_ofs +
                        (size_t)k * E + r0);
        } else if (r0 < E && i < n_win + K) {
            prefetch_l1(L.conv_w + (size_t)(i - n_win) * E + r0);
        }
        pdl_wait_then_release();
        if (NORM) norm_stats_block(x + (size_t)t0 * D, nt, D, eps, L.norm_b != nullptr, nstat, sh);
    };
    matmul_tc_block<SPLIT, NORM, TT, AHEAD>(w, 2 * E, D, x, D, xz, 2 * E, T, L.in_b, CU_EPI_STORE,
                                            blockIdx.x, blockIdx.y, sh, nstat, L.norm_w, L.norm_b,
                                            pre);
    if (r0 >= E) return;
    __syncthreads(); /* the tile's xz, written by every warp */
    for (int i = threadIdx.x; i < rows * nt; i += CU_BLOCK) {
        const int c = r0 + i % rows, t = t0 + i / rows;
        if (c < E)
            conv_tok<K>(L.conv_w, L.conv_b, b.off, b.n_seq, b.slot, b.cur, ls.state,
                        ls.state_floats, ls.layer_ofs, xz, u, ls.j_xin, E, c, t);
    }
}

/* Decode batches of up to cu_fold_max tokens take the conv in in_proj's blocks. H200
 * (bench/RESULTS.md): 354M at 8 sequences 1.63 -> 1.56 ms, but 16 1.63 -> 1.69 and 32 1.98 ->
 * 2.02 (the conv tail of the blocks that hold x rows then outlasts the kernel it saves). */
int cu_fold_max = 8; /* cu_kernels.h */

template <int SPLIT>
static void launch_in_proj_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                                const float *x, float *xz, float *u, int D, int E, float eps,
                                int gx, cudaStream_t st) {
    const int T = b->T;
    if (T <= CU_FUSE_MAX_T) { /* one tile: spans of any length, the norm folded in (x = h) */
        cu_launch(k_in_proj_conv<SPLIT, 4, 8, TC_AHEAD, true>, gx, CU_BLOCK, 0, st, *L, *b, *ls, x,
                  xz, u, D, E, eps);
        return;
    }
    const bool few = tc_few(2 * E, T);
    const int tt = few ? 16 : tc_tile(T);
    const dim3 grid(gx, (T + tt - 1) / tt); /* a decode batch: x = the norm's output */
#define IPC(TT, AH)                                                                                \
    cu_launch(k_in_proj_conv<SPLIT, 4, TT, AH, false>, grid, CU_BLOCK, 0, st, *L, *b, *ls, x, xz,  \
              u, D, E, eps)
    if (few)
        IPC(16, 8);
    else if (tt == 8)
        IPC(8, TC_AHEAD);
    else if (tt == 16)
        IPC(16, TC_AHEAD);
    else
        IPC(TC_TOK, TC_AHEAD);
#undef IPC
}

/* How in_proj runs for a batch: one tile with the norm and the conv (IPC_TILE), after the norm
 * kernel with the conv (IPC_PLAIN), the cluster kernel with both (IPC_KC), or none of these
 * (IPC_NONE: cu_norm, cu_matmul and cu_conv). */
enum { IPC_NONE, IPC_TILE, IPC_PLAIN, IPC_KC };
static int ipc_kind(const cu_layer *L, const cu_batch *b, int D, int E, int K) {
    const cu_mm p = cu_mm_plan(&L->in_proj, 2 * E, nullptr, D, b->T);
    if (!b->n_seq || (p.kind != CU_MM_TC4 && p.kind != CU_MM_TC8)) return IPC_NONE;
    const bool decode = b->T == b->n_seq;
    if (b->T <= CU_FUSE_MAX_T) return K == 4 ? IPC_TILE : IPC_NONE;
    if (kc_applies(L, b, &p, D, K)) return IPC_KC;
    return decode && b->T <= cu_fold_max && K == 4 ? IPC_PLAIN : IPC_NONE;
}

int cu_in_proj_conv_plan(const cu_layer *L, const cu_batch *b, int D, int E, int K) {
    switch (ipc_kind(L, b, D, E, K)) {
    case IPC_TILE:
    case IPC_KC:
        return CU_IPC_NORM | CU_IPC_CONV;
    case IPC_PLAIN:
        return CU_IPC_CONV;
    default:
        return 0;
    }
}

void cu_in_proj_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *x,
                     float *xz, float *u, int D, int E, int K, float eps, cudaStream_t st) {
    const cu_mm p = cu_mm_plan(&L->in_proj, 2 * E, nullptr, D, b->T);
    if (ipc_kind(L, b, D, E, K) == IPC_KC)
        launch_in_proj_kc<4>(L, b, ls, x, xz, u, D, E, eps, st);
    else if (p.kind == CU_MM_TC8)
        launch_in_proj_conv<8>(L, b, ls, x, xz, u, D, E, eps, p.gx, st);
    else
        launch_in_proj_conv<4>(L, b, ls, x, xz, u, D, E, eps, p.gx, st);
}

void cu_matmul(const cu_mat *W, int n_rows, const float *X, int ldx, float *Y, int ldy, int T,
               const float *bias, int epi, cudaStream_t st) {
    if (T <= 0 || n_rows <= 0) return;
    const cu_mm p = cu_mm_plan(W, n_rows, X, ldx, T);
    const bool few = p.kind >= CU_MM_TC4 && tc_few(n_rows, T);
    const int tt = few ? 16 : p.kind >= CU_MM_TC4 ? tc_tile(T) : 0;
    const dim3 grid(p.gx, tt ? (T + tt - 1) / tt : p.gy);
    const int K = W->cols;
    const float *wf = static_cast<const float *>(W->w);
    const __nv_bfloat16 *wb = static_cast<const __nv_bfloat16 *>(W->w);
#define MM(WT, w, VEC, SPLIT)                                                                      \
    cu_launch(k_matmul<WT, VEC, SPLIT>, grid, CU_BLOCK, 0, st, w, n_rows, K, X, ldx, Y, ldy, T,    \
              bias, epi)
    if ((p.kind == CU_MM_TC8 && launch_tcs<8>(wb, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st)) ||
        (p.kind == CU_MM_TC4 && launch_tcs<4>(wb, n_rows, K, X, ldx, Y, ldy, T, bias, epi, st)))
        return;
    switch (p.kind) {
    case CU_MM_TC8:
        cu_launch(few        ? k_matmul_tc<8, 16, 8>
                  : tt == 8  ? k_matmul_tc<8, 8, TC_AHEAD>
                  : tt == 16 ? k_matmul_tc<8, 16, TC_AHEAD>
                             : k_matmul_tc<8, TC_TOK, TC_AHEAD>,
                  grid, CU_BLOCK, 0, st, wb, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
        break;
    case CU_MM_TC4:
        cu_launch(few        ? k_matmul_tc<4, 16, 8>
                  : tt == 8  ? k_matmul_tc<4, 8, TC_AHEAD>
                  : tt == 16 ? k_matmul_tc<4, 16, TC_AHEAD>
                             : k_matmul_tc<4, TC_TOK, TC_AHEAD>,
                  grid, CU_BLOCK, 0, st, wb, n_rows, K, X, ldx, Y, ldy, T, bias, epi);
        break;
    case 0:
        MM(float, wf, false, 1);
        break;
    case CU_MM_VEC:
        MM(float, wf, true, 1);
        break;
    case CU_MM_SPLIT:
        MM(float, wf, false, MM_WARPS);
        break;
    case CU_MM_VEC | CU_MM_SPLIT:
        MM(float, wf, true, MM_WARPS);
        break;
    case CU_MM_BF16:
        MM(__nv_bfloat16, wb, false, 1);
        break;
    case CU_MM_BF16 | CU_MM_VEC:
        MM(__nv_bfloat16, wb, true, 1);
        break;
    case CU_MM_BF16 | CU_MM_SPLIT:
        MM(__nv_bfloat16, wb, false, MM_WARPS);
        break;
    default:
        MM(__nv_bfloat16, wb, true, MM_WARPS);
        break;
    }
#undef MM
}

cudaError_t cu_trace_bind_matmul(unsigned long long *buf) {
    return trace_bind(buf);
}
