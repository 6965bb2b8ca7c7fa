/* cu_mamba.cu: the per-token and per-sequence kernels of a Mamba-1 block (../shared/DESIGN.md,
 * "The maths"): embedding gather, RMSNorm / LayerNorm, the causal depthwise conv with its
 * window carried in the slot, the selective scan from each slot's state, and rollback. The
 * work of each block is in cu_ops.h, shared with the persistent step kernel (cu_step.cu).
 *
 * States are addressed in place by slot index: sequence s reads buffer cur[s] of slot[s] and
 * writes the other one, so the state before a span survives and rollback replays the span's
 * saved inputs from it. Conv, scan and rollback share conv_step / scan_step, so a rolled-back
 * state is bit-identical to feeding the kept tokens (compiled with --fmad=false: no contraction
 * that could differ between two inlined copies). The plain C reference is model/cpu.c. */
#include "cu_ops.h"

/* Shapes compiled: d_conv 2-4 (4 in every Mamba checkpoint), d_state 4, 8, 16, 32 or 64 (16 in
 * every Mamba-1 checkpoint); the backend refuses others at load (cu_backend.cu). */
#define CHAN_T 128 /* channels per block of the slot operations */

__global__ void __launch_bounds__(CU_BLOCK)
    k_embed(const void *W, int bf16, const int32_t *tokens, float *h, int D) {
    pdl_wait_then_release();
    embed_block(W, bf16, tokens, h, D, blockIdx.x);
}

void cu_embed(const cu_mat *embed, const cu_batch *b, float *h, int D, cudaStream_t st) {
    if (b->T)
        cu_launch(k_embed, b->T, CU_BLOCK, 0, st, embed->w, embed->dtype != 0, b->tokens, h, D);
}

__global__ void __launch_bounds__(CU_BLOCK)
    k_norm(const float *x, const int *rows, float *out, const float *w, const float *bias, int D,
           float eps) {
    __shared__ float sh[CU_BLOCK / 32];
    pdl_wait_then_release();
    norm_block(x, rows, out, w, bias, D, eps, blockIdx.x, sh);
}

void cu_norm(const float *x, const int *rows, int n, float *out, const float *w, const float *bias,
             int D, float eps, cudaStream_t st) {
    if (n) cu_launch(k_norm, n, CU_BLOCK, 0, st, x, rows, out, w, bias, D, eps);
}

/* Thread = (channel, token). */
template <int K>
__global__ void __launch_bounds__(CU_BLOCK)
    k_conv(const float *conv_w, const float *conv_b, const int *off, int n_seq, const int *slot,
           const int *cur, float *state, size_t sf, size_t lofs, const float *xz, float *u,
           float *j_xin, int E, int T) {
    const int c = blockIdx.x * CU_BLOCK + threadIdx.x;
    pdl_wait_then_release();
    if (c < E)
        for (int t = blockIdx.y; t < T; t += gridDim.y)
            conv_tok<K>(conv_w, conv_b, off, n_seq, slot, cur, state, sf, lofs, xz, u, j_xin, E, c,
                        t);
}

