/* srv_text.h: turning the model's bytes into text a client can show. */
#ifndef SRV_TEXT_H
#define SRV_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Decodes bytes as UTF-8 into out (capacity at least 3 * n + 1): whole valid sequences are copied,
 * each maximal invalid subpart becomes U+FFFD (as Python's errors="replace" does). Unless final,
 * a trailing sequence that is incomplete but valid so far is held back: *used tells how many
 * input bytes were consumed. Returns the bytes written; out is NUL-terminated (the text itself
 * may contain NUL bytes, which srv_json_quote escapes). */
size_t srv_utf8_text(const uint8_t *in, size_t n, int final, char *out, size_t *used);

/* The characters of the text srv_utf8_text(in, n, final = 1, ...) gives: off[i] (off may be
 * NULL) is the index, in characters of that text, of the character input byte i belongs to
 * (bytes replaced together by one U+FFFD share it). Returns the text's length in characters. */
size_t srv_utf8_offsets(const uint8_t *in, size_t n, size_t *off);

/* A JSON string literal (with quotes) for n bytes of valid UTF-8; malloc'd, NULL when out of
 * memory. cJSON cannot carry NUL inside a string, hence this. */
char *srv_json_quote(const char *s, size_t n);

/* How many bytes at the end of out are a proper prefix of one of the stop strings: they may turn
 * into a stop and must not be shown yet. */
size_t srv_stop_holdback(const char *const *stops, int n_stops, const uint8_t *out, size_t len);

#endif
