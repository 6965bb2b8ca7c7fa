/* test_srv_text.c: UTF-8 hold-back and replacement, JSON quoting, stop hold-back, base64. */
#include "check.h"
#include "srv_base64.h"
#include "srv_text.h"

#include <string.h>

static void expect_text(const char *in, size_t n, int final, const char *want, size_t want_used) {
    char out[256];
    size_t used = 99, len = srv_utf8_text((const uint8_t *)in, n, final, out, &used);
    /* want may hold a NUL: its length is what it has beyond strlen when the input does */
    size_t want_len = strlen(want) + (memchr(in, 0, n) ? 1 + strlen(want + strlen(want) + 1) : 0);
    CHECK(len == want_len && !memcmp(out, want, len), "text of %zu bytes: got '%s' want '%s'", n,
          out, want);
    CHECK(used == want_used, "used %zu, want %zu", used, want_used);
}

static void test_utf8(void) {
    expect_text("abc", 3, 0, "abc", 3);
    expect_text("a\xc3\xa9", 3, 0, "a\xc3\xa9", 3);
    /* a partial sequence at the end is held back, unless final */
    expect_text("a\xc3", 2, 0, "a", 1);
    expect_text("a\xc3", 2, 1, "a\xef\xbf\xbd", 2);
    expect_text("\xe2\x98", 2, 0, "", 0);
    expect_text("\xf0\x9f\x98", 3, 0, "", 0);
    expect_text("\xf0\x9f\x98\x80!", 5, 0, "\xf0\x9f\x98\x80!", 5);
    /* invalid bytes and maximal subparts become one U+FFFD each, as Python's "replace" */
    expect_text("\xff", 1, 0, "\xef\xbf\xbd", 1);
    expect_text("\xc3(", 2, 0, "\xef\xbf\xbd(", 2);
    expect_text("\xe2\x98(", 3, 0, "\xef\xbf\xbd(", 3);
    expect_text("\xc0\x80", 2, 0, "\xef\xbf\xbd\xef\xbf\xbd", 2);                 /* overlong */
    expect_text("\xed\xa0\x80", 3, 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3); /* surrogate */
    expect_text("\xf4\x90\x80\x80", 4, 0, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd",
                4); /* above U+10FFFF */
    expect_text("\x80\x80", 2, 0, "\xef\xbf\xbd\xef\xbf\xbd", 2);
    /* a NUL is text like any other */
    expect_text("a\0b", 3, 0, "a\0b", 3);
}

/* Character offsets: one per whole sequence or replaced maximal subpart, as the text counts. */
static void test_offsets(void) {
    const char *in = "a\xc3\xa9\xe2\x98(\xf0\x9f\x98\x80\xff";
    size_t off[11], want[11] = {0, 1, 1, 2, 2, 3, 4, 4, 4, 4, 5};
    size_t chars = srv_utf8_offsets((const uint8_t *)in, 11, off);
    CHECK(chars == 6, "chars %zu, want 6", chars);
    for (int i = 0; i < 11; i++)
        CHECK(off[i] == want[i], "off[%d] = %zu, want %zu", i, off[i], want[i]);
    /* the count agrees with the replaced text's characters */
    char out[64];
    size_t used, len = srv_utf8_text((const uint8_t *)in, 11, 1, out, &used), n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)out[i] & 0xC0) != 0x80;
    CHECK(n == chars && srv_utf8_offsets((const uint8_t *)"\xc3", 1, NULL) == 1, "%zu", n);
}

static void test_quote(void) {
    char *q = srv_json_quote("a\"\\\n\t\x01\0z\xc3\xa9", 10);
    CHECK(q && !strcmp(q, "\"a\\\"\\\\\\n\\t\\u0001\\u0000z\xc3\xa9\""), "quoted: %s", q);
    free(q);
}

static void test_stop_holdback(void) {
    const char *stops[] = {"END", "xy"};
    const uint8_t *o = (const uint8_t *)"abcEN";
    CHECK(srv_stop_holdback(stops, 2, o, 5) == 2, "EN may become END");
    CHECK(srv_stop_holdback(stops, 2, o, 4) == 1, "E may become END");
    CHECK(srv_stop_holdback(stops, 2, o, 3) == 0, "c starts no stop");
    CHECK(srv_stop_holdback(stops, 2, (const uint8_t *)"zzx", 3) == 1, "x may become xy");
    CHECK(srv_stop_holdback(stops, 0, o, 5) == 0, "no stops, no hold");
    CHECK(srv_stop_holdback(stops, 2, (const uint8_t *)"E", 1) == 1, "shorter than the stop");
}

static void test_base64(void) {
    const char *cases[][2] = {{"", ""},        {"f", "Zg=="},        {"fo", "Zm8="},
                              {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"\xff\x00\xfe", "/wD+"}};
    const size_t lens[] = {0, 1, 2, 3, 4, 3};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = lens[i];
        char *e = srv_base64_encode((const uint8_t *)cases[i][0], n);
        CHECK(e && !strcmp(e, cases[i][1]), "encode %zu: %s", i, e);
        size_t m = 0;
        uint8_t *d = srv_base64_decode(cases[i][1], strlen(cases[i][1]), &m);
        CHECK(d && m == n && !memcmp(d, cases[i][0], n), "decode %zu", i);
        free(e);
        free(d);
    }
    const char *bad[] = {"Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "=Zm9", "Zm 9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t m;
        uint8_t *d = srv_base64_decode(bad[i], strlen(bad[i]), &m);
        CHECK(!d, "accepted bad base64 %s", bad[i]);
        free(d);
    }
}

int main(void) {
    RUN(test_utf8);
    RUN(test_offsets);
    RUN(test_quote);
    RUN(test_stop_holdback);
    RUN(test_base64);
    return check_failures != 0;
}
