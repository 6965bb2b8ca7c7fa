/* cu_backend.cu: the CUDA backend behind model/backend.h. Built into libmambabyte_cuda.so, which
 * the engine loads at run time (model/engine.c); its one exported symbol is mb_cuda_backend.
 *
 * The weights go to the GPU once, in one allocation. A pool keeps every slot's two state
 * buffers, the last forward's span inputs (for rollback) and the activations in GPU memory. A
 * forward is one copy of the batch in (tokens, offsets, slots, current buffers, logits rows),
 * 6 launches per layer over all tokens of all sequences (or, with MB_CUDA_STEP=1 and up to 32
 * tokens, one persistent kernel: cu_step.cu), and one copy of the wanted logits out: no
 * per-sequence launch, no host round trip inside the step.
 *
 * Errors: every CUDA call is checked; a failure names the call and CUDA's reason and comes back
 * as mb_err. Errors that leave the CUDA context unusable (an illegal address, a kernel fault)
 * mark the model dead (m->dead), so every later call fails at once and the caller can stop. */
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_kernels.h"
#include "internal.h"

typedef struct cu_model {
    int gpu;
    cudaStream_t st;
    char *weights; /* every tensor, 256-byte aligned pieces */
    size_t weight_bytes;
    cu_layer *layers;     /* (n_layer) device pointers, on the host */
    cu_layer *layers_dev; /* the same table in device memory (rollback reads it) */
    cu_mat embed, head;
    const float *nf_w, *nf_b;
} cu_model;

/* A captured forward for one batch shape (T tokens, n sequences, n_out logits rows). */
typedef struct cu_graph {
    int T, n, n_out, scan; /* cu_scan's flags (CU_SCAN_PRE, CU_SCAN_LONG) */
    cudaGraphExec_t exec;  /* NULL until the shape comes a second time */
    uint64_t used;         /* clock of the last use, for eviction */
} cu_graph;

#define CU_GRAPHS 64 /* shapes remembered per pool */

typedef struct cu_pool {
    float *state;                              /* (n_slots, 2, state_floats) */
    float *j_xin, *j_dt, *j_B;                 /* (n_layer, max_tokens, E | E | N) span inputs */
    float *h, *xn, *xz, *u, *dbl, *y, *logits; /* activations of up to max_tokens tokens */
    int *batch_dev, *batch_host;               /* the batch: 5 max_tokens + 1 ints */
    float *logits_host;                        /* pinned (max_tokens, n_vocab) */
    int use_graphs;                            /* MB_CUDA_GRAPHS=0 turns graphs off */
    int use_pdl;                               /* MB_CUDA_PDL=0 turns overlapping launches off */
    int use_fused; /* MB_CUDA_FUSE=0: norm, in_proj and conv as three launches at every size */
    int use_step, step_blocks;  /* the persistent step kernel (MB_CUDA_STEP=1) */
    cu_step_args step;          /* its arguments but the batch */
    int trace;                  /* MB_CUDA_STEP_TRACE=1: phase times to stderr */
    unsigned long long *ktrace; /* MB_CUDA_TRACE=1: kernel entry times (cu_ops.h, ops_trace) */
    cu_graph graphs[CU_GRAPHS];
    uint64_t clock;
    cu_slot_op *q;              /* queued slot operations (queue_op), in call order */
    int *q_phase;               /* the launch each goes in */
    int n_q, cap_q, n_phase;    /* queued, room, phases */
    int *mark_gen, *mark_phase; /* per slot: the last queued phase touching it, if of gen */
    int gen;                    /* bumped at each flush */
} cu_pool;

static int fail(mb_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(mb_err *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Errors after which the context is lost: every later call would fail the same way. */
static bool sticky(cudaError_t err) {
    switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorDevicesUnavailable:
        return true;
    default:
        return false;
    }
}

static int cuda_fail(const mb_model *m, mb_err *e, const char *call, cudaError_t err) {
    if (m && sticky(err)) ((mb_model *)m)->dead = 1;
    return fail(e, "CUDA: %.160s failed: %s (%s)%s", call, cudaGetErrorString(err),
                cudaGetErrorName(err), m && m->dead ? "; the GPU context is lost" : "");
}

#define CU(m, call)                                                                                \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess) return cuda_fail(m, e, #call, err_);                              \
    } while (0)

static cu_model *CM(const mb_model *m) {
    return static_cast<cu_model *>(m->dev);
}
static cu_pool *CP(const mb_pool *p) {
    return static_cast<cu_pool *>(p->dev);
}

/* ---------------------------------------------------------------- weights */

/* Lays the tensors out in one buffer: a first pass (base NULL) counts, the second copies. */
typedef struct packer {
    char *base;
    size_t at;
    cudaError_t err;
} packer;

static const void *pack(packer *k, const void *host, size_t bytes) {
    size_t at = (k->at + 255) & ~(size_t)255;
    k->at = at + bytes;
    if (!k->base || !host) return nullptr; /* counting, or an absent tensor */
    if (k->err == cudaSuccess)
        k->err = cudaMemcpy(k->base + at, host, bytes, cudaMemcpyHostToDevice);
    return k->base + at;
}

