/* spec.c: the drafter side of speculative decoding (one sequence's text, batched drafting, the
 * one-sequence drafter of `generate`), the verifier's rule and the round (spec.h). */
#include "spec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FEED_CHUNK 256 /* ids per forward when `generate`'s drafter catches up */
#define HELD_MAX   32  /* held bytes beyond this are encoded (see spec_seq_commit) */

struct spec_seq {
    const spm_tokenizer *tok;
    int n_vocab;
    /* committed whole ids not yet fed to the committed state; once anything was fed, the last
     * one always stays here: the first drafter forward of a round feeds it for the logits */
    int32_t *pend;
    size_t n_pend, cap_pend;
    /* committed bytes after the pending ids: the next draft begins with them */
    uint8_t *held;
    size_t n_held, cap_held;
    /* this round */
    int32_t *draft; /* drafted ids */
    int *draft_end; /* where each drafted id's bytes end in `bytes` */
    int n_draft, cap_draft;
    uint8_t *bytes;                    /* the held bytes, then the drafted ones */
    size_t n_bytes, cap_bytes, n_lead; /* n_lead: how many of them were held */
    size_t cov;                        /* bytes covered by the drafted ids */
    int n_new, max_bytes, max_tokens;  /* new bytes drafted, and the limits */
    float min_conf;                    /* the draft ends before its confidence falls below */
    float conf; /* the drafter's probability that every byte drafted so far is right */
    int began;  /* the last spec_draft_batch began a draft */
};

static int push_id(spec_seq *q, int32_t id, mb_err *e) {
    if (q->n_pend == q->cap_pend) {
        size_t c = q->cap_pend ? 2 * q->cap_pend : 64;
        int32_t *p = realloc(q->pend, c * sizeof *p);
        if (!p) return mb_fail(e, "out of memory");
        q->pend = p;
        q->cap_pend = c;
    }
    q->pend[q->n_pend++] = id;
    return 0;
}

/* Appends b[0..n) to the byte buffer *buf (length *len, capacity *cap). */
static int append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *b, size_t n, mb_err *e) {
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *len + n) c *= 2;
        uint8_t *p = realloc(*buf, c);
        if (!p) return mb_fail(e, "out of memory");
        *buf = p;
        *cap = c;
    }
    if (n) memcpy(*buf + *len, b, n);
    *len += n;
    return 0;
}

/* Encodes text[0..n) (committed bytes after the pending ids) into pending ids, except its last
 * piece, which is held back: the next draft may extend or re-cut it. */
static int settle(spec_seq *q, const uint8_t *text, size_t n, mb_err *e) {
    size_t n0 = q->n_pend;
    if (spm_encode(q->tok, text, n, &q->pend, &q->n_pend, &q->cap_pend, e)) return -1;
    int len = 0;
    const uint8_t *p = q->n_pend > n0 ? spm_piece(q->tok, q->pend[q->n_pend - 1], &len) : NULL;
    size_t hold =
        len > 0 && (size_t)len <= n && !memcmp(p, text + n - len, (size_t)len) ? (size_t)len : 0;
    if (hold) q->n_pend--;
    if (!q->n_pend) { /* nothing would give the first draft its logits: the piece is fed too
                       * (or, for an empty text without a BOS, the tokenizer's id 0) */
        if (hold)
            q->n_pend++;
        else if (push_id(q, 0, e))
            return -1;
        hold = 0;
    }
    q->n_held = 0;
    return append(&q->held, &q->n_held, &q->cap_held, text + n - hold, hold, e);
}

spec_seq *spec_seq_new(const spm_tokenizer *tok, const uint8_t *text, size_t n, mb_err *e) {
    spec_seq *q = calloc(1, sizeof *q);
    if (!q) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    q->tok = tok;
    q->n_vocab = spm_vocab(tok);
    if ((spm_bos(tok) >= 0 && push_id(q, spm_bos(tok), e)) || settle(q, text, n, e)) {
        spec_seq_free(q);
        return NULL;
    }
    return q;
}

