/* lg_prompts.c: the prompts loadgen sends, and the random draws it makes (lg.h). Everything
 * random comes from the seed, so two runs with one seed send the same prompts in the same order
 * with the same arrival gaps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "fileio.h"
#include "lg.h"

uint64_t lg_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double lg_uniform(uint64_t *state) {
    return ((double)(lg_rand(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal(uint64_t *state) {
    return sqrt(-2.0 * log(lg_uniform(state))) * cos(6.283185307179586 * lg_uniform(state));
}

/* Marsaglia and Tsang's method for shape >= 1; below 1 a draw for shape + 1 scaled by U^(1/shape).
 * Divided by the shape, so the mean is 1 whatever the shape (the variance is 1/shape). */
double lg_gamma1(uint64_t *state, double shape) {
    double boost = 1.0, a = shape;
    if (a < 1.0) {
        boost = pow(lg_uniform(state), 1.0 / a);
        a += 1.0;
    }
    const double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = normal(state), v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = lg_uniform(state);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return boost * d * v / shape;
    }
}

/* Start of the UTF-8 character that holds byte i (i itself unless it is a continuation byte). */
static size_t char_start(const uint8_t *s, size_t lo, size_t i) {
    while (i > lo && (s[i] & 0xC0) == 0x80) i--;
    return i;
}

static int add(lg_prompts *p, size_t *cap, const uint8_t *s, size_t n) {
    if (p->n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        char **t = realloc(p->text, c * sizeof *t);
        if (t) p->text = t;
        size_t *l = t ? realloc(p->len, c * sizeof *l) : NULL;
        if (!l) return -1;
        p->len = l, *cap = c;
    }
    char *t = malloc(n + 1);
    if (!t) return -1;
    memcpy(t, s, n);
    t[n] = 0;
    p->text[p->n] = t, p->len[p->n] = n, p->n++;
    return 0;
}

/* Every document (the text between lines holding only a form feed) cut into consecutive
 * prompts of at most `bytes` bytes, each ending before a UTF-8 character that would not fit;
 * a document's tail shorter than half a prompt is dropped. */
static int from_file(lg_prompts *p, const char *path, int bytes, mb_err *e) {
    size_t len, cap = 0;
    uint8_t *s = mb_read_file(path, CLI_MAX_FILE_BYTES, &len, e);
    if (!s) return -1;
    const void *nul = memchr(s, 0, len);
    if (nul) {
        size_t at = (size_t)((const uint8_t *)nul - s);
        free(s);
        return mb_fail(e, "%s: a NUL byte at offset %zu (prompts are text)", path, at);
    }
    int rc = 0;
    for (size_t doc = 0; doc < len && !rc;) {
        size_t end = doc;
        while (end < len && !(s[end] == '\f' && (end == 0 || s[end - 1] == '\n') &&
                              (end + 1 == len || s[end + 1] == '\n')))
            end++;
        for (size_t at = doc; at < end && !rc;) {
            size_t stop = at + (size_t)bytes < end ? char_start(s, at, at + (size_t)bytes) : end;
            if (stop == at) stop = end < at + (size_t)bytes ? end : at + (size_t)bytes;
            if (2 * (stop - at) >= (size_t)bytes) rc = add(p, &cap, s + at, stop - at);
            at = stop;
        }
        doc = end + 2; /* past "\f\n" */
    }
    free(s);
    if (rc) return mb_fail(e, "out of memory");
    if (!p->n)
        return mb_fail(e,
                       "%s: no prompt of %d bytes (each document gives prompts of at least "
                       "half that length)",
                       path, bytes);
    return 0;
}

/* Lower-case words of 2 to 9 letters separated by spaces. */
static int synthetic(lg_prompts *p, int bytes, uint64_t seed) {
    size_t cap = 0;
    uint64_t st = seed ^ 0x5eed5eed5eed5eedull;
    char *buf = malloc((size_t)bytes + 1);
    if (!buf) return -1;
    for (int k = 0; k < LG_SYNTHETIC_POOL; k++) {
        int n = 0;
        while (n < bytes) {
            int w = 2 + (int)(lg_rand(&st) % 8);
            for (int i = 0; i < w && n < bytes; i++) buf[n++] = (char)('a' + lg_rand(&st) % 26);
            if (n < bytes) buf[n++] = ' ';
        }
        if (add(p, &cap, (const uint8_t *)buf, (size_t)n)) {
            free(buf);
            return -1;
        }
    }
    free(buf);
    return 0;
}

int lg_prompts_load(lg_prompts *p, const char *path, int bytes, uint64_t seed, mb_err *e) {
    memset(p, 0, sizeof *p);
    if (path ? from_file(p, path, bytes, e) : synthetic(p, bytes, seed)) {
        if (!path) mb_fail(e, "out of memory");
        lg_prompts_free(p);
        return -1;
    }
    uint64_t st = seed;
    for (size_t i = p->n; i > 1; i--) { /* Fisher-Yates */
        size_t j = (size_t)(lg_rand(&st) % i);
        char *t = p->text[i - 1];
        size_t l = p->len[i - 1];
        p->text[i - 1] = p->text[j], p->len[i - 1] = p->len[j];
        p->text[j] = t, p->len[j] = l;
    }
    return 0;
}

void lg_prompts_free(lg_prompts *p) {
    for (size_t i = 0; i < p->n; i++) free(p->text[i]);
    free(p->text);
    free(p->len);
    memset(p, 0, sizeof *p);
}
