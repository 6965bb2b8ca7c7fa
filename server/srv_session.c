/* srv_session.c: slot bookkeeping, LRU spill to host memory, fork, save and restore. */
#include "srv_session.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum { SLOT_FREE, SLOT_REQUEST, SLOT_SESSION } slot_use;

struct srv_slots {
    mb_pool *pool;
    int n_slots;
    slot_use *use;       /* n_slots */
    srv_session **owner; /* n_slots: the session in a SLOT_SESSION slot */
    srv_session **sess;  /* n_sess of max_sess */
    int n_sess, max_sess;
    unsigned long long clock;
};

srv_slots *srv_slots_new(mb_pool *p, int max_sessions) {
    srv_slots *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->pool = p;
    s->n_slots = mb_pool_slots(p);
    s->max_sess = max_sessions;
    s->use = calloc((size_t)s->n_slots, sizeof *s->use);
    s->owner = calloc((size_t)s->n_slots, sizeof *s->owner);
    s->sess = calloc((size_t)max_sessions + 1, sizeof *s->sess);
    if (!s->use || !s->owner || !s->sess) {
        srv_slots_free(s);
        return NULL;
    }
    return s;
}

void srv_slots_free(srv_slots *s) {
    if (!s) return;
    for (int i = 0; i < s->n_sess; i++) {
        free(s->sess[i]->host);
        free(s->sess[i]);
    }
    free(s->use);
    free(s->owner);
    free(s->sess);
    free(s);
}

/* Moves the least recently used idle resident session to host memory. */
static int spill_one(srv_slots *s) {
    srv_session *lru = NULL;
    for (int i = 0; i < s->n_sess; i++) {
        srv_session *x = s->sess[i];
        if (x->slot >= 0 && !x->busy && (!lru || x->used < lru->used)) lru = x;
    }
    if (!lru) return -1;
    void *host = malloc(mb_pool_state_bytes(s->pool));
    if (!host) return -1;
    if (mb_pool_read(s->pool, lru->slot, host, NULL)) { /* the device failed: keep it resident */
        free(host);
        return -1;
    }
    s->use[lru->slot] = SLOT_FREE;
    s->owner[lru->slot] = NULL;
    lru->host = host;
    lru->slot = -1;
    return 0;
}

static int free_slot(srv_slots *s) {
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->n_slots; i++)
            if (s->use[i] == SLOT_FREE) return i;
        if (spill_one(s)) return -1;
    }
    return -1;
}

int srv_slot_take(srv_slots *s) {
    int slot = free_slot(s);
    if (slot < 0) return -1;
    if (mb_pool_reset(s->pool, slot, NULL)) return -1;
    s->use[slot] = SLOT_REQUEST;
    return slot;
}

void srv_slot_release(srv_slots *s, int slot) {
    s->use[slot] = SLOT_FREE;
    s->owner[slot] = NULL;
}

srv_session *srv_session_find(srv_slots *s, const char *id) {
    for (int i = 0; i < s->n_sess; i++)
        if (!strcmp(s->sess[i]->id, id)) return s->sess[i];
    return NULL;
}

srv_session *srv_session_add(srv_slots *s, const char *id) {
    if (s->n_sess >= s->max_sess || srv_session_find(s, id)) return NULL;
    srv_session *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    snprintf(x->id, sizeof x->id, "%s", id);
    x->slot = -1;
    x->used = ++s->clock;
    s->sess[s->n_sess++] = x;
    return x;
}

void srv_session_remove(srv_slots *s, srv_session *x) {
    if (x->slot >= 0) srv_slot_release(s, x->slot);
    for (int i = 0; i < s->n_sess; i++) {
        if (s->sess[i] != x) continue;
        s->sess[i] = s->sess[--s->n_sess];
        break;
    }
    free(x->host);
    free(x);
}

int srv_session_resident(srv_slots *s, srv_session *x) {
    x->used = ++s->clock;
    if (x->slot >= 0) return 0;
    int slot = free_slot(s);
    if (slot < 0) return -1;
    if (x->host ? mb_pool_write(s->pool, slot, x->host, NULL) : mb_pool_reset(s->pool, slot, NULL))
        return -1; /* the device failed; the spilled state stays in host memory */
    free(x->host);
    x->host = NULL;
    s->use[slot] = SLOT_SESSION;
    s->owner[slot] = x;
    x->slot = slot;
    return 0;
}

srv_session *srv_session_fork(srv_slots *s, srv_session *src, const char *id) {
    size_t bytes = mb_pool_state_bytes(s->pool);
    void *host = NULL;
    /* The copy goes to host memory: a fork needs no slot until it is used. */
    if (src->slot >= 0 || src->host) {
        if (!(host = malloc(bytes))) return NULL;
        if (src->slot >= 0) {
            if (mb_pool_read(s->pool, src->slot, host, NULL)) {
                free(host);
                return NULL;
            }
        } else
            memcpy(host, src->host, bytes);
    }
    srv_session *x = srv_session_add(s, id);
    if (!x) {
        free(host);
        return NULL;
    }
    x->host = host;
    x->has_pending = src->has_pending;
    x->pending = src->pending;
    x->n_bytes = src->n_bytes;
    return x;
}

