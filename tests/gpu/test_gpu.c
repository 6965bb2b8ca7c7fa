/* test_gpu.c: the CUDA backend against the CPU backend (its reference), and the promises the
 * server relies on, on the GPU: batch invariance bit for bit (alone, in batches of 1..256, as
 * decode steps and inside spans of any length), rollback to every prefix == feeding the prefix,
 * copy, spill and restore, state files that move between backends, seeded sampling under
 * batching, and clear errors. Prints one "skipped: no usable GPU" line and passes where there
 * is none. MB_GPU_TEST_QUICK=1 shrinks the sizes (for compute-sanitizer); MB_GPU_TEST_MODEL adds
 * a model to the invariance checks. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "mambabyte.h"

#define FIX "tests/fixtures/"

static int quick;
/* The device under test: CUDA; MB_GPU_TEST_DEVICE=cpu runs the same checks on the CPU backend
 * (make test does, under ASan, so this file's own logic is checked where there is no GPU). */
static mb_device dut = MB_DEVICE_CUDA;

static mb_model *load_on(const char *path, mb_device d, mb_err *e) {
    mb_backend_opts o = {1, d, 0};
    return mb_model_load(path, &o, e);
}

static mb_model *load_checked(const char *path, mb_device d) {
    mb_err e = {{0}};
    mb_model *m = load_on(path, d, &e);
    CHECK(m != NULL, "load %s: %s", path, e.msg);
    return m;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static int rnd(int n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng_state >> 33) % (uint64_t)n);
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < n; i++) {
        max_ref = fmax(max_ref, fabs(ref[i]));
        double d = fabs((double)got[i] - ref[i]);
        max_err = isnan(d) ? INFINITY : fmax(max_err, d);
    }
    return max_err / max_ref;
}

/* One forward of n sequences: seq i feeds toks[i][0..len[i]) into slot[i]; every token's
 * logits (want all) into out, in token order. */
static int forward_all(mb_model *m, mb_pool *p, int n, const int32_t *const *toks, const int *len,
                       const int *slot, float *out) {
    int T = 0;
    for (int i = 0; i < n; i++) T += len[i];
    int32_t *flat = malloc((size_t)T * sizeof *flat);
    int *off = malloc((size_t)(n + 1) * sizeof *off);
    uint8_t *want = malloc((size_t)T);
    memset(want, 1, (size_t)T);
    off[0] = 0;
    for (int i = 0; i < n; i++) {
        memcpy(flat + off[i], toks[i], (size_t)len[i] * sizeof *flat);
        off[i + 1] = off[i] + len[i];
    }
    mb_batch b = {n, flat, off, slot, want};
    mb_err e;
    int rc = mb_forward(m, p, &b, out, &e);
    CHECK(rc == 0, "forward of %d sequences, %d tokens: %s", n, T, e.msg);
    free(flat);
    free(off);
    free(want);
    return rc;
}

static int feed1(mb_model *m, mb_pool *p, int slot, const int32_t *toks, int n, float *out) {
    const int32_t *t[1] = {toks};
    return forward_all(m, p, 1, t, &n, &slot, out);
}

static void random_tokens(int32_t *t, int n, int V) {
    for (int i = 0; i < n; i++) t[i] = rnd(V);
}

/* ---------------------------------------------------------------- GPU == CPU */

static void parity(const char *path, double tol) {
    mb_model *c = load_checked(path, MB_DEVICE_CPU), *g = load_checked(path, dut);
    if (!c || !g) goto out;
    const int V = mb_model_config(c)->n_vocab, T = quick ? 64 : 300;
    mb_pool *pc = mb_pool_create(c, 1, T, NULL), *pg = mb_pool_create(g, 1, T, NULL);
    int32_t *toks = malloc((size_t)T * sizeof *toks);
    float *lc = malloc((size_t)T * V * sizeof(float)), *lg = malloc((size_t)T * V * sizeof(float)),
          *step = malloc((size_t)V * sizeof(float));
    random_tokens(toks, T, V);
    feed1(c, pc, 0, toks, T, lc);
    feed1(g, pg, 0, toks, T, lg);
    double err = rel_err(lg, lc, (size_t)T * V);
    printf("     %-44s GPU vs CPU over %d tokens: %.2g\n", path, T, err);
    CHECK(err < tol, "%s: GPU vs CPU relative error %g >= %g", path, err, tol);
    /* the same tokens as decode steps give the span's logits, bit for bit */
    mb_pool_reset(pg, 0, NULL);
    for (int t = 0; t < T; t++) {
        feed1(g, pg, 0, toks + t, 1, step);
        if (memcmp(step, lg + (size_t)t * V, (size_t)V * sizeof(float))) {
            CHECK(0, "%s: decode step %d differs from the span", path, t);
            break;
        }
    }
    /* and the state after it all matches the CPU's */
    size_t sb = mb_pool_state_bytes(pc);
    float *sc = malloc(sb), *sg = malloc(sb);
    mb_pool_read(pc, 0, sc, NULL);
    mb_pool_read(pg, 0, sg, NULL);
    double serr = rel_err(sg, sc, sb / sizeof(float));
    CHECK(serr < tol, "%s: GPU state vs CPU state %g", path, serr);
    free(sc);
    free(sg);
    free(toks);
    free(lc);
    free(lg);
    free(step);
    mb_pool_free(pc);
    mb_pool_free(pg);
out:
    mb_model_free(c);
    mb_model_free(g);
}

