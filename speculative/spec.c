/* spec.c: the drafter side of speculative decoding, the verifier's rule and the round (spec.h). */
#include "spec.h"

#include <stdlib.h>
#include <string.h>

#define FEED_CHUNK 256 /* ids per drafter forward when feeding committed text */
#define HELD_MAX   32  /* held bytes beyond this are encoded (see spec_drafter_commit) */

struct spec_drafter {
    mb_model *m;
    const spm_tokenizer *tok;
    mb_pool *pool; /* slot 0: after the fed ids; slot 1: scratch to draft from */
    int max_tokens, n_vocab;
    int32_t *pend; /* committed whole ids not yet fed to slot 0 */
    size_t n_pend, cap_pend;
    /* committed bytes after the fed and pending ids: the next draft begins with them */
    uint8_t *held;
    size_t n_held, cap_held;
    int32_t *draft; /* this round's drafted ids */
    int *draft_end; /* where each drafted id's bytes end in `bytes` */
    int n_draft;
    uint8_t *bytes;                    /* this round: the held bytes, then the drafted ones */
    size_t n_bytes, cap_bytes, n_lead; /* n_lead: how many of them were held */
    int fed;                           /* slot 0 has been fed since the start */
    float *base;                       /* logits after slot 0's last id */
    float *logits;                     /* logits while drafting */
};

spec_drafter *spec_drafter_create(mb_model *m, const spm_tokenizer *tok, int max_tokens,
                                  mb_err *e) {
    const int V = mb_model_config(m)->n_vocab;
    if (V != spm_vocab(tok)) {
        mb_fail(e, "drafter: the model's vocabulary (%d) is not its tokenizer's (%d)", V,
                spm_vocab(tok));
        return NULL;
    }
    if (max_tokens < 1) max_tokens = 1;
    spec_drafter *d = calloc(1, sizeof *d);
    if (!d) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    d->m = m;
    d->tok = tok;
    d->max_tokens = max_tokens;
    d->n_vocab = V;
    d->pool = mb_pool_create(m, 2, FEED_CHUNK, e);
    d->draft = malloc((size_t)max_tokens * sizeof *d->draft);
    d->draft_end = malloc((size_t)max_tokens * sizeof *d->draft_end);
    d->base = malloc((size_t)V * sizeof(float));
    d->logits = malloc((size_t)V * sizeof(float));
    if (!d->pool || !d->draft || !d->draft_end || !d->base || !d->logits) {
        if (d->pool) mb_fail(e, "out of memory");
        spec_drafter_free(d);
        return NULL;
    }
    return d;
}

void spec_drafter_free(spec_drafter *d) {
    if (!d) return;
    mb_pool_free(d->pool);
    free(d->pend);
    free(d->held);
    free(d->draft);
    free(d->draft_end);
    free(d->bytes);
    free(d->base);
    free(d->logits);
    free(d);
}

static int push_id(spec_drafter *d, int32_t id, mb_err *e) {
    if (d->n_pend == d->cap_pend) {
        size_t c = d->cap_pend ? 2 * d->cap_pend : 64;
        int32_t *p = realloc(d->pend, c * sizeof *p);
        if (!p) return mb_fail(e, "out of memory");
        d->pend = p;
        d->cap_pend = c;
    }
    d->pend[d->n_pend++] = id;
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
    memcpy(*buf + *len, b, n);
    *len += n;
    return 0;
}

/* Encodes text[0..n) (committed bytes after the fed and pending ids) into pending ids, except
 * its last piece, which is held back: the next draft may extend or re-cut it. */
static int settle(spec_drafter *d, const uint8_t *text, size_t n, mb_err *e) {
    size_t n0 = d->n_pend;
    if (spm_encode(d->tok, text, n, &d->pend, &d->n_pend, &d->cap_pend, e)) return -1;
    int len = 0;
    const uint8_t *p = d->n_pend > n0 ? spm_piece(d->tok, d->pend[d->n_pend - 1], &len) : NULL;
    size_t hold =
        len > 0 && (size_t)len <= n && !memcmp(p, text + n - len, (size_t)len) ? (size_t)len : 0;
    if (hold) d->n_pend--;
    if (!d->n_pend && !d->fed) { /* nothing would give the first draft its logits */
        d->n_pend = n0 + 1;
        hold = 0;
    }
    d->n_held = 0;
    return append(&d->held, &d->n_held, &d->cap_held, text + n - hold, hold, e);
}

int spec_drafter_start(spec_drafter *d, const uint8_t *text, size_t n, mb_err *e) {
    if (mb_pool_reset(d->pool, 0, e)) return -1;
    d->n_pend = d->n_held = d->n_bytes = d->n_lead = 0;
    d->n_draft = d->fed = 0;
    if (spm_bos(d->tok) >= 0 && push_id(d, spm_bos(d->tok), e)) return -1;
    return settle(d, text, n, e);
}

