/* spec.h: speculative decoding, tokenized drafting and byte-level verification (DESIGN.md);
 * prompt lookup, the other drafter, is lookup.h.
 *
 * A drafter (a subword Mamba with its SentencePiece tokenizer) proposes the next bytes of a
 * sequence; the byte model feeds them as one span and keeps the longest prefix that equals its
 * own choices, then adds its own next byte. Its choices come from the same sampler and the same
 * (seed, position) draws as plain decoding, and a span's logits equal step-by-step logits bit
 * for bit, so the output is byte for byte the output of plain decoding.
 *
 * spec_drafter holds one sequence's drafter side: a pool of two slots (the committed state and a
 * scratch copy to draft from), the ids not yet fed, and the current draft. Drive it from the
 * thread that drives the drafter model. */
#ifndef SPEC_H
#define SPEC_H

#include "mambabyte.h"
#include "spm.h"

typedef struct spec_drafter spec_drafter;

/* max_tokens: drafted tokens per round at most. The drafter model's vocabulary must be the
 * tokenizer's. */
spec_drafter *spec_drafter_create(mb_model *m, const spm_tokenizer *tok, int max_tokens, mb_err *e);
void spec_drafter_free(spec_drafter *d);
/* Starts a sequence whose committed text is text[0..n) (a BOS first when the tokenizer has one). */
int spec_drafter_start(spec_drafter *d, const uint8_t *text, size_t n, mb_err *e);
/* Drafts greedily from the committed text: writes up to max_bytes bytes to out and returns how
 * many (0 when max_bytes is 0 or the drafter ends its text), or -1 on error. */
int spec_drafter_draft(spec_drafter *d, uint8_t *out, int max_bytes, mb_err *e);
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
 * sequence that ends in the middle of a round leaves the state plain decoding leaves. Returns
 * 0, or -1 when the rollback failed (e says why, r is filled). */
int spec_round(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft, int k,
               uint64_t pos0, void *scratch, mb_pool *p, int slot, spec_take_fn take, void *ctx,
               spec_result *r, mb_err *e);

#endif
