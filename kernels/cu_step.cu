/* cu_step.cu: the forward of a small batch (decode at batch 1-32, verification spans of up to 32
 * bytes) as one persistent kernel. At a few tokens every operation of a layer is short, so a
 * forward of one kernel per operation costs its launch gaps: ~5 us per kernel, 6 per layer
 * (bench/RESULTS.md, "Per-kernel timeline"). Here one block per SM runs the same block functions
 * as those kernels (cu_ops.h), phase after phase, separated by grid barriers:
 *
 *   per layer: in_proj with the norm folded in, then each row tile's conv   | barrier
 *              x_proj                                                       | barrier
 *              dt_proj + selective scan + gate                              | barrier
 *              out_proj + residual                                          | barrier
 *
 * and while layer l runs, every block prefetches its share of layer l + 1's matrices into L2
 * (weights never depend on activations), so the phases read weights from L2, not HBM. Same
 * functions, same orders: a token's bits are those of the per-operation path (tests/gpu runs a
 * sequence alone here and inside large batches there). Compiled for d_conv 4 and d_state 16 (every
 * Mamba-1 checkpoint) with BF16 projections; other models take the per-operation path. */
#include <cooperative_groups.h>

#include "cu_ops.h"

namespace cg = cooperative_groups;

#define STEP_K 4
#define STEP_N 16

static __device__ void prefetch_l2(const void *p, size_t bytes) {
    const char *c = static_cast<const char *>(p);
    const size_t lines = (bytes + 127) / 128, stride = (size_t)gridDim.x * CU_BLOCK;
    for (size_t i = (size_t)blockIdx.x * CU_BLOCK + threadIdx.x; i < lines; i += stride)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + i * 128));
}

static __device__ size_t mat_bytes(const cu_mat &w) {
    return (size_t)w.rows * (size_t)w.cols * (w.dtype == 0 ? 4 : 2);
}

static __device__ void prefetch_layer(const cu_layer &L) {
    prefetch_l2(L.in_proj.w, mat_bytes(L.in_proj));
    prefetch_l2(L.x_proj.w, mat_bytes(L.x_proj));
    prefetch_l2(L.dt_proj.w, mat_bytes(L.dt_proj));
    prefetch_l2(L.out_proj.w, mat_bytes(L.out_proj));
}

/* Row tiles and token tiles of a plan at T tokens. */
static __device__ int mm_items(const cu_mm &p, int T) {
    const int tt = p.kind >= CU_MM_TC4 ? TC_TOK : MM_TT;
    return p.gx * ((T + tt - 1) / tt);
}

/* A tensor-core tile, with the norm folded in when nstat is given. */
template <int SPLIT>
static __device__ void tc_item(const __nv_bfloat16 *w, int n_rows, int K, const float *X, int ldx,
                               float *Y, int ldy, int T, const float *bias, int epi, int bx, int by,
                               float *sh, const float2 *nstat, const float *nw, const float *nb) {
    if (nstat)
        matmul_tc_block<SPLIT, true>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, bx, by, sh, nstat,
                                     nw, nb);
    else
        matmul_tc_block<SPLIT, false>(w, n_rows, K, X, ldx, Y, ldy, T, bias, epi, bx, by, sh,
                                      nullptr, nullptr, nullptr);
}

/* One block's item of a projection, by the plan's kernel (cu_step_prepare admits these four). */
static __device__ void mm_item(const cu_mm &p, const cu_mat &W, int n_rows, const float *X, int ldx,
                               float *Y, int ldy, int T, const float *bias, int epi, int item,
                               float *sh, const float2 *nstat, const float *nw, const float *nb) {
    const int bx = item % p.gx, by = item / p.gx;
    const __nv_bfloat16 *w = static_cast<const __nv_bfloat16 *>(W.w);
    switch (p.kind) {
    case CU_MM_TC8:
        tc_item<8>(w, n_rows, W.cols, X, ldx, Y, ldy, T, bias, epi, bx, by, sh, nstat, nw, nb);
        break;
    case CU_MM_TC4:
        tc_item<4>(w, n_rows, W.cols, X, ldx, Y, ldy, T, bias, epi, bx, by, sh, nstat, nw, nb);
        break;
    case CU_MM_BF16 | CU_MM_VEC:
        matmul_block<__nv_bfloat16, true, 1>(w, n_rows, W.cols, X, ldx, Y, ldy, T, bias, epi, bx,
                                             by, sh);
        break;
    default:
        matmul_block<__nv_bfloat16, true, MM_WARPS>(w, n_rows, W.cols, X, ldx, Y, ldy, T, bias, epi,
                                                    bx, by, sh);
        break;
    }
    __syncthreads(); /* the next item reuses sh */
}

/* Block 0 notes the time after each barrier (MB_CUDA_STEP_TRACE, for bench/profile_gpu.sh). */
static __device__ void mark(const cu_step_args &a, int &i) {
    if (!a.trace || blockIdx.x || threadIdx.x) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    a.trace[i++] = t;
}

