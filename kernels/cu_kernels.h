/* cu_kernels.h: the CUDA backend's kernels, as host functions that launch them on a stream.
 * Every shape is in floats unless said otherwise; T is the tokens of the forward, n_seq its
 * sequences, E = d_inner, N = d_state, K = d_conv, R = dt_rank, D = d_model.
 *
 * Batch invariance (../shared/DESIGN.md): every kernel computes each output from its own
 * token's (or its own sequence's) inputs, in an order fixed by the model's shape alone, never
 * by T, n_seq or the launch grid. So a token's logits are the same bits alone or in a batch of
 * 256, as a decode step or inside a span. No atomics, no split whose count or order varies (a K
 * split across the blocks of a cluster adds its partial sums in rank order, as the one-block
 * kernels add their warps'). */
#ifndef CU_KERNELS_H
#define CU_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

/* A weight matrix in device memory, [rows, cols] row-major, F32 or BF16 (mb_dtype values). */
typedef struct cu_mat {
    const void *w;
    int dtype;
    int rows, cols;
} cu_mat;

/* One layer's weights in device memory (see model/internal.h, mb_layer, for the shapes). */
typedef struct cu_layer {
    const float *norm_w, *norm_b;
    cu_mat in_proj;
    const float *in_b;
    const float *conv_w, *conv_b; /* (K, E) tap-major, (E) */
    cu_mat x_proj, dt_proj;    /* dt_proj transposed: (R, E), so a warp's channels read in a row */
    const float *dt_b, *A, *D; /* (E), (E, N) = -exp(A_log), (E) */
    cu_mat out_proj;
    const float *out_b;
} cu_layer;

/* The batch as the kernels see it, in device memory. */
typedef struct cu_batch {
    const int32_t *tokens; /* (T) */
    const int *off;        /* (n_seq + 1) */
    const int *slot;       /* (n_seq) */
    const int *cur;        /* (n_seq) which of the slot's two buffers is current */
    const int *rows;       /* (n_out) token index of each logits row */
    int T, n_seq, n_out;
} cu_batch;

/* Where the states and the span inputs of one layer live. */
typedef struct cu_layer_state {
    float *state;              /* (n_slots, 2, state_floats) */
    size_t state_floats;       /* per slot, all layers */
    size_t layer_ofs;          /* this layer's offset inside a slot's state */
    float *j_xin, *j_dt, *j_B; /* this layer's span inputs: (max_tokens, E), (.., E), (.., N) */
} cu_layer_state;

enum { CU_EPI_STORE = 0, CU_EPI_ADD = 1 };

/* Which matrix-product kernel a projection gets, and its grid: a function of the matrix's shape
 * and alignment (T only sizes the grid). kind: CU_MM_TC4 / CU_MM_TC8 (tensor cores, K split over
 * 4 or 8 warps), or the CUDA-core kernel's flags. */
enum { CU_MM_BF16 = 1, CU_MM_VEC = 2, CU_MM_SPLIT = 4, CU_MM_TC4 = 8, CU_MM_TC8 = 9 };
typedef struct cu_mm {
    int kind, gx, gy;
} cu_mm;
cu_mm cu_mm_plan(const cu_mat *W, int n_rows, const float *X, int ldx, int T);

/* Programmatic dependent launch: with cu_pdl set, a kernel launched by cu_launch may start while
 * the kernel before it in the stream still runs, and meanwhile fetch its weights towards L2, load
 * its first group of weights into registers (the projections) or its sequences' states and
 * dt_proj columns (the scans); pdl_wait_then_release (cu_ops.h, run by the block functions' Pre
 * hook) holds it until that kernel has completed. Stream order is
 * kept otherwise (copies, memsets, other kernels). The backend sets it per forward (cu_backend.cu,
 * enqueue): on for forwards of up to CU_PDL_MAX_T tokens unless MB_CUDA_PDL=0; a longer one
 * (a prompt chunk) runs kernels of several waves, whose slots the next kernel's early blocks
 * would take (prefill lost 6-12 % with it). */
#define CU_PDL_MAX_T 256
extern bool cu_pdl;
template <typename... P, typename... A>
static inline void cu_launch(void (*k)(P...), dim3 grid, dim3 block, size_t shm, cudaStream_t st,
                             A... args) {
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = shm, cfg.stream = st;
    cfg.attrs = &at, cfg.numAttrs = cu_pdl ? 1 : 0;
    cudaLaunchKernelEx(&cfg, k, static_cast<P>(args)...);
}

