/* engine.c: what every backend shares: choosing the backend (the CUDA one is a shared object
 * loaded at run time, so the same binary starts where there is no GPU or no CUDA library), the
 * checks of a batch, and the pool's bookkeeping around a forward. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int mb_device_parse(const char *s, mb_backend_opts *o) {
    char *end;
    if (!strcmp(s, "auto") || !strcmp(s, "cpu") || !strcmp(s, "cuda")) {
        o->device = s[0] == 'a' ? MB_DEVICE_AUTO : s[1] == 'p' ? MB_DEVICE_CPU : MB_DEVICE_CUDA;
        o->gpu = 0;
        return 0;
    }
    if (strncmp(s, "cuda:", 5) || !s[5]) return -1;
    long g = strtol(s + 5, &end, 10);
    if (*end || g < 0 || g > 255) return -1;
    o->device = MB_DEVICE_CUDA;
    o->gpu = (int)g;
    return 0;
}

/* The CUDA backend's table, or NULL with the reason in why. $MB_CUDA_LIB names the library;
 * otherwise it is looked for beside the executable. The driver is looked for first, so that a
 * machine without one never loads the CUDA runtime at all. */
static const mb_backend *load_cuda(mb_model *m, char *why, size_t why_len) {
    void *drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!drv) {
        snprintf(why, why_len, "no NVIDIA driver (libcuda.so.1 cannot be loaded)");
        return NULL;
    }
    dlclose(drv);
    char path[PATH_MAX + 64];
    const char *env = getenv("MB_CUDA_LIB");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            snprintf(why, why_len, "cannot find the executable's folder");
            return NULL;
        }
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(path, sizeof path, "%s/%s", exe, MB_CUDA_LIBRARY);
    }
    /* Never unloaded (NODELETE): the CUDA runtime linked into it keeps threads and exit
     * handlers that must outlive any one model. */
    m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!m->dl) {
        snprintf(why, why_len, "the CUDA backend cannot be loaded (%s; build it with nvcc: make)",
                 dlerror());
        return NULL;
    }
    mb_backend_entry entry = (mb_backend_entry)(uintptr_t)dlsym(m->dl, MB_CUDA_ENTRY);
    if (!entry) {
        snprintf(why, why_len, "the CUDA backend library has no symbol %s", MB_CUDA_ENTRY);
        dlclose(m->dl);
        m->dl = NULL;
        return NULL;
    }
    return entry();
}

int mb_backend_choose(mb_model *m, const mb_backend_opts *o, mb_err *e) {
    static const mb_backend_opts defaults = {0, MB_DEVICE_AUTO, 0};
    if (!o) o = &defaults;
    char why[520] = "", note[128] = "";
    if (o->device != MB_DEVICE_CPU) {
        const mb_backend *cuda = load_cuda(m, why, sizeof why);
        mb_err ce;
        if (cuda && !cuda->model_init(m, o, note, sizeof note, &ce)) {
            m->be = cuda;
            snprintf(m->device, sizeof m->device, "cuda:%d (%s)", o->gpu, note);
            snprintf(m->device_note, sizeof m->device_note, "%s",
                     o->device == MB_DEVICE_AUTO ? "auto: a usable GPU was found"
                                                 : "asked for (--device cuda)");
            return 0;
        }
        if (cuda) snprintf(why, sizeof why, "%s", ce.msg);
        if (m->dl) dlclose(m->dl);
        m->dl = NULL;
        if (o->device == MB_DEVICE_CUDA) return mb_fail(e, "device cuda:%d: %s", o->gpu, why);
    }
    if (mb_cpu_backend.model_init(m, o, note, sizeof note, e)) return -1;
    m->be = &mb_cpu_backend;
    snprintf(m->device, sizeof m->device, "cpu (%s)", note);
    if (o->device == MB_DEVICE_CPU)
        snprintf(m->device_note, sizeof m->device_note, "asked for (--device cpu)");
    else
        snprintf(m->device_note, sizeof m->device_note, "auto: no usable GPU: %s", why);
    return 0;
}

