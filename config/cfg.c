/* cfg.c: the settings table and its four layers (default.json < --config file < env < flags). */
#include "cfg.h"
#include "fileio.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { K_STR, K_INT, K_DBL, K_BOOL } key_type;

typedef struct key {
    const char *name;
    key_type type;
    size_t off;  /* offset of the field in cfg */
    size_t size; /* for strings: the field's capacity */
    double min, max;
    const char *def; /* built-in default, as text */
    const char *help;
} key;

#define STR(f, d, h)                                                                               \
    { #f, K_STR, offsetof(cfg, f), sizeof(((cfg *)0)->f), 0, 0, d, h }
#define INT(f, lo, hi, d, h)                                                                       \
    { #f, K_INT, offsetof(cfg, f), 0, lo, hi, d, h }
#define DBL(f, lo, hi, d, h)                                                                       \
    { #f, K_DBL, offsetof(cfg, f), 0, lo, hi, d, h }
#define BOOL(f, d, h)                                                                              \
    { #f, K_BOOL, offsetof(cfg, f), 0, 0, 1, d, h }

static const key KEYS[] = {
    STR(model, "models/mambabyte-small", "model directory (also -m)"),
    STR(draft, "", "drafter model directory (speculative decoding)"),
    STR(model_name, "", "model id in responses; empty: the model folder's name"),
    STR(host, "127.0.0.1", "address to listen on"),
    INT(port, 0, 65535, "8080", "TCP port (0: any free port)"),
    STR(api_key, "", "require Authorization: Bearer <key>; empty: no key"),
    STR(device, "auto", "auto (the GPU when one is usable), cpu, cuda or cuda:N"),
    INT(threads, 0, 1024, "0", "CPU engine threads (0: one per core)"),
    INT(slots, 0, 65536, "0",
        "state pool slots (0: 64 on the CPU; on a GPU as many as fit in its memory, up to "
        "1024)"),
    INT(max_batch_tokens, 1, 1 << 20, "512", "tokens fed by one batched forward"),
    INT(prefill_chunk, 1, 1 << 20, "128", "prompt bytes per sequence per step"),
    DBL(prefill_stall, 0, 1e6, "1",
        "while sequences decode, a step feeds only the prompt bytes that add at most this many "
        "decode steps' time, by measured cost (at least 16; 0: no cap)"),
    INT(lookup, 0, 256, "0",
        "speculative decoding by prompt lookup: draft what followed the latest earlier "
        "occurrence of the last N bytes (0: off)"),
    INT(max_draft_bytes, 1, 32, "16",
        "speculative decoding with the drafter: bytes one draft may propose at most"),
    DBL(draft_min_confidence, 0, 1, "0.1",
        "a drafter's draft ends before its probability that all the drafted bytes are right "
        "falls below this (0: only max_draft_bytes ends it, which adapts to acceptance)"),
    INT(queue_limit, 0, 1 << 20, "1024", "requests waiting for a slot before 429"),
    INT(max_body_bytes, 64, 1 << 30, "1048576", "largest request body (413 beyond)"),
    INT(max_prompt_bytes, 1, 1 << 30, "262144", "longest prompt in bytes"),
    INT(max_tokens_limit, 0, 1 << 24, "4096", "largest max_tokens (bytes) a request may ask"),
    INT(default_max_tokens, 0, 1 << 24, "128", "max_tokens when a request gives none"),
    INT(max_stop, 0, 64, "4", "stop strings per request"),
    INT(max_stop_bytes, 1, 4096, "64", "bytes per stop string"),
    DBL(request_timeout_s, 0.001, 1e6, "300", "deadline per request, arrival to last byte"),
    DBL(shutdown_timeout_s, 0, 1e6, "30", "on SIGTERM, time running requests get to finish"),
    INT(max_connections, 1, 1 << 20, "2048", "simultaneous HTTP connections"),
    INT(connection_timeout_s, 0, 1 << 20, "60",
        "idle HTTP connections are closed after this (never while their request runs)"),
    INT(max_connections_per_ip, 0, 1 << 20, "64",
        "request heads in progress one address may have at the full request_read_timeout_s; "
        "further ones get 1 s (0: no limit)"),
    DBL(request_read_timeout_s, 0.01, 1e6, "10",
        "a request's head must arrive within this of connecting, its body within this after"),
    INT(http_threads, 1, 256, "4", "threads serving HTTP connections (event loops)"),
    DBL(keepalive_s, 0.01, 1e6, "15",
        "seconds between SSE keep-alive comments of a waiting stream"),
    STR(cors_origins, "",
        "origins allowed to call from a browser: comma-separated, or *; empty: no CORS"),
    INT(max_sessions, 0, 1 << 24, "4096", "sessions held in memory (slots + host)"),
    STR(session_dir, "sessions", "directory for saved sessions"),
    DBL(max_spill_bytes, 0, 1e15, "1073741824",
        "host memory for the states of idle sessions out of their slots; past it the least "
        "recently used are saved to session_dir and dropped from memory"),
    DBL(session_ttl_s, 0, 1e9, "3600",
        "idle sessions unused for this long are deleted, saved record included (0: never)"),
    BOOL(log_requests, "true", "one log line per request on stderr"),
    STR(daemon_id, "",
        "this daemon's name in the X-Mambabyte-Daemon header of every answer; empty: "
        "<hostname>:<port>"),
    BOOL(strict_fields, "false",
         "unknown request fields get 400 (default: ignored, logged and listed in the "
         "X-Ignored-Fields header)"),
    STR(model_aliases, "",
        "comma-separated names a request's 'model' may also give for the loaded model (* for "
        "any name); another name gets 404 model_not_found"),
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Flags and env spell keys with dashes or upper case; the table uses lower snake case. */
static const key *find_key(const char *name, size_t len) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *k = KEYS[i].name;
        if (strlen(k) != len) continue;
        size_t j = 0;
        for (; j < len; j++) {
            char c = (char)tolower((unsigned char)name[j]);
            if (c == '-') c = '_';
            if (c != k[j]) break;
        }
        if (j == len) return &KEYS[i];
    }
    return NULL;
}

static int set_string(cfg *c, const key *k, const char *v, const char *src, char *err, size_t n) {
    char *dst = (char *)c + k->off;
    size_t len = strlen(v);
    if (len >= k->size)
        return fail(err, n, "%s: %s is longer than %zu bytes", src, k->name, k->size - 1);
    memcpy(dst, v, len + 1);
    return 0;
}

static int set_number(cfg *c, const key *k, double v, const char *src, char *err, size_t n) {
    if (!isfinite(v) || v < k->min || v > k->max)
        return fail(err, n, "%s: %s must be in [%g, %g]", src, k->name, k->min, k->max);
    if (k->type == K_DBL) {
        *(double *)((char *)c + k->off) = v;
        return 0;
    }
    if (v != floor(v)) return fail(err, n, "%s: %s must be an integer", src, k->name);
    *(int *)((char *)c + k->off) = (int)v;
    return 0;
}

/* Text from a flag, the environment or the table's defaults. */
static int set_text(cfg *c, const key *k, const char *v, const char *src, char *err, size_t n) {
    if (k->type == K_STR) return set_string(c, k, v, src, err, n);
    if (k->type == K_BOOL) {
        int b = !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes");
        if (!b && strcmp(v, "0") && strcmp(v, "false") && strcmp(v, "no"))
            return fail(err, n, "%s: %s must be true or false", src, k->name);
        *(int *)((char *)c + k->off) = b;
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno)
        return fail(err, n, "%s: %s must be a number, not \"%s\"", src, k->name, v);
    return set_number(c, k, d, src, err, n);
}

void cfg_defaults(cfg *c) {
    char err[256];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) set_text(c, &KEYS[i], KEYS[i].def, "default", err, 1);
}

/* Only JSON whitespace in [p, end). */
static int only_space(const char *p, const char *end) {
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') return 0;
    return 1;
}

/* A key given twice in the object before `it`: the file would mean the last one or the first
 * one depending on who reads it. Quadratic, but the loop below stops at the first unknown or
 * repeated key, so it never looks at more keys than the table has. */
static int given_before(const cJSON *root, const cJSON *it) {
    for (const cJSON *p = root->child; p != it; p = p->next)
        if (!strcmp(p->string, it->string)) return 1;
    return 0;
}

int cfg_apply_json(cfg *c, const char *text, size_t len, const char *source, char *err,
                   size_t err_len) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root || !only_space(end, text + len)) {
        cJSON_Delete(root);
        return fail(err, err_len, "%s: not valid JSON (or text after the object)", source);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = fail(err, err_len, "%s: must be a JSON object", source);
        goto out;
    }
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        const key *k = find_key(it->string, strlen(it->string));
        /* find_key accepts dashes for flags; a file must use the exact spelling. */
        if (k && !strcmp(k->name, it->string) && given_before(root, it)) {
            rc = fail(err, err_len, "%s: \"%s\" is given twice", source, k->name);
        } else if (!k || strcmp(k->name, it->string)) {
            rc = fail(err, err_len, "%s: unknown key \"%.64s\"", source, it->string);
        } else if (k->type == K_STR) {
            rc = cJSON_IsString(it)
                     ? set_string(c, k, it->valuestring, source, err, err_len)
                     : fail(err, err_len, "%s: %s must be a string", source, k->name);
        } else if (k->type == K_BOOL) {
            if (cJSON_IsBool(it))
                *(int *)((char *)c + k->off) = cJSON_IsTrue(it);
            else
                rc = fail(err, err_len, "%s: %s must be true or false", source, k->name);
        } else {
            rc = cJSON_IsNumber(it)
                     ? set_number(c, k, it->valuedouble, source, err, err_len)
                     : fail(err, err_len, "%s: %s must be a number", source, k->name);
        }
    }
