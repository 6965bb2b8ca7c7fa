/* test_engine.c: the CPU engine against the reference fixtures (logits and states computed by
 * Hugging Face transformers and mamba_ssm in float64), and the invariances the server relies
 * on: step-by-step == one span, batched == alone, any thread count, rollback == feeding less. */
#include <cJSON.h>
#include <math.h>
#include <string.h>

#include "check.h"
#include "internal.h"

#define FIX "tests/fixtures/"
/* q8 weights against the float32 reference: max|err| / max|ref| with float32 activations, and
 * with int8 activations (avx512vnni; 0.0117 and 0.0097 on tiny-byte-tied's 0.0056) */
#define Q8_TOL      1e-2
#define Q8_INT8_TOL 2e-2

typedef struct fixture {
    int32_t toks[256];
    int n;
    int32_t greedy[256];
    int n_greedy;
} fixture;

static int read_json_ids(const cJSON *a, int32_t *out) {
    int n = 0;
    for (const cJSON *j = a ? a->child : NULL; j && n < 256; j = j->next)
        out[n++] = (int32_t)j->valueint;
    return n;
}

static void load_fixture(const char *name, fixture *f) {
    char path[256];
    snprintf(path, sizeof path, FIX "%s/expected.json", name);
    char *txt = read_file(path, NULL);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    CHECK(o != NULL, "cannot read %s", path);
    f->n = read_json_ids(cJSON_GetObjectItem(o, "prompt_bytes"), f->toks);
    f->n_greedy = read_json_ids(cJSON_GetObjectItem(o, "greedy_continuation"), f->greedy);
    cJSON_Delete(o);
    free(txt);
}

static mb_model *load(const char *path, int threads) {
    mb_err e = {{0}};
    mb_backend_opts o = {threads, MB_DEVICE_CPU, 0};
    mb_model *m = mb_model_load(path, &o, &e);
    CHECK(m != NULL, "load %s: %s", path, e.msg);
    return m;
}

/* A fixture's prompt (and greedy continuation) and its float32 model. */
static mb_model *fixture_model(const char *name, fixture *fx) {
    char path[256];
    load_fixture(name, fx);
    snprintf(path, sizeof path, FIX "%s", name);
    return load(path, 0);
}

/* Feeds toks as one span into slot (optionally with every position's logits). */
static void feed(mb_model *m, mb_pool *p, int slot, const int32_t *toks, int n, float *logits,
                 int all) {
    uint8_t want[512];
    memset(want, 1, sizeof want);
    int off[2] = {0, n};
    mb_batch b = {1, toks, off, &slot, all ? want : NULL};
    mb_err e;
    int rc = mb_forward(m, p, &b, logits, &e);
    CHECK(rc == 0, "forward: %s", e.msg);
}

static double rel_err(const float *got, const float *ref, size_t n) {
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < n; i++) {
        max_ref = fmax(max_ref, fabs(ref[i]));
        max_err = fmax(max_err, fabs((double)got[i] - ref[i]));
    }
    return max_err / max_ref;
}

static void check_logits(const char *name, const char *weights, const char *ref_file, double tol) {
    fixture fx;
    load_fixture(name, &fx);
    char path[256];
    snprintf(path, sizeof path, FIX "%s/%s", name, weights);
    mb_model *m = load(path, 0);
    if (!m) return;
    int V = mb_model_config(m)->n_vocab;
    mb_pool *p = mb_pool_create(m, 1, 512, NULL);
    float *got = malloc((size_t)fx.n * V * sizeof(float));
    feed(m, p, 0, fx.toks, fx.n, got, 1);
    snprintf(path, sizeof path, FIX "%s/%s", name, ref_file);
    size_t len;
    float *ref = read_file(path, &len);
    CHECK(ref && len == (size_t)fx.n * V * 4, "%s: reference size", path);
    if (ref) {
        double err = rel_err(got, ref, (size_t)fx.n * V);
        printf("     %s %s: max|err|/max|ref| = %.3g\n", name, weights, err);
        CHECK(err < tol, "%s %s: relative error %g >= %g", name, weights, err, tol);
    }
    free(ref);
    free(got);
    mb_pool_free(p);
    mb_model_free(m);
}

