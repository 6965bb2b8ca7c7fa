/* cmd_engine.c: the subcommands that drive the engine directly, without the server:
 * `generate` (text out), `logits` (raw float32 logits for parity checks) and `eval` (bits per
 * byte over the documents of a text file). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cmd_engine.h"
#include "fileio.h"
#include "mambabyte.h"
#include "lookup.h"
#include "spec.h"

#define CHUNK          512               /* tokens per forward when feeding a long input */
#define MAX_FILE_BYTES ((size_t)1 << 32) /* bytes of an input file */
#define MAX_BYTES      (1 << 30)         /* bytes generate may generate */
#define MAX_THREADS    1024

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int die(const char *cmd, const char *msg) {
    fprintf(stderr, "mambabyte %s: %s\n", cmd, msg);
    return 1;
}

/* Loads a model on the device of o and says on stderr which device runs it and why (unless the
 * CPU was asked for by name). */
static mb_model *load(const char *cmd, const char *dir, const mb_backend_opts *o) {
    if (!dir) {
        die(cmd, "-m MODEL_DIR is required");
        return NULL;
    }
    mb_err e;
    mb_model *m = mb_model_load(dir, o, &e);
    if (!m)
        die(cmd, e.msg);
    else if (o->device != MB_DEVICE_CPU)
        fprintf(stderr, "mambabyte %s: device %s: %s\n", cmd, mb_model_device(m),
                mb_model_device_note(m));
    return m;
}

/* --device VALUE into o; 0 or a message on stderr and -1. */
static int device_opt(const char *cmd, const char *v, mb_backend_opts *o) {
    if (!mb_device_parse(v, o)) return 0;
    fprintf(stderr, "mambabyte %s: --device takes auto, cpu, cuda or cuda:N, not '%s'\n", cmd, v);
    return -1;
}

/* Numeric options: the whole value must be a number within the option's range, or the command
 * stops with a message that names the option and the range (a bad value used to become 0, or a
 * draft longer than the pool's span). 0, or a message on stderr and -1. */
static int bad_value(const char *cmd, const char *name, const char *v, const char *why,
                     const char *range) {
    fprintf(stderr, "mambabyte %s: --%s %s: %s (%s)\n", cmd, name, v, why, range);
    return -1;
}

static int int_opt(const char *cmd, const char *name, const char *v, long lo, long hi, int *out) {
    char range[64], *end;
    snprintf(range, sizeof range, "an integer from %ld to %ld", lo, hi);
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno) return bad_value(cmd, name, v, "not a number", range);
    if (x < lo || x > hi) return bad_value(cmd, name, v, "out of range", range);
    *out = (int)x;
    return 0;
}

/* lo_open: lo itself is out of range */
static int real_opt(const char *cmd, const char *name, const char *v, double lo, int lo_open,
                    double hi, float *out) {
    char range[64], *end;
    snprintf(range, sizeof range, "a number %s %g and at most %g", lo_open ? "above" : "from", lo,
             hi);
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x))
        return bad_value(cmd, name, v, "not a number", range);
    if (x < lo || (lo_open && x == lo) || x > hi)
        return bad_value(cmd, name, v, "out of range", range);
    *out = (float)x;
    return 0;
}

static int seed_opt(const char *cmd, const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[strspn(v, " \t")] == '-')
        return bad_value(cmd, "seed", v, "not a number", "an integer from 0 to 2^64-1");
    *out = x;
    return 0;
}

/* Feeds toks[0..n) to slot 0 in chunks; logits of every position go to `all` (n rows) if
 * given, and the last position's to `last`. */
static int feed(mb_model *m, mb_pool *p, const int32_t *toks, size_t n, float *all, float *last,
                mb_err *e) {
    const int V = mb_model_config(m)->n_vocab;
    uint8_t *want = malloc(CHUNK);
    if (!want) return mb_fail(e, "out of memory");
    memset(want, 1, CHUNK);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i += CHUNK) {
        int len = n - i < CHUNK ? (int)(n - i) : CHUNK, off[2] = {0, len}, slot = 0;
        mb_batch b = {1, toks + i, off, &slot, all ? want : NULL};
        float *out = all ? all + i * (size_t)V : last;
        rc = mb_forward(m, p, &b, out, e);
        if (!rc && all && last && i + (size_t)len == n)
            memcpy(last, out + (size_t)(len - 1) * V, (size_t)V * sizeof(float));
    }
    free(want);
    return rc;
}

