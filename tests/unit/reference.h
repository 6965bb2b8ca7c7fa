/* reference.h: straightforward versions of code that was made faster, kept for the tests (the
 * fast code must give exactly their results) and the timings in bench/RESULTS.md: the sampler
 * that sorts every candidate with qsort, and prompt lookup that scans the context backwards. */
#ifndef MB_REFERENCE_H
#define MB_REFERENCE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mambabyte.h"

static const float *ref_cmp_logits;
static int ref_by_logit_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (ref_cmp_logits[i] != ref_cmp_logits[j])
        return ref_cmp_logits[i] > ref_cmp_logits[j] ? -1 : 1;
    return i - j;
}

/* mb_sample as it was: every candidate sorted by falling logit (ties: lower index first), then
 * top-k, min-p and top-p, and the draw walks the kept mass in that order. scratch: 12 n bytes. */
static inline int ref_sample(const mb_sampling *s, const float *logits, int n, uint64_t pos,
                             void *scratch) {
    if (!(s->temperature > 0.0f) || s->top_k == 1) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    double *pr = scratch;
    int *idx = (void *)((char *)scratch + (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) idx[i] = i;
    ref_cmp_logits = logits;
    qsort(idx, (size_t)n, sizeof *idx, ref_by_logit_desc);
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

static inline uint8_t ref_at2(const uint8_t *a, size_t na, const uint8_t *b, size_t i) {
    return i < na ? a[i] : b[i - na];
}

/* Prompt lookup as it was: over the context a ++ b, the latest i in the last `window` bytes with
 * the m bytes at i equal to the last m and i + m < n; up to max_bytes of what followed. */
static inline int ref_lookup_draft2(const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                                    int min_match, size_t window, uint8_t *out, int max_bytes) {
    const size_t n = na + nb, m = (size_t)min_match;
    if (min_match < 1 || max_bytes < 1 || n <= m) return 0;
    const size_t key = n - m, lo = n > window ? n - window : 0;
    for (size_t i = key; i-- > lo;) {
        size_t t = 0;
        while (t < m && ref_at2(a, na, b, i + t) == ref_at2(a, na, b, key + t)) t++;
        if (t < m) continue;
        size_t k = n - (i + m);
        if (k > (size_t)max_bytes) k = (size_t)max_bytes;
        for (size_t u = 0; u < k; u++) out[u] = ref_at2(a, na, b, i + m + u);
        return (int)k;
    }
    return 0;
}

#endif
