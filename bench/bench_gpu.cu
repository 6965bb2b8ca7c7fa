/* bench_gpu.cu: the CUDA backend on this machine's GPU. For each model: decode ms per step at
 * several batch sizes beside the memory floor (bytes a step must move: the weights once, each
 * sequence's state read and written, over the device-to-device copy bandwidth measured in the
 * same run), the cost of a verification span of k bytes at batch 1 against one decode step, and
 * prefill speed. Then the cost of batch invariance: each projection of the model through the
 * backend's invariant kernel (kernels/cu_matmul.cu) against cuBLAS's default choice for the
 * same shape (bf16 weights and activations, f32 accumulation: what a stack without invariance
 * runs). Medians of repeated runs. Usage: bench_gpu MODEL_DIR...   (bench/gpu.sh runs it)
 * Two other modes: --profile (one forward for ncu, bench/profile_gpu.sh; with MB_CUDA_TRACE=1 the
 * per-kernel timeline) and --ab (the backend's MB_CUDA_* knobs compared in one process). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/cu_kernels.h"
#include "mambabyte.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(err_));                          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* GB/s of a device-to-device copy of 2 GiB (bytes read + bytes written), median of 10. */
static double copy_bandwidth(void) {
    size_t n = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double r[10];
    for (int i = -2; i < 10; i++) {
        cudaEventRecord(e0);
        CK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (i >= 0) r[i] = 2.0 * (double)n / (ms * 1e-3) / 1e9;
    }
    cudaFree(a);
    cudaFree(b);
    return median(r, 10);
}

/* Median seconds of one forward of n sequences, sequence i feeding len[i] tokens (logits for
 * every token when want_all, else for each sequence's last), after `warm` unmeasured ones. */
static double forward_time(mb_model *m, mb_pool *p, const int *len, int n, int want_all, int reps,
                           int warm) {
    int T = 0;
    for (int i = 0; i < n; i++) T += len[i];
    int32_t *tok = (int32_t *)malloc((size_t)T * sizeof *tok);
    int *off = (int *)malloc((size_t)(n + 1) * sizeof *off),
        *slot = (int *)malloc((size_t)n * sizeof *slot);
    uint8_t *want = (uint8_t *)malloc((size_t)T);
    float *logits = (float *)malloc((size_t)T * mb_model_config(m)->n_vocab * sizeof(float));
    off[0] = 0;
    for (int i = 0; i < n; i++) off[i + 1] = off[i] + len[i], slot[i] = i;
    for (int t = 0; t < T; t++)
        tok[t] = "the quick brown fox "[t % 20], want[t] = (uint8_t)want_all;
    for (int i = 0; i < n; i++) want[off[i + 1] - 1] = 1;
    mb_batch b = {n, tok, off, slot, want};
    mb_err e;
    double *r = (double *)malloc((size_t)reps * sizeof *r);
    for (int i = -warm; i < reps; i++) {
        double t0 = now_s();
        if (mb_forward(m, p, &b, logits, &e)) {
            fprintf(stderr, "forward: %s\n", e.msg);
            exit(1);
        }
        if (i >= 0) r[i] = now_s() - t0;
    }
    double med = median(r, reps);
    free(r);
    free(tok);
    free(off);
    free(slot);
    free(want);
    free(logits);
    return med;
}

/* B sequences feeding k tokens each (decode: k = 1), logits for every token. */
static double step_time(mb_model *m, mb_pool *p, int B, int k, int reps, int warm) {
    int *len = (int *)malloc((size_t)B * sizeof *len);
    for (int i = 0; i < B; i++) len[i] = k;
    double t = forward_time(m, p, len, B, 1, reps, warm);
    free(len);
    return t;
}

