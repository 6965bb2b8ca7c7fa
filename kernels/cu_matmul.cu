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
#include "cu_ops.h"

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

int cu_in_proj_conv_plan(const cu_layer *L, const cu_batch *b, int D, int E, int K) {
    const cu_mm p = cu_mm_plan(&L->in_proj, 2 * E, nullptr, D, b->T);
    const bool one_tile = b->T <= CU_FUSE_MAX_T, decode = b->T == b->n_seq && b->T <= cu_fold_max;
    if (!(one_tile || decode) || !b->n_seq || (p.kind != CU_MM_TC4 && p.kind != CU_MM_TC8) ||
        K != 4)
        return CU_IPC_NONE;
    return one_tile ? CU_IPC_NORM : CU_IPC_PLAIN;
}

void cu_in_proj_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *x,
                     float *xz, float *u, int D, int E, float eps, cudaStream_t st) {
    const cu_mm p = cu_mm_plan(&L->in_proj, 2 * E, nullptr, D, b->T);
    if (p.kind == CU_MM_TC8)
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