void mb_backend_release(mb_model *m) {
    if (m->be) m->be->model_free(m);
    m->be = NULL;
    if (m->dl) dlclose(m->dl);
    m->dl = NULL;
}

const char *mb_model_device(const mb_model *m) {
    return m->device;
}
const char *mb_model_device_note(const mb_model *m) {
    return m->device_note;
}
int mb_model_on_gpu(const mb_model *m) {
    return m->be != &mb_cpu_backend;
}
int mb_model_usable(const mb_model *m) {
    return !m->dead;
}
int mb_model_threads(const mb_model *m) {
    return m->threads ? mb_threads_count(m->threads) : 0;
}
int mb_model_fit_slots(const mb_model *m, int max_tokens) {
    return m->be->fit_slots(m, max_tokens);
}

/* ---------------------------------------------------------------- the forward */

/* Checks the batch in O(tokens), not O(slots): duplicate slots by a mark per check. */
static int check_batch(const mb_model *m, mb_pool *p, const mb_batch *b, mb_err *e) {
    if (b->n_seq < 0 || (b->n_seq && (!b->off || !b->slot || !b->tokens)) ||
        (b->n_seq && b->off[0] != 0))
        return mb_fail(e, "batch: bad sequence list");
    const uint32_t gen = ++p->mark_gen;
    if (!gen) { /* after 2^32 checks: no stale mark may match */
        memset(p->mark, 0, (size_t)p->n_slots * sizeof(uint32_t));
        return check_batch(m, p, b, e);
    }
    for (int s = 0; s < b->n_seq; s++) {
        if (b->off[s + 1] <= b->off[s]) return mb_fail(e, "batch: sequence %d has no tokens", s);
        if (b->slot[s] < 0 || b->slot[s] >= p->n_slots)
            return mb_fail(e, "batch: slot %d out of range [0, %d)", b->slot[s], p->n_slots);
        if (p->mark[b->slot[s]] == gen)
            return mb_fail(e, "batch: slot %d appears twice", b->slot[s]);
        p->mark[b->slot[s]] = gen;
    }
    int T = b->n_seq ? b->off[b->n_seq] : 0;
    if (T > p->max_tokens)
        return mb_fail(e, "batch: %d tokens, the pool takes %d per forward", T, p->max_tokens);
    for (int t = 0; t < T; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= m->c.n_vocab)
            return mb_fail(e, "batch: token %d out of range [0, %d)", b->tokens[t], m->c.n_vocab);
    return 0;
}

/* Fault injection for tests of the callers' error paths: MB_FAULT_FORWARD=N fails the N-th
 * forward of the process (counting from 1); "N:lost" also marks the device as failed for good,
 * as a sticky CUDA error would. */
static int injected_fault(mb_model *m, mb_err *e) {
    static long count;
    const char *f = getenv("MB_FAULT_FORWARD");
    if (!f || !*f) return 0;
    char *end;
    long n = strtol(f, &end, 10);
    if (++count != n) return 0;
    if (!strcmp(end, ":lost")) m->dead = 1;
    return mb_fail(e, "%s: injected fault at forward %ld (MB_FAULT_FORWARD)", m->device, n);
}