void spec_seq_free(spec_seq *q) {
    if (!q) return;
    free(q->pend);
    free(q->held);
    free(q->draft);
    free(q->draft_end);
    free(q->bytes);
    free(q);
}

spec_seq *spec_seq_clone(const spec_seq *q, mb_err *e) {
    size_t len = 0;
    uint8_t *b = spec_seq_save(q, &len);
    if (!b) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    spec_seq *c = spec_seq_load(q->tok, b, len, e);
    free(b);
    return c;
}

/* The held bytes and b[0..n) are cut into ids again, all but the last piece. */
static int resettle(spec_seq *q, const uint8_t *b, size_t n, mb_err *e) {
    uint8_t *t = q->held;
    size_t len = q->n_held, cap = q->cap_held;
    q->held = NULL;
    q->n_held = q->cap_held = 0;
    int rc = append(&t, &len, &cap, b, n, e) ? -1 : settle(q, t, len, e);
    free(t);
    return rc;
}

int spec_seq_append(spec_seq *q, const uint8_t *b, size_t n, mb_err *e) {
    q->n_bytes = q->n_lead = 0;
    q->n_draft = q->n_new = 0;
    return n ? resettle(q, b, n, e) : 0;
}

int spec_seq_commit(spec_seq *q, int n_accept, const uint8_t *extra, int n_extra, mb_err *e) {
    if (!q->n_bytes) { /* no draft this round: the bytes join the held ones */
        if (q->n_held + (size_t)n_extra <= HELD_MAX)
            return append(&q->held, &q->n_held, &q->cap_held, extra, (size_t)n_extra, e);
        /* many rounds without a draft (another drafter's): encode all but the last piece */
        return resettle(q, extra, (size_t)n_extra, e);
    }
    /* drafted ids whose bytes were all kept (a cut last id never is) */
    size_t kept = q->n_lead + (size_t)n_accept, done = 0;
    if (kept > q->n_bytes) kept = q->n_bytes;
    for (int a = 0; a < q->n_draft && (size_t)q->draft_end[a] <= kept; a++) {
        int len;
        spm_piece(q->tok, q->draft[a], &len);
        if ((size_t)q->draft_end[a] - done != (size_t)len) break;
        if (push_id(q, q->draft[a], e)) return -1;
        done = (size_t)q->draft_end[a];
    }
    q->n_draft = q->n_new = 0;
    q->n_held = 0;
    if (append(&q->held, &q->n_held, &q->cap_held, q->bytes + done, kept - done, e)) return -1;
    q->n_bytes = q->n_lead = 0;
    return append(&q->held, &q->n_held, &q->cap_held, extra, (size_t)n_extra, e);
}

int spec_seq_draft(const spec_seq *q, const uint8_t **bytes) {
    *bytes = q->bytes ? q->bytes + q->n_lead : NULL;
    return q->n_new;
}

size_t spec_seq_unfed(const spec_seq *q) {
    return q->n_pend;
}

/* Saved form: u32 n_pend, u32 n_held, the ids (int32), the held bytes. */
uint8_t *spec_seq_save(const spec_seq *q, size_t *len) {
    uint32_t np = (uint32_t)q->n_pend, nh = (uint32_t)q->n_held;
    *len = 8 + 4 * (size_t)np + nh;
    uint8_t *b = malloc(*len);
    if (!b) return NULL;
    memcpy(b, &np, 4);
    memcpy(b + 4, &nh, 4);
    if (np) memcpy(b + 8, q->pend, 4 * (size_t)np);
    if (nh) memcpy(b + 8 + 4 * (size_t)np, q->held, nh);
    return b;
}