static void test_parity(void) {
    parity(FIX "tiny-byte-tied/model.safetensors", 1e-5);
    parity(FIX "tiny-byte-tied/model.f16.safetensors", 1e-5);
    parity(FIX "tiny-byte-tied/model.bf16.safetensors", 1e-2);
    parity(FIX "tiny-subword-1000", 1e-5);
    parity(FIX "tiny-mambassm-layernorm", 1e-5);
    parity("models/mambabyte-small", 1e-2);
    parity("models/drafter-small", 1e-2);
}

/* ---------------------------------------------------------------- batch invariance */

typedef struct seqs {
    int n, len, V;
    int32_t *tok; /* (n, len) */
    float *ref;   /* (n, len, V): each alone, one decode step at a time */
} seqs;

static void make_refs(mb_model *m, mb_pool *p, seqs *s) {
    s->tok = malloc((size_t)s->n * s->len * sizeof(int32_t));
    s->ref = malloc((size_t)s->n * s->len * s->V * sizeof(float));
    random_tokens(s->tok, s->n * s->len, s->V);
    for (int i = 0; i < s->n; i++) {
        mb_pool_reset(p, 0, NULL);
        for (int t = 0; t < s->len; t++)
            feed1(m, p, 0, s->tok + (size_t)i * s->len + t, 1,
                  s->ref + ((size_t)i * s->len + t) * s->V);
    }
}

/* Runs sequences 0..B-1 side by side in shuffled slots; each step every unfinished sequence
 * feeds a span of 1 (max_span 1) or a random length in [1, max_span], some sit a step out.
 * Every logits row must equal the reference bit for bit. */
static int batched(mb_model *m, mb_pool *p, const seqs *s, int B, int max_span) {
    int *slot = malloc((size_t)B * sizeof(int)), *at = calloc((size_t)B, sizeof(int));
    int *len = malloc((size_t)B * sizeof(int)), *who = malloc((size_t)B * sizeof(int));
    const int32_t **toks = malloc((size_t)B * sizeof *toks);
    float *out = malloc((size_t)B * (size_t)max_span * s->V * sizeof(float));
    int bad = 0;
    for (int i = 0; i < B; i++) slot[i] = i;
    for (int i = B - 1; i > 0; i--) { /* shuffle: slot numbers must not matter */
        int j = rnd(i + 1), x = slot[i];
        slot[i] = slot[j], slot[j] = x;
    }
    for (int i = 0; i < B; i++) mb_pool_reset(p, slot[i], NULL);
    for (int done = 0; !done && !bad;) {
        int n = 0;
        int sl[256];
        for (int i = 0; i < B; i++) {
            if (at[i] == s->len || (max_span > 1 && rnd(5) == 0)) continue;
            int k = max_span == 1 ? 1 : 1 + rnd(max_span);
            if (k > s->len - at[i]) k = s->len - at[i];
            who[n] = i, len[n] = k, sl[n] = slot[i];
            toks[n] = s->tok + (size_t)i * s->len + at[i];
            n++;
        }
        if (!n) {
            done = 1;
            for (int i = 0; i < B; i++) done &= at[i] == s->len;
            continue;
        }
        if (forward_all(m, p, n, toks, len, sl, out)) return 1;
        const float *row = out;
        for (int q = 0; q < n && !bad; q++) {
            int i = who[q];
            for (int t = 0; t < len[q]; t++, row += s->V)
                if (memcmp(row, s->ref + ((size_t)i * s->len + at[i] + t) * s->V,
                           (size_t)s->V * sizeof(float))) {
                    CHECK(0, "batch %d, span <= %d: sequence %d position %d differs from alone", B,
                          max_span, i, at[i] + t);
                    bad = 1;
                    break;
                }
            at[i] += len[q];
        }
    }
    free(slot);
    free(at);
    free(len);
    free(who);
    free(toks);
    free(out);
    return bad;
}

