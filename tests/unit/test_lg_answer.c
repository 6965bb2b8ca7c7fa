/* test_lg_answer.c: loadgen's parts that need no server: reading answers (SSE events split
 * anywhere, CRLF, comments, errors, NUL escapes, native bytes, whole answers, failures), the
 * latency summaries, prompts cut from a file of documents, and the arrival gaps. */
#include "check.h"
#include "lg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char STREAM[] = "data: {\"choices\":[{\"text\":\"He\",\"index\":0}]}\n\n"
                             ": keep-alive\n\n"
                             "data: {\"choices\":[{\"text\":\"llo\\u0000!\",\"index\":0}]}\n\n"
                             "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}],"
                             "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n"
                             "data: [DONE]\n\n";

/* Reads body in pieces of `piece` bytes (0: at once) as a stream; returns the record. */
static lg_rec read_stream(const char *body, size_t n, size_t piece, int native) {
    lg_rec r = {0};
    r.t_first = -1, r.usage_out = r.usage_prompt = -1;
    lg_run run = {0};
    lg_answer a = {0};
    a.native = native, a.rec = &r, a.run = &run;
    for (size_t at = 0; at < n;) {
        size_t k = piece && n - at > piece ? piece : n - at;
        CHECK(!lg_answer_add(&a, body + at, k, 1, 0, (double)at), "add");
        at += k;
    }
    lg_answer_stream_end(&a, (double)n);
    CHECK(run.n_gaps == (r.chunks ? r.chunks - 1 : 0), "%zu gaps for %zu chunks", run.n_gaps,
          r.chunks);
    lg_answer_free(&a);
    lg_run_free(&run);
    return r;
}

static void test_stream_split_anywhere(void) {
    const size_t n = strlen(STREAM);
    for (size_t piece = 0; piece <= n; piece++) {
        lg_rec r = read_stream(STREAM, n, piece, 0);
        /* "He" + "llo\0!" (the NUL escape counted as one byte) */
        CHECK(r.fail == LG_OK && r.out_bytes == 7 && r.chunks == 2, "piece %zu: %d %zu %zu %s",
              piece, r.fail, r.out_bytes, r.chunks, r.why);
        CHECK(r.usage_out == 7 && r.usage_prompt == 5, "usage %ld %ld", r.usage_out,
              r.usage_prompt);
        CHECK(r.t_first >= 0, "first text seen");
    }
    /* the same with CRLF line ends and a data line split in two */
    const char crlf[] = "data: {\"choices\":\r\ndata: [{\"text\":\"abc\"}]}\r\n\r\n"
                        "data: [DONE]\r\n\r\n";
    lg_rec r = read_stream(crlf, strlen(crlf), 3, 0);
    CHECK(r.fail == LG_OK && r.out_bytes == 3, "crlf: %d %zu %s", r.fail, r.out_bytes, r.why);
}

static void test_stream_failures(void) {
    const char cut[] = "data: {\"choices\":[{\"text\":\"abc\"}]}\n\n";
    lg_rec r = read_stream(cut, strlen(cut), 0, 0);
    CHECK(r.fail == LG_BAD && strstr(r.why, "[DONE]"), "no [DONE]: %d %s", r.fail, r.why);
    const char err[] = "data: {\"choices\":[{\"text\":\"ab\"}]}\n\n"
                       "data: {\"error\":{\"message\":\"the device failed\",\"code\":\"x\"}}\n\n"
                       "data: [DONE]\n\n";
    r = read_stream(err, strlen(err), 5, 0);
    CHECK(r.fail == LG_STREAM && !strcmp(r.why, "the device failed") && r.out_bytes == 2,
          "error event: %d %s", r.fail, r.why);
    const char junk[] = "data: {not json\n\ndata: [DONE]\n\n";
    r = read_stream(junk, strlen(junk), 0, 0);
    CHECK(r.fail == LG_BAD, "junk: %d", r.fail);
    r = read_stream("", 0, 0, 0);
    CHECK(r.fail == LG_BAD && strstr(r.why, "without a data event"), "empty: %s", r.why);
    /* usage that is no count is ignored, not cast */
    const char big[] = "data: {\"usage\":{\"completion_tokens\":1e300,\"prompt_tokens\":-4}}\n\n"
                       "data: [DONE]\n\n";
    r = read_stream(big, strlen(big), 0, 0);
    CHECK(r.fail == LG_OK && r.usage_out == -1 && r.usage_prompt == -1, "usage %ld %ld",
          r.usage_out, r.usage_prompt);
}

static void test_native_bytes(void) {
    /* "\xff\x00ab" in base64, and its text with U+FFFD: the exact bytes count */
    const char s[] = "data: {\"text\":\"\\ufffd\\u0000ab\",\"bytes_base64\":\"/wBhYg==\"}\n\n"
                     "data: {\"object\":\"generation.done\",\"usage\":{\"prompt_bytes\":3,"
                     "\"completion_bytes\":4,\"generated_bytes\":4}}\n\ndata: [DONE]\n\n";
    lg_rec r = read_stream(s, strlen(s), 7, 1);
    CHECK(r.fail == LG_OK && r.out_bytes == 4 && r.usage_out == 4 && r.usage_prompt == 3,
          "native: %d %zu %ld %s", r.fail, r.out_bytes, r.usage_out, r.why);
    r = read_stream(s, strlen(s), 7, 0); /* read as text: U+FFFD is 3 bytes */
    CHECK(r.out_bytes == 6 && r.usage_out == -1, "as text: %zu %ld", r.out_bytes, r.usage_out);
}

