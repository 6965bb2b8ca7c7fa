// A Mamba block's causal depthwise conv and its SiLU for training, forward and backward, in CUDA
// (loaded by conv_cuda.py through ctypes; built by scan_build.py, `nvcc -O3 -arch=sm_90 -shared
// -Xcompiler -fPIC`):
//
//   u_t = silu(c_t),  c_t = b + sum_k w_k x_{t-K+1+k}  (x_t = 0 before the row's start)
//
// per (batch row, channel), float32 arithmetic on bf16 or float32 x, u rounded once to x's type
// (the maths of model.block_fast's shifted multiply-adds). One thread per (row, channel, tile of TT
// steps) walks its tile in order with the last K inputs in registers, loading CHK steps at a time
// ahead of their use; a warp's loads and stores are 32 adjacent channels. x may be a strided view
// (a block's in_proj output, row stride 2E).
//
// The backward recomputes c_t from x, so it reads x and du once: g_t = du_t silu'(c_t),
// dx_t = sum_k w_k g_{t+K-1-k} (a tile also computes the K-1 values of g after its end), and
// dw_k = sum_t g_t x_{t-K+1+k}, db = sum_t g_t as per-(row, tile) partials that the caller sums
// (no atomics: the result does not depend on scheduling).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define K   4   /* d_conv */
#define TT  64  /* steps per thread */
#define CHK 8   /* steps whose loads are issued together */
#define TPB 128 /* channels per block */

struct ConvArgs {
    const void *x, *du;
    const float *w, *bias;
    void *u, *dx;
    float *dwp, *dbp;
    long long sxb, sxl;
    int bsz, L, E, ntile;
};

__device__ __forceinline__ float ld(const float *p, long long i) {
    return p[i];
}
__device__ __forceinline__ float ld(const __nv_bfloat16 *p, long long i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void st(float *p, long long i, float v) {
    p[i] = v;
}
__device__ __forceinline__ void st(__nv_bfloat16 *p, long long i, float v) {
    p[i] = __float2bfloat16(v);
}

/* The thread's channel, its weights, and the K-1 inputs before its tile (zeros before the row) */
struct Lane {
    int e, t0, t1;
    float w[K], b, win[K];
};

template <typename T> __device__ __forceinline__ bool lane(const ConvArgs &a, const T *x, Lane &l) {
    l.e = blockIdx.x * TPB + threadIdx.x;
    if (l.e >= a.E) return false;
    l.t0 = blockIdx.y * TT;
    l.t1 = min(l.t0 + TT, a.L);
#pragma unroll
    for (int k = 0; k < K; k++) l.w[k] = a.w[l.e * K + k];
    l.b = a.bias[l.e];
#pragma unroll
    for (int j = 0; j < K - 1; j++) {
        int t = l.t0 - (K - 1) + j;
        l.win[j] = t >= 0 ? ld(x, t * a.sxl) : 0.f;
    }
    return true;
}

/* c_t from the window win[j] = x_{t-K+1+j}, summed in the order of model.block_fast */
__device__ __forceinline__ float pre(const Lane &l) {
    float c = l.b + l.win[0] * l.w[0];
#pragma unroll
    for (int k = 1; k < K; k++) c = c + l.win[k] * l.w[k];
    return c;
}

__device__ __forceinline__ void slide(float *v) {
#pragma unroll
    for (int j = 0; j < K - 1; j++) v[j] = v[j + 1];
}

template <typename T> __global__ void __launch_bounds__(TPB) conv_fwd(ConvArgs a) {
    const T *__restrict__ x = (const T *)a.x + blockIdx.z * a.sxb + blockIdx.x * TPB + threadIdx.x;
    Lane l;
    if (!lane(a, x, l)) return;
    T *__restrict__ u = (T *)a.u + (long long)blockIdx.z * a.L * a.E + l.e;
    for (int t0 = l.t0; t0 < l.t1; t0 += CHK) {
        float xs[CHK]; /* a chunk's loads issued together, before the first is used */
#pragma unroll
        for (int i = 0; i < CHK; i++) xs[i] = t0 + i < l.t1 ? ld(x, (t0 + i) * a.sxl) : 0.f;
#pragma unroll
        for (int i = 0; i < CHK; i++) {
            if (t0 + i < l.t1) {
                l.win[K - 1] = xs[i];
                float c = pre(l);
                st(u, (long long)(t0 + i) * a.E, c / (1.f + __expf(-c)));
                slide(l.win);
            }
        }
    }
}

template <typename T> __global__ void __launch_bounds__(TPB) conv_bwd(ConvArgs a) {
    const T *__restrict__ x = (const T *)a.x + blockIdx.z * a.sxb + blockIdx.x * TPB + threadIdx.x;
    Lane l;
    if (!lane(a, x, l)) return;
    long long row = (long long)blockIdx.z * a.L * a.E + l.e;
    const T *__restrict__ du = (const T *)a.du + row;
    T *__restrict__ dx = (T *)a.dx + row;
    float g[K] = {}, dw[K] = {}, db = 0.f;        /* g[j] = g_{s-K+1+j} at step s */
    int end = l.t1 + K - 1, last = min(end, a.L); /* steps walked; those with inputs */
    for (int s0 = l.t0; s0 < end; s0 += CHK) {
        float xs[CHK], ds[CHK];
#pragma unroll
        for (int i = 0; i < CHK; i++) {
            bool in = s0 + i < last;
            xs[i] = in ? ld(x, (s0 + i) * a.sxl) : 0.f;
            ds[i] = in ? ld(du, (long long)(s0 + i) * a.E) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < CHK; i++) {
            int s = s0 + i;
            if (s >= end) break;
            float gs = 0.f;
            if (s < last) {
                l.win[K - 1] = xs[i];
                float c = pre(l), sg = 1.f / (1.f + __expf(-c));
                gs = ds[i] * sg * (1.f + c * (1.f - sg));
                if (s < l.t1) {
#pragma unroll
                    for (int k = 0; k < K; k++) dw[k] += gs * l.win[k];
                    db += gs;
                }
                slide(l.win);
            }
            slide(g);
            g[K - 1] = gs;
            int t = s - (K - 1);
            if (t >= l.t0) {
                float d = 0.f;
#pragma unroll
                for (int k = 0; k < K; k++) d += l.w[k] * g[K - 1 - k];
                st(dx, (long long)t * a.E, d);
            }
        }
    }
    long long p = ((long long)blockIdx.z * a.ntile + blockIdx.y) * a.E + l.e;
#pragma unroll
    for (int k = 0; k < K; k++) a.dwp[p * K + k] = dw[k];
    a.dbp[p] = db;
}

extern "C" int mb_conv_k(void) {
    return K;
}

extern "C" int mb_conv_tile(void) {
    return TT;
}

/* bwd: 0 forward, 1 backward; bf16: x, du, u and dx are bf16 (else float32). Returns a CUDA error
   code (0: launched). */
extern "C" int mb_conv(const ConvArgs *a, int bwd, int bf16, void *stream) {
    dim3 grid((a->E + TPB - 1) / TPB, a->ntile, a->bsz);
    cudaStream_t s = (cudaStream_t)stream;
    if (bwd && bf16)
        conv_bwd<__nv_bfloat16><<<grid, TPB, 0, s>>>(*a);
    else if (bwd)
        conv_bwd<float><<<grid, TPB, 0, s>>>(*a);
    else if (bf16)
        conv_fwd<__nv_bfloat16><<<grid, TPB, 0, s>>>(*a);
    else
        conv_fwd<float><<<grid, TPB, 0, s>>>(*a);
    return (int)cudaGetLastError();
}