/* h[t] = embed[tokens[t]] for t < T. */
void cu_embed(const cu_mat *embed, const cu_batch *b, float *h, int D, cudaStream_t st);
/* out[i] = norm(x[rows ? rows[i] : i]) * w (+ bias: LayerNorm; RMSNorm without), i < n. */
void cu_norm(const float *x, const int *rows, int n, float *out, const float *w, const float *bias,
             int D, float eps, cudaStream_t st);
/* Y[t, r] (op)= W[r, :] . X[t, :] + bias[r], for r < n_rows, t < T (epi: CU_EPI_*). */
void cu_matmul(const cu_mat *W, int n_rows, const float *X, int ldx, float *Y, int ldy, int T,
               const float *bias, int epi, cudaStream_t st);
/* in_proj with the norm before it (x = h, CU_IPC_NORM) and/or the conv after it (CU_IPC_CONV)
 * in one launch, where in_proj runs on tensor cores and d_conv is 4: forwards of at most
 * CU_FUSE_MAX_T tokens (one tile, norm and conv folded in); decode batches (every span one
 * token) of at most cu_fold_max tokens (MB_CUDA_FOLD_MAX; after the norm kernel, the conv folded
 * in); decode batches of cu_fold_max + 1 to cu_kc_max_t tokens of an RMSNorm model
 * (MB_CUDA_KC_MAX_T; norm and conv folded in, K split over a thread-block cluster: cu_matmul.cu,
 * k_in_proj_kc). cu_in_proj_conv_plan says which of the two are folded (0: norm, in_proj and conv
 * as three kernels). The same bits as the three kernels. In the one-tile and decode kernels each
 * block runs the conv of its channels for its tokens after its product (and the norm statistics of
 * its tokens before it), so past a few tokens of one span the three kernels are faster (H200,
 * bench/RESULTS.md: a span of 8 tokens 1.35 -> 1.37 ms on 354M with it, 0.135 -> 0.151 on the
 * bundled model), and folding the norm into a decode batch's tiles was 2-3x slower than its own
 * kernel. */
#define CU_FUSE_MAX_T 4
enum { CU_IPC_NORM = 1, CU_IPC_CONV = 2 };
extern int cu_fold_max;
int cu_in_proj_conv_plan(const cu_layer *L, const cu_batch *b, int D, int E, int K);
void cu_in_proj_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *x,
                     float *xz, float *u, int D, int E, int K, float eps, cudaStream_t st);
extern int cu_kc_max_t;
/* Causal depthwise conv + SiLU over each sequence's span from its slot's window: u (T, E) from
 * the x half of xz (T, 2E); the window after the span goes to the slot's other buffer and the
 * conv inputs to j_xin. */
void cu_conv(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *xz,
             float *u, int E, int K, cudaStream_t st);
/* Selective scan over each sequence's span from its slot's SSM state, then y = (s.C + D u) *
 * silu(z) into y (T, E); the state after the span goes to the other buffer, B to j_B. dt =
 * softplus(dt_proj(dt_low) + dt_bias) is computed here (into j_dt), or with CU_SCAN_PRE by a
 * kernel before it for all tokens at once; dt_low, B and C come from dbl (T, R + 2N).
 * CU_SCAN_LONG: the batch holds a span of CU_SCAN_LONG_T tokens or more (a chunk of the scans),
 * which the four-thread scan reduces a chunk at a time (cu_ops.h, scan_quad_block's RS). The
 * same bits either way. */
enum { CU_SCAN_PRE = 1, CU_SCAN_LONG = 2 };
#define CU_SCAN_LONG_T 8
void cu_scan(const cu_layer *L, const cu_batch *b, const cu_layer_state *ls, const float *u,
             const float *dbl, const float *xz, float *y, int E, int N, int R, int K, int flags,
             cudaStream_t st);
/* Batches of cu_scan_chan_min sequences or more take the thread-per-channel scan, fewer the
 * thread-per-state one (MB_CUDA_SCAN_CHAN_MIN; the same bits). pre (cu_scan): dt for all the
 * forward's tokens in a kernel of its own before the scan, chosen by the backend for forwards
 * holding a span of cu_dt_min tokens or more when they have cu_scan_chan_min sequences or more,
 * of cu_dt_min_few when fewer (MB_CUDA_DT_MIN, MB_CUDA_DT_MIN_FEW; the same bits either way). */
