/* test_spec.c: the drafter's tokenizer wrapper (speculative/spm.h) on the bundled
 * tokenizer, the verifier's rule (spec_verify), prompt lookup (lookup.h) against its
 * straightforward reference, batched drafting against one sequence's drafter, and the measured
 * choice of speculation (cost.h). `test_spec --bench` times prompt lookup. */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "cost.h"
#include "mambabyte.h"
#include "lookup.h"
#include "reference.h"
#include "spec.h"
#include "spm.h"

#define TOKENIZER "models/drafter-small/tokenizer.model"

static const char *const texts[] = {
    "It was a bright cold day in April.",
    "  two  spaces,\ttabs\n\nand new lines\n",
    "caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xf0\x9f\x99\x82",
    "invalid \xff\xfe bytes, a cut character \xe2\x82 and an overlong \xc0\xaf",
    "\n",
    "x",
};

/* Every byte string comes back from its ids' pieces (no U+2581 in these texts). */
static void test_round_trip(void) {
    mb_err e;
    spm_tokenizer *t = spm_load(TOKENIZER, &e);
    CHECK(t, "%s", e.msg);
    if (!t) return;
    CHECK(spm_vocab(t) == 4096 && spm_bos(t) == 1, "vocab %d bos %d", spm_vocab(t), spm_bos(t));
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0, len = strlen(texts[i]);
        CHECK(!spm_encode(t, (const uint8_t *)texts[i], len, &ids, &n, &cap, &e), "%s", e.msg);
        char out[512];
        size_t o = 0;
        for (size_t k = 0; k < n; k++) {
            int pl;
            const uint8_t *p = spm_piece(t, ids[k], &pl);
            CHECK(pl > 0 && o + (size_t)pl < sizeof out, "piece %d of id %d", pl, ids[k]);
            if (pl <= 0 || o + (size_t)pl >= sizeof out) break;
            memcpy(out + o, p, (size_t)pl);
            o += (size_t)pl;
        }
        CHECK(o == len && !memcmp(out, texts[i], len), "text %zu does not come back", i);
        CHECK(n < len || len == 1, "text %zu: %zu ids for %zu bytes", i, n, len);
        free(ids);
    }
    int pl;
    CHECK(spm_piece(t, 1, &pl) && pl == 0, "BOS has no bytes");
    CHECK(!spm_piece(t, 4096, &pl) && pl == 0, "an id out of range has no piece");
    spm_free(t);
}

static void test_bad_files(void) {
    mb_err e;
    CHECK(!spm_load("/nonexistent/tokenizer.model", &e) && strstr(e.msg, "/nonexistent"), "%s",
          e.msg);
    CHECK(!spm_load("models/mambabyte-small/config.json", &e) && strstr(e.msg, "config.json"), "%s",
          e.msg);
}

/* Greedy verification keeps the draft up to the first byte that is not the argmax, and names
 * the argmax there; a full match names the byte after the draft. */
static void test_verify(void) {
    float rows[4][256];
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 256; v++) rows[r][v] = (float)(v == "abcd"[r] ? 5 : 0);
    mb_sampling s;
    mb_sampling_default(&s);
    void *scratch = malloc(mb_sample_scratch_bytes(256));
    int next;
    CHECK(spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"abc", 3, 7, scratch, &next) == 3 &&
              next == 'd',
          "full match");
    CHECK(spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"abx", 3, 7, scratch, &next) == 2 &&
              next == 'c',
          "mismatch at 2");
    CHECK(spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"", 0, 7, scratch, &next) == 0 &&
              next == 'a',
          "empty draft");
    /* sampled: the choice at each position is the seeded draw of plain decoding */
    s.temperature = 1.0f;
    s.seed = 9;
    for (int v = 0; v < 256; v++) rows[1][v] = (float)(v % 7);
    int want0 = mb_sample(&s, rows[0], 256, 7, scratch),
        want1 = mb_sample(&s, rows[1], 256, 8, scratch);
    uint8_t d[2] = {(uint8_t)want0, (uint8_t)(want1 ^ 1)};
    CHECK(spec_verify(&s, &rows[0][0], 256, d, 2, 7, scratch, &next) == 1 && next == want1,
          "sampled");
    free(scratch);
}

