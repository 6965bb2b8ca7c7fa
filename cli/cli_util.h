/* cli_util.h: what the subcommands (cmd_generate.c, cmd_eval.c, cmd_logits.c) share: messages,
 * loading a model on its device, numeric options, feeding a long input. Messages go to stderr
 * as "mambabyte CMD: ...". */
#ifndef CLI_UTIL_H
#define CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "mambabyte.h"

#define CLI_CHUNK          512               /* tokens per forward when feeding a long input */
#define CLI_MAX_FILE_BYTES ((size_t)1 << 32) /* bytes of an input file */
#define CLI_MAX_THREADS    1024

double cli_now(void);     /* seconds, monotonic */
double cli_cpu_now(void); /* CPU seconds this process has used */
/* Prints "mambabyte cmd: msg" on stderr; returns 1, the exit status. */
int cli_die(const char *cmd, const char *msg);
/* Loads a model on the device of o and says on stderr which device runs it and why (unless the
 * CPU was asked for by name); NULL after a message. */
mb_model *cli_load(const char *cmd, const char *dir, const mb_backend_opts *o);
/* --device VALUE into o; 0 or a message on stderr and -1. */
int cli_device_opt(const char *cmd, const char *v, mb_backend_opts *o);
/* Numeric option --name with value v: the whole value a number within [lo, hi] (above lo when
 * lo_open), else a message naming the option and the range and -1. */
int cli_int_opt(const char *cmd, const char *name, const char *v, long lo, long hi, int *out);
int cli_real_opt(const char *cmd, const char *name, const char *v, double lo, int lo_open,
                 double hi, float *out);
int cli_seed_opt(const char *cmd, const char *v, uint64_t *out); /* --seed: 0 to 2^64-1 */
/* Feeds toks[0..n) to slot 0 in chunks; logits of every position go to `all` (n rows) if
 * given, and the last position's to `last`. */
int cli_feed(mb_model *m, mb_pool *p, const int32_t *toks, size_t n, float *all, float *last,
             mb_err *e);

#endif
