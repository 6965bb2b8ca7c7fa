// Mamba-1 selective scan for training, forward and backward, in CUDA (loaded by scan_cuda.py
// through ctypes; built with `nvcc -O3 -arch=sm_90 -shared -Xcompiler -fPIC`).
//
// One block per (batch row, BD channels); four threads per channel, each owning four of its 16
// states, walk time in order, CH steps at a time. A chunk's inputs are staged in shared memory
// (softplus, delta * x and the gate done once per (t, channel), their exponentials and logarithms
// in the MUFU) while the next chunk's are loaded into registers, 32-bit offsets into the block's
// row; a state update s = exp(delta A) s + delta x B is one ex2 and one FMA, and y sums
// over the states in registers and then over the quad with two shuffles. The forward stores the
// state at the start of every chunk (the checkpoints, float32).
//
// The backward walks the chunks in reverse. A chunk's CH states are recomputed from its
// checkpoint into registers, then the adjoint g_t = dL/ds_t runs backwards,
// g_t = a_{t+1} g_{t+1} + C_t dy'_t, and every gradient comes from s_{t-1}, s_t, a_t and g_t.
// Sums over channels (dB = sum g u, dC = sum s dy'): each step's g and s go to shared memory and
// are summed per chunk, times u and dy', one (step, state) per thread (BWD_RED 1; 0: the products
// summed by shuffles to two slots per warp each step),
// into per-block partials that the caller sums (no atomics: the results do not depend on
// scheduling). dA, dD and dt_bias are per batch row, summed by the caller.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#define NS  16       /* d_state */
#define Q   4        /* threads per channel */
#define SPT (NS / Q) /* states per thread */
#ifndef CH
#define CH 8 /* steps per chunk and checkpoint interval (scan_cuda.py passes -DCH) */
#endif
#ifndef BWD_OCC
/* threads per SM the backward must fit (scan_cuda.py passes -DBWD_OCC): 512 caps it at 128
   registers, 4 blocks of 32 channels per SM, so batch 16 x E 1024 runs in one wave on 132 SMs
   instead of two (166 registers: 3 blocks); 0: no bound */
#define BWD_OCC 0
#endif
#ifndef BWD_RED
/* how the backward sums dB and dC over a block's channels (scan_cuda.py passes -DBWD_RED):
   1: every thread stores its per-step terms to shared memory and they are summed once per chunk,
   one (step, state) per thread; 0: two shuffle levels per step (four channels), then per chunk
   over the warps' eight slots */
#define BWD_RED 1
#endif
#define LOG2E 1.4426950408889634f
#define LN2   0.6931471805599453f
#define FULL  0xffffffffu

struct ScanArgs {
    const void *x, *dt, *z, *B, *C, *dy;
    const float *A, *D, *bias, *s0;
    void *y, *dx, *ddt, *dz;
    float *ck, *sT, *dBp, *dCp, *dA, *dD, *dbias;
    long long sxb, sxl, sdb, sdl, szb, szl, sBb, sBl, sCb, sCl;
    int bsz, L, E, nck, nblk;
};

/* A loaded element as float: converted where it is used, not where it is loaded, so that a load
   issued a chunk ahead is waited for a chunk later */
