/* threads.c: a fixed team of worker threads for the forward pass. The caller runs share 0 and
 * waits for the others; workers spin briefly (a decode step issues a parallel region every few
 * microseconds) and then sleep on a condition variable so an idle server costs no CPU. */
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

#define SPINS 4000 /* pauses before a worker yields its core, then sleeps */

struct mb_threads {
    int n;
    pthread_t *th;
    void (*fn)(void *, int, int);
    void *ctx;
    atomic_uint gen;    /* bumped once per parallel region */
    atomic_int pending; /* workers still running the current region */
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct worker_arg {
    mb_threads *t;
    int i;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    mb_threads *t = a->t;
    int i = a->i;
    free(a);
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&t->gen, memory_order_acquire) == seen) {
            if (++spins < SPINS) {
                _mm_pause();
                continue;
            }
            if (spins < 2 * SPINS) { /* a busy machine: let whoever holds the core run */
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&t->mu);
            while (atomic_load_explicit(&t->gen, memory_order_acquire) == seen)
                pthread_cond_wait(&t->cv, &t->mu);
            pthread_mutex_unlock(&t->mu);
        }
        seen = atomic_load_explicit(&t->gen, memory_order_acquire);
        if (atomic_load(&t->stop)) return NULL;
        t->fn(t->ctx, i, t->n);
        atomic_fetch_sub_explicit(&t->pending, 1, memory_order_release);
    }
}

static void wake(mb_threads *t) {
    atomic_fetch_add_explicit(&t->gen, 1, memory_order_release);
    pthread_mutex_lock(&t->mu);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

mb_threads *mb_threads_create(int n) {
    mb_threads *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n = n;
    t->th = calloc((size_t)n, sizeof *t->th);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (!t->th) {
        free(t);
        return NULL;
    }
    for (int i = 1; i < n; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a || (a->t = t, a->i = i, pthread_create(&t->th[i], NULL, worker, a))) {
            free(a);
            t->n = i;
            mb_threads_free(t);
            return NULL;
        }
    }
    return t;
}

void mb_threads_free(mb_threads *t) {
    atomic_store(&t->stop, 1);
    wake(t);
    for (int i = 1; i < t->n; i++) pthread_join(t->th[i], NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t->th);
    free(t);
}

int mb_threads_count(const mb_threads *t) {
    return t->n;
}

void mb_threads_run(mb_threads *t, void (*fn)(void *ctx, int i, int n), void *ctx) {
    if (t->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    t->fn = fn;
    t->ctx = ctx;
    atomic_store_explicit(&t->pending, t->n - 1, memory_order_relaxed);
    wake(t);
    fn(ctx, 0, t->n);
    for (int spins = 0; atomic_load_explicit(&t->pending, memory_order_acquire); spins++)
        if (spins < SPINS)
            _mm_pause();
        else
            sched_yield();
}
