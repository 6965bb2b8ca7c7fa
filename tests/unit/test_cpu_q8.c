/* test_cpu_q8.c: the avx512vnni kernel for q8 weights (model/cpu_avx512.c) against a plain C
 * reference of the same arithmetic, bit for bit: each token's inputs to int8 (or int16) with
 * its own scale, exact integer dot products with the int8 weights, then the token's scale, the
 * row's scale and the bias. Shapes with a partial 64-byte chunk, rows not a multiple of the row
 * group, token counts across the kernel's blocks (1 to 4, 49 and 50 take its row-wise path,
 * alone and after a full token block), and one or two threads. Skipped (one line) on a processor
 * without AVX512_VNNI. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "cpu.h"

static uint32_t rng = 12345;

static float uniform(void) { /* in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 8388608.0f - 1.0f;
}

/* The reference: Y[t, r] = ((float)(q[t, :] . w[r, :]) * sx[t]) * scale[r] (+ bias[r]). */
static void reference(const mb_mat *W, const float *X, int ldx, int T, const float *bias, int int16,
                      float *Y) {
    const int n = W->cols;
    const float qmax = (float)(int16 ? mb_cpu_int16_qmax(n) : 127);
    const int8_t *w = W->w;
    int *q = malloc((size_t)n * sizeof *q);
    for (int t = 0; t < T; t++) {
        const float *x = X + (size_t)t * (size_t)ldx;
        float amax = 0.0f;
        for (int k = 0; k < n; k++) amax = fmaxf(amax, fabsf(x[k]));
        float inv = amax > 0.0f ? qmax / amax : 0.0f, sx = amax / qmax;
        for (int k = 0; k < n; k++) q[k] = (int)fmaxf(-qmax, fminf(qmax, nearbyintf(x[k] * inv)));
        for (int r = 0; r < W->rows; r++) {
            int32_t dot = 0;
            for (int k = 0; k < n; k++) dot += q[k] * w[(size_t)r * (size_t)n + (size_t)k];
            float y = (float)dot * sx * W->scale[r];
            Y[(size_t)t * (size_t)W->rows + (size_t)r] = bias ? y + bias[r] : y;
        }
    }
    free(q);
}

/* The kernel on `threads` threads (run one after the other: each writes its own rows). */
static void kernel(const mb_mat *W, const float *X, int ldx, int T, const float *bias, int int16,
                   int threads, float *Y) {
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
                     .int16_inputs = int16,
                     .scratch = scratch,
                     .scratch_per_thread = per_thread};
    for (int ti = 0; ti < threads; ti++) mb_matmul_avx512vnni(&m, ti, threads);
    free(scratch);
}

static void check_shape(int rows, int cols, int T) {
    const int ldx = cols + 3;
    float *Wf = malloc((size_t)rows * (size_t)cols * sizeof *Wf);
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) Wf[i] = uniform();
    for (int k = 0; k < cols; k++) Wf[(size_t)(rows - 1) * (size_t)cols + (size_t)k] = 0.0f;
    float *X = malloc((size_t)T * (size_t)ldx * sizeof *X), *bias = malloc((size_t)rows * 4);
    for (size_t i = 0; i < (size_t)T * (size_t)ldx; i++) X[i] = uniform() * 3.0f;
    for (int t = 0; t < T; t += 5) X[(size_t)t * (size_t)ldx + (size_t)(t % cols)] = 40.0f;
    if (T > 1) memset(X + ldx, 0, (size_t)cols * sizeof *X); /* a token of zeros */
    for (int r = 0; r < rows; r++) bias[r] = uniform();
    mb_mat W = {Wf, MB_F32, rows, cols, NULL};
    void *mem = aligned_alloc(64, mb_cpu_q8_bytes(rows, cols));
    mb_cpu_quantize_q8(&W, mem);
    const int32_t *sums = mb_cpu_q8_row_sums(&W);
    for (int r = 0; r < rows; r++) {
        int32_t s = 0;
        for (int k = 0; k < cols; k++)
            s += ((const int8_t *)W.w)[(size_t)r * (size_t)cols + (size_t)k];
        CHECK(s == sums[r], "%dx%d: row %d sums to %d, stored %d", rows, cols, r, s, sums[r]);
    }
    size_t ny = (size_t)T * (size_t)rows * sizeof(float);
    float *ref = malloc(ny), *got = malloc(ny);
    for (int mode = 0; mode < 4; mode++) { /* bias or not, int8 or int16 inputs */
        const int with_bias = mode & 1, int16 = mode >> 1;
        reference(&W, X, ldx, T, with_bias ? bias : NULL, int16, ref);
        for (int threads = 1; threads <= 2; threads++) {
            memset(got, 0xff, ny);
            kernel(&W, X, ldx, T, with_bias ? bias : NULL, int16, threads, got);
            CHECK(!memcmp(got, ref, ny),
                  "%d rows x %d cols, %d tokens, %d threads%s%s: not the "
                  "reference's bits",
                  rows, cols, T, threads, with_bias ? ", bias" : "", int16 ? ", int16" : "");
        }
    }
    free(ref);
    free(got);
    free(mem);
    free(bias);
    free(X);
    free(Wf);
}

static void test_vnni_against_reference(void) {
    const int shapes[][2] = {{13, 32}, {24, 64}, {40, 200}, {96, 1024}, {9, 2048}};
    const int tokens[] = {1, 2, 3, 4, 5, 6, 7, 13, 48, 49, 50, 53, 100};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++)
            check_shape(shapes[s][0], shapes[s][1], tokens[t]);
}

int main(void) {
    int vnni = -1;
    for (int i = 0; mb_cpu_isa_name(i); i++)
        if (!strcmp(mb_cpu_isa_name(i), "avx512vnni")) vnni = i;
    CHECK(vnni >= 0, "no avx512vnni variant");
    if (!mb_cpu_isa_supported(vnni)) {
        printf("skipped: this processor has no AVX512_VNNI (or no AVX512_BF16)\n");
        return check_failures ? 1 : 0;
    }
    RUN(test_vnni_against_reference);
    return check_failures ? 1 : 0;
}