static void invariance(const char *path) {
    mb_model *m = load_checked(path, dut);
    if (!m) return;
    seqs s = {quick ? 16 : 256, quick ? 12 : 48, mb_model_config(m)->n_vocab, NULL, NULL};
    mb_pool *p = mb_pool_create(m, s.n, s.n * s.len, NULL);
    make_refs(m, p, &s);
    const int sizes[] = {1, 7, 20, 64, 256}; /* 20: the cluster kernel's decode batches */
    for (int k = 0; k < 5; k++) {
        int B = sizes[k] > s.n ? s.n : sizes[k];
        batched(m, p, &s, B, 1);     /* decode steps */
        batched(m, p, &s, B, 64);    /* spans of 1..64 beside each other */
        batched(m, p, &s, B, s.len); /* whole prompts in one forward (prefill) */
    }
    batched(m, p, &s, s.n, 3); /* short spans: verification-sized */
    printf("     %-44s %d sequences x %d tokens: alone == batched, every size and span\n", path,
           s.n, s.len);
    free(s.tok);
    free(s.ref);
    mb_pool_free(p);
    mb_model_free(m);
}

/* MB_GPU_TEST_MODEL names one more model to check, e.g. a random model of the 354M shape
 * (tools/random_model.py), whose out_proj (K 2048) splits K eight ways where the bundled
 * models split it four. */
static void test_batch_invariance(void) {
    invariance("models/mambabyte-small");
    invariance(FIX "tiny-byte-tied/model.safetensors");
    invariance(FIX "tiny-mambassm-layernorm");
    const char *extra = getenv("MB_GPU_TEST_MODEL");
    if (extra && *extra) invariance(extra);
}

/* The persistent step kernel (MB_CUDA_STEP=1, kernels/cu_step.cu) runs forwards of up to 32
 * tokens; longer ones take the per-operation kernels. Alone (step kernel) == in large batches
 * (per-operation kernels), bit for bit: on the bundled pair (tensor-core and CUDA-core
 * out_proj). */
static void test_step_kernel(void) {
    setenv("MB_CUDA_STEP", "1", 1);
    invariance("models/mambabyte-small");
    invariance("models/drafter-small");
    unsetenv("MB_CUDA_STEP");
}

/* ---------------------------------------------------------------- pool operations */

/* Rollback to every prefix of a span == feeding that prefix; then continuing matches. */
static void test_rollback(void) {
    mb_model *m = load_checked("models/mambabyte-small", dut);
    if (!m) return;
    const int P = 20, K = 32, V = 256;
    int32_t toks[P + K + 1];
    random_tokens(toks, P + K + 1, V);
    mb_pool *p = mb_pool_create(m, 2, 64, NULL), *r = mb_pool_create(m, 1, 64, NULL);
    size_t sb = mb_pool_state_bytes(p);
    float *ref = malloc(sb * (K + 1)), *got = malloc(sb), *lg = malloc((size_t)K * V * 4),
          *l1 = malloc(V * 4), *l2 = malloc(V * 4);
    feed1(m, r, 0, toks, P, lg);
    mb_pool_read(r, 0, ref, NULL);
    for (int i = 0; i < K; i++) {
        feed1(m, r, 0, toks + P + i, 1, lg);
        mb_pool_read(r, 0, (char *)ref + sb * (size_t)(i + 1), NULL);
    }
    feed1(m, p, 0, toks, P, lg);
    feed1(m, p, 0, toks + P, K, lg);
    mb_err e;
    for (int keep = K; keep >= 0; keep -= (keep > 3 ? 3 : 1)) {
        CHECK(mb_pool_rollback(p, 0, keep, &e) == 0, "rollback: %s", e.msg);
        mb_pool_read(p, 0, got, NULL);
        CHECK(!memcmp(got, (char *)ref + sb * (size_t)keep, sb),
              "rollback to %d of %d differs from feeding %d", keep, K, keep);
    }
    CHECK(mb_pool_rollback(p, 0, 13, &e) == 0, "rollback: %s", e.msg);
    feed1(m, p, 0, toks + P + 13, 1, l1); /* continue after the rollback */
    mb_pool_write(r, 0, (char *)ref + sb * 13, NULL);
    feed1(m, r, 0, toks + P + 13, 1, l2);
    CHECK(!memcmp(l1, l2, V * 4), "decoding after a rollback differs");
    CHECK(mb_pool_rollback(p, 1, 0, &e) != 0, "rollback of a slot the forward did not feed");
    free(ref);
    free(got);
    free(lg);
    free(l1);
    free(l2);
    mb_pool_free(p);
    mb_pool_free(r);
    mb_model_free(m);
}