/* take for spec_round: records the bytes, ends the sequence at byte end_at (-1: never). */
typedef struct taker {
    uint8_t got[16];
    int end_at;
} taker;

static int take(void *ctx, int t, uint8_t b) {
    taker *k = ctx;
    k->got[t] = b;
    return t == k->end_at;
}

/* The round on a real model: it takes the bytes plain decoding gives and leaves the slot in the
 * state plain decoding leaves, before the newest byte taken: after a mismatch, after a full
 * acceptance, and when the sequence ends in the middle of the round (a stop string). */
static void test_round(void) {
    mb_err e;
    mb_backend_opts o = {.n_threads = 1, .device = MB_DEVICE_CPU};
    mb_model *m = mb_model_load("tests/fixtures/tiny-byte-tied", &o, &e);
    CHECK(m, "%s", e.msg);
    if (!m) return;
    mb_pool *p = mb_pool_create(m, 2, 64, &e);
    const size_t sb = mb_pool_state_bytes(p);
    uint8_t *start = malloc(sb), *now = malloc(sb), *plain[7];
    float *rows = malloc(7 * 256 * sizeof(float));
    void *scratch = malloc(mb_sample_scratch_bytes(256));
    mb_sampling s;
    mb_sampling_default(&s);
    s.temperature = 0.9f;
    s.seed = 5;
    const char *prompt = "The quick brown fox";
    const int plen = (int)strlen(prompt);
    int32_t toks[32];
    for (int i = 0; i < plen; i++) toks[i] = (uint8_t)prompt[i];
    int off[2] = {0, plen - 1}, slot = 1;
    mb_batch b = {1, toks, off, &slot, NULL};
    CHECK(!mb_forward(m, p, &b, rows, &e) && !mb_pool_read(p, 1, start, &e), "%s", e.msg);
    /* plain decoding in slot 1: plain[i] is the state after the last prompt byte and g[0..i) */
    uint8_t g[7];
    int32_t t = (uint8_t)prompt[plen - 1];
    for (int i = 0; i < 7; i++) {
        off[1] = 1;
        b.tokens = &t;
        plain[i] = malloc(sb);
        CHECK(!mb_forward(m, p, &b, rows, &e) && !mb_pool_read(p, 1, plain[i], &e), "%s", e.msg);
        g[i] = (uint8_t)mb_sample(&s, rows, 256, (uint64_t)(plen + i), scratch);
        t = g[i];
    }
    const struct {
        int k, wrong, end_at, accepted, taken;
    } cases[] = {{5, 3, -1, 3, 4}, {6, -1, -1, 6, 7}, {5, 3, 1, 3, 2}, {0, -1, -1, 0, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        uint8_t draft[8];
        memcpy(draft, g, 6);
        if (cases[c].wrong >= 0) draft[cases[c].wrong] ^= 1;
        int32_t span[8] = {(uint8_t)prompt[plen - 1]};
        for (int i = 0; i < cases[c].k; i++) span[i + 1] = draft[i];
        uint8_t want[8] = {1, 1, 1, 1, 1, 1, 1, 1};
        int soff[2] = {0, cases[c].k + 1}, s0 = 0;
        mb_batch sb0 = {1, span, soff, &s0, want};
        CHECK(!mb_pool_write(p, 0, start, &e) && !mb_forward(m, p, &sb0, rows, &e), "%s", e.msg);
        taker tk = {.end_at = cases[c].end_at};
        spec_result r;
        CHECK(!spec_round(&s, rows, 256, draft, cases[c].k, (uint64_t)plen, scratch, p, 0, take,
                          &tk, &r, &e),
              "%s", e.msg);
        CHECK(r.drafted == cases[c].k && r.accepted == cases[c].accepted &&
                  r.taken == cases[c].taken && r.ended == (cases[c].end_at >= 0),
              "case %zu: drafted %d accepted %d taken %d ended %d", c, r.drafted, r.accepted,
              r.taken, r.ended);
        CHECK(!memcmp(tk.got, g, (size_t)r.taken), "case %zu: the bytes of plain decoding", c);
        CHECK(!mb_pool_read(p, 0, now, &e) && !memcmp(now, plain[r.taken - 1], sb),
              "case %zu: the state of plain decoding before byte %d", c, r.taken - 1);
    }
    for (int i = 0; i < 7; i++) free(plain[i]);
    free(scratch);
    free(rows);
    free(now);
    free(start);
    mb_pool_free(p);
    mb_model_free(m);
}

/* Prompt lookup over ctx[0..n) with an index built for it. */
static int lookup_once(const uint8_t *ctx, size_t n, int key_len, size_t window, uint8_t *out,
                       int max_bytes) {
    lookup_index *x = lookup_new(key_len, window);
    CHECK(x && !lookup_push(x, ctx, n), "out of memory");
    int k = x ? lookup_draft(x, out, max_bytes) : -1;
    lookup_free(x);
    return k;
}

/* Prompt lookup copies what followed the latest earlier occurrence of the context's tail. */
static void test_lookup(void) {
    uint8_t out[16];
    const uint8_t *c = (const uint8_t *)"ab1 ab2 ab";
    int k = lookup_once(c, 10, 2, 64, out, 16);
    CHECK(k == 4 && !memcmp(out, "2 ab", 4), "the latest occurrence of \"ab\": %d", k);
    k = lookup_once(c, 10, 2, 64, out, 3);
    CHECK(k == 3 && !memcmp(out, "2 a", 3), "capped at max_bytes: %d", k);
    k = lookup_once(c, 10, 3, 64, out, 16);
    CHECK(k == 4 && !memcmp(out, "2 ab", 4), "\" ab\" occurs once before: %d", k);
    CHECK(lookup_once(c, 10, 4, 64, out, 16) == 0, "no earlier occurrence of \"2 ab\"");
    CHECK(lookup_once(c, 10, 2, 5, out, 16) == 0, "outside the window");
    k = lookup_once(c, 10, 2, 6, out, 16);
    CHECK(k == 4 && !memcmp(out, "2 ab", 4), "at the window's first byte: %d", k);
    CHECK(lookup_once((const uint8_t *)"aaaa", 4, 2, 64, out, 16) == 1 && out[0] == 'a',
          "overlapping occurrences");
    CHECK(lookup_once(c, 2, 2, 64, out, 16) == 0, "context no longer than the key");
    CHECK(!lookup_new(0, 64) && !lookup_new(2, 0), "no key, no window");
    CHECK(lookup_next_cap(LOOKUP_START, 8, 8) == 16 && lookup_next_cap(16, 16, 3) == 5 &&
              lookup_next_cap(LOOKUP_MAX, 32, 31) == LOOKUP_MAX &&
              lookup_next_cap(LOOKUP_MAX, 32, 32) == LOOKUP_MAX,
          "the draft cap doubles, shrinks to what was kept, and stays within LOOKUP_MAX");
}

static uint64_t rng_state = 7;
static uint32_t rng(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Feeds ctx[0..n) to an index in random pieces (prompt first, then a few bytes at a time as a
 * sequence's rounds bring them) and checks every draft on the way against the backward scan
 * (reference.h), for queries at every position from `from` on (every 97th before). */
static long lookup_agrees(const uint8_t *ctx, size_t n, size_t prompt, int key_len, size_t window,
                          size_t from) {
    lookup_index *x = lookup_new(key_len, window);
    CHECK(x && !lookup_push(x, ctx, prompt), "out of memory");
    if (!x) return 1;
    long bad = 0;
    uint8_t a[LOOKUP_MAX], b[LOOKUP_MAX];
    for (size_t at = prompt; at <= n;) {
        if (at >= from || at % 97 == 0) {
            int max = 1 + (int)(rng() % LOOKUP_MAX);
            int ka = lookup_draft(x, a, max),
                kb = ref_lookup_draft2(ctx, at / 2, ctx + at / 2, at - at / 2, key_len, window, b,
                                       max);
            if ((ka != kb || memcmp(a, b, (size_t)ka)) && bad++ < 3)
                CHECK(0, "key %d window %zu at %zu: %d bytes, reference %d", key_len, window, at,
                      ka, kb);
        }
        if (at == n) break;
        size_t step = 1 + rng() % 33;
        if (step > n - at) step = n - at;
        CHECK(!lookup_push(x, ctx + at, step), "out of memory");
        at += step;
        CHECK(lookup_len(x) == at, "length %zu, pushed %zu", lookup_len(x), at);
    }
    lookup_free(x);
    return bad;
}

/* The index gives the drafts of the backward scan: random text over small alphabets, windows
 * smaller and larger than the text, prompts longer than the window, and adversarial contexts
 * for a scan (70 KB of one byte, then another; a short period). */
static void test_lookup_matches_scan(void) {
    enum { N = 70000 };
    uint8_t *t = malloc(N);
    const size_t windows[] = {5, 64, 1000, LOOKUP_WINDOW};
    for (int r = 0; r < 24; r++) {
        size_t n = 300 + rng() % 3000, alpha = 2 + rng() % 6;
        for (size_t i = 0; i < n; i++) t[i] = (uint8_t)('a' + rng() % alpha);
        int key = 1 + (int)(rng() % 12);
        CHECK(!lookup_agrees(t, n, rng() % n, key, windows[r % 4], 0), "random text %d", r);
    }
    memset(t, 'a', N);
    t[N - 40] = 'b';
    for (int key = 1; key <= 32; key *= 2) {
        CHECK(!lookup_agrees(t, N, 200, key, LOOKUP_WINDOW, N - 300), "a run, key %d", key);
        CHECK(!lookup_agrees(t, N, N - 100, key, LOOKUP_WINDOW, N - 100), "a long prompt, key %d",
              key);
        CHECK(!lookup_agrees(t, N, N - 100, key, 1000, N - 100), "a short window, key %d", key);
    }
    for (size_t i = 0; i < N; i++) t[i] = "abcab"[i % 5];
    CHECK(!lookup_agrees(t, 20000, 5000, 6, LOOKUP_WINDOW, 19000), "a period");
    free(t);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Microseconds for one scheduler step's lookup: push the step's byte(s), draft; against the
 * backward scan over the whole context (reference.h). */
static void bench_case(const char *name, uint8_t *t, size_t n, int key_len) {
    lookup_index *x = lookup_new(key_len, LOOKUP_WINDOW);
    lookup_push(x, t, n - 2000);
    uint8_t out[LOOKUP_MAX];
    volatile int sink = 0;
    double t0 = now_s();
    for (size_t at = n - 2000; at < n; at++) {
        lookup_push(x, t + at, 1);
        sink += lookup_draft(x, out, LOOKUP_MAX);
    }
    double t1 = now_s();
    for (size_t at = n - 200; at < n; at++)
        sink += ref_lookup_draft2(t, at, NULL, 0, key_len, LOOKUP_WINDOW, out, LOOKUP_MAX);
    double t2 = now_s();
    printf("%-46s %8.2f us  scan %8.2f us\n", name, 1e6 * (t1 - t0) / 2000, 1e6 * (t2 - t1) / 200);
    lookup_free(x);
}

static void bench(void) {
    enum { N = 68000 };
    uint8_t *t = malloc(N);
    for (size_t i = 0; i < N; i++) t[i] = (uint8_t)('a' + rng() % 26);
    bench_case("random letters 68 KB, key 6 (misses)", t, N, 6);
    for (int key = 4; key <= 32; key *= 2) { /* the key ends in a byte not seen before */
        memset(t, 'a', N);
        for (size_t i = N - 2000, b = 0; i < N; i += (size_t)key) t[i] = (uint8_t)(128 + b++ % 128);
        char name[96];
        snprintf(name, sizeof name, "66 KB of 'a', then a new byte every %d, key %d", key, key);
        bench_case(name, t, N, key);
    }
    memset(t, 'a', N);
    bench_case("68 KB of 'a', key 8 (hits)", t, N, 8);
    lookup_index *x = lookup_new(8, LOOKUP_WINDOW);
    double t0 = now_s();
    for (int r = 0; r < 100; r++) lookup_push(x, t, 1 << 16);
    printf("%-46s %8.2f us\n", "pushing a 64 KB prompt", 1e6 * (now_s() - t0) / 100);
    lookup_free(x);
    free(t);
}

/* Batched drafting gives every sequence the drafts it gets alone (spec_drafter, one sequence
 * with its own pool), round after round, with partial acceptances re-cut, a long text caught up
 * in chunks, and plain bytes appended between drafts; and a saved drafter text comes back the
 * same (spec_seq_save / load), while a damaged one is refused. */
/* The bundled drafter on one CPU thread, with its tokenizer in *tok; NULL (checked) when either
 * fails to load. */
static mb_model *load_drafter(spm_tokenizer **tok) {
    mb_err e;
    mb_backend_opts o = {.n_threads = 1, .device = MB_DEVICE_CPU};
    *tok = spm_load(TOKENIZER, &e);
    mb_model *m = *tok ? mb_model_load("models/drafter-small", &o, &e) : NULL;
    CHECK(m, "%s", e.msg);
    if (!m) spm_free(*tok);
    return m;
}

static void test_draft_batch(void) {
    mb_err e;
    spm_tokenizer *tok;
    mb_model *m = load_drafter(&tok);
    if (!m) return;
    enum { N = 3, CHUNK = 16 };
    const char *text[N] = {"It was the best of times, it was the worst of times, it was the age of",
                           "The",
                           "Call me Ishmael. Some years ago, never mind how long precisely, "
                           "having little or no money in my purse, and nothing particular"};
    mb_pool *p = mb_pool_create(m, 2 * N, 256, &e);
    spec_batch *b = spec_batch_new(m, N, 256, CHUNK, &e);
    spec_seq *q[N];
    spec_drafter *one[N];
    int slot[N], scratch[N];
    for (int i = 0; i < N; i++) {
        slot[i] = i, scratch[i] = N + i;
        q[i] = spec_seq_new(tok, (const uint8_t *)text[i], strlen(text[i]), &e);
        one[i] = spec_drafter_create(m, tok, 6, 0.0f, &e);
        CHECK(q[i] && one[i] &&
                  !spec_drafter_start(one[i], (const uint8_t *)text[i], strlen(text[i]), &e),
              "%s", e.msg);
    }
    int rounds = 0, caught_up = 0;
    for (int r = 0; r < 12; r++) {
        int max_bytes[N] = {4 + r % 5, 9, r % 3 ? 12 : 1};
        CHECK(!spec_draft_batch(b, p, N, q, slot, scratch, max_bytes, 6, 0.0f, &e), "%s", e.msg);
        for (int i = 0; i < N; i++) {
            const uint8_t *got;
            int k = spec_seq_draft(q[i], &got);
            if (!k && spec_seq_unfed(q[i]) > 1) { /* catching up on a long text: no draft yet */
                caught_up++;
                continue;
            }
            uint8_t want[64];
            int kw = spec_drafter_draft(one[i], want, max_bytes[i], &e);
            CHECK(kw == k && !memcmp(want, got, (size_t)k), "round %d seq %d: %d vs %d bytes", r, i,
                  k, kw);
            rounds++;
            /* keep a part (all, some, none), then a byte of "plain decoding" */
            int keep = (r + i) % 3 == 0 ? k : (r + i) % 3 == 1 ? k / 2 : 0;
            uint8_t extra = keep < k ? (uint8_t)(got[keep] ^ 0x20) : (uint8_t)'e';
            CHECK(!spec_seq_commit(q[i], keep, &extra, 1, &e) &&
                      !spec_drafter_commit(one[i], keep, &extra, 1, &e),
                  "%s", e.msg);
        }
    }
    CHECK(rounds > 20 && caught_up > 0, "%d rounds compared, %d catching up", rounds, caught_up);
    /* save and load: the same drafts from a copy of the state */
    size_t len = 0;
    uint8_t *saved = spec_seq_save(q[0], &len);
    spec_seq *back = saved ? spec_seq_load(tok, saved, len, &e) : NULL;
    CHECK(back, "load: %s", e.msg);
    if (back) {
        CHECK(!mb_pool_copy(p, 1, 0, &e), "%s", e.msg);
        spec_seq *two[2] = {q[0], back};
        int sl[2] = {0, 1}, sc[2] = {N, N + 1}, mx[2] = {10, 10};
        const uint8_t *d0, *d1;
        CHECK(!spec_draft_batch(b, p, 2, two, sl, sc, mx, 6, 0.0f, &e), "%s", e.msg);
        int k0 = spec_seq_draft(q[0], &d0), k1 = spec_seq_draft(back, &d1);
        CHECK(k0 > 0 && k0 == k1 && !memcmp(d0, d1, (size_t)k0), "a loaded text drafts the same");
        spec_seq_free(back);
        saved[11] = 0x7f; /* an id out of range */
        CHECK(!spec_seq_load(tok, saved, len, &e) && strstr(e.msg, "out of range"), "%s", e.msg);
        CHECK(!spec_seq_load(tok, saved, len - 1, &e), "a cut text is refused");
        CHECK(!spec_seq_load(tok, saved, 3, &e), "a short text is refused");
    }
    free(saved);
    for (int i = 0; i < N; i++) {
        spec_seq_free(q[i]);
        spec_drafter_free(one[i]);
    }
    spec_batch_free(b);
    mb_pool_free(p);
    mb_model_free(m);
    spm_free(tok);
}

/* A confidence floor ends a draft early and never changes its bytes: each draft is a prefix of
 * the one without a floor, and drafts shorten as the floor rises. */
static void test_draft_confidence(void) {
    mb_err e;
    spm_tokenizer *tok;
    mb_model *m = load_drafter(&tok);
    if (!m) return;
    const char *text[] = {"It was the best of times, it was the worst of times, it was the age of",
                          "The", "Call me Ishm", "She said that the", "1234 + 56"};
    const float floor[] = {0.0f, 0.01f, 0.1f, 0.3f, 0.9f};
    enum { NT = sizeof text / sizeof *text, NF = sizeof floor / sizeof *floor, MAX = 24 };
    int total[NF] = {0}, shorter = 0;
    for (int t = 0; t < NT; t++) {
        uint8_t d[NF][MAX];
        int k[NF];
        for (int f = 0; f < NF; f++) {
            spec_drafter *one = spec_drafter_create(m, tok, 8, floor[f], &e);
            CHECK(one && !spec_drafter_start(one, (const uint8_t *)text[t], strlen(text[t]), &e),
                  "%s", e.msg);
            k[f] = one ? spec_drafter_draft(one, d[f], MAX, &e) : -1;
            CHECK(k[f] >= 0, "%s", e.msg);
            spec_drafter_free(one);
            if (k[f] < 0) k[f] = 0;
            total[f] += k[f];
            CHECK(k[f] <= k[0] && !memcmp(d[f], d[0], (size_t)k[f]),
                  "text %d, floor %.2f: %d bytes, not a prefix of the %d without", t,
                  (double)floor[f], k[f], k[0]);
            if (f) CHECK(k[f] <= k[f - 1], "text %d: a higher floor drafts more", t);
        }
        shorter += k[NF - 2] < k[0];
    }
    CHECK(shorter > 0 && total[NF - 1] < total[1] && total[1] < total[0],
          "drafted %d / %d / %d bytes", total[0], total[1], total[NF - 1]);
    mb_model_free(m);
    spm_free(tok);
}

/* The draft length of the drafter model follows acceptance, within [SPEC_CAP_MIN, max]. */
static void test_next_cap(void) {
    CHECK(spec_next_cap(8, 8, 8, 16) == 16 && spec_next_cap(16, 16, 16, 16) == 16, "doubles");
    CHECK(spec_next_cap(8, 8, 3, 16) == 5 && spec_next_cap(8, 8, 0, 16) == SPEC_CAP_MIN, "shrinks");
    CHECK(spec_next_cap(4, 4, 4, 3) == 3, "never past max");
}

/* The measured choice: both ways are tried first, then the cheaper per byte wins, and the other
 * is probed now and then (so a change of cost is seen); buckets of load are separate. */
static void test_cost(void) {
    spec_cost c;
    spec_cost_init(&c);
    int drafted = 0, steps = 0;
    /* one sequence: drafting gives 2 bytes per step at 3 ms, plain 1 byte at 1 ms (the CPU) */
    for (int i = 0; i < 2000; i++, steps++) {
        int d = spec_cost_choose(&c, 1);
        drafted += d;
        spec_cost_record(&c, 1, d, d ? 2 : 1, d ? 3e-3 : 1e-3);
    }
    CHECK(!spec_cost_better(&c, 1), "plain is better");
    CHECK(drafted >= 8 && drafted < 2000 * 0.06, "drafting tried and then probed only: %d",
          drafted);
    /* 64 sequences at once, where drafting pays (a GPU): 2x the bytes at 1.2x the time */
    drafted = 0;
    for (int i = 0; i < 2000; i++) {
        int d = spec_cost_choose(&c, 64);
        drafted += d;
        spec_cost_record(&c, 64, d, d ? 128 : 64, d ? 1.2e-3 : 1e-3);
    }
    CHECK(spec_cost_better(&c, 64) && !spec_cost_better(&c, 1), "the buckets are separate");
    CHECK(drafted > 2000 * 0.82, "drafting found by a probe and chosen: %d", drafted);
    /* the cost changes: drafting gets slow for 64 too, and the probes find out */
    for (int i = 0; i < 2000; i++) {
        int d = spec_cost_choose(&c, 64);
        spec_cost_record(&c, 64, d, d ? 128 : 64, d ? 4e-3 : 1e-3);
    }
    CHECK(!spec_cost_better(&c, 64), "probes see the change");
    /* 8 sequences, drafting at a quarter of plain's rate (the bundled pair on a GPU): probes back
     * off to one per SPEC_COST_PERIOD_MAX steps; when drafting catches up, they come back */
    drafted = 0;
    for (int i = 0; i < 100000; i++) {
        int d = spec_cost_choose(&c, 8);
        drafted += d;
        spec_cost_record(&c, 8, d, d ? 8 : 8, d ? 4e-3 : 1e-3);
    }
    CHECK(!spec_cost_better(&c, 8) && drafted < 100000 / 400, "rare probes: %d drafted", drafted);
    for (int i = 0; i < 3 * SPEC_COST_PERIOD_MAX; i++) {
        int d = spec_cost_choose(&c, 8);
        spec_cost_record(&c, 8, d, d ? 16 : 8, d ? 1.2e-3 : 1e-3);
    }
    CHECK(spec_cost_better(&c, 8), "a backed-off probe still sees drafting pay");
    /* a fresh chooser: drafting loses by 4x at one sequence, so 2-3 and 4-7 start plain */
    spec_cost_init(&c);
    for (int i = 0; i < 100; i++) {
        int d = spec_cost_choose(&c, 1);
        spec_cost_record(&c, 1, d, 1, d ? 4e-3 : 1e-3);
    }
    drafted = 0;
    for (int i = 0; i < 1000; i++) {
        int d = spec_cost_choose(&c, 2 + i % 4);
        drafted += d;
        spec_cost_record(&c, 2 + i % 4, d, 2, d ? 8e-3 : 2e-3);
    }
    CHECK(drafted == 0, "heavier loads start plain: %d drafted", drafted);
    /* drafting loses by a little at 1 to 7 sequences: 16 and more start plain, with probes of
     * SPEC_COST_PROBE steps every SPEC_COST_PERIOD instead of alternating while they warm up */
    spec_cost_init(&c);
    for (int i = 0; i < 100; i++) {
        int d = spec_cost_choose(&c, 4);
        spec_cost_record(&c, 4, d, d ? 6 : 4, d ? 2e-3 : 1e-3);
    }
    int early = 0;
    drafted = 0;
    for (int i = 0; i < SPEC_COST_PERIOD; i++) {
        int d = spec_cost_choose(&c, 50);
        drafted += d, early += d && i < SPEC_COST_PERIOD - SPEC_COST_PROBE;
        spec_cost_record(&c, 50, d, d ? 100 : 50, d ? 8e-3 : 2e-3);
    }
    CHECK(early == 0 && drafted == SPEC_COST_PROBE, "one probe per period: %d drafted, %d early",
          drafted, early);
    drafted = 0;
    for (int i = 0; i < SPEC_COST_PERIOD - 2 * SPEC_COST_PROBE; i++) {
        int d = spec_cost_choose(&c, 50);
        drafted += d;
        spec_cost_record(&c, 50, d, d ? 100 : 50, d ? 8e-3 : 2e-3);
    }
    CHECK(drafted == 0, "the next probe comes a period after the first: %d drafted", drafted);
    CHECK(!spec_cost_better(&c, 50), "the probe measured drafting");
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        bench();
        return 0;
    }
    RUN(test_round_trip);
    RUN(test_bad_files);
    RUN(test_verify);
    RUN(test_round);
    RUN(test_lookup);
    RUN(test_lookup_matches_scan);
    RUN(test_draft_batch);
    RUN(test_draft_confidence);
    RUN(test_next_cap);
    RUN(test_cost);
    return check_failures != 0;
}