template <int K>
static void launch_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                        const float *xz, float *u, int E, cudaStream_t st) {
    dim3 grid((E + CU_BLOCK - 1) / CU_BLOCK, b->T < 65535 ? b->T : 65535);
    cu_launch(k_conv<K>, grid, CU_BLOCK, 0, st, L->conv_w, L->conv_b, b->off, b->n_seq, b->slot,
              b->cur, ls->state, ls->state_floats, ls->layer_ofs, xz, u, ls->j_xin, E, b->T);
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

template <int N, typename WT, bool PRE>
__global__ void __launch_bounds__(CU_BLOCK)
    k_scan(const float *A_all, const float *Dv, const int *off, const int *slot, const int *cur,
           float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt, const float *dt_b,
           float *j_dt, const float *dbl, const float *xz, float *y, float *j_B, int E, int R) {
    extern __shared__ float rows_sh[]; /* scan_smem: SPAN_CHUNK rows of dbl, dt_proj columns */
    scan_block<N, WT, PRE>(A_all, Dv, off, slot, cur, state, sf, lofs, u, Wdt, dt_b, j_dt, dbl, xz,
                           y, j_B, E, R, blockIdx.x * SCAN_CPB(N), blockIdx.y, rows_sh, PdlWait());
}

template <int N, typename WT, bool PRE>
__global__ void __launch_bounds__(CU_BLOCK)
    k_scan_chan(const float *A_all, const float *Dv, const int *off, const int *slot,
                const int *cur, float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt,
                const float *dt_b, float *j_dt, const float *dbl, const float *xz, float *y,
                float *j_B, int E, int R) {
    extern __shared__ float rows_sh[]; /* scan_chan_smem */
    scan_chan_block<N, WT, PRE>(A_all, Dv, off, slot, cur, state, sf, lofs, u, Wdt, dt_b, j_dt, dbl,
                                xz, y, j_B, E, R, blockIdx.x * CU_BLOCK, blockIdx.y, rows_sh,
                                PdlWait());
}

template <typename WT, bool PRE, bool RS>
__global__ void __launch_bounds__(CU_BLOCK)
    k_scan_quad(const float *A_all, const float *Dv, const int *off, const int *slot,
                const int *cur, float *state, size_t sf, size_t lofs, const float *u, const WT *Wdt,
                const float *dt_b, float *j_dt, const float *dbl, const float *xz, float *y,
                float *j_B, int E, int R) {
    extern __shared__ float rows_sh[]; /* scan_quad_smem */
    scan_quad_block<WT, PRE, RS>(A_all, Dv, off, slot, cur, state, sf, lofs, u, Wdt, dt_b, j_dt,
                                 dbl, xz, y, j_B, E, R, blockIdx.x * QUAD_CH, blockIdx.y, rows_sh,
                                 PdlWait());
}

template <int G, typename WT>
__global__ void __launch_bounds__(CU_BLOCK) k_dt(const WT *Wdt, const float *dt_b, const float *dbl,
                                                 float *j_dt, int E, int R, int ld, int T) {
    extern __shared__ float dt_sh[]; /* dt_smem */
    pdl_wait_then_release();
    dt_block<G, WT>(Wdt, dt_b, dbl, j_dt, E, R, ld, T, blockIdx.x * CU_BLOCK, blockIdx.y * DT_TOK,
                    dt_sh);
}

/* Batches of cu_scan_chan_min sequences or more take a thread per channel (scan_chan_block; with
 * spans of several tokens and d_state 16, four threads a channel: scan_quad_block), fewer a
 * thread per (channel, state group) (scan_block): the same bits, so the choice by batch shape
 * keeps invariance. Forwards with a long span compute dt first for all their tokens at once
 * (dt_block, the same bits again), so the scan's walk through that span does not carry it: from
 * cu_dt_min tokens in a batch that takes scan_chan_block (which sums a token's dt alone), from
 * cu_dt_min_few in one that takes scan_block (whose lanes share the sum). H200, bench/RESULTS.md:
 * a prompt chunk of 128 beside 63 decoding sequences 5.4x -> 3.5x a decoding step; one sequence of
 * 512 tokens 17.8k -> 22.3k bytes/s, but at 32-128 tokens mostly slower. */
int cu_dt_min = 32, cu_dt_min_few = 256;
/* H200 (bench/RESULTS.md): from 4 sequences the thread per channel wins (354M 8 x 1 1.56 -> 1.16
 * ms, 12 x 1 2.07 -> 1.46, 8 x 4 2.35 -> 1.84); at 2 it loses on spans (2 x 64 5.43 -> 6.36). */
int cu_scan_chan_min = 4;
/* d_state 16 in batches of cu_scan_chan_min sequences or more: four threads a channel
 * (scan_quad_block) instead of one, with 0 never, 1 for forwards that hold a span of two tokens
 * or more, 2 always (MB_CUDA_SCAN_QUAD). H200 (bench/RESULTS.md): 16 sequences x 16 tokens 8.61
 * -> 7.52 ms (354M), 64 x 4 7.69 -> 7.44; but decode steps slower (64 x 1 2.97 -> 3.19: a
 * token's arithmetic spread over four threads buys nothing when each thread has one token). */
int cu_scan_quad = 1;

template <typename K> static void big_smem(K *k, size_t shared) {
    if (shared > 48 * 1024)
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared);
}