__global__ void __launch_bounds__(CU_BLOCK, 1) k_step(const cu_step_args a) {
    extern __shared__ float smem[];
    float2 *nstat = reinterpret_cast<float2 *>(smem);
    float *work = smem + 2 * CU_STEP_MAX_T;
    cg::grid_group grid = cg::this_grid();
    const int nb = gridDim.x, bid = blockIdx.x;
    const cu_batch &b = a.b;
    const int T = b.T, ns = b.n_seq, D = a.D, E = a.E, N = a.N, R = a.R, V = a.V;
    const size_t MT = a.max_tokens;
    int mk = 0;
    mark(a, mk);
    prefetch_layer(a.layers[0]);
    for (int t = bid; t < T; t += nb)
        embed_block(a.embed.w, a.embed.dtype != 0, b.tokens, a.h, D, t);
    grid.sync();
    mark(a, mk);
    for (int l = 0; l < a.n_layer; l++) {
        const cu_layer &L = a.layers[l];
        if (l + 1 < a.n_layer) prefetch_layer(a.layers[l + 1]);
        const size_t lofs = (size_t)l * a.layer_floats;
        float *j_xin = a.j_xin + (size_t)l * MT * E, *j_dt = a.j_dt + (size_t)l * MT * E,
              *j_B = a.j_B + (size_t)l * MT * N;
        /* xz = in_proj(norm(h)), each block's tiles; then the conv of the tile's x channels */
        const int in_items = mm_items(a.in_mm, T), in_rows = a.in_mm.kind == CU_MM_TC8 ? 16 : 32;
        if (bid < in_items) norm_stats_block(a.h, T, D, a.eps, L.norm_b != nullptr, nstat, work);
        for (int item = bid; item < in_items; item += nb) {
            mm_item(a.in_mm, L.in_proj, 2 * E, a.h, D, a.xz, 2 * E, T, L.in_b, CU_EPI_STORE, item,
                    work, nstat, L.norm_w, L.norm_b);
            const int r0 = (item % a.in_mm.gx) * in_rows;
            if (r0 < E)
                for (int i = threadIdx.x; i < in_rows * T; i += CU_BLOCK) {
                    const int c = r0 + i % in_rows, t = i / in_rows;
                    if (c < E)
                        conv_tok<STEP_K>(L.conv_w, L.conv_b, b.off, ns, b.slot, b.cur, a.state,
                                         a.state_floats, lofs, a.xz, a.u, j_xin, E, c, t);
                }
        }
        grid.sync();
        mark(a, mk);
        /* [dt_low, B, C] = x_proj(u) */
        const int x_items = mm_items(a.x_mm, T);
        for (int item = bid; item < x_items; item += nb)
            mm_item(a.x_mm, L.x_proj, R + 2 * N, a.u, E, a.dbl, R + 2 * N, T, nullptr, CU_EPI_STORE,
                    item, work, nullptr, nullptr, nullptr);
        grid.sync();
        mark(a, mk);
        /* dt, the selective scan and the gate, per (sequence, SCAN_CPB channels) */
        const int cx = (E + SCAN_CPB(STEP_N) - 1) / SCAN_CPB(STEP_N);
        for (int item = bid; item < cx * ns; item += nb) {
            scan_block<STEP_N, __nv_bfloat16, false>(
                L.A, L.D, b.off, b.slot, b.cur, a.state, a.state_floats,
                lofs + (size_t)E * (STEP_K - 1), a.u,
                static_cast<const __nv_bfloat16 *>(L.dt_proj.w), L.dt_b, j_dt, a.dbl, a.xz, a.y,
                j_B, E, R, (item % cx) * SCAN_CPB(STEP_N), item / cx, work);
            __syncthreads();
        }
        grid.sync();
        mark(a, mk);
        /* h += out_proj(y) */
        const int out_items = mm_items(a.out_mm, T);
        for (int item = bid; item < out_items; item += nb)
            mm_item(a.out_mm, L.out_proj, D, a.y, E, a.h, D, T, L.out_b, CU_EPI_ADD, item, work,
                    nullptr, nullptr, nullptr);
        grid.sync();
        mark(a, mk);
    }
    if (!b.n_out) return;
    for (int i = bid; i < b.n_out; i += nb) {
        norm_block(a.h, b.rows, a.xn, a.nf_w, a.nf_b, D, a.eps, i, work);
        __syncthreads();
    }
    grid.sync();
    mark(a, mk);
    const int h_items = mm_items(a.head_mm, b.n_out);
    for (int item = bid; item < h_items; item += nb)
        mm_item(a.head_mm, a.head, V, a.xn, D, a.logits, V, b.n_out, nullptr, CU_EPI_STORE, item,
                work, nullptr, nullptr, nullptr);
    mark(a, mk);
}

static bool step_mm(int kind) {
    return kind == CU_MM_TC4 || kind == CU_MM_TC8 || kind == (CU_MM_BF16 | CU_MM_VEC) ||
           kind == (CU_MM_BF16 | CU_MM_VEC | CU_MM_SPLIT);
}

static size_t step_smem(const cu_step_args *a) {
    const size_t tc = (size_t)MM_WARPS * TC_TOK / 8 * 4 * 32 * sizeof(float),
                 scan = scan_smem(a->R, a->N, 1);
    return 2 * CU_STEP_MAX_T * sizeof(float) + (tc > scan ? tc : scan);
}

int cu_step_prepare(cu_step_args *a, int dev, int *blocks) {
    if (a->K != STEP_K || a->N != STEP_N || a->E % 4) return -1;
    if (a->in_mm.kind != CU_MM_TC4 && a->in_mm.kind != CU_MM_TC8) return -1;
    if (!step_mm(a->x_mm.kind) || !step_mm(a->out_mm.kind) || !step_mm(a->head_mm.kind)) return -1;
    int coop = 0, sms = 0, per_sm = 0;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        return -1;
    const size_t smem = step_smem(a);
    if (smem > 48 * 1024 &&
        cudaFuncSetAttribute(k_step, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem) !=
            cudaSuccess)
        return -1;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_step, CU_BLOCK, smem) !=
            cudaSuccess ||
        per_sm < 1)
        return -1;
    *blocks = sms; /* one block per SM: the fewest blocks a barrier waits for */
    return 0;
}

cudaError_t cu_step(const cu_step_args *a, int blocks, cudaStream_t st) {
    void *args[] = {const_cast<cu_step_args *>(a)};
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void *>(k_step), blocks, CU_BLOCK,
                                       args, step_smem(a), st);
}
