/* cmd_logits.c: `mambabyte logits`, raw float32 logits of every position, for parity checks. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "cmd_engine.h"
#include "fileio.h"
#include "mambabyte.h"

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
            if (cli_int_opt("logits", "threads", optarg, 0, CLI_MAX_THREADS, &bo.n_threads))
                return 2;
            break;
        case 'V':
            if (cli_device_opt("logits", optarg, &bo)) return 2;
            break;
        case 'h':
            fputs(logits_usage, stdout);
            return 0;
        default:
            fputs(logits_usage, stderr);
            return 2;
        }
    }
    if (!in || !outp) return cli_die("logits", "--input and --out are required");
    size_t len;
    mb_err e;
    uint8_t *data = mb_read_file(in, CLI_MAX_FILE_BYTES, &len, &e);
    if (!data) return cli_die("logits", e.msg);
    mb_model *m = cli_load("logits", dir, &bo);
    if (!m) {
        free(data);
        return 1;
    }
    const int V = mb_model_config(m)->n_vocab, bytes = V == 256;
    size_t n = bytes ? len : len / 4;
    int rc = 0;
    int32_t *toks = malloc((n + 1) * sizeof *toks);
    float *logits = malloc((n + 1) * (size_t)V * sizeof(float));
    mb_pool *p = mb_pool_create(m, 1, CLI_CHUNK, &e);
    FILE *f = NULL;
    if (!bytes && len % 4)
        rc = cli_die("logits", "a subword model's input must hold little-endian int32 ids");
    else if (!toks || !logits || !p)
        rc = cli_die("logits", p ? "out of memory" : e.msg);
    else {
        for (size_t i = 0; i < n; i++)
            toks[i] = bytes ? data[i]
                            : (int32_t)((uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                                        (uint32_t)data[4 * i + 2] << 16 |
                                        (uint32_t)data[4 * i + 3] << 24);
        if (cli_feed(m, p, toks, n, logits, NULL, &e))
            rc = cli_die("logits", e.msg);
        else if (!(f = fopen(outp, "wb")) || fwrite(logits, sizeof(float) * (size_t)V, n, f) != n)
            rc = cli_die("logits", strerror(errno));
    }
    if (f && fclose(f) && !rc) rc = cli_die("logits", strerror(errno));
    mb_pool_free(p);
    free(logits);
    free(toks);
    free(data);
    mb_model_free(m);
    return rc;
}
