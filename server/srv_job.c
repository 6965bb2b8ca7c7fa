/* srv_job.c: the job's lifecycle and the hand-over between HTTP threads and the scheduler. */
#include "srv_job.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

srv_job *srv_job_new(srv_job_kind kind, srv_gen_req *req) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = kind;
    if (req) {
        j->req = *req;
        memset(req, 0, sizeof *req);
        if (kind == SRV_JOB_GENERATE && !(j->out = malloc((size_t)j->req.max_tokens + 1))) {
            srv_gen_req_free(&j->req);
            free(j);
            return NULL;
        }
    }
    pthread_mutex_init(&j->mu, NULL);
    /* Waits are timed against CLOCK_MONOTONIC so a clock change cannot stall them. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    j->t_arrive = srv_now();
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
    pthread_cond_destroy(&j->cv);
    srv_gen_req_free(&j->req);
    free(j->out);
    free(j->result);
    free(j);
}

void srv_job_admit(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->admitted = 1;
    j->t_admit = srv_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void srv_job_fail(srv_job *j, const srv_error *e) {
    pthread_mutex_lock(&j->mu);
    j->err = *e;
    j->failed = j->admitted = j->done = 1;
    j->t_done = srv_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void srv_job_publish(srv_job *j, size_t out_len, size_t visible) {
    pthread_mutex_lock(&j->mu);
    j->out_len = out_len;
    /* Only a stream waits for bytes; a whole answer waits for the end and sleeps on. */
    if (visible > j->out_visible) {
        j->out_visible = visible;
        if (j->waiting_for == SRV_WAIT_MORE) pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
}

void srv_job_finish(srv_job *j, srv_finish why, size_t visible, char *result) {
    pthread_mutex_lock(&j->mu);
    j->finish = why;
    if (visible > j->out_visible) j->out_visible = visible;
    j->result = result;
    j->admitted = j->done = 1;
    j->t_done = srv_now();
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* A peer that closed its end shows POLLRDHUP (or POLLHUP/POLLERR once reset). */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int ready(const srv_job *j, srv_wait what, size_t seen) {
    if (j->done) return 1;
    if (what == SRV_WAIT_ADMITTED) return j->admitted;
    if (what == SRV_WAIT_MORE) return j->out_visible > seen;
    return 0;
}

int srv_job_wait(srv_job *j, srv_wait what, size_t seen, int fd) {
    double next_check = srv_now() + 0.1;
    pthread_mutex_lock(&j->mu);
    j->waiting_for = what;
    while (!ready(j, what, seen)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        /* Checked by the clock, not only on timeouts: wake-ups must not hide a hang-up. */
        if (!ready(j, what, seen) && srv_now() >= next_check) {
            pthread_mutex_unlock(&j->mu);
            if (client_gone(fd)) return -1;
            next_check = srv_now() + 0.1;
            pthread_mutex_lock(&j->mu);
        }
    }
    pthread_mutex_unlock(&j->mu);
    return 0;
}
