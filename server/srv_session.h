/* srv_session.h: the state pool's slots and the sessions that live in them. Used only by the
 * scheduler thread (it touches the engine's pool), so nothing here locks.
 *
 * A slot is free, held by a running request, or holds a session's state. A session's state is
 * in a slot (resident), in host memory (spilled), or nowhere yet (the empty history). When a
 * slot is needed and none is free, the least recently used idle session is spilled. Past
 * max_spill_bytes of spilled states, and when max_sessions are held and a new one is wanted,
 * the least recently used idle sessions are evicted: saved to session_dir and dropped from
 * memory. A session not in memory whose record is in session_dir (evicted, or saved before a
 * restart) is loaded back when a request names it. Idle sessions unused for session_ttl_s are
 * deleted, their record too, and so are records in session_dir of sessions not in memory whose
 * file is older than that; the records of sessions in memory have their time renewed, so that
 * daemons sharing session_dir do not expire what another one holds. */
#ifndef SRV_SESSION_H
#define SRV_SESSION_H

#include "cfg.h"
#include "mambabyte.h"
#include "spec.h"
#include "srv_request.h"

typedef struct srv_session {
    char id[SRV_ID_MAX];
    int slot;   /* -1: not resident */
    void *host; /* spilled state; NULL while not resident means the empty history */
    int has_pending;
    uint8_t pending; /* the last byte of the history, not fed yet: it yields the next logits */
    unsigned long long n_bytes; /* bytes of history, pending included */
    int busy;                   /* a request is running on it */
    int saved;                  /* its record in session_dir holds exactly this state */
    unsigned long long used;    /* LRU clock */
    double t_used;              /* srv_now() of its last use, for session_ttl_s */
    /* With a drafter: its text of the history (NULL: out of memory, no drafts) and, while not
     * resident, its state (NULL: the empty state); resident, it is in drafter slot `slot`. */
    spec_seq *draft;
    void *dhost;
} srv_session;

typedef struct srv_slots srv_slots;

/* shape: the model's, written into saved records; c: max_sessions, max_spill_bytes,
 * session_ttl_s and session_dir. */
srv_slots *srv_slots_new(mb_pool *p, const mb_config *shape, const cfg *c);
/* The drafter's pool (speculative decoding): its slot i follows slot i of p everywhere (reset,
 * spill, restore, fork, save), and every session keeps a drafter text (spec_seq) of tok. A
 * record saved without a drafter part, or with one that does not fit, starts the drafter over
 * from an empty text. -1 when out of memory. */
int srv_slots_set_drafter(srv_slots *s, mb_pool *dp, const spm_tokenizer *tok);
void srv_slots_free(srv_slots *s);

/* A slot for a request, reset to the empty history; spills an idle session if none is free.
 * -1 when every slot is held by a running request (or memory for a spill is short). */
int srv_slot_take(srv_slots *s);
void srv_slot_release(srv_slots *s, int slot);

/* The session in memory, or NULL. */
srv_session *srv_session_find(srv_slots *s, const char *id);
/* 1 when id is taken: by a session in memory or a record in session_dir. */
int srv_session_exists(srv_slots *s, const char *id);
/* A new id for a fork of src: src's route (its id up to the first '_', at most 47 characters),
 * '_' and 16 random hex digits. A load balancer that hashes on the route sends a fork to the
 * daemon that holds its source, where it was made. */
void srv_session_fork_id(const char *src, char *out, size_t n);
/* The session in memory, or else its record loaded from session_dir (spilled, not resident).
 * NULL with e filled: 404 (neither), 400 (a corrupt record), 429 (full), 500. */
srv_session *srv_session_get(srv_slots *s, const char *id, srv_error *e);
/* A new empty session, not resident; when max_sessions are held the least recently used idle
 * one other than keep is evicted first. NULL when none can be, or id exists. */
srv_session *srv_session_add(srv_slots *s, const char *id, const srv_session *keep);
/* Deletes x from memory and its record from session_dir. */
void srv_session_delete(srv_slots *s, srv_session *x);
/* Deletes the record of a session that is not in memory: 0, or -1 when there is none. */
int srv_session_delete_saved(srv_slots *s, const char *id);
/* Marks x used now (for the LRU order and session_ttl_s). */
void srv_session_touch(srv_slots *s, srv_session *x);
/* Puts x's state into a slot (x->slot), marking it used now. -1 when no slot can be had. */
int srv_session_resident(srv_slots *s, srv_session *x);
/* A new session with a copy of src's state and history; NULL when full or out of memory. */
srv_session *srv_session_fork(srv_slots *s, srv_session *src, const char *id);
/* Writes x's record to session_dir/<id>.session (whole or not at all). */
int srv_session_save(srv_slots *s, srv_session *x, srv_error *e);
/* Expires idle sessions past session_ttl_s and evicts spilled ones past max_spill_bytes; the
 * scheduler calls it between steps, when no session pointer is held but running ones. */
void srv_sessions_maintain(srv_slots *s, double now);

int srv_session_count(const srv_slots *s);
/* The answers of the session endpoints, printed JSON (NULL when out of memory): a session's
 * description (id, object, n_bytes, resident, busy; flag, if not NULL, is added as true), the
 * list of every session in memory, and the answer to a deletion. */
char *srv_session_print(const srv_session *x, const char *flag);
char *srv_session_list_json(const srv_slots *s);
char *srv_session_deleted_json(const char *id);

typedef struct srv_slot_counts {
    int active;  /* slots held by running requests, sessions in use included */
    int idle;    /* slots holding an idle session */
    int spilled; /* sessions whose state is in host memory */
    size_t spilled_bytes;
} srv_slot_counts;
void srv_slots_counts(const srv_slots *s, srv_slot_counts *n);

#endif
