/* fuzz_model_config.c: libFuzzer target for a model's config.json (mb_config_parse). Any input
 * must end in an error message or a shape whose every dimension is positive and at most 2^24. */
#include <stdlib.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mb_config c;
    int pad, rms;
    mb_err e;
    if (mb_config_parse((const char *)data, size, "fuzz", &c, &pad, &rms, &e)) return 0;
    const int dims[] = {c.d_model, c.n_layer, c.n_vocab, c.d_inner,
                        c.d_state, c.d_conv,  c.dt_rank, pad};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i] < 1 || dims[i] > 1 << 24) abort();
    return 0;
}
