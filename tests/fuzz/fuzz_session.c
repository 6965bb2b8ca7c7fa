/* fuzz_session.c: libFuzzer target for the saved-session record (server/srv_session_file.c),
 * the file a restore or a request on an evicted session reads from session_dir. Any bytes give
 * -1 with a message, or 0 with fields in range, and then building the record again gives the
 * same bytes. The first input byte picks how the rest is read: odd, as the whole record; even,
 * as a record without its checksum, which is appended here, so that mutations reach the field
 * checks behind it. */
#include "srv_session_file.h"

#include <stdlib.h>
#include <string.h>

#define STATE_BYTES 16 /* four floats: small enough for the fuzzer to build whole records */

static uint64_t fnv1a(const uint8_t *b, size_t n) {
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const mb_config shape = {.n_vocab = 256,
                                    .d_model = 64,
                                    .n_layer = 2,
                                    .d_inner = 128,
                                    .d_state = 16,
                                    .d_conv = 4,
                                    .dt_rank = 4};
    size_t len = size - 1;
    uint8_t *buf = malloc(len + 8);
    memcpy(buf, data + 1, len);
    if (!(data[0] & 1)) {
        uint64_t sum = fnv1a(buf, len);
        memcpy(buf + len, &sum, 8);
        len += 8;
    }
    srv_session_record r;
    char err[256] = "";
    if (srv_session_record_parse(buf, len, &shape, STATE_BYTES, &r, err, sizeof err)) {
        if (!err[0]) abort();
    } else {
        if (r.n_bytes > (1ull << 53) || r.has_pending < 0 || r.has_pending > 1 ||
            (!r.has_pending && r.pending) || r.n_bytes < (unsigned)r.has_pending ||
            !srv_id_valid(r.id) || r.state < (const void *)buf ||
            (const uint8_t *)r.state + STATE_BYTES > buf + len)
            abort();
        size_t n = 0;
        uint8_t *again = srv_session_record_build(&r, &shape, STATE_BYTES, &n);
        if (!again || n != len || memcmp(again, buf, len)) abort();
        free(again);
    }
    free(buf);
    return 0;
}