spec_seq *spec_seq_load(const spm_tokenizer *tok, const uint8_t *b, size_t len, mb_err *e) {
    uint32_t np, nh;
    if (len < 8) {
        mb_fail(e, "drafter text: %zu bytes", len);
        return NULL;
    }
    memcpy(&np, b, 4);
    memcpy(&nh, b + 4, 4);
    if (!np || np > (len - 8) / 4 || len != 8 + 4 * (size_t)np + nh) {
        mb_fail(e, "drafter text: %u ids and %u bytes in %zu bytes", np, nh, len);
        return NULL;
    }
    spec_seq *q = spec_seq_new(tok, NULL, 0, e);
    if (!q) return NULL;
    q->n_pend = 0;
    for (uint32_t i = 0; i < np; i++) {
        int32_t id;
        memcpy(&id, b + 8 + 4 * (size_t)i, 4);
        if (id < 0 || id >= q->n_vocab) {
            mb_fail(e, "drafter text: id %d out of range", (int)id);
            spec_seq_free(q);
            return NULL;
        }
        if (push_id(q, id, e)) {
            spec_seq_free(q);
            return NULL;
        }
    }
    if (append(&q->held, &q->n_held, &q->cap_held, b + 8 + 4 * (size_t)np, nh, e)) {
        spec_seq_free(q);
        return NULL;
    }
    return q;
}

/* ---- drafting ---- */

/* Starts a draft of up to max_bytes new bytes in up to max_tokens ids, from the held bytes, that
 * ends before the drafter's confidence in it falls below min_conf. */
static int draft_begin(spec_seq *q, int max_bytes, int max_tokens, float min_conf, mb_err *e) {
    q->n_draft = q->n_new = 0;
    q->n_bytes = q->n_lead = q->cov = 0;
    q->max_bytes = max_bytes;
    q->max_tokens = max_tokens;
    q->min_conf = min_conf;
    q->conf = 1.0f;
    q->began = 1;
    if (max_tokens > q->cap_draft) {
        int32_t *d = realloc(q->draft, (size_t)max_tokens * sizeof *d);
        if (d) q->draft = d;
        int *de = realloc(q->draft_end, (size_t)max_tokens * sizeof *de);
        if (de) q->draft_end = de;
        if (!d || !de) return mb_fail(e, "out of memory");
        q->cap_draft = max_tokens;
    }
    if (append(&q->bytes, &q->n_bytes, &q->cap_bytes, q->held, q->n_held, e)) return -1;
    q->n_lead = q->n_held;
    return 0;
}

/* Ids whose logit is this far below the most likely one's (each weighs under 3.4e-4 of it) are
 * left out of pick's byte masses (5: fewer bytes kept, 12: no more than 8; bench/RESULTS.md). */
#define PICK_RANGE  8.0f
#define PICK_LEVELS 64 /* bytes of an id whose probabilities pick reports */

/* What pick says of the id it chose, by the drafter's probabilities (within PICK_RANGE): for
 * each byte n of it from the held ones on, the share of the mass that byte held among the ids
 * that begin with the bytes before it (p[n]), and the share of the id itself among the ids that
 * begin with all its bytes (end: the chance that the text goes on with another id after it). */
typedef struct pick_probs {
    float p[PICK_LEVELS];
    float end;
} pick_probs;

/* The most likely id whose bytes are a part of pre (the drafter's text cut again after it). */
static int most_likely_part(const spec_seq *q, const float *logits, const uint8_t *pre,
                            size_t n_pre) {
    int best = -1;
    for (int id = 0; id < q->n_vocab; id++) {
        int len;
        const uint8_t *p = spm_piece(q->tok, id, &len);
        if (!len || (size_t)len >= n_pre || memcmp(p, pre, (size_t)len)) continue;
        if (best < 0 || logits[id] > logits[best]) best = id;
    }
    return best;
}

/* Whether id's bytes begin with pre (the empty piece of a control id begins with nothing). */
static int begins_with(const spec_seq *q, int id, const uint8_t *pre, size_t n_pre) {
    int len;
    const uint8_t *p = spm_piece(q->tok, id, &len);
    return (size_t)len >= n_pre && (len || !n_pre) && !memcmp(p, pre, n_pre);
}

