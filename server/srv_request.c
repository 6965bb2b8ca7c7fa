/* srv_request.c: the request parser. Everything a client sends passes through here first, so
 * every field is checked for type and range and every failure names the field. */
#include "srv_request.h"
#include "srv_base64.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int srv_error_set(srv_error *e, int status, const char *type, const char *code, const char *fmt,
                  ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = status, e->type = type, e->code = code;
    return -1;
}

char *srv_error_json(const srv_error *e) {
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(err, "message", e->message);
    cJSON_AddStringToObject(err, "type", e->type);
    cJSON_AddStringToObject(err, "code", e->code);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

int srv_id_valid(const char *s) {
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n < SRV_ID_MAX;
}

static int bad(srv_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(srv_error *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = 400, e->type = "invalid_request_error", e->code = "invalid_value";
    return -1;
}

/* A number field within [lo, hi]; integer when asked. Absent: leaves *out as it is. */
static int number_field(const cJSON *o, const char *name, double lo, double hi, int integer,
                        double *out, srv_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return bad(e, "'%s' must be a number", name);
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi) return bad(e, "'%s' must be in [%g, %g]", name, lo, hi);
    if (integer && d != floor(d)) return bad(e, "'%s' must be an integer", name);
    *out = d;
    return 0;
}

/* OpenAI fields this server accepts only at their default: anything else is refused, not
 * silently ignored, so a client never believes it got what it did not. */
static int default_only(const cJSON *o, srv_error *e) {
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "suffix")) && !cJSON_IsNull(v) &&
        !(cJSON_IsString(v) && !v->valuestring[0]))
        return bad(e, "'suffix' must be \"\" or absent (a byte model completes at the end)");
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "ignore_eos")) && !cJSON_IsNull(v) &&
        !cJSON_IsBool(v))
        return bad(e, "'ignore_eos' must be true or false");
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "response_format")) && !cJSON_IsNull(v)) {
        const cJSON *t = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "type") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return bad(e, "'response_format' must be {\"type\": \"text\"}");
    }
    return 0;
}

static int known_field(srv_api api, const char *name) {
    static const char *const common[] = {"prompt",
                                         "max_tokens",
                                         "temperature",
                                         "top_p",
                                         "top_k",
                                         "min_p",
                                         "seed",
                                         "stop",
                                         "stream",
                                         "user",
                                         "model",
                                         "speculative",
                                         "presence_penalty",
                                         "frequency_penalty",
                                         "repetition_penalty",
                                         "logit_bias"};
    static const char *const openai[] = {"n",
                                         "best_of",
                                         "echo",
                                         "logprobs",
                                         "suffix",
                                         "stream_options",
                                         "max_completion_tokens",
                                         "ignore_eos",
                                         "response_format"};
    static const char *const native[] = {"prompt_base64", "session", "timeout"};
    if (api == SRV_API_SESSION_CREATE)
        return !strcmp(name, "prompt") || !strcmp(name, "prompt_base64");
    for (size_t i = 0; i < sizeof common / sizeof *common; i++)
        if (!strcmp(name, common[i])) return 1;
    const char *const *extra = api == SRV_API_COMPLETIONS ? openai : native;
    size_t n = api == SRV_API_COMPLETIONS ? sizeof openai / sizeof *openai
                                          : sizeof native / sizeof *native;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, extra[i])) return 1;
    return 0;
}

/* Adds name (prefix.name when prefix is given) to r->ignored, as header-safe text; a list that
 * would not fit ends with "...". */
static void note_ignored(srv_gen_req *r, const char *prefix, const char *name) {
    char one[128];
    size_t n = 0;
    for (const char *p = prefix; p && *p && n + 1 < sizeof one; p++) one[n++] = *p;
    if (prefix && n + 1 < sizeof one) one[n++] = '.';
    for (const char *p = name; *p && n + 1 < sizeof one; p++) {
        unsigned char c = (unsigned char)*p;
        one[n++] = c > 0x20 && c < 0x7f && c != ',' ? (char)c : '?';
    }
    one[n] = 0;
    size_t have = strlen(r->ignored);
    if (have >= 3 && !strcmp(r->ignored + have - 3, "...")) return;
    if (have + 2 + n + 5 >= sizeof r->ignored) {
        snprintf(r->ignored + have, sizeof r->ignored - have, "%s...", have ? ", " : "");
        return;
    }
    snprintf(r->ignored + have, sizeof r->ignored - have, "%s%s", have ? ", " : "", one);
}

