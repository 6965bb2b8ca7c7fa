/* test_sample.c: the sampler's rules (ties, truncations, the seeded draw), the sampler against
 * its straightforward reference, and stop strings. `test_sample --bench` times the sampler. */
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "mambabyte.h"
#include "reference.h"

#define SAMPLE_DIGEST                                                                              \
    0xec22dd831fa8cfc4ull /* the sampler before commit "Sampling without qsort"                    \
                           */

static double scratch[1 << 13];

/* The log-probability of a token: probabilities that sum to 1, the values of a hand-computed
 * case, and no overflow with large logits. */
static void test_logprob(void) {
    float l[4] = {1, 2, 3, 4};
    double want = 2.0 - log(exp(1.0) + exp(2.0) + exp(3.0) + exp(4.0)), sum = 0;
    CHECK(fabs(mb_logprob(l, 4, 1) - want) < 1e-12, "%g vs %g", mb_logprob(l, 4, 1), want);
    for (int t = 0; t < 4; t++) sum += exp(mb_logprob(l, 4, t));
    CHECK(fabs(sum - 1) < 1e-12, "probabilities sum to %g", sum);
    float big[3] = {1000, 1000, -1000}; /* exp(1000) overflows a double */
    CHECK(fabs(mb_logprob(big, 3, 0) + log(2.0)) < 1e-9 &&
              fabs(mb_logprob(big, 3, 2) + 2000 + log(2.0)) < 1e-9,
          "large logits: %g %g", mb_logprob(big, 3, 0), mb_logprob(big, 3, 2));
    float one = -7;
    CHECK(mb_logprob(&one, 1, 0) == 0, "a single token is certain");
}

/* A small generator of its own, so the cases are the same on every machine. */
static uint64_t rng_state = 1;
static uint64_t rng(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return rng_state >> 33;
}
static double rng_unit(void) {
    return (double)rng() / 2147483648.0;
}

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

/* After every byte, the tail search finds what the whole search finds, and reads only as many
 * bytes as the longest stop: the output below begins in a page that cannot be read (a search
 * of the whole output, as generate did per byte, crashes on it). */
static void test_stop_tail(void) {
    const char *stops[] = {"abcab", "ca", "bb", "END"};
    const long page = sysconf(_SC_PAGESIZE);
    uint8_t *m =
        mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap");
    if (m == MAP_FAILED) return;
    uint8_t *out = m + page - 64;
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 64 + (size_t)(rng() % 400);
        for (size_t i = 0; i < n; i++) out[i] = (uint8_t) "abcEND"[rng() % 6];
        for (size_t len = 1; len <= n; len++) {
            long whole = mb_stop_find(stops, 4, out, len);
            if (whole >= 0) {
                CHECK(mb_stop_find_tail(stops, 4, out, len) == whole, "trial %d len %zu", trial,
                      len);
                break;
            }
            CHECK(mb_stop_find_tail(stops, 4, out, len) == -1, "trial %d len %zu", trial, len);
        }
    }
    mprotect(m, (size_t)page, PROT_NONE);
    memset(out + 64, 'x', 1000);
    memcpy(out + 64 + 997, "END", 3);
    CHECK(mb_stop_find_tail(stops, 4, out, 64 + 1000) == 64 + 997, "found in the tail");
    CHECK(mb_stop_find_tail(stops, 4, out, 64 + 999) == -1, "not yet");
    munmap(m, 2 * (size_t)page);
}

/* Logits of many shapes: smooth, spread wide, with ties, signed zeros, infinities, one spike. */
static void random_logits(float *l, int n, int kind) {
    for (int i = 0; i < n; i++) {
        double g = rng_unit() + rng_unit() + rng_unit() - 1.5;
        switch (kind % 7) {
        case 0:
            l[i] = (float)(3 * g);
            break;
        case 1:
            l[i] = (float)(40 * g);
            break;
        case 2:
            l[i] = (float)(rng() % 6) * 0.5f;
            break; /* many ties */
        case 3:
            l[i] = rng() % 2 ? 0.0f : -0.0f;
            break; /* ties of -0 and +0 */
        case 4:
            l[i] = rng() % 9 ? (float)g : -INFINITY;
            break; /* impossible bytes */
        case 5:
            l[i] = i == n / 3 ? 30.0f : (float)(0.01 * g);
            break; /* one spike */
        default:
            l[i] = (float)(1e-3 * g) + 100.0f;
            break; /* a narrow band, far out */
        }
    }
}

static const float temps[] = {0.05f, 0.7f, 1.0f, 1.5f, 10.0f};
static const int top_ks[] = {0, 1, 2, 3, 10, 40, 255, 256, 1000};
static const float top_ps[] = {1.0f, 0.95f, 0.5f, 0.01f};
static const float min_ps[] = {0.0f, 1e-4f, 0.05f, 0.3f, 1.0f};
#define PICK(a) a[rng() % (sizeof a / sizeof *a)]

/* The sampler equals the straightforward one (every candidate sorted with qsort) for every
 * setting, seed and position on random logits: the same byte, not just the same distribution. */