/* The ids whose bytes begin with pre and whose logit is within PICK_RANGE of top, into cand with
 * their weights relative to top in w; returns how many. */
static int candidates(const spec_seq *q, const float *logits, const uint8_t *pre, size_t n_pre,
                      float top, int *cand, float *w) {
    int nc = 0;
    for (int id = 0; id < q->n_vocab; id++) {
        if (!(logits[id] >= top - PICK_RANGE) || !begins_with(q, id, pre, n_pre)) continue;
        w[nc] = expf(logits[id] - top);
        cand[nc++] = id;
    }
    return nc;
}

/* The id to draft, chosen byte by byte. The verifier keeps a drafted byte when it is the byte
 * model's own choice, so the draft follows, at each of its bytes, the byte that holds the most of
 * the drafter's probability among the ids that begin with the bytes chosen so far, and ends the
 * id where the id of exactly those bytes outweighs all the longer ones together: among " a",
 * " and", " as" and " the" it drafts " a..." when the first three together outweigh " the",
 * which the most likely id alone would not. The walk starts from the held bytes pre (ids that begin
 * with all of them: a word the drafter would finish), among the ids near the top; when none of
 * those begins with them, among the ids near the most likely one that does (the held bytes are
 * text, whatever the drafter expected); when no id does, it drafts the most likely id whose
 * bytes are a part of them, so that the rest is cut again at the next step. The probabilities in
 * pr are shares among the ids that begin with the held bytes. cand, w: scratch of n_vocab each. */
static int pick(const spec_seq *q, const float *logits, const uint8_t *pre, size_t n_pre, int *cand,
                float *w, pick_probs *pr) {
    float top = -INFINITY;
    for (int id = 0; id < q->n_vocab; id++)
        if (logits[id] > top) top = logits[id];
    int nc = candidates(q, logits, pre, n_pre, top, cand, w);
    if (!nc && n_pre) {
        float best = -INFINITY;
        for (int id = 0; id < q->n_vocab; id++)
            if (logits[id] > best && begins_with(q, id, pre, n_pre)) best = logits[id];
        if (best > -INFINITY) nc = candidates(q, logits, pre, n_pre, best, cand, w);
    }
    for (size_t n = n_pre; nc > 0; n++) { /* every candidate begins with the chosen n bytes */
        float mass[256] = {0}, end_mass = 0.f;
        int end_id = -1;
        for (int i = 0; i < nc; i++) {
            int len;
            const uint8_t *p = spm_piece(q->tok, cand[i], &len);
            if ((size_t)len == n) {
                end_mass += w[i];
                if (end_id < 0 || logits[cand[i]] > logits[end_id]) end_id = cand[i];
            } else {
                mass[p[n]] += w[i];
            }
        }
        int b = 0;
        float more = mass[0];
        for (int c = 1; c < 256; c++) {
            more += mass[c];
            if (mass[c] > mass[b]) b = c;
        }
        if (end_id >= 0 && end_mass >= more) {
            pr->end = end_mass / (end_mass + more);
            return end_id;
        }
        if (n < PICK_LEVELS) pr->p[n] = mass[b] / (end_mass + more);
        int kept = 0;
        for (int i = 0; i < nc; i++) {
            int len;
            const uint8_t *p = spm_piece(q->tok, cand[i], &len);
            if ((size_t)len > n && p[n] == b) cand[kept] = cand[i], w[kept++] = w[i];
        }
        nc = kept;
    }
    pr->end = 1.f; /* no new bytes: the rest of the held bytes is cut again at the next step */
    return most_likely_part(q, logits, pre, n_pre);
}

