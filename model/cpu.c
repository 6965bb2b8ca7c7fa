/* cpu.c: the CPU backend's batched forward pass (DESIGN.md, "The maths").
 *
 * Batch invariance is built in: every dot product runs through dot_rows() in one fixed order
 * (two 8-lane accumulators over 16-float blocks, a fixed horizontal sum, a scalar tail), and
 * every per-token or per-channel loop computes each output from its own inputs only. So a
 * token's logits are the same bits whether it came alone, inside a span, or beside other
 * sequences, and whatever the number of threads. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---------------------------------------------------------------- maths helpers */

/* exp(x) for float32, written so that loops over it vectorize: Cody-Waite reduction to
 * r in [-ln2/2, ln2/2] and a degree-6 polynomial (relative error about 1e-7). */
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float silu(float x) { return x / (1.0f + fast_expf(-x)); }

static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* ---------------------------------------------------------------- matrix x vectors */

static inline __m256 load8(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load1(const void *w, mb_dtype dt, size_t i) {
    if (dt == MB_F32) return ((const float *)w)[i];
    uint32_t b = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline float hsum(__m256 a0, __m256 a1) {
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[r] = W[r0+r, :] . x for R rows (R a compile-time constant after inlining). The weights
 * of the R rows are streamed once; the order of every sum is the same for every R. */
static inline __attribute__((always_inline)) void dot_rows(const mb_mat *W, int r0, const float *x,
                                                           float *out, const int R) {
    const int n = W->cols;
    const size_t ld = (size_t)n;
    __m256 a0[4], a1[4];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < R; r++) {
            size_t base = (size_t)(r0 + r) * ld + (size_t)k;
            a0[r] = _mm256_fmadd_ps(load8(W->w, W->dtype, base), x0, a0[r]);
            a1[r] = _mm256_fmadd_ps(load8(W->w, W->dtype, base + 8), x1, a1[r]);
        }
    }
    if (k + 8 <= n) {
        __m256 x0 = _mm256_loadu_ps(x + k);
        for (int r = 0; r < R; r++)
            a0[r] = _mm256_fmadd_ps(load8(W->w, W->dtype, (size_t)(r0 + r) * ld + (size_t)k), x0, a0[r]);
        k += 8;
    }
    for (int r = 0; r < R; r++) {
        float s = hsum(a0[r], a1[r]);
        for (int kk = k; kk < n; kk++) s = fmaf(load1(W->w, W->dtype, (size_t)(r0 + r) * ld + (size_t)kk), x[kk], s);
        out[r] = s;
    }
}

enum { EPI_STORE, EPI_ADD, EPI_SOFTPLUS };

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
} matmul_task;

#define TOKEN_BLOCK 32

static void matmul_worker(void *ctx, int ti, int nt) {
    const matmul_task *m = ctx;
    int blocks = (m->n_rows + 3) / 4;
    int b0 = (int)((long)blocks * ti / nt), b1 = (int)((long)blocks * (ti + 1) / nt);
    int r_begin = b0 * 4, r_end = b1 * 4 < m->n_rows ? b1 * 4 : m->n_rows;
    for (int t0 = 0; t0 < m->T; t0 += TOKEN_BLOCK) {
        int t1 = t0 + TOKEN_BLOCK < m->T ? t0 + TOKEN_BLOCK : m->T;
        for (int r = r_begin; r < r_end; r += 4) {
            int rows = r_end - r < 4 ? r_end - r : 4;
            for (int t = t0; t < t1; t++) {
                float out[4];
                const float *x = m->X + (size_t)t * (size_t)m->ldx;
                if (rows == 4)
                    dot_rows(m->W, r, x, out, 4);
                else
                    for (int q = 0; q < rows; q++) dot_rows(m->W, r + q, x, out + q, 1);
                float *y = m->Y + (size_t)t * (size_t)m->ldy + r;
                for (int q = 0; q < rows; q++) {
                    float v = out[q] + (m->bias ? m->bias[r + q] : 0.0f);
                    y[q] = m->epi == EPI_ADD ? y[q] + v : m->epi == EPI_SOFTPLUS ? softplus(v) : v;
                }
            }
        }
    }
}

static void matmul(mb_threads *th, const mb_mat *W, int n_rows, const float *X, int ldx, float *Y,
                   int ldy, int T, const float *bias, int epi) {
    matmul_task m = {W, n_rows, X, ldx, Y, ldy, T, bias, epi};
    mb_threads_run(th, matmul_worker, &m);
}

/* ---------------------------------------------------------------- conv and scan steps */

void mb_conv_step(const mb_layer *L, const mb_config *c, const float *win_in, float *win_out,
                  const float *x, float *u, int c0, int c1) {
    const int K = c->d_conv, W = K - 1;
    for (int ch = c0; ch < c1; ch++) {
        const float *w = L->conv_w + (size_t)ch * (size_t)K;
        const float *wi = win_in + (size_t)ch * (size_t)W;
        float *wo = win_out + (size_t)ch * (size_t)W;
        float acc = L->conv_b[ch];
        for (int k = 0; k < W; k++) acc += w[k] * wi[k];
        acc += w[W] * x[ch];
        for (int k = 0; k + 1 < W; k++) wo[k] = wi[k + 1];
        if (W) wo[W - 1] = x[ch];
        u[ch] = silu(acc);
    }
}

