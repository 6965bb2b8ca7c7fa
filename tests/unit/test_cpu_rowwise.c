/* test_cpu_rowwise.c: every CPU variant's matmul (model/cpu.c, model/cpu_avx512.c) gives a token
 * the same bits in a short block of tokens, which reads each row front to back (matmul_task's
 * rowwise; q8 on avx512vnni always), as in the blocks of more tokens, which read rows side by
 * side: each (row, token) dot product must keep one order of additions. The reference is the
 * variant itself on 53 tokens (a full token block and a block of 5, both of the blocks' kind);
 * spans of 1 to 5, 49 and 50 tokens (a full block and a row-wise tail) at several offsets must
 * match it bit for bit. F32, BF16 and q8 weights, shapes with a tail past the vector width and rows
 * not a multiple of the row group, one or two threads. Inputs of magnitudes from 2^-8 to 2^8, so
 * that another order of additions would change the sums' last bits. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "cpu.h"

#define REF_T 53

typedef void (*matmul_fn)(void *task, int ti, int nt);

static uint32_t rng = 777;

static float uniform(void) { /* in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 8388608.0f - 1.0f;
}

static float spread(void) { /* uniform() times 2^e, e in [-8, 8] */
    rng = rng * 1664525u + 1013904223u;
    return ldexpf(uniform(), (int)(rng >> 27) % 17 - 8);
}

/* The variant on T tokens of X, on `threads` threads run one after the other (each writes its
 * own rows). */
static void kernel(matmul_fn fn, const mb_mat *W, const float *X, int ldx, int T, const float *bias,
                   int threads, int rowwise, float *Y) {
    size_t per_thread = mb_cpu_scratch_per_thread((size_t)W->cols);
    uint16_t *scratch = malloc((size_t)threads * per_thread * sizeof *scratch);
    matmul_task m = {.W = W,
                     .n_rows = W->rows,
                     .X = X,
                     .ldx = ldx,
                     .Y = Y,
                     .ldy = W->rows,
                     .T = T,
                     .bias = bias,
                     .epi = EPI_STORE,
                     .rowwise = rowwise,
                     .scratch = scratch,
                     .scratch_per_thread = per_thread};
    for (int ti = 0; ti < threads; ti++) fn(&m, ti, threads);
    free(scratch);
}

static void check_matrix(const char *variant, matmul_fn fn, const mb_mat *W, const float *X,
                         int ldx, const float *bias) {
    static const char *dtypes[] = {"f32", "bf16", "q8"};
    const size_t row_bytes = (size_t)W->rows * sizeof(float);
    float *ref = malloc(REF_T * row_bytes), *got = malloc(REF_T * row_bytes);
    kernel(fn, W, X, ldx, REF_T, bias, 1, 0, ref);
    const int spans[] = {1, 2, 3, 4, 5, 49, 50}, offsets[] = {0, 1, 3, 4};
    for (size_t i = 0; i < sizeof spans / sizeof spans[0]; i++)
        for (size_t j = 0; j < sizeof offsets / sizeof offsets[0]; j++) {
            const int T = spans[i], s = offsets[j];
            if (s + T > REF_T) continue;
            for (int mode = 0; mode < 4; mode++) { /* 1 or 2 threads, row-wise or not */
                const int threads = 1 + (mode & 1), rowwise = mode >> 1;
                memset(got, 0xff, (size_t)T * row_bytes);
                kernel(fn, W, X + (size_t)s * (size_t)ldx, ldx, T, bias, threads, rowwise, got);
                for (int t = 0; t < T; t++)
                    CHECK(!memcmp(got + (size_t)t * (size_t)W->rows,
                                  ref + (size_t)(s + t) * (size_t)W->rows, row_bytes),
                          "%s, %s, %d rows x %d cols: token %d in a span of %d at %d (%d threads, "
                          "row-wise %d) "
                          "differs from the same token among %d",
                          variant,
                          dtypes[W->dtype == MB_F32    ? 0
                                 : W->dtype == MB_BF16 ? 1
                                                       : 2],
                          W->rows, W->cols, s + t, T, s, threads, rowwise, REF_T);
            }
        }
    free(ref);
    free(got);
}

static void check_shape(const char *variant, matmul_fn fn, int rows, int cols) {
    const int ldx = cols + 5;
    const size_t nw = (size_t)rows * (size_t)cols;
    float *Wf = malloc(nw * sizeof *Wf), *X = malloc((size_t)REF_T * (size_t)ldx * sizeof *X),
          *bias = malloc((size_t)rows * sizeof *bias);
    uint16_t *Wb = malloc(nw * sizeof *Wb);
    for (size_t i = 0; i < nw; i++) {
        Wf[i] = spread();
        uint32_t b;
        memcpy(&b, &Wf[i], 4);
        Wb[i] = (uint16_t)(b >> 16);
    }
    for (size_t i = 0; i < (size_t)REF_T * (size_t)ldx; i++) X[i] = spread();
    for (int r = 0; r < rows; r++) bias[r] = uniform();
    mb_mat W = {Wf, MB_F32, rows, cols, NULL};
    check_matrix(variant, fn, &W, X, ldx, bias);
    W.w = Wb;
    W.dtype = MB_BF16;
    check_matrix(variant, fn, &W, X, ldx, bias);
    void *mem = aligned_alloc(64, mb_cpu_q8_bytes(rows, cols));
    mb_cpu_quantize_q8(&W, mem);
    check_matrix(variant, fn, &W, X, ldx, NULL);
    free(mem);
    free(Wb);
    free(bias);
    free(X);
    free(Wf);
}

static void test_rowwise_matches_blocks(void) {
    static const struct {
        const char *name;
        matmul_fn fn;
    } variants[] = {{"avx2", mb_matmul_avx2},
                    {"avx512", mb_matmul_avx512},
                    {"avx512bf16", mb_matmul_avx512bf16},
                    {"avx512vnni", mb_matmul_avx512vnni}};
    const int shapes[][2] = {{13, 203}, {24, 64}, {40, 1030}, {9, 2048}};
    int tested = 0;
    for (int v = 0; mb_cpu_isa_name(v); v++) {
        if (!mb_cpu_isa_supported(v)) continue;
        for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
            if (strcmp(variants[i].name, mb_cpu_isa_name(v))) continue;
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                check_shape(variants[i].name, variants[i].fn, shapes[s][0], shapes[s][1]);
            tested++;
        }
    }
    CHECK(tested > 0, "no CPU variant runs here");
    printf("     %d variants\n", tested);
}

int main(void) {
    RUN(test_rowwise_matches_blocks);
    return check_failures ? 1 : 0;
}