out:
    cJSON_Delete(root);
    return rc;
}

static int apply_file(cfg *c, const char *path, char *err, size_t n) {
    mb_err e;
    size_t len;
    uint8_t *buf = mb_read_file(path, 1u << 24, &len, &e);
    if (!buf) return fail(err, n, "%s", e.msg);
    int rc = cfg_apply_json(c, (const char *)buf, len, path, err, n);
    free(buf);
    return rc;
}

/* config/default.json is looked for in the working directory, then relative to the binary
 * (build/<variant>/mambabyte in a checkout), then in /etc/mambabyte (the deploy image). The
 * built-in table says the same, so running without it anywhere is fine. */
static const char *find_default_json(char *buf, size_t n) {
    if (access("config/default.json", R_OK) == 0) return "config/default.json";
    ssize_t len = readlink("/proc/self/exe", buf, n - 32);
    if (len > 0) {
        buf[len] = 0;
        char *slash = strrchr(buf, '/');
        if (slash) {
            strcpy(slash, "/../../config/default.json");
            if (access(buf, R_OK) == 0) return buf;
        }
    }
    if (access("/etc/mambabyte/default.json", R_OK) == 0) return "/etc/mambabyte/default.json";
    return NULL;
}

static int is_flag(const char *a) {
    return a[0] == '-' && a[1];
}