static size_t mat_bytes(const mb_mat *w) {
    return (size_t)w->rows * (size_t)w->cols * (w->dtype == MB_F32 ? 4 : 2);
}

static cu_mat pack_mat(packer *k, const mb_mat *w) {
    cu_mat d = {pack(k, w->w, mat_bytes(w)), (int)w->dtype, w->rows, w->cols};
    return d;
}

/* dt_proj goes to the GPU transposed, (R, E): a scan block stages its channels' columns with
 * consecutive threads reading consecutive weights (cu_ops.h, scan_block). */
static cu_mat pack_mat_t(packer *k, const mb_mat *w) {
    const size_t rows = (size_t)w->rows, cols = (size_t)w->cols, es = w->dtype == MB_F32 ? 4 : 2;
    char *t = k->base ? static_cast<char *>(malloc(rows * cols * es)) : nullptr;
    if (k->base && !t && k->err == cudaSuccess) k->err = cudaErrorMemoryAllocation;
    if (t)
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++)
                memcpy(t + (c * rows + r) * es,
                       static_cast<const char *>(w->w) + (r * cols + c) * es, es);
    cu_mat d = {pack(k, t, mat_bytes(w)), (int)w->dtype, w->cols, w->rows};
    free(t);
    return d;
}

static const float *pack_vec(packer *k, const float *v, size_t n) {
    return static_cast<const float *>(pack(k, v, n * sizeof(float)));
}

static void pack_model(const mb_model *m, cu_model *cm, packer *k) {
    const mb_config *c = &m->c;
    const size_t D = (size_t)c->d_model, E = (size_t)c->d_inner, N = (size_t)c->d_state;
    cm->embed = pack_mat(k, &m->embed);
    cm->head = c->tied ? cm->embed : pack_mat(k, &m->head);
    cm->nf_w = pack_vec(k, m->nf_w, D);
    cm->nf_b = pack_vec(k, m->nf_b, D);
    for (int l = 0; l < c->n_layer; l++) {
        const mb_layer *L = &m->layers[l];
        cu_layer *d = &cm->layers[l];
        d->norm_w = pack_vec(k, L->norm_w, D);
        d->norm_b = pack_vec(k, L->norm_b, D);
        d->in_proj = pack_mat(k, &L->in_proj);
        d->in_b = pack_vec(k, L->in_b, 2 * E);
        d->conv_w = pack_vec(k, L->conv_w, E * (size_t)c->d_conv);
        d->conv_b = pack_vec(k, L->conv_b, E);
        d->x_proj = pack_mat(k, &L->x_proj);
        d->dt_proj = pack_mat_t(k, &L->dt_proj);
        d->dt_b = pack_vec(k, L->dt_b, E);
        d->A = pack_vec(k, L->A, E * N);
        d->D = pack_vec(k, L->D, E);
        d->out_proj = pack_mat(k, &L->out_proj);
        d->out_b = pack_vec(k, L->out_b, D);
    }
}

static void cu_model_free(mb_model *m) {
    cu_model *cm = CM(m);
    if (!cm) return;
    cudaSetDevice(cm->gpu);
    if (cm->st) cudaStreamDestroy(cm->st);
    cudaFree(cm->weights);
    cudaFree(cm->layers_dev);
    free(cm->layers);
    free(cm);
    m->dev = nullptr;
}

static int check_shape(const mb_config *c, mb_err *e) {
    const int N = c->d_state;
    if (c->d_conv < 2 || c->d_conv > 4)
        return fail(e, "the CUDA backend runs d_conv 2 to 4, the model has %d", c->d_conv);
    if (N != 4 && N != 8 && N != 16 && N != 32 && N != 64)
        return fail(e, "the CUDA backend runs d_state 4, 8, 16, 32 or 64, the model has %d", N);
    return 0;
}

