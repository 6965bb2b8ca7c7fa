/* srv_session.c: slot bookkeeping, LRU spill to host memory, eviction to session_dir, fork,
 * save and load of session records, expiry. */
#include "srv_session.h"
#include "fileio.h"
#include "srv_id.h"
#include "srv_job.h"
#include "srv_session_file.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef enum { SLOT_FREE, SLOT_REQUEST, SLOT_SESSION } slot_use;

#define DRAFT_TEXT_MAX (1 << 20) /* a longer drafter text is not saved with a record */

struct srv_slots {
    mb_pool *pool;
    mb_config shape;
    size_t state_bytes;
    int n_slots;
    slot_use *use;       /* n_slots */
    srv_session **owner; /* n_slots: the session in a SLOT_SESSION slot */
    srv_session **sess;  /* n_sess of max_sess */
    int n_sess, max_sess;
    int n_spilled; /* sessions whose state is in host memory (set_host keeps it) */
    double max_spill_bytes, ttl_s;
    double next_scan;   /* srv_now() of the next look for expired records in dir */
    double next_expire; /* and of the next look for expired sessions in memory */
    char dir[1024];
    unsigned long long clock;
    mb_pool *dpool; /* the drafter's (NULL: none): slot i follows slot i of pool */
    const spm_tokenizer *tok;
    size_t dstate_bytes;
};

int srv_slots_set_drafter(srv_slots *s, mb_pool *dp, const spm_tokenizer *tok) {
    s->dpool = dp;
    s->tok = tok;
    s->dstate_bytes = mb_pool_state_bytes(dp);
    for (int i = 0; i < s->n_sess; i++)
        if (!s->sess[i]->draft && !(s->sess[i]->draft = spec_seq_new(tok, NULL, 0, NULL)))
            return -1;
    return 0;
}

srv_slots *srv_slots_new(mb_pool *p, const mb_config *shape, const cfg *c) {
    srv_slots *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->pool = p;
    s->shape = *shape;
    s->state_bytes = mb_pool_state_bytes(p);
    s->n_slots = mb_pool_slots(p);
    s->max_sess = c->max_sessions;
    s->max_spill_bytes = c->max_spill_bytes;
    s->ttl_s = c->session_ttl_s;
    snprintf(s->dir, sizeof s->dir, "%s", c->session_dir);
    s->use = calloc((size_t)s->n_slots, sizeof *s->use);
    s->owner = calloc((size_t)s->n_slots, sizeof *s->owner);
    s->sess = calloc((size_t)c->max_sessions + 1, sizeof *s->sess);
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
        free(s->sess[i]->dhost);
        spec_seq_free(s->sess[i]->draft);
        free(s->sess[i]);
    }
    free(s->use);
    free(s->owner);
    free(s->sess);
    free(s);
}

/* Sets x's state in host memory (NULL: none), counting the sessions that have one, so that
 * nothing a step does needs to visit every session. The caller frees the old one. */
static void set_host(srv_slots *s, srv_session *x, void *host) {
    s->n_spilled += (host != NULL) - (x->host != NULL);
    x->host = host;
}

void srv_session_touch(srv_slots *s, srv_session *x) {
    x->used = ++s->clock;
    x->t_used = srv_now();
}

