/* spec.h: speculative decoding, tokenized drafting and byte-level verification (DESIGN.md);
 * prompt lookup, the other drafter, is lookup.h.
 *
 * A drafter (a subword Mamba with its SentencePiece tokenizer) proposes the next bytes of a
 * sequence; the byte model feeds them as one span and keeps the longest prefix that equals its
 * own choices, then adds its own next byte. Its choices come from the same sampler and the same
 * (seed, position) draws as plain decoding, and a span's logits equal step-by-step logits bit
 * for bit, so the output is byte for byte the output of plain decoding.
 *
 * The drafter's side is spec_seq (one sequence's text) with spec_draft_batch (drafting for many
 * sequences at once), and spec_drafter (one sequence with its own pool, for `generate`). */
#ifndef SPEC_H
#define SPEC_H

#include "mambabyte.h"
#include "spm.h"

/* ---- one sequence's drafter side, batched over many sequences ----
 *
 * spec_seq holds a sequence's drafter text in host memory: the ids not yet fed to its committed
 * drafter state (the last one always stays unfed: feeding it gives the first draft's logits),
 * the held bytes (committed bytes after those ids, re-cut by the next draft) and this round's
 * draft. Its drafter states live in a pool of the caller's: a committed slot and a scratch slot
 * to draft from. spec_draft_batch drafts for many sequences at once, one drafter forward per
 * drafted token across all of them; the server's scheduler and `generate --draft` (one
 * sequence) both go through it. Drive it from the thread that drives the drafter model. */
typedef struct spec_seq spec_seq;

/* A sequence whose committed text is text[0..n) (a BOS first when the tokenizer has one); its
 * committed slot must hold the empty state. NULL when out of memory. */
spec_seq *spec_seq_new(const spm_tokenizer *tok, const uint8_t *text, size_t n, mb_err *e);
void spec_seq_free(spec_seq *q);
/* A copy (a forked session): the same text; its slot needs a copy of q's committed state. */
spec_seq *spec_seq_clone(const spec_seq *q, mb_err *e);
/* Appends committed bytes that no draft of q proposed (prompt, or bytes another drafter or
 * plain decoding gave); they are cut into ids except the last piece, which stays held. */
int spec_seq_append(spec_seq *q, const uint8_t *b, size_t n, mb_err *e);
/* Ends a round: the first n_accept bytes of the last draft were kept, then extra[0..n_extra)
 * was committed after them (n_accept 0, n_extra 0: the draft was not used). */
int spec_seq_commit(spec_seq *q, int n_accept, const uint8_t *extra, int n_extra, mb_err *e);
/* The bytes of the last draft (set by spec_draft_batch); returns how many. */
int spec_seq_draft(const spec_seq *q, const uint8_t **bytes);
/* Ids not yet fed to the committed state (what a draft must catch up on first). */
size_t spec_seq_unfed(const spec_seq *q);
/* The sequence as bytes to keep with a saved session, and back: the unfed ids and the held
 * bytes. spec_seq_load checks every field (ids within the tokenizer's vocabulary). */
uint8_t *spec_seq_save(const spec_seq *q, size_t *len);
spec_seq *spec_seq_load(const spm_tokenizer *tok, const uint8_t *b, size_t len, mb_err *e);

/* Buffers for batched drafting over up to max_seqs sequences of a pool that takes pool_tokens
 * per forward; chunk: ids a sequence catches up on per call at most. */
typedef struct spec_batch spec_batch;
spec_batch *spec_batch_new(mb_model *m, int max_seqs, int pool_tokens, int chunk, mb_err *e);
void spec_batch_free(spec_batch *b);
/* Drafts for n sequences: q[i] from committed slot[i], using scratch[i] (all slots different),
 * up to max_bytes[i] bytes in up to max_tokens tokens (each chosen byte by byte by the drafter's
 * probability of each next byte: spec.c's pick), one forward of pool p for the ids each must
 * catch up on, then one per drafted token across all of them. A draft ends before the byte at
 * which the drafter's probability that all its bytes are right falls below min_conf (0: never;
 * a byte model's span costs more with every byte, and the later bytes are mostly not kept). A
 * sequence with more than chunk ids to catch up on (a long prompt) feeds chunk of them and drafts
 * nothing this time. Each draft is then read with spec_seq_draft. Returns 0, or -1 (the states are
 * then unknown: start the sequences over). */
