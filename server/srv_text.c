/* srv_text.c: UTF-8 hold-back and replacement, JSON quoting, stop-string hold-back. */
#include "srv_text.h"

#include <stdlib.h>
#include <string.h>

/* Length of the sequence a lead byte starts and the range its second byte must fall in
 * (Unicode table 3-7: no overlongs, no surrogates, nothing above U+10FFFF). 0: not a lead. */
static int utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b == 0xE0) *lo = 0xA0;
    if (b == 0xED) *hi = 0x9F;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b == 0xF0) *lo = 0x90;
    if (b == 0xF4) *hi = 0x8F;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

size_t srv_utf8_text(const uint8_t *in, size_t n, int final, char *out, size_t *used) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t lo, hi;
        int need = utf8_lead(in[i], &lo, &hi), k = 1;
        if (need > 1) {
            /* Count the bytes that still fit the sequence: a maximal subpart. */
            while (k < need && i + k < n) {
                uint8_t c = in[i + k];
                if (c < lo || c > hi) break;
                lo = 0x80, hi = 0xBF;
                k++;
            }
            if (k < need && i + k == n && !final) break;
        }
        if (need > 0 && k == need) {
            memcpy(out + o, in + i, (size_t)need);
            o += (size_t)need;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += (size_t)k;
    }
    out[o] = 0;
    *used = i;
    return o;
}

size_t srv_utf8_offsets(const uint8_t *in, size_t n, size_t *off) {
    size_t i = 0, chars = 0;
    while (i < n) {
        uint8_t lo, hi;
        int need = utf8_lead(in[i], &lo, &hi), k = 1;
        while (need > 1 && k < need && i + k < n && in[i + k] >= lo && in[i + k] <= hi) {
            lo = 0x80, hi = 0xBF;
            k++;
        }
        for (int t = 0; t < k && off; t++) off[i + (size_t)t] = chars;
        chars++; /* a whole sequence or one U+FFFD for a maximal invalid subpart */
        i += (size_t)k;
    }
    return chars;
}

char *srv_json_quote(const char *s, size_t n) {
    char *q = malloc(6 * n + 3), *p = q;
    if (!q) return NULL;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c == '\n') {
            *p++ = '\\', *p++ = 'n';
        } else if (c == '\r') {
            *p++ = '\\', *p++ = 'r';
        } else if (c == '\t') {
            *p++ = '\\', *p++ = 't';
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(p, "\\u00", 4);
            p[4] = hex[c >> 4], p[5] = hex[c & 15];
            p += 6;
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    *p = 0;
    return q;
}

size_t srv_stop_holdback(const char *const *stops, int n_stops, const uint8_t *out, size_t len) {
    size_t hold = 0;
    for (int s = 0; s < n_stops; s++) {
        size_t sl = strlen(stops[s]);
        for (size_t k = sl > 0 ? sl - 1 : 0; k > hold; k--) {
            if (k <= len && !memcmp(out + len - k, stops[s], k)) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}