static void test_fixture_logits(void) {
    check_logits("tiny-byte-tied", "model.safetensors", "logits.f32.f32", 1e-4);
    check_logits("tiny-byte-tied", "model.bf16.safetensors", "logits.bf16.f32", 1e-3);
    check_logits("tiny-byte-tied", "model.f16.safetensors", "logits.f16.f32", 1e-3);
    check_logits("tiny-subword-1000", "model.safetensors", "logits.f32.f32", 1e-4);
    check_logits("tiny-mambassm-layernorm", "model.safetensors", "logits.f32", 1e-4);
}

/* The recurrent state after the prompt equals HF's cache (conv: the last d_conv-1 inputs). */
static void test_fixture_states(void) {
    const char *names[] = {"tiny-byte-tied", "tiny-subword-1000"};
    for (int k = 0; k < 2; k++) {
        fixture fx;
        mb_model *m = fixture_model(names[k], &fx);
        if (!m) return;
        const mb_config *c = mb_model_config(m);
        mb_pool *p = mb_pool_create(m, 1, 512, NULL);
        float *logits = malloc((size_t)c->n_vocab * sizeof(float));
        feed(m, p, 0, fx.toks, fx.n, logits, 0);
        float *st = malloc(mb_pool_state_bytes(p));
        mb_pool_read(p, 0, st, NULL);
        const int E = c->d_inner, K = c->d_conv, N = c->d_state;
        char path[256];
        for (int l = 0; l < c->n_layer; l++) {
            const float *win = st + (size_t)l * mb_layer_state_floats(c),
                        *ssm = win + (size_t)E * (K - 1);
            snprintf(path, sizeof path, FIX "%s/conv_state.%d.f32", names[k], l);
            float *conv_ref = read_file(path, NULL);
            snprintf(path, sizeof path, FIX "%s/ssm_state.%d.f32", names[k], l);
            float *ssm_ref = read_file(path, NULL);
            CHECK(conv_ref && ssm_ref, "state fixtures of %s", names[k]);
            if (!conv_ref || !ssm_ref) break;
            double ce = 0, cm = 0, se = 0, sm = 0;
            for (int ch = 0; ch < E; ch++)
                for (int j = 0; j < K - 1; j++) {
                    ce = fmax(ce, fabs(win[j * E + ch] - conv_ref[ch * K + j + 1]));
                    cm = fmax(cm, fabs(conv_ref[ch * K + j + 1]));
                }
            for (int i = 0; i < E * N; i++) {
                se = fmax(se, fabs(ssm[i] - ssm_ref[i]));
                sm = fmax(sm, fabs(ssm_ref[i]));
            }
            CHECK(ce / cm < 1e-5 && se / sm < 1e-4, "%s layer %d: conv err %g, ssm err %g",
                  names[k], l, ce / cm, se / sm);
            free(conv_ref);
            free(ssm_ref);
        }
        free(st);
        free(logits);
        mb_pool_free(p);
        mb_model_free(m);
    }
}

/* HF's greedy continuation (through its cache path) reproduced by decode steps. */
static void test_greedy_continuation(void) {
    const char *names[] = {"tiny-byte-tied", "tiny-subword-1000"};
    for (int k = 0; k < 2; k++) {
        fixture fx;
        mb_model *m = fixture_model(names[k], &fx);
        if (!m) return;
        int V = mb_model_config(m)->n_vocab;
        mb_pool *p = mb_pool_create(m, 1, 512, NULL);
        float *logits = malloc((size_t)V * sizeof(float));
        void *scratch = malloc(mb_sample_scratch_bytes(V));
        mb_sampling s;
        mb_sampling_default(&s);
        feed(m, p, 0, fx.toks, fx.n, logits, 0);
        for (int i = 0; i < fx.n_greedy; i++) {
            int32_t t = mb_sample(&s, logits, V, (uint64_t)(fx.n + i), scratch);
            CHECK(t == fx.greedy[i], "%s: greedy token %d is %d, HF says %d", names[k], i, t,
                  fx.greedy[i]);
            if (t != fx.greedy[i]) break;
            feed(m, p, 0, &t, 1, logits, 0);
        }
        free(scratch);
        free(logits);
        mb_pool_free(p);
        mb_model_free(m);
    }
    /* mamba_ssm fixture: its greedy next token after the prompt */
    fixture fx;
    mb_model *m = fixture_model("tiny-mambassm-layernorm", &fx);
    if (!m) return;
    mb_pool *p = mb_pool_create(m, 1, 512, NULL);
    float logits[256];
    feed(m, p, 0, fx.toks, fx.n, logits, 0);
    mb_sampling s;
    mb_sampling_default(&s);
    double scratch[256 * 2];
    CHECK(mb_sample(&s, logits, 256, 0, scratch) == 8, "mamba_ssm greedy_next");
    mb_pool_free(p);
    mb_model_free(m);
}

