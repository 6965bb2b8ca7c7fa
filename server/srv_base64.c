/* srv_base64.c: base64 both ways. */
#include "srv_base64.h"

#include <stdlib.h>

static const char ALPHA[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *srv_base64_encode(const uint8_t *in, size_t n) {
    char *out = malloc((n + 2) / 3 * 4 + 1), *p = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = ALPHA[v >> 18], *p++ = ALPHA[(v >> 12) & 63];
        *p++ = ALPHA[(v >> 6) & 63], *p++ = ALPHA[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *p++ = ALPHA[v >> 18], *p++ = ALPHA[(v >> 12) & 63];
        *p++ = i + 1 < n ? ALPHA[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    return out;
}

static int value_of(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

uint8_t *srv_base64_decode(const char *in, size_t n, size_t *n_out) {
    if (n % 4) return NULL;
    size_t pad = n && in[n - 1] == '=' ? (n > 1 && in[n - 2] == '=' ? 2 : 1) : 0;
    uint8_t *out = malloc(n / 4 * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        for (size_t j = 0; j < 4; j++) {
            int d = value_of(in[i + j]);
            if (d < 0 && !(i + 4 == n && j >= 4 - pad)) {
                free(out);
                return NULL;
            }
            v = v << 6 | (uint32_t)(d < 0 ? 0 : d);
        }
        out[o++] = (uint8_t)(v >> 16);
        if (!(i + 4 == n && pad == 2)) out[o++] = (uint8_t)(v >> 8);
        if (!(i + 4 == n && pad >= 1)) out[o++] = (uint8_t)v;
    }
    out[o] = 0;
    *n_out = o;
    return out;
}
