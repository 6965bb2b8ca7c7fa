/* srv_job.c: the job's lifecycle and the hand-over between HTTP threads and the scheduler. */
#include "srv_job.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Jobs not yet freed: a request holds its job until its answer has been sent. */
static atomic_int live_jobs;

int srv_job_live(void) {
    return atomic_load(&live_jobs);
}

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Room for the log-probabilities of every byte the answer may hold. */
static int scores_new(srv_scores *sc, const srv_gen_req *r) {
    sc->k = r->logprobs;
    sc->n = (size_t)r->max_tokens + (r->echo ? r->prompt_len : 0);
    sc->lp = malloc((sc->n + 1) * sizeof *sc->lp);
    sc->top = malloc(sc->n * (size_t)sc->k + 1);
    sc->top_lp = malloc((sc->n * (size_t)sc->k + 1) * sizeof *sc->top_lp);
    if (!sc->lp || !sc->top || !sc->top_lp) return -1;
    /* NaN until scored (the prompt's first byte never is): a job that ends early shows null */
    for (size_t i = 0; i <= sc->n; i++) sc->lp[i] = NAN;
    return 0;
}

static void scores_free(srv_scores *sc) {
    free(sc->lp);
    free(sc->top);
    free(sc->top_lp);
}

srv_job *srv_job_new(srv_job_kind kind, srv_gen_req *req) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = kind;
    if (req) {
        j->req = *req;
        memset(req, 0, sizeof *req);
        int gen = kind == SRV_JOB_GENERATE;
        if (gen && (!(j->out = malloc((size_t)j->req.max_tokens + 1)) ||
                    (j->req.logprobs >= 0 && scores_new(&j->sc, &j->req)))) {
            srv_gen_req_free(&j->req);
            scores_free(&j->sc);
            free(j->out);
            free(j);
            return NULL;
        }
    }
    pthread_mutex_init(&j->mu, NULL);
    j->refs = 1;
    j->t_arrive = srv_now();
    atomic_fetch_add(&live_jobs, 1);
    return j;
}

void srv_job_ref(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
}

void srv_job_unref(srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    pthread_mutex_destroy(&j->mu);
    srv_gen_req_free(&j->req);
    free(j->out);
    free(j->result);
    scores_free(&j->sc);
    for (int i = 0; i < j->n_forks; i++) srv_job_unref(j->forks[i]);
    free(j->forks);
    free(j);
    atomic_fetch_sub(&live_jobs, 1);
}

/* Tells the HTTP side there is news; the caller holds j->mu. */
static void notify(srv_job *j) {
    if (j->wake) j->wake(j->wake_arg);
}

void srv_job_admit(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->admitted = 1;
    j->t_admit = srv_now();
    notify(j);
    pthread_mutex_unlock(&j->mu);
}

void srv_job_fail(srv_job *j, const srv_error *e) {
    pthread_mutex_lock(&j->mu);
    j->err = *e;
    j->failed = j->admitted = j->done = 1;
    j->t_done = srv_now();
    notify(j);
    pthread_mutex_unlock(&j->mu);
    /* forks that have not started would wait for a prompt that is never read */
    for (int f = 0; f < j->n_forks; f++)
        if (!srv_job_ready(j->forks[f], SRV_WAIT_ADMITTED, 0)) srv_job_fail(j->forks[f], e);
}

void srv_job_first_byte(srv_job *j, double now) {
    pthread_mutex_lock(&j->mu);
    j->t_first = now;
    pthread_mutex_unlock(&j->mu);
}

void srv_job_publish(srv_job *j, size_t out_len, size_t visible) {
    pthread_mutex_lock(&j->mu);
    j->out_len = out_len;
    if (j->held && visible > j->held_visible) {
        j->held_visible = visible;
    } else if (!j->held && visible > j->out_visible) {
        j->out_visible = visible;
        notify(j);
    }
    pthread_mutex_unlock(&j->mu);
}

void srv_job_hold(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    j->held++;
    pthread_mutex_unlock(&j->mu);
}

void srv_job_release(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    if (--j->held == 0 && !j->done && j->held_visible > j->out_visible) {
        j->out_visible = j->held_visible;
        notify(j);
    }
    if (!j->held) j->held_visible = 0;
    pthread_mutex_unlock(&j->mu);
    srv_job_unref(j);
}

void srv_job_finish(srv_job *j, srv_finish why, size_t visible, char *result) {
    pthread_mutex_lock(&j->mu);
    j->finish = why;
    if (visible > j->out_visible) j->out_visible = visible;
    j->result = result;
    j->admitted = j->done = 1;
    j->t_done = srv_now();
    notify(j);
    pthread_mutex_unlock(&j->mu);
}

void srv_job_count_draft(srv_job *j, int drafted, int accepted) {
    pthread_mutex_lock(&j->mu);
    j->drafts++;
    j->drafted += (unsigned long)drafted;
    j->accepted += (unsigned long)accepted;
    pthread_mutex_unlock(&j->mu);
}

static int ready(const srv_job *j, srv_wait what, size_t seen) {
    if (j->done) return 1;
    if (what == SRV_WAIT_ADMITTED) return j->admitted;
    if (what == SRV_WAIT_MORE) return j->out_visible > seen;
    return 0;
}

int srv_job_ready(srv_job *j, srv_wait what, size_t seen) {
    pthread_mutex_lock(&j->mu);
    int r = ready(j, what, seen);
    pthread_mutex_unlock(&j->mu);
    return r;
}

void srv_job_set_waker(srv_job *j, void (*fn)(void *arg), void *arg) {
    pthread_mutex_lock(&j->mu);
    j->wake = fn;
    j->wake_arg = arg;
    pthread_mutex_unlock(&j->mu);
}