__device__ __forceinline__ float to_f(float v) {
    return v;
}
__device__ __forceinline__ float to_f(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
/* Element i of a row (p points at the block's row, i < 2^31: scan_cuda.py checks the sizes) */
__device__ __forceinline__ void st(float *p, int i, float v) {
    p[i] = v;
}
__device__ __forceinline__ void st(__nv_bfloat16 *p, int i, float v) {
    p[i] = __float2bfloat16(v);
}

/* 2^v and log2(v) in the MUFU */
__device__ __forceinline__ float ex2(float v) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float lg2(float v) {
    float r;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
/* ln(1 + e^v): v itself above 20; below e^v = 2^-5, where 1 + e^v would round away the low bits
   of e^v, the series e - e^2/2 + e^3/3 - e^4/4 (relative error under 2e-7 there) */
__device__ __forceinline__ float softplus(float v) {
    const float e = ex2((v > 20.f ? 20.f : v) * LOG2E); /* not fminf: it would turn NaN into 20 */
    const float s = e < 0.03125f ? e * fmaf(e, fmaf(e, fmaf(e, -0.25f, 1.f / 3.f), -0.5f), 1.f)
                                 : lg2(1.f + e) * LN2;
    return v > 20.f ? v : s;
}
/* 1 / (1 + e^-v); the approximate division returns 0 where e^-v overflows */
__device__ __forceinline__ float sigmoid(float v) {
    return __fdividef(1.f, 1.f + ex2(-v * LOG2E));
}
__device__ __forceinline__ float sum_quad(float v) {
    v += __shfl_xor_sync(FULL, v, 1);
    return v + __shfl_xor_sync(FULL, v, 2);
}

/* The inputs of one chunk that one thread stages: PX (t, channel) elements and PB (t, n) ones,
   loaded into registers one chunk ahead. */
template <typename T, int BD> struct Fetch {
    static constexpr int NT = BD * Q, PX = CH * BD / NT, PB = (CH * NS + NT - 1) / NT;
    T x[PX], dt[PX], z[PX], dy[PX], B[PB], C[PB]; /* as loaded (to_f where used) */
    /* Element p of a chunk is step c0 + tid / BD + p * Q of channel d0 + tid % BD (the same channel
       for every p); the row pointers are the same for the whole block. */
    __device__ void load(const ScanArgs &a, long long b, int d0, int c0, bool bwd) {
        const T *xr = (const T *)a.x + (b * a.sxb + d0), *dtr = (const T *)a.dt + (b * a.sdb + d0),
                *zr = (const T *)a.z + (b * a.szb + d0),
                *dyr = (const T *)a.dy + (b * a.L * a.E + d0), *Br = (const T *)a.B + b * a.sBb,
                *Cr = (const T *)a.C + b * a.sCb;
        const int j = threadIdx.x % BD, t0 = c0 + threadIdx.x / BD;
        const bool jok = d0 + j < a.E;
#pragma unroll
        for (int p = 0; p < PX; p++) {
            const int tt = t0 + p * Q;
            const bool ok = jok && tt < a.L;
            x[p] = ok ? xr[tt * (int)a.sxl + j] : T(0.f);
            dt[p] = ok ? dtr[tt * (int)a.sdl + j] : T(0.f);
            z[p] = ok && a.z ? zr[tt * (int)a.szl + j] : T(0.f);
            dy[p] = ok && bwd ? dyr[tt * a.E + j] : T(0.f);
        }
#pragma unroll
        for (int p = 0; p < PB; p++) {
            const int i = threadIdx.x + p * NT, tt = c0 + i / NS, j = i % NS;
            const bool ok = i < CH * NS && tt < a.L;
            B[p] = ok ? Br[tt * (int)a.sBl + j] : T(0.f);
            C[p] = ok ? Cr[tt * (int)a.sCl + j] : T(0.f);
        }
    }
    /* The chunk's B and C rows (loaded by load()) into shared memory. */
    __device__ void store_BC(float (*sB)[NS], float (*sC)[NS]) const {
#pragma unroll
        for (int p = 0; p < PB; p++) {
            const int i = threadIdx.x + p * NT;
            if (i < CH * NS) {
                sB[i / NS][i % NS] = to_f(B[p]);
                sC[i / NS][i % NS] = to_f(C[p]);
            }
        }
    }
};

template <typename T, int BD> __global__ void __launch_bounds__(BD *Q) scan_fwd(ScanArgs a) {
    using F = Fetch<T, BD>;
    __shared__ __align__(16) float s_B[CH][NS], s_C[CH][NS];
    __shared__ float s_dl[CH][BD], s_u[CH][BD], s_x[CH][BD], s_z[CH][BD], s_y[CH][BD];
    const int tid = threadIdx.x, q = tid % Q, c = tid / Q, L = a.L, E = a.E;
    const int d0 = blockIdx.x * BD, d = d0 + c, j = tid % BD, t0 = tid / BD;
    const long long b = blockIdx.y;
    const bool dok = d < E, jok = d0 + j < E;
    /* the staging and output loops' channel (tid % BD, the same in every round) */
    const float Dj = jok ? a.D[d0 + j] : 0.f, bj = jok ? a.bias[d0 + j] : 0.f;
    float *ckr = a.ck ? a.ck + b * a.nck * E * NS : nullptr;
    T *yr = (T *)a.y + (b * L * E + d0);
    float A2[SPT], s[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++) {
        A2[k] = dok ? a.A[d * NS + q * SPT + k] * LOG2E : 0.f;
        s[k] = a.s0 && dok ? a.s0[(b * E + d) * NS + q * SPT + k] : 0.f;
    }
    F f;
    f.load(a, b, d0, 0, false);
    for (int c0 = 0, ci = 0; c0 < L; c0 += CH, ci++) {
        if (ckr && dok)
            *(float4 *)&ckr[(ci * E + d) * NS + q * SPT] = make_float4(s[0], s[1], s[2], s[3]);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < F::PX; p++) {
            const int t = t0 + p * Q;
            const float xv = to_f(f.x[p]);
            const float dl = jok && c0 + t < L ? softplus(to_f(f.dt[p]) + bj) : 0.f;
            s_dl[t][j] = dl;
            s_u[t][j] = dl * xv;
            s_x[t][j] = xv;
            s_z[t][j] = to_f(f.z[p]);
        }
        f.store_BC(s_B, s_C);
        __syncthreads();
        if (c0 + CH < L) f.load(a, b, d0, c0 + CH, false);
#pragma unroll
        for (int t = 0; t < CH; t++) {
            const float dl = s_dl[t][c], u = s_u[t][c];
            const float4 Bv = *(const float4 *)&s_B[t][q * SPT],
                         Cv = *(const float4 *)&s_C[t][q * SPT];
            s[0] = fmaf(ex2(dl * A2[0]), s[0], u * Bv.x);
            s[1] = fmaf(ex2(dl * A2[1]), s[1], u * Bv.y);
            s[2] = fmaf(ex2(dl * A2[2]), s[2], u * Bv.z);
            s[3] = fmaf(ex2(dl * A2[3]), s[3], u * Bv.w);
            const float p =
                sum_quad(fmaf(s[0], Cv.x, fmaf(s[1], Cv.y, fmaf(s[2], Cv.z, s[3] * Cv.w))));
            if (q == 0) s_y[t][c] = p;
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < F::PX; p++) {
            const int t = t0 + p * Q, tt = c0 + t;
            if (jok && tt < L) {
                float v = s_y[t][j] + Dj * s_x[t][j];
                if (a.z) {
                    const float zv = s_z[t][j];
                    v *= zv * sigmoid(zv);
                }
                st(yr, tt * E + j, v);
            }
        }
    }
    if (a.sT && dok)
        *(float4 *)&a.sT[(b * E + d) * NS + q * SPT] = make_float4(s[0], s[1], s[2], s[3]);
}

template <typename T, int BD>
__global__ void __launch_bounds__(BD *Q, BWD_OCC / (BD * Q)) scan_bwd(ScanArgs a) {
    using F = Fetch<T, BD>;
    constexpr int NT = F::NT, NW = NT / 32, SL = 2 * NW; /* warps; dB/dC slots (two per warp) */
    /* RED: the adjoints g and the states s of every (step, channel, state) go to shared memory, a
       row per step padded by 16 so that the summing threads of a warp (two steps, 16 states) hit
       distinct banks, and dB = sum g u, dC = sum s dy' over the channels are summed from there once
       a chunk; only where that fits the 48 KB of static shared memory (not at CH 16 x BD 32) */
    constexpr int QS = BD * NS + 16;
    constexpr bool RED = BWD_RED && CH * QS * 8 <= 36 * 1024;
    __shared__ __align__(16) float s_B[CH][NS], s_C[CH][NS], s_qB[RED ? CH : 1][RED ? QS : 4],
        s_qC[RED ? CH : 1][RED ? QS : 4], s_dBw[RED ? 1 : SL][CH][NS], s_dCw[RED ? 1 : SL][CH][NS],
        s_u[CH][BD], s_dyp[CH][BD];
    __shared__ float s_dl[CH][BD], s_x[CH][BD], s_sg[CH][BD], s_dzf[CH][BD];
    __shared__ float s_ddl[CH][BD], s_gB[CH][BD], s_yp[CH][BD], s_red[2][NT];
    const int tid = threadIdx.x, q = tid % Q, c = tid / Q, lane = tid % 32, w = tid / 32, L = a.L,
              E = a.E;
    const int d0 = blockIdx.x * BD, d = d0 + c, j = tid % BD, t0 = tid / BD;
    const long long b = blockIdx.y;
    const bool dok = d < E, jok = d0 + j < E;
    /* the staging and output loops' channel (tid % BD, the same in every round) */
    const float Dj = jok ? a.D[d0 + j] : 0.f, bj = jok ? a.bias[d0 + j] : 0.f;
    const float *ckr = a.ck + b * a.nck * E * NS;
    T *dxr = (T *)a.dx + (b * L * E + d0), *ddtr = (T *)a.ddt + (b * L * E + d0),
      *dzr = (T *)a.dz + (b * L * E + d0);
    float *dBr = a.dBp + (b * a.nblk + blockIdx.x) * L * NS,
          *dCr = a.dCp + (b * a.nblk + blockIdx.x) * L * NS;
    float Av[SPT], A2[SPT], g[SPT], an[SPT], dA[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++) {
        Av[k] = dok ? a.A[d * NS + q * SPT + k] : 0.f;
        A2[k] = Av[k] * LOG2E;
        g[k] = an[k] = dA[k] = 0.f;
    }
    float dDacc = 0.f, dbacc = 0.f;
    F f;
    f.load(a, b, d0, (a.nck - 1) * CH, true);
    /* the checkpoint of the chunk to come, loaded one chunk ahead like its inputs */
    float4 ckv = dok ? *(const float4 *)&ckr[((a.nck - 1) * E + d) * NS + q * SPT]
                     : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int ci = a.nck - 1; ci >= 0; ci--) {
        const int c0 = ci * CH;
        __syncthreads();
#pragma unroll
        for (int p = 0; p < F::PX; p++) {
            const int t = t0 + p * Q;
            const bool ok = jok && c0 + t < L;
            const float v = to_f(f.dt[p]) + (ok ? bj : 0.f), zv = to_f(f.z[p]);
            const float xv = to_f(f.x[p]), dy = to_f(f.dy[p]);
            const float dl = ok ? softplus(v) : 0.f, sz = sigmoid(zv);
            s_dl[t][j] = dl;
            s_u[t][j] = dl * xv;
            s_x[t][j] = xv;
            s_dyp[t][j] = a.z ? dy * zv * sz : dy;
            s_sg[t][j] = v > 20.f ? 1.f : sigmoid(v);
            s_dzf[t][j] = dy * sz * (1.f + zv * (1.f - sz));
        }
        f.store_BC(s_B, s_C);
        __syncthreads();
        float hs[CH][SPT], s[SPT] = {ckv.x, ckv.y, ckv.z, ckv.w};
        if (ci > 0) {
            f.load(a, b, d0, c0 - CH, true);
            if (dok) ckv = *(const float4 *)&ckr[((ci - 1) * E + d) * NS + q * SPT];
        }
#pragma unroll
        for (int t = 0; t < CH; t++) {
            const float dl = s_dl[t][c], u = s_u[t][c];
            const float4 Bv = *(const float4 *)&s_B[t][q * SPT];
            const float bv[SPT] = {Bv.x, Bv.y, Bv.z, Bv.w};
#pragma unroll
            for (int k = 0; k < SPT; k++) {
                hs[t][k] = s[k]; /* s_{t-1} */
                s[k] = fmaf(ex2(dl * A2[k]), s[k], u * bv[k]);
            }
        }
#pragma unroll
        for (int t = CH - 1; t >= 0; t--) {
            const float dl = s_dl[t][c], u = s_u[t][c], dyp = s_dyp[t][c];
            const float4 Bv = *(const float4 *)&s_B[t][q * SPT],
                         Cv = *(const float4 *)&s_C[t][q * SPT];
            const float bv[SPT] = {Bv.x, Bv.y, Bv.z, Bv.w}, cv[SPT] = {Cv.x, Cv.y, Cv.z, Cv.w};
            float r1 = 0.f, r2 = 0.f, r3 = 0.f, sc[SPT];
#pragma unroll
            for (int k = 0; k < SPT; k++) {
                sc[k] = t == CH - 1 ? s[k] : hs[t + 1][k]; /* s_t */
                const float at = ex2(dl * A2[k]);
                g[k] = fmaf(an[k], g[k], dyp * cv[k]);
                an[k] = at;
                const float gsa = g[k] * hs[t][k] * at;
                dA[k] = fmaf(gsa, dl, dA[k]);
                r1 = fmaf(gsa, Av[k], r1);
                r2 = fmaf(g[k], bv[k], r2);
                r3 = fmaf(sc[k], cv[k], r3);
            }
            r1 = sum_quad(r1), r2 = sum_quad(r2), r3 = sum_quad(r3);
            if (q == 0) {
                s_ddl[t][c] = r1 + s_x[t][c] * r2;
                s_gB[t][c] = r2;
                s_yp[t][c] = r3;
            }
            if constexpr (RED) { /* g and s_t as they are; times u and dy' where they are summed */
                *(float4 *)&s_qB[t][c * NS + q * SPT] = make_float4(g[0], g[1], g[2], g[3]);
                *(float4 *)&s_qC[t][c * NS + q * SPT] = make_float4(sc[0], sc[1], sc[2], sc[3]);
            } else {
                float qB[SPT], qC[SPT];
#pragma unroll
                for (int k = 0; k < SPT; k++) { /* over the warp's channels, two groups of four */
                    qB[k] = g[k] * u;
                    qC[k] = sc[k] * dyp;
                    qB[k] += __shfl_xor_sync(FULL, qB[k], 4);
                    qB[k] += __shfl_xor_sync(FULL, qB[k], 8);
                    qC[k] += __shfl_xor_sync(FULL, qC[k], 4);
                    qC[k] += __shfl_xor_sync(FULL, qC[k], 8);
                }
                if ((lane & 12) == 0) {
                    const int sl = 2 * w + (lane >> 4);
                    *(float4 *)&s_dBw[sl][t][q * SPT] = make_float4(qB[0], qB[1], qB[2], qB[3]);
                    *(float4 *)&s_dCw[sl][t][q * SPT] = make_float4(qC[0], qC[1], qC[2], qC[3]);
                }
            }
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < F::PX; p++) {
            const int t = t0 + p * Q, tt = c0 + t;
            if (jok && tt < L) {
                const float xv = s_x[t][j], dyp = s_dyp[t][j];
                const float gd = s_ddl[t][j] * s_sg[t][j];
                const int o = tt * E + j;
                st(dxr, o, dyp * Dj + s_dl[t][j] * s_gB[t][j]);
                st(ddtr, o, gd);
                if (a.z) st(dzr, o, s_dzf[t][j] * (s_yp[t][j] + Dj * xv));
                dDacc = fmaf(dyp, xv, dDacc);
                dbacc += gd;
            }
        }
        for (int i = tid; i < CH * NS; i += NT) {
            const int t = i / NS, n = i % NS, tt = c0 + t;
            if (tt < L) {
                float sb = 0.f, sc = 0.f;
                if constexpr (RED) {
#pragma unroll 2
                    for (int k = 0; k < BD; k += 4) {
                        const float4 u4 = *(const float4 *)&s_u[t][k],
                                     y4 = *(const float4 *)&s_dyp[t][k];
                        sb = fmaf(s_qB[t][k * NS + n], u4.x, sb);
                        sc = fmaf(s_qC[t][k * NS + n], y4.x, sc);
                        sb = fmaf(s_qB[t][(k + 1) * NS + n], u4.y, sb);
                        sc = fmaf(s_qC[t][(k + 1) * NS + n], y4.y, sc);
                        sb = fmaf(s_qB[t][(k + 2) * NS + n], u4.z, sb);
                        sc = fmaf(s_qC[t][(k + 2) * NS + n], y4.z, sc);
                        sb = fmaf(s_qB[t][(k + 3) * NS + n], u4.w, sb);
                        sc = fmaf(s_qC[t][(k + 3) * NS + n], y4.w, sc);
                    }
                } else {
#pragma unroll
                    for (int k = 0; k < SL; k++) {
                        sb += s_dBw[k][t][n];
                        sc += s_dCw[k][t][n];
                    }
                }
                dBr[tt * NS + n] = sb;
                dCr[tt * NS + n] = sc;
            }
        }
    }
    if (dok) *(float4 *)&a.dA[(b * E + d) * NS + q * SPT] = make_float4(dA[0], dA[1], dA[2], dA[3]);
    /* the output loops give thread tid the channel tid % BD */
    s_red[0][tid] = dDacc;
    s_red[1][tid] = dbacc;
    __syncthreads();
    if (tid < BD && d0 + tid < E) {
        float sd = 0.f, sb = 0.f;
#pragma unroll
        for (int k = 0; k < Q; k++) {
            sd += s_red[0][tid + k * BD];
            sb += s_red[1][tid + k * BD];
        }
        a.dD[b * E + d0 + tid] = sd;
        a.dbias[b * E + d0 + tid] = sb;
    }
}

template <typename T, int BD> static int launch(const ScanArgs *a, int bwd, cudaStream_t stream) {
    const dim3 grid((a->E + BD - 1) / BD, a->bsz);
    if (bwd)
        scan_bwd<T, BD><<<grid, BD * Q, 0, stream>>>(*a);
    else
        scan_fwd<T, BD><<<grid, BD * Q, 0, stream>>>(*a);
    return (int)cudaGetLastError();
}

/* dtype: 0 float32, 1 bfloat16; bd: channels per block (16 or 32). Returns a cudaError_t. */
extern "C" int mb_scan(const ScanArgs *a, int bwd, int dtype, int bd, void *stream) {
    cudaStream_t s = (cudaStream_t)stream;
    if (dtype == 0) return bd == 16 ? launch<float, 16>(a, bwd, s) : launch<float, 32>(a, bwd, s);
    return bd == 16 ? launch<__nv_bfloat16, 16>(a, bwd, s) : launch<__nv_bfloat16, 32>(a, bwd, s);
}

extern "C" int mb_scan_chunk(void) {
    return CH;
}