/* One prompt: a string, or token ids, which for a byte model are the byte values 0-255. */
static int prompt_one(const cJSON *p, const srv_limits *lim, uint8_t **out, size_t *len,
                      srv_error *e) {
    if (cJSON_IsString(p)) {
        *len = strlen(p->valuestring);
        if (*len > (size_t)lim->max_prompt_bytes)
            return bad(e, "a prompt has %zu bytes; at most %d are allowed", *len,
                       lim->max_prompt_bytes);
        if (!(*out = (uint8_t *)strdup(p->valuestring)))
            return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    } else if (cJSON_IsArray(p)) {
        int n = cJSON_GetArraySize(p);
        if (n > lim->max_prompt_bytes)
            return bad(e, "a prompt has %d bytes; at most %d are allowed", n,
                       lim->max_prompt_bytes);
        if (!(*out = malloc((size_t)n + 1)))
            return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
        *len = 0;
        for (const cJSON *it = p->child; it; it = it->next) {
            double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
            if (d < 0 || d > 255 || d != floor(d))
                return bad(e, "'prompt' token ids are bytes: integers in [0, 255]");
            (*out)[(*len)++] = (uint8_t)d;
        }
        (*out)[*len] = 0;
    } else {
        return bad(e, "'prompt' must be a string, a list of byte values, or a list of those");
    }
    if (*len == 0) return bad(e, "'prompt' must not be empty");
    return 0;
}

/* OpenAI's forms of "prompt": one prompt (prompt_one), or a list of them: the first in
 * r->prompt, the others in r->more. */
static int prompt_value(const cJSON *p, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    if (!cJSON_IsArray(p) || !p->child || cJSON_IsNumber(p->child))
        return prompt_one(p, lim, &r->prompt, &r->prompt_len, e);
    int n = cJSON_GetArraySize(p);
    if (n > SRV_PROMPTS_MAX)
        return bad(e, "'prompt' lists %d prompts; at most %d", n, SRV_PROMPTS_MAX);
    if (n > 1 && (!(r->more = calloc((size_t)n - 1, sizeof *r->more)) ||
                  !(r->more_len = calloc((size_t)n - 1, sizeof *r->more_len))))
        return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    if (prompt_one(p->child, lim, &r->prompt, &r->prompt_len, e)) return -1;
    for (const cJSON *it = p->child->next; it; it = it->next) {
        if (prompt_one(it, lim, &r->more[r->n_more], &r->more_len[r->n_more], e)) {
            r->n_more++; /* freed with the request, whatever it holds */
            return -1;
        }
        r->n_more++;
    }
    return 0;
}

static int parse_prompt(const cJSON *o, srv_api api, const srv_limits *lim, srv_gen_req *r,
                        srv_error *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    /* the native fields are unknown (ignored) on the OpenAI endpoint */
    const cJSON *b =
        api == SRV_API_COMPLETIONS ? NULL : cJSON_GetObjectItemCaseSensitive(o, "prompt_base64");
    if (p && b) return bad(e, "give 'prompt' or 'prompt_base64', not both");
    if (p && api == SRV_API_COMPLETIONS) {
        if (prompt_value(p, lim, r, e)) return -1;
    } else if (p) {
        if (!cJSON_IsString(p)) return bad(e, "'prompt' must be a string");
        r->prompt_len = strlen(p->valuestring);
        r->prompt = (uint8_t *)strdup(p->valuestring);
    } else if (b) {
        if (!cJSON_IsString(b)) return bad(e, "'prompt_base64' must be a string");
        r->prompt = srv_base64_decode(b->valuestring, strlen(b->valuestring), &r->prompt_len);
        if (!r->prompt) return bad(e, "'prompt_base64' is not valid base64");
    } else if (api == SRV_API_COMPLETIONS) {
        return bad(e, "'prompt' is required");
    } else {
        r->prompt = (uint8_t *)strdup("");
    }
    if (!r->prompt) return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    if (r->prompt_len > (size_t)lim->max_prompt_bytes)
        return bad(e, "the prompt has %zu bytes; at most %d are allowed", r->prompt_len,
                   lim->max_prompt_bytes);
    return 0;
}