void mb_scan_step(const mb_layer *L, const mb_config *c, const float *s_in, float *s_out,
                  const float *u, const float *dt, const float *B, const float *C, float *y, int c0,
                  int c1) {
    const int N = c->d_state;
    float yv[256];
    for (int ch = c0; ch < c1; ch++) {
        const float *A = L->A + (size_t)ch * (size_t)N;
        const float *si = s_in + (size_t)ch * (size_t)N;
        float *so = s_out + (size_t)ch * (size_t)N;
        const float d = dt[ch], du = dt[ch] * u[ch];
        for (int n = 0; n < N; n++) {
            float s = fast_expf(d * A[n]) * si[n] + B[n] * du;
            so[n] = s;
            if (C) yv[n] = s * C[n];
        }
        if (!y) continue;
        float acc = 0.0f;
        for (int n = 0; n < N; n++) acc += yv[n];
        y[ch] = acc + L->D[ch] * u[ch];
    }
}

/* ---------------------------------------------------------------- the forward */

typedef struct fwd {
    mb_model *m;
    mb_pool *p;
    const mb_batch *b;
    int T, layer;
    int n_out;        /* rows of logits */
    const int *rows;  /* token index of each logits row */
} fwd;

static inline void channel_range(int E, int ti, int nt, int *c0, int *c1) {
    int blocks = (E + 7) / 8;
    *c0 = (int)((long)blocks * ti / nt) * 8;
    *c1 = (int)((long)blocks * (ti + 1) / nt) * 8;
    if (*c1 > E) *c1 = E;
}

static void norm_row(const float *x, float *out, const float *w, const float *bias, int n, float eps) {
    if (!bias) { /* RMSNorm */
        float ss = 0.0f;
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
        return;
    }
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * w[i] + bias[i];
}

static void norm_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const int D = c->d_model;
    if (f->layer < c->n_layer) {
        const mb_layer *L = &f->m->layers[f->layer];
        for (int t = ti; t < f->T; t += nt)
            norm_row(f->p->h + (size_t)t * D, f->p->xn + (size_t)t * D, L->norm_w, L->norm_b, D, c->norm_eps);
    } else {
        for (int i = ti; i < f->n_out; i += nt)
            norm_row(f->p->h + (size_t)f->rows[i] * D, f->p->xn + (size_t)i * D, f->m->nf_w, f->m->nf_b,
                     D, c->norm_eps);
    }
}

static void conv_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const mb_layer *L = &f->m->layers[f->layer];
    mb_pool *p = f->p;
    const int E = c->d_inner;
    const size_t lofs = (size_t)f->layer * mb_layer_state_floats(c);
    int c0, c1;
    channel_range(E, ti, nt, &c0, &c1);
    float *jx = p->j_xin + (size_t)f->layer * (size_t)p->max_tokens * E;
    for (int s = 0; s < f->b->n_seq; s++) {
        int slot = f->b->slot[s];
        const float *src = mb_slot_state(p, slot, p->cur[slot]) + lofs;
        float *dst = mb_slot_state(p, slot, !p->cur[slot]) + lofs;
        for (int t = f->b->off[s]; t < f->b->off[s + 1]; t++) {
            const float *x = p->xz + (size_t)t * 2 * E;
            mb_conv_step(L, c, t == f->b->off[s] ? src : dst, dst, x, p->u + (size_t)t * E, c0, c1);
            memcpy(jx + (size_t)t * E + c0, x + c0, (size_t)(c1 - c0) * sizeof(float));
        }
    }
}

static void scan_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const mb_config *c = &f->m->c;
    const mb_layer *L = &f->m->layers[f->layer];
    mb_pool *p = f->p;
    const int E = c->d_inner, N = c->d_state, R = c->dt_rank, ld = R + 2 * N;
    const size_t lofs = (size_t)f->layer * mb_layer_state_floats(c) + (size_t)E * (size_t)(c->d_conv - 1);
    const float *dt = p->j_dt + (size_t)f->layer * (size_t)p->max_tokens * E;
    int c0, c1;
    channel_range(E, ti, nt, &c0, &c1);
    for (int s = 0; s < f->b->n_seq; s++) {
        int slot = f->b->slot[s];
        const float *src = mb_slot_state(p, slot, p->cur[slot]) + lofs;
        float *dst = mb_slot_state(p, slot, !p->cur[slot]) + lofs;
        for (int t = f->b->off[s]; t < f->b->off[s + 1]; t++) {
            const float *dbl = p->dbl + (size_t)t * ld;
            float *y = p->y + (size_t)t * E;
            mb_scan_step(L, c, t == f->b->off[s] ? src : dst, dst, p->u + (size_t)t * E, dt + (size_t)t * E,
                         dbl + R, dbl + R + N, y, c0, c1);
            const float *z = p->xz + (size_t)t * 2 * E + E;
            for (int ch = c0; ch < c1; ch++) y[ch] *= silu(z[ch]);
        }
    }
}

