/* fuzz_safetensors.c: libFuzzer target for the safetensors parser. Any input must end in
 * success or an error message; on success every tensor span must lie inside the input. */
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mb_st_file f;
    mb_err e;
    if (mb_st_parse(&f, data, size, "fuzz", &e)) return 0;
    for (int i = 0; i < f.n; i++) {
        const mb_st_tensor *t = &f.t[i];
        if (t->data < data || t->data + t->n_bytes > data + size) abort();
        if (i && f.t[i - 1].data + f.t[i - 1].n_bytes > t->data) abort();
        volatile uint8_t sink = 0;
        for (size_t k = 0; k < t->n_bytes; k += 64) sink ^= t->data[k];
        (void)sink;
        if (mb_st_find(&f, t->name) == NULL) abort();
    }
    mb_st_close(&f);
    return 0;
}
