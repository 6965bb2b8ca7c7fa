/* srv_sched.c: the scheduler thread: admission from the queue, session operations, and the
 * step loop of continuous batching over the engine's state pool.
 *
 * Test hooks: MB_FAULT_SCHED (comma-separated, read at start; for the tests only) injects the
 * faults that cannot be provoked from outside: "waiting_oom" (moving a job into the waiting list
 * fails as if out of memory), "rollback" (every slot rollback fails as if the device had), and
 * "stall=S" (the scheduler sleeps S seconds once, at its first step with a running request). */
#include "srv_sched.h"
#include "srv_id.h"
#include "srv_pace.h"
#include "srv_session.h"
#include "srv_text.h"
#include "cost.h"
#include "lookup.h"
#include "spec.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A generation in progress: its slot, its input and how far it has got. */
typedef struct seq {
    srv_job *job;
    srv_session *sess; /* NULL: a one-off request in a slot of its own */
    int slot;
    uint8_t *input; /* the session's pending byte, then the prompt */
    size_t input_len;
    size_t feed_target; /* input bytes to feed: all, or all but the last when nothing is sampled */
    size_t fed_input;   /* input bytes fed so far */
    size_t fed_total;   /* all bytes fed into the slot by this request (input and output) */
    unsigned long long hist_base; /* session bytes already in the state before this request */
    size_t n_out;
    size_t max_stop_len;
    double t_last;    /* when the last byte was generated */
    int lcap;         /* prompt lookup: longest draft next time */
    lookup_index *lx; /* prompt lookup: the index of input and output (made at the first draft) */
    /* speculative decoding */
    int spec;       /* SRV_SPEC_AUTO (the server decides by cost), _OFF or _ON (model drafts) */
    int lookup_key; /* prompt lookup key bytes, 0: off */
    int max_draft;  /* drafted bytes per round at most */
    spec_seq *sq;   /* the drafter's text: the session's, or the request's own (NULL: none yet) */
    size_t dseen;   /* bytes of input and output that sq holds */
    int dcap;       /* model drafts: bytes next time (spec_next_cap) */
    double dgain;   /* model drafts: bytes kept per draft, moving average */
    int dbackoff;   /* model drafts: steps a sequence whose drafts fail waits next time */
    unsigned long long dresume; /* model drafts: the step from which it drafts again */
    struct pen_state *pen;      /* the request's penalties and bias; NULL: it has none */
    int *fork_slot;             /* the slots of job->forks, taken at admission, until they start */
} seq;

/* What penalties need of a sequence's past: each byte's count in the output so far, and which
 * bytes the prompt holds. */
typedef struct pen_state {
    int out[256];
    uint8_t in_prompt[256];
} pen_state;

enum { DRAFT_NONE, DRAFT_LOOKUP, DRAFT_MODEL };
_Static_assert(LOOKUP_MAX <= SRV_DRAFT_MAX, "a lookup draft fits a batch entry's draft");
#define DRAFT_TOKENS  12  /* drafter tokens per draft at most: drafter forwards per step */
#define DCAP_START    8   /* model drafts: bytes of the first draft */
#define GAIN_MIN      0.5 /* auto mode: fewer bytes kept per draft on average back off */
#define BACKOFF_START 16  /* steps of the first back-off; doubled while probes fail */
#define BACKOFF_MAX   1024

typedef struct job_list {
    srv_job **j;
    int n, cap;
} job_list;

typedef struct test_faults {
    int waiting_oom, rollback;
    double stall_s;
} test_faults;

struct srv_sched {
    mb_model *model;
    mb_pool *pool;
    srv_slots *slots;
    srv_metrics *mx;
    cfg c;
    int n_vocab, n_slots;
    pthread_t thread;
    int started;
    test_faults fault;

    pthread_mutex_t mu; /* guards the fields down to n_free */
    pthread_cond_t cv;
    job_list incoming; /* generation jobs not yet seen by the scheduler */
    job_list control;  /* session jobs */
    int n_waiting;     /* generation jobs submitted and not yet admitted or failed */
    int n_running;
    int n_free; /* slots not held by running requests, as of the last step */
    int draining, cancel_all, stopping;
    int device_lost; /* the model's device failed for good; SIGTERM was raised */

    /* Owned by the scheduler thread. */
    job_list waiting;
    seq *run; /* n_run of n_slots, in order of admission */
    int n_run;
    int rr; /* where the next decode round starts when not all running sequences fit */
    int32_t *tokens;
    int *off, *slot_of;          /* n_slots + 1, n_slots: the mb_batch */
    int *seq_of, *took, *row_of; /* per batch entry: run[] index, tokens fed, logits row or -1 */
    int *entry_of;               /* per run[] index: its batch entry or -1 */
    int n_decode;                /* batch entries 0..n_decode-1 decode, the rest prefill */
    int *dlen;                   /* per batch entry: drafted bytes after the fed byte */
    int *dkind;                  /* per batch entry: DRAFT_NONE, _LOOKUP or _MODEL */
    uint8_t *draft;              /* per batch entry: SRV_DRAFT_MAX drafted bytes */
    uint8_t *want;
    float *logits;
    void *scratch;
    float *pen_rows; /* (SRV_DRAFT_MAX + 1) * n_vocab: logits rows with penalties applied */
    const mb_sampling **d_set; /* per plain draw of a step: settings, logits row, position, */
    int *d_row, *d_byte;       /* and the byte drawn (mb_sample_rows) */
    uint64_t *d_pos;

    /* Speculative decoding with the drafter model (dmodel NULL: none). Drafter slot i holds
     * the committed drafter state of the sequence in byte slot i, slot n_slots + i its scratch
     * copy to draft from. */
    mb_model *dmodel;
    const spm_tokenizer *tok;
    mb_pool *dpool;
    spec_batch *dbatch;
    spec_cost cost; /* the measured choice for requests that leave it to the server */
    srv_pace pace;  /* the measured cap on prompt bytes beside decoding sequences */
    unsigned long long n_step;
    int step_choice;               /* this step: -1 no auto request could draft, 0/1 the choice */
    double t_drafter;              /* this step's seconds in drafter forwards */
    spec_seq **cq;                 /* n_slots: this step's model drafts: texts, */
    int *ck, *cslot, *cscr, *cmax; /* batch entries, committed and scratch slots, byte caps */
};

static int list_push(job_list *l, srv_job *j) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        srv_job **nj = realloc(l->j, (size_t)cap * sizeof *nj);
        if (!nj) return -1;
        l->j = nj, l->cap = cap;
    }
    l->j[l->n++] = j;
    return 0;
}

static void list_remove(job_list *l, int i) {
    memmove(l->j + i, l->j + i + 1, (size_t)(l->n - i - 1) * sizeof *l->j);
    l->n--;
}