static void embed_worker(void *ctx, int ti, int nt) {
    const fwd *f = ctx;
    const int D = f->m->c.d_model;
    const mb_mat *E = &f->m->embed;
    for (int t = ti; t < f->T; t += nt) {
        size_t base = (size_t)f->b->tokens[t] * (size_t)D;
        float *h = f->p->h + (size_t)t * D;
        for (int i = 0; i < D; i++) h[i] = load1(E->w, E->dtype, base + (size_t)i);
    }
}

static int check_batch(const mb_model *m, const mb_pool *p, const mb_batch *b, mb_err *e) {
    if (b->n_seq < 0 || (b->n_seq && (!b->off || !b->slot || !b->tokens)) || (b->n_seq && b->off[0] != 0))
        return mb_fail(e, "batch: bad sequence list");
    for (int s = 0; s < b->n_seq; s++) {
        if (b->off[s + 1] <= b->off[s]) return mb_fail(e, "batch: sequence %d has no tokens", s);
        if (b->slot[s] < 0 || b->slot[s] >= p->n_slots)
            return mb_fail(e, "batch: slot %d out of range [0, %d)", b->slot[s], p->n_slots);
        for (int q = 0; q < s; q++)
            if (b->slot[q] == b->slot[s]) return mb_fail(e, "batch: slot %d appears twice", b->slot[s]);
    }
    int T = b->n_seq ? b->off[b->n_seq] : 0;
    if (T > p->max_tokens) return mb_fail(e, "batch: %d tokens, the pool takes %d per forward", T, p->max_tokens);
    for (int t = 0; t < T; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= m->c.n_vocab)
            return mb_fail(e, "batch: token %d out of range [0, %d)", b->tokens[t], m->c.n_vocab);
    return 0;
}

int mb_forward(mb_model *m, mb_pool *p, const mb_batch *b, float *logits, mb_err *e) {
    if (p->m != m) return mb_fail(e, "forward: the pool belongs to another model");
    if (check_batch(m, p, b, e)) return -1;
    const mb_config *c = &m->c;
    const int T = b->n_seq ? b->off[b->n_seq] : 0, D = c->d_model, E = c->d_inner, N = c->d_state,
              R = c->dt_rank;
    int *rows = (int *)p->rows;
    int n_out = 0;
    for (int s = 0; s < b->n_seq; s++)
        for (int t = b->off[s]; t < b->off[s + 1]; t++)
            if (b->want ? b->want[t] : t == b->off[s + 1] - 1) rows[n_out++] = t;
    fwd f = {m, p, b, T, 0, n_out, rows};
    mb_threads *th = m->threads;
    mb_threads_run(th, embed_worker, &f);
    for (int l = 0; l < c->n_layer; l++) {
        const mb_layer *L = &m->layers[l];
        f.layer = l;
        /* xz = in_proj(norm(h)) */
        mb_threads_run(th, norm_worker, &f);
        matmul(th, &L->in_proj, 2 * E, p->xn, D, p->xz, 2 * E, T, L->in_b, EPI_STORE);
        /* u = silu(conv(x)), advancing each sequence's conv window */
        mb_threads_run(th, conv_worker, &f);
        /* [dt_low, B, C] = x_proj(u); dt = softplus(dt_proj(dt_low) + dt_bias) */
        matmul(th, &L->x_proj, R + 2 * N, p->u, E, p->dbl, R + 2 * N, T, NULL, EPI_STORE);
        float *jdt = p->j_dt + (size_t)l * (size_t)p->max_tokens * E;
        matmul(th, &L->dt_proj, E, p->dbl, R + 2 * N, jdt, E, T, L->dt_b, EPI_SOFTPLUS);
        float *jB = p->j_B + (size_t)l * (size_t)p->max_tokens * N;
        for (int t = 0; t < T; t++)
            memcpy(jB + (size_t)t * N, p->dbl + (size_t)t * (R + 2 * N) + R, (size_t)N * sizeof(float));
        /* selective scan, then y * silu(z) */
        mb_threads_run(th, scan_worker, &f);
        /* residual connection: h += out_proj(y) */
        matmul(th, &L->out_proj, D, p->y, E, p->h, D, T, L->out_b, EPI_ADD);
    }
    /* final norm and the head, only for the rows asked for */
    f.layer = c->n_layer;
    if (n_out) {
        mb_threads_run(th, norm_worker, &f);
        matmul(th, &m->head, c->n_vocab, p->xn, D, logits, c->n_vocab, n_out, NULL, EPI_STORE);
    }
    /* the new states become current; the old ones stay as the span's start for rollback */
    for (int s = 0; s < p->n_slots; s++) p->j_start[s] = -1;
    for (int s = 0; s < b->n_seq; s++) {
        int slot = b->slot[s];
        p->cur[slot] = !p->cur[slot];
        p->j_start[slot] = b->off[s];
        p->j_len[slot] = p->j_at[slot] = b->off[s + 1] - b->off[s];
    }
    return 0;
}
