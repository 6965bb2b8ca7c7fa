/* internal.h: what the engine's own files share: the model object, the pool, the thread team
 * and the CPU kernels. Nothing outside model/ includes this. */
#ifndef MB_INTERNAL_H
#define MB_INTERNAL_H

#include <stdint.h>

#include "backend.h"
#include "mambabyte.h"
#include "safetensors.h"

/* A weight matrix [rows, cols], row-major, held in F32, BF16 or Q8 (int8 with a float32 scale
 * per row: W[r, k] = scale[r] * w[r, k]; the CPU backend's --weights q8). */
typedef struct mb_mat {
    const void *w;
    mb_dtype dtype; /* MB_F32, MB_BF16 or MB_Q8 */
    int rows, cols;
    const float *scale; /* (rows) for MB_Q8, else NULL */
} mb_mat;

static inline size_t mb_dtype_size(mb_dtype dt) {
    return dt == MB_F32 ? 4 : dt == MB_Q8 ? 1 : 2;
}

typedef struct mb_layer {
    const float *norm_w, *norm_b; /* (d_model); norm_b NULL for RMSNorm */
    mb_mat in_proj;               /* (2*d_inner, d_model): rows [0,E) give x, [E,2E) give z */
    const float *in_b;            /* (2*d_inner) or NULL */
    const float *conv_w;          /* (d_conv, d_inner): tap-major, transposed at load */
    const float *conv_b;          /* (d_inner) */
    mb_mat x_proj;                /* (dt_rank + 2*d_state, d_inner) */
    mb_mat dt_proj;               /* (d_inner, dt_rank) */
    const float *dt_b;            /* (d_inner) */
    const float *A;               /* (d_inner, d_state) = -exp(A_log) */
    const float *D;               /* (d_inner) */
    mb_mat out_proj;              /* (d_model, d_inner) */
    const float *out_b;           /* (d_model) or NULL */
} mb_layer;

typedef struct mb_threads mb_threads;

struct mb_model {
    mb_config c;
    mb_mat embed;         /* (n_rows, d_model) */
    mb_mat head;          /* (n_rows, d_model); the embedding when tied */
    const float *nf_w;    /* final norm (d_model) */
    const float *nf_b;    /* (d_model) or NULL */
    mb_layer *layers;     /* (n_layer) */
    mb_st_file files[16]; /* open while loading */
    int n_files;
    void *arena_map; /* the weight matrices (see model.c, arena_reserve) */
    size_t arena_map_len;
    uint8_t *arena; /* 2 MB aligned inside arena_map */
    size_t arena_len, arena_used;
    void **owned; /* buffers converted at load time, freed with the model */
    int n_owned, cap_owned;
    mb_threads *threads;  /* CPU backend only */
    mb_threads *sampler;  /* host threads for mb_sample_rows on a GPU (NULL until used) */
    void *sample_scratch; /* (threads, mb_sample_scratch_bytes) for mb_sample_rows */
    const mb_backend *be; /* the backend that runs it */
    void *dev;            /* the backend's own model data (device weights, streams) */
    void *dl;             /* dlopen handle of the CUDA backend */
    int dead;             /* set by a backend when its device has failed for good */
    char device[192];     /* "cpu", "cuda:0 (NVIDIA H200, 139.8 GiB)" */
    char device_note[600];
};

/* ---- state layout: per layer, conv window (d_conv-1, d_inner), oldest input first, then the
 * ssm state (d_inner, d_state) ---- */
static inline size_t mb_layer_state_floats(const mb_config *c) {
    return (size_t)c->d_inner * (size_t)(c->d_conv - 1 + c->d_state);
}

struct mb_pool {
    mb_model *m;
    int n_slots, max_tokens;
    size_t state_floats; /* per slot, all layers */
    /* Kept by pool.c for every backend: */
    uint8_t *cur; /* (n_slots) which of the slot's two state buffers is current */
    int *j_start; /* (n_slots) first token index of the slot in its last forward, -1 if none */
    /* Forwards are numbered (gen); a slot's span inputs are those of forward j_gen[slot], valid
     * for rollback only while that is the pool's last one (so a step costs nothing per idle
     * slot). mark[slot] == mark_gen: the batch being checked holds the slot. */
    uint32_t gen, *j_gen, mark_gen, *mark;
    int *j_len; /* (n_slots) tokens the last forward fed the slot */
    int *j_at;  /* (n_slots) tokens of that span the current state reflects (after rollback) */
    int *rows;  /* (max_tokens) token index of each logits row */
    /* The CPU backend's buffers (NULL on other backends): */
    float *state; /* (n_slots, 2, state_floats): two buffers per slot */
    /* The last forward's span inputs, for rollback: what the scan needs per position. */
    float *j_xin; /* (n_layer, max_tokens, d_inner) conv inputs */
    float *j_dt;  /* (n_layer, max_tokens, d_inner) dt after softplus */
    float *j_B;   /* (n_layer, max_tokens, d_state) */
    /* activations for up to max_tokens tokens */
    float *h, *xn, *xz, *u, *dbl, *y;
    void *dev; /* another backend's pool data */
};

static inline float *mb_slot_state(const mb_pool *p, int slot, int which) {
    return p->state + ((size_t)slot * 2 + (size_t)which) * p->state_floats;
}

/* ---- config.json (model.c): txt[0..len) (not NUL-terminated) into c; the vocabulary padding
 * multiple and the rms_norm key (-1: absent) for the loader to settle against the tensors. path
 * names the file in messages. ---- */
int mb_config_parse(const char *txt, size_t len, const char *path, mb_config *c, int *pad_mult,
                    int *rms_key, mb_err *e);

/* ---- backends (engine.c): picks and starts the backend for o->device after the host weights
 * are loaded; releases it (and its shared object) with the model. ---- */
int mb_backend_choose(mb_model *m, const mb_backend_opts *o, mb_err *e);
void mb_backend_release(mb_model *m);

/* ---- thread team: fn(ctx, i, n) runs once on each of the n threads (the caller is i = 0) ---- */
mb_threads *mb_threads_create(int n);
void mb_threads_free(mb_threads *t);
int mb_threads_count(const mb_threads *t);
void mb_threads_run(mb_threads *t, void (*fn)(void *ctx, int i, int n), void *ctx);

/* ---- CPU kernels (cpu.c), shared by the forward and the pool's rollback ---- */
/* One conv + SiLU step for channels [c0,c1): window (K-1, E) in `win_in`, new input x (E);
 * writes the shifted window to win_out (may equal win_in) and the activation to u. */
void mb_conv_step(const mb_layer *L, const mb_config *c, const float *win_in, float *win_out,
                  const float *x, float *u, int c0, int c1);
/* One scan step for channels [c0,c1): s = exp(dt A) s + dt B u, from s_in into s_out (may be
 * equal); if y is not NULL also y = s.C + D u. */
void mb_scan_step(const mb_layer *L, const mb_config *c, const float *s_in, float *s_out,
                  const float *u, const float *dt, const float *B, const float *C, float *y, int c0,
                  int c1);

/* ---- the CPU backend's ISA variants (cpu.c), numbered from 0 (avx2) up; for tests and
 * benchmarks that compare them in one process ---- */
/* 1 if this machine can run variant i. */
int mb_cpu_isa_supported(int i);
/* Variant i's name, NULL past the last. */
const char *mb_cpu_isa_name(int i);
/* Makes the variant named `name` serve every later forward (0), or -1 if this machine cannot
 * run it. Not while a forward is running. */
int mb_cpu_isa_set(const char *name);

#endif