/* ---------------------------------------------------------------- generate */

static const char generate_usage[] =
    "usage: mambabyte generate -m MODEL_DIR -p TEXT [options]\n"
    "Writes the bytes the model generates after TEXT to stdout (the prompt is not repeated).\n"
    "  -m, --model DIR        model folder (config.json + safetensors) or a .safetensors file\n"
    "  -p, --prompt TEXT      the prompt (bytes); --prompt-file FILE reads it from a file\n"
    "  -n, --max-bytes N      bytes to generate (default 256)\n"
    "      --temperature T    0 = greedy (default 0)\n"
    "      --top-k K          keep the K most likely bytes (0 = off)\n"
    "      --top-p P          nucleus sampling (1 = off)\n"
    "      --min-p P          drop bytes below P x the most likely (0 = off)\n"
    "      --seed S           seed of the sampler (default 0)\n"
    "      --stop STR         stop before STR (repeatable)\n"
    "      --draft DIR        speculative decoding with this drafter (a subword Mamba with its\n"
    "                         tokenizer.model); the output is the same as without it\n"
    "      --draft-tokens N   drafted tokens per round at most (1-256, default 8)\n"
    "      --draft-bytes N    bytes the drafter drafts per round at most (1-511, default 4:\n"
    "                         longer drafts are mostly rejected and a span costs more than a "
    "step)\n"
    "      --lookup N         speculative decoding by prompt lookup: draft what followed the\n"
    "                         latest earlier occurrence of the last N bytes (up to 256; with "
    "--draft,\n"
    "                         the drafter drafts when there is none); the output is the same\n"
    "      --threads N        CPU worker threads (default: one per core)\n"
    "      --device D         auto (default: the GPU when one is usable), cpu, cuda or cuda:N\n"
    "      --stats            timings on stderr\n";

/* Output of generate: bytes go to stdout as they come, except the last ones that a stop string
 * may still begin with; a stop string cuts the output where it starts. */
typedef struct emitter {
    uint8_t *out;
    size_t n, written, hold, max;
    const char *const *stops;
    int n_stops;
} emitter;

/* Appends one byte; returns 1 when generation ends (a stop string or the byte limit). */
static int emit(emitter *em, uint8_t b) {
    em->out[em->n++] = b;
    long stop = mb_stop_find_tail(em->stops, em->n_stops, em->out, em->n);
    if (stop >= 0) {
        em->n = (size_t)stop;
        return 1;
    }
    if (em->n > em->hold && em->n - em->hold > em->written) {
        fwrite(em->out + em->written, 1, em->n - em->hold - em->written, stdout);
        fflush(stdout);
        em->written = em->n - em->hold;
    }
    return em->n == em->max;
}

typedef struct spec_stats {
    long rounds, drafted, accepted, lookup_rounds;
} spec_stats;

/* A round's bytes go to the output, and into the draft buffer (draft[j] becomes the sampler's
 * byte, so draft[0..taken) holds the round's bytes for the drafter and the lookup index). */
typedef struct round_out {
    emitter *em;
    uint8_t *draft;
} round_out;

static int take_round_byte(void *ctx, int t, uint8_t b) {
    round_out *o = ctx;
    o->draft[t] = b;
    return emit(o->em, b);
}

/* Speculative decoding of up to em->max bytes after the prompt (DESIGN.md): the byte model's
 * slot 0 holds the prompt but its last byte, which starts the first verification span. Drafts
 * come from prompt lookup (lookup > 0: the continuation of the latest earlier occurrence of the
 * last `lookup` bytes) when it finds one, else from the drafter d (if any). */