static int model_init(mb_model *m, const mb_backend_opts *o, char *note, size_t note_len,
                      mb_err *e) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        return fail(e, "no usable CUDA device (cudaGetDeviceCount: %s)", cudaGetErrorString(err));
    if (o->gpu >= count) return fail(e, "no CUDA device %d (%d found)", o->gpu, count);
    if (check_shape(&m->c, e)) return -1;
    cudaDeviceProp pr;
    CU(nullptr, cudaGetDeviceProperties(&pr, o->gpu));
    if (pr.major < 9)
        return fail(e,
                    "%s has compute capability %d.%d; the CUDA backend is built for 9.0 and "
                    "later (sm_90)",
                    pr.name, pr.major, pr.minor);
    CU(nullptr, cudaSetDevice(o->gpu));
    cu_model *cm = static_cast<cu_model *>(calloc(1, sizeof *cm));
    if (!cm) return fail(e, "out of memory");
    cm->gpu = o->gpu;
    m->dev = cm;
    cm->layers = static_cast<cu_layer *>(calloc((size_t)m->c.n_layer, sizeof(cu_layer)));
    packer count_pass = {nullptr, 0, cudaSuccess};
    if (cm->layers) pack_model(m, cm, &count_pass);
    size_t free_b = 0, total_b = 0;
    int rc = -1;
    if (!cm->layers)
        fail(e, "out of memory");
    else if ((err = cudaMemGetInfo(&free_b, &total_b)) != cudaSuccess)
        cuda_fail(nullptr, e, "cudaMemGetInfo", err);
    else if (count_pass.at > free_b)
        fail(e, "the model's weights need %.1f MiB of GPU memory; %s has %.1f MiB free",
             count_pass.at / 1048576.0, pr.name, free_b / 1048576.0);
    else if ((err = cudaMalloc(&cm->weights, count_pass.at)) != cudaSuccess)
        cuda_fail(nullptr, e, "cudaMalloc(weights)", err);
    else
        rc = 0;
    if (!rc) {
        packer copy = {cm->weights, 0, cudaSuccess};
        pack_model(m, cm, &copy);
        cm->weight_bytes = copy.at;
        const size_t lb = (size_t)m->c.n_layer * sizeof(cu_layer);
        if (copy.err != cudaSuccess)
            rc = cuda_fail(nullptr, e, "cudaMemcpy(weights)", copy.err);
        else if ((err = cudaMalloc(&cm->layers_dev, lb)) != cudaSuccess ||
                 (err = cudaMemcpy(cm->layers_dev, cm->layers, lb, cudaMemcpyHostToDevice)) !=
                     cudaSuccess)
            rc = cuda_fail(nullptr, e, "cudaMemcpy(layer table)", err);
        else if ((err = cudaStreamCreateWithFlags(&cm->st, cudaStreamNonBlocking)) != cudaSuccess)
            rc = cuda_fail(nullptr, e, "cudaStreamCreateWithFlags", err);
    }
    if (rc) {
        cu_model_free(m);
        return -1;
    }
    snprintf(note, note_len, "%s, %.1f GiB", pr.name, total_b / 1073741824.0);
    return 0;
}

/* ---------------------------------------------------------------- pools */

/* Bytes of a pool's buffers other than the states, for max_tokens per forward. */
static size_t pool_fixed_bytes(const mb_config *c, int max_tokens) {
    const size_t T = (size_t)max_tokens, L = (size_t)c->n_layer, E = (size_t)c->d_inner,
                 D = (size_t)c->d_model, N = (size_t)c->d_state, R = (size_t)c->dt_rank,
                 V = (size_t)c->n_vocab;
    return 4 * (L * T * (2 * E + N) + T * (2 * D + 4 * E + R + 2 * N + V)) + 4 * (5 * T + 1);
}

static int fit_slots(const mb_model *m, int max_tokens) {
    cudaSetDevice(CM(m)->gpu);
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    /* keep 5% of the card (at least 1 GiB) for the CUDA context, other pools and fragments */
    size_t margin = total_b / 20 > (1u << 30) ? total_b / 20 : (size_t)1 << 30,
           fixed = pool_fixed_bytes(&m->c, max_tokens) + margin;
    if (free_b <= fixed) return 0;
    size_t per_slot = 2 * (size_t)m->c.n_layer * mb_layer_state_floats(&m->c) * sizeof(float);
    size_t n = (free_b - fixed) / per_slot;
    return n > 65536 ? 65536 : (int)n;
}

/* The step kernel's arguments that do not change from one forward to the next; 0 when the model
 * can take it. */
static int step_init(const mb_model *m, mb_pool *p) {
    const cu_model *cm = CM(m);
    cu_pool *cp = CP(p);
    const mb_config *c = &m->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = c->dt_rank, V = c->n_vocab,
              T = CU_STEP_MAX_T;
    cu_step_args *a = &cp->step;
    a->layers = cm->layers_dev;
    a->n_layer = c->n_layer, a->D = D, a->E = E, a->N = N, a->R = R, a->K = c->d_conv, a->V = V;
    a->eps = c->norm_eps;
    a->embed = cm->embed, a->head = cm->head, a->nf_w = cm->nf_w, a->nf_b = cm->nf_b;
    /* the plans the per-operation path makes for the same matrices and buffers */
    for (int l = 0; l < c->n_layer; l++) {
        const cu_layer *L = &cm->layers[l];
        const cu_mm in = cu_mm_plan(&L->in_proj, 2 * E, cp->xn, D, T),
                    x = cu_mm_plan(&L->x_proj, R + 2 * N, cp->u, E, T),
                    out = cu_mm_plan(&L->out_proj, D, cp->y, E, T);
        if (L->dt_proj.dtype == 0) return -1; /* the step kernel reads BF16 dt_proj */
        if (l && (in.kind != a->in_mm.kind || x.kind != a->x_mm.kind || out.kind != a->out_mm.kind))
            return -1; /* one plan serves every layer */
        a->in_mm = in, a->x_mm = x, a->out_mm = out;
    }
    a->head_mm = cu_mm_plan(&cm->head, V, cp->xn, D, T);
    a->state = cp->state, a->j_xin = cp->j_xin, a->j_dt = cp->j_dt, a->j_B = cp->j_B;
    a->state_floats = p->state_floats, a->layer_floats = mb_layer_state_floats(c);
    a->max_tokens = (size_t)p->max_tokens;
    a->h = cp->h, a->xn = cp->xn, a->xz = cp->xz, a->u = cp->u, a->dbl = cp->dbl, a->y = cp->y;
    a->logits = cp->logits;
    return cu_step_prepare(a, cm->gpu, &cp->step_blocks);
}