/* presence_penalty, frequency_penalty (OpenAI's [-2, 2]), repetition_penalty (vLLM's, > 0) and
 * logit_bias: {"<byte 0-255>": bias in [-100, 100]}. */
static int parse_penalties(const cJSON *o, srv_gen_req *r, srv_error *e) {
    srv_penalty *p = &r->pen;
    double d = 0;
    if (number_field(o, "presence_penalty", -2, 2, 0, &d, e)) return -1;
    p->presence = (float)d;
    d = 0;
    if (number_field(o, "frequency_penalty", -2, 2, 0, &d, e)) return -1;
    p->frequency = (float)d;
    d = 1;
    if (number_field(o, "repetition_penalty", 0, 10, 0, &d, e)) return -1;
    if (d <= 0) return bad(e, "'repetition_penalty' must be in (0, 10]");
    p->repetition = (float)d;
    p->on = p->presence != 0 || p->frequency != 0 || p->repetition != 1;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "logit_bias");
    if (!b || cJSON_IsNull(b)) return 0;
    if (!cJSON_IsObject(b)) return bad(e, "'logit_bias' must be an object");
    for (const cJSON *it = b->child; it; it = it->next) {
        const char *k = it->string;
        char *end = NULL;
        long v = strtol(k, &end, 10);
        if (!k[0] || *end || k[0] < '0' || k[0] > '9' || (k[0] == '0' && k[1]) || v > 255)
            return bad(e, "'logit_bias' keys are byte values \"0\"-\"255\" (got \"%.16s\")", k);
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || fabs(it->valuedouble) > 100)
            return bad(e, "'logit_bias' values must be numbers in [-100, 100]");
        p->bias[v] = (float)it->valuedouble;
        p->on |= p->bias[v] != 0;
    }
    return 0;
}

/* The OpenAI extras: logprobs, echo, stream_options, max_completion_tokens. */
static int parse_openai(const cJSON *o, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    if (default_only(o, e)) return -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "echo");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v)) return bad(e, "'echo' must be true or false");
        r->echo = cJSON_IsTrue(v);
    }
    double d = 1;
    if (number_field(o, "n", 1, SRV_CHOICES_MAX, 1, &d, e)) return -1;
    r->n = (int)d;
    if (number_field(o, "best_of", 1, SRV_CHOICES_MAX, 1, &d, e)) return -1;
    r->best_of = (int)d;
    if (r->best_of < r->n) return bad(e, "'best_of' must be at least 'n'");
    if (r->best_of > r->n && r->stream) return bad(e, "'best_of' above 'n' cannot stream");
    if ((r->n_more + 1) * r->best_of > SRV_CHOICES_MAX)
        return bad(e, "%d prompts x %d completions: at most %d completions per request",
                   r->n_more + 1, r->best_of, SRV_CHOICES_MAX);
    d = -1;
    if (number_field(o, "logprobs", 0, SRV_TOP_MAX, 1, &d, e)) return -1;
    r->logprobs = (int)d;
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "stream_options")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsObject(v)) return bad(e, "'stream_options' must be an object");
        for (const cJSON *it = v->child; it; it = it->next) {
            if (strcmp(it->string, "include_usage")) {
                if (lim->strict_fields)
                    return bad(e, "unknown field 'stream_options.%.64s'", it->string);
                note_ignored(r, "stream_options", it->string);
            } else if (!cJSON_IsNull(it)) {
                if (!cJSON_IsBool(it))
                    return bad(e, "'stream_options.include_usage' must be true or false");
                r->include_usage = cJSON_IsTrue(it);
            }
        }
    }
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "max_tokens");
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(o, "max_completion_tokens");
    if (m && !cJSON_IsNull(m) && mc && !cJSON_IsNull(mc) &&
        !(cJSON_IsNumber(m) && cJSON_IsNumber(mc) && m->valuedouble == mc->valuedouble))
        return bad(e, "'max_tokens' and 'max_completion_tokens' differ");
    d = r->max_tokens;
    if (number_field(o, "max_completion_tokens", 0, lim->max_tokens_limit, 1, &d, e)) return -1;
    r->max_tokens = (int)d;
    /* the log-probabilities every completion keeps (srv_job.c: per byte its own, and k
     * alternatives with theirs), bounded: one request must not take gigabytes */
    if (r->logprobs >= 0) {
        double bytes = 0;
        for (int p = 0; p <= r->n_more; p++)
            bytes += (double)r->max_tokens +
                     (r->echo ? (double)(p ? r->more_len[p - 1] : r->prompt_len) : 0);
        bytes *= r->best_of * (double)(sizeof(double) + (size_t)r->logprobs * (1 + sizeof(double)));
        if (bytes > SRV_SCORES_MAX)
            return bad(e,
                       "log-probabilities of %.0f MB asked for (bytes x completions x "
                       "alternatives); at most %d MB: ask for fewer",
                       bytes / (1 << 20), SRV_SCORES_MAX >> 20);
    }
    return 0;
}