static void bench_model(const char *dir, double bw) {
    mb_err e;
    mb_backend_opts o = {1, MB_DEVICE_CUDA, 0};
    mb_model *m = mb_model_load(dir, &o, &e);
    if (!m) {
        fprintf(stderr, "%s: %s\n", dir, e.msg);
        exit(1);
    }
    const mb_config *c = mb_model_config(m);
    const int batches[] = {1, 8, 64, 256};
    mb_pool *p = mb_pool_create(m, 256, 512, &e);
    if (!p) {
        fprintf(stderr, "pool: %s\n", e.msg);
        exit(1);
    }
    const double wb = (double)mb_model_weight_bytes(m), sb = (double)mb_pool_state_bytes(p);
    printf("\n%s: d_model %d x %d layers, %s weights %.1f MB, state %.3f MB per sequence, %s\n",
           dir, c->d_model, c->n_layer, mb_model_dtype(m) == MB_F32 ? "f32" : "bf16", wb / 1e6,
           sb / 1e6, mb_model_device(m));
    printf("| batch | ms/step | bytes/s in all | floor ms/step | x floor |\n| --- | --- | --- | "
           "--- | --- |\n");
    double t1 = 0;
    for (int i = 0; i < 4; i++) {
        int B = batches[i];
        double t = step_time(m, p, B, 1, B >= 64 ? 100 : 300, 5);
        if (B == 1) t1 = t;
        double floor = (wb + 2.0 * sb * B) / (bw * 1e9);
        printf("| %d | %.3f | %.0f | %.4f | %.1f |\n", B, t * 1e3, B / t, floor * 1e3, t / floor);
    }
    printf("verification spans at batch 1 (ms, x one decode step):");
    const int ks[] = {4, 8, 16, 32};
    for (int i = 0; i < 4; i++) {
        double t = step_time(m, p, 1, ks[i], 200, 5);
        printf("  k=%d %.3f (%.2fx)", ks[i], t * 1e3, t / t1);
    }
    double tp = step_time(m, p, 1, 512, 20, 5);
    printf("\nprefill, one sequence, chunks of 512: %.0f bytes/s\n", 512 / tp);
    /* what a prompt chunk costs the streams decoding beside it (the daemon's default chunk is
     * 128 bytes, and prompts take at most half of its 512-token budget) */
    int len[64];
    for (int i = 0; i < 64; i++) len[i] = 1;
    const double t64 = forward_time(m, p, len, 64, 0, 100, 5);
    printf("a prompt chunk beside 63 decoding sequences (ms, x a step of 64 decoding): 64 decoding "
           "%.3f",
           t64 * 1e3);
    const int chunks[] = {128, 256, 448};
    for (int i = 0; i < 3; i++) {
        len[63] = chunks[i];
        double t = forward_time(m, p, len, 64, 0, 50, 5);
        printf("  63 + %d %.3f (%.2fx)", chunks[i], t * 1e3, t / t64);
    }
    printf("\n");
    mb_pool_free(p);
    mb_model_free(m);
}

/* ---------------------------------------------------------------- invariance cost */

/* ms of the invariant kernel and of cuBLAS for Y (T, rows) = X (T, K) W (rows, K)^T. */
static void matmul_pair(cublasHandle_t h, int rows, int K, int T, double *ours, double *cublas) {
    __nv_bfloat16 *W, *Xb;
    float *X, *Y;
    CK(cudaMalloc(&W, (size_t)rows * K * 2));
    CK(cudaMalloc(&Xb, (size_t)T * K * 2));
    CK(cudaMalloc(&X, (size_t)T * K * 4));
    CK(cudaMalloc(&Y, (size_t)T * rows * 4));
    CK(cudaMemset(W, 0x3c, (size_t)rows * K * 2)); /* 0x3c3c: about 0.0115, not zero */
    CK(cudaMemset(Xb, 0x3c, (size_t)T * K * 2));
    CK(cudaMemset(X, 0x3c, (size_t)T * K * 4));
    cu_mat Wm = {W, 2, rows, K};
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double r[50];
    const float one = 1.0f, zero = 0.0f;
    for (int which = 0; which < 2; which++) {
        for (int i = -5; i < 50; i++) {
            cudaEventRecord(e0);
            for (int rep = 0; rep < 10; rep++) {
                if (!which)
                    cu_matmul(&Wm, rows, X, K, Y, rows, T, nullptr, CU_EPI_STORE, 0);
                else if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, rows, T, K, &one, W, CUDA_R_16BF,
                                      K, Xb, CUDA_R_16BF, K, &zero, Y, CUDA_R_32F, rows,
                                      CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
                    fprintf(stderr, "cublasGemmEx failed\n");
                    exit(1);
                }
            }
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            if (i >= 0) r[i] = ms / 10;
        }
        CK(cudaGetLastError());
        *(which ? cublas : ours) = median(r, 50);
    }
    cudaFree(W);
    cudaFree(Xb);
    cudaFree(X);
    cudaFree(Y);
}

/* The projections of one layer (and the head) of a d_model D model, summed per step. */
static void invariance_cost(cublasHandle_t h, int D, int L) {
    const int E = 2 * D, R = (D + 15) / 16, N = 16;
    /* dt_proj runs inside the scan kernel (not a matrix product of its own) */
    const int shapes[4][3] = {{2 * E, D, L}, {R + 2 * N, E, L}, {D, E, L}, {256, D, 1}};
    const char *names[4] = {"in_proj", "x_proj", "out_proj", "head"};
    const int Ts[] = {1, 64, 512};
    printf("\nbatch invariance cost, d_model %d x %d layers (ms per step, all layers; invariant "
           "kernel / cuBLAS default):\n",
           D, L);
    for (int ti = 0; ti < 3; ti++) {
        double so = 0, sc = 0;
        printf("  T=%3d:", Ts[ti]);
        for (int s = 0; s < 4; s++) {
            double o, c;
            matmul_pair(h, shapes[s][0], shapes[s][1], Ts[ti], &o, &c);
            so += o * shapes[s][2], sc += c * shapes[s][2];
            printf(" %s %.4f/%.4f", names[s], o, c);
        }
        printf("  => %.3f / %.3f ms (%.2fx)\n", so, sc, so / sc);
    }
}

