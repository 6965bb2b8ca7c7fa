/* fuzz_config.c: libFuzzer target for the daemon's settings: a config file's JSON
 * (cfg_apply_json) and command-line flags (cfg_load, the input split at NUL bytes into
 * arguments). The first byte picks which. Whatever comes in must give 0 with every setting
 * within its range, or -1 with a message, and leak nothing. */
#include "cfg.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What every accepted configuration keeps: numbers in their table's ranges, strings ended, and
 * after cfg_load (cross = 1) the rules between keys. */
static void check(const cfg *c, int cross) {
    if (cross &&
        (c->prefill_chunk > c->max_batch_tokens || c->default_max_tokens > c->max_tokens_limit))
        abort();
    if (c->port < 0 || c->port > 65535 || c->slots < 0 || c->max_batch_tokens < 1 ||
        c->prefill_chunk < 1 || c->max_connections < 1 || c->http_threads < 1 ||
        !(c->request_timeout_s >= 0.001) || !(c->request_read_timeout_s >= 0.01) ||
        !(c->keepalive_s >= 0.01))
        abort();
    if (!memchr(c->model, 0, sizeof c->model) || !memchr(c->host, 0, sizeof c->host) ||
        !memchr(c->api_key, 0, sizeof c->api_key) ||
        !memchr(c->cors_origins, 0, sizeof c->cors_origins))
        abort();
}

static void fuzz_flags(const char *s, size_t n) {
    char *buf = malloc(n + 1);
    memcpy(buf, s, n);
    buf[n] = 0;
    char *argv[64];
    int argc = 0;
    for (size_t i = 0; i <= n && argc < 64; i += strlen(buf + i) + 1) argv[argc++] = buf + i;
    /* --config names a file to read: the file layer is what the other mode fuzzes */
    for (int i = 0; i < argc; i++)
        if (strstr(argv[i], "config")) {
            free(buf);
            return;
        }
    cfg c;
    char err[256] = "";
    if (cfg_load(&c, argc, argv, err, sizeof err) == 0)
        check(&c, 1);
    else if (!err[0])
        abort();
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsetenv("MAMBABYTE_CONFIG");
    if (data[0] & 1) {
        fuzz_flags((const char *)data + 1, size - 1);
        return 0;
    }
    cfg c;
    char err[256] = "";
    cfg_defaults(&c);
    if (cfg_apply_json(&c, (const char *)data + 1, size - 1, "fuzz.json", err, sizeof err) == 0)
        check(&c, 0);
    else if (!err[0])
        abort();
    return 0;
}
