/* test_sample.c: the sampler's rules (ties, truncations, the seeded draw) and stop strings. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "mambabyte.h"

static double scratch[1 << 13];

static void test_greedy(void) {
    mb_sampling s;
    mb_sampling_default(&s);
    float flat[4] = {1, 1, 1, 1}, two[4] = {0, 3, 3, -1};
    CHECK(mb_sample(&s, flat, 4, 0, scratch) == 0, "ties: lowest index");
    CHECK(mb_sample(&s, two, 4, 0, scratch) == 1, "ties: lowest index of the max");
    s.temperature = 0.8f;
    s.top_k = 1;
    CHECK(mb_sample(&s, two, 4, 5, scratch) == 1, "top_k 1 is greedy");
}

/* Frequencies follow the softmax; truncations remove what they should. */
static void test_distribution(void) {
    float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    mb_sampling s;
    mb_sampling_default(&s);
    s.temperature = 1.0f;
    s.seed = 42;
    int count[3] = {0};
    enum { n = 20000 };
    for (int i = 0; i < n; i++) count[mb_sample(&s, l, 3, (uint64_t)i, scratch)]++;
    CHECK(fabs(count[0] / (double)n - 0.5) < 0.02 && fabs(count[2] / (double)n - 0.2) < 0.02,
          "frequencies %d %d %d", count[0], count[1], count[2]);
    s.top_k = 2;
    for (int i = 0; i < n; i++)
        CHECK(mb_sample(&s, l, 3, (uint64_t)i, scratch) != 2, "top_k 2 kept index 2");
    s.top_k = 0;
    s.top_p = 0.7f;
    for (int i = 0; i < n; i++)
        CHECK(mb_sample(&s, l, 3, (uint64_t)i, scratch) != 2, "top_p 0.7 kept index 2");
    s.top_p = 1.0f;
    s.min_p = 0.5f; /* keeps p >= 0.25: indices 0 and 1 */
    for (int i = 0; i < n; i++)
        CHECK(mb_sample(&s, l, 3, (uint64_t)i, scratch) != 2, "min_p kept index 2");
    s.min_p = 0.0f;
    s.temperature = 0.05f; /* nearly greedy */
    int zeros = 0;
    for (int i = 0; i < 1000; i++) zeros += mb_sample(&s, l, 3, (uint64_t)i, scratch) == 0;
    CHECK(zeros > 990, "low temperature: %d of 1000 argmax", zeros);
}

/* The draw is a pure function of (seed, pos). */
static void test_seeded(void) {
    double sum = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = mb_uniform(7, i);
        CHECK(u >= 0 && u < 1, "u out of range");
        sum += u;
    }
    CHECK(fabs(sum / 100000 - 0.5) < 0.01, "mean %g", sum / 100000);
    CHECK(mb_uniform(1, 5) == mb_uniform(1, 5), "pure");
    CHECK(mb_uniform(1, 5) != mb_uniform(2, 5) && mb_uniform(1, 5) != mb_uniform(1, 6),
          "depends on both");
    float l[256];
    for (int i = 0; i < 256; i++) l[i] = (float)(i % 17) * 0.1f;
    mb_sampling s;
    mb_sampling_default(&s);
    s.temperature = 1.0f;
    s.seed = 3;
    int a[64], b[64];
    for (int i = 0; i < 64; i++) a[i] = mb_sample(&s, l, 256, (uint64_t)i, scratch);
    for (int i = 63; i >= 0; i--) b[i] = mb_sample(&s, l, 256, (uint64_t)i, scratch);
    CHECK(!memcmp(a, b, sizeof a), "order of calls changed the draws");
}

static void test_stop(void) {
    const char *stops[] = {"END", "\n\n", "x"};
    const uint8_t *t = (const uint8_t *)"hello\n\nworld END";
    CHECK(mb_stop_find(stops, 2, t, strlen((const char *)t)) == 5, "earliest stop");
    CHECK(mb_stop_find(stops, 1, t, strlen((const char *)t)) == 13, "END");
    CHECK(mb_stop_find(stops + 2, 1, t, strlen((const char *)t)) == -1, "absent");
    CHECK(mb_stop_find(stops, 0, t, 5) == -1, "no stops");
}

int main(void) {
    RUN(test_greedy);
    RUN(test_distribution);
    RUN(test_seeded);
    RUN(test_stop);
    return check_failures ? 1 : 0;
}