extern int cu_scan_chan_min, cu_dt_min, cu_dt_min_few;
/* Whether the scan of d_state 16 in such batches takes four threads a channel instead of one:
 * 0 never, 1 when a span holds two tokens or more, 2 always (MB_CUDA_SCAN_QUAD): the same bits. */
extern int cu_scan_quad;
/* Tokens per tile of the tensor-core products (cu_ops.h, matmul_tc_block's TT: 8, 16 or 32, the
 * same bits whichever) for forwards of up to 16 tokens, 17-64 and 65-256 (MB_CUDA_TT_TINY,
 * MB_CUDA_TT_SMALL, MB_CUDA_TT_MID); longer forwards take 32. */
extern int cu_tt_tiny, cu_tt_small, cu_tt_mid;
/* Forwards of up to 8 tokens: each warp of a tensor-core product loads 8 K steps before its MMAs
 * instead of 4 (MB_CUDA_AHEAD8=0 turns it off; the same bits). */
extern int cu_ahead8;
/* Tensor-core products of forwards of at least cu_tcs_min_t tokens share each block's
 * activations across 128 rows when that still makes a wave of blocks (cu_ops.h,
 * matmul_tcs_block; MB_CUDA_TCS_MIN_T): the same bits. */
extern int cu_tcs_min_t;
/* The whole forward of a small batch (T <= CU_STEP_MAX_T tokens) as one persistent kernel
 * (cu_step.cu): the per-operation block functions of cu_ops.h, separated by grid barriers
 * instead of kernel boundaries, with the next layer's matrices prefetched into L2.
 * cu_step_plan says whether a model can take it (BF16 projections of suitable shapes) and
 * fills what the launch needs; cu_step launches it. Same bits as the per-operation kernels. */
#define CU_STEP_MAX_T 32
typedef struct cu_step_args {
    const cu_layer *layers; /* device table */
    int n_layer, D, E, N, R, K, V;
    float eps;
    cu_mat embed, head;
    const float *nf_w, *nf_b;
    cu_mm in_mm, x_mm, out_mm, head_mm; /* plans at T = CU_STEP_MAX_T (gy 1) */
    cu_batch b;
    float *state, *j_xin, *j_dt, *j_B;
    size_t state_floats, layer_floats, max_tokens;
    float *h, *xn, *xz, *u, *dbl, *y, *logits;
    unsigned long long *trace; /* NULL, or the time (ns) at the start, after each barrier and at the
                                  end: 4 n_layer + 4 */
} cu_step_args;
/* 0 when the model can run the step kernel (then the launch geometry is fixed in *blocks). */
int cu_step_prepare(cu_step_args *a, int dev, int *blocks);
cudaError_t cu_step(const cu_step_args *a, int blocks, cudaStream_t st);

/* Slot operations, several in one launch (cu_backend.cu queues them and launches them before
 * anything reads a state): on slot's buffer cur, CU_OP_RESET zeroes it, CU_OP_COPY copies
 * src's buffer src_cur into it, CU_OP_ROLLBACK makes it the other buffer advanced by the first
 * n_keep span inputs from token j_start, through the same conv and scan steps as the forward.
 * The operations of one launch touch different slots. */
enum { CU_OP_RESET, CU_OP_COPY, CU_OP_ROLLBACK };
#define CU_SLOT_OPS_MAX 128 /* per launch: they travel as the kernel's argument */
typedef struct cu_slot_op {
    int kind, slot, cur, src, src_cur, j_start, n_keep;
} cu_slot_op;
typedef struct cu_slot_ops {
    int n;
    cu_slot_op op[CU_SLOT_OPS_MAX];
} cu_slot_ops;
void cu_slot_ops_run(const cu_layer *layers_dev, int n_layer, float *state, size_t state_floats,
                     const float *j_xin, const float *j_dt, const float *j_B, int max_tokens, int E,
                     int N, int K, const cu_slot_ops *ops, cudaStream_t st);

/* Points the kernels of cu_mamba.cu and cu_matmul.cu at a trace buffer (cu_ops.h, ops_trace) of
 * 1 + CU_TRACE_MAX entries, or at none (NULL). */
#define CU_TRACE_MAX 4096
cudaError_t cu_trace_bind_mamba(unsigned long long *buf);
cudaError_t cu_trace_bind_matmul(unsigned long long *buf);

#endif