static void pool_free(mb_pool *p) {
    cu_pool *cp = CP(p);
    if (!cp) return;
    cudaSetDevice(CM(p->m)->gpu);
    float *bufs[] = {cp->state, cp->j_xin, cp->j_dt, cp->j_B, cp->h,     cp->xn,
                     cp->xz,    cp->u,     cp->dbl,  cp->y,   cp->logits};
    for (float *b : bufs) cudaFree(b);
    for (cu_graph &g : cp->graphs)
        if (g.exec) cudaGraphExecDestroy(g.exec);
    cudaFree(cp->step.trace);
    if (cp->ktrace) {
        cu_trace_bind_mamba(nullptr);
        cu_trace_bind_matmul(nullptr);
        cudaFree(cp->ktrace);
    }
    cudaFree(cp->batch_dev);
    cudaFreeHost(cp->batch_host);
    cudaFreeHost(cp->logits_host);
    free(cp->q);
    free(cp->q_phase);
    free(cp->mark_gen);
    free(cp->mark_phase);
    free(cp);
    p->dev = nullptr;
}

/* The kernel choices' tuning knobs (cu_kernels.h): *v = $name where it is set and >= min. */
static void env_int(const char *name, int min, int *v) {
    const char *s = getenv(name);
    if (s && atoi(s) >= min) *v = atoi(s);
}

static int pool_init(mb_pool *p, mb_err *e) {
    const mb_model *m = p->m;
    const mb_config *c = &m->c;
    CU(m, cudaSetDevice(CM(m)->gpu));
    const size_t T = (size_t)p->max_tokens, L = (size_t)c->n_layer, E = (size_t)c->d_inner,
                 D = (size_t)c->d_model, N = (size_t)c->d_state, R = (size_t)c->dt_rank,
                 V = (size_t)c->n_vocab, F = sizeof(float);
    /* launch grids: sequences and 8-token tiles of one forward are a grid's y dimension */
    if (p->n_slots > 65535 || p->max_tokens > 65535 * 8)
        return fail(e, "the CUDA backend takes at most 65535 slots and %d tokens per forward",
                    65535 * 8);
    const size_t state_b = (size_t)p->n_slots * 2 * p->state_floats * F;
    size_t free_b = 0, total_b = 0;
    CU(m, cudaMemGetInfo(&free_b, &total_b));
    const size_t need = state_b + pool_fixed_bytes(c, p->max_tokens);
    if (need > free_b)
        return fail(e, "a pool of %d slots x %d tokens needs %.1f MiB of GPU memory; %.1f MiB free",
                    p->n_slots, p->max_tokens, need / 1048576.0, free_b / 1048576.0);
    cu_pool *cp = static_cast<cu_pool *>(calloc(1, sizeof *cp));
    if (!cp) return fail(e, "out of memory");
    p->dev = cp;
    cp->gen = 1;
    cp->mark_gen = static_cast<int *>(calloc((size_t)p->n_slots, sizeof(int)));
    cp->mark_phase = static_cast<int *>(calloc((size_t)p->n_slots, sizeof(int)));
    if (!cp->mark_gen || !cp->mark_phase) {
        pool_free(p);
        return fail(e, "out of memory");
    }
    const char *graphs = getenv("MB_CUDA_GRAPHS"), *pdl = getenv("MB_CUDA_PDL"),
               *fuse = getenv("MB_CUDA_FUSE");
    cp->use_pdl = !(pdl && !strcmp(pdl, "0"));
    cp->use_fused = !(fuse && !strcmp(fuse, "0"));
    env_int("MB_CUDA_DT_MIN", 1, &cu_dt_min);
    env_int("MB_CUDA_DT_MIN_FEW", 1, &cu_dt_min_few);
    env_int("MB_CUDA_TT_TINY", 0, &cu_tt_tiny);
    env_int("MB_CUDA_SCAN_CHAN_MIN", 1, &cu_scan_chan_min);
    env_int("MB_CUDA_TT_SMALL", 0, &cu_tt_small);
    env_int("MB_CUDA_TT_MID", 0, &cu_tt_mid);
    env_int("MB_CUDA_AHEAD8", 0, &cu_ahead8);
    env_int("MB_CUDA_TCS_MIN_T", 0, &cu_tcs_min_t);
    env_int("MB_CUDA_FOLD_MAX", 0, &cu_fold_max);
    env_int("MB_CUDA_SCAN_QUAD", 0, &cu_scan_quad);
    env_int("MB_CUDA_KC_MAX_T", 0, &cu_kc_max_t);
    cp->use_graphs = !(graphs && !strcmp(graphs, "0"));
    for (cu_graph &g : cp->graphs) g.T = -1;
    struct {
        float **buf;
        size_t floats;
    } a[] = {{&cp->state, state_b / F}, {&cp->j_xin, L * T * E}, {&cp->j_dt, L * T * E},
             {&cp->j_B, L * T * N},     {&cp->h, T * D},         {&cp->xn, T * D},
             {&cp->xz, T * 2 * E},      {&cp->u, T * E},         {&cp->dbl, T * (R + 2 * N)},
             {&cp->y, T * E},           {&cp->logits, T * V}};
    cudaError_t err = cudaSuccess;
    for (auto &b : a)
        if (err == cudaSuccess) err = cudaMalloc(b.buf, b.floats * F);
    if (err == cudaSuccess) err = cudaMalloc(&cp->batch_dev, (5 * T + 1) * sizeof(int));
    if (err == cudaSuccess) err = cudaMallocHost(&cp->batch_host, (5 * T + 1) * sizeof(int));
    if (err == cudaSuccess) err = cudaMallocHost(&cp->logits_host, T * V * F);
    if (err == cudaSuccess) err = cudaMemsetAsync(cp->state, 0, state_b, CM(m)->st);
    if (err == cudaSuccess) err = cudaStreamSynchronize(CM(m)->st);
    if (err != cudaSuccess) {
        pool_free(p);
        return cuda_fail(m, e, "allocating the pool", err);
    }
    const char *step = getenv("MB_CUDA_STEP"), *trace = getenv("MB_CUDA_STEP_TRACE");
    if (step && !strcmp(step, "1")) /* opt-in: faster only for deep models at batch 1 so far */
        cp->use_step = !step_init(m, p);
    cp->trace =
        cp->use_step && trace && !strcmp(trace, "1") &&
        cudaMalloc(&cp->step.trace, (4 * L + 4) * sizeof(unsigned long long)) == cudaSuccess;
    const char *kt = getenv("MB_CUDA_TRACE");
    if (kt && !strcmp(kt, "1") &&
        cudaMalloc(&cp->ktrace, (1 + CU_TRACE_MAX) * sizeof *cp->ktrace) == cudaSuccess &&
        (cu_trace_bind_mamba(cp->ktrace) != cudaSuccess ||
         cu_trace_bind_matmul(cp->ktrace) != cudaSuccess)) {
        cudaFree(cp->ktrace);
        cp->ktrace = nullptr;
    }
    cudaGetLastError(); /* a model the step kernel does not take leaves no error behind */
    return 0;
}

