/* srv_sched.h: the scheduler, the one thread that owns the engine. HTTP threads submit jobs to
 * its queue and wait on the jobs; it runs batched steps over every live sequence: a decode byte
 * for each running stream, prompt chunks for new ones (up to half the step is kept for them
 * while they wait; beside decoding streams only what adds at most prefill_stall steps' time, by
 * measured cost: srv_pace.h), then drafts from what is left (prompt lookup, or the drafter model in
 * one batched drafting round over every sequence that drafts), never more than max_batch_tokens
 * tokens per forward. Requests join and leave between steps. */
#ifndef SRV_SCHED_H
#define SRV_SCHED_H

#include "cfg.h"
#include "mambabyte.h"
#include "spm.h"
#include "srv_job.h"
#include "srv_metrics.h"

typedef struct srv_sched srv_sched;

/* Creates the state pool and starts the thread. draft, with its tokenizer tok, is the drafter
 * model for speculative decoding (NULL: none), on the device of m; it gets a pool of its own
 * with two slots per slot of m's (the committed state and a scratch copy to draft from).
 * The models stay owned by the caller. */
srv_sched *srv_sched_start(mb_model *m, mb_model *draft, const spm_tokenizer *tok, const cfg *c,
                           srv_metrics *mx, mb_err *e);
/* Queues j (taking a reference). Generation jobs beyond queue_limit waiting get 429; after
 * srv_sched_drain everything gets 503. Returns 0, or -1 with e filled. */
int srv_sched_submit(srv_sched *s, srv_job *j, srv_error *e);
/* Stops taking jobs, lets queued and running ones finish, their answers sent, until deadline
 * (srv_now() seconds), then cancels what is left and waits until nothing runs. */
void srv_sched_drain(srv_sched *s, double deadline);
/* 1 once the device has failed for good (a sticky CUDA error): the requests of that step got a
 * 500, and the scheduler raised SIGTERM so that the daemon drains and exits with an error
 * status (a supervisor restarts it on a fresh context). */
int srv_sched_device_lost(srv_sched *s);
/* Joins the thread and frees the pool and sessions. */
void srv_sched_stop(srv_sched *s);

#endif