int spec_draft_batch(spec_batch *b, mb_pool *p, int n, spec_seq *const *q, const int *slot,
                     const int *scratch, const int *max_bytes, int max_tokens, float min_conf,
                     mb_err *e);

/* The length of the next model draft of a sequence: after a draft of `drafted` bytes of which
 * `kept` were kept, doubled when all were, else kept + 2, within [SPEC_CAP_MIN, max]. */
#define SPEC_CAP_MIN 4
int spec_next_cap(int cap, int drafted, int kept, int max);

/* ---- one sequence with its own drafter, for `generate --draft` ---- */
typedef struct spec_drafter spec_drafter;

/* max_tokens: drafted tokens per round at most; min_conf: as for spec_draft_batch. The drafter
 * model's vocabulary must be the tokenizer's. */
spec_drafter *spec_drafter_create(mb_model *m, const spm_tokenizer *tok, int max_tokens,
                                  float min_conf, mb_err *e);
void spec_drafter_free(spec_drafter *d);
/* Starts a sequence whose committed text is text[0..n) (a BOS first when the tokenizer has one). */
int spec_drafter_start(spec_drafter *d, const uint8_t *text, size_t n, mb_err *e);
/* Drafts from the committed text (as spec_draft_batch): writes up to max_bytes bytes to out and
 * returns how many (0 when max_bytes is 0 or the drafter ends its text), or -1. */
int spec_drafter_draft(spec_drafter *d, uint8_t *out, int max_bytes, mb_err *e);
/* The ids of the last draft: the drafter forwards it took, the one that fed the pending id
 * included. */
int spec_drafter_ids(const spec_drafter *d);
/* Ends a round: the first n_accept bytes of the last draft were kept, then extra[0..n_extra)
 * was committed after them. The next draft continues from there. */
int spec_drafter_commit(spec_drafter *d, int n_accept, const uint8_t *extra, int n_extra,
                        mb_err *e);

/* The verifier's rule. rows: k + 1 rows of n_vocab logits, row i after the byte model has fed
 * draft[0..i) (row 0: before the draft); pos0: the absolute position of draft[0]. Returns the
 * number j of draft bytes that equal the sampler's choice, and sets *next to the sampler's
 * choice at position pos0 + j (what plain decoding emits after the accepted bytes).
 * scratch: mb_sample_scratch_bytes(n_vocab) bytes. */
int spec_verify(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft, int k,
                uint64_t pos0, void *scratch, int *next);

/* What one round gave. */
typedef struct spec_result {
    int drafted;  /* k */
    int accepted; /* draft bytes equal to the sampler's choices */
    int taken;    /* bytes handed to take: accepted + 1, fewer when take ended the sequence */
    int ended;    /* take ended the sequence */
} spec_result;

/* Receives the t-th byte (from 0) of a round; returns nonzero when the sequence ends with it. */
typedef int (*spec_take_fn)(void *ctx, int t, uint8_t byte);

/* One round of exact speculative decoding, shared by `generate` and the server's scheduler,
 * after the byte model fed a span of k + 1 bytes, the sequence's last byte and draft[0..k), to
 * slot `slot` of pool p with logits at each (rows, as for spec_verify). The round's bytes, the
 * accepted draft bytes then the sampler's own, go to take one by one, and the slot is rolled
 * back to hold the bytes before the last one taken (which the next span begins with), so a
 * sequence that ends in the middle of a round leaves the state plain decoding leaves. r's
 * drafted and accepted are set before the first byte goes to take. Returns 0, or -1 when the
 * rollback failed (e says why, r is filled). */
int spec_round(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft, int k,
               uint64_t pos0, void *scratch, mb_pool *p, int slot, spec_take_fn take, void *ctx,
               spec_result *r, mb_err *e);

#endif
