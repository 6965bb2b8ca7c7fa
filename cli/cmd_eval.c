/* cmd_eval.c: `mambabyte eval`, bits per byte over the documents of a text file. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "cmd_engine.h"
#include "fileio.h"
#include "mambabyte.h"

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
            if (cli_int_opt("eval", "batch", optarg, 1, 256, &batch)) return 2;
            break;
        case 'c':
            if (cli_int_opt("eval", "chunk", optarg, 1, 4096, &chunk)) return 2;
            break;
        case 'j':
            if (cli_int_opt("eval", "threads", optarg, 0, CLI_MAX_THREADS, &bo.n_threads)) return 2;
            break;
        case 'V':
            if (cli_device_opt("eval", optarg, &bo)) return 2;
            break;
        case 'h':
            fputs(eval_usage, stdout);
            return 0;
        default:
            fputs(eval_usage, stderr);
            return 2;
        }
    }
    if (!text) return cli_die("eval", "--text FILE is required");
    size_t len;
    mb_err e;
    uint8_t *data = mb_read_file(text, CLI_MAX_FILE_BYTES, &len, &e);
    if (!data) return cli_die("eval", e.msg);
    doc *docs = NULL;
    int n_docs = split_docs(data, len, &docs);
    mb_model *m = n_docs >= 0 ? cli_load("eval", dir, &bo) : NULL;
    if (!m) {
        free(docs);
        free(data);
        return n_docs < 0 ? cli_die("eval", "out of memory") : 1;
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
        rc = cli_die("eval", "eval needs a byte-level model (vocabulary 256)");
    else if (!(p = mb_pool_create(m, batch, batch * chunk, &e)))
        rc = cli_die("eval", e.msg);
    else if (!toks || !logits || !off || !slot || !which || !want)
        rc = cli_die("eval", "out of memory");
    double bits = 0.0, t0 = cli_now();
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
            rc = cli_die("eval", e.msg);
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
    double dt = cli_now() - t0;
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
