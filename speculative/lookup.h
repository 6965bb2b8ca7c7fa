/* lookup.h: prompt lookup, a drafter without a model. The draft for a sequence is what followed
 * the latest earlier occurrence of its last key_len bytes (prompt and output so far) within the
 * last `window` bytes.
 *
 * lookup_index keeps a hash of every key_len bytes of the sequence, updated as its bytes arrive,
 * so a draft costs about the same whatever the sequence holds (a scan of the context cost up to
 * milliseconds on a long run of one byte, for every sequence at every scheduler step). Memory:
 * about 17 bytes per byte of context, at most that for `window` bytes. */
#ifndef LOOKUP_H
#define LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#define LOOKUP_WINDOW ((size_t)1 << 16) /* the bytes of context a draft may come from */

typedef struct lookup_index lookup_index;

/* NULL when out of memory or when key_len < 1 or window is 0. */
lookup_index *lookup_new(int key_len, size_t window);
void lookup_free(lookup_index *x);
/* Appends b[0..n) to the sequence (a long prompt costs its last `window` bytes: no draft can
 * come from before them); -1 when out of memory (the index may then hold a part of b). */
int lookup_push(lookup_index *x, const uint8_t *b, size_t n);
size_t lookup_len(const lookup_index *x); /* bytes pushed so far */
/* Finds the latest place i in the last `window` bytes where the last key_len bytes occurred
 * before (i + key_len < length) and copies up to max_bytes of what followed it to out. Returns
 * how many (0: no earlier occurrence). */
int lookup_draft(const lookup_index *x, uint8_t *out, int max_bytes);

/* How long a sequence's lookup drafts may be: LOOKUP_START at first; after a draft of `drafted`
 * bytes of which `kept` were kept, doubled when all were, else kept + 2; never more than
 * LOOKUP_MAX. */
#define LOOKUP_START 8
#define LOOKUP_MAX   32
int lookup_next_cap(int cap, int drafted, int kept);

#endif