/* --profile: warm up, then one forward of B sequences x k tokens between cudaProfilerStart and
 * Stop, for `ncu --profile-from-start off` (bench/profile_gpu.sh) to time each kernel. */
static int profile_step(const char *dir, int B, int k) {
    mb_err e;
    mb_backend_opts o = {1, MB_DEVICE_CUDA, 0};
    mb_model *m = mb_model_load(dir, &o, &e);
    mb_pool *p = m ? mb_pool_create(m, B, B * k, &e) : NULL;
    if (!p) {
        fprintf(stderr, "%s: %s\n", dir, e.msg);
        return 1;
    }
    double t = step_time(m, p, B, k, 20, 5);
    printf("one step of %d x %d tokens: %.3f ms (median of 20, host-timed)\n", B, k, t * 1e3);
    cudaProfilerStart();
    step_time(m, p, B, k, 1, 0);
    cudaProfilerStop();
    mb_pool_free(p);
    mb_model_free(m);
    return 0;
}

/* --ab: the backend's tuning knobs (cu_kernels.h, read when a pool is created) compared in one
 * process. Each variant is a list of NAME=VALUE settings separated by commas; for each rep, each
 * variant in turn gets a fresh pool and the median of 50 steps of each shape (BxK, separated by
 * commas); printed: the median over reps, ms per forward. */
static int ab_mode(const char *dir, const char *shapes, int reps, int n_var, char **vars) {
    mb_err e;
    mb_backend_opts o = {1, MB_DEVICE_CUDA, 0};
    mb_model *m = mb_model_load(dir, &o, &e);
    if (!m) {
        fprintf(stderr, "%s: %s\n", dir, e.msg);
        return 1;
    }
    int B[16], k[16], n_sh = 0, maxB = 1, maxT = 1;
    for (const char *q = shapes; *q && n_sh < 16;) {
        if (sscanf(q, "%dx%d", &B[n_sh], &k[n_sh]) != 2 || B[n_sh] < 1 || k[n_sh] < 1) break;
        if (B[n_sh] > maxB) maxB = B[n_sh];
        if (B[n_sh] * k[n_sh] > maxT) maxT = B[n_sh] * k[n_sh];
        n_sh++;
        q = strchr(q, ',');
        if (!q) break;
        q++;
    }
    double *t = (double *)calloc((size_t)n_sh * n_var * reps, sizeof *t);
    for (int r = 0; r < reps; r++)
        for (int v = 0; v < n_var; v++) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", vars[v]);
            for (char *kv = strtok(buf, ","); kv; kv = strtok(NULL, ",")) {
                char *eq = strchr(kv, '=');
                if (eq) *eq = 0, setenv(kv, eq + 1, 1);
            }
            mb_pool *p = mb_pool_create(m, maxB, maxT, &e);
            if (!p) {
                fprintf(stderr, "pool: %s\n", e.msg);
                return 1;
            }
            for (int i = 0; i < n_sh; i++)
                t[((size_t)i * n_var + v) * reps + r] = step_time(m, p, B[i], k[i], 50, 5);
            mb_pool_free(p);
        }
    printf("%s, ms per forward (median of %d reps x 50 steps, variants alternated)\n| shape |", dir,
           reps);
    for (int v = 0; v < n_var; v++) printf(" %s |", vars[v]);
    printf("\n| --- |");
    for (int v = 0; v < n_var; v++) printf(" ---: |");
    printf("\n");
    for (int i = 0; i < n_sh; i++) {
        printf("| %dx%d |", B[i], k[i]);
        for (int v = 0; v < n_var; v++) {
            double *x = t + ((size_t)i * n_var + v) * reps;
            qsort(x, (size_t)reps, sizeof *x, cmp_d);
            printf(" %.3f |", x[reps / 2] * 1e3);
        }
        printf("\n");
    }
    free(t);
    mb_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "--profile"))
        return profile_step(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc >= 6 && !strcmp(argv[1], "--ab"))
        return ab_mode(argv[2], argv[3], atoi(argv[4]), argc - 5, argv + 5);
    if (argc < 2) {
        fprintf(stderr, "usage: bench_gpu MODEL_DIR...  |  bench_gpu --profile MODEL_DIR B k  |  "
                        "bench_gpu --ab MODEL_DIR BxK,... REPS NAME=V,...  NAME=V,...\n");
        return 2;
    }
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, 0));
    double bw = copy_bandwidth();
    printf("GPU %s; device-to-device copy %.0f GB/s (read + write)\n", pr.name, bw);
    for (int i = 1; i < argc; i++) bench_model(argv[i], bw);
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    invariance_cost(h, 512, 6);
    invariance_cost(h, 1024, 53);
    cublasDestroy(h);
    return 0;
}