static int gen_spec(mb_model *m, mb_pool *p, spec_drafter *d, int lookup, const mb_sampling *s,
                    emitter *em, const uint8_t *prompt, size_t plen, int draft_bytes, void *scratch,
                    spec_stats *st, mb_err *e) {
    const size_t most = (size_t)(draft_bytes > LOOKUP_MAX ? draft_bytes : LOOKUP_MAX);
    uint8_t *draft = malloc(most + 1);
    int32_t *span = malloc((most + 1) * sizeof *span);
    uint8_t *want = malloc(most + 1);
    float *rows = malloc((most + 1) * 256 * sizeof(float));
    lookup_index *lx = lookup ? lookup_new(lookup, LOOKUP_WINDOW) : NULL;
    int rc = -1;
    if (!draft || !span || !want || !rows || (lookup && (!lx || lookup_push(lx, prompt, plen)))) {
        mb_fail(e, "out of memory");
        goto out;
    }
    memset(want, 1, most + 1);
    if (d && spec_drafter_start(d, prompt, plen, e)) goto out;
    int last = prompt[plen - 1], end = em->max == 0;
    int lcap = LOOKUP_START; /* see lookup_next_cap */
    while (!end) {
        size_t room = em->max - em->n - 1;
        int cap = room < (size_t)draft_bytes ? (int)room : draft_bytes, k = 0, model = 0;
        if (lx) k = lookup_draft(lx, draft, room < (size_t)lcap ? (int)room : lcap);
        if (k) {
            st->lookup_rounds++;
        } else if (d) {
            if ((k = spec_drafter_draft(d, draft, cap, e)) < 0) goto out;
            model = 1;
        }
        span[0] = last;
        for (int i = 0; i < k; i++) span[i + 1] = draft[i];
        int off[2] = {0, k + 1}, slot = 0;
        mb_batch b = {1, span, off, &slot, want};
        if (mb_forward(m, p, &b, rows, e)) goto out;
        round_out o = {em, draft};
        spec_result r;
        if (spec_round(s, rows, 256, draft, k, plen + em->n, scratch, p, 0, take_round_byte, &o, &r,
                       e))
            goto out;
        st->rounds++;
        st->drafted += k;
        st->accepted += r.accepted;
        if (k && !model) lcap = lookup_next_cap(lcap, k, r.accepted);
        if ((end = r.ended)) break;
        if (lx && lookup_push(lx, draft, (size_t)r.taken)) {
            mb_fail(e, "out of memory");
            goto out;
        }
        const int j = r.accepted;
        last = draft[j];
        if (d && (model ? spec_drafter_commit(d, j, draft + j, 1, e)
                        : spec_drafter_commit(d, 0, draft, j + 1, e)))
            goto out;
    }
    rc = 0;
out:
    lookup_free(lx);
    free(rows);
    free(want);
    free(span);
    free(draft);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {{"model", 1, 0, 'm'},
                                         {"prompt", 1, 0, 'p'},
                                         {"max-bytes", 1, 0, 'n'},
                                         {"temperature", 1, 0, 't'},
                                         {"top-k", 1, 0, 'k'},
                                         {"top-p", 1, 0, 'P'},
                                         {"min-p", 1, 0, 'M'},
                                         {"seed", 1, 0, 's'},
                                         {"stop", 1, 0, 'S'},
                                         {"threads", 1, 0, 'j'},
                                         {"device", 1, 0, 'V'},
                                         {"stats", 0, 0, 'x'},
                                         {"help", 0, 0, 'h'},
                                         {"prompt-file", 1, 0, 'f'},
                                         {"draft", 1, 0, 'd'},
                                         {"draft-tokens", 1, 0, 'D'},
                                         {"draft-bytes", 1, 0, 'B'},
                                         {"lookup", 1, 0, 'L'},
                                         {0, 0, 0, 0}};
    const char *dir = NULL, *prompt = NULL, *prompt_file = NULL, *draft_dir = NULL;
    int draft_tokens = 8, draft_bytes = 4, lookup = 0;
    const char *stops[16];
    int n_stops = 0, stats = 0, c;
    mb_backend_opts bo = {0};
    int max_bytes = 256;
    mb_sampling s;
    mb_sampling_default(&s);
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            dir = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'f':
            prompt_file = optarg;
            break;
        case 'n':
            if (int_opt("generate", "max-bytes", optarg, 0, MAX_BYTES, &max_bytes)) return 2;
            break;
        case 't':
            if (real_opt("generate", "temperature", optarg, 0, 0, 1e6, &s.temperature)) return 2;
            break;
        case 'k':
            if (int_opt("generate", "top-k", optarg, 0, INT_MAX, &s.top_k)) return 2;
            break;
        case 'P':
            if (real_opt("generate", "top-p", optarg, 0, 1, 1, &s.top_p)) return 2;
            break;
        case 'M':
            if (real_opt("generate", "min-p", optarg, 0, 0, 1, &s.min_p)) return 2;
            break;
        case 's':
            if (seed_opt("generate", optarg, &s.seed)) return 2;
            break;
        case 'S':
            if (n_stops == 16) return die("generate", "at most 16 --stop strings");
            stops[n_stops++] = optarg;
            break;
        case 'j':
            if (int_opt("generate", "threads", optarg, 0, MAX_THREADS, &bo.n_threads)) return 2;
            break;
        case 'V':
            if (device_opt("generate", optarg, &bo)) return 2;
            break;
        case 'x':
            stats = 1;
            break;
        case 'd':
            draft_dir = optarg;
            break;
        case 'D':
            if (int_opt("generate", "draft-tokens", optarg, 1, 256, &draft_tokens)) return 2;
            break;
        case 'B':
            if (int_opt("generate", "draft-bytes", optarg, 1, CHUNK - 1, &draft_bytes)) return 2;
            break;
        case 'L':
            if (int_opt("generate", "lookup", optarg, 0, 256, &lookup)) return 2;
            break;
        case 'h':
            fputs(generate_usage, stdout);
            return 0;
        default:
            fputs(generate_usage, stderr);
            return 2;
        }
    }
    size_t plen = 0;
    uint8_t *pbytes = NULL;
    mb_err e;
    if (prompt_file) {
        pbytes = mb_read_file(prompt_file, MAX_FILE_BYTES, &plen, &e);
        if (!pbytes) return die("generate", e.msg);
    } else if (prompt) {
        plen = strlen(prompt);
        pbytes = (uint8_t *)strdup(prompt);
    }
    if (!plen) {
        free(pbytes);
        return die("generate",
                   "a non-empty prompt is required (-p TEXT); a byte model has no start token");
    }
    mb_model *m = load("generate", dir, &bo);
    if (!m) {
        free(pbytes);
        return 1;
    }
    const mb_config *cfg = mb_model_config(m);
    int rc = 0;
    if (cfg->n_vocab != 256) {
        rc = die("generate", "generate needs a byte-level model (vocabulary 256)");
        free(pbytes);
        mb_model_free(m);
        return rc;
    }
    mb_model *dm = NULL;
    spm_tokenizer *tok = NULL;
    spec_drafter *d = NULL;
    if (draft_dir) {
        size_t dl = strlen(draft_dir) + sizeof "/tokenizer.model";
        char *tp = malloc(dl);
        if (!tp) {
            free(pbytes);
            mb_model_free(m);
            return die("generate", "out of memory");
        }
        snprintf(tp, dl, "%s/tokenizer.model", draft_dir);
        tok = spm_load(tp, &e);
        free(tp);
        /* the drafter runs on this thread alone: it is small, and a second team of spinning
         * workers would take the cores from the byte model's */
        if (tok) { /* the drafter runs where the byte model runs: one thread on the CPU */
            mb_backend_opts dbo = bo;
            dbo.n_threads = 1;
            if (!mb_model_on_gpu(m)) dbo.device = MB_DEVICE_CPU;
            dm = load("generate", draft_dir, &dbo);
        }
        if (dm) d = spec_drafter_create(dm, tok, draft_tokens, &e);
        if (!d) {
            if (!tok || dm) rc = die("generate", e.msg);
            mb_model_free(dm);
            spm_free(tok);
            free(pbytes);
            mb_model_free(m);
            return rc ? rc : 1;
        }
    }
    mb_pool *p = mb_pool_create(m, 1, CHUNK, &e);
    int32_t *toks = malloc((plen + 1) * sizeof *toks);
    float *logits = malloc(256 * sizeof(float));
    void *scratch = malloc(mb_sample_scratch_bytes(256));
    uint8_t *out = malloc((size_t)max_bytes + 1);
    spec_stats st = {0, 0, 0, 0};
    if (!p || !toks || !logits || !scratch || !out) {
        rc = die("generate", p ? "out of memory" : e.msg);
        goto done;
    }
    for (size_t i = 0; i < plen; i++) toks[i] = pbytes[i];
    emitter em = {out, 0, 0, 0, (size_t)max_bytes, stops, n_stops};
    for (int i = 0; i < n_stops; i++) /* a stop string may still begin in the last hold bytes */
        if (strlen(stops[i]) > em.hold + 1) em.hold = strlen(stops[i]) - 1;
    double t0 = now_s();
    /* speculative: all but the last prompt byte, which begins the first span */
    const int spec = d || lookup;
    if (feed(m, p, toks, spec ? plen - 1 : plen, NULL, logits, &e)) {
        rc = die("generate", e.msg);
        goto done;
    }
    double t1 = now_s();
    if (spec) {
        if (gen_spec(m, p, d, lookup, &s, &em, pbytes, plen, draft_bytes, scratch, &st, &e)) {
            rc = die("generate", e.msg);
            goto done;
        }
    } else {
        for (int end = max_bytes == 0; !end;) {
            int t = mb_sample(&s, logits, 256, plen + em.n, scratch);
            if ((end = emit(&em, (uint8_t)t))) break;
            int off[2] = {0, 1}, slot = 0;
            mb_batch b = {1, &t, off, &slot, NULL};
            if (mb_forward(m, p, &b, logits, &e)) {
                rc = die("generate", e.msg);
                goto done;
            }
        }
    }
    if (em.n > em.written) fwrite(out + em.written, 1, em.n - em.written, stdout);
    fflush(stdout);
    double t2 = now_s();
    if (stats) {
        fprintf(stderr,
                "prompt: %zu bytes in %.3f s (%.1f bytes/s); generated: %zu bytes in %.3f s (%.1f "
                "bytes/s); device %s\n",
                plen, t1 - t0, (double)plen / (t1 - t0), em.n, t2 - t1, (double)em.n / (t2 - t1),
                mb_model_device(m));
        if (spec)
            fprintf(stderr,
                    "speculative: %ld rounds (%ld drafted by lookup), %ld bytes drafted, %ld "
                    "accepted (%.1f%%), %.2f bytes per round\n",
                    st.rounds, st.lookup_rounds, st.drafted, st.accepted,
                    st.drafted ? 100.0 * (double)st.accepted / (double)st.drafted : 0.0,
                    st.rounds ? (double)em.n / (double)st.rounds : 0.0);
    }