/* The most likely id. With held bytes, the most likely id whose bytes begin with all of them
 * (a word the drafter would finish); only when there is none, the most likely id whose bytes are
 * a part of them, so that the rest is cut again at the next step. Short pieces such as a bare
 * space gather the mass of every rare word after them: they must not win over whole words. */
static int pick(const spec_drafter *d, const uint8_t *pre, size_t n_pre) {
    int best = -1;
    for (int pass = 0; pass < 2 && best < 0; pass++)
        for (int id = 0; id < d->n_vocab; id++) {
            int len;
            const uint8_t *p = spm_piece(d->tok, id, &len);
            if (!len && n_pre) continue;
            if (n_pre) {
                int covers = (size_t)len >= n_pre;
                if (covers == pass || memcmp(p, pre, covers ? n_pre : (size_t)len)) continue;
            }
            if (best < 0 || d->logits[id] > d->logits[best]) best = id;
        }
    return best;
}

int spec_drafter_draft(spec_drafter *d, uint8_t *out, int max_bytes, mb_err *e) {
    d->n_draft = 0;
    d->n_bytes = d->n_lead = 0;
    if (max_bytes <= 0) return 0;
    for (size_t i = 0; i < d->n_pend; i += FEED_CHUNK) { /* catch slot 0 up */
        int len = d->n_pend - i < FEED_CHUNK ? (int)(d->n_pend - i) : FEED_CHUNK;
        int off[2] = {0, len}, slot = 0;
        mb_batch b = {1, d->pend + i, off, &slot, NULL};
        if (mb_forward(d->m, d->pool, &b, d->base, e)) return -1;
        d->fed = 1;
    }
    d->n_pend = 0;
    if (append(&d->bytes, &d->n_bytes, &d->cap_bytes, d->held, d->n_held, e)) return -1;
    d->n_lead = d->n_held;
    if (mb_pool_copy(d->pool, 1, 0, e)) return -1;
    memcpy(d->logits, d->base, (size_t)d->n_vocab * sizeof(float));
    size_t cov = 0; /* bytes covered by the drafted ids */
    int n = 0;      /* new bytes */
    while (d->n_draft < d->max_tokens) {
        const size_t lead_left = cov < d->n_lead ? d->n_lead - cov : 0;
        int id = pick(d, d->bytes + cov, lead_left), len;
        const uint8_t *p = spm_piece(d->tok, id, &len);
        if (!len) break; /* a control piece: the drafter ends its text */
        size_t fresh = (size_t)len > lead_left ? (size_t)len - lead_left : 0;
        if (fresh > (size_t)(max_bytes - n)) fresh = (size_t)(max_bytes - n);
        if (fresh && append(&d->bytes, &d->n_bytes, &d->cap_bytes, p + lead_left, fresh, e))
            return -1;
        n += (int)fresh;
        cov = fresh ? d->n_bytes : cov + (size_t)len;
        d->draft[d->n_draft] = id;
        d->draft_end[d->n_draft++] = (int)cov;
        if (n == max_bytes || d->n_draft == d->max_tokens) break;
        int off[2] = {0, 1}, slot = 1;
        int32_t t = id;
        mb_batch b = {1, &t, off, &slot, NULL};
        if (mb_forward(d->m, d->pool, &b, d->logits, e)) return -1;
    }
    memcpy(out, d->bytes + d->n_lead, (size_t)n);
    return n;
}

int spec_drafter_commit(spec_drafter *d, int n_accept, const uint8_t *extra, int n_extra,
                        mb_err *e) {
    if (!d->n_bytes) { /* no draft this round: the bytes join the held ones */
        if (append(&d->held, &d->n_held, &d->cap_held, extra, (size_t)n_extra, e)) return -1;
        if (d->n_held <= HELD_MAX) return 0;
        /* many rounds without a draft (another drafter's): encode all but the last piece */
        uint8_t *t = d->held;
        size_t n = d->n_held;
        d->held = NULL;
        d->n_held = d->cap_held = 0;
        int rc = settle(d, t, n, e);
        free(t);
        return rc;
    }
    /* drafted ids whose bytes were all kept (a cut last id never is) */
    size_t kept = d->n_lead + (size_t)n_accept, done = 0;
    if (kept > d->n_bytes) kept = d->n_bytes;
    for (int a = 0; a < d->n_draft && (size_t)d->draft_end[a] <= kept; a++) {
        int len;
        spm_piece(d->tok, d->draft[a], &len);
        if ((size_t)d->draft_end[a] - done != (size_t)len) break;
        if (push_id(d, d->draft[a], e)) return -1;
        done = (size_t)d->draft_end[a];
    }
    d->n_draft = 0;
    d->n_held = 0;
    if (append(&d->held, &d->n_held, &d->cap_held, d->bytes + done, kept - done, e)) return -1;
    d->n_bytes = d->n_lead = 0;
    return append(&d->held, &d->n_held, &d->cap_held, extra, (size_t)n_extra, e);
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