template <int N, typename WT, bool PRE>
static void launch_scan_pre(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                            const float *u, const float *dbl, const float *xz, float *y, int E,
                            int R, size_t lofs, int flags, cudaStream_t st) {
    const WT *w = static_cast<const WT *>(L->dt_proj.w);
    const int bf16 = sizeof(WT) == 2;
    if (b->n_seq >= cu_scan_chan_min && N == 16 && cu_scan_quad > (b->T == b->n_seq)) {
        auto k = flags & CU_SCAN_LONG ? k_scan_quad<WT, PRE, true> : k_scan_quad<WT, PRE, false>;
        dim3 grid((E + QUAD_CH - 1) / QUAD_CH, b->n_seq);
        const size_t shared = scan_quad_smem(R, bf16);
        big_smem(k, shared);
        cu_launch(k, grid, CU_BLOCK, shared, st, L->A, L->D, b->off, b->slot, b->cur, ls->state,
                  ls->state_floats, lofs, u, w, L->dt_b, ls->j_dt, dbl, xz, y, ls->j_B, E, R);
        return;
    }
    if (b->n_seq >= cu_scan_chan_min) {
        auto k = k_scan_chan<N, WT, PRE>;
        dim3 grid((E + CU_BLOCK - 1) / CU_BLOCK, b->n_seq);
        const size_t shared = scan_chan_smem(R, N, bf16);
        big_smem(k, shared);
        cu_launch(k, grid, CU_BLOCK, shared, st, L->A, L->D, b->off, b->slot, b->cur, ls->state,
                  ls->state_floats, lofs, u, w, L->dt_b, ls->j_dt, dbl, xz, y, ls->j_B, E, R);
        return;
    }
    dim3 grid((E + SCAN_CPB(N) - 1) / SCAN_CPB(N), b->n_seq);
    const size_t shared = scan_smem(R, N, bf16);
    auto k = k_scan<N, WT, PRE>;
    big_smem(k, shared);
    cu_launch(k, grid, CU_BLOCK, shared, st, L->A, L->D, b->off, b->slot, b->cur, ls->state,
              ls->state_floats, lofs, u, w, L->dt_b, ls->j_dt, dbl, xz, y, ls->j_B, E, R);
}

template <int N, typename WT>
static void launch_scan_wt(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                           const float *u, const float *dbl, const float *xz, float *y, int E,
                           int R, int K, int flags, cudaStream_t st) {
    const size_t lofs = ls->layer_ofs + (size_t)E * (size_t)(K - 1);
    if (!(flags & CU_SCAN_PRE)) {
        launch_scan_pre<N, WT, false>(L, b, ls, u, dbl, xz, y, E, R, lofs, flags, st);
        return;
    }
    const size_t shared = dt_smem(R, sizeof(WT) == 2);
    big_smem(k_dt<SCAN_G(N), WT>, shared);
    dim3 grid((E + CU_BLOCK - 1) / CU_BLOCK, (b->T + DT_TOK - 1) / DT_TOK);
    cu_launch(k_dt<SCAN_G(N), WT>, grid, CU_BLOCK, shared, st,
              static_cast<const WT *>(L->dt_proj.w), L->dt_b, dbl, ls->j_dt, E, R, R + 2 * N, b->T);
    launch_scan_pre<N, WT, true>(L, b, ls, u, dbl, xz, y, E, R, lofs, flags, st);
}

template <int N>
static void launch_scan(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls,
                        const float *u, const float *dbl, const float *xz, float *y, int E, int R,
                        int K, int flags, cudaStream_t st) {
    if (L->dt_proj.dtype != 0)
        launch_scan_wt<N, __nv_bfloat16>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
    else
        launch_scan_wt<N, float>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
}

void cu_scan(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *u,
             const float *dbl, const float *xz, float *y, int E, int N, int R, int K, int flags,
             cudaStream_t st) {
    if (!b->n_seq) return;
    switch (N) { /* the backend refuses other sizes at load */
    case 4:
        launch_scan<4>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
        break;
    case 8:
        launch_scan<8>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
        break;
    case 16:
        launch_scan<16>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
        break;
    case 32:
        launch_scan<32>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
        break;
    default:
        launch_scan<64>(L, b, ls, u, dbl, xz, y, E, R, K, flags, st);
        break;
    }
}

/* ---------------------------------------------------------------- slot operations */

/* Thread = (layer, channel) of one operation (blockIdx.z): its conv window (K - 1 values, E
 * apart) and its N states of that layer. A rollback advances the state before the span by the
 * first n_keep saved inputs through conv_step and scan_step, as the forward advanced it. */