int srv_sched_submit(srv_sched *s, srv_job *j, srv_error *e) {
    int gen = j->kind == SRV_JOB_GENERATE, rc = 0;
    pthread_mutex_lock(&s->mu);
    if (s->draining) {
        rc = srv_error_set(e, 503, "server_error", "shutting_down", "the server is shutting down");
    } else if (gen && 1 + j->n_forks > s->n_slots) {
        rc = srv_error_set(e, 400, "invalid_request_error", "invalid_value",
                           "%d completions of one prompt need as many slots; this server has %d",
                           1 + j->n_forks, s->n_slots);
    } else if (gen && s->n_waiting - s->n_free >= s->c.queue_limit) {
        rc = srv_error_set(e, 429, "rate_limit_error", "queue_full",
                           "too many requests are waiting (queue_limit %d); retry later",
                           s->c.queue_limit);
    } else if (list_push(gen ? &s->incoming : &s->control, j)) {
        rc = srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    } else {
        srv_job_ref(j);
        s->n_waiting += gen;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void waiting_done(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->n_waiting--;
    pthread_mutex_unlock(&s->mu);
}

/* ---- session jobs ---- */

static char *too_many_sessions(srv_sched *s, srv_error *e) {
    srv_error_set(e, 429, "rate_limit_error", "too_many_sessions",
                  "%d sessions are held and none is idle; delete some", s->c.max_sessions);
    return NULL;
}

/* Runs one session job; returns its JSON answer or NULL with e filled. */
static char *session_op(srv_sched *s, srv_job *j, srv_error *e) {
    srv_session *x = NULL;
    char id[SRV_ID_MAX];
    switch (j->kind) {
    case SRV_JOB_SESSION_LIST:
        return srv_session_list_json(s->slots);
    case SRV_JOB_SESSION_CREATE:
        /* the id a load balancer (or the client) chose, when it sent one */
        if (j->session[0] && srv_session_exists(s->slots, j->session)) {
            srv_error_set(e, 409, "conflict_error", "session_exists", "session %s exists",
                          j->session);
            return NULL;
        }
        if (j->session[0])
            snprintf(id, sizeof id, "%s", j->session);
        else
            srv_new_id("sess-", id, sizeof id);
        if (!(x = srv_session_add(s->slots, id, NULL))) return too_many_sessions(s, e);
        snprintf(j->session_out, sizeof j->session_out, "%s", x->id);
        return srv_session_print(x, NULL);
    case SRV_JOB_SESSION_RESTORE:
        if (srv_session_find(s->slots, j->session)) {
            srv_error_set(e, 409, "conflict_error", "session_exists", "session %s is in memory",
                          j->session);
            return NULL;
        }
        if (!(x = srv_session_get(s->slots, j->session, e))) return NULL;
        snprintf(j->session_out, sizeof j->session_out, "%s", x->id);
        return srv_session_print(x, NULL);
    case SRV_JOB_SESSION_DELETE:
        /* A session only on disk (evicted, or saved before a restart) is deleted there. */
        if (!(x = srv_session_find(s->slots, j->session))) {
            if (!srv_session_delete_saved(s->slots, j->session))
                return srv_session_deleted_json(j->session);
            srv_error_set(e, 404, "not_found_error", "session_not_found", "no session %s",
                          j->session);
            return NULL;
        }
        break;
    default:
        if (!(x = srv_session_get(s->slots, j->session, e))) return NULL;
    }
    if (j->kind == SRV_JOB_SESSION_INFO) return srv_session_print(x, NULL);
    if (x->busy) {
        srv_error_set(e, 409, "conflict_error", "session_busy",
                      "session %s is in use by a running request", x->id);
        return NULL;
    }
    if (j->kind == SRV_JOB_SESSION_DELETE) {
        char *r = srv_session_deleted_json(x->id);
        srv_session_delete(s->slots, x);
        return r;
    }
    if (j->kind == SRV_JOB_SESSION_FORK) {
        srv_session_fork_id(x->id, id, sizeof id);
        srv_session *y = srv_session_fork(s->slots, x, id);
        if (!y) return too_many_sessions(s, e);
        snprintf(j->session_out, sizeof j->session_out, "%s", y->id);
        return srv_session_print(y, NULL);
    }
    if (srv_session_save(s->slots, x, e)) return NULL;
    return srv_session_print(x, "saved");
}

static void run_control(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    job_list l = s->control;
    memset(&s->control, 0, sizeof s->control);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < l.n; i++) {
        srv_error e;
        char *r = session_op(s, l.j[i], &e);
        if (r)
            srv_job_finish(l.j[i], SRV_FINISH_NONE, 0, r);
        else
            srv_job_fail(l.j[i], &e);
        srv_job_unref(l.j[i]);
    }
    free(l.j);
}

/* ---- admission ---- */

static int pen_new(seq *q);
static int *take_fork_slots(srv_sched *s, const srv_job *j);

/* 1: admitted, 0: must wait for a slot, -1: failed (e filled). */
static int admit(srv_sched *s, srv_job *j, srv_error *e) {
    srv_gen_req *r = &j->req;
    srv_session *x = NULL;
    if (r->spec_enabled == SRV_SPEC_ON && !s->dmodel)
        return srv_error_set(e, 400, "invalid_request_error", "invalid_value",
                             "'speculative.enabled' is true, but this server has no drafter "
                             "(serve --draft DIR)");
    if (r->session[0]) {
        if (!(x = srv_session_get(s->slots, r->session, e))) return -1;
        if (x->busy)
            return srv_error_set(e, 409, "conflict_error", "session_busy",
                                 "session %s is in use by a running request", x->id);
        if (!x->has_pending && r->prompt_len == 0 && r->max_tokens > 0)
            return srv_error_set(e, 400, "invalid_request_error", "invalid_value",
                                 "session %s has nothing to continue from; give a prompt", x->id);
        if (srv_session_resident(s->slots, x)) return 0;
    }
    if (j->n_forks) { /* all its slots at once, or wait: taking some would spill idle sessions */
        srv_slot_counts c;
        srv_slots_counts(s->slots, &c);
        if ((x ? 0 : 1) + j->n_forks > s->n_slots - c.active) return 0;
    }
    int slot = x ? x->slot : srv_slot_take(s->slots);
    if (slot < 0) return 0;
    size_t pend = x && x->has_pending;
    seq q = {.job = j, .sess = x, .slot = slot, .input_len = pend + r->prompt_len};
    if (!(q.input = malloc(q.input_len + 1))) {
        if (!x) srv_slot_release(s->slots, slot);
        return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    }
    if (pend) q.input[0] = x->pending;
    memcpy(q.input + pend, r->prompt, r->prompt_len);
    if (pen_new(&q)) {
        free(q.input);
        if (!x) srv_slot_release(s->slots, slot);
        return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    }
    if (j->n_forks && !(q.fork_slot = take_fork_slots(s, j))) { /* wait for free slots */
        free(q.input);
        free(q.pen);
        srv_slot_release(s->slots, slot);
        return 0;
    }
    /* Without output, the last input byte stays pending: it is the one that will give logits. */
    q.feed_target = r->max_tokens > 0 || !q.input_len ? q.input_len : q.input_len - 1;
    for (int i = 0; i < r->n_stops; i++) {
        size_t l = strlen(r->stops[i]);
        if (l > q.max_stop_len) q.max_stop_len = l;
    }
    if (x) {
        x->busy = 1;
        x->saved = 0; /* the run changes its state */
        q.hist_base = x->n_bytes - pend;
    }
    q.t_last = srv_now();
    q.lcap = LOOKUP_START;
    q.spec = r->spec_enabled;
    q.lookup_key = q.spec == SRV_SPEC_OFF ? 0 : r->spec_lookup >= 0 ? r->spec_lookup : s->c.lookup;
    q.max_draft = r->spec_max_draft ? r->spec_max_draft : s->c.max_draft_bytes;
    q.dcap = q.max_draft < DCAP_START ? q.max_draft : DCAP_START;
    q.dgain = 2 * GAIN_MIN;
    q.dbackoff = BACKOFF_START;
    if (x) { /* the session's drafter text holds its history, the pending byte included */
        q.sq = x->draft;
        q.dseen = pend;
    }
    s->run[s->n_run++] = q;
    srv_job_admit(j);
    return 1;
}

static void admit_waiting(srv_sched *s) {
    srv_error oom;
    srv_error_set(&oom, 503, "server_error", "out_of_memory",
                  "the server is out of memory; retry later");
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->incoming.n; i++) {
        srv_job *j = s->incoming.j[i];
        if (!s->fault.waiting_oom && !list_push(&s->waiting, j)) continue;
        /* Taken from incoming and not waiting: fail it now, or nobody ever would. */
        srv_job_fail(j, &oom);
        srv_job_unref(j);
        s->n_waiting--;
    }
    s->incoming.n = 0;
    int cancel_all = s->cancel_all;
    pthread_mutex_unlock(&s->mu);
    double now = srv_now();
    /* A request of several completions waits for all its slots at once; the ones behind it wait
     * too (they are still cancelled and timed out), or they would take every slot that frees up
     * one by one and it would never start. */
    int blocked = 0;
    for (int i = 0; i < s->waiting.n;) {
        srv_job *j = s->waiting.j[i];
        srv_error e;
        int rc;
        if (cancel_all)
            rc = srv_error_set(&e, 503, "server_error", "shutting_down",
                               "the server is shutting down");
        else if (atomic_load(&j->cancelled))
            rc = srv_error_set(&e, 499, "invalid_request_error", "cancelled",
                               "the client closed the connection");
        else if (now > j->deadline)
            rc = srv_error_set(&e, 503, "server_error", "timeout",
                               "the request waited past its deadline for a slot");
        else if (s->n_run == s->n_slots || blocked)
            rc = 0;
        else
            rc = admit(s, j, &e);
        if (rc == 0) {
            blocked |= j->n_forks > 0;
            i++;
            continue;
        }
        if (rc < 0) {
            srv_job_fail(j, &e);
            srv_job_unref(j);
        }
        list_remove(&s->waiting, i);
        waiting_done(s);
    }
}

