/* cpu.h: what the CPU backend's ISA variants share (cpu.c holds the AVX2 baseline and the
 * dispatch; cpu_avx512.c the AVX-512 variants, compiled with their own -m flags and called only
 * when the processor has those features), and the q8 weights' layout. */
#ifndef MB_CPU_H
#define MB_CPU_H

#include "internal.h"

/* Y[t, r] (op)= W[r, :] . X[t, :] + bias[r] for t < T and the rows [0, n_rows) of W. */
typedef struct matmul_task {
    const mb_mat *W;
    int n_rows;
    const float *X;
    int ldx;
    float *Y;
    int ldy;
    int T;
    const float *bias;
    int epi;
    int int16_inputs; /* avx512vnni with q8 weights: X as int16, not int8 (cpu_avx512.c) */
    int rowwise;      /* the float kernels' blocks of up to ROWWISE_FLOAT_T tokens read rows
                         front to back (weights that stream from memory, cpu.c) */
    /* per thread: scratch_per_thread uint16 from scratch + ti * scratch_per_thread, room for
     * two TOKEN_BLOCK x (cols rounded down to 32) blocks (the avx512bf16 inputs' halves) and
     * for TOKEN_BLOCK rows of avx512vnni's integer inputs (cols int8 or int16, rounded up to 64
     * bytes) and TOKEN_BLOCK floats (their scales) */
    void *scratch;
    size_t scratch_per_thread;
} matmul_task;

enum { EPI_STORE, EPI_ADD, EPI_SOFTPLUS };

#define TOKEN_BLOCK 48 /* tokens whose inputs stay in cache while a thread sweeps its rows */
#define ROW_GROUP   8
#define WIDEN_MIN_T 8 /* BF16 and q8 rows are widened to F32 once for this many tokens or more */
/* Token blocks of up to ROWWISE_T (q8 on avx512vnni) or ROWWISE_FLOAT_T (the float kernels,
 * when the weights stream from memory: matmul_task.rowwise) tokens, decode at small batches and
 * short spans, read the weights one row after the other, each front to back: a thread's share of
 * W is then one stream that the hardware prefetcher follows, where blocks of rows side by side (8
 * at one token) streamed half as fast on Zen 4. Each (row, token) dot product keeps the order it
 * has in the blocks. The float kernels load every token's inputs again for each row, which cost
 * more than the stream saved at 3 and 4 tokens (bf16, 354M shape, Zen 4), and a row's one chain
 * of additions per token is slower than 8 rows' chains when the weights come from cache. */
#define ROWWISE_T       4
#define ROWWISE_FLOAT_T 2 /* the kernels instantiate 1 and 2 tokens */
_Static_assert(ROWWISE_FLOAT_T == 2, "cpu.c and cpu_avx512.c: a row-wise block of 1 or 2 tokens");

/* Writes the dot products out[t * ROW_GROUP + i] (t < nt, i < rows) of rows [r, r + rows) and
 * tokens [t0, t0 + nt) to Y with the task's bias and epilogue. */
void mb_cpu_store_group(const matmul_task *m, int t0, int nt, int r, int rows, const float *out);
/* matmul_task.scratch_per_thread for matrices of up to cols columns (what every variant needs). */
size_t mb_cpu_scratch_per_thread(size_t cols);

/* A thread's share of a matmul_task (mb_threads_run's signature), one per variant. Every
 * variant computes each (row, token) dot product in one fixed order of its own, whatever T. */
void mb_matmul_avx2(void *task, int ti, int nt);
void mb_matmul_avx512(void *task, int ti, int nt);
void mb_matmul_avx512bf16(void *task, int ti, int nt);
void mb_matmul_avx512vnni(void *task, int ti, int nt);

/* q8 weights (MB_WEIGHTS=q8) in one block of mb_cpu_q8_bytes(rows, cols) bytes: the int8
 * weights (rows, cols), then the float32 scales (rows), then each row's sum of its int8
 * weights (rows, int32: avx512vnni's correction for its unsigned inputs), each part starting
 * on 64 bytes. W[r, k] = scale[r] * w[r, k]. */
size_t mb_cpu_q8_bytes(int rows, int cols);
/* W (F32 or BF16) to q8 at mem: scale = max|w| / 127 per row, each weight w / scale rounded to
 * the nearest integer (a row of zeros: scale 0); W then points there. */
void mb_cpu_quantize_q8(mb_mat *W, void *mem);

/* The largest int16 input for q8 rows of `cols`: a vpdpwssd lane sums cols / 16 products of
 * at most 127 x qmax, and the 16 lanes' sum must stay within int32 too. */
static inline int mb_cpu_int16_qmax(int cols) {
    int64_t q = INT32_MAX / (127 * (int64_t)((cols + 31) / 32 * 32));
    return q < 32767 ? (int)q : 32767;
}

static inline const int32_t *mb_cpu_q8_row_sums(const mb_mat *W) {
    return (const int32_t *)((const char *)W->scale + ((size_t)W->rows * 4 + 63) / 64 * 64);
}

#endif
