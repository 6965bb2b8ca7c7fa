/* fuzz_answer.c: libFuzzer target for what a server controls when loadgen measures it: an
 * answer's bytes, read as a stream in pieces (SSE events), as a whole JSON answer and as a failed
 * answer's message. Nothing may crash or leak, the counts stay within what arrived, and where the
 * pieces are cut must not change what is counted. The first byte picks the piece size and the
 * API (bit 7: native). */
#include "lg.h"

#include <stdlib.h>
#include <string.h>

static lg_rec read_answer(const uint8_t *data, size_t size, size_t piece, int native, int mode) {
    lg_rec r = {0};
    r.t_first = -1, r.usage_out = r.usage_prompt = -1;
    lg_run run = {0};
    lg_answer a = {0};
    a.native = native, a.rec = &r, a.run = &run;
    for (size_t at = 0; at < size;) {
        size_t k = piece && size - at > piece ? piece : size - at;
        if (lg_answer_add(&a, (const char *)data + at, k, mode == 0, mode == 2 ? 4096 : 0, 1.0))
            abort();
        at += k;
    }
    if (mode == 0)
        lg_answer_stream_end(&a, 2.0);
    else if (mode == 1)
        lg_answer_whole(&a, 2.0);
    else
        lg_answer_error(&a);
    if (r.why[sizeof r.why - 1] != 0 || (mode == 0 && run.n_gaps + 1 < r.chunks)) abort();
    lg_answer_free(&a);
    lg_run_free(&run);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const size_t piece = data[0] & 0x3f;
    const int native = data[0] >> 7;
    data++, size--;
    lg_rec whole = read_answer(data, size, 0, native, 0);
    lg_rec split = read_answer(data, size, piece, native, 0);
    /* base64 or text: never more bytes than arrived */
    if (whole.out_bytes > size || whole.chunks > size) abort();
    if (split.out_bytes != whole.out_bytes || split.chunks != whole.chunks ||
        split.fail != whole.fail || split.usage_out != whole.usage_out)
        abort();
    read_answer(data, size, piece, native, 1);
    read_answer(data, size, piece, native, 2);
    return 0;
}
