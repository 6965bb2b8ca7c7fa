/* spec.h: speculative decoding, tokenized drafting and byte-level verification (DESIGN.md).
 *
 * A drafter (a subword Mamba with its SentencePiece tokenizer) proposes the next bytes of a
 * sequence; the byte model feeds them as one span and keeps the longest prefix that equals its
 * own choices, then adds its own next byte. Its choices come from the same sampler and the same
 * (seed, position) draws as plain decoding, and a span's logits equal step-by-step logits bit
 * for bit, so the output is byte for byte the output of plain decoding.
 *
 * mb_drafter holds one sequence's drafter side: a pool of two slots (the committed state and a
 * scratch copy to draft from), the ids not yet fed, and the current draft. Drive it from the
 * thread that drives the drafter model. */
#ifndef MB_SPEC_H
#define MB_SPEC_H

#include "mambabyte.h"
#include "spm.h"

typedef struct mb_drafter mb_drafter;

/* max_tokens: drafted tokens per round at most. The drafter model's vocabulary must be the
 * tokenizer's. */
mb_drafter *mb_drafter_create(mb_model *m, const mb_spm *tok, int max_tokens, mb_err *e);
void mb_drafter_free(mb_drafter *d);
/* Starts a sequence whose committed text is text[0..n) (a BOS first when the tokenizer has one). */
int mb_drafter_start(mb_drafter *d, const uint8_t *text, size_t n, mb_err *e);
/* Drafts greedily from the committed text: writes up to max_bytes bytes to out and returns how
 * many (0 when max_bytes is 0 or the drafter ends its text), or -1 on error. */
int mb_drafter_draft(mb_drafter *d, uint8_t *out, int max_bytes, mb_err *e);
/* Ends a round: the first n_accept bytes of the last draft were kept, then extra[0..n_extra)
 * was committed after them. The next draft continues from there. */
int mb_drafter_commit(mb_drafter *d, int n_accept, const uint8_t *extra, int n_extra, mb_err *e);

/* Prompt lookup, a drafter without a model: finds the latest earlier place where the last
 * min_match bytes of ctx[0..n) occur (in the last `window` bytes) and copies up to max_bytes of
 * what followed it to out. Returns how many (0: no earlier occurrence). */
int mb_lookup_draft(const uint8_t *ctx, size_t n, int min_match, size_t window, uint8_t *out,
                    int max_bytes);
/* The same over the context a[0..na) followed by b[0..nb) (a prompt and the output so far). */
int mb_lookup_draft2(const uint8_t *a, size_t na, const uint8_t *b, size_t nb, int min_match,
                     size_t window, uint8_t *out, int max_bytes);

/* How long a sequence's lookup drafts may be: MB_LOOKUP_START at first; after a draft of
 * `drafted` bytes of which `kept` were kept, doubled when all were, else kept + 2; never more
 * than MB_LOOKUP_MAX. */
#define MB_LOOKUP_START 8
#define MB_LOOKUP_MAX   32
int mb_lookup_next_cap(int cap, int drafted, int kept);

/* The verifier's rule. rows: k + 1 rows of n_vocab logits, row i after the byte model has fed
 * draft[0..i) (row 0: before the draft); pos0: the absolute position of draft[0]. Returns the
 * number j of draft bytes that equal the sampler's choice, and sets *next to the sampler's
 * choice at position pos0 + j (what plain decoding emits after the accepted bytes).
 * scratch: mb_sample_scratch_bytes(n_vocab) bytes. */
int mb_spec_verify(const mb_sampling *s, const float *rows, int n_vocab, const uint8_t *draft,
                   int k, uint64_t pos0, void *scratch, int *next);

#endif