/* A deterministic pseudo-random byte string. */
static void bytes_of(int32_t *t, int n, unsigned seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = (int32_t)((seed >> 16) & 0xff);
    }
}

/* Step-by-step == one span == split spans, bit for bit, logits and final state. */
static void test_span_invariance(void) {
    mb_model *m = load(FIX "tiny-byte-tied", 0);
    if (!m) return;
    enum { n = 40, V = 256 };
    int32_t toks[n];
    bytes_of(toks, n, 7);
    mb_pool *p = mb_pool_create(m, 3, 512, NULL);
    static float span[n * V], step[n * V], split[n * V];
    feed(m, p, 0, toks, n, span, 1);
    for (int i = 0; i < n; i++) feed(m, p, 1, toks + i, 1, step + i * V, 0);
    feed(m, p, 2, toks, 13, split, 1);
    feed(m, p, 2, toks + 13, n - 13, split + 13 * V, 1);
    CHECK(!memcmp(span, step, sizeof span), "span vs step logits differ");
    CHECK(!memcmp(span, split, sizeof span), "span vs split logits differ");
    size_t sb = mb_pool_state_bytes(p);
    char *s0 = malloc(sb), *s1 = malloc(sb), *s2 = malloc(sb);
    mb_pool_read(p, 0, s0, NULL);
    mb_pool_read(p, 1, s1, NULL);
    mb_pool_read(p, 2, s2, NULL);
    CHECK(!memcmp(s0, s1, sb) && !memcmp(s0, s2, sb), "states differ");
    free(s0);
    free(s1);
    free(s2);
    mb_pool_free(p);
    mb_model_free(m);
}

/* A batch of different sequences (different lengths and histories) == each alone, for 1, 2 and 3
 * threads, bit for bit, with float32 and bf16 weights. */
static void batch_invariance(const char *path) {
    enum { S = 5, V = 256 };
    static const int lens[S] = {1, 17, 3, 33, 8};
    int32_t toks[128];
    int off[S + 1] = {0}, slots[S] = {4, 0, 3, 1, 2};
    for (int s = 0; s < S; s++) off[s + 1] = off[s] + lens[s];
    bytes_of(toks, off[S], 99);
    static float alone[128 * V], batched[128 * V];
    uint8_t want[128];
    memset(want, 1, sizeof want);
    for (int threads = 1; threads <= 3; threads++) {
        mb_model *m = load(path, threads);
        if (!m) return;
        mb_pool *p = mb_pool_create(m, S, 128, NULL);
        /* give each slot a different history first */
        for (int s = 0; s < S; s++) {
            int32_t h[5];
            bytes_of(h, 5, (unsigned)s + 1);
            feed(m, p, slots[s], h, 1 + s, alone, 0);
        }
        size_t sb = mb_pool_state_bytes(p);
        char *saved = malloc(sb * S), *after = malloc(sb * S);
        for (int s = 0; s < S; s++) mb_pool_read(p, slots[s], saved + sb * s, NULL);
        for (int s = 0; s < S; s++)
            feed(m, p, slots[s], toks + off[s], lens[s], alone + off[s] * V, 1);
        for (int s = 0; s < S; s++) mb_pool_read(p, slots[s], after + sb * s, NULL);
        for (int s = 0; s < S; s++) mb_pool_write(p, slots[s], saved + sb * s, NULL);
        mb_batch b = {S, toks, off, slots, want};
        mb_err e;
        CHECK(mb_forward(m, p, &b, batched, &e) == 0, "%s", e.msg);
        CHECK(!memcmp(alone, batched, (size_t)off[S] * V * 4),
              "%s: batched logits differ (threads %d)", path, threads);
        for (int s = 0; s < S; s++) {
            mb_pool_read(p, slots[s], saved, NULL);
            CHECK(!memcmp(saved, after + sb * s, sb), "%s: batched state %d differs (threads %d)",
                  path, s, threads);
        }
        free(saved);
        free(after);
        mb_pool_free(p);
        mb_model_free(m);
    }
}

