/* srv_job.h: one unit of work passed from an HTTP thread to the scheduler, and the results
 * passed back. The HTTP side submits and waits; the scheduler admits, fills and finishes.
 * Reference counted: both sides hold one reference while they need the job. */
#ifndef SRV_JOB_H
#define SRV_JOB_H

#include "srv_request.h"

#include <pthread.h>
#include <stdatomic.h>

typedef enum {
    SRV_JOB_GENERATE,
    SRV_JOB_SESSION_CREATE,
    SRV_JOB_SESSION_LIST,
    SRV_JOB_SESSION_INFO,
    SRV_JOB_SESSION_DELETE,
    SRV_JOB_SESSION_FORK,
    SRV_JOB_SESSION_SAVE,
    SRV_JOB_SESSION_RESTORE,
} srv_job_kind;

typedef enum {
    SRV_FINISH_NONE,
    SRV_FINISH_LENGTH,    /* max_tokens bytes written */
    SRV_FINISH_STOP,      /* a stop string appeared */
    SRV_FINISH_TIMEOUT,   /* the request's deadline passed while it ran */
    SRV_FINISH_CANCELLED, /* the client went away */
} srv_finish;

typedef enum { SRV_WAIT_ADMITTED, SRV_WAIT_MORE, SRV_WAIT_DONE } srv_wait;

/* Log-probabilities of the answer's bytes (req.logprobs >= 0), from the model's raw logits
 * (before temperature, penalties and bias). Entry i is byte i of the answer: the prompt then
 * the output with req.echo, the output alone without. The scheduler writes an entry before the
 * byte is published (the prompt's all before the first output byte). */
typedef struct srv_scores {
    size_t n;       /* entries */
    int k;          /* alternatives per entry: req.logprobs */
    double *lp;     /* n: ln p(byte | the bytes before it); NaN: none (the prompt's first byte) */
    uint8_t *top;   /* n * k: the k likeliest bytes at that position, likeliest first */
    double *top_lp; /* n * k: their log-probabilities */
} srv_scores;

typedef struct srv_job {
    /* Set by the submitter, read-only afterwards. */
    srv_job_kind kind;
    srv_gen_req req;
    char id[SRV_ID_MAX];       /* request id, "cmpl-..." */
    char session[SRV_ID_MAX];  /* the session a session job is about */
    double t_arrive, deadline; /* srv_now() seconds */
    atomic_int cancelled;      /* set by the HTTP side when the client leaves */

    pthread_mutex_t mu;
    int refs;
    int admitted; /* the scheduler took it (or failed it): the response status is known */
    int done;
    int failed; /* err holds the error */
    srv_error err;
    uint8_t *out;       /* req.max_tokens + 1 bytes; the scheduler writes past out_len only */
    size_t out_len;     /* bytes generated so far */
    size_t out_visible; /* bytes that may be shown: never shrinks */
    srv_finish finish;
    char *result;                 /* session jobs: the JSON body of the answer */
    char session_out[SRV_ID_MAX]; /* session jobs: the session created, forked or restored */
    double t_admit, t_prefilled, t_first, t_done;
    void (*wake)(void *arg); /* the HTTP side's waker, called under mu when there is news */
    void *wake_arg;
    int held; /* srv_job_hold depth: bytes published meanwhile wait in held_visible */
    size_t held_visible;
    /* speculative decoding: drafts verified for this request, their bytes and those kept */
    unsigned long drafts, drafted, accepted;
    srv_scores sc; /* req.logprobs >= 0 */
    /* n and best_of: the other completions of the same prompt, which copy this job's state
     * (mb_pool_copy) once its prompt is read, instead of reading it again; set before it is
     * submitted; the job holds a reference to each */
    struct srv_job **forks;
    int n_forks;
    int index;     /* the completion's place in the answer (its seed is the request's + index) */
    double sum_lp; /* best_of: the sum of the raw log-probabilities of the bytes drawn */
    unsigned long n_lp; /* and their number */
} srv_job;

double srv_now(void); /* CLOCK_MONOTONIC seconds */
/* Jobs alive in the process (created and not yet freed by their last reference). */
int srv_job_live(void);

/* A new job with one reference; NULL when out of memory. A generation job takes ownership of
 * *req (zeroing it). */
srv_job *srv_job_new(srv_job_kind kind, srv_gen_req *req);
void srv_job_ref(srv_job *j);
void srv_job_unref(srv_job *j);

/* Scheduler side. */
void srv_job_admit(srv_job *j);
/* Fails j, and its forks that have not started (they wait for j's prompt). */
void srv_job_fail(srv_job *j, const srv_error *e);
/* Stamps t_first under the lock: the HTTP side reads it when the client leaves. */
void srv_job_first_byte(srv_job *j, double now);
/* Makes out[0..out_len) known, of which the first `visible` bytes may be shown. */
void srv_job_publish(srv_job *j, size_t out_len, size_t visible);
/* Between hold and release (each takes and drops a reference) published bytes are shown only at
 * the release, together: the scheduler holds a job while it takes the several bytes one step
 * gave it, so a stream sends them as one event. Finishing or failing is shown at once. */
void srv_job_hold(srv_job *j);
void srv_job_release(srv_job *j);
void srv_job_finish(srv_job *j, srv_finish why, size_t visible, char *result);
/* Counts one draft of `drafted` bytes, `accepted` of them kept, for the response's timings. */
void srv_job_count_draft(srv_job *j, int drafted, int accepted);

/* HTTP side. HTTP threads never block on a job: they park the connection and let the job wake
 * them. fn(arg) is called with the job's lock held whenever the job is admitted, shows more
 * bytes or ends, so fn must not take that lock; NULL stops the calls (after it returns, fn is
 * never running). */
void srv_job_set_waker(srv_job *j, void (*fn)(void *arg), void *arg);
/* 1 if the job is admitted (what == SRV_WAIT_ADMITTED), shows more than `seen` bytes
 * (SRV_WAIT_MORE), or is done (any `what`); 0 otherwise. */
int srv_job_ready(srv_job *j, srv_wait what, size_t seen);

#endif
