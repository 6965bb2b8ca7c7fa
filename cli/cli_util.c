/* cli_util.c: what the subcommands share (cli_util.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_util.h"

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cli_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_die(const char *cmd, const char *msg) {
    fprintf(stderr, "mambabyte %s: %s\n", cmd, msg);
    return 1;
}

mb_model *cli_load(const char *cmd, const char *dir, const mb_backend_opts *o) {
    if (!dir) {
        cli_die(cmd, "-m MODEL_DIR is required");
        return NULL;
    }
    mb_err e;
    mb_model *m = mb_model_load(dir, o, &e);
    if (!m)
        cli_die(cmd, e.msg);
    else if (o->device != MB_DEVICE_CPU)
        fprintf(stderr, "mambabyte %s: device %s: %s\n", cmd, mb_model_device(m),
                mb_model_device_note(m));
    return m;
}

int cli_device_opt(const char *cmd, const char *v, mb_backend_opts *o) {
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

int cli_int_opt(const char *cmd, const char *name, const char *v, long lo, long hi, int *out) {
    char range[64], *end;
    snprintf(range, sizeof range, "an integer from %ld to %ld", lo, hi);
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno) return bad_value(cmd, name, v, "not a number", range);
    if (x < lo || x > hi) return bad_value(cmd, name, v, "out of range", range);
    *out = (int)x;
    return 0;
}

int cli_real_opt(const char *cmd, const char *name, const char *v, double lo, int lo_open,
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

int cli_seed_opt(const char *cmd, const char *v, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v || *end || errno || v[strspn(v, " \t")] == '-')
        return bad_value(cmd, "seed", v, "not a number", "an integer from 0 to 2^64-1");
    *out = x;
    return 0;
}

int cli_feed(mb_model *m, mb_pool *p, const int32_t *toks, size_t n, float *all, float *last,
             mb_err *e) {
    const int V = mb_model_config(m)->n_vocab;
    uint8_t *want = malloc(CLI_CHUNK);
    if (!want) return mb_fail(e, "out of memory");
    memset(want, 1, CLI_CHUNK);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i += CLI_CHUNK) {
        int len = n - i < CLI_CHUNK ? (int)(n - i) : CLI_CHUNK, off[2] = {0, len}, slot = 0;
        mb_batch b = {1, toks + i, off, &slot, all ? want : NULL};
        float *out = all ? all + i * (size_t)V : last;
        rc = mb_forward(m, p, &b, out, e);
        if (!rc && all && last && i + (size_t)len == n)
            memcpy(last, out + (size_t)(len - 1) * V, (size_t)V * sizeof(float));
    }
    free(want);
    return rc;
}