/* One drafted id from the logits after the last id fed to the scratch state. Its bytes end where
 * the drafter's probability that all the draft's bytes are right would fall below min_conf (the
 * product of pick's shares; an id's end share weighs on the bytes after it). Returns 1 when
 * the draft goes on (*feed: the id to feed next), 0 when it is complete, -1 on error. */
static int draft_step(spec_seq *q, const float *logits, int *cand, float *w, int32_t *feed,
                      mb_err *e) {
    if (q->n_new >= q->max_bytes || q->n_draft >= q->max_tokens) return 0;
    const size_t lead_left = q->cov < q->n_lead ? q->n_lead - q->cov : 0;
    pick_probs pr;
    int id = pick(q, logits, q->bytes + q->cov, lead_left, cand, w, &pr), len;
    const uint8_t *p = spm_piece(q->tok, id, &len);
    if (!len) return 0; /* a control piece: the drafter ends its text */
    size_t fresh = (size_t)len > lead_left ? (size_t)len - lead_left : 0;
    if (fresh > (size_t)(q->max_bytes - q->n_new)) fresh = (size_t)(q->max_bytes - q->n_new);
    int sure = 1;
    for (size_t i = 0; i < fresh; i++) {
        const size_t n = lead_left + i;
        const float c = q->conf * (n < PICK_LEVELS ? pr.p[n] : 1.f);
        if (c < q->min_conf) {
            fresh = i, sure = 0;
            break;
        }
        q->conf = c;
    }
    if (!fresh && !sure) return 0; /* not even its first new byte */
    q->conf *= pr.end;
    if (fresh && append(&q->bytes, &q->n_bytes, &q->cap_bytes, p + lead_left, fresh, e)) return -1;
    q->n_new += (int)fresh;
    q->cov = fresh ? q->n_bytes : q->cov + (size_t)len;
    q->draft[q->n_draft] = id;
    q->draft_end[q->n_draft++] = (int)q->cov;
    if (!sure || q->n_new == q->max_bytes || q->n_draft == q->max_tokens) return 0;
    *feed = id;
    return 1;
}

struct spec_batch {
    mb_model *m;
    int n_vocab, max_seqs, pool_tokens, chunk;
    int32_t *tokens;       /* pool_tokens */
    int *off;              /* max_seqs + 1 */
    int *slot, *idx, *len; /* max_seqs: the forward's slots, which sequence, ids fed */
    float *logits;         /* max_seqs rows */
    int *cand;             /* n_vocab: pick's candidates */
    float *w;              /* n_vocab: their weights */
};

spec_batch *spec_batch_new(mb_model *m, int max_seqs, int pool_tokens, int chunk, mb_err *e) {
    spec_batch *b = calloc(1, sizeof *b);
    if (!b) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    b->m = m;
    b->n_vocab = mb_model_config(m)->n_vocab;
    b->max_seqs = max_seqs;
    b->pool_tokens = pool_tokens;
    b->chunk = chunk;
    b->tokens = malloc((size_t)(pool_tokens > max_seqs ? pool_tokens : max_seqs) * sizeof(int32_t));
    b->off = malloc((size_t)(max_seqs + 1) * sizeof(int));
    b->slot = malloc((size_t)max_seqs * sizeof(int));
    b->idx = malloc((size_t)max_seqs * sizeof(int));
    b->len = malloc((size_t)max_seqs * sizeof(int));
    b->logits = malloc((size_t)max_seqs * (size_t)b->n_vocab * sizeof(float));
    b->cand = malloc((size_t)b->n_vocab * sizeof(int));
    b->w = malloc((size_t)b->n_vocab * sizeof(float));
    if (!b->tokens || !b->off || !b->slot || !b->idx || !b->len || !b->logits || !b->cand ||
        !b->w) {
        mb_fail(e, "out of memory for drafting %d sequences", max_seqs);
        spec_batch_free(b);
        return NULL;
    }
    return b;
}

void spec_batch_free(spec_batch *b) {
    if (!b) return;
    free(b->tokens);
    free(b->off);
    free(b->slot);
    free(b->idx);
    free(b->len);
    free(b->logits);
    free(b->cand);
    free(b->w);
    free(b);
}

