/* sample.c: choosing the next token from logits. The random number for position pos is a pure
 * function of (seed, pos), so a seeded output never depends on batching, timing or speculation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mambabyte.h"

void mb_sampling_default(mb_sampling *s) {
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
}

/* splitmix64's finaliser over a mix of seed and position: a counter-based generator. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double mb_uniform(uint64_t seed, uint64_t pos) {
    uint64_t z = mix64(mix64(seed + 0x9e3779b97f4a7c15ull) ^ (pos * 0xd1b54a32d192ed03ull + 1));
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

size_t mb_sample_scratch_bytes(int n_vocab) {
    return (size_t)n_vocab * (sizeof(int) + sizeof(double));
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* qsort has no context argument in C11: the key travels in a thread-local */
static _Thread_local const float *cmp_logits;
static int by_logit_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (cmp_logits[i] != cmp_logits[j]) return cmp_logits[i] > cmp_logits[j] ? -1 : 1;
    return i - j;
}

/* Candidates in order of falling logit (ties: lower index first), then truncated by top-k,
 * min-p and top-p over the temperature-scaled distribution; the draw walks the kept mass. */
int mb_sample(const mb_sampling *s, const float *logits, int n, uint64_t pos, void *scratch) {
    if (!(s->temperature > 0.0f) || s->top_k == 1) return argmax(logits, n);
    double *pr = scratch; /* doubles first: scratch is 8-byte aligned, n may be odd */
    int *idx = (void *)((char *)scratch + (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) idx[i] = i;
    cmp_logits = logits;
    qsort(idx, (size_t)n, sizeof *idx, by_logit_desc);
    int k = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    double mx = logits[idx[0]];
    for (int i = 0; i < k; i++) pr[i] = exp(((double)logits[idx[i]] - mx) / s->temperature);
    if (s->min_p > 0.0f) {
        int keep = 1;
        while (keep < k && pr[keep] >= s->min_p * pr[0]) keep++;
        k = keep;
    }
    double mass = 0.0;
    for (int i = 0; i < k; i++) mass += pr[i];
    if (s->top_p < 1.0f) {
        double cum = 0.0;
        int keep = 0;
        while (keep < k && (keep == 0 || cum < s->top_p * mass)) cum += pr[keep++];
        k = keep;
        mass = cum;
    }
    double u = mb_uniform(s->seed, pos) * mass, cum = 0.0;
    for (int i = 0; i < k; i++) {
        cum += pr[i];
        if (u < cum) return idx[i];
    }
    return idx[k - 1];
}

long mb_stop_find(const char *const *stops, int n_stops, const uint8_t *out, size_t len) {
    long best = -1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (!sl || sl > len) continue;
        const uint8_t *hit = memmem(out, len, stops[i], sl);
        if (hit && (best < 0 || hit - out < best)) best = hit - out;
    }
    return best;
}