/* ---------------------------------------------------------------- the forward */

/* Enqueues a whole forward on the model's stream: the batch copy in (from the pinned host
 * buffer, already filled), every kernel, the logits copy out. Its launches depend only on
 * (T, n, n_out, scan); the batch itself is read from device memory, so a captured graph replays
 * any batch of the same shape. */
static void enqueue(const mb_model *m, const mb_pool *p, int T, int n, int n_out, int scan) {
    cu_model *cm = CM(m);
    cu_pool *cp = CP(p);
    const mb_config *c = &m->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = c->dt_rank, K = c->d_conv,
              V = c->n_vocab;
    const size_t MT = (size_t)p->max_tokens;
    cudaStream_t st = cm->st;
    const size_t nb = (size_t)(T + 3 * n + 1 + n_out) * sizeof(int);
    cudaMemcpyAsync(cp->batch_dev, cp->batch_host, nb, cudaMemcpyHostToDevice, st);
    const int *db = cp->batch_dev;
    cu_batch b = {db, db + T, db + T + n + 1, db + T + 2 * n + 1, db + T + 3 * n + 1, T, n, n_out};
    if (cp->use_step && T <= CU_STEP_MAX_T) { /* one persistent kernel */
        cp->step.b = b;
        cu_step(&cp->step, cp->step_blocks, st);
        if (n_out)
            cudaMemcpyAsync(cp->logits_host, cp->logits, (size_t)n_out * V * sizeof(float),
                            cudaMemcpyDeviceToHost, st);
        return;
    }
    cu_pdl = cp->use_pdl && T <= CU_PDL_MAX_T;
    cu_embed(&cm->embed, &b, cp->h, D, st);
    for (int l = 0; l < c->n_layer; l++) {
        const cu_layer *L = &cm->layers[l];
        cu_layer_state ls = {cp->state,
                             p->state_floats,
                             (size_t)l * mb_layer_state_floats(c),
                             cp->j_xin + (size_t)l * MT * E,
                             cp->j_dt + (size_t)l * MT * E,
                             cp->j_B + (size_t)l * MT * N};
        /* xz = in_proj(norm(h)); u = silu(conv(x)), advancing each sequence's conv window */
        const int ipc = cp->use_fused ? cu_in_proj_conv_plan(L, &b, D, E, K) : 0;
        if (!(ipc & CU_IPC_NORM))
            cu_norm(cp->h, nullptr, T, cp->xn, L->norm_w, L->norm_b, D, c->norm_eps, st);
        if (ipc)
            cu_in_proj_conv(L, &b, &ls, ipc & CU_IPC_NORM ? cp->h : cp->xn, cp->xz, cp->u, D, E, K,
                            c->norm_eps, st);
        else
            cu_matmul(&L->in_proj, 2 * E, cp->xn, D, cp->xz, 2 * E, T, L->in_b, CU_EPI_STORE, st);
        if (!(ipc & CU_IPC_CONV)) cu_conv(L, &b, &ls, cp->xz, cp->u, E, K, st);
        /* [dt_low, B, C] = x_proj(u) */
        cu_matmul(&L->x_proj, R + 2 * N, cp->u, E, cp->dbl, R + 2 * N, T, nullptr, CU_EPI_STORE,
                  st);
        /* dt = softplus(dt_proj(dt_low) + dt_bias), the selective scan, then y * silu(z) */
        cu_scan(L, &b, &ls, cp->u, cp->dbl, cp->xz, cp->y, E, N, R, K, scan, st);
        /* residual connection: h += out_proj(y) */
        cu_matmul(&L->out_proj, D, cp->y, E, cp->h, D, T, L->out_b, CU_EPI_ADD, st);
    }
    if (n_out) { /* final norm and the head, only for the rows asked for */
        cu_norm(cp->h, b.rows, n_out, cp->xn, cm->nf_w, cm->nf_b, D, c->norm_eps, st);
        cu_matmul(&cm->head, V, cp->xn, D, cp->logits, V, n_out, nullptr, CU_EPI_STORE, st);
        cudaMemcpyAsync(cp->logits_host, cp->logits, (size_t)n_out * V * sizeof(float),
                        cudaMemcpyDeviceToHost, st);
    }
}