/* Moves the least recently used idle resident session to host memory. */
static int spill_one(srv_slots *s) {
    srv_session *lru = NULL;
    for (int i = 0; i < s->n_sess; i++) {
        srv_session *x = s->sess[i];
        if (x->slot >= 0 && !x->busy && (!lru || x->used < lru->used)) lru = x;
    }
    if (!lru) return -1;
    void *host = malloc(s->state_bytes), *dhost = s->dpool ? malloc(s->dstate_bytes) : NULL;
    if (!host || (s->dpool && !dhost) || mb_pool_read(s->pool, lru->slot, host, NULL) ||
        (s->dpool && mb_pool_read(s->dpool, lru->slot, dhost, NULL))) {
        free(host); /* out of memory, or the device failed: keep it resident */
        free(dhost);
        return -1;
    }
    s->use[lru->slot] = SLOT_FREE;
    s->owner[lru->slot] = NULL;
    set_host(s, lru, host);
    lru->dhost = dhost;
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
    if (mb_pool_reset(s->pool, slot, NULL) || (s->dpool && mb_pool_reset(s->dpool, slot, NULL)))
        return -1;
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

/* ---- records in session_dir ---- */

static void record_path(const srv_slots *s, const char *id, char *path, size_t n) {
    snprintf(path, n, "%s/%s.session", s->dir, id);
}

int srv_session_exists(srv_slots *s, const char *id) {
    char path[1100];
    record_path(s, id, path, sizeof path);
    return srv_session_find(s, id) || !access(path, F_OK);
}

void srv_session_fork_id(const char *src, char *out, size_t n) {
    char prefix[SRV_ID_MAX];
    int route = (int)strcspn(src, "_");
    if (route > SRV_ID_MAX - 18) route = SRV_ID_MAX - 18;
    snprintf(prefix, sizeof prefix, "%.*s_", route, src);
    srv_new_id(prefix, out, n);
}

static int say(char *msg, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int say(char *msg, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* The drafter's part of x's record: its state, then its text (spec_seq_save); NULL (and
 * *len 0) without a drafter, when out of memory, or when the text is too long to keep. */
static uint8_t *draft_part(srv_slots *s, const srv_session *x, size_t *len) {
    *len = 0;
    if (!s->dpool || !x->draft) return NULL;
    size_t tl = 0;
    uint8_t *t = spec_seq_save(x->draft, &tl), *b = NULL;
    if (t && tl <= DRAFT_TEXT_MAX && (b = calloc(1, s->dstate_bytes + tl))) {
        memcpy(b + s->dstate_bytes, t, tl);
        if (x->dhost) memcpy(b, x->dhost, s->dstate_bytes);
        if (x->slot >= 0 && mb_pool_read(s->dpool, x->slot, b, NULL)) {
            free(b);
            b = NULL;
        }
    }
    free(t);
    if (b) *len = s->dstate_bytes + tl;
    return b;
}

/* Takes the drafter's part of a loaded record into x, when it fits this drafter (else x keeps
 * the empty drafter text it was made with). */
static void load_draft_part(srv_slots *s, srv_session *x, const srv_session_record *r) {
    if (!s->dpool || r->draft_len <= s->dstate_bytes) return;
    const uint8_t *b = r->draft;
    for (size_t i = 0; i + 4 <= s->dstate_bytes; i += 4) {
        float v;
        memcpy(&v, b + i, 4);
        if (!isfinite(v)) return;
    }
    void *dhost = malloc(s->dstate_bytes);
    spec_seq *q =
        dhost ? spec_seq_load(s->tok, b + s->dstate_bytes, r->draft_len - s->dstate_bytes, NULL)
              : NULL;
    if (!q) {
        free(dhost);
        return;
    }
    memcpy(dhost, b, s->dstate_bytes);
    spec_seq_free(x->draft);
    x->draft = q;
    x->dhost = dhost;
}

/* Writes x's record under a temporary name and renames it: a crash never leaves half a record.
 * Returns 0, or -1 with a message in msg. */
static int write_record(srv_slots *s, srv_session *x, char *msg, size_t n) {
    char path[1100], tmp[1110];
    record_path(s, x->id, path, sizeof path);
    if (x->saved && !access(path, F_OK)) return 0;
    void *state = x->host;
    if (x->slot >= 0 || !x->host) {
        if (!(state = calloc(1, s->state_bytes))) return say(msg, n, "out of memory");
        mb_err me;
        if (x->slot >= 0 && mb_pool_read(s->pool, x->slot, state, &me)) {
            free(state);
            return say(msg, n, "%s", me.msg);
        }
    }
    srv_session_record r = {.n_bytes = x->n_bytes,
                            .has_pending = x->has_pending,
                            .pending = x->pending,
                            .state = state};
    snprintf(r.id, sizeof r.id, "%s", x->id);
    uint8_t *draft = draft_part(s, x, &r.draft_len);
    r.draft = draft;
    size_t len = 0;
    uint8_t *buf = srv_session_record_build(&r, &s->shape, s->state_bytes, &len);
    if (state != x->host) free(state);
    free(draft);
    if (!buf) return say(msg, n, "out of memory");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = 0;
    FILE *f = NULL;
    if (mkdir(s->dir, 0755) && errno != EEXIST)
        rc = say(msg, n, "cannot create %s: %s", s->dir, strerror(errno));
    else if (!(f = fopen(tmp, "wb")))
        rc = say(msg, n, "cannot write %s: %s", tmp, strerror(errno));
    if (f) {
        int ok = fwrite(buf, 1, len, f) == len;
        ok = !fclose(f) && ok;
        if (!ok || rename(tmp, path)) {
            rc = say(msg, n, "cannot write %s: %s", path, strerror(errno));
            unlink(tmp);
        }
    }
    free(buf);
    if (!rc) x->saved = 1;
    return rc;
}

/* Drops x from memory, leaving its record (if any) in session_dir. */
static void drop(srv_slots *s, srv_session *x) {
    if (x->slot >= 0) srv_slot_release(s, x->slot);
    for (int i = 0; i < s->n_sess; i++) {
        if (s->sess[i] != x) continue;
        s->sess[i] = s->sess[--s->n_sess];
        break;
    }
    void *host = x->host;
    set_host(s, x, NULL);
    free(host);
    free(x->dhost);
    spec_seq_free(x->draft);
    free(x);
}

/* Saves the least recently used idle session (spilled ones only if spilled_only; never keep)
 * and drops it from memory; when it cannot be saved, drops it anyway if or_drop. -1 when there
 * is none or it stays. */
static int evict_one(srv_slots *s, int spilled_only, const srv_session *keep, int or_drop) {
    srv_session *lru = NULL;
    for (int i = 0; i < s->n_sess; i++) {
        srv_session *x = s->sess[i];
        if (x == keep || x->busy || (spilled_only && !x->host)) continue;
        if (!lru || x->used < lru->used) lru = x;
    }
    if (!lru) return -1;
    char msg[1200], path[1100];
    if (write_record(s, lru, msg, sizeof msg)) {
        fprintf(stderr, "mambabyte: cannot evict session %s to %s: %s%s\n", lru->id, s->dir, msg,
                or_drop ? "; dropped it" : "");
        if (!or_drop) return -1;
    } else {
        /* A record's time is when its session was last in memory: session_ttl_s counts from it
         * (write_record does not rewrite a record that is current). */
        record_path(s, lru->id, path, sizeof path);
        utimensat(AT_FDCWD, path, NULL, 0);
    }
    drop(s, lru);
    return 0;
}

srv_session *srv_session_add(srv_slots *s, const char *id, const srv_session *keep) {
    if (srv_session_find(s, id)) return NULL;
    if (s->n_sess >= s->max_sess && evict_one(s, 0, keep, 0)) return NULL;
    if (s->n_sess >= s->max_sess) return NULL;
    srv_session *x = calloc(1, sizeof *x);
    if (!x) return NULL;
    snprintf(x->id, sizeof x->id, "%s", id);
    x->slot = -1;
    if (s->tok && !(x->draft = spec_seq_new(s->tok, NULL, 0, NULL))) {
        free(x);
        return NULL;
    }
    srv_session_touch(s, x);
    s->sess[s->n_sess++] = x;
    return x;
}

srv_session *srv_session_get(srv_slots *s, const char *id, srv_error *e) {
    srv_session *x = srv_session_find(s, id);
    if (x) {
        srv_session_touch(s, x);
        return x;
    }
    char path[1100];
    record_path(s, id, path, sizeof path);
    mb_err me;
    size_t len = 0;
    uint8_t *buf = NULL;
    if (access(path, F_OK)) {
        /* Behind a load balancer the usual cause: the daemon that held it is gone. */
        srv_error_set(e, 404, "not_found_error", "session_not_found",
                      "no session %s: not in this daemon's memory nor saved in session_dir "
                      "(behind a load balancer send the X-Session-Id header; only a saved "
                      "session continues on another daemon: POST /v1/sessions/<id>/save)",
                      id);
        return NULL;
    }
    size_t most = s->state_bytes + 4096 + (s->dpool ? 8 + s->dstate_bytes + DRAFT_TEXT_MAX : 0);
    if (!(buf = mb_read_file(path, most, &len, &me))) {
        srv_error_set(e, 400, "invalid_request_error", "session_corrupt",
                      "the record of session %s cannot be read", id);
        return NULL;
    }
    srv_session_record r;
    char why[256];
    void *host = NULL;
    int corrupt =
        srv_session_record_parse(buf, len, &s->shape, s->state_bytes, &r, why, sizeof why);
    if (!corrupt && strcmp(r.id, id)) {
        snprintf(why, sizeof why, "it is another session's");
        corrupt = 1;
    }
    if (corrupt) {
        srv_error_set(e, 400, "invalid_request_error", "session_corrupt",
                      "the record of session %s is corrupt: %s", id, why);
    } else if (!(host = malloc(s->state_bytes))) {
        srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    } else if (!(x = srv_session_add(s, id, NULL))) {
        srv_error_set(e, 429, "rate_limit_error", "too_many_sessions",
                      "%d sessions are held and none is idle", s->max_sess);
    } else {
        memcpy(host, r.state, s->state_bytes);
        set_host(s, x, host);
        x->n_bytes = r.n_bytes;
        x->has_pending = r.has_pending;
        x->pending = r.pending;
        x->saved = 1;
        host = NULL;
        load_draft_part(s, x, &r);
    }
    free(host);
    free(buf);
    return x;
}

void srv_session_delete(srv_slots *s, srv_session *x) {
    srv_session_delete_saved(s, x->id);
    drop(s, x);
}

int srv_session_delete_saved(srv_slots *s, const char *id) {
    char path[1100];
    record_path(s, id, path, sizeof path);
    return unlink(path) ? -1 : 0;
}

int srv_session_resident(srv_slots *s, srv_session *x) {
    srv_session_touch(s, x);
    if (x->slot >= 0) return 0;
    int slot = free_slot(s);
    if (slot < 0) return -1;
    if (x->host ? mb_pool_write(s->pool, slot, x->host, NULL) : mb_pool_reset(s->pool, slot, NULL))
        return -1; /* the device failed; the spilled state stays in host memory */
    if (s->dpool && (x->dhost ? mb_pool_write(s->dpool, slot, x->dhost, NULL)
                              : mb_pool_reset(s->dpool, slot, NULL)))
        return -1;
    void *host = x->host;
    set_host(s, x, NULL);
    free(host);
    free(x->dhost);
    x->dhost = NULL;
    s->use[slot] = SLOT_SESSION;
    s->owner[slot] = x;
    x->slot = slot;
    return 0;
}

/* src's drafter state and text into x (a fork of src, not resident); -1 when out of memory or
 * the device failed. */
static int fork_draft(srv_slots *s, const srv_session *src, srv_session *x) {
    if (!s->dpool || !src->draft) return 0;
    const int has_state = src->slot >= 0 || src->dhost; /* else the empty state */
    spec_seq *q = spec_seq_clone(src->draft, NULL);
    void *dhost = has_state ? malloc(s->dstate_bytes) : NULL;
    if (dhost && src->dhost) memcpy(dhost, src->dhost, s->dstate_bytes);
    if (!q || (has_state && !dhost) ||
        (src->slot >= 0 && mb_pool_read(s->dpool, src->slot, dhost, NULL))) {
        spec_seq_free(q);
        free(dhost);
        return -1;
    }
    spec_seq_free(x->draft);
    x->draft = q;
    x->dhost = dhost;
    return 0;
}

srv_session *srv_session_fork(srv_slots *s, srv_session *src, const char *id) {
    void *host = NULL;
    /* The copy goes to host memory: a fork needs no slot until it is used. */
    if (src->slot >= 0 || src->host) {
        if (!(host = malloc(s->state_bytes))) return NULL;
        if (src->slot >= 0) {
            if (mb_pool_read(s->pool, src->slot, host, NULL)) {
                free(host);
                return NULL;
            }
        } else
            memcpy(host, src->host, s->state_bytes);
    }
    srv_session *x = srv_session_add(s, id, src);
    if (!x) {
        free(host);
        return NULL;
    }
    set_host(s, x, host);
    x->has_pending = src->has_pending;
    x->pending = src->pending;
    x->n_bytes = src->n_bytes;
    if (fork_draft(s, src, x)) {
        drop(s, x);
        return NULL;
    }
    return x;
}

int srv_session_save(srv_slots *s, srv_session *x, srv_error *e) {
    char msg[1200];
    if (!write_record(s, x, msg, sizeof msg)) return 0;
    /* The details name server paths: they go to the log, not to the client. */
    fprintf(stderr, "mambabyte: cannot save session %s: %s\n", x->id, msg);
    return srv_error_set(e, 500, "server_error", "save_failed",
                         "session %s could not be saved; the server log says why", x->id);
}

/* Deletes the records in dir of sessions not in memory whose file time is older than ttl_s, and
 * renews the time of those in memory. */
static void expire_records(srv_slots *s) {
    DIR *d = opendir(s->dir);
    if (!d) return;
    time_t now = time(NULL);
    for (struct dirent *de; (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        const size_t ext = sizeof ".session" - 1;
        if (n <= ext || n - ext >= SRV_ID_MAX || strcmp(de->d_name + n - ext, ".session")) continue;
        char id[SRV_ID_MAX], path[1100];
        memcpy(id, de->d_name, n - ext);
        id[n - ext] = 0;
        if (!srv_id_valid(id)) continue;
        record_path(s, id, path, sizeof path);
        /* A record counts from when its session was last in memory: in ours, that is now, which
         * keeps it from other daemons that share session_dir and expire records too. */
        if (srv_session_find(s, id)) {
            utimensat(AT_FDCWD, path, NULL, 0);
            continue;
        }
        struct stat st;
        if (!stat(path, &st) && difftime(now, st.st_mtime) > s->ttl_s) unlink(path);
    }
    closedir(d);
}

void srv_sessions_maintain(srv_slots *s, double now) {
    if (s->ttl_s > 0 && now >= s->next_scan) {
        expire_records(s);
        s->next_scan = now + (s->ttl_s < 60 ? s->ttl_s / 2 : 30);
    }
    /* a look at every session, so not at every step: a few times per TTL, at most every 0.25 s */
    if (s->ttl_s > 0 && now >= s->next_expire) {
        for (int i = 0; i < s->n_sess;) {
            srv_session *x = s->sess[i];
            if (!x->busy && now - x->t_used > s->ttl_s)
                srv_session_delete(s, x); /* the last one moved to i */
            else
                i++;
        }
        s->next_expire = now + (s->ttl_s < 1 ? s->ttl_s / 4 : 0.25);
    }
    while ((double)s->n_spilled * (double)(s->state_bytes + s->dstate_bytes) > s->max_spill_bytes)
        if (evict_one(s, 1, NULL, 1)) break;
}

int srv_session_count(const srv_slots *s) {
    return s->n_sess;
}

static cJSON *session_json(const srv_session *x) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", x->id);
    cJSON_AddStringToObject(o, "object", "session");
    cJSON_AddNumberToObject(o, "n_bytes", (double)x->n_bytes);
    cJSON_AddBoolToObject(o, "resident", x->slot >= 0);
    cJSON_AddBoolToObject(o, "busy", x->busy);
    return o;
}

static char *print_free(cJSON *o) {
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return t;
}

char *srv_session_print(const srv_session *x, const char *flag) {
    cJSON *o = session_json(x);
    if (flag) cJSON_AddBoolToObject(o, flag, 1);
    return print_free(o);
}

char *srv_session_list_json(const srv_slots *s) {
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "data");
    cJSON_AddStringToObject(o, "object", "list");
    for (int i = 0; i < s->n_sess; i++) cJSON_AddItemToArray(a, session_json(s->sess[i]));
    return print_free(o);
}

char *srv_session_deleted_json(const char *id) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "session");
    cJSON_AddBoolToObject(o, "deleted", 1);
    return print_free(o);
}

void srv_slots_counts(const srv_slots *s, srv_slot_counts *n) {
    memset(n, 0, sizeof *n);
    for (int i = 0; i < s->n_slots; i++) {
        if (s->use[i] == SLOT_REQUEST || (s->use[i] == SLOT_SESSION && s->owner[i]->busy))
            n->active++;
        else if (s->use[i] == SLOT_SESSION)
            n->idle++;
    }
    n->spilled = s->n_spilled;
    n->spilled_bytes = (size_t)n->spilled * (s->state_bytes + s->dstate_bytes);
}