/* ---- retiring ---- */

static void draft_reset(srv_sched *s, seq *q);
static int draft_sync(srv_sched *s, seq *q);

static void end_forks(srv_sched *s, seq *q, srv_finish why);

static void retire(srv_sched *s, int i, srv_finish why, size_t visible) {
    seq *q = &s->run[i];
    srv_session *x = q->sess;
    /* A session's drafter text goes on from its whole history next time. */
    if (x && q->sq && draft_sync(s, q)) draft_reset(s, q);
    if (!x) spec_seq_free(q->sq);
    if (x) {
        /* The state holds every byte fed; a byte sampled last and not fed yet stays pending. */
        if (q->n_out > 0) {
            x->has_pending = 1;
            x->pending = q->job->out[q->n_out - 1];
        } else if (q->feed_target < q->input_len && q->fed_input == q->feed_target) {
            x->has_pending = 1;
            x->pending = q->input[q->input_len - 1];
        } else {
            x->has_pending = 0;
        }
        x->n_bytes = q->hist_base + q->fed_total + (unsigned)x->has_pending;
        x->busy = 0;
        srv_session_touch(s->slots, x); /* its idle time starts now, not at admission */
    } else {
        srv_slot_release(s->slots, q->slot);
    }
    if (q->fork_slot) end_forks(s, q, why);
    if (why != SRV_FINISH_NONE) srv_job_finish(q->job, why, visible, NULL);
    srv_job_unref(q->job);
    free(q->input);
    free(q->pen);
    lookup_free(q->lx);
    memmove(s->run + i, s->run + i + 1, (size_t)(s->n_run - i - 1) * sizeof *s->run);
    s->n_run--;
}

/* After an engine failure a slot's state is unknown: it is reset, and a session on it starts
 * over empty rather than go on from a state that does not match its history. */
static void forget_history(srv_sched *s, srv_session *x, int slot) {
    mb_pool_reset(s->pool, slot, NULL);
    if (s->dpool) mb_pool_reset(s->dpool, slot, NULL);
    if (x) {
        x->n_bytes = 0;
        x->has_pending = 0;
        if (s->dmodel) {
            spec_seq_free(x->draft);
            x->draft = spec_seq_new(s->tok, NULL, 0, NULL);
        }
    }
}

static void fail_running(srv_sched *s, const char *msg) {
    srv_error e;
    srv_error_set(&e, 500, "server_error", "engine_error", "%s", msg);
    while (s->n_run) {
        srv_session *x = s->run[0].sess;
        int slot = s->run[0].slot;
        srv_job_fail(s->run[0].job, &e);
        retire(s, 0, SRV_FINISH_NONE, 0);
        forget_history(s, x, slot);
    }
}

static void check_running(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    int cancel_all = s->cancel_all;
    pthread_mutex_unlock(&s->mu);
    double now = srv_now();
    for (int i = 0; i < s->n_run;) {
        srv_job *j = s->run[i].job;
        size_t vis = j->out_visible;
        if (cancel_all || atomic_load(&j->cancelled))
            retire(s, i, SRV_FINISH_CANCELLED, vis);
        else if (now > j->deadline)
            retire(s, i, SRV_FINISH_TIMEOUT, vis);
        else if (s->run[i].fed_input == s->run[i].feed_target && j->req.max_tokens == 0)
            retire(s, i, SRV_FINISH_LENGTH, 0);
        else
            i++;
    }
}

/* ---- the step ---- */

/* The position of run[i]'s next byte in its whole history (session included): the sampler's
 * draw depends on it, so the output never depends on batching or speculation, and a continued
 * session equals one long request. */
static uint64_t next_pos(const seq *q) {
    return q->hist_base + q->input_len + q->n_out;
}

/* ---- log-probabilities, penalties and bias ---- */

/* Penalty state for a request that has penalties or bias (none otherwise); -1 when out of
 * memory. The prompt's bytes count as seen for repetition_penalty. */
static int pen_new(seq *q) {
    const srv_gen_req *r = &q->job->req;
    if (!r->pen.on) return 0;
    if (!(q->pen = calloc(1, sizeof *q->pen))) return -1;
    for (size_t t = 0; t < r->prompt_len; t++) q->pen->in_prompt[r->prompt[t]] = 1;
    return 0;
}

/* row with penalties p applied (the output's counts cnt, the prompt's bytes in_prompt) into
 * out: repetition first, then presence and frequency, then the bias. */
static void penalize(const srv_penalty *p, const int *cnt, const uint8_t *in_prompt,
                     const float *row, float *out) {
    for (int b = 0; b < 256; b++) {
        float l = row[b];
        if (p->repetition != 1 && (cnt[b] || in_prompt[b]))
            l = l > 0 ? l / p->repetition : l * p->repetition;
        if (cnt[b]) l -= p->presence + p->frequency * (float)cnt[b];
        out[b] = l + p->bias[b];
    }
}

/* The rows run[i]'s sampler sees for a span of its last byte and draft[0..dlen): rows with its
 * penalties applied, row t counting the drafted bytes before it as output (row t matters only
 * when they were all accepted), exactly as plain decoding would count them. Without penalties,
 * rows themselves. */
static const float *penalized_rows(srv_sched *s, const seq *q, const float *rows,
                                   const uint8_t *draft, int dlen) {
    if (!q->pen) return rows;
    int cnt[256];
    memcpy(cnt, q->pen->out, sizeof cnt);
    for (int t = 0; t <= dlen; t++) {
        const size_t at = (size_t)t * (size_t)s->n_vocab;
        penalize(&q->job->req.pen, cnt, q->pen->in_prompt, rows + at, s->pen_rows + at);
        if (t < dlen) cnt[draft[t]]++;
    }
    return s->pen_rows;
}

