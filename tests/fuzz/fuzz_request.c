/* fuzz_request.c: libFuzzer target for what a client controls: the request parser for every
 * endpoint (any body must give 0 with a valid request or -1 with a 4xx/5xx error, and leak
 * nothing), and the text path its output takes (UTF-8 replacement and JSON quoting). The first
 * byte picks the endpoint. */
#include "srv_request.h"
#include "srv_text.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

static void check_text(const uint8_t *data, size_t size) {
    char *out = malloc(3 * size + 1);
    size_t used = 0, len = srv_utf8_text(data, size, 1, out, &used);
    if (used != size || len > 3 * size) abort();
    /* The result is valid UTF-8: converting it again changes nothing. */
    char *again = malloc(3 * len + 1);
    size_t used2 = 0, len2 = srv_utf8_text((const uint8_t *)out, len, 0, again, &used2);
    if (used2 != len || len2 != len || memcmp(out, again, len)) abort();
    /* and its JSON literal parses back to the same text when it holds no NUL */
    char *q = srv_json_quote(out, len);
    cJSON *s = cJSON_Parse(q);
    if (!s || !cJSON_IsString(s)) abort();
    if (!memchr(out, 0, len) && strcmp(s->valuestring, out)) abort();
    cJSON_Delete(s);
    free(q);
    free(again);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    srv_api api = (srv_api)(data[0] % 3);
    srv_limits lim = {.max_prompt_bytes = 4096,
                      .max_tokens_limit = 4096,
                      .default_max_tokens = 16,
                      .max_stop = 4,
                      .max_stop_bytes = 64,
                      .max_timeout_s = 300};
    srv_gen_req r;
    srv_error e;
    if (srv_request_parse(api, (const char *)data + 1, size - 1, &lim, NULL, &r, &e) == 0) {
        if (r.prompt_len > (size_t)lim.max_prompt_bytes || r.max_tokens < 0 ||
            r.max_tokens > lim.max_tokens_limit || r.n_stops > lim.max_stop || !r.prompt)
            abort();
        for (int i = 0; i < r.n_stops; i++)
            if (!r.stops[i][0] || strlen(r.stops[i]) > (size_t)lim.max_stop_bytes) abort();
        if (r.session[0] && !srv_id_valid(r.session)) abort();
        if (r.spec_enabled < SRV_SPEC_AUTO || r.spec_enabled > SRV_SPEC_ON ||
            r.spec_max_draft < 0 || r.spec_max_draft > SRV_DRAFT_MAX || r.spec_lookup < -1 ||
            r.spec_lookup > 256)
            abort();
        if (r.logprobs < -1 || r.logprobs > SRV_TOP_MAX || !(r.pen.repetition > 0) ||
            r.pen.presence < -2 || r.pen.presence > 2 || r.pen.frequency < -2 ||
            r.pen.frequency > 2 || strlen(r.ignored) >= SRV_IGNORED_MAX)
            abort();
        for (const char *p = r.ignored; *p; p++) /* a response header: printable ASCII */
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) abort();
        srv_gen_req_free(&r);
    } else {
        if (e.status < 400 || e.status > 599 || !e.message[0]) abort();
        char *j = srv_error_json(&e);
        if (!j) abort();
        free(j);
    }
    check_text(data + 1, size - 1);
    return 0;
}