/* The graph for a batch shape: found, or captured the second time the shape comes (a shape
 * seen once, such as the tail of a prompt, is not worth an instantiation). NULL: run eagerly. */
static cudaGraphExec_t graph_for(const mb_model *m, const mb_pool *p, int T, int n, int n_out,
                                 int scan) {
    cu_pool *cp = CP(p);
    cu_graph *g = nullptr, *lru = &cp->graphs[0];
    for (int i = 0; i < CU_GRAPHS; i++) {
        cu_graph *x = &cp->graphs[i];
        if (x->T == T && x->n == n && x->n_out == n_out && x->scan == scan) g = x;
        if (x->used < lru->used) lru = x;
    }
    cp->clock++;
    if (!g) { /* first sight: remember the shape, evicting the least recently used */
        if (lru->exec) cudaGraphExecDestroy(lru->exec);
        *lru = cu_graph{T, n, n_out, scan, nullptr, cp->clock};
        return nullptr;
    }
    g->used = cp->clock;
    if (g->exec) return g->exec;
    cudaStream_t st = CM(m)->st;
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return nullptr;
    enqueue(m, p, T, n, n_out, scan);
    if (cudaStreamEndCapture(st, &graph) == cudaSuccess &&
        cudaGraphInstantiate(&g->exec, graph, 0) != cudaSuccess)
        g->exec = nullptr;
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError(); /* a failed capture leaves no sticky error: run eagerly instead */
    return g->exec;
}

/* The step kernel's phases, summed over the layers (MB_CUDA_STEP_TRACE=1; a barrier's wait is
 * counted in the phase before it). */
static void print_trace(const mb_model *m, const mb_pool *p) {
    const int L = m->c.n_layer, n = 4 * L + 4;
    unsigned long long t[4 * 256 + 4];
    if (L > 256 || cudaMemcpy(t, CP(p)->step.trace, (size_t)n * sizeof *t,
                              cudaMemcpyDeviceToHost) != cudaSuccess)
        return;
    double ph[4] = {0, 0, 0, 0};
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 4; k++) ph[k] += (double)(t[2 + 4 * l + k] - t[1 + 4 * l + k]) / 1e3;
    fprintf(stderr,
            "step kernel (us): all %.1f | embed %.1f | per layer: in_proj+conv %.2f x_proj %.2f "
            "scan %.2f out_proj %.2f | final norm %.1f head %.1f\n",
            (double)(t[n - 1] - t[0]) / 1e3, (double)(t[1] - t[0]) / 1e3, ph[0] / L, ph[1] / L,
            ph[2] / L, ph[3] / L, (double)(t[n - 2] - t[n - 3]) / 1e3,
            (double)(t[n - 1] - t[n - 2]) / 1e3);
}

/* The per-operation kernels of one forward (MB_CUDA_TRACE=1): from each kernel's entry (its first
 * block past the wait for the kernel before) to the next one's, summed by the kernel's place in
 * a layer, averaged over the layers. The head's own time is not seen (nothing follows it). */