static void test_batch_invariance(void) {
    batch_invariance(FIX "tiny-byte-tied");
    batch_invariance(FIX "tiny-byte-tied/model.bf16.safetensors");
}

/* Results do not depend on the thread count either (compared against one thread). */
static void test_thread_invariance(void) {
    enum { n = 64, V = 256 };
    int32_t toks[n];
    bytes_of(toks, n, 3);
    static float ref[n * V], got[n * V];
    for (int threads = 1; threads <= 4; threads++) {
        mb_model *m = load(FIX "tiny-byte-tied/model.bf16.safetensors", threads);
        if (!m) return;
        mb_pool *p = mb_pool_create(m, 1, n, NULL);
        feed(m, p, 0, toks, n, threads == 1 ? ref : got, 1);
        if (threads > 1) CHECK(!memcmp(ref, got, sizeof ref), "threads %d differ from 1", threads);
        mb_pool_free(p);
        mb_model_free(m);
    }
}

/* rollback(n) == having fed only n tokens: same state, same next logits; repeated rollbacks. */
static void test_rollback(void) {
    mb_model *m = load(FIX "tiny-mambassm-layernorm", 0);
    if (!m) return;
    enum { n = 24, V = 256 };
    int32_t toks[n + 1];
    bytes_of(toks, n + 1, 11);
    mb_pool *p = mb_pool_create(m, 2, 64, NULL);
    size_t sb = mb_pool_state_bytes(p);
    char *a = malloc(sb), *b = malloc(sb);
    static float la[V], lb[V], all[n * V];
    int keeps[] = {n, 5, 0, 17, n, 1};
    for (size_t k = 0; k < sizeof keeps / sizeof keeps[0]; k++) {
        int keep = keeps[k];
        mb_pool_reset(p, 0, NULL);
        mb_pool_reset(p, 1, NULL);
        feed(m, p, 0, toks, 3, la, 0); /* some history before the span */
        feed(m, p, 1, toks, 3, lb, 0);
        feed(m, p, 0, toks + 3, n - 3, all, 1);
        mb_err e;
        CHECK(mb_pool_rollback(p, 0, keep - 3 < 0 ? 0 : keep - 3, &e) == 0, "%s", e.msg);
        CHECK(mb_pool_rollback(p, 0, keep - 3 < 0 ? 0 : keep - 3, &e) == 0, "again: %s", e.msg);
        int kept = keep - 3 < 0 ? 3 : keep;
        if (kept > 3) feed(m, p, 1, toks + 3, kept - 3, lb, 0);
        mb_pool_read(p, 0, a, NULL);
        mb_pool_read(p, 1, b, NULL);
        CHECK(!memcmp(a, b, sb), "rollback to %d: state differs", kept);
        feed(m, p, 0, toks + kept, 1, la, 0);
        feed(m, p, 1, toks + kept, 1, lb, 0);
        CHECK(!memcmp(la, lb, sizeof la), "rollback to %d: next logits differ", kept);
    }
    mb_err e;
    feed(m, p, 0, toks, 2, la, 0);
    CHECK(mb_pool_rollback(p, 0, 2, &e) == 0, "rollback to the whole span: %s", e.msg);
    CHECK(mb_pool_rollback(p, 0, 3, &e) == -1 && strstr(e.msg, "keep 3"), "keep > span: %s", e.msg);
    CHECK(mb_pool_rollback(p, 1, 0, &e) == -1 && strstr(e.msg, "not fed"), "slot 1: %s", e.msg);
    free(a);
    free(b);
    mb_pool_free(p);
    mb_model_free(m);
}

