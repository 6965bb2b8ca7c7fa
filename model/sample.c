/* sample.c: choosing the next token from logits. The random number for position pos is a pure
 * function of (seed, pos), so a seeded output never depends on batching, timing or speculation. */
#include <math.h>
#include <stdint.h>
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

/* The candidates as 64-bit integers (see candidate), twice, then their probabilities. */
size_t mb_sample_scratch_bytes(int n_vocab) {
    return (size_t)n_vocab * (2 * sizeof(uint64_t) + sizeof(double));
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The sampler visits candidates by falling logit, ties lower index first: that order fixes which
 * byte a draw picks and the order of the sums, so any faster way must keep it exactly. As one
 * integer per candidate, a 32-bit key that falls as the logit rises, then the index, the order
 * is the integers' order. */
static uint64_t candidate(const float *logits, int i) {
    float x = logits[i] == 0.0f ? 0.0f : logits[i]; /* -0 ties with +0, as floats compare */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u >> 31 ? ~u : u | 0x80000000u; /* rises with x */
    return (uint64_t)~u << 32 | (uint32_t)i;
}

static uint32_t key_of(uint64_t c) {
    return (uint32_t)(c >> 32);
}

/* Sorts a[0..m) (m >= 1, in index order) by key: a stable radix sort, one pass per key byte
 * that is not the same in all; linear in m where qsort took about 14 us for 256. Returns a or
 * tmp, whichever holds the result. */
static uint64_t *sort_by_key(uint64_t *a, uint64_t *tmp, int m) {
    for (int shift = 0; shift < 32; shift += 8) {
        int at[256] = {0};
        for (int i = 0; i < m; i++) at[key_of(a[i]) >> shift & 255]++;
        if (at[key_of(a[0]) >> shift & 255] == m) continue;
        for (int d = 0, sum = 0; d < 256; d++) {
            int c = at[d];
            at[d] = sum;
            sum += c;
        }
        for (int i = 0; i < m; i++) tmp[at[key_of(a[i]) >> shift & 255]++] = a[i];
        uint64_t *t = a;
        a = tmp;
        tmp = t;
    }
    return a;
}

/* Keeps in c[0..) (index order) the k first candidates of the order: a radix selection of the
 * k-th key, byte by byte from the top, then one pass. Returns k. */
static int keep_best(uint64_t *c, int n, int k) {
    uint32_t key = 0, mask = 0;
    int rank = k - 1; /* of the wanted candidate among those matching key under mask */
    for (int shift = 24; shift >= 0; shift -= 8) {
        int count[256] = {0};
        for (int i = 0; i < n; i++)
            if ((key_of(c[i]) & mask) == key) count[key_of(c[i]) >> shift & 255]++;
        int d = 0;
        while (d < 255 && rank >= count[d]) rank -= count[d++];
        key |= (uint32_t)d << shift;
        mask |= 255u << shift;
    }
    int m = 0, ties = rank + 1; /* candidates with the k-th key that are kept: lowest index first */
    for (int i = 0; i < n; i++)
        if (key_of(c[i]) < key || (key_of(c[i]) == key && ties-- > 0)) c[m++] = c[i];
    return m;
}

/* Keeps in c[0..) the candidates whose logit is at least lo, a first part of the order, and
 * sets *next to the candidate that comes after them (UINT64_MAX: none). */
static int keep_above(uint64_t *c, const float *logits, int n, double lo, uint64_t *next) {
    int m = 0;
    *next = UINT64_MAX;
    for (int i = 0; i < n; i++)
        if (logits[i] >= lo)
            c[m++] = c[i];
        else if (c[i] < *next)
            *next = c[i];
    return m;
}

/* Candidates in order of falling logit (ties: lower index first), then truncated by top-k,
 * min-p and top-p over the temperature-scaled distribution; the draw walks the kept mass.
 * Only what the rules can keep is ordered: the k best for top-k, those min-p can keep (a bound
 * on the logit, checked against the exact rule), all of them otherwise (the mass is summed in
 * that order). */
int mb_sample(const mb_sampling *s, const float *logits, int n, uint64_t pos, void *scratch) {
    if (!(s->temperature > 0.0f) || s->top_k == 1) return argmax(logits, n);
    uint64_t *cand = scratch, *tmp = cand + n; /* scratch is 8-byte aligned */
    double *pr = (void *)((char *)scratch + 2 * (size_t)n * sizeof(uint64_t));
    for (int i = 0; i < n; i++) cand[i] = candidate(logits, i);
#if defined(__AVX__) && defined(__GNUC__)
    /* The loop above is vectorised with 256-bit registers, and GCC 12 leaves their upper halves
     * dirty into the calls below: on a Sapphire Rapids host that made the 256 calls of exp()
     * cost 51 us a draw instead of 4.7 (bench/RESULTS.md, issue 10). */
    __builtin_ia32_vzeroupper();
#endif
    int k = s->top_k > 0 && s->top_k < n ? s->top_k : n, m = n;
    uint64_t next = UINT64_MAX; /* after a min-p bound: the first candidate it left out */
    if (k < n) {
        m = keep_best(cand, n, k);
    } else if (s->min_p > 0.0f) {
        /* min-p keeps exp((l - max) / T) >= min_p: l >= max + T log(min_p), with a margin for
         * rounding; the max itself always stays */
        double mx = logits[argmax(logits, n)],
               lo = mx + s->temperature * log(s->min_p) - 1e-6 * (fabs(mx) + 1.0);
        m = keep_above(cand, logits, n, lo <= mx ? lo : mx, &next);
        if (m < 1) {
            for (int i = 0; i < n; i++) cand[i] = candidate(logits, i);
            m = n;
        }
    }
    for (;;) {
        const uint64_t *c = sort_by_key(cand, tmp, m);
        double mx = logits[(uint32_t)c[0]];
        for (int i = 0; i < m; i++)
            pr[i] = exp(((double)logits[(uint32_t)c[i]] - mx) / s->temperature);
        int keep = m;
        if (s->min_p > 0.0f) {
            keep = 1;
            while (keep < m && pr[keep] >= s->min_p * pr[0]) keep++;
            /* all kept: min-p decides on the first one the bound left out, as the full order would
             */
            if (keep == m && m < k &&
                exp(((double)logits[(uint32_t)next] - mx) / s->temperature) >= s->min_p * pr[0]) {
                for (int i = 0; i < n; i++) cand[i] = candidate(logits, i); /* bound too tight */
                m = n;
                continue;
            }
        }
        double mass = 0.0;
        for (int i = 0; i < keep; i++) mass += pr[i];
        if (s->top_p < 1.0f) {
            double cum = 0.0;
            int kp = 0;
            while (kp < keep && (kp == 0 || cum < s->top_p * mass)) cum += pr[kp++];
            keep = kp;
            mass = cum;
        }
        double u = mb_uniform(s->seed, pos) * mass, cum = 0.0;
        for (int i = 0; i < keep; i++) {
            cum += pr[i];
            if (u < cum) return (int)(uint32_t)c[i];
        }
        return (int)(uint32_t)c[keep - 1];
    }
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

long mb_stop_find_tail(const char *const *stops, int n_stops, const uint8_t *out, size_t len) {
    size_t longest = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl > longest) longest = sl;
    }
    size_t from = len > longest ? len - longest : 0;
    long at = mb_stop_find(stops, n_stops, out + from, len - from);
    return at < 0 ? -1 : (long)from + at;
}