/* Writes the log-probabilities of byte b at position pos of q's text (prompt, then output) from
 * the raw logits row that predicted it, when the answer shows that byte's. */
static void score_byte(srv_sched *s, seq *q, size_t pos, const float *row, int b) {
    const srv_gen_req *r = &q->job->req;
    srv_scores *sc = &q->job->sc;
    size_t base = r->echo ? 0 : q->input_len;
    if (r->logprobs < 0 || pos < base || pos - base >= sc->n) return;
    size_t e = pos - base;
    int top[SRV_TOP_MAX];
    sc->lp[e] = mb_logprob_top(row, s->n_vocab, b, sc->k, top, sc->top_lp + e * (size_t)sc->k);
    for (int t = 0; t < sc->k; t++) sc->top[e * (size_t)sc->k + (size_t)t] = (uint8_t)top[t];
}

/* 1 when q's prompt is scored (echo with logprobs): every prompt byte fed asks for logits. */
static int scores_prompt(const seq *q) {
    return q->job->req.echo && q->job->req.logprobs >= 0;
}

/* Batch entry k fed prompt bytes with logits at each (scores_prompt), rows from `row` on: each
 * gives the log-probabilities of the prompt byte after it. Before fed_input moves on. */
static void score_prompt(srv_sched *s, int k, int row) {
    seq *q = &s->run[s->seq_of[k]];
    for (int t = 0; t < s->took[k]; t++) {
        size_t pos = q->fed_input + (size_t)t + 1;
        if (pos < q->input_len)
            score_byte(s, q, pos, s->logits + (size_t)(row + t) * (size_t)s->n_vocab,
                       q->input[pos]);
    }
}

/* Before byte b joins run[i]'s output: its log-probabilities from the raw row, its count for
 * the penalties, and for best_of its share of the completion's log-probability. */
static void note_byte(srv_sched *s, seq *q, const float *row, int b) {
    srv_job *j = q->job;
    score_byte(s, q, q->input_len + q->n_out, row, b);
    if (q->pen) q->pen->out[b]++;
    if (j->req.best_of > j->req.n) {
        j->sum_lp += mb_logprob(row, s->n_vocab, b);
        j->n_lp++;
    }
}

/* ---- forks: the completions of one prompt after the first (n, best_of) ---- */

static int sample_byte(srv_sched *s, int i, const float *row);
static int take_byte(srv_sched *s, int i, int b, double now);

static int *take_fork_slots(srv_sched *s, const srv_job *j) {
    int *slot = malloc((size_t)j->n_forks * sizeof *slot);
    for (int f = 0; slot && f < j->n_forks; f++) {
        if ((slot[f] = srv_slot_take(s->slots)) >= 0) continue;
        while (f--) srv_slot_release(s->slots, slot[f]);
        free(slot);
        return NULL;
    }
    return slot;
}

/* The prompt's log-probabilities, scored once by the request that read it (echo). */
static void copy_prompt_scores(srv_job *to, const srv_job *from) {
    if (to->req.logprobs < 0 || !to->req.echo) return;
    size_t n = to->req.prompt_len < to->sc.n ? to->req.prompt_len : to->sc.n, k = (size_t)to->sc.k;
    memcpy(to->sc.lp, from->sc.lp, n * sizeof *to->sc.lp);
    memcpy(to->sc.top, from->sc.top, n * k);
    memcpy(to->sc.top_lp, from->sc.top_lp, n * k * sizeof *to->sc.top_lp);
}

/* q's forks that never started (its prompt was not read to the end, or nothing is drawn): they
 * end as q ends (finished with its reason; a failure of q failed them already), and give their
 * slots back. */
static void end_forks(srv_sched *s, seq *q, srv_finish why) {
    srv_job *j = q->job;
    for (int f = 0; f < j->n_forks; f++) {
        if (why != SRV_FINISH_NONE) { /* else they failed with it, and may be read already */
            copy_prompt_scores(j->forks[f], j);
            srv_job_finish(j->forks[f], why, 0, NULL);
        }
        srv_slot_release(s->slots, q->fork_slot[f]);
    }
    free(q->fork_slot);
    q->fork_slot = NULL;
}

/* run[i] has read its prompt and draws its first byte from row: each of its forks starts now
 * in its own slot, a copy of run[i]'s state (the prompt is read once), and draws its own first
 * byte from the same row with its own seed. A fork that cannot start fails alone. */
static void start_forks(srv_sched *s, int i, const float *row) {
    int *slot = s->run[i].fork_slot;
    s->run[i].fork_slot = NULL;
    double now = srv_now();
    for (int f = 0; f < s->run[i].job->n_forks; f++) {
        const seq *lead = &s->run[i];
        seq c = *lead;
        c.job = lead->job->forks[f], c.slot = slot[f], c.t_last = now;
        c.input = NULL, c.lx = NULL, c.sq = NULL, c.pen = NULL, c.dseen = 0;
        mb_err e;
        srv_error err;
        if (mb_pool_copy(s->pool, c.slot, lead->slot, &e) || !(c.input = malloc(c.input_len + 1)) ||
            pen_new(&c)) {
            free(c.input);
            srv_slot_release(s->slots, c.slot);
            srv_error_set(&err, 500, "server_error", "engine_error", "a fork failed to start");
            srv_job_fail(c.job, &err);
            continue;
        }
        memcpy(c.input, lead->input, c.input_len);
        copy_prompt_scores(c.job, lead->job);
        srv_job_ref(c.job);
        c.job->t_prefilled = now;
        srv_job_admit(c.job);
        s->run[s->n_run++] = c;
        take_byte(s, s->n_run - 1, sample_byte(s, s->n_run - 1, row), now);
    }
    free(slot);
}

/* 1 when q's byte is drawn with the step's other plain draws (sample_batch): no penalties to
 * apply to its row first, no forks to start at its first byte. */
static int drawn_at_once(const seq *q) {
    return !q->pen && !q->fork_slot;
}

/* The byte run[i] draws from its logits row (its penalties applied first), noted. A request
 * with forks starts them at its first byte. */
static int sample_byte(srv_sched *s, int i, const float *row) {
    seq *q = &s->run[i];
    if (q->fork_slot) start_forks(s, i, row);
    q = &s->run[i];
    int b = mb_sample(&q->job->req.sampling, penalized_rows(s, q, row, NULL, 0), s->n_vocab,
                      next_pos(q), s->scratch);
    note_byte(s, q, row, b);
    return b;
}

/* Appends byte b to run[i]'s output, checks stop strings and the length, retiring it when done;
 * returns 1 when it was retired. */