static void test_matches_reference(void) {
    static float l[4096];
    static double ref_scratch[3 * 4096];
    const int sizes[] = {1, 2, 3, 17, 256, 256, 256, 4096};
    long cases = 0, diff = 0;
    for (int v = 0; v < 400; v++) {
        int n = sizes[v % 8];
        random_logits(l, n, (int)(rng() % 7));
        void *work = malloc(mb_sample_scratch_bytes(n));
        for (int c = 0; c < (n > 256 ? 4 : 40); c++) {
            mb_sampling s = {PICK(temps), PICK(top_ks), PICK(top_ps), PICK(min_ps), rng()};
            uint64_t pos = rng();
            int a = mb_sample(&s, l, n, pos, work), b = ref_sample(&s, l, n, pos, ref_scratch);
            cases++;
            if (a != b && diff++ < 5)
                CHECK(0, "n %d T %g top_k %d top_p %g min_p %g: %d, reference %d", n, s.temperature,
                      s.top_k, s.top_p, s.min_p, a, b);
        }
        free(work);
    }
    CHECK(!diff, "%ld of %ld draws differ", diff, cases);
    /* every setting on a few vectors of 256 */
    void *work = malloc(mb_sample_scratch_bytes(256));
    for (int v = 0; v < 7; v++) {
        random_logits(l, 256, v);
        for (size_t t = 0; t < sizeof temps / sizeof *temps; t++)
            for (size_t k = 0; k < sizeof top_ks / sizeof *top_ks; k++)
                for (size_t p = 0; p < sizeof top_ps / sizeof *top_ps; p++)
                    for (size_t m = 0; m < sizeof min_ps / sizeof *min_ps; m++) {
                        mb_sampling s = {temps[t], top_ks[k], top_ps[p], min_ps[m], 11};
                        uint64_t pos = rng() % 1000;
                        int a = mb_sample(&s, l, 256, pos, work),
                            b = ref_sample(&s, l, 256, pos, ref_scratch);
                        CHECK(a == b, "kind %d T %g top_k %d top_p %g min_p %g: %d, reference %d",
                              v, s.temperature, s.top_k, s.top_p, s.min_p, a, b);
                    }
    }
    free(work);
}

/* Fixed expectations: a digest of 20,000 draws over the settings above, taken from the sampler
 * before it stopped sorting every candidate. */
static void test_fixed_digest(void) {
    static float l[256];
    void *work = malloc(mb_sample_scratch_bytes(256));
    uint64_t h = 1469598103934665603ull;
    rng_state = 12345;
    for (int v = 0; v < 500; v++) {
        random_logits(l, 256, v);
        for (int c = 0; c < 40; c++) {
            mb_sampling s = {PICK(temps), PICK(top_ks), PICK(top_ps), PICK(min_ps), rng()};
            h = (h ^ (uint64_t)mb_sample(&s, l, 256, rng(), work)) * 1099511628211ull;
        }
    }
    free(work);
    CHECK(h == SAMPLE_DIGEST, "digest %#llx", (unsigned long long)h);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Microseconds per draw over 256 logits of the bundled model's shape, per setting: the sampler
 * and its reference. */
static void bench(void) {
    static float l[64][256];
    static double ref_scratch[3 * 256];
    void *work = malloc(mb_sample_scratch_bytes(256));
    for (int v = 0; v < 64; v++) random_logits(l[v], 256, 0);
    const struct {
        const char *name;
        mb_sampling s;
    } cases[] = {{"greedy", {0, 0, 1, 0, 1}},
                 {"temperature 0.8", {0.8f, 0, 1, 0, 1}},
                 {"temperature 0.8, top_k 40", {0.8f, 40, 1, 0, 1}},
                 {"temperature 0.8, top_p 0.9", {0.8f, 0, 0.9f, 0, 1}},
                 {"temperature 0.8, min_p 0.05", {0.8f, 0, 1, 0.05f, 1}},
                 {"temperature 0.8, top_k 40, top_p 0.9", {0.8f, 40, 0.9f, 0, 1}}};
    const int reps = 200000;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        volatile int sink = 0;
        double t0 = now_s();
        for (int r = 0; r < reps; r++) sink += mb_sample(&cases[c].s, l[r & 63], 256, r, work);
        double t1 = now_s();
        for (int r = 0; r < reps; r++)
            sink += ref_sample(&cases[c].s, l[r & 63], 256, r, ref_scratch);
        double t2 = now_s();
        printf("%-40s %6.2f us  reference %6.2f us\n", cases[c].name, 1e6 * (t1 - t0) / reps,
               1e6 * (t2 - t1) / reps);
    }
    free(work);
    /* what generate paid per byte for stop strings at 1 MiB of output: the whole search, then
     * the tail search */
    enum { MiB = 1 << 20 };
    uint8_t *out = malloc(MiB);
    for (int i = 0; i < MiB; i++) out[i] = (uint8_t)(' ' + rng() % 90);
    const char *stops[] = {"\n\n", "THE END"};
    volatile long sink = 0;
    double t0 = now_s();
    for (int r = 0; r < 100; r++) sink += mb_stop_find(stops, 2, out, MiB - (size_t)r);
    double t1 = now_s();
    for (int r = 0; r < 100000; r++) sink += mb_stop_find_tail(stops, 2, out, MiB - (size_t)r);
    printf("stop strings after a byte at 1 MiB: %.2f us, tail %.3f us\n", 1e6 * (t1 - t0) / 100,
           1e6 * (now_s() - t1) / 100000);
    free(out);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        bench();
        return 0;
    }
    RUN(test_greedy);
    RUN(test_distribution);
    RUN(test_seeded);
    RUN(test_stop);
    RUN(test_stop_tail);
    RUN(test_logprob);
    RUN(test_matches_reference);
    RUN(test_fixed_digest);
    return check_failures ? 1 : 0;
}