/* Slot operations called one after another on the same slots, before anything reads them (the
 * CUDA backend queues them and runs them in as few launches as their order allows): each slot
 * ends as if they had run one by one. Checked bit for bit against slots fed the same tokens in
 * the same forward (batch invariance makes those the expected states). */
static void test_queued_slot_ops(void) {
    mb_model *m = load_checked("models/mambabyte-small", dut);
    if (!m) return;
    const int V = 256, S = 16, KEEP = 5;
    int32_t toks[S];
    random_tokens(toks, S, V);
    mb_pool *p = mb_pool_create(m, 8, 64, NULL);
    const size_t sb = mb_pool_state_bytes(p);
    float *lg = malloc((size_t)3 * S * V * 4);
    char *st = malloc(sb * 8);
    for (int i = 0; i < 8; i++) mb_pool_reset(p, i, NULL);
    /* slot 0 reads the span; slot 5 the same span, slot 6 its first KEEP tokens; 4 gets a span */
    const int32_t *t[4] = {toks, toks, toks, toks};
    int len[4] = {S, S, KEEP, 3}, sl[4] = {0, 5, 6, 4};
    forward_all(m, p, 4, t, len, sl, lg);
    mb_err e;
    CHECK(mb_pool_copy(p, 1, 0, &e) == 0, "copy: %s", e.msg);            /* the whole span */
    CHECK(mb_pool_rollback(p, 0, KEEP, &e) == 0, "rollback: %s", e.msg); /* then back to KEEP */
    CHECK(mb_pool_copy(p, 2, 0, &e) == 0, "copy: %s", e.msg);            /* the rolled-back one */
    CHECK(mb_pool_copy(p, 3, 2, &e) == 0, "copy: %s", e.msg);            /* a copy of a copy */
    CHECK(mb_pool_reset(p, 4, &e) == 0, "reset: %s", e.msg);             /* and a reset */
    CHECK(mb_pool_copy(p, 7, 4, &e) == 0, "copy: %s", e.msg);            /* of the reset one */
    for (int i = 0; i < 8; i++) CHECK(mb_pool_read(p, i, st + sb * (size_t)i, NULL) == 0, "read");
    CHECK(!memcmp(st + sb, st + 5 * sb, sb), "a copy before a rollback missed the span");
    for (int i = 0; i < 4; i++)
        if (i != 1)
            CHECK(!memcmp(st + (size_t)i * sb, st + 6 * sb, sb), "slot %d is not at %d", i, KEEP);
    for (size_t i = 0; i < sb; i++)
        CHECK(!st[4 * sb + i] && !st[7 * sb + i], "a reset slot is not zero");
    free(lg);
    free(st);
    mb_pool_free(p);
    mb_model_free(m);
}

/* Copy (fork) and spill/restore continue exactly like the original. */
static void test_copy_spill(void) {
    mb_model *m = load_checked("models/mambabyte-small", dut);
    if (!m) return;
    const int V = 256;
    int32_t toks[40];
    random_tokens(toks, 40, V);
    mb_pool *p = mb_pool_create(m, 3, 64, NULL);
    float *a = malloc((size_t)32 * V * 4), *b = malloc(V * 4);
    feed1(m, p, 0, toks, 30, a);
    CHECK(mb_pool_copy(p, 1, 0, NULL) == 0, "copy");
    const int32_t *t2[2] = {toks + 30, toks + 30};
    int len[2] = {1, 1}, sl[2] = {0, 1};
    forward_all(m, p, 2, t2, len, sl, a);
    CHECK(!memcmp(a, a + V, V * 4), "a forked slot continues differently");
    void *host = malloc(mb_pool_state_bytes(p));
    CHECK(mb_pool_read(p, 0, host, NULL) == 0, "read");
    CHECK(mb_pool_reset(p, 0, NULL) == 0, "reset");
    CHECK(mb_pool_write(p, 2, host, NULL) == 0, "write");
    feed1(m, p, 2, toks + 31, 1, b); /* restored into another slot */
    feed1(m, p, 1, toks + 31, 1, a);
    CHECK(!memcmp(a, b, V * 4), "a spilled and restored slot continues differently");
    free(host);
    free(a);
    free(b);
    mb_pool_free(p);
    mb_model_free(m);
}