static int take_byte(srv_sched *s, int i, int b, double now) {
    seq *q = &s->run[i];
    srv_job *j = q->job;
    const srv_gen_req *r = &j->req;
    j->out[q->n_out++] = (uint8_t)b;
    if (q->n_out == 1) {
        srv_job_first_byte(j, now);
        srv_metrics_observe(s->mx, SRV_H_TTFB, now - j->t_arrive);
    } else {
        srv_metrics_observe(s->mx, SRV_H_BYTE_LATENCY, now - q->t_last);
    }
    q->t_last = now;
    const char *const *stops = (const char *const *)r->stops;
    /* Checked after every byte, a stop string can only end at the newest byte. */
    size_t from = q->n_out > q->max_stop_len ? q->n_out - q->max_stop_len : 0;
    long at = r->n_stops ? mb_stop_find(stops, r->n_stops, j->out + from, q->n_out - from) : -1;
    if (at >= 0) {
        srv_job_publish(j, q->n_out, 0);
        retire(s, i, SRV_FINISH_STOP, from + (size_t)at);
        return 1;
    }
    if (q->n_out == (size_t)r->max_tokens) {
        srv_job_publish(j, q->n_out, q->n_out);
        retire(s, i, SRV_FINISH_LENGTH, q->n_out);
        return 1;
    }
    size_t hold = srv_stop_holdback(stops, r->n_stops, j->out, q->n_out);
    srv_job_publish(j, q->n_out, q->n_out - hold);
    return 0;
}

/* One byte of run[i]'s speculative round (spec_round): the slot has been fed the bytes before
 * it when it is taken, so fed_total counts them first. */
typedef struct round_ctx {
    srv_sched *s;
    int i;
    size_t base; /* fed_total before the round */
    double now;
    const spec_result *r; /* drafted and accepted are known before the first byte */
    const float *rows;    /* the span's raw logits rows: byte t's log-probabilities */
} round_ctx;

static int take_round_byte(void *ctx, int t, uint8_t b) {
    round_ctx *c = ctx;
    /* The request's counts, before its first byte may finish it (its answer is then built). */
    if (t == 0) srv_job_count_draft(c->s->run[c->i].job, c->r->drafted, c->r->accepted);
    c->s->run[c->i].fed_total = c->base + 1 + (size_t)t;
    note_byte(c->s, &c->s->run[c->i], c->rows + (size_t)t * (size_t)c->s->n_vocab, b);
    return take_byte(c->s, c->i, b, c->now);
}

/* ---- the drafter model's side ---- */

/* q's drafter text takes the bytes of input and output it has not seen (the first time, for a
 * request without a session, it starts from an empty drafter state and reads them all). */
static int draft_sync(srv_sched *s, seq *q) {
    mb_err e;
    if (!q->sq) {
        if (mb_pool_reset(s->dpool, q->slot, &e) || !(q->sq = spec_seq_new(s->tok, NULL, 0, &e)))
            return -1;
        q->dseen = 0;
    }
    if (q->dseen < q->input_len) {
        if (spec_seq_append(q->sq, q->input + q->dseen, q->input_len - q->dseen, &e)) return -1;
        q->dseen = q->input_len;
    }
    size_t o = q->dseen - q->input_len;
    if (o < q->n_out && spec_seq_append(q->sq, q->job->out + o, q->n_out - o, &e)) return -1;
    q->dseen = q->input_len + q->n_out;
    return 0;
}

/* q's drafter state is unknown (a drafter forward failed, or memory ran out): it starts over
 * from an empty text. Only later drafts change; the bytes are those of plain decoding anyway. */
static void draft_reset(srv_sched *s, seq *q) {
    mb_pool_reset(s->dpool, q->slot, NULL);
    if (q->sess) {
        spec_seq_free(q->sess->draft);
        q->sq = q->sess->draft = spec_seq_new(s->tok, NULL, 0, NULL);
        q->dseen = q->input_len + q->n_out;
    } else {
        spec_seq_free(q->sq);
        q->sq = NULL;
    }
}

/* After a model draft's round that did not end q: the drafter's text keeps the accepted bytes
 * and the sampler's byte (re-cutting what follows its last whole accepted id), and the next
 * draft's length follows the acceptance. A sequence that leaves speculation to the server and
 * keeps fewer than GAIN_MIN bytes per draft on average stops drafting for dbackoff steps, then
 * probes again (the pause doubles while probes fail). */
static void model_round_done(srv_sched *s, seq *q, int dlen, int accepted, int taken) {
    mb_err e;
    if (spec_seq_commit(q->sq, accepted, q->job->out + q->n_out - 1, 1, &e))
        draft_reset(s, q);
    else
        q->dseen += (size_t)taken;
    q->dcap = spec_next_cap(q->dcap, dlen, accepted, q->max_draft);
    q->dgain += 0.25 * (accepted - q->dgain);
    if (q->spec != SRV_SPEC_AUTO) return;
    if (q->dgain < GAIN_MIN) {
        q->dresume = s->n_step + (unsigned)q->dbackoff;
        q->dbackoff = q->dbackoff < BACKOFF_MAX / 2 ? 2 * q->dbackoff : BACKOFF_MAX;
        q->dgain = GAIN_MIN; /* the probe decides */
    } else if (q->dgain >= 2 * GAIN_MIN) {
        q->dbackoff = BACKOFF_START;
    }
}

/* A speculative entry of the batch: run[i] fed its last byte and dlen drafted bytes, with logits
 * at each. The bytes that equal the sampler's choices are kept, then the sampler's own byte (as
 * plain decoding would give them); the slot is rolled back to what was kept. Before each byte is
 * taken the slot's history is the bytes before it, so a retirement (stop, length) leaves the
 * state a plain run would leave. Returns the bytes taken. */
static int take_draft(srv_sched *s, int i, const float *rows, const uint8_t *draft, int dlen,
                      int kind, double now) {
    seq *q = &s->run[i];
    srv_session *x = q->sess;
    srv_job *j = q->job;
    const int slot = q->slot;
    spec_result r;
    round_ctx c = {s, i, q->fed_total, now, &r, rows};
    mb_err e;
    int rc =
        spec_round(&j->req.sampling, penalized_rows(s, q, rows, draft, dlen), s->n_vocab, draft,
                   dlen, next_pos(q), s->scratch, s->pool, slot, take_round_byte, &c, &r, &e);
    srv_metrics_draft(s->mx, kind == DRAFT_MODEL, (size_t)dlen, (size_t)r.accepted);
    if (!r.ended && kind == DRAFT_LOOKUP) /* else q is gone */
        q->lcap = lookup_next_cap(q->lcap, dlen, r.accepted);
    if (!r.ended && kind == DRAFT_MODEL) model_round_done(s, q, dlen, r.accepted, r.taken);
    /* The test fault: the round rolled back (taken <= dlen); the scheduler sees a failure. */
    if (!rc && s->fault.rollback && r.taken <= dlen)
        rc = mb_fail(&e, "rollback failed (test fault)");
    if (rc) {
        fprintf(stderr, "mambabyte: rollback failed: %s\n", e.msg);
        if (r.ended) { /* q is gone: its state is unknown, and its session's history lost */
            forget_history(s, x, slot);
            return r.taken;
        }
        fail_running(s, e.msg);
        return -1;
    }
    return r.taken;
}

/* Prompt lookup for q: its index takes the bytes that came since the last draft (its whole
 * input the first time); no draft when out of memory. */
static int lookup_seq(seq *q, int key_len, uint8_t *out, int cap) {
    if (!q->lx && !(q->lx = lookup_new(key_len, LOOKUP_WINDOW))) return 0;
    size_t have = lookup_len(q->lx), in = q->input_len;
    int rc = 0;
    if (have < in) {
        rc = lookup_push(q->lx, q->input + have, in - have);
        have = in;
    }
    if (!rc) rc = lookup_push(q->lx, q->job->out + (have - in), q->n_out - (have - in));
    if (rc) {
        lookup_free(q->lx);
        q->lx = NULL;
        return 0;
    }
    return lookup_draft(q->lx, out, cap);
}

