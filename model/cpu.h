/* cpu.h: what the CPU backend's ISA variants share (cpu.c holds the AVX2 baseline and the
 * dispatch; cpu_avx512.c the AVX-512 variants, compiled with their own -m flags and called only
 * when the processor has those features). */
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
    /* per thread: scratch_per_thread uint16 from scratch + ti * scratch_per_thread, room for
     * two TOKEN_BLOCK x (cols rounded down to 32) blocks (the avx512bf16 inputs' halves) */
    void *scratch;
    size_t scratch_per_thread;
} matmul_task;

enum { EPI_STORE, EPI_ADD, EPI_SOFTPLUS };

#define TOKEN_BLOCK 48 /* tokens whose inputs stay in cache while a thread sweeps its rows */
#define ROW_GROUP   8
#define WIDEN_MIN_T 8 /* BF16 and q8 rows are widened to F32 once for this many tokens or more */

/* Writes the dot products out[t * ROW_GROUP + i] (t < nt, i < rows) of rows [r, r + rows) and
 * tokens [t0, t0 + nt) to Y with the task's bias and epilogue. */
void mb_cpu_store_group(const matmul_task *m, int t0, int nt, int r, int rows, const float *out);

/* A thread's share of a matmul_task (mb_threads_run's signature), one per variant. Every
 * variant computes each (row, token) dot product in one fixed order of its own, whatever T. */
void mb_matmul_avx2(void *task, int ti, int nt);
void mb_matmul_avx512(void *task, int ti, int nt);
void mb_matmul_avx512bf16(void *task, int ti, int nt);

#endif
