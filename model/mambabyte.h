/* mambabyte.h: the engine interface. Everything above the engine (CLI, speculation, the
 * server's scheduler) calls only this. One backend today (the CPU); a device backend must
 * give the same answers for the same calls.
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

typedef enum { MB_F32 = 0, MB_F16 = 1, MB_BF16 = 2 } mb_dtype;

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

typedef struct mb_backend_opts {
    int n_threads; /* 0: one per core */
} mb_backend_opts;

typedef struct mb_model mb_model;

/* Loads config.json and model.safetensors (or every *.safetensors) from dir, or one .safetensors
 * file with config.json beside it. A model owns a team of worker threads: drive it (and its
 * pools) from one thread at a time, as the server's scheduler does. */
mb_model *mb_model_load(const char *dir, const mb_backend_opts *o, mb_err *e);
void mb_model_free(mb_model *m);
const mb_config *mb_model_config(const mb_model *m);
mb_dtype mb_model_dtype(const mb_model *m);      /* dtype the weights are held in */
size_t mb_model_weight_bytes(const mb_model *m); /* bytes read by one decode step */
int mb_model_threads(const mb_model *m);

/* ---- state pool: one recurrent state (conv window + SSM state per layer) per slot ---- */

typedef struct mb_pool mb_pool;

/* n_slots states; one mb_forward on this pool may feed at most max_tokens tokens in all
 * (prefill chunks included): the pool keeps that many positions of span inputs for rollback. */
mb_pool *mb_pool_create(mb_model *m, int n_slots, int max_tokens, mb_err *e);
void mb_pool_free(mb_pool *p);
int mb_pool_slots(const mb_pool *p);
/* Sets a slot to the empty history (all zeros). */
void mb_pool_reset(mb_pool *p, int slot);
/* After the last mb_forward on this pool fed k tokens to slot: make its state as if only the
 * first n_keep (0 <= n_keep <= k) had been fed. Replays conv and scan from the saved span
 * inputs; the dense layers are not re-run. Valid until the next mb_forward on the pool; may be
 * called again with another n_keep. Fails for a slot the last forward did not feed. */
int mb_pool_rollback(mb_pool *p, int slot, int n_keep, mb_err *e);
/* Copies the state of src into dst (fork); dst can no longer roll back. */
int mb_pool_copy(mb_pool *p, int dst, int src);
/* A slot's state as a flat blob, to spill to host memory and back. */
size_t mb_pool_state_bytes(const mb_pool *p);
void mb_pool_read(const mb_pool *p, int slot, void *dst);
void mb_pool_write(mb_pool *p, int slot, const void *src);
/* A slot to a file and back: versioned header, model shape and checksum; a corrupt file or
 * one written for another model shape is rejected with an error. */
int mb_pool_save(const mb_pool *p, int slot, const char *path, mb_err *e);
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
/* The uniform draw in [0, 1) for (seed, pos): a counter-based generator. */
double mb_uniform(uint64_t seed, uint64_t pos);

/* Stop strings: returns the length of output that stays (the index where the earliest stop
 * string starts), or -1 if none of the stops occurs in out[0..len). */
long mb_stop_find(const char *const *stops, int n_stops, const uint8_t *out, size_t len);

#ifdef __cplusplus
}
#endif
#endif