/* A state saved on one backend continues on the other like the saving backend's own. */
static void cross_backend(const char *path, double tol) {
    mb_model *c = load_checked(path, MB_DEVICE_CPU), *g = load_checked(path, dut);
    if (!c || !g) goto out;
    const int V = mb_model_config(c)->n_vocab;
    int32_t toks[80];
    random_tokens(toks, 80, V);
    mb_pool *pc = mb_pool_create(c, 1, 64, NULL), *pg = mb_pool_create(g, 1, 64, NULL);
    float *lc = malloc((size_t)64 * V * 4), *lg = malloc((size_t)64 * V * 4);
    char file[] = "/tmp/mb-gpu-state-XXXXXX";
    int fd = mkstemp(file);
    close(fd);
    mb_err e;
    for (int dir = 0; dir < 2; dir++) { /* CPU -> GPU, then GPU -> CPU */
        mb_model *sm = dir ? g : c, *lm = dir ? c : g;
        mb_pool *sp = dir ? pg : pc, *lp = dir ? pc : pg;
        mb_pool_reset(sp, 0, NULL);
        feed1(sm, sp, 0, toks, 60, lc);
        CHECK(mb_pool_save(sp, 0, file, &e) == 0, "save: %s", e.msg);
        CHECK(mb_pool_load(lp, 0, file, &e) == 0, "load: %s", e.msg);
        feed1(sm, sp, 0, toks + 60, 16, lc);
        feed1(lm, lp, 0, toks + 60, 16, lg);
        double err = rel_err(lg, lc, (size_t)16 * V);
        CHECK(err < tol, "%s: a state saved on the %s continues on the %s with error %g", path,
              dir ? "GPU" : "CPU", dir ? "CPU" : "GPU", err);
    }
    unlink(file);
    free(lc);
    free(lg);
    mb_pool_free(pc);
    mb_pool_free(pg);
out:
    mb_model_free(c);
    mb_model_free(g);
}

static void test_state_files(void) {
    cross_backend(FIX "tiny-byte-tied/model.safetensors", 1e-5);
    cross_backend("models/mambabyte-small", 1e-2);
}

/* Seeded sampling: 8 copies of a prompt generate the same bytes alone and side by side with
 * other sequences at other positions. */
static void test_seeded_generation(void) {
    mb_model *m = load_checked("models/mambabyte-small", dut);
    if (!m) return;
    enum { S = 8, GEN = 48, V = 256 };
    const char *prompt = "It was a dark and stormy night; ";
    const int P = (int)strlen(prompt);
    mb_pool *p = mb_pool_create(m, 2 * S, 512, NULL);
    mb_sampling sp;
    mb_sampling_default(&sp);
    sp.temperature = 0.8f, sp.top_p = 0.95f, sp.seed = 7;
    void *scratch = malloc(mb_sample_scratch_bytes(V));
    float *lg = malloc((size_t)512 * V * 4);
    int32_t pt[64], alone[GEN], out[S][GEN], noise[S][GEN];
    for (int i = 0; i < P; i++) pt[i] = (uint8_t)prompt[i];
    random_tokens(&noise[0][0], S * GEN, V);
    feed1(m, p, 0, pt, P, lg);
    for (int t = 0; t < GEN; t++) {
        const float *row = t == 0 ? lg + (size_t)(P - 1) * V : lg;
        alone[t] = mb_sample(&sp, row, V, (uint64_t)(P + t), scratch);
        feed1(m, p, 0, &alone[t], 1, lg);
    }
    /* S copies and S noise sequences in one batch, prompts as spans, then decode steps */
    const int32_t *tk[2 * S];
    int len[2 * S], sl[2 * S];
    for (int i = 0; i < 2 * S; i++) {
        mb_pool_reset(p, i, NULL);
        tk[i] = i < S ? pt : noise[i - S];
        len[i] = i < S ? P : 1 + i;
        sl[i] = i;
    }
    forward_all(m, p, 2 * S, tk, len, sl, lg);
    int row = 0, last[S];
    for (int i = 0; i < S; i++) last[i] = (row += len[i]) - 1;
    for (int t = 0; t < GEN; t++) {
        for (int i = 0; i < S; i++)
            out[i][t] = mb_sample(&sp, lg + (size_t)last[i] * V, V, (uint64_t)(P + t), scratch);
        for (int i = 0; i < 2 * S; i++) {
            tk[i] = i < S ? &out[i][t] : &noise[i - S][t];
            len[i] = 1;
        }
        forward_all(m, p, 2 * S, tk, len, sl, lg);
        for (int i = 0; i < S; i++) last[i] = i;
    }
    for (int i = 0; i < S; i++)
        CHECK(!memcmp(out[i], alone, sizeof alone), "copy %d generated other bytes in a batch", i);
    free(scratch);
    free(lg);
    mb_pool_free(p);
    mb_model_free(m);
}