static int parse_stop(const cJSON *o, const srv_limits *lim, srv_gen_req *r, srv_error *e) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!s || cJSON_IsNull(s)) return 0;
    int n = cJSON_IsString(s) ? 1 : cJSON_IsArray(s) ? cJSON_GetArraySize(s) : -1;
    if (n < 0) return bad(e, "'stop' must be a string or an array of strings");
    if (n > lim->max_stop) return bad(e, "'stop' has %d entries; at most %d", n, lim->max_stop);
    r->stops = calloc((size_t)n + 1, sizeof *r->stops);
    if (!r->stops) return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    const cJSON *it = cJSON_IsString(s) ? s : s->child;
    for (int i = 0; i < n; i++, it = it->next) {
        if (!cJSON_IsString(it)) return bad(e, "'stop' entries must be strings");
        size_t len = strlen(it->valuestring);
        if (len == 0) return bad(e, "'stop' entries must not be empty");
        if (len > (size_t)lim->max_stop_bytes)
            return bad(e, "'stop' entries may have at most %d bytes", lim->max_stop_bytes);
        if (!(r->stops[i] = strdup(it->valuestring)))
            return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
        r->n_stops = i + 1;
    }
    return 0;
}

/* The session named by the X-Session-Id header h, which must agree with the body's. */
static int session_header(srv_api api, const char *h, srv_gen_req *r, srv_error *e) {
    if (api != SRV_API_GENERATE)
        return bad(e, "the X-Session-Id header is for /v1/generate and /v1/sessions/<id>");
    if (!srv_id_valid(h))
        return bad(e, "X-Session-Id must be a session id (1-64 of A-Z a-z 0-9 _ -)");
    if (r->session[0] && strcmp(r->session, h))
        return bad(e, "X-Session-Id names session %s but 'session' names %s", h, r->session);
    strcpy(r->session, h);
    return 0;
}

/* "speculative": {"enabled": true|false|null, "max_draft_bytes": 1-32, "lookup": 0-256}, an
 * extension of the OpenAI request on both endpoints. */
static int parse_speculative(const cJSON *o, srv_gen_req *r, srv_error *e) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "speculative");
    if (!s || cJSON_IsNull(s)) return 0;
    if (!cJSON_IsObject(s)) return bad(e, "'speculative' must be an object");
    for (const cJSON *it = s->child; it; it = it->next)
        if (strcmp(it->string, "enabled") && strcmp(it->string, "max_draft_bytes") &&
            strcmp(it->string, "lookup"))
            return bad(e, "unknown field 'speculative.%.64s'", it->string);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, "enabled");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v)) return bad(e, "'speculative.enabled' must be true or false");
        r->spec_enabled = cJSON_IsTrue(v) ? SRV_SPEC_ON : SRV_SPEC_OFF;
    }
    double d = 0;
    if (number_field(s, "max_draft_bytes", 1, SRV_DRAFT_MAX, 1, &d, e)) return -1;
    r->spec_max_draft = (int)d;
    d = -1;
    if (number_field(s, "lookup", 0, 256, 1, &d, e)) return -1;
    r->spec_lookup = (int)d;
    return 0;
}

