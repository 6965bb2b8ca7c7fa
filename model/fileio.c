/* fileio.c: reading a whole file into memory, the one way every part of the project does it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

uint8_t *mb_read_file(const char *path, size_t limit, size_t *len, mb_err *e) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        mb_fail(e, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    uint8_t *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n < cap) continue;
        uint8_t *nb = cap <= limit ? realloc(buf, 2 * cap + 1) : NULL;
        if (!nb) free(buf);
        buf = nb;
        cap *= 2;
    }
    int err = f != stdin && ferror(f);
    if (f != stdin) fclose(f);
    if (!buf || err || n > limit) {
        free(buf);
        mb_fail(e, "%s: %s", path,
                err   ? "read error"
                : buf ? "larger than allowed"
                      : "too large or out of memory");
        return NULL;
    }
    buf[n] = 0; /* text goes straight to a parser */
    if (len) *len = n;
    return buf;
}