/* ---------------------------------------------------------------- errors */

static void test_errors(void) {
    if (dut != MB_DEVICE_CUDA) return;
    mb_err e = {{0}};
    mb_backend_opts o = {1, MB_DEVICE_CUDA, 99};
    mb_model *m = mb_model_load(FIX "tiny-byte-tied", &o, &e);
    CHECK(!m && strstr(e.msg, "no CUDA device 99"), "cuda:99: %s", e.msg);
    mb_model_free(m);
    m = load_checked("models/mambabyte-small", dut);
    if (!m) return;
    mb_pool *p = mb_pool_create(m, 4000000, 512, &e);
    CHECK(!p && strstr(e.msg, "at most 65535 slots"), "past the launch grids: %s",
          p ? "created" : e.msg);
    if (!quick) { /* two pools of ~98 GB each: the second does not fit */
        mb_pool *big = mb_pool_create(m, 65535, 65535 * 8, &e);
        CHECK(big != NULL, "a 98 GB pool: %s", e.msg);
        p = mb_pool_create(m, 65535, 65535 * 8, &e);
        CHECK(!p && strstr(e.msg, "GPU memory"), "a pool larger than the GPU's free memory: %s",
              p ? "created" : e.msg);
        mb_pool_free(p);
        mb_pool_free(big);
    }
    p = mb_pool_create(m, 2, 8, NULL);
    int32_t toks[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    float lg[256];
    int off[2] = {0, 9}, slot = 0;
    mb_batch b = {1, toks, off, &slot, NULL};
    CHECK(mb_forward(m, p, &b, lg, &e) != 0 && strstr(e.msg, "takes 8"), "over the budget: %s",
          e.msg);
    off[1] = 4;
    CHECK(mb_forward(m, p, &b, lg, &e) == 0, "the pool still works: %s", e.msg);
    CHECK(mb_model_usable(m), "a refused batch does not kill the device");
    mb_pool_free(p);
    mb_model_free(m);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* a crash still shows how far it came */
    quick = getenv("MB_GPU_TEST_QUICK") && *getenv("MB_GPU_TEST_QUICK") == '1';
    const char *d = getenv("MB_GPU_TEST_DEVICE");
    if (d && !strcmp(d, "cpu")) dut = MB_DEVICE_CPU;
    mb_err e = {{0}};
    mb_model *probe = load_on(FIX "tiny-byte-tied", dut, &e);
    if (!probe && (strstr(e.msg, "no NVIDIA driver") || strstr(e.msg, "no usable CUDA device") ||
                   strstr(e.msg, "no CUDA device"))) {
        printf("skipped: no usable GPU (%s)\n", e.msg);
        return 0;
    }
    CHECK(probe != NULL, "the CUDA backend does not start: %s", e.msg);
    if (!probe) return 1;
    printf("device %s\n", mb_model_device(probe));
    mb_model_free(probe);
    RUN(test_parity);
    RUN(test_batch_invariance);
    RUN(test_step_kernel);
    RUN(test_rollback);
    RUN(test_copy_spill);
    RUN(test_queued_slot_ops);
    RUN(test_state_files);
    RUN(test_seeded_generation);
    RUN(test_errors);
    if (check_failures) printf("%d checks failed\n", check_failures);
    return check_failures != 0;
}
