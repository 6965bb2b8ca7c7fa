/* spm.h: the drafter's tokenizer, a C interface over SentencePiece (libsentencepiece).
 *
 * Encoding follows the drafter's training (tools/train/train.py): text is cut at newlines, each
 * line is encoded by SentencePiece and the lines are joined by the byte piece <0x0A>. Bytes that
 * are not valid UTF-8 become their byte pieces <0xNN> instead of U+FFFD, so that every byte
 * string encodes to ids whose piece bytes concatenate back to it (except U+2581, SentencePiece's
 * space marker, which comes back as a space). Speculative output never depends on this: the
 * byte model verifies every drafted byte. */
#ifndef SPM_H
#define SPM_H

#include <stddef.h>
#include <stdint.h>

#include "mambabyte.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spm_tokenizer spm_tokenizer;

/* Loads a SentencePiece model file (tokenizer.model). */
spm_tokenizer *spm_load(const char *path, mb_err *e);
void spm_free(spm_tokenizer *t);
int spm_vocab(const spm_tokenizer *t);
int spm_bos(const spm_tokenizer *t); /* -1 when the model has none */
/* The bytes a piece stands for: a byte piece its byte, U+2581 as a space, control and unknown
 * pieces none. *len gets the count; the pointer stays valid while t lives. */
const uint8_t *spm_piece(const spm_tokenizer *t, int id, int *len);
/* Appends the ids of text[0..n) to *ids (grown with realloc; *n_ids and *cap updated). */
int spm_encode(const spm_tokenizer *t, const uint8_t *text, size_t n, int32_t **ids, size_t *n_ids,
               size_t *cap, mb_err *e);

#ifdef __cplusplus
}
#endif
#endif
