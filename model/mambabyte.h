/* mambabyte.h: the engine interface. Everything above the engine (CLI, speculation, the
 * server's scheduler) calls only this. Two backends sit behind it (model/backend.h): the CPU
 * and CUDA (kernels/); they give the same answers for the same calls, within rounding.
 *
 * Errors: functions that can fail take an mb_err and return NULL or -1, with a message that
 * names the file and tensor at fault. Nothing here prints or exits. */
#ifndef MAMBABYTE_H
#define MAMBABYTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_err {
    char msg[512];
} mb_err;

/* Formats the message into e (if e is not NULL); always returns -1 for `return mb_fail(...)`. */
int mb_fail(mb_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef enum { MB_F32 = 0, MB_F16 = 1, MB_BF16 = 2, MB_Q8 = 3 } mb_dtype;

/* The shape of a Mamba-1 language model, read from config.json in either the Hugging Face
 * MambaForCausalLM keys or the mamba_ssm keys. */
typedef struct mb_config {
    int n_vocab;   /* vocabulary: logits per position (a padded head's extra rows are dropped) */
    int n_rows;    /* rows of the embedding and the head (n_vocab rounded up to the padding) */
    int d_model;   /* hidden size */
    int n_layer;   /* number of Mamba blocks */
    int d_inner;   /* expand * d_model */
    int d_state;   /* N, the SSM state size */
    int d_conv;    /* width of the causal depthwise conv */
    int dt_rank;   /* rank of the dt projection */
    int rms_norm;  /* 1: RMSNorm; 0: LayerNorm with bias */
    int tied;      /* head shares the embedding */
    int proj_bias; /* in_proj / out_proj carry biases */
    float norm_eps;
} mb_config;

/* Where a model runs. AUTO takes the first usable CUDA GPU (the CUDA backend is a shared object,
 * libmambabyte_cuda.so, loaded at run time) and the CPU otherwise. */
typedef enum { MB_DEVICE_AUTO = 0, MB_DEVICE_CPU = 1, MB_DEVICE_CUDA = 2 } mb_device;

typedef struct mb_backend_opts {
    int n_threads;    /* CPU: 0 = one per core */
    mb_device device; /* AUTO (0) when zero-initialised */
    int gpu;          /* CUDA device index */
} mb_backend_opts;

/* Parses "auto", "cpu", "cuda" or "cuda:N" into o->device and o->gpu; -1 if it is none of them. */
int mb_device_parse(const char *s, mb_backend_opts *o);

typedef struct mb_model mb_model;

/* Loads config.json and model.safetensors (or every *.safetensors) from dir, or one .safetensors
 * file with config.json beside it. A model owns a team of worker threads: drive it (and its
 * pools) from one thread at a time, as the server's scheduler does. */
mb_model *mb_model_load(const char *dir, const mb_backend_opts *o, mb_err *e);
void mb_model_free(mb_model *m);
const mb_config *mb_model_config(const mb_model *m);
mb_dtype mb_model_dtype(const mb_model *m);      /* dtype the weights are held in */
size_t mb_model_weight_bytes(const mb_model *m); /* bytes read by one decode step */
int mb_model_threads(const mb_model *m);         /* CPU worker threads; 0 on a GPU */
/* The device the model runs on ("cpu", "cuda:0 (NVIDIA H200)") and why it was chosen. */
const char *mb_model_device(const mb_model *m);
const char *mb_model_device_note(const mb_model *m);
int mb_model_on_gpu(const mb_model *m);
/* The CPU kernels' instruction-set variant, chosen once per process by the processor's features
 * ("avx2", "avx512", "avx512bf16"); $MB_CPU_ISA names a lower one (for tests and comparisons). */
const char *mb_cpu_isa(void);
/* 0 once the device has failed for good (a sticky CUDA error): every later call fails too. */
int mb_model_usable(const mb_model *m);
/* How many pool slots of a pool taking max_tokens per forward fit in the device memory left
 * (keeping a margin); 0 on the CPU, where host memory is the limit. */
int mb_model_fit_slots(const mb_model *m, int max_tokens);

/* ---- state pool: one recurrent state (conv window + SSM state per layer) per slot ---- */

typedef struct mb_pool mb_pool;

/* n_slots states; one mb_forward on this pool may feed at most max_tokens tokens in all
 * (prefill chunks included): the pool keeps that many positions of span inputs for rollback. */
mb_pool *mb_pool_create(mb_model *m, int n_slots, int max_tokens, mb_err *e);
void mb_pool_free(mb_pool *p);
int mb_pool_slots(const mb_pool *p);
/* Sets a slot to the empty history (all zeros). Fails only when the device has failed. */
int mb_pool_reset(mb_pool *p, int slot, mb_err *e);
/* After the last mb_forward on this pool fed k tokens to slot: make its state as if only the
 * first n_keep (0 <= n_keep <= k) had been fed. Replays conv and scan from the saved span
 * inputs; the dense layers are not re-run. Valid until the next mb_forward on the pool; may be
 * called again with another n_keep. Fails for a slot the last forward did not feed. */
int mb_pool_rollback(mb_pool *p, int slot, int n_keep, mb_err *e);
/* Copies the state of src into dst (fork); dst can no longer roll back. */
int mb_pool_copy(mb_pool *p, int dst, int src, mb_err *e);
/* A slot's state as a flat blob in host memory, to spill and back: per layer the conv window
 * (d_conv-1, d_inner), oldest input first, then the SSM state (d_inner, d_state), float32.
 * The same bytes on every backend. */
size_t mb_pool_state_bytes(const mb_pool *p);
int mb_pool_read(mb_pool *p, int slot, void *dst, mb_err *e);
int mb_pool_write(mb_pool *p, int slot, const void *src, mb_err *e);
/* A slot to a file and back: versioned header, model shape and checksum; a corrupt file or
 * one written for another model shape is rejected with an error. Files are the same on every
 * backend: a state saved on the CPU continues on the GPU and back. */
int mb_pool_save(mb_pool *p, int slot, const char *path, mb_err *e);
int mb_pool_load(mb_pool *p, int slot, const char *path, mb_err *e);

/* ---- the batched forward ----
 * Sequence i feeds tokens[off[i] .. off[i+1]) starting from slot[i]'s state and leaves the
 * state after its last token in slot[i]. Logits are written, n_vocab floats per row, for every
 * token whose want flag is set, in token order (want == NULL: the last token of each sequence).
 * The same call serves prefill, decode (span 1), drafting and verification (span k).
 * Batch invariance: a token's logits depend only on its own sequence's history, bit for bit. */
typedef struct mb_batch {
    int n_seq;
    const int32_t *tokens; /* all tokens, sequence after sequence */
    const int *off;        /* n_seq + 1 offsets into tokens */
    const int *slot;       /* n_seq pool slots, all different */
    const uint8_t *want;   /* per token: 1 = write its logits; NULL = last of each sequence */
} mb_batch;

int mb_forward(mb_model *m, mb_pool *p, const mb_batch *b, float *logits, mb_err *e);

/* ---- sampling ----
 * temperature <= 0 is greedy (argmax, lowest index wins ties). Otherwise the logits are
 * scaled by 1/temperature, filtered by top_k (0: off), top_p (1: off) and min_p (0: off),
 * and one token is drawn with a uniform number that is a pure function of (seed, pos), where
 * pos is the token's absolute position in its sequence (the number of tokens before it). */
typedef struct mb_sampling {
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    uint64_t seed;
} mb_sampling;

void mb_sampling_default(mb_sampling *s); /* greedy */
/* scratch: mb_sample_scratch_bytes(n_vocab) bytes, 8-byte aligned (malloc'd). */
size_t mb_sample_scratch_bytes(int n_vocab);
int mb_sample(const mb_sampling *s, const float *logits, int n_vocab, uint64_t pos, void *scratch);
/* One draw per row, as mb_sample: out[i] = the byte for settings s[i] from the logits row
 * logits + row[i] * n_vocab at position pos[i]. The rows are shared among the model's host
 * threads (the CPU backend's team, idle between forwards; on a GPU a team of up to 8 started at
 * the first call) when there are enough of them to pay for the hand-off; each draw is the same
 * function of its own row as mb_sample, so the bytes never depend on the split. Returns 0, or
 * -1 with e when the threads or their scratch cannot be had. */
int mb_sample_rows(mb_model *m, int n, const mb_sampling *const *s, const float *logits,
                   const int *row, const uint64_t *pos, int *out, mb_err *e);
/* The uniform draw in [0, 1) for (seed, pos): a counter-based generator. */
double mb_uniform(uint64_t seed, uint64_t pos);

/* Stop strings: returns the length of output that stays (the index where the earliest stop
 * string starts), or -1 if none of the stops occurs in out[0..len). */
long mb_stop_find(const char *const *stops, int n_stops, const uint8_t *out, size_t len);
/* The same for output checked after every byte (out[0..len-1) held no stop string): a new one
 * ends at the last byte, so only the last bytes, as many as the longest stop, are searched and
 * the cost does not grow with len. */
long mb_stop_find_tail(const char *const *stops, int n_stops, const uint8_t *out, size_t len);
/* ln of the probability the softmax of logits[0..n) (n >= 1) gives token (<= 0). */
double mb_logprob(const float *logits, int n, int token);
/* The same, and the min(k, n) likeliest tokens (falling probability, lower index first on ties)
 * into top[] with their log-probabilities in top_lp[]: the very numbers mb_logprob gives. */
double mb_logprob_top(const float *logits, int n, int token, int k, int *top, double *top_lp);

#ifdef __cplusplus
}
#endif
#endif
