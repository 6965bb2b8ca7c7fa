/* srv_session.h: the state pool's slots and the sessions that live in them. Used only by the
 * scheduler thread (it touches the engine's pool), so nothing here locks.
 *
 * A slot is free, held by a running request, or holds a session's state. A session's state is
 * in a slot (resident), in host memory (spilled), or nowhere yet (the empty history). When a
 * slot is needed and none is free, the least recently used idle session is spilled. */
#ifndef SRV_SESSION_H
#define SRV_SESSION_H

#include "mambabyte.h"
#include "srv_request.h"

typedef struct srv_session {
    char id[SRV_ID_MAX];
    int slot;   /* -1: not resident */
    void *host; /* spilled state; NULL while not resident means the empty history */
    int has_pending;
    uint8_t pending; /* the last byte of the history, not fed yet: it yields the next logits */
    unsigned long long n_bytes; /* bytes of history, pending included */
    int busy;                   /* a request is running on it */
    unsigned long long used;    /* LRU clock */
} srv_session;

typedef struct srv_slots srv_slots;

srv_slots *srv_slots_new(mb_pool *p, int max_sessions);
void srv_slots_free(srv_slots *s);

/* A slot for a request, reset to the empty history; spills an idle session if none is free.
 * -1 when every slot is held by a running request (or memory for a spill is short). */
int srv_slot_take(srv_slots *s);
void srv_slot_release(srv_slots *s, int slot);

srv_session *srv_session_find(srv_slots *s, const char *id);
/* A new empty session, not resident; NULL when max_sessions are held or id exists. */
srv_session *srv_session_add(srv_slots *s, const char *id);
void srv_session_remove(srv_slots *s, srv_session *x);
/* Puts x's state into a slot (x->slot), marking it used now. -1 when no slot can be had. */
int srv_session_resident(srv_slots *s, srv_session *x);
/* A new session with a copy of src's state and history; NULL when full or out of memory. */
srv_session *srv_session_fork(srv_slots *s, srv_session *src, const char *id);
/* To dir/<id>.state (the engine's format) and dir/<id>.json (history length, pending byte). */
int srv_session_save(srv_slots *s, srv_session *x, const char *dir, srv_error *e);
/* The reverse: a new resident session from dir/<id>.*; errors are 404 (no such file), 400
 * (corrupt or for another model), 409 (the id is in memory) or 503 (no slot or full). */
srv_session *srv_session_restore(srv_slots *s, const char *id, const char *dir, srv_error *e);

int srv_session_count(const srv_slots *s);
srv_session *srv_session_at(srv_slots *s, int i);
/* Slots held by running requests (including sessions in use), by idle sessions, and the number
 * of spilled sessions. */
void srv_slots_counts(const srv_slots *s, int *active, int *idle, int *spilled);

#endif