static void print_ops_trace(const mb_model *m, const mb_pool *p, int n_out) {
    static unsigned long long t[1 + CU_TRACE_MAX];
    if (cudaMemcpy(t, CP(p)->ktrace, sizeof t, cudaMemcpyDeviceToHost) != cudaSuccess) return;
    const int L = m->c.n_layer, n = t[0] < CU_TRACE_MAX ? (int)t[0] : CU_TRACE_MAX;
    const int tail = n_out ? 2 : 0, per = (n - 1 - tail) / L;
    if (per < 1 || 1 + per * L + tail != n || per > 8) return;
    double k[8] = {0};
    for (int l = 0; l < L; l++)
        for (int j = 0; j < per; j++) {
            const int i = 1 + 1 + l * per + j; /* t[1] is the embedding's entry */
            if (i + 1 <= n) k[j] += (double)(t[i + 1] - t[i]) / 1e3;
        }
    static const char *const four[] = {"in_proj+norm+conv", "x_proj", "scan", "out_proj"},
                             *const five[] = {"norm", "in_proj+conv", "x_proj", "scan", "out_proj"},
                             *const six[] = {"norm",   "in_proj", "conv",
                                             "x_proj", "scan",    "out_proj"};
    fprintf(stderr, "kernels (us): entry to last entry %.1f | embed %.1f | per layer:",
            (double)(t[n] - t[1]) / 1e3, (double)(t[2] - t[1]) / 1e3);
    for (int j = 0; j < per; j++)
        fprintf(stderr, " %s %.2f",
                per == 4   ? four[j]
                : per == 5 ? five[j]
                : per == 6 ? six[j]
                           : "kernel",
                k[j] / L);
    if (tail) fprintf(stderr, " | final norm %.1f", (double)(t[n] - t[n - 1]) / 1e3);
    fprintf(stderr, "\n");
}

/* ---------------------------------------------------------------- queued slot operations */

/* Rollback, reset and copy are queued on the pool and run in as few launches as their order
 * allows (cu_slot_ops_run) before anything reads a state: the next forward, read or write. An
 * operation goes in the first phase after every queued one that touches its slots, so the
 * operations of a phase touch different slots and each phase is one launch (a round of
 * speculation over many sequences: all its copies, then all its rollbacks, not one launch per
 * sequence each). A fault while they run fails that forward (or the read). */
static int queue_op(mb_pool *p, const cu_slot_op &op, mb_err *e) {
    cu_pool *cp = CP(p);
    if (cp->n_q == cp->cap_q) {
        const int cap = cp->cap_q ? 2 * cp->cap_q : 64;
        cu_slot_op *q = static_cast<cu_slot_op *>(realloc(cp->q, (size_t)cap * sizeof *q));
        if (q) cp->q = q;
        int *ph = static_cast<int *>(realloc(cp->q_phase, (size_t)cap * sizeof *ph));
        if (ph) cp->q_phase = ph;
        if (!q || !ph) return fail(e, "out of memory");
        cp->cap_q = cap;
    }
    const int touched[2] = {op.slot, op.kind == CU_OP_COPY ? op.src : -1};
    int ph = 0;
    for (int s : touched)
        if (s >= 0 && cp->mark_gen[s] == cp->gen && cp->mark_phase[s] + 1 > ph)
            ph = cp->mark_phase[s] + 1;
    for (int s : touched)
        if (s >= 0) cp->mark_gen[s] = cp->gen, cp->mark_phase[s] = ph;
    cp->q[cp->n_q] = op;
    cp->q_phase[cp->n_q++] = ph;
    if (cp->n_phase < ph + 1) cp->n_phase = ph + 1;
    return 0;
}

static int flush_ops(const mb_model *m, mb_pool *p, mb_err *e) {
    cu_pool *cp = CP(p);
    if (!cp->n_q) return 0;
    const mb_config *c = &m->c;
    cu_slot_ops ops;
    for (int ph = 0; ph < cp->n_phase; ph++) {
        ops.n = 0;
        for (int i = 0; i <= cp->n_q; i++) {
            if (i < cp->n_q && cp->q_phase[i] != ph) continue;
            if (i < cp->n_q) ops.op[ops.n++] = cp->q[i];
            if (ops.n && (ops.n == CU_SLOT_OPS_MAX || i == cp->n_q)) { /* full, or the last */
                cu_slot_ops_run(CM(m)->layers_dev, c->n_layer, cp->state, p->state_floats,
                                cp->j_xin, cp->j_dt, cp->j_B, p->max_tokens, c->d_inner, c->d_state,
                                c->d_conv, &ops, CM(m)->st);
                ops.n = 0;
            }
        }
    }
    cp->n_q = cp->n_phase = 0;
    if (!++cp->gen) { /* after 2^31 flushes: no stale mark may match */
        memset(cp->mark_gen, 0, (size_t)p->n_slots * sizeof(int));
        cp->gen = 1;
    }
    CU(m, cudaGetLastError()); /* a launch that could not start */
    return 0;
}