/* A copied slot (a fork) continues exactly like its source; the copy cannot roll back. */
static void test_pool_copy(void) {
    mb_model *m = load(FIX "tiny-byte-tied", 0);
    if (!m) return;
    mb_pool *p = mb_pool_create(m, 2, 64, NULL);
    int32_t toks[12];
    bytes_of(toks, 12, 21);
    float a[256], b[256];
    feed(m, p, 0, toks, 10, a, 0);
    feed(m, p, 1, toks + 5, 3, b, 0); /* slot 1 was fed last: it could roll back */
    CHECK(mb_pool_copy(p, 1, 0, NULL) == 0, "copy");
    mb_err e;
    CHECK(mb_pool_rollback(p, 1, 0, &e) == -1, "a copy has no span to roll back");
    feed(m, p, 0, toks + 10, 2, a, 0);
    feed(m, p, 1, toks + 10, 2, b, 0);
    CHECK(!memcmp(a, b, sizeof a), "fork diverged from its source");
    CHECK(mb_pool_copy(p, 2, 0, NULL) == -1, "copy to a slot out of range");
    mb_pool_free(p);
    mb_model_free(m);
}

/* Save / load round trip; a corrupt, truncated or foreign file is refused. */
static void test_pool_files(void) {
    mb_model *m = load(FIX "tiny-byte-tied", 0), *other = load(FIX "tiny-subword-1000", 0);
    if (!m || !other) return;
    mb_pool *p = mb_pool_create(m, 2, 64, NULL), *q = mb_pool_create(other, 1, 8, NULL);
    int32_t toks[20];
    bytes_of(toks, 20, 5);
    float l[256];
    feed(m, p, 0, toks, 20, l, 0);
    const char *path = "build/test_state.mbs";
    mb_err e;
    CHECK(mb_pool_save(p, 0, path, &e) == 0, "save: %s", e.msg);
    CHECK(mb_pool_load(p, 1, path, &e) == 0, "load: %s", e.msg);
    size_t sb = mb_pool_state_bytes(p), len;
    char *a = malloc(sb), *b = malloc(sb);
    mb_pool_read(p, 0, a, NULL);
    mb_pool_read(p, 1, b, NULL);
    CHECK(!memcmp(a, b, sb), "round trip differs");
    CHECK(mb_pool_load(q, 0, path, &e) == -1 && strstr(e.msg, "another model"), "foreign: %s",
          e.msg);
    unsigned char *raw = read_file(path, &len);
    raw[100] ^= 1;
    FILE *f = fopen(path, "wb");
    fwrite(raw, 1, len, f);
    fclose(f);
    CHECK(mb_pool_load(p, 1, path, &e) == -1 && strstr(e.msg, "checksum"), "corrupt: %s", e.msg);
    f = fopen(path, "wb");
    fwrite(raw, 1, len / 2, f);
    fclose(f);
    CHECK(mb_pool_load(p, 1, path, &e) == -1 && strstr(e.msg, "truncated"), "truncated: %s", e.msg);
    f = fopen(path, "wb");
    fwrite("hello", 1, 5, f);
    fclose(f);
    CHECK(mb_pool_load(p, 1, path, &e) == -1 && strstr(e.msg, "not a mambabyte state"),
          "garbage: %s", e.msg);
    CHECK(mb_pool_load(p, 1, "build/no-such-file", &e) == -1, "missing file");
    remove(path);
    free(raw);
    free(a);
    free(b);
    mb_pool_free(p);
    mb_pool_free(q);
    mb_model_free(m);
    mb_model_free(other);
}

