/* lookup.c: prompt lookup over an index of the sequence's keys (lookup.h).
 *
 * Every position p with key_len bytes after it is filed under the hash of those bytes, in a
 * chain from the latest position to older ones (as zlib's hash chains). A draft walks the chain
 * of the sequence's last key_len bytes and compares bytes, so a hash collision costs time, never
 * a wrong draft. The hash is a polynomial modulo 2^61 - 1 with a random base: a client cannot
 * aim its text at collisions (modulo 2^64 it could, with Thue-Morse strings). Bytes, chain links
 * and bucket heads live in rings of a power of two at least the window (smaller while the
 * sequence is shorter), so memory stays bounded however long the sequence grows. */
#include "lookup.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define HASH_P ((1ull << 61) - 1)

struct lookup_index {
    size_t m;       /* key length */
    size_t window;  /* a draft's occurrence starts in the last `window` bytes */
    size_t n;       /* bytes in the index */
    size_t skipped; /* bytes pushed before them that no draft can reach any more */
    size_t cap;     /* ring size, a power of two; grows up to max_cap while n < max_cap */
    size_t max_cap;
    uint8_t *ring; /* byte p at ring[p & (cap - 1)] */
    size_t *prev;  /* per position p: the previous position filed with p's bucket, + 1; 0: none */
    size_t *head;  /* per bucket (cap of them): the latest position filed there, + 1 */
    uint64_t h;    /* hash of the last m bytes */
    uint64_t base, top; /* top = base^(m - 1) */
};

static uint64_t mulmod(uint64_t a, uint64_t b) {
    unsigned __int128 p = (unsigned __int128)a * b;
    uint64_t r = (uint64_t)(p & HASH_P) + (uint64_t)(p >> 61);
    return r >= HASH_P ? r - HASH_P : r;
}

static int alloc_rings(lookup_index *x, size_t cap) {
    x->cap = cap;
    x->ring = malloc(cap);
    x->prev = malloc(cap * sizeof *x->prev);
    x->head = calloc(cap, sizeof *x->head);
    return x->ring && x->prev && x->head ? 0 : -1;
}

static void free_rings(lookup_index *x) {
    free(x->ring);
    free(x->prev);
    free(x->head);
}

lookup_index *lookup_new(int key_len, size_t window) {
    lookup_index *x = calloc(1, sizeof *x);
    if (!x || key_len < 1 || !window) {
        free(x);
        return NULL;
    }
    x->m = (size_t)key_len;
    x->window = window;
    /* the window's bytes and the byte that rolls out of the hash must stay in the ring */
    size_t need = window > x->m ? window : x->m + 1;
    for (x->max_cap = 64; x->max_cap < need;) x->max_cap *= 2;
    if (getrandom(&x->base, sizeof x->base, 0) != sizeof x->base) x->base = 0x9e3779b97f4a7c15ull;
    x->base = 256 + x->base % (HASH_P - 512);
    x->top = 1;
    for (size_t i = 1; i < x->m; i++) x->top = mulmod(x->top, x->base);
    if (alloc_rings(x, x->max_cap < 256 ? x->max_cap : 256)) {
        lookup_free(x);
        return NULL;
    }
    return x;
}

void lookup_free(lookup_index *x) {
    if (!x) return;
    free_rings(x);
    free(x);
}

size_t lookup_len(const lookup_index *x) {
    return x->skipped + x->n;
}

static void push_byte(lookup_index *x, uint8_t c) {
    const size_t mask = x->cap - 1;
    if (x->n >= x->m) { /* the oldest byte of the key leaves the hash */
        uint64_t out = mulmod(x->ring[(x->n - x->m) & mask], x->top);
        x->h = x->h >= out ? x->h - out : x->h + HASH_P - out;
    }
    x->h = mulmod(x->h, x->base) + c;
    if (x->h >= HASH_P) x->h -= HASH_P;
    x->ring[x->n & mask] = c;
    x->n++;
    if (x->n < x->m) return;
    const size_t p = x->n - x->m, b = x->h & mask;
    x->prev[p & mask] = x->head[b];
    x->head[b] = p + 1;
}

/* A ring twice as large, refiled from the bytes (while the sequence is shorter than the
 * window, nothing has wrapped yet): amortised over the bytes, a constant per byte. */
static int grow(lookup_index *x) {
    lookup_index y = *x;
    y.n = 0;
    y.h = 0;
    if (alloc_rings(&y, 2 * x->cap)) {
        free_rings(&y);
        return -1;
    }
    for (size_t i = 0; i < x->n; i++) push_byte(&y, x->ring[i]);
    free_rings(x);
    *x = y;
    return 0;
}

int lookup_push(lookup_index *x, const uint8_t *b, size_t n) {
    if (n > x->window) { /* drafts will come from the last `window` bytes of b at most */
        x->skipped += x->n + n - x->window;
        x->n = 0;
        x->h = 0;
        memset(x->head, 0, x->cap * sizeof *x->head);
        b += n - x->window;
        n = x->window;
    }
    for (size_t i = 0; i < n; i++) {
        if (x->n == x->cap && x->cap < x->max_cap && grow(x)) return -1;
        push_byte(x, b[i]);
    }
    return 0;
}

int lookup_draft(const lookup_index *x, uint8_t *out, int max_bytes) {
    const size_t n = x->n, m = x->m, mask = x->cap - 1;
    if (max_bytes < 1 || n <= m) return 0;
    const size_t key = n - m, lo = n > x->window ? n - x->window : 0;
    /* the key itself heads its chain; earlier positions of the window follow, latest first */
    for (size_t q = x->prev[key & mask]; q && q - 1 >= lo; q = x->prev[(q - 1) & mask]) {
        const size_t i = q - 1;
        size_t t = 0;
        while (t < m && x->ring[(i + t) & mask] == x->ring[(key + t) & mask]) t++;
        if (t < m) continue;
        size_t k = n - (i + m);
        if (k > (size_t)max_bytes) k = (size_t)max_bytes;
        for (size_t u = 0; u < k; u++) out[u] = x->ring[(i + m + u) & mask];
        return (int)k;
    }
    return 0;
}

int lookup_next_cap(int cap, int drafted, int kept) {
    int c = kept == drafted ? 2 * cap : kept + 2;
    return c < LOOKUP_MAX ? c : LOOKUP_MAX;
}