done:
    free(out);
    free(scratch);
    free(logits);
    free(toks);
    free(pbytes);
    mb_pool_free(p);
    spec_drafter_free(d);
    mb_model_free(dm);
    spm_free(tok);
    mb_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- logits */

static const char logits_usage[] =
    "usage: mambabyte logits -m MODEL_DIR --input FILE --out FILE [--threads N] [--device D]\n"
    "Feeds FILE (its bytes for a byte model; little-endian int32 token ids otherwise) and writes\n"
    "the next-token logits at every position as raw little-endian float32, shape [len, vocab].\n";

int cmd_logits(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},  {"input", 1, 0, 'i'}, {"out", 1, 0, 'o'}, {"threads", 1, 0, 'j'},
        {"device", 1, 0, 'V'}, {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    const char *dir = NULL, *in = NULL, *outp = NULL;
    int c;
    mb_backend_opts bo = {0};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:i:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            dir = optarg;
            break;
        case 'i':
            in = optarg;
            break;
        case 'o':
            outp = optarg;
            break;
        case 'j':
            if (int_opt("logits", "threads", optarg, 0, MAX_THREADS, &bo.n_threads)) return 2;
            break;
        case 'V':
            if (device_opt("logits", optarg, &bo)) return 2;
            break;
        case 'h':
            fputs(logits_usage, stdout);
            return 0;
        default:
            fputs(logits_usage, stderr);
            return 2;
        }
    }
    if (!in || !outp) return die("logits", "--input and --out are required");
    size_t len;
    mb_err e;
    uint8_t *data = mb_read_file(in, MAX_FILE_BYTES, &len, &e);
    if (!data) return die("logits", e.msg);
    mb_model *m = load("logits", dir, &bo);
    if (!m) {
        free(data);
        return 1;
    }
    const int V = mb_model_config(m)->n_vocab, bytes = V == 256;
    size_t n = bytes ? len : len / 4;
    int rc = 0;
    int32_t *toks = malloc((n + 1) * sizeof *toks);
    float *logits = malloc((n + 1) * (size_t)V * sizeof(float));
    mb_pool *p = mb_pool_create(m, 1, CHUNK, &e);
    FILE *f = NULL;
    if (!bytes && len % 4)
        rc = die("logits", "a subword model's input must hold little-endian int32 ids");
    else if (!toks || !logits || !p)
        rc = die("logits", p ? "out of memory" : e.msg);
    else {
        for (size_t i = 0; i < n; i++)
            toks[i] = bytes ? data[i]
                            : (int32_t)((uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                                        (uint32_t)data[4 * i + 2] << 16 |
                                        (uint32_t)data[4 * i + 3] << 24);
        if (feed(m, p, toks, n, logits, NULL, &e))
            rc = die("logits", e.msg);
        else if (!(f = fopen(outp, "wb")) || fwrite(logits, sizeof(float) * (size_t)V, n, f) != n)
            rc = die("logits", strerror(errno));
    }
    if (f && fclose(f) && !rc) rc = die("logits", strerror(errno));
    mb_pool_free(p);
    free(logits);
    free(toks);
    free(data);
    mb_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- eval */

static const char eval_usage[] =
    "usage: mambabyte eval -m MODEL_DIR --text FILE [--batch B] [--chunk C] [--threads N]\n"
    "                      [--device D]\n"
    "Bits per byte of a byte-level model on FILE. Documents are separated by lines holding only a\n"
    "form feed; each is scored from a fresh state, every byte after its first predicted from the\n"
    "bytes before it. B documents are fed side by side, C bytes each per forward.\n";

typedef struct doc {
    const uint8_t *p;
    size_t len, fed;
} doc;

/* Splits text into documents at lines that hold only "\f". */
static int split_docs(const uint8_t *t, size_t len, doc **out) {
    int n = 0, cap = 16;
    doc *d = malloc((size_t)cap * sizeof *d);
    size_t start = 0;
    for (size_t i = 0; d && i <= len; i++) {
        int sep = i + 1 < len && t[i] == '\f' && t[i + 1] == '\n' && (i == 0 || t[i - 1] == '\n');
        if (!sep && i < len) continue;
        if (i > start) {
            if (n == cap) {
                doc *nd = realloc(d, (size_t)(cap *= 2) * sizeof *d);
                if (!nd) free(d);
                d = nd;
                if (!d) break;
            }
            d[n++] = (doc){t + start, i - start, 0};
        }
        start = i + 2;
        i++;
    }
    *out = d;
    return d ? n : -1;
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", 1, 0, 'm'},   {"text", 1, 0, 't'},   {"batch", 1, 0, 'b'}, {"chunk", 1, 0, 'c'},
        {"threads", 1, 0, 'j'}, {"device", 1, 0, 'V'}, {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    const char *dir = NULL, *text = NULL;
    int batch = 8, chunk = 64, c;
    mb_backend_opts bo = {0};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            dir = optarg;
            break;
        case 't':
            text = optarg;
            break;
        case 'b':
            if (int_opt("eval", "batch", optarg, 1, 256, &batch)) return 2;
            break;
        case 'c':
            if (int_opt("eval", "chunk", optarg, 1, 4096, &chunk)) return 2;
            break;
        case 'j':
            if (int_opt("eval", "threads", optarg, 0, MAX_THREADS, &bo.n_threads)) return 2;
            break;
        case 'V':
            if (device_opt("eval", optarg, &bo)) return 2;
            break;
        case 'h':
            fputs(eval_usage, stdout);
            return 0;
        default:
            fputs(eval_usage, stderr);
            return 2;
        }
    }
    if (!text) return die("eval", "--text FILE is required");
    size_t len;
    mb_err e;
    uint8_t *data = mb_read_file(text, MAX_FILE_BYTES, &len, &e);
    if (!data) return die("eval", e.msg);
    doc *docs = NULL;
    int n_docs = split_docs(data, len, &docs);
    mb_model *m = n_docs >= 0 ? load("eval", dir, &bo) : NULL;
    if (!m) {
        free(docs);
        free(data);
        return n_docs < 0 ? die("eval", "out of memory") : 1;
    }
    int rc = 0;
    const int V = 256;
    mb_pool *p = NULL;
    int32_t *toks = malloc((size_t)batch * chunk * sizeof *toks);
    float *logits = malloc((size_t)batch * chunk * V * sizeof(float));
    int *off = malloc(((size_t)batch + 1) * sizeof(int)),
        *slot = malloc((size_t)batch * sizeof(int)), *which = malloc((size_t)batch * sizeof(int));
    uint8_t *want = malloc((size_t)batch * chunk);
    if (mb_model_config(m)->n_vocab != V)
        rc = die("eval", "eval needs a byte-level model (vocabulary 256)");
    else if (!(p = mb_pool_create(m, batch, batch * chunk, &e)))
        rc = die("eval", e.msg);
    else if (!toks || !logits || !off || !slot || !which || !want)
        rc = die("eval", "out of memory");
    double bits = 0.0, t0 = now_s();
    size_t scored = 0, fed_total = 0;
    int next = 0, active[256];
    for (int i = 0; i < batch; i++) active[i] = -1;
    memset(want, 1, (size_t)batch * chunk);
    while (!rc) {
        /* refill free slots with the next documents (fresh state each) */
        for (int i = 0; i < batch; i++)
            if (active[i] < 0 && next < n_docs) {
                active[i] = next++;
                mb_pool_reset(p, i, NULL);
            }
        int ns = 0, T = 0;
        off[0] = 0;
        for (int i = 0; i < batch; i++) {
            if (active[i] < 0) continue;
            doc *d = &docs[active[i]];
            int k = d->len - d->fed < (size_t)chunk ? (int)(d->len - d->fed) : chunk;
            for (int j = 0; j < k; j++) toks[T + j] = d->p[d->fed + (size_t)j];
            T += k;
            slot[ns] = i;
            which[ns] = active[i];
            off[++ns] = T;
        }
        if (!ns) break;
        mb_batch b = {ns, toks, off, slot, want};
        if (mb_forward(m, p, &b, logits, &e)) {
            rc = die("eval", e.msg);
            break;
        }
        fed_total += (size_t)T;
        for (int s = 0; s < ns; s++) {
            doc *d = &docs[which[s]];
            for (int t = off[s]; t < off[s + 1]; t++) {
                size_t pos = d->fed + (size_t)(t - off[s]); /* logits at pos predict byte pos+1 */
                if (pos + 1 >= d->len) continue;
                bits -= mb_logprob(logits + (size_t)t * V, V, d->p[pos + 1]) / log(2.0);
                scored++;
            }
            d->fed += (size_t)(off[s + 1] - off[s]);
            if (d->fed == d->len) active[slot[s]] = -1;
        }
    }
    double dt = now_s() - t0;
    if (!rc)
        printf("bits_per_byte %.6f\nscored_bytes %zu\ndocuments %d\nbytes_per_second %.1f\nseconds "
               "%.2f\nthreads %d\ndevice %.*s\n",
               scored ? bits / (double)scored : 0.0, scored, n_docs, (double)fed_total / dt, dt,
               mb_model_threads(m), (int)strcspn(mb_model_device(m), " "), mb_model_device(m));
    mb_pool_free(p);
    free(want);
    free(which);
    free(slot);
    free(off);
    free(logits);
    free(toks);
    free(docs);
    free(data);
    mb_model_free(m);
    return rc;
}