int cfg_load(cfg *c, int argc, char **argv, char *err, size_t err_len) {
    cfg_defaults(c);
    char pathbuf[4096];
    const char *def = find_default_json(pathbuf, sizeof pathbuf);
    if (def && apply_file(c, def, err, err_len)) return -1;

    /* The config file is named by a flag or MAMBABYTE_CONFIG; find it before the other flags. */
    const char *file = getenv("MAMBABYTE_CONFIG");
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) return fail(err, err_len, "--config needs a file");
            file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        }
    }
    if (file && *file && apply_file(c, file, err, err_len)) return -1;

    extern char **environ;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "MAMBABYTE_", 10)) continue;
        const char *name = *e + 10, *eq = strchr(name, '=');
        if (!eq || !strncmp(name, "CONFIG=", 7)) continue;
        const key *k = find_key(name, (size_t)(eq - name));
        if (!k) return fail(err, err_len, "environment: unknown setting %.*s", (int)(eq - *e), *e);
        char src[128];
        snprintf(src, sizeof src, "environment MAMBABYTE_%.*s", (int)(eq - name), name);
        if (set_text(c, k, eq + 1, src, err, err_len)) return -1;
    }

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9)) continue;
        if (!is_flag(a)) return fail(err, err_len, "unexpected argument \"%s\"", a);
        const key *k;
        const char *v = NULL;
        if (!strcmp(a, "-m")) {
            k = find_key("model", 5);
        } else if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            k = find_key(name, eq ? (size_t)(eq - name) : strlen(name));
            if (eq) v = eq + 1;
        } else {
            k = NULL;
        }
        if (!k) return fail(err, err_len, "unknown flag %s (see --help)", a);
        if (!v) {
            if (i + 1 >= argc) return fail(err, err_len, "%s needs a value", a);
            v = argv[++i];
        }
        if (set_text(c, k, v, a, err, err_len)) return -1;
    }
    if (c->default_max_tokens > c->max_tokens_limit)
        return fail(err, err_len, "default_max_tokens (%d) exceeds max_tokens_limit (%d)",
                    c->default_max_tokens, c->max_tokens_limit);
    /* A chunk larger than a whole forward could never be fed; it means "as much as fits". */
    if (c->prefill_chunk > c->max_batch_tokens) c->prefill_chunk = c->max_batch_tokens;
    return 0;
}

void cfg_usage(FILE *f) {
    fprintf(f, "usage: mambabyte serve -m MODEL_DIR [--draft DIR] [--host H] [--port P] "
               "[--config FILE] [--<key> VALUE]...\n\n"
               "Settings: flag --key-name, env MAMBABYTE_KEY_NAME, config file \"key_name\"; "
               "flags win over env, env over the --config file, that over config/default.json.\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "%s", KEYS[i].name);
        for (char *p = flag; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  --%-22s %s (default: %s)\n", flag, KEYS[i].help,
                *KEYS[i].def ? KEYS[i].def : "\"\"");
    }
}
