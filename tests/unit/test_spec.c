/* test_spec.c: the drafter's tokenizer wrapper (speculative/spm.h) on the bundled
 * tokenizer, and the verifier's rule (mb_spec_verify). */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "mambabyte.h"
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
    mb_spm *t = mb_spm_load(TOKENIZER, &e);
    CHECK(t, "%s", e.msg);
    if (!t) return;
    CHECK(mb_spm_vocab(t) == 4096 && mb_spm_bos(t) == 1, "vocab %d bos %d", mb_spm_vocab(t),
          mb_spm_bos(t));
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0, len = strlen(texts[i]);
        CHECK(!mb_spm_encode(t, (const uint8_t *)texts[i], len, &ids, &n, &cap, &e), "%s", e.msg);
        char out[512];
        size_t o = 0;
        for (size_t k = 0; k < n; k++) {
            int pl;
            const uint8_t *p = mb_spm_piece(t, ids[k], &pl);
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
    CHECK(mb_spm_piece(t, 1, &pl) && pl == 0, "BOS has no bytes");
    CHECK(!mb_spm_piece(t, 4096, &pl) && pl == 0, "an id out of range has no piece");
    mb_spm_free(t);
}

static void test_bad_files(void) {
    mb_err e;
    CHECK(!mb_spm_load("/nonexistent/tokenizer.model", &e) && strstr(e.msg, "/nonexistent"), "%s",
          e.msg);
    CHECK(!mb_spm_load("models/mambabyte-small/config.json", &e) && strstr(e.msg, "config.json"),
          "%s", e.msg);
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
    CHECK(mb_spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"abc", 3, 7, scratch, &next) == 3 &&
              next == 'd',
          "full match");
    CHECK(mb_spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"abx", 3, 7, scratch, &next) == 2 &&
              next == 'c',
          "mismatch at 2");
    CHECK(mb_spec_verify(&s, &rows[0][0], 256, (const uint8_t *)"", 0, 7, scratch, &next) == 0 &&
              next == 'a',
          "empty draft");
    /* sampled: the choice at each position is the seeded draw of plain decoding */
    s.temperature = 1.0f;
    s.seed = 9;
    for (int v = 0; v < 256; v++) rows[1][v] = (float)(v % 7);
    int want0 = mb_sample(&s, rows[0], 256, 7, scratch),
        want1 = mb_sample(&s, rows[1], 256, 8, scratch);
    uint8_t d[2] = {(uint8_t)want0, (uint8_t)(want1 ^ 1)};
    CHECK(mb_spec_verify(&s, &rows[0][0], 256, d, 2, 7, scratch, &next) == 1 && next == want1,
          "sampled");
    free(scratch);
}

/* Prompt lookup copies what followed the latest earlier occurrence of the context's tail. */
static void test_lookup(void) {
    uint8_t out[16];
    const uint8_t *c = (const uint8_t *)"ab1 ab2 ab";
    int k = mb_lookup_draft(c, 10, 2, 64, out, 16);
    CHECK(k == 4 && !memcmp(out, "2 ab", 4), "the latest occurrence of \"ab\": %d", k);
    k = mb_lookup_draft(c, 10, 2, 64, out, 3);
    CHECK(k == 3 && !memcmp(out, "2 a", 3), "capped at max_bytes: %d", k);
    k = mb_lookup_draft(c, 10, 3, 64, out, 16);
    CHECK(k == 4 && !memcmp(out, "2 ab", 4), "\" ab\" occurs once before: %d", k);
    CHECK(mb_lookup_draft(c, 10, 4, 64, out, 16) == 0, "no earlier occurrence of \"2 ab\"");
    CHECK(mb_lookup_draft(c, 10, 2, 5, out, 16) == 0, "outside the window");
    CHECK(mb_lookup_draft((const uint8_t *)"aaaa", 4, 2, 64, out, 16) == 1 && out[0] == 'a',
          "overlapping occurrences");
    CHECK(mb_lookup_draft(c, 2, 2, 64, out, 16) == 0, "context no longer than the key");
    CHECK(mb_lookup_next_cap(MB_LOOKUP_START, 8, 8) == 16 && mb_lookup_next_cap(16, 16, 3) == 5 &&
              mb_lookup_next_cap(MB_LOOKUP_MAX, 32, 31) == MB_LOOKUP_MAX &&
              mb_lookup_next_cap(MB_LOOKUP_MAX, 32, 32) == MB_LOOKUP_MAX,
          "the draft cap doubles, shrinks to what was kept, and stays within MB_LOOKUP_MAX");
    for (size_t cut = 0; cut <= 10; cut++) { /* a prompt and an output: any split, same draft */
        k = mb_lookup_draft2(c, cut, c + cut, 10 - cut, 2, 64, out, 16);
        CHECK(k == 4 && !memcmp(out, "2 ab", 4), "split at %zu: %d", cut, k);
    }
}

int main(void) {
    RUN(test_round_trip);
    RUN(test_bad_files);
    RUN(test_verify);
    RUN(test_lookup);
    return check_failures != 0;
}