static int parse_object(const cJSON *o, srv_api api, const srv_limits *lim, const char *header,
                        srv_gen_req *r, srv_error *e) {
    for (const cJSON *it = o->child; it; it = it->next) {
        if (known_field(api, it->string)) continue;
        if (lim->strict_fields) return bad(e, "unknown field '%.64s'", it->string);
        note_ignored(r, NULL, it->string);
    }
    if (parse_prompt(o, api, lim, r, e)) return -1;
    if (api == SRV_API_SESSION_CREATE) return 0;

    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "model")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v)) return bad(e, "'model' must be a string");
        if (!(r->model = strdup(v->valuestring)))
            return srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory");
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "user")) && !cJSON_IsString(v))
        return bad(e, "'user' must be a string");
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "stream")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v)) return bad(e, "'stream' must be true or false");
        r->stream = cJSON_IsTrue(v);
    }
    if (api == SRV_API_GENERATE && (v = cJSON_GetObjectItemCaseSensitive(o, "session")) &&
        !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v) || !srv_id_valid(v->valuestring))
            return bad(e, "'session' must be a session id (1-64 of A-Z a-z 0-9 _ -)");
        strcpy(r->session, v->valuestring);
    }
    if (header && session_header(api, header, r, e)) return -1;

    double d = lim->default_max_tokens;
    if (number_field(o, "max_tokens", 0, lim->max_tokens_limit, 1, &d, e)) return -1;
    r->max_tokens = (int)d;
    if (api == SRV_API_COMPLETIONS && parse_openai(o, lim, r, e)) return -1;
    if (parse_penalties(o, r, e)) return -1;
    d = 1;
    if (number_field(o, "temperature", 0, 2, 0, &d, e)) return -1;
    r->sampling.temperature = (float)d;
    d = 1;
    if (number_field(o, "top_p", 0, 1, 0, &d, e)) return -1;
    if (d <= 0) return bad(e, "'top_p' must be in (0, 1]");
    r->sampling.top_p = (float)d;
    d = 0;
    if (number_field(o, "top_k", 0, 256, 1, &d, e)) return -1;
    r->sampling.top_k = (int)d;
    d = 0;
    if (number_field(o, "min_p", 0, 1, 0, &d, e)) return -1;
    r->sampling.min_p = (float)d;
    d = -1;
    /* JSON numbers are doubles: seeds above 2^53 would silently change. */
    if (number_field(o, "seed", 0, 9007199254740992.0, 1, &d, e)) return -1;
    r->seed_given = d >= 0;
    r->sampling.seed = d >= 0 ? (uint64_t)d : 0;
    d = lim->max_timeout_s;
    if (api == SRV_API_GENERATE && number_field(o, "timeout", 0.001, lim->max_timeout_s, 0, &d, e))
        return -1;
    r->timeout_s = d;
    if (parse_speculative(o, r, e)) return -1;
    if (api == SRV_API_GENERATE && !r->session[0] && r->prompt_len == 0)
        return bad(e, "'prompt' must not be empty without a session");

    return parse_stop(o, lim, r, e);
}

/* cJSON ends its strings at a NUL, so a "\u0000" escape would silently cut a prompt or a stop
 * string short: such bodies are refused instead (prompt_base64 carries any byte). */
static int has_escaped_nul(const char *body, size_t len) {
    for (size_t i = 0; i + 1 < len; i++) {
        if (body[i] != '\\') continue;
        if (body[i + 1] == 'u' && i + 5 < len && !memcmp(body + i + 2, "0000", 4)) return 1;
        i++; /* skip the escaped character, so an escaped backslash cannot start another escape */
    }
    return 0;
}

