/* backend.h: the table of operations a backend implements. The engine's public calls
 * (mambabyte.h) check their arguments and keep the pool's bookkeeping (which of a slot's two
 * state buffers is current, what the last forward fed each slot) once, in model/, then call
 * the backend: the CPU (cpu.c) or CUDA (kernels/, a shared object loaded at run time, whose one
 * exported symbol MB_CUDA_ENTRY returns its table).
 *
 * Every backend keeps two state buffers per slot in the layout of mb_pool_state_bytes (a
 * forward reads buffer p->cur[slot] and writes the other), keeps the last forward's span inputs
 * for rollback, and reports failures through mb_err, never by exiting. */
#ifndef MB_BACKEND_H
#define MB_BACKEND_H

#include "mambabyte.h"

typedef struct mb_backend {
    const char *name; /* "cpu", "cuda" */
    /* Takes the loaded host weights (m->layers, m->embed, ...) to the device; note gets a
     * human description of the device ("NVIDIA H200, 139.8 GiB"). */
    int (*model_init)(mb_model *m, const mb_backend_opts *o, char *note, size_t note_len,
                      mb_err *e);
    void (*model_free)(mb_model *m);
    /* Slots that fit in the device memory left for a pool of max_tokens (0: not limited). */
    int (*fit_slots)(const mb_model *m, int max_tokens);
    /* Allocates p->n_slots states (zeroed, cur = 0) and room for max_tokens span inputs. */
    int (*pool_init)(mb_pool *p, mb_err *e);
    void (*pool_free)(mb_pool *p);
    /* The checked batch; rows[0..n_out) are the token indices whose logits are written, in
     * order. Reads buffer p->cur[slot] of each slot and writes the other. */
    int (*forward)(mb_model *m, mb_pool *p, const mb_batch *b, const int *rows, int n_out,
                   float *logits, mb_err *e);
    /* Rebuilds the current buffer of slot from its other buffer (the state before the span)
     * and the first n_keep span inputs of the last forward, which fed it from token j_start. */
    int (*rollback)(mb_pool *p, int slot, int j_start, int n_keep, mb_err *e);
    /* Whole current states: zero, copy, to and from host memory. */
    int (*reset)(mb_pool *p, int slot, mb_err *e);
    int (*copy)(mb_pool *p, int dst, int src, mb_err *e);
    int (*read)(mb_pool *p, int slot, void *dst, mb_err *e);
    int (*write)(mb_pool *p, int slot, const void *src, mb_err *e);
} mb_backend;

extern const mb_backend mb_cpu_backend;

#define MB_CUDA_LIBRARY "libmambabyte_cuda.so"
#define MB_CUDA_ENTRY   "mb_cuda_backend"
typedef const mb_backend *(*mb_backend_entry)(void);

#endif