static void test_whole_and_failed(void) {
    lg_rec r = {0};
    r.t_first = -1;
    lg_answer a = {0};
    a.rec = &r;
    const char whole[] = "{\"choices\":[{\"text\":\"hello\"}],\"usage\":{\"completion_tokens\":5}}";
    CHECK(!lg_answer_add(&a, whole, 10, 0, 0, 1.0), "add");
    CHECK(!lg_answer_add(&a, whole + 10, strlen(whole) - 10, 0, 0, 2.0), "add");
    lg_answer_whole(&a, 3.0);
    CHECK(r.fail == LG_OK && r.out_bytes == 5 && r.usage_out == 5 && r.t_first == 3.0,
          "whole: %d %zu %g", r.fail, r.out_bytes, r.t_first);
    lg_answer_free(&a);
    /* a failure keeps `keep` bytes at most, and its message */
    memset(&r, 0, sizeof r);
    lg_answer b = {0};
    b.rec = &r;
    const char e429[] = "{\"error\":{\"message\":\"the queue is full\",\"type\":\"x\"}}";
    CHECK(!lg_answer_add(&b, e429, strlen(e429), 0, 4096, 0), "add");
    CHECK(!lg_answer_add(&b, e429, strlen(e429), 0, 60, 0), "add past keep");
    CHECK(b.len == 60, "kept %zu", b.len);
    lg_answer_free(&b);
    b.rec = &r;
    CHECK(!lg_answer_add(&b, e429, strlen(e429), 0, 4096, 0), "add");
    lg_answer_error(&b);
    CHECK(!strcmp(r.why, "the queue is full"), "why: %s", r.why);
    lg_answer_free(&b);
    const char html[] = "<html>Bad Gateway</html>\r\nmore";
    CHECK(!lg_answer_add(&b, html, strlen(html), 0, 4096, 0), "add");
    lg_answer_error(&b);
    CHECK(!strcmp(r.why, "<html>Bad Gateway</html>"), "why: %s", r.why);
    lg_answer_free(&b);
}

static void test_stats(void) {
    double v[] = {5, 1, 4, 2, 3};
    lg_stat s = lg_stats(v, 5);
    CHECK(s.n == 5 && s.mean == 3 && s.median == 3 && s.max == 5, "%g %g %g", s.mean, s.median,
          s.max);
    CHECK(fabs(s.p90 - 4.6) < 1e-12 && fabs(s.p99 - 4.96) < 1e-12, "p90 %g p99 %g", s.p90, s.p99);
    double one[] = {7};
    s = lg_stats(one, 1);
    CHECK(s.median == 7 && s.p99 == 7 && s.max == 7, "one value");
    s = lg_stats(NULL, 0);
    CHECK(s.n == 0 && s.mean == 0, "no value");
}

static void test_prompts(void) {
    char path[] = "/tmp/mb-lg-promptsXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    /* two documents; the second has a 2-byte character where its first cut falls */
    const char text[] = "abcdefghij\n\f\nxyz\xc3\xa9zzzz\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write");
    close(fd);
    lg_prompts p;
    mb_err e;
    CHECK(!lg_prompts_load(&p, path, 4, 1, &e), "load");
    /* doc 1: "abcd", "efgh", "ij\n" (3 bytes: at least half of 4); doc 2: "xyz" (cut before
     * the character), "\xc3\xa9zz", "zz\n" */
    CHECK(p.n == 6, "%zu prompts", p.n);
    size_t total = 0;
    int cut_ok = 1;
    for (size_t i = 0; i < p.n; i++) {
        total += p.len[i];
        cut_ok &= p.len[i] <= 4 && strlen(p.text[i]) == p.len[i] && !strchr(p.text[i], '\f');
    }
    CHECK(cut_ok && total == strlen(text) - 2, "total %zu", total);
    lg_prompts q;
    CHECK(!lg_prompts_load(&q, path, 4, 1, &e), "again");
    for (size_t i = 0; i < p.n && i < q.n; i++)
        CHECK(!strcmp(p.text[i], q.text[i]), "seed gives the same order");
    lg_prompts_free(&q);
    lg_prompts_free(&p);
    CHECK(lg_prompts_load(&p, path, 100, 1, &e) && strstr(e.msg, "no prompt"), "%s", e.msg);
    unlink(path);
    CHECK(lg_prompts_load(&p, path, 4, 1, &e), "missing file");
    CHECK(!lg_prompts_load(&p, NULL, 50, 3, &e) && p.n == LG_SYNTHETIC_POOL, "synthetic");
    CHECK(p.len[0] == 50 && strspn(p.text[0], "abcdefghijklmnopqrstuvwxyz ") == 50, "words");
    lg_prompts_free(&p);
}

static void test_gamma(void) {
    for (int k = 0; k < 3; k++) {
        double shape = (double[]){0.3, 1.0, 4.0}[k], sum = 0, sq = 0;
        uint64_t st = 42;
        const int n = 200000;
        for (int i = 0; i < n; i++) {
            double g = lg_gamma1(&st, shape);
            CHECK(g > 0, "positive");
            sum += g, sq += g * g;
        }
        double mean = sum / n, var = sq / n - mean * mean;
        CHECK(fabs(mean - 1) < 0.02 && fabs(var - 1 / shape) < 0.05 / shape,
              "shape %g: mean %g var %g", shape, mean, var);
    }
}

int main(void) {
    RUN(test_stream_split_anywhere);
    RUN(test_stream_failures);
    RUN(test_native_bytes);
    RUN(test_whole_and_failed);
    RUN(test_stats);
    RUN(test_prompts);
    RUN(test_gamma);
    return check_failures != 0;
}