static int by_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The first key that appears twice in an object anywhere in v, or NULL. cJSON keeps both
 * members and its lookups find the first, so {"max_tokens": 1, "max_tokens": 9999} would mean
 * whatever a reader of the body guesses: refused instead. Sorting keeps a body with many keys
 * cheap. */
static const char *duplicate_key(const cJSON *v, int *oom) {
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
    int n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        const char *d = duplicate_key(c, oom);
        if (d || *oom) return d;
        n++;
    }
    if (!cJSON_IsObject(v) || n < 2) return NULL;
    const cJSON **k = malloc((size_t)n * sizeof *k);
    if (!k) {
        *oom = 1;
        return NULL;
    }
    n = 0;
    for (const cJSON *c = v->child; c; c = c->next) k[n++] = c;
    qsort(k, (size_t)n, sizeof *k, by_key);
    const char *d = NULL;
    for (int i = 1; i < n && !d; i++)
        if (!strcmp(k[i - 1]->string, k[i]->string)) d = k[i]->string;
    free(k);
    return d;
}

/* Only JSON whitespace in [p, end): what may follow the value. */
static int only_space(const char *p, const char *end) {
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') return 0;
    return 1;
}

int srv_request_parse(srv_api api, const char *body, size_t len, const srv_limits *lim,
                      const char *session_header, srv_gen_req *r, srv_error *e) {
    memset(r, 0, sizeof *r);
    r->api = api;
    r->spec_enabled = SRV_SPEC_AUTO;
    r->spec_lookup = -1;
    r->logprobs = -1;
    r->n = r->best_of = 1;
    r->pen.repetition = 1;
    mb_sampling_default(&r->sampling);
    if (has_escaped_nul(body, len))
        return bad(e, "strings may not contain \\u0000 (NUL); send such a prompt as prompt_base64");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    const char *dup = NULL;
    int rc, oom = 0;
    if (!root)
        rc = srv_error_set(e, 400, "invalid_request_error", "invalid_json",
                           "the body is not valid JSON");
    else if (!only_space(end, body + len))
        rc = srv_error_set(e, 400, "invalid_request_error", "invalid_json",
                           "the body has more than one JSON value (text after the object)");
    else if ((dup = duplicate_key(root, &oom)) || oom)
        rc = oom ? srv_error_set(e, 500, "server_error", "out_of_memory", "out of memory")
                 : srv_error_set(e, 400, "invalid_request_error", "duplicate_key",
                                 "the key '%.64s' appears twice in an object", dup);
    else if (!cJSON_IsObject(root))
        rc = bad(e, "the body must be a JSON object");
    else
        rc = parse_object(root, api, lim, session_header, r, e);
    cJSON_Delete(root);
    if (rc) srv_gen_req_free(r);
    return rc;
}

int srv_gen_req_copy(const srv_gen_req *r, const uint8_t *p, size_t plen, uint64_t seed,
                     srv_gen_req *dst) {
    *dst = *r;
    dst->more = NULL, dst->more_len = NULL, dst->n_more = 0;
    dst->prompt = NULL, dst->stops = NULL, dst->n_stops = 0, dst->model = NULL;
    dst->sampling.seed = seed;
    int ok = (dst->prompt = malloc(plen + 1)) != NULL;
    if (ok) memcpy(dst->prompt, p, plen), dst->prompt[plen] = 0, dst->prompt_len = plen;
    if (ok && r->model) ok = (dst->model = strdup(r->model)) != NULL;
    if (ok && r->n_stops)
        ok = (dst->stops = calloc((size_t)r->n_stops + 1, sizeof *r->stops)) != NULL;
    for (int i = 0; ok && i < r->n_stops; i++, dst->n_stops++)
        ok = (dst->stops[i] = strdup(r->stops[i])) != NULL;
    if (!ok) srv_gen_req_free(dst);
    return ok ? 0 : -1;
}

void srv_gen_req_free(srv_gen_req *r) {
    free(r->prompt);
    if (r->stops)
        for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->stops);
    free(r->model);
    for (int i = 0; i < r->n_more; i++) free(r->more[i]);
    free(r->more);
    free(r->more_len);
    memset(r, 0, sizeof *r);
}