/* Bad batches are refused before anything is touched. */
static void test_bad_batches(void) {
    mb_model *m = load(FIX "tiny-byte-tied", 0);
    if (!m) return;
    mb_pool *p = mb_pool_create(m, 2, 8, NULL);
    float l[256 * 16];
    int32_t toks[16] = {1, 2, 3, 300};
    int off[3] = {0, 2, 3}, slots[2] = {0, 0}, big[2] = {0, 9};
    mb_err e;
    mb_batch dup = {2, toks, off, slots, NULL};
    CHECK(mb_forward(m, p, &dup, l, &e) == -1 && strstr(e.msg, "twice"), "%s", e.msg);
    int off_bad[2] = {0, 4}, s0 = 0, s9 = 9;
    mb_batch bad_tok = {1, toks, off_bad, &s0, NULL};
    CHECK(mb_forward(m, p, &bad_tok, l, &e) == -1 && strstr(e.msg, "token 300"), "%s", e.msg);
    mb_batch bad_slot = {1, toks, off, &s9, NULL};
    CHECK(mb_forward(m, p, &bad_slot, l, &e) == -1 && strstr(e.msg, "slot 9"), "%s", e.msg);
    mb_batch too_many = {1, toks, big, &s0, NULL};
    CHECK(mb_forward(m, p, &too_many, l, &e) == -1 && strstr(e.msg, "9 tokens"), "%s", e.msg);
    /* slots refused above are not taken twice by the next good batch; a rollback reaches back
     * to the last forward only */
    int two[2] = {0, 1};
    mb_batch good = {2, toks, off, two, NULL};
    CHECK(mb_forward(m, p, &good, l, &e) == 0, "a good batch after refused ones: %s", e.msg);
    CHECK(mb_pool_rollback(p, 0, 1, &e) == 0, "rollback of the last forward: %s", e.msg);
    mb_batch one = {1, toks, off, &two[1], NULL};
    CHECK(mb_forward(m, p, &one, l, &e) == 0, "%s", e.msg);
    CHECK(mb_pool_rollback(p, 0, 0, &e) == -1 && strstr(e.msg, "not fed by the last forward"),
          "rollback past a later forward: %s", e.msg);
    mb_pool_free(p);
    mb_model_free(m);
}

/* q8 weights (MB_WEIGHTS=q8, int8 with a scale per row): near the float32 reference, and the
 * invariances hold as with float32 weights. */
static void test_q8(void) {
    const double tol = strcmp(mb_cpu_isa(), "avx512vnni") ? Q8_TOL : Q8_INT8_TOL;
    setenv("MB_WEIGHTS", "q8", 1);
    mb_model *m = load(FIX "tiny-byte-tied", 0);
    if (m) {
        CHECK(mb_model_dtype(m) == MB_Q8 && strstr(mb_model_device(m), "q8 weights"), "q8: %s",
              mb_model_device(m));
        mb_model_free(m);
    }
    check_logits("tiny-byte-tied", "model.safetensors", "logits.f32.f32", tol);
    check_logits("tiny-byte-tied", "model.bf16.safetensors", "logits.bf16.f32", tol);
    test_span_invariance();
    test_thread_invariance();
    batch_invariance(FIX "tiny-byte-tied");
    batch_invariance(FIX "tiny-byte-tied/model.bf16.safetensors");
    setenv("MB_WEIGHTS", "q4", 1);
    mb_err e = {{0}};
    mb_backend_opts o = {0, MB_DEVICE_CPU, 0};
    mb_model *bad = mb_model_load(FIX "tiny-byte-tied", &o, &e);
    CHECK(!bad && strstr(e.msg, "MB_WEIGHTS=q4"), "MB_WEIGHTS=q4: %s", bad ? "loaded" : e.msg);
    mb_model_free(bad);
    unsetenv("MB_WEIGHTS");
}

/* The same bf16 model's logits under every CPU variant this machine runs, against avx2's:
 * close (the fixtures bound each against float64), and each variant deterministic. */
