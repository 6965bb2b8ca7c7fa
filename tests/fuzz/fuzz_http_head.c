/* fuzz_http_head.c: libFuzzer target for the front door's look at a request head
 * (srv_head_check): any bytes give 0 (wait for more), 1 (hand over) or -1 with a 400, 413 or 431
 * and a message; never a read past the bytes given. */
#include "srv_accept.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > SRV_HEAD_MAX) size = SRV_HEAD_MAX;
    /* a copy of exactly `size` bytes, so ASan sees any read beyond them */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    srv_head h;
    int v = srv_head_check(buf, size, 4096, &h);
    if (v < -1 || v > 1) abort();
    if (v == 0 && size == SRV_HEAD_MAX) abort();
    if (v < 0 && ((h.status != 400 && h.status != 413 && h.status != 431) || !h.msg[0] || !h.code))
        abort();
    if (!memchr(h.method, 0, sizeof h.method) || !memchr(h.url, 0, sizeof h.url)) abort();
    free(buf);
    return 0;
}