static void paths(const char *dir, const char *id, char *state, char *meta, size_t n) {
    snprintf(state, n, "%s/%s.state", dir, id);
    snprintf(meta, n, "%s/%s.json", dir, id);
}

int srv_session_save(srv_slots *s, srv_session *x, const char *dir, srv_error *e) {
    if (mkdir(dir, 0755) && errno != EEXIST)
        return srv_error_set(e, 500, "server_error", "save_failed", "cannot create %s: %s", dir,
                             strerror(errno));
    if (srv_session_resident(s, x))
        return srv_error_set(e, 503, "server_error", "no_free_slot",
                             "every slot is busy; try again");
    char state[2048], meta[2048], tmp[2100];
    paths(dir, x->id, state, meta, sizeof state);
    /* Write both under temporary names and rename: a crash never leaves a half-written pair. */
    snprintf(tmp, sizeof tmp, "%s.tmp", state);
    mb_err me;
    if (mb_pool_save(s->pool, x->slot, tmp, &me))
        return srv_error_set(e, 500, "server_error", "save_failed", "%s", me.msg);
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", x->id);
    cJSON_AddNumberToObject(m, "n_bytes", (double)x->n_bytes);
    if (x->has_pending)
        cJSON_AddNumberToObject(m, "pending", x->pending);
    else
        cJSON_AddNullToObject(m, "pending");
    char *text = cJSON_Print(m);
    cJSON_Delete(m);
    char tmp2[2100];
    snprintf(tmp2, sizeof tmp2, "%s.tmp", meta);
    FILE *f = text ? fopen(tmp2, "w") : NULL;
    int ok = f && fputs(text, f) >= 0;
    if (f) ok = !fclose(f) && ok;
    free(text);
    if (!ok || rename(tmp, state) || rename(tmp2, meta)) {
        unlink(tmp);
        unlink(tmp2);
        return srv_error_set(e, 500, "server_error", "save_failed", "cannot write %s: %s", meta,
                             strerror(errno));
    }
    return 0;
}

static char *read_small(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = calloc(1, 4097);
    if (buf) {
        size_t n = fread(buf, 1, 4096, f);
        buf[n] = 0;
    }
    fclose(f);
    return buf;
}

srv_session *srv_session_restore(srv_slots *s, const char *id, const char *dir, srv_error *e) {
    if (srv_session_find(s, id)) {
        srv_error_set(e, 409, "conflict_error", "session_exists", "session %s is in memory", id);
        return NULL;
    }
    char state[2048], meta[2048];
    paths(dir, id, state, meta, sizeof state);
    char *text = read_small(meta);
    if (!text) {
        srv_error_set(e, 404, "not_found_error", "session_not_found", "no saved session %s", id);
        return NULL;
    }
    cJSON *m = cJSON_Parse(text);
    free(text);
    const cJSON *nb = cJSON_GetObjectItemCaseSensitive(m, "n_bytes");
    const cJSON *pe = cJSON_GetObjectItemCaseSensitive(m, "pending");
    int valid =
        cJSON_IsNumber(nb) && nb->valuedouble >= 0 &&
        (cJSON_IsNull(pe) || (cJSON_IsNumber(pe) && pe->valueint >= 0 && pe->valueint < 256));
    srv_session *x = NULL;
    if (!valid) {
        srv_error_set(e, 400, "invalid_request_error", "session_corrupt", "%s is corrupt", meta);
    } else if (!(x = srv_session_add(s, id))) {
        srv_error_set(e, 429, "rate_limit_error", "too_many_sessions", "too many sessions");
    } else if (srv_session_resident(s, x)) {
        srv_error_set(e, 503, "server_error", "no_free_slot", "every slot is busy; try again");
    } else {
        mb_err me;
        if (!mb_pool_load(s->pool, x->slot, state, &me)) {
            x->n_bytes = (unsigned long long)nb->valuedouble;
            x->has_pending = cJSON_IsNumber(pe);
            x->pending = x->has_pending ? (uint8_t)pe->valueint : 0;
            cJSON_Delete(m);
            return x;
        }
        srv_error_set(e, 400, "invalid_request_error", "session_corrupt", "%s", me.msg);
    }
    if (x) srv_session_remove(s, x);
    cJSON_Delete(m);
    return NULL;
}

int srv_session_count(const srv_slots *s) {
    return s->n_sess;
}
srv_session *srv_session_at(srv_slots *s, int i) {
    return s->sess[i];
}

void srv_slots_counts(const srv_slots *s, int *active, int *idle, int *spilled) {
    *active = *idle = *spilled = 0;
    for (int i = 0; i < s->n_slots; i++) {
        if (s->use[i] == SLOT_REQUEST || (s->use[i] == SLOT_SESSION && s->owner[i]->busy))
            ++*active;
        else if (s->use[i] == SLOT_SESSION)
            ++*idle;
    }
    for (int i = 0; i < s->n_sess; i++) *spilled += s->sess[i]->host != NULL;
}