int mb_forward(mb_model *m, mb_pool *p, const mb_batch *b, float *logits, mb_err *e) {
    if (p->m != m) return mb_fail(e, "forward: the pool belongs to another model");
    if (m->dead) return mb_fail(e, "%s: the device has failed; restart the process", m->device);
    if (check_batch(m, p, b, e)) return -1;
    int *rows = p->rows, n_out = 0;
    for (int s = 0; s < b->n_seq; s++)
        for (int t = b->off[s]; t < b->off[s + 1]; t++)
            if (b->want ? b->want[t] : t == b->off[s + 1] - 1) rows[n_out++] = t;
    /* The span inputs are overwritten either way: nothing fed before can roll back after this
     * call (j_gen of those slots is now older than gen). */
    if (!++p->gen) { /* after 2^32 forwards: no stale number may match */
        memset(p->j_gen, 0, (size_t)p->n_slots * sizeof(uint32_t));
        p->gen = 1;
    }
    /* A failed forward leaves every slot's current state as it was (it only writes the other
     * buffer), unless the device itself has failed. */
    if (injected_fault(m, e) || m->be->forward(m, p, b, rows, n_out, logits, e)) return -1;
    /* the new states become current; the old ones stay as the span's start for rollback */
    for (int s = 0; s < b->n_seq; s++) {
        int slot = b->slot[s];
        p->cur[slot] = !p->cur[slot];
        p->j_start[slot] = b->off[s];
        p->j_gen[slot] = p->gen;
        p->j_len[slot] = p->j_at[slot] = b->off[s + 1] - b->off[s];
    }
    return 0;
}

/* ---------------------------------------------------------------- drawing many rows */

#define ROWS_PER_THREAD                                                                            \
    8                 /* fewer rows a thread than this: the hand-off costs more than it saves      \
                       */
#define SAMPLER_MAX 8 /* host threads drawing for a GPU model */

typedef struct rows_job {
    const mb_sampling *const *s;
    const float *logits;
    const int *row;
    const uint64_t *pos;
    int *out;
    int n, n_vocab, used; /* rows, and the threads that share them */
    char *scratch;        /* (threads, scratch_bytes) */
    size_t scratch_bytes;
} rows_job;

static void rows_worker(void *ctx, int i, int nt) {
    const rows_job *j = ctx;
    (void)nt;
    if (i >= j->used) return;
    const int lo = (int)((long)j->n * i / j->used), hi = (int)((long)j->n * (i + 1) / j->used);
    for (int k = lo; k < hi; k++)
        j->out[k] = mb_sample(j->s[k], j->logits + (size_t)j->row[k] * (size_t)j->n_vocab,
                              j->n_vocab, j->pos[k], j->scratch + (size_t)i * j->scratch_bytes);
}

/* The threads that draw: the CPU backend's forward team (idle between forwards), or on a GPU a
 * team of half the cores, at most SAMPLER_MAX, started at the first call. */
static mb_threads *rows_team(mb_model *m, size_t scratch_bytes, mb_err *e) {
    mb_threads *t = m->threads;
    if (!t && !m->sampler) {
        long n = sysconf(_SC_NPROCESSORS_ONLN) / 2;
        m->sampler = mb_threads_create(n < 1 ? 1 : n > SAMPLER_MAX ? SAMPLER_MAX : (int)n);
        if (!m->sampler) return mb_fail(e, "cannot start sampling threads"), NULL;
    }
    if (!t) t = m->sampler;
    if (!m->sample_scratch &&
        !(m->sample_scratch = malloc((size_t)mb_threads_count(t) * scratch_bytes)))
        return mb_fail(e, "out of memory"), NULL;
    return t;
}

int mb_sample_rows(mb_model *m, int n, const mb_sampling *const *s, const float *logits,
                   const int *row, const uint64_t *pos, int *out, mb_err *e) {
    if (n <= 0) return 0;
    const int V = m->c.n_vocab;
    rows_job j = {s, logits, row, pos, out, n, V, 1, NULL, mb_sample_scratch_bytes(V)};
    mb_threads *t = rows_team(m, j.scratch_bytes, e);
    if (!t) return -1;
    j.scratch = m->sample_scratch;
    j.used = n / ROWS_PER_THREAD;
    if (j.used > mb_threads_count(t)) j.used = mb_threads_count(t);
    if (j.used <= 1) {
        j.used = 1;
        rows_worker(&j, 0, 1);
    } else {
        mb_threads_run(t, rows_worker, &j);
    }
    return 0;
}