int spec_draft_batch(spec_batch *b, mb_pool *p, int n, spec_seq *const *q, const int *slot,
                     const int *scratch, const int *max_bytes, int max_tokens, float min_conf,
                     mb_err *e) {
    if (n > b->max_seqs) return mb_fail(e, "drafting %d sequences, room for %d", n, b->max_seqs);
    /* Catching up: each sequence feeds its pending ids (up to chunk, within the forward's
     * budget, at least one each) to its committed slot, the last one with logits. */
    int nt = 0, ns = 0;
    for (int i = 0; i < n; i++) {
        q[i]->n_new = 0;
        q[i]->n_bytes = q[i]->n_lead = 0;
        q[i]->n_draft = q[i]->began = 0;
        size_t np = q[i]->n_pend;
        int room = b->pool_tokens - nt - (n - i - 1),
            len = (int)(np < (size_t)b->chunk ? np : (size_t)b->chunk);
        if (len > room) len = room;
        if (len <= 0 || max_bytes[i] <= 0) continue;
        b->off[ns] = nt, b->slot[ns] = slot[i], b->idx[ns] = i, b->len[ns] = len;
        memcpy(b->tokens + nt, q[i]->pend, (size_t)len * sizeof(int32_t));
        nt += len, ns++;
    }
    if (!ns) return 0;
    b->off[ns] = nt;
    mb_batch fb = {ns, b->tokens, b->off, b->slot, NULL};
    if (mb_forward(b->m, p, &fb, b->logits, e)) return -1;
    /* A sequence that fed all its pending ids drafts from a copy of that state, and its
     * committed slot goes back to before the last id, which stays pending. */
    int na = 0;
    for (int k = 0; k < ns; k++) {
        spec_seq *s = q[b->idx[k]];
        const int len = b->len[k], i = b->idx[k];
        const int all = (size_t)len == s->n_pend;
        const int fed = all ? len - 1 : len;
        memmove(s->pend, s->pend + fed, (s->n_pend - (size_t)fed) * sizeof *s->pend);
        s->n_pend -= (size_t)fed;
        if (!all) continue;
        if (mb_pool_copy(p, scratch[i], slot[i], e) || mb_pool_rollback(p, slot[i], len - 1, e))
            return -1;
        if (draft_begin(s, max_bytes[i], max_tokens, min_conf, e)) return -1;
        int32_t id;
        int rc = draft_step(s, b->logits + (size_t)k * (size_t)b->n_vocab, b->cand, b->w, &id, e);
        if (rc < 0) return -1;
        if (rc) {
            b->idx[na] = i, b->slot[na] = scratch[i], b->tokens[na] = id;
            na++;
        }
    }
    /* One forward per drafted id across every sequence still drafting. */
    while (na) {
        for (int k = 0; k <= na; k++) b->off[k] = k;
        mb_batch db = {na, b->tokens, b->off, b->slot, NULL};
        if (mb_forward(b->m, p, &db, b->logits, e)) return -1;
        int next = 0;
        for (int k = 0; k < na; k++) {
            const int i = b->idx[k];
            int32_t id;
            int rc =
                draft_step(q[i], b->logits + (size_t)k * (size_t)b->n_vocab, b->cand, b->w, &id, e);
            if (rc < 0) return -1;
            if (rc) {
                b->idx[next] = i, b->slot[next] = scratch[i], b->tokens[next] = id;
                next++;
            }
        }
        na = next;
    }
    return 0;
}

int spec_next_cap(int cap, int drafted, int kept, int max) {
    int c = kept == drafted ? 2 * cap : kept + 2;
    if (c < SPEC_CAP_MIN) c = SPEC_CAP_MIN;
    return c > max ? max : c;
}

/* ---- one sequence with its own pool: `generate --draft` ---- */