/* The device cannot run another step: every later forward would fail the same way. Stop taking
 * work and ask the main thread (waiting in sigwait) to shut the daemon down. */
static void lose_device(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    int first = !s->device_lost;
    s->device_lost = 1;
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
    if (!first) return;
    fprintf(stderr, "mambabyte: the device has failed; shutting down (exit status 1)\n");
    kill(getpid(), SIGTERM);
}

/* The model drafts of this step, for the candidates ck[0..nc) (batch entries, with byte caps
 * cmax already taken from the budget): one batched drafting round (spec_draft_batch) over all
 * of them; what a draft does not use goes back to the budget. A failed drafter leaves its
 * sequences decoding plainly (their drafter states start over); a lost device stops the
 * daemon as for the byte model. */
static void model_drafts(srv_sched *s, int nc, int *budget) {
    int n = 0;
    for (int c = 0; c < nc; c++) {
        seq *q = &s->run[s->seq_of[s->ck[c]]];
        if (draft_sync(s, q)) {
            draft_reset(s, q);
            *budget += s->cmax[c];
            continue;
        }
        s->ck[n] = s->ck[c], s->cmax[n] = s->cmax[c];
        s->cq[n] = q->sq, s->cslot[n] = q->slot, s->cscr[n] = s->n_slots + q->slot;
        n++;
    }
    if (!n) return;
    mb_err e;
    double t0 = srv_now();
    int rc = spec_draft_batch(s->dbatch, s->dpool, n, s->cq, s->cslot, s->cscr, s->cmax,
                              DRAFT_TOKENS, (float)s->c.draft_min_confidence, &e);
    s->t_drafter += srv_now() - t0;
    if (rc) fprintf(stderr, "mambabyte: the drafter failed: %s\n", e.msg);
    for (int c = 0; c < n; c++) {
        const int k = s->ck[c];
        seq *q = &s->run[s->seq_of[k]];
        const uint8_t *b = NULL;
        int d = rc ? 0 : spec_seq_draft(q->sq, &b);
        *budget += s->cmax[c] - d;
        if (rc || (!d && spec_seq_commit(q->sq, 0, NULL, 0, NULL))) draft_reset(s, q);
        if (!d) continue;
        memcpy(s->draft + (size_t)k * SRV_DRAFT_MAX, b, (size_t)d);
        s->dlen[k] = d, s->took[k] += d, s->dkind[k] = DRAFT_MODEL;
    }
    if (rc && !mb_model_usable(s->dmodel)) lose_device(s);
}

/* Drafts for the decoding entries from what is left of the budget: prompt lookup first where it
 * finds a match (when the request has it), else the drafter model. A request with speculation
 * on drafts while there is room; one that leaves it to the server drafts only when the measured
 * cost says drafting pays at this load (spec_cost), when decoding and prompts take at most half
 * of the budget (near the budget a span costs throughput), and when its own drafts have not
 * kept failing (see model_round_done). */
static void plan_drafts(srv_sched *s, int *budget) {
    const int used = s->c.max_batch_tokens - *budget;
    int nc = 0;
    for (int k = 0; k < s->n_decode; k++) {
        seq *q = &s->run[s->seq_of[k]];
        if (*budget <= 0) break;
        if (q->spec == SRV_SPEC_OFF) continue;
        int room = (int)((size_t)q->job->req.max_tokens - q->n_out) - 1; /* after the round's own */
        if (room > q->max_draft) room = q->max_draft;
        if (room > *budget) room = *budget;
        if (room <= 0) continue;
        if (q->lookup_key) {
            int cap = q->lcap < room ? q->lcap : room;
            int d = lookup_seq(q, q->lookup_key, s->draft + (size_t)k * SRV_DRAFT_MAX, cap);
            if (d > 0) {
                s->dlen[k] = d, s->took[k] += d, s->dkind[k] = DRAFT_LOOKUP;
                *budget -= d;
                continue;
            }
        }
        if (!s->dmodel || (q->sess && !q->sq)) continue;
        if (q->spec == SRV_SPEC_AUTO) {
            if (2 * used > s->c.max_batch_tokens || s->n_step < q->dresume) continue;
            if (s->step_choice < 0) s->step_choice = spec_cost_choose(&s->cost, s->n_decode);
            if (!s->step_choice) continue;
        }
        s->ck[nc] = k;
        /* with a confidence floor each draft finds its own length (spec_draft_batch) */
        const int cap = s->c.draft_min_confidence > 0 ? room : q->dcap;
        s->cmax[nc++] = cap < room ? cap : room;
    }
    /* the budget left is shared: each model draft gets at most an even share of what the ones
     * before it left (prompt lookup drafted first: no drafter forwards) */
    int n = 0;
    for (int c = 0; c < nc; c++) {
        const int share = *budget / (nc - c);
        if (share <= 0) continue;
        s->ck[n] = s->ck[c];
        s->cmax[n] = s->cmax[c] < share ? s->cmax[c] : share;
        *budget -= s->cmax[n++];
    }
    if (n) model_drafts(s, n, budget);
}

/* Plans one batch within max_batch_tokens into seq_of/took/dlen and lays it out in tokens, off,
 * slot_of and want. A decoding sequence needs a byte each step and a prompt its chunks before
 * its first byte, while a draft only speeds decoding up; so first a byte for each decoding
 * sequence (taking turns when they do not all fit), leaving up to half the budget to prompts
 * waiting to be read; then prompt chunks in order of arrival, while sequences decode no more
 * prompt bytes than add prefill_stall steps' time (srv_pace); then drafts from what is left.
 * (Drafts first let a few looping streams take every token of every step, and a new prompt
 * wait until they ended.) Returns the number of entries, 0 when there is nothing to feed. */
static int build_batch(srv_sched *s, int *n_tokens, size_t *prompt_bytes) {
    const int budget_all = s->c.max_batch_tokens;
    const size_t chunk = (size_t)s->c.prefill_chunk;
    int budget = budget_all, n = 0, nt = 0, decoding = 0;
    size_t need = 0;
    for (int i = 0; i < s->n_run; i++) {
        const seq *q = &s->run[i];
        size_t left = q->feed_target - q->fed_input;
        if (q->n_out == 0) need += left < chunk ? left : chunk;
        decoding += q->n_out > 0;
    }
    /* beside decoding sequences, prompts take what adds at most prefill_stall steps (srv_pace) */
    const int cap = decoding ? srv_pace_cap(&s->pace, decoding, s->c.prefill_stall) : INT_MAX;
    if (need > (size_t)cap) need = (size_t)cap;
    int reserve = need < (size_t)budget_all / 2 ? (int)need : budget_all / 2;
    int prompt_left = cap;
    for (int k = 0, first = s->rr; k < s->n_run && n < budget_all - reserve; k++) {
        int i = (first + k) % s->n_run;
        if (s->run[i].n_out == 0) continue;
        s->seq_of[n] = i, s->took[n] = 1, s->dlen[n] = 0, s->dkind[n] = DRAFT_NONE;
        n++, budget--;
        s->rr = (i + 1) % s->n_run; /* the next step starts after the last one served */
    }
    s->n_decode = n;
    for (int i = 0; i < s->n_run && budget > 0 && prompt_left > 0; i++) {
        const seq *q = &s->run[i];
        if (q->n_out > 0 || q->fed_input == q->feed_target) continue;
        size_t take = q->feed_target - q->fed_input;
        if (take > chunk) take = chunk;
        if (take > (size_t)budget) take = (size_t)budget;
        if (take > (size_t)prompt_left) take = (size_t)prompt_left;
        s->seq_of[n] = i, s->took[n] = (int)take, s->dlen[n] = 0, s->dkind[n] = DRAFT_NONE;
        n++, budget -= (int)take, prompt_left -= (int)take, *prompt_bytes += take;
    }
    plan_drafts(s, &budget);
    for (int k = 0; k < n; k++) {
        const seq *q = &s->run[s->seq_of[k]];
        s->off[k] = nt, s->slot_of[k] = q->slot;
        if (k < s->n_decode) {
            const uint8_t *d = s->draft + (size_t)k * SRV_DRAFT_MAX;
            s->want[nt] = 1;
            s->tokens[nt++] = q->job->out[q->n_out - 1];
            for (int t = 0; t < s->dlen[k]; t++) {
                s->want[nt] = 1;
                s->tokens[nt++] = d[t];
            }
            continue;
        }
        for (int t = 0; t < s->took[k]; t++) {
            s->want[nt] = (uint8_t)scores_prompt(q);
            s->tokens[nt++] = q->input[q->fed_input + (size_t)t];
        }
        /* Logits only for the last prompt byte, and only when something is sampled from it. */
        if (q->fed_input + (size_t)s->took[k] == q->feed_target && q->job->req.max_tokens > 0)
            s->want[nt - 1] = 1;
    }
    s->off[n] = nt;
    *n_tokens = nt;
    return n;
}