template <int K, int N>
__global__ void __launch_bounds__(CHAN_T)
    k_slot_ops(const cu_layer *layers, float *state, size_t sf, const float *j_xin,
               const float *j_dt, const float *j_B, int max_tokens, int E, const cu_slot_ops ops) {
    const int c = blockIdx.x * CHAN_T + threadIdx.x, l = blockIdx.y;
    if (c >= E) return;
    const cu_slot_op op = ops.op[blockIdx.z];
    const size_t lofs = (size_t)l * (size_t)E * (size_t)(K - 1 + N);
    float *dst = slot_buf(state, sf, op.slot, op.cur) + lofs;
    float *sdst = dst + (size_t)E * (K - 1) + (size_t)c * N;
    if (op.kind != CU_OP_ROLLBACK) {
        const float *src =
            op.kind == CU_OP_COPY ? slot_buf(state, sf, op.src, op.src_cur) + lofs : nullptr;
        const float *ssrc = src ? src + (size_t)E * (K - 1) + (size_t)c * N : nullptr;
#pragma unroll
        for (int k = 0; k < K - 1; k++)
            dst[(size_t)k * E + c] = src ? src[(size_t)k * E + c] : 0.0f;
#pragma unroll
        for (int n = 0; n < N; n++) sdst[n] = ssrc ? ssrc[n] : 0.0f;
        return;
    }
    const cu_layer *L = &layers[l];
    const float *src = slot_buf(state, sf, op.slot, !op.cur) + lofs;
    float win[K > 1 ? K - 1 : 1], st[N], A[N];
#pragma unroll
    for (int k = 0; k < K - 1; k++) win[k] = src[(size_t)k * E + c];
    const float *ssrc = src + (size_t)E * (K - 1) + (size_t)c * N;
#pragma unroll
    for (int n = 0; n < N; n++) st[n] = ssrc[n], A[n] = L->A[(size_t)c * N + n];
    const float bias = L->conv_b[c];
    const size_t lt = (size_t)l * (size_t)max_tokens;
    for (int i = 0; i < op.n_keep; i++) {
        const size_t t = lt + (size_t)(op.j_start + i);
        const float ut = conv_step<K>(win, L->conv_w + c, E, bias, j_xin[t * E + c]);
        scan_step<N>(st, A, j_dt[t * E + c], ut, j_B + t * N, nullptr);
    }
#pragma unroll
    for (int k = 0; k < K - 1; k++) dst[(size_t)k * E + c] = win[k];
#pragma unroll
    for (int n = 0; n < N; n++) sdst[n] = st[n];
}

template <int K, int N>
static void launch_slot_ops(const cu_layer *layers, int n_layer, float *state, size_t sf,
                            const float *j_xin, const float *j_dt, const float *j_B, int max_tokens,
                            int E, const cu_slot_ops *ops, cudaStream_t st) {
    dim3 grid((E + CHAN_T - 1) / CHAN_T, n_layer, ops->n);
    k_slot_ops<K, N>
        <<<grid, CHAN_T, 0, st>>>(layers, state, sf, j_xin, j_dt, j_B, max_tokens, E, *ops);
}

template <int K>
static void slot_ops_n(const cu_layer *layers, int n_layer, float *state, size_t sf,
                       const float *j_xin, const float *j_dt, const float *j_B, int max_tokens,
                       int E, int N, const cu_slot_ops *ops, cudaStream_t st) {
    switch (N) {
    case 4:
        launch_slot_ops<K, 4>(layers, n_layer, state, sf, j_xin, j_dt, j_B, max_tokens, E, ops, st);
        break;
    case 8:
        launch_slot_ops<K, 8>(layers, n_layer, state, sf, j_xin, j_dt, j_B, max_tokens, E, ops, st);
        break;
    case 16:
        launch_slot_ops<K, 16>(layers, n_layer, state, sf, j_xin, j_dt, j_B, max_tokens, E, ops,
                               st);
        break;
    case 32:
        launch_slot_ops<K, 32>(layers, n_layer, state, sf, j_xin, j_dt, j_B, max_tokens, E, ops,
                               st);
        break;
    default:
        launch_slot_ops<K, 64>(layers, n_layer, state, sf, j_xin, j_dt, j_B, max_tokens, E, ops,
                               st);
        break;
    }
}

void cu_slot_ops_run(const cu_layer *layers_dev, int n_layer, float *state, size_t state_floats,
                     const float *j_xin, const float *j_dt, const float *j_B, int max_tokens, int E,
                     int N, int K, const cu_slot_ops *ops, cudaStream_t st) {
    if (!ops->n) return;
    switch (K) { /* the backend refuses other widths at load */
    case 2:
        slot_ops_n<2>(layers_dev, n_layer, state, state_floats, j_xin, j_dt, j_B, max_tokens, E, N,
                      ops, st);
        break;
    case 3:
        slot_ops_n<3>(layers_dev, n_layer, state, state_floats, j_xin, j_dt, j_B, max_tokens, E, N,
                      ops, st);
        break;
    default:
        slot_ops_n<4>(layers_dev, n_layer, state, state_floats, j_xin, j_dt, j_B, max_tokens, E, N,
                      ops, st);
        break;
    }
}

cudaError_t cu_trace_bind_mamba(unsigned long long *buf) {
    return trace_bind(buf);
}