struct spec_drafter {
    mb_model *m;
    const spm_tokenizer *tok;
    mb_pool *pool; /* slot 0: committed; slot 1: scratch to draft from */
    spec_batch *batch;
    spec_seq *q;
    int max_tokens;
    float min_conf;
};

spec_drafter *spec_drafter_create(mb_model *m, const spm_tokenizer *tok, int max_tokens,
                                  float min_conf, mb_err *e) {
    const int V = mb_model_config(m)->n_vocab;
    if (V != spm_vocab(tok)) {
        mb_fail(e, "drafter: the model's vocabulary (%d) is not its tokenizer's (%d)", V,
                spm_vocab(tok));
        return NULL;
    }
    spec_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    d->m = m;
    d->tok = tok;
    d->max_tokens = max_tokens < 1 ? 1 : max_tokens;
    d->min_conf = min_conf;
    if (!(d->pool = mb_pool_create(m, 2, FEED_CHUNK, e)) ||
        !(d->batch = spec_batch_new(m, 1, FEED_CHUNK, FEED_CHUNK, e))) {
        spec_drafter_free(d);
        return NULL;
    }
    return d;
}

void spec_drafter_free(spec_drafter *d) {
    if (!d) return;
    mb_pool_free(d->pool);
    spec_batch_free(d->batch);
    spec_seq_free(d->q);
    free(d);
}

int spec_drafter_start(spec_drafter *d, const uint8_t *text, size_t n, mb_err *e) {
    spec_seq_free(d->q);
    d->q = NULL;
    if (mb_pool_reset(d->pool, 0, e)) return -1;
    return (d->q = spec_seq_new(d->tok, text, n, e)) ? 0 : -1;
}

int spec_drafter_draft(spec_drafter *d, uint8_t *out, int max_bytes, mb_err *e) {
    const int slot = 0, scratch = 1;
    if (max_bytes <= 0) {
        d->q->n_new = 0;
        d->q->n_bytes = d->q->n_lead = 0;
        return 0;
    }
    do { /* a long text catches up in chunks first */
        if (spec_draft_batch(d->batch, d->pool, 1, &d->q, &slot, &scratch, &max_bytes,
                             d->max_tokens, d->min_conf, e))
            return -1;
    } while (!d->q->began);
    const uint8_t *b;
    int n = spec_seq_draft(d->q, &b);
    if (n) memcpy(out, b, (size_t)n);
    return n;
}

int spec_drafter_ids(const spec_drafter *d) {
    return d->q ? d->q->n_draft : 0;
}

int spec_drafter_commit(spec_drafter *d, int n_accept, const uint8_t *extra, int n_extra,
                        mb_err *e) {
    return spec_seq_commit(d->q, n_accept, extra, n_extra, e);
}

int spec_verify(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft, int k,
                uint64_t pos0, void *scratch, int *next) {
    int j = 0;
    for (;; j++) {
        int c = mb_sample(s, rows + (size_t)j * n_vocab, n_vocab, pos0 + (uint64_t)j, scratch);
        if (j == k || c != draft[j]) {
            *next = c;
            return j;
        }
    }
}

int spec_round(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft, int k,
               uint64_t pos0, void *scratch, mb_pool *p, int slot, spec_take_fn take, void *ctx,
               spec_result *r, mb_err *e) {
    int next, j = spec_verify(s, rows, n_vocab, draft, k, pos0, scratch, &next);
    *r = (spec_result){.drafted = k, .accepted = j};
    for (int t = 0; t <= j && !r->ended; t++) {
        r->taken = t + 1;
        r->ended = take(ctx, t, t < j ? draft[t] : (uint8_t)next) != 0;
    }
    /* the span was the last byte and the draft: keep the last byte and the taken bytes but the
     * newest (k + 1 kept: all of it, nothing to undo) */
    return r->taken <= k ? mb_pool_rollback(p, slot, r->taken, e) : 0;
}