static int forward(mb_model *m, mb_pool *p, const mb_batch *bt, const int *rows, int n_out,
                   float *logits, mb_err *e) {
    cu_model *cm = CM(m);
    cu_pool *cp = CP(p);
    const int n = bt->n_seq, T = n ? bt->off[n] : 0, V = m->c.n_vocab;
    if (!T) return 0;
    CU(m, cudaSetDevice(cm->gpu));
    if (flush_ops(m, p, e)) return -1;
    /* the batch, in one copy: tokens (T), off (n + 1), slot (n), cur (n), rows (n_out) */
    int *hb = cp->batch_host;
    memcpy(hb, bt->tokens, (size_t)T * sizeof(int));
    memcpy(hb + T, bt->off, (size_t)(n + 1) * sizeof(int));
    memcpy(hb + T + n + 1, bt->slot, (size_t)n * sizeof(int));
    int longest = 0;
    for (int s = 0; s < n; s++) {
        hb[T + 2 * n + 1 + s] = p->cur[bt->slot[s]];
        if (bt->off[s + 1] - bt->off[s] > longest) longest = bt->off[s + 1] - bt->off[s];
    }
    const int scan =
        (longest >= (n >= cu_scan_chan_min ? cu_dt_min : cu_dt_min_few) ? CU_SCAN_PRE : 0) |
        (longest >= CU_SCAN_LONG_T ? CU_SCAN_LONG : 0);
    memcpy(hb + T + 3 * n + 1, rows, (size_t)n_out * sizeof(int));
    cudaGraphExec_t g = cp->use_graphs && !(cp->use_step && T <= CU_STEP_MAX_T)
                            ? graph_for(m, p, T, n, n_out, scan)
                            : nullptr;
    if (cp->ktrace) CU(m, cudaMemsetAsync(cp->ktrace, 0, sizeof *cp->ktrace, cm->st));
    if (g)
        CU(m, cudaGraphLaunch(g, cm->st));
    else
        enqueue(m, p, T, n, n_out, scan);
    CU(m, cudaGetLastError()); /* a launch that could not start */
    CU(m, cudaStreamSynchronize(cm->st));
    if (n_out) memcpy(logits, cp->logits_host, (size_t)n_out * V * sizeof(float));
    if (cp->trace && T <= CU_STEP_MAX_T) print_trace(m, p);
    if (cp->ktrace && !(cp->use_step && T <= CU_STEP_MAX_T)) print_ops_trace(m, p, n_out);
    return 0;
}

/* ---------------------------------------------------------------- slot operations */

static float *slot_buf(const mb_pool *p, int slot, int which) {
    return CP(p)->state + ((size_t)slot * 2 + (size_t)which) * p->state_floats;
}

/* Rollback, reset and copy are queued (queue_op): no launch and no host round trip each. */
static int rollback(mb_pool *p, int slot, int j_start, int n_keep, mb_err *e) {
    return queue_op(p, cu_slot_op{CU_OP_ROLLBACK, slot, p->cur[slot], -1, 0, j_start, n_keep}, e);
}

static int reset(mb_pool *p, int slot, mb_err *e) {
    return queue_op(p, cu_slot_op{CU_OP_RESET, slot, p->cur[slot], -1, 0, 0, 0}, e);
}

static int copy(mb_pool *p, int dst, int src, mb_err *e) {
    return queue_op(p, cu_slot_op{CU_OP_COPY, dst, p->cur[dst], src, p->cur[src], 0, 0}, e);
}

static int read(mb_pool *p, int slot, void *dst, mb_err *e) {
    const mb_model *m = p->m;
    CU(m, cudaSetDevice(CM(m)->gpu));
    if (flush_ops(m, p, e)) return -1;
    CU(m, cudaMemcpyAsync(dst, slot_buf(p, slot, p->cur[slot]), p->state_floats * sizeof(float),
                          cudaMemcpyDeviceToHost, CM(m)->st));
    CU(m, cudaStreamSynchronize(CM(m)->st));
    return 0;
}

static int write(mb_pool *p, int slot, const void *src, mb_err *e) {
    const mb_model *m = p->m;
    CU(m, cudaSetDevice(CM(m)->gpu));
    if (flush_ops(m, p, e)) return -1;
    CU(m, cudaMemcpyAsync(slot_buf(p, slot, p->cur[slot]), src, p->state_floats * sizeof(float),
                          cudaMemcpyHostToDevice, CM(m)->st));
    CU(m, cudaStreamSynchronize(CM(m)->st));
    return 0;
}

static const mb_backend cuda_backend = {
    "cuda",  model_init, cu_model_free, fit_slots, pool_init, pool_free,
    forward, rollback,   reset,         copy,      read,      write,
};

extern "C" __attribute__((visibility("default"))) const mb_backend *mb_cuda_backend(void) {
    return &cuda_backend;
}
