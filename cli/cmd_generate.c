/* cmd_generate.c: `mambabyte generate`, text out of the engine without the server: plain or
 * speculative decoding (a drafter, prompt lookup), stop strings, timings. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "cmd_engine.h"
#include "fileio.h"
#include "lookup.h"
#include "mambabyte.h"
#include "spec.h"

#define MAX_BYTES (1 << 30) /* bytes generate may generate */

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
    "      --draft-conf P     end a draft before the drafter's probability that all its bytes\n"
    "                         are right falls below P (0-1, default 0.1; 0: only the limits)\n"
    "      --lookup N         speculative decoding by prompt lookup: draft what followed the\n"
    "                         latest earlier occurrence of the last N bytes (up to 256; with "
    "--draft,\n"
    "                         the drafter drafts when there is none); the output is the same\n"
    "      --threads N        CPU worker threads (default: one per core)\n"
    "      --device D         auto (default: the GPU when one is usable), cpu, cuda or cuda:N\n"
    "      --stats            timings, and speculation's acceptance by draft position, on stderr\n";

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

/* pos_drafted[p]: the drafter's drafts that held a byte at position p (0: the first drafted
 * byte); pos_kept[p]: those whose byte there was kept (the daemon's metrics count the same). */
typedef struct spec_stats {
    long rounds, drafted, accepted, lookup_rounds, ids;
    long pos_drafted[CLI_CHUNK], pos_kept[CLI_CHUNK];
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
            st->ids += spec_drafter_ids(d);
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
        for (int i = 0; model && i < k; i++) {
            st->pos_drafted[i]++;
            st->pos_kept[i] += i < r.accepted;
        }
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
    static const struct option opts[] = {{"model", 1, 0, 'm'},       {"prompt", 1, 0, 'p'},
                                         {"max-bytes", 1, 0, 'n'},   {"temperature", 1, 0, 't'},
                                         {"top-k", 1, 0, 'k'},       {"top-p", 1, 0, 'P'},
                                         {"min-p", 1, 0, 'M'},       {"seed", 1, 0, 's'},
                                         {"stop", 1, 0, 'S'},        {"threads", 1, 0, 'j'},
                                         {"device", 1, 0, 'V'},      {"stats", 0, 0, 'x'},
                                         {"help", 0, 0, 'h'},        {"prompt-file", 1, 0, 'f'},
                                         {"draft", 1, 0, 'd'},       {"draft-tokens", 1, 0, 'D'},
                                         {"draft-bytes", 1, 0, 'B'}, {"draft-conf", 1, 0, 'C'},
                                         {"lookup", 1, 0, 'L'},      {0, 0, 0, 0}};
    const char *dir = NULL, *prompt = NULL, *prompt_file = NULL, *draft_dir = NULL;
    int draft_tokens = 8, draft_bytes = 4, lookup = 0;
    float draft_conf = 0.1f;
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
            if (cli_int_opt("generate", "max-bytes", optarg, 0, MAX_BYTES, &max_bytes)) return 2;
            break;
        case 't':
            if (cli_real_opt("generate", "temperature", optarg, 0, 0, 1e6, &s.temperature))
                return 2;
            break;
        case 'k':
            if (cli_int_opt("generate", "top-k", optarg, 0, INT_MAX, &s.top_k)) return 2;
            break;
        case 'P':
            if (cli_real_opt("generate", "top-p", optarg, 0, 1, 1, &s.top_p)) return 2;
            break;
        case 'M':
            if (cli_real_opt("generate", "min-p", optarg, 0, 0, 1, &s.min_p)) return 2;
            break;
        case 's':
            if (cli_seed_opt("generate", optarg, &s.seed)) return 2;
            break;
        case 'S':
            if (n_stops == 16) return cli_die("generate", "at most 16 --stop strings");
            stops[n_stops++] = optarg;
            break;
        case 'j':
            if (cli_int_opt("generate", "threads", optarg, 0, CLI_MAX_THREADS, &bo.n_threads))
                return 2;
            break;
        case 'V':
            if (cli_device_opt("generate", optarg, &bo)) return 2;
            break;
        case 'x':
            stats = 1;
            break;
        case 'd':
            draft_dir = optarg;
            break;
        case 'D':
            if (cli_int_opt("generate", "draft-tokens", optarg, 1, 256, &draft_tokens)) return 2;
            break;
        case 'B':
            if (cli_int_opt("generate", "draft-bytes", optarg, 1, CLI_CHUNK - 1, &draft_bytes))
                return 2;
            break;
        case 'C':
            if (cli_real_opt("generate", "draft-conf", optarg, 0, 0, 1, &draft_conf)) return 2;
            break;
        case 'L':
            if (cli_int_opt("generate", "lookup", optarg, 0, 256, &lookup)) return 2;
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
        pbytes = mb_read_file(prompt_file, CLI_MAX_FILE_BYTES, &plen, &e);
        if (!pbytes) return cli_die("generate", e.msg);
    } else if (prompt) {
        plen = strlen(prompt);
        pbytes = (uint8_t *)strdup(prompt);
    }
    if (!plen) {
        free(pbytes);
        return cli_die("generate",
                       "a non-empty prompt is required (-p TEXT); a byte model has no start token");
    }
    mb_model *m = cli_load("generate", dir, &bo);
    if (!m) {
        free(pbytes);
        return 1;
    }
    const mb_config *cfg = mb_model_config(m);
    int rc = 0;
    if (cfg->n_vocab != 256) {
        rc = cli_die("generate", "generate needs a byte-level model (vocabulary 256)");
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
            return cli_die("generate", "out of memory");
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
            dm = cli_load("generate", draft_dir, &dbo);
        }
        if (dm) d = spec_drafter_create(dm, tok, draft_tokens, draft_conf, &e);
        if (!d) {
            if (!tok || dm) rc = cli_die("generate", e.msg);
            mb_model_free(dm);
            spm_free(tok);
            free(pbytes);
            mb_model_free(m);
            return rc ? rc : 1;
        }
    }
    mb_pool *p = mb_pool_create(m, 1, CLI_CHUNK, &e);
    int32_t *toks = malloc((plen + 1) * sizeof *toks);
    float *logits = malloc(256 * sizeof(float));
    void *scratch = malloc(mb_sample_scratch_bytes(256));
    uint8_t *out = malloc((size_t)max_bytes + 1);
    spec_stats st = {0};
    if (!p || !toks || !logits || !scratch || !out) {
        rc = cli_die("generate", p ? "out of memory" : e.msg);
        goto done;
    }
    for (size_t i = 0; i < plen; i++) toks[i] = pbytes[i];
    emitter em = {out, 0, 0, 0, (size_t)max_bytes, stops, n_stops};
    for (int i = 0; i < n_stops; i++) /* a stop string may still begin in the last hold bytes */
        if (strlen(stops[i]) > em.hold + 1) em.hold = strlen(stops[i]) - 1;
    double t0 = cli_now();
    /* speculative: all but the last prompt byte, which begins the first span */
    const int spec = d || lookup;
    if (cli_feed(m, p, toks, spec ? plen - 1 : plen, NULL, logits, &e)) {
        rc = cli_die("generate", e.msg);
        goto done;
    }
    double t1 = cli_now();
    if (spec) {
        if (gen_spec(m, p, d, lookup, &s, &em, pbytes, plen, draft_bytes, scratch, &st, &e)) {
            rc = cli_die("generate", e.msg);
            goto done;
        }
    } else {
        for (int end = max_bytes == 0; !end;) {
            int t = mb_sample(&s, logits, 256, plen + em.n, scratch);
            if ((end = emit(&em, (uint8_t)t))) break;
            int off[2] = {0, 1}, slot = 0;
            mb_batch b = {1, &t, off, &slot, NULL};
            if (mb_forward(m, p, &b, logits, &e)) {
                rc = cli_die("generate", e.msg);
                goto done;
            }
        }
    }
    if (em.n > em.written) fwrite(out + em.written, 1, em.n - em.written, stdout);
    fflush(stdout);
    double t2 = cli_now();
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
        if (d && st.pos_drafted[0]) {
            fprintf(stderr, "drafter: %ld ids drafted (%.2f a round)\n", st.ids,
                    (double)st.ids / (double)(st.rounds - st.lookup_rounds));
            fprintf(stderr, "drafter, kept by position (kept/drafted):");
            for (int i = 0; i < CLI_CHUNK && st.pos_drafted[i]; i++)
                fprintf(stderr, " %ld/%ld", st.pos_kept[i], st.pos_drafted[i]);
            fprintf(stderr, "\n");
        }
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