/* After the forward: counts what each entry fed and finds its first logits row. */
static void advance(srv_sched *s, int n, double now) {
    int row = 0;
    for (int i = 0; i < s->n_run; i++) s->entry_of[i] = -1;
    for (int k = 0; k < n; k++) {
        seq *q = &s->run[s->seq_of[k]];
        s->entry_of[s->seq_of[k]] = k;
        int rows = 0; /* logits rows of the entry: its span, or prompt bytes (scores_prompt) */
        for (int t = s->off[k]; t < s->off[k + 1]; t++) rows += s->want[t];
        if (q->n_out == 0 && scores_prompt(q)) score_prompt(s, k, row);
        if (q->n_out == 0) q->fed_input += (size_t)s->took[k];
        if (!s->dlen[k]) q->fed_total += (size_t)s->took[k]; /* else take_draft counts */
        /* a byte is drawn after a decoding entry, and after the prompt's last byte when asked */
        int draws = q->n_out > 0 || (q->fed_input == q->feed_target && q->job->req.max_tokens > 0);
        s->row_of[k] = draws && s->want[s->off[k + 1] - 1] ? row + rows - 1 - s->dlen[k] : -1;
        row += rows;
        if (q->n_out == 0 && q->fed_input == q->feed_target) q->job->t_prefilled = now;
    }
}

/* Samples a byte (or verifies a draft) for every entry with logits; returns the bytes taken, or
 * -1 when an engine failure failed every running sequence. The plain draws (drawn_at_once) are
 * made first, all at once (mb_sample_rows shares them among threads), then each sequence takes
 * its byte. */
static int sample_batch(srv_sched *s, double now) {
    int sampled = 0, nd = 0;
    /* Taking a byte may retire a sequence, which shifts run[] above it: go from the top down,
     * in the same order both times. */
    for (int i = s->n_run - 1; i >= 0; i--) {
        int k = s->entry_of[i];
        if (k < 0 || s->row_of[k] < 0 || s->dlen[k] || !drawn_at_once(&s->run[i])) continue;
        s->d_set[nd] = &s->run[i].job->req.sampling;
        s->d_row[nd] = s->row_of[k];
        s->d_pos[nd++] = next_pos(&s->run[i]);
    }
    mb_err e;
    if (mb_sample_rows(s->model, nd, s->d_set, s->logits, s->d_row, s->d_pos, s->d_byte, &e)) {
        fail_running(s, e.msg);
        return -1;
    }
    nd = 0;
    for (int i = s->n_run - 1; i >= 0; i--) {
        int k = s->entry_of[i];
        if (k < 0 || s->row_of[k] < 0) continue;
        const float *rows = s->logits + (size_t)s->row_of[k] * (size_t)s->n_vocab;
        if (s->dlen[k]) {
            srv_job *held = s->run[i].job; /* the bytes of one step are shown together */
            srv_job_hold(held);
            int got = take_draft(s, i, rows, s->draft + (size_t)k * SRV_DRAFT_MAX, s->dlen[k],
                                 s->dkind[k], now);
            srv_job_release(held);
            if (got < 0) return -1;
            sampled += got;
            continue;
        }
        if (drawn_at_once(&s->run[i])) {
            note_byte(s, &s->run[i], rows, s->d_byte[nd]);
            take_byte(s, i, s->d_byte[nd++], now);
        } else {
            take_byte(s, i, sample_byte(s, i, rows), now);
        }
        sampled++;
    }
    return sampled;
}

/* One batched forward over every running sequence that can be fed, then its bytes. */
static void step(srv_sched *s) {
    int nt = 0;
    size_t prompt_bytes = 0;
    double t0 = srv_now();
    s->t_drafter = 0;
    s->step_choice = -1;
    s->n_step++;
    int n = build_batch(s, &nt, &prompt_bytes);
    if (n == 0) return;
    int spans = 0;
    for (int k = 0; k < s->n_decode; k++) spans |= s->dlen[k] > 0;
    mb_batch b = {
        .n_seq = n, .tokens = s->tokens, .off = s->off, .slot = s->slot_of, .want = s->want};
    double tf = srv_now();
    mb_err e;
    if (mb_forward(s->model, s->pool, &b, s->logits, &e)) {
        fprintf(stderr, "mambabyte: forward failed: %s\n", e.msg);
        fail_running(s, e.msg);
        if (!mb_model_usable(s->model)) lose_device(s);
        return;
    }
    double now = srv_now();
    const int n_decode = s->n_decode;
    srv_pace_record(&s->pace, n_decode, (int)prompt_bytes, now - tf);
    advance(s, n, now);
    int sampled = sample_batch(s, now);
    if (sampled < 0) return;
    double t1 = srv_now();
    srv_metrics_step(s->mx, n, nt, prompt_bytes, (size_t)sampled, t1 - t0);
    srv_metrics_step_split(s->mx, s->t_drafter, now - tf, spans);
    /* The choice is measured on decoding alone: prompt chunks in the same forward take their
     * share of it (by tokens) out, or a way chosen in steps with fewer prompts would win. */
    if (s->step_choice >= 0) {
        int dt = 0;
        for (int k = 0; k < n_decode; k++) dt += s->took[k];
        double fwd = now - tf, cost = t1 - t0 - fwd + fwd * dt / nt;
        spec_cost_record(&s->cost, n_decode, s->step_choice, (double)sampled, cost);
    }
}

static void publish_gauges(srv_sched *s) {
    srv_slot_counts c;
    srv_slots_counts(s->slots, &c);
    srv_gauges g = {.slots_total = s->n_slots,
                    .sessions = srv_session_count(s->slots),
                    .slots_active = c.active,
                    .slots_idle = c.idle,
                    .sessions_spilled = c.spilled,
                    .sessions_spilled_bytes = (long long)c.spilled_bytes,
                    .spec_auto = s->dmodel && spec_cost_better(&s->cost, s->n_decode)};
    pthread_mutex_lock(&s->mu);
    g.queue_depth = s->n_waiting;
    s->n_running = s->n_run;
    s->n_free = s->n_slots - g.slots_active;
    pthread_mutex_unlock(&s->mu);
    srv_metrics_set_gauges(s->mx, &g);
}