static void test_variant_parity(void) {
    enum { n = 48, V = 256 };
    int32_t toks[n];
    bytes_of(toks, n, 11);
    static float ref[n * V], got[n * V], again[n * V];
    for (int i = 0; mb_cpu_isa_name(i); i++) {
        if (!mb_cpu_isa_supported(i)) continue;
        CHECK(mb_cpu_isa_set(mb_cpu_isa_name(i)) == 0 && !strcmp(mb_cpu_isa(), mb_cpu_isa_name(i)),
              "cannot choose %s", mb_cpu_isa_name(i));
        mb_model *m = load(FIX "tiny-byte-tied/model.bf16.safetensors", 2);
        if (!m) return;
        CHECK(strstr(mb_model_device(m), mb_cpu_isa_name(i)), "device %s", mb_model_device(m));
        mb_pool *p = mb_pool_create(m, 2, n, NULL);
        feed(m, p, 0, toks, n, i ? got : ref, 1);
        feed(m, p, 1, toks, n, again, 1);
        CHECK(!memcmp(i ? got : ref, again, sizeof again), "%s: not deterministic",
              mb_cpu_isa_name(i));
        if (i) {
            double err = rel_err(got, ref, (size_t)n * V);
            printf("     %s vs avx2: max|err|/max|ref| = %.3g\n", mb_cpu_isa_name(i), err);
            CHECK(err < 1e-4, "%s vs avx2: relative error %g", mb_cpu_isa_name(i), err);
        }
        mb_pool_free(p);
        mb_model_free(m);
    }
    CHECK(mb_cpu_isa_set("avx9") == -1, "an unknown variant was accepted");
}

/* mb_sample_rows == mb_sample on each row, whether the rows are drawn on one thread or shared
 * among several (100 rows of mixed settings, in a scrambled row order). */
static void test_sample_rows(void) {
    enum { n = 100, V = 256 };
    static float logits[n * V];
    mb_sampling set[n];
    const mb_sampling *sp[n];
    int row[n], got[n];
    uint64_t pos[n];
    uint32_t r = 12345;
    for (int i = 0; i < n * V; i++) {
        r = r * 1664525u + 1013904223u;
        logits[i] = (float)(r >> 8) / (float)(1u << 24) * 12.0f - 6.0f;
    }
    for (int i = 0; i < n; i++) {
        mb_sampling_default(&set[i]);
        set[i].temperature = i % 5 ? 0.3f + 0.1f * (float)(i % 9) : 0.0f;
        set[i].top_k = i % 3 ? 0 : 40;
        set[i].top_p = i % 4 ? 1.0f : 0.9f;
        set[i].min_p = i % 7 ? 0.0f : 0.05f;
        set[i].seed = 1000u + (uint64_t)i;
        sp[i] = &set[i];
        row[i] = (i * 37) % n;
        pos[i] = (uint64_t)i * 11u;
    }
    void *scratch = malloc(mb_sample_scratch_bytes(V));
    for (int threads = 1; threads <= 3; threads += 2) {
        mb_model *m = load(FIX "tiny-byte-tied", threads);
        if (!m) break;
        mb_err e = {{0}};
        memset(got, 0xff, sizeof got);
        CHECK(!mb_sample_rows(m, n, sp, logits, row, pos, got, &e), "sample_rows: %s", e.msg);
        for (int i = 0; i < n; i++)
            CHECK(got[i] == mb_sample(sp[i], logits + (size_t)row[i] * V, V, pos[i], scratch),
                  "threads %d, row %d: %d", threads, i, got[i]);
        mb_model_free(m);
    }
    free(scratch);
}

int main(void) {
    RUN(test_variant_parity);
    /* the engine's tests under every CPU variant this machine can run, best last */
    for (int i = 0; mb_cpu_isa_name(i); i++) {
        if (!mb_cpu_isa_supported(i)) continue;
        mb_cpu_isa_set(mb_cpu_isa_name(i));
        printf("== CPU variant %s\n", mb_cpu_isa());
        RUN(test_fixture_logits);
        RUN(test_fixture_states);
        RUN(test_greedy_continuation);
        RUN(test_span_invariance);
        RUN(test_batch_invariance);
        RUN(test_thread_invariance);
        RUN(test_q8);
    }
    RUN(test_rollback);
    RUN(test_pool_copy);
    RUN(test_pool_files);
    RUN(test_bad_batches);
    RUN(test_sample_rows);
    return check_failures ? 1 : 0;
}
