/* lg_answer.c: reading one answer (lg.h): the events of a stream as they arrive (Server-Sent
 * Events: "data:" lines, ended by a blank line; ":" comments such as keep-alives), a whole JSON
 * answer, or a failure's message. The text's bytes (or a native answer's exact bytes), the time of
 * the first text and the gaps between text events, the usage, and any error go into the record.
 * Whatever the server sends is only counted: nothing in it can crash the client
 * (tests/fuzz/fuzz_answer.c). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lg.h"

static void set_why(lg_rec *r, const char *s) {
    snprintf(r->why, sizeof r->why, "%s", s);
}

/* cJSON ends a string at a NUL, and a byte model may generate one ("\u0000" in the JSON): such
 * escapes become "\u0001" before parsing, which keeps every length. */
static void mask_nul_escapes(char *s, size_t n) {
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in_str) {
            in_str = s[i] == '"';
        } else if (s[i] == '"') {
            in_str = 0;
        } else if (s[i] == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4)) s[i + 5] = '1';
            i++;
        }
    }
}

/* A count in the answer: a number from 0 to 2^53, else dflt. */
static long count_or(const cJSON *o, const char *name, long dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0))
        return dflt;
    return (long)v->valuedouble;
}

/* Bytes of an exact base64 text: 3 per 4 characters, less the padding. */
static size_t base64_bytes(const char *s) {
    size_t n = strlen(s);
    if (n % 4) return n / 4 * 3;
    return n / 4 * 3 - (n >= 1 && s[n - 1] == '=') - (n >= 2 && s[n - 2] == '=');
}

/* One JSON answer (a whole body, or one event of a stream) seen at time now: its text, its
 * usage, or its error. */
static void handle_json(lg_answer *a, char *text, size_t n, double now) {
    mask_nul_escapes(text, n);
    cJSON *j = cJSON_ParseWithLength(text, n);
    if (!cJSON_IsObject(j)) {
        if (a->rec->fail == LG_OK) {
            a->rec->fail = LG_BAD;
            set_why(a->rec, "an answer that is not a JSON object");
        }
        cJSON_Delete(j);
        return;
    }
    a->events++;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (err && !cJSON_IsNull(err)) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (a->rec->fail == LG_OK) {
            a->rec->fail = LG_STREAM;
            set_why(a->rec, cJSON_IsString(m) ? m->valuestring : "an error without a message");
        }
        cJSON_Delete(j);
        return;
    }
    size_t got = 0;
    const cJSON *b64 = cJSON_GetObjectItemCaseSensitive(j, "bytes_base64");
    if (a->native && cJSON_IsString(b64)) {
        got = base64_bytes(b64->valuestring);
    } else {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "choices");
        if (!t && cJSON_IsArray(ch) && cJSON_GetArraySize(ch) > 0)
            t = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(ch, 0), "text");
        if (cJSON_IsString(t)) got = strlen(t->valuestring);
    }
    if (got > 0) {
        if (a->rec->t_first < 0)
            a->rec->t_first = now - a->t0;
        else if (a->run && lg_run_gap(a->run, now - a->last_text) && a->rec->fail == LG_OK)
            a->rec->fail = LG_BAD, set_why(a->rec, "the client ran out of memory");
        a->last_text = now;
        a->rec->out_bytes += got;
        a->rec->chunks++;
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    if (cJSON_IsObject(u)) {
        a->rec->usage_prompt = count_or(u, a->native ? "prompt_bytes" : "prompt_tokens", -1);
        a->rec->usage_out = count_or(u, a->native ? "completion_bytes" : "completion_tokens", -1);
    }
    cJSON_Delete(j);
}

/* Handles every whole event in a->buf (events end at a blank line; "data:" lines carry the
 * payload, ":" lines are comments such as keep-alives) and keeps the partial one. */
static void handle_events(lg_answer *a, double now, int final) {
    size_t at = 0;
    for (;;) {
        char *end = a->len > at ? strstr(a->buf + at, "\n\n") : NULL;
        char *crend = a->len > at ? strstr(a->buf + at, "\r\n\r\n") : NULL;
        size_t sep = 2;
        if (crend && (!end || crend < end)) end = crend, sep = 4;
        if (!end && final && at < a->len) end = a->buf + a->len, sep = 0;
        if (!end) break;
        /* the data lines of this event, joined by newlines, in place */
        char *ev = a->buf + at, *data = NULL;
        size_t dn = 0;
        *end = 0;
        for (char *line = ev; line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            size_t ll = strlen(line);
            if (ll && line[ll - 1] == '\r') line[--ll] = 0;
            if (!strncmp(line, "data:", 5)) {
                char *v = line + 5 + (line[5] == ' ');
                size_t vl = strlen(v);
                if (!data) data = ev;
                if (dn) data[dn++] = '\n';
                memmove(data + dn, v, vl);
                dn += vl;
            }
            line = nl ? nl + 1 : NULL;
        }
        if (data) {
            data[dn] = 0;
            if (!strcmp(data, "[DONE]"))
                a->done = 1;
            else
                handle_json(a, data, dn, now);
        }
        at = (size_t)(end - a->buf) + sep;
        if (at >= a->len) break;
    }
    if (at >= a->len) {
        a->len = 0;
    } else if (at > 0) {
        memmove(a->buf, a->buf + at, a->len - at);
        a->len -= at;
    }
    if (a->buf) a->buf[a->len] = 0;
}

int lg_answer_add(lg_answer *a, const char *data, size_t n, int events, size_t keep, double now) {
    if (keep && a->len + n > keep) n = a->len < keep ? keep - a->len : 0;
    if (a->len + n + 1 > a->cap) {
        size_t cap = (a->len + n + 1) * 2;
        char *b = realloc(a->buf, cap);
        if (!b) return -1;
        a->buf = b, a->cap = cap;
    }
    memcpy(a->buf + a->len, data, n);
    a->len += n;
    a->buf[a->len] = 0;
    if (events) handle_events(a, now, 0);
    return 0;
}

void lg_answer_stream_end(lg_answer *a, double now) {
    lg_rec *r = a->rec;
    handle_events(a, now, 1);
    if (r->fail == LG_OK && !a->events) {
        r->fail = LG_BAD;
        set_why(r, "a 200 answer without a data event");
    } else if (r->fail == LG_OK && !a->done) {
        r->fail = LG_BAD;
        set_why(r, "the stream ended before data: [DONE]");
    }
}

void lg_answer_whole(lg_answer *a, double now) {
    char empty[1] = "";
    handle_json(a, a->buf ? a->buf : empty, a->len, now);
}

void lg_answer_error(lg_answer *a) {
    cJSON *j = a->buf ? cJSON_ParseWithLength(a->buf, a->len) : NULL;
    const cJSON *m =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
    if (cJSON_IsString(m))
        set_why(a->rec, m->valuestring);
    else if (a->buf && a->len)
        snprintf(a->rec->why, sizeof a->rec->why, "%.*s", (int)strcspn(a->buf, "\r\n"), a->buf);
    cJSON_Delete(j);
}

void lg_answer_free(lg_answer *a) {
    free(a->buf);
    a->buf = NULL;
    a->len = a->cap = 0;
}