static void *sched_main(void *arg) {
    srv_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* Idle, it still wakes every second: sessions expire without traffic too. */
        if (!s->stopping && !s->control.n && !s->incoming.n && !s->n_run && !s->waiting.n &&
            !s->cancel_all) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        int stop = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        run_control(s);
        check_running(s);
        admit_waiting(s);
        check_running(s);
        if (s->fault.stall_s > 0 && s->n_run) {
            double whole = (double)(time_t)s->fault.stall_s;
            struct timespec ts = {(time_t)whole, (long)((s->fault.stall_s - whole) * 1e9)};
            nanosleep(&ts, NULL);
            s->fault.stall_s = 0;
        }
        step(s);
        srv_sessions_maintain(s->slots, srv_now());
        publish_gauges(s);
        /* Only waiting jobs and nothing running: they wait for a deadline; do not spin. */
        if (!s->n_run && s->waiting.n) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int srv_sched_device_lost(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    int lost = s->device_lost;
    pthread_mutex_unlock(&s->mu);
    return lost;
}

/* ---- life cycle ---- */

static test_faults read_test_faults(void) {
    test_faults f = {0};
    const char *v = getenv("MB_FAULT_SCHED");
    if (!v) return f;
    f.waiting_oom = strstr(v, "waiting_oom") != NULL;
    f.rollback = strstr(v, "rollback") != NULL;
    const char *st = strstr(v, "stall=");
    if (st) f.stall_s = atof(st + 6);
    fprintf(stderr, "mambabyte: test faults injected: %s\n", v);
    return f;
}

srv_sched *srv_sched_start(mb_model *m, mb_model *draft, const spm_tokenizer *tok, const cfg *c,
                           srv_metrics *mx, mb_err *e) {
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    s->model = m, s->mx = mx, s->c = *c;
    s->dmodel = draft, s->tok = tok;
    spec_cost_init(&s->cost);
    srv_pace_init(&s->pace);
    s->fault = read_test_faults();
    s->n_vocab = mb_model_config(m)->n_vocab;
    s->n_slots = c->slots;
    s->n_free = c->slots;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!(s->pool = mb_pool_create(m, c->slots, c->max_batch_tokens, e))) goto fail;
    size_t ns = (size_t)c->slots, nb = (size_t)c->max_batch_tokens;
    s->slots = srv_slots_new(s->pool, mb_model_config(m), c);
    s->run = calloc(ns, sizeof *s->run);
    s->tokens = calloc(nb, sizeof *s->tokens);
    s->want = calloc(nb, 1);
    s->off = calloc(ns + 1, sizeof(int));
    s->slot_of = calloc(ns, sizeof(int));
    s->seq_of = calloc(ns, sizeof(int));
    s->took = calloc(ns, sizeof(int));
    s->row_of = calloc(ns, sizeof(int));
    s->entry_of = calloc(ns, sizeof(int));
    s->dlen = calloc(ns, sizeof(int));
    s->dkind = calloc(ns, sizeof(int));
    s->draft = calloc(ns, SRV_DRAFT_MAX);
    s->logits = calloc((ns > nb ? ns : nb) * (size_t)s->n_vocab, sizeof(float));
    s->scratch = malloc(mb_sample_scratch_bytes(s->n_vocab));
    s->pen_rows = malloc((SRV_DRAFT_MAX + 1) * (size_t)s->n_vocab * sizeof(float));
    s->d_set = calloc(ns, sizeof *s->d_set);
    s->d_row = calloc(ns, sizeof(int));
    s->d_byte = calloc(ns, sizeof(int));
    s->d_pos = calloc(ns, sizeof *s->d_pos);
    if (!s->slots || !s->run || !s->tokens || !s->want || !s->off || !s->slot_of || !s->seq_of ||
        !s->took || !s->row_of || !s->entry_of || !s->dlen || !s->dkind || !s->draft ||
        !s->logits || !s->scratch || !s->pen_rows || !s->d_set || !s->d_row || !s->d_byte ||
        !s->d_pos) {
        mb_fail(e, "out of memory for %d slots", c->slots);
        goto fail;
    }
    if (draft) {
        const int pt = c->max_batch_tokens > c->slots ? c->max_batch_tokens : c->slots;
        if (!(s->dpool = mb_pool_create(draft, 2 * c->slots, pt, e)) ||
            !(s->dbatch = spec_batch_new(draft, c->slots, pt, c->prefill_chunk, e)))
            goto fail;
        s->cq = calloc(ns, sizeof *s->cq);
        s->ck = calloc(ns, sizeof(int));
        s->cslot = calloc(ns, sizeof(int));
        s->cscr = calloc(ns, sizeof(int));
        s->cmax = calloc(ns, sizeof(int));
        if (!s->cq || !s->ck || !s->cslot || !s->cscr || !s->cmax ||
            srv_slots_set_drafter(s->slots, s->dpool, tok)) {
            mb_fail(e, "out of memory for the drafter's %d slots", c->slots);
            goto fail;
        }
    }
    publish_gauges(s);
    if (pthread_create(&s->thread, NULL, sched_main, s)) {
        mb_fail(e, "cannot start the scheduler thread");
        goto fail;
    }
    s->started = 1;
    return s;
fail:
    srv_sched_stop(s);
    return NULL;
}

void srv_sched_drain(srv_sched *s, double deadline) {
    pthread_mutex_lock(&s->mu);
    s->draining = 1;
    pthread_mutex_unlock(&s->mu);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int busy = s->n_running + s->n_waiting + s->incoming.n + s->control.n;
        if (srv_now() > deadline) s->cancel_all = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        /* A request has finished when its answer is sent, not when its last byte is computed:
         * until the deadline, wait for the HTTP threads to let go of their jobs too (a stream
         * cut by the daemon's stop lost its end). */
        if (!busy && (!srv_job_live() || srv_now() > deadline)) return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void fail_list(job_list *l) {
    srv_error e;
    srv_error_set(&e, 503, "server_error", "shutting_down", "the server is shutting down");
    for (int i = 0; i < l->n; i++) {
        srv_job_fail(l->j[i], &e);
        srv_job_unref(l->j[i]);
    }
    free(l->j);
}

void srv_sched_stop(srv_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    while (s->n_run)
        retire(s, s->n_run - 1, SRV_FINISH_CANCELLED, s->run[s->n_run - 1].job->out_visible);
    fail_list(&s->waiting);
    fail_list(&s->incoming);
    fail_list(&s->control);
    srv_slots_free(s->slots);
    if (s->pool) mb_pool_free(s->pool);
    if (s->dpool) mb_pool_free(s->dpool);
    spec_batch_free(s->dbatch);
    free(s->cq);
    free(s->ck);
    free(s->cslot);
    free(s->cscr);
    free(s->cmax);
    free(s->dkind);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->run);
    free(s->tokens);
    free(s->want);
    free(s->dlen);
    free(s->draft);
    free(s->off);
    free(s->slot_of);
    free(s->seq_of);
    free(s->took);
    free(s->row_of);
    free(s->d_set);
    free(s->d_row);
    free(s->d_byte);
    free(s->d_pos);
    free(s->entry_of);
    free(s->logits);
    free(s->scratch);
    free(s->pen_rows);
    free(s);
}
