/* model.c: load a Mamba-1 language model from a folder (config.json + safetensors) in either
 * the Hugging Face MambaForCausalLM layout or the mamba_ssm / MambaByte release layout.
 * Every tensor's shape is checked against the config before it is used. */
#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "internal.h"

/* ---------------------------------------------------------------- config.json */

/* An integer config value: the first of the keys present, or def (-1: required). */
static int cfg_int(const cJSON *o, const char *k1, const char *k2, int def, int *out,
                   const char *path, mb_err *e) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k1);
    if (!j && k2) j = cJSON_GetObjectItemCaseSensitive(o, k2);
    if (!j || cJSON_IsNull(j)) {
        if (def < 0) return mb_fail(e, "%s: missing '%s'", path, k1);
        *out = def;
        return 0;
    }
    /* the range first: casting a double outside int's range is undefined */
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= 0 && j->valuedouble <= 1 << 24) ||
        j->valuedouble != floor(j->valuedouble))
        return mb_fail(e, "%s: '%s' must be an integer from 0 to %d", path, j->string, 1 << 24);
    *out = (int)j->valuedouble;
    return 0;
}

static int cfg_bool(const cJSON *o, const char *k1, const char *k2, int def) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k1);
    if (!j && k2) j = cJSON_GetObjectItemCaseSensitive(o, k2);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}

/* Reads the shape from config.json, in HF keys or mamba_ssm keys (ssm_cfg nested). The vocab
 * padding (n_rows) and the norm kind are settled later against the tensors themselves. */
static int parse_config(const char *path, mb_config *c, int *pad_mult, int *rms_key, mb_err *e) {
    size_t len;
    char *txt = (char *)mb_read_file(path, 1 << 20, &len, e);
    if (!txt) return -1;
    int rc = mb_config_parse(txt, len, path, c, pad_mult, rms_key, e);
    free(txt);
    return rc;
}

int mb_config_parse(const char *txt, size_t len, const char *path, mb_config *c, int *pad_mult,
                    int *rms_key, mb_err *e) {
    cJSON *o = cJSON_ParseWithLength(txt, len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return mb_fail(e, "%s: not a JSON object", path);
    }
    const cJSON *ssm = cJSON_GetObjectItemCaseSensitive(o, "ssm_cfg");
    const cJSON *s = cJSON_IsObject(ssm) ? ssm : o;
    int expand = 2, rc = 0;
    memset(c, 0, sizeof *c);
    rc |= cfg_int(o, "hidden_size", "d_model", -1, &c->d_model, path, e);
    rc = rc ? rc : cfg_int(o, "num_hidden_layers", "n_layer", -1, &c->n_layer, path, e);
    rc = rc ? rc : cfg_int(o, "vocab_size", NULL, -1, &c->n_vocab, path, e);
    rc = rc ? rc : cfg_int(s, "state_size", "d_state", 16, &c->d_state, path, e);
    rc = rc ? rc : cfg_int(s, "conv_kernel", "d_conv", 4, &c->d_conv, path, e);
    rc = rc ? rc : cfg_int(s, "expand", NULL, 2, &expand, path, e);
    /* both at most 2^24: the product in 64 bits, refused past 2^24 like any dimension */
    const int64_t inner = (int64_t)expand * c->d_model;
    if (!rc && inner > 1 << 24)
        rc = mb_fail(e, "%s: expand x d_model = %lld is larger than %d", path, (long long)inner,
                     1 << 24);
    rc = rc ? rc : cfg_int(o, "intermediate_size", NULL, (int)inner, &c->d_inner, path, e);
    rc = rc ? rc
            : cfg_int(o, "pad_vocab_size_multiple", NULL, cJSON_IsObject(ssm) ? 8 : 1, pad_mult,
                      path, e);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(s, "time_step_rank");
    if (!r) r = cJSON_GetObjectItemCaseSensitive(s, "dt_rank");
    if (!rc && (!r || cJSON_IsNull(r) || (cJSON_IsString(r) && !strcmp(r->valuestring, "auto"))))
        c->dt_rank = (c->d_model + 15) / 16;
    else if (!rc)
        rc = cfg_int(
            s, cJSON_GetObjectItemCaseSensitive(s, "time_step_rank") ? "time_step_rank" : "dt_rank",
            NULL, -1, &c->dt_rank, path, e);
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(o, "layer_norm_epsilon");
    if (!eps) eps = cJSON_GetObjectItemCaseSensitive(o, "norm_epsilon");
    c->norm_eps = cJSON_IsNumber(eps) ? (float)eps->valuedouble : 1e-5f;
    const cJSON *rms = cJSON_GetObjectItemCaseSensitive(o, "rms_norm");
    *rms_key = cJSON_IsBool(rms) ? cJSON_IsTrue(rms) : -1;
    c->tied = cfg_bool(o, "tie_word_embeddings", "tie_embeddings", 1);
    cJSON_Delete(o);
    if (rc) return rc;
    if (!c->d_model || !c->n_layer || !c->n_vocab || !c->d_state || c->d_conv < 1 || !c->d_inner ||
        !c->dt_rank || *pad_mult < 1)
        return mb_fail(e, "%s: a dimension is zero", path);
    return 0;
}

/* ---------------------------------------------------------------- tensors */

typedef struct loader {
    mb_model *m;
    const char *prefix; /* "" or "module." */
    const char *dir;
} loader;

static void *own(mb_model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return NULL;
        m->owned = o;
        m->cap_owned = cap;
    }
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (p) m->owned[m->n_owned++] = p;
    return p;
}

static const mb_st_tensor *find(const loader *ld, const char *name) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", ld->prefix, name);
    for (int i = 0; i < ld->m->n_files; i++) {
        const mb_st_tensor *t = mb_st_find(&ld->m->files[i], full);
        if (t) return t;
    }
    return NULL;
}

static const char *file_of(const loader *ld, const mb_st_tensor *t) {
    for (int i = 0; i < ld->m->n_files; i++) {
        const mb_st_file *f = &ld->m->files[i];
        if (t >= f->t && t < f->t + f->n) return f->path;
    }
    return ld->dir;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f)
        bits = sign | 0x7f800000u | man << 13;
    else if (exp)
        bits = sign | (exp + 112) << 23 | man << 13;
    else if (!man)
        bits = sign;
    else { /* subnormal: renormalise */
        exp = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            exp--;
        }
        bits = sign | exp << 23 | (man & 0x3ff) << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Looks a tensor up and checks its shape; dims[] ends at the first 0. */
static const mb_st_tensor *get(const loader *ld, const char *name, const int64_t *dims,
                               int optional, mb_err *e) {
    const mb_st_tensor *t = find(ld, name);
    if (!t) {
        if (!optional) mb_fail(e, "%s: missing tensor '%s%s'", ld->dir, ld->prefix, name);
        return NULL;
    }
    int nd = 0;
    while (nd < 4 && dims[nd]) nd++;
    int ok = t->n_dims == nd;
    for (int d = 0; ok && d < nd; d++) ok = t->shape[d] == dims[d];
    if (!ok) {
        char want[96] = "", have[96] = "";
        for (int d = 0; d < nd; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)dims[d]);
        for (int d = 0; d < t->n_dims; d++)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        mb_fail(e, "%s: tensor '%s' has shape [%s], the config needs [%s]", file_of(ld, t), t->name,
                have, want);
        return NULL;
    }
    if (t->dtype == MB_ST_OTHER) {
        mb_fail(e, "%s: tensor '%s' has an unsupported dtype (F32, F16 and BF16 are)",
                file_of(ld, t), t->name);
        return NULL;
    }
    return t;
}

/* A small tensor as float32 (always converted or copied, so alignment never matters). */
/* Tensor t as float32 into out (F16 and BF16 widened exactly). */
static void widen(const mb_st_tensor *t, float *out) {
    size_t n = t->n_bytes / mb_st_dtype_size(t->dtype);
    if (t->dtype == MB_ST_F32) {
        memcpy(out, t->data, t->n_bytes);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, t->data + 2 * i, 2);
        if (t->dtype == MB_ST_F16)
            out[i] = half_to_float(h);
        else {
            uint32_t b = (uint32_t)h << 16;
            memcpy(&out[i], &b, 4);
        }
    }
}

/* A small tensor as float32 (always converted or copied, so alignment never matters). */
static int load_vec(const loader *ld, const char *name, const int64_t *dims, int optional,
                    const float **out, mb_err *e) {
    *out = NULL;
    const mb_st_tensor *t = get(ld, name, dims, optional, e);
    if (!t) return optional && !find(ld, name) ? 0 : -1;
    float *v = own(ld->m, t->n_bytes / mb_st_dtype_size(t->dtype) * sizeof(float));
    if (!v) return mb_fail(e, "out of memory loading '%s'", name);
    widen(t, v);
    *out = v;
    return 0;
}

/* Weight matrices live in one anonymous region backed by 2 MB pages where the kernel allows
 * (madvise): a decode step streams every weight once, and with 4 KB pages the TLB misses cost
 * about a third of the step (measured: 255 -> 340 bytes/s at batch 1 on the 20M benchmark model).
 * The region is reserved for the largest case (every tensor widened to F32); pages never
 * touched cost nothing. */
static int arena_reserve(mb_model *m, mb_err *e) {
    size_t need = 2u << 20;
    for (int f = 0; f < m->n_files; f++)
        for (int i = 0; i < m->files[f].n; i++) need += 2 * m->files[f].t[i].n_bytes + 64;
    void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return mb_fail(e, "cannot reserve %zu bytes for the weights", need);
    m->arena_map = p;
    m->arena_map_len = need;
    uintptr_t a = ((uintptr_t)p + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
    m->arena = (uint8_t *)a;
    m->arena_len = need - (a - (uintptr_t)p);
    madvise(m->arena, m->arena_len, MADV_HUGEPAGE);
    return 0;
}

static void *arena_alloc(mb_model *m, size_t bytes) {
    size_t at = (m->arena_used + 63) & ~(size_t)63;
    if (at + bytes > m->arena_len) return NULL;
    m->arena_used = at + bytes;
    return m->arena + at;
}

/* A weight matrix, copied into the arena: F32 and BF16 as they are, F16 widened to F32. */
static int load_mat(const loader *ld, const char *name, int rows, int cols, mb_mat *out,
                    mb_err *e) {
    const int64_t dims[] = {rows, cols, 0};
    const mb_st_tensor *t = get(ld, name, dims, 0, e);
    if (!t) return -1;
    out->rows = rows;
    out->cols = cols;
    out->dtype = t->dtype == MB_ST_BF16 ? MB_BF16 : MB_F32;
    size_t bytes = (size_t)rows * (size_t)cols * (out->dtype == MB_F32 ? 4 : 2);
    void *buf = arena_alloc(ld->m, bytes);
    if (!buf) return mb_fail(e, "out of memory loading '%s'", name);
    if (t->dtype == MB_ST_F16)
        widen(t, buf);
    else
        memcpy(buf, t->data, bytes);
    out->w = buf;
    return 0;
}

static int load_layer(const loader *ld, int i, mb_layer *L, int layer_norm, mb_err *e) {
    const mb_config *c = &ld->m->c;
    char n[128];
    const int64_t E = c->d_inner, D = c->d_model, N = c->d_state, R = c->dt_rank, K = c->d_conv;
#define NAME(s) (snprintf(n, sizeof n, "backbone.layers.%d.%s", i, s), n)
    const int64_t dD[] = {D, 0}, dE[] = {E, 0}, d2E[] = {2 * E, 0}, dEN[] = {E, N, 0},
                  dconv[] = {E, 1, K, 0};
    if (load_vec(ld, NAME("norm.weight"), dD, 0, &L->norm_w, e)) return -1;
    if (layer_norm && load_vec(ld, NAME("norm.bias"), dD, 0, &L->norm_b, e)) return -1;
    if (load_mat(ld, NAME("mixer.in_proj.weight"), (int)(2 * E), (int)D, &L->in_proj, e)) return -1;
    if (load_vec(ld, NAME("mixer.in_proj.bias"), d2E, 1, &L->in_b, e)) return -1;
    const float *conv;
    if (load_vec(ld, NAME("mixer.conv1d.weight"), dconv, 0, &conv, e)) return -1;
    float *conv_t = own(ld->m, (size_t)(E * K) * sizeof(float)); /* (E, K) -> (K, E) */
    if (!conv_t) return mb_fail(e, "out of memory");
    for (int64_t ch = 0; ch < E; ch++)
        for (int64_t k = 0; k < K; k++) conv_t[k * E + ch] = conv[ch * K + k];
    L->conv_w = conv_t;
    if (load_vec(ld, NAME("mixer.conv1d.bias"), dE, 0, &L->conv_b, e)) return -1;
    if (load_mat(ld, NAME("mixer.x_proj.weight"), (int)(R + 2 * N), (int)E, &L->x_proj, e))
        return -1;
    if (load_mat(ld, NAME("mixer.dt_proj.weight"), (int)E, (int)R, &L->dt_proj, e)) return -1;
    if (load_vec(ld, NAME("mixer.dt_proj.bias"), dE, 0, &L->dt_b, e)) return -1;
    const float *A_log;
    if (load_vec(ld, NAME("mixer.A_log"), dEN, 0, &A_log, e)) return -1;
    float *A = (float *)A_log; /* owned copy: turn A_log into A = -exp(A_log) in place */
    for (int64_t k = 0; k < E * N; k++) A[k] = -expf(A_log[k]);
    L->A = A;
    if (load_vec(ld, NAME("mixer.D"), dE, 0, &L->D, e)) return -1;
    if (load_mat(ld, NAME("mixer.out_proj.weight"), (int)D, (int)E, &L->out_proj, e)) return -1;
    if (load_vec(ld, NAME("mixer.out_proj.bias"), dD, 1, &L->out_b, e)) return -1;
#undef NAME
    return 0;
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Opens the weight files: `path` itself when it is a .safetensors file, else dir/model.safetensors,
 * else every *.safetensors in dir (shards). */
static int open_files(mb_model *m, const char *path, const char *dir, mb_err *e) {
    char buf[8400];
    struct stat st;
    if (has_suffix(path, ".safetensors")) return mb_st_open(&m->files[m->n_files++], path, e);
    snprintf(buf, sizeof buf, "%s/model.safetensors", dir);
    if (!stat(buf, &st)) return mb_st_open(&m->files[m->n_files++], buf, e);
    DIR *d = opendir(dir);
    if (!d) return mb_fail(e, "%s: cannot open the model folder", dir);
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        if (!has_suffix(de->d_name, ".safetensors")) continue;
        if (m->n_files == (int)(sizeof m->files / sizeof m->files[0])) {
            rc = mb_fail(e, "%s: too many safetensors shards", dir);
            break;
        }
        snprintf(buf, sizeof buf, "%s/%s", dir, de->d_name);
        rc = mb_st_open(&m->files[m->n_files], buf, e);
        if (!rc) m->n_files++;
    }
    closedir(d);
    if (!rc && !m->n_files) rc = mb_fail(e, "%s: no .safetensors file", dir);
    return rc;
}

mb_model *mb_model_load(const char *path, const mb_backend_opts *o, mb_err *e) {
    mb_model *m = calloc(1, sizeof *m);
    if (!m) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    char dir[4096], cfg[4200];
    snprintf(dir, sizeof dir, "%s", path);
    if (has_suffix(path, ".safetensors")) {
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
    }
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    int pad_mult = 1, rms_key = -1;
    if (strlen(path) >= sizeof dir - 64) {
        mb_fail(e, "model path too long");
        goto fail;
    }
    if (parse_config(cfg, &m->c, &pad_mult, &rms_key, e) || open_files(m, path, dir, e)) goto fail;
    if (arena_reserve(m, e)) goto fail;
    mb_config *c = &m->c;
    loader ld = {m, "", dir};
    if (!find(&ld, "backbone.norm_f.weight")) ld.prefix = "module.";
    const char *emb_name = find(&ld, "backbone.embeddings.weight") ? "backbone.embeddings.weight"
                                                                   : "backbone.embedding.weight";
    const mb_st_tensor *et = find(&ld, emb_name);
    if (!et) {
        mb_fail(e,
                "%s: missing tensor 'backbone.embeddings.weight' (or 'backbone.embedding.weight')",
                dir);
        goto fail;
    }
    int padded = (c->n_vocab + pad_mult - 1) / pad_mult * pad_mult;
    c->n_rows = et->n_dims == 2 && et->shape[0] == padded ? padded : c->n_vocab;
    /* LayerNorm with bias when the checkpoint has norm biases or says rms_norm: false. */
    int layer_norm = rms_key == 0 || find(&ld, "backbone.norm_f.bias") != NULL;
    c->rms_norm = !layer_norm;
    if (load_mat(&ld, emb_name, c->n_rows, c->d_model, &m->embed, e)) goto fail;
    const int64_t dD[] = {c->d_model, 0};
    if (load_vec(&ld, "backbone.norm_f.weight", dD, 0, &m->nf_w, e)) goto fail;
    if (layer_norm && load_vec(&ld, "backbone.norm_f.bias", dD, 0, &m->nf_b, e)) goto fail;
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers) {
        mb_fail(e, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->n_layer; i++)
        if (load_layer(&ld, i, &m->layers[i], layer_norm, e)) goto fail;
    c->proj_bias = m->layers[0].in_b != NULL;
    if (find(&ld, "lm_head.weight")) {
        c->tied = 0;
        if (load_mat(&ld, "lm_head.weight", c->n_rows, c->d_model, &m->head, e)) goto fail;
    } else {
        c->tied = 1;
        m->head = m->embed;
    }
    /* everything is copied out: the files are no longer needed */
    for (int i = 0; i < m->n_files; i++) mb_st_close(&m->files[i]);
    m->n_files = 0;
    if (mb_backend_choose(m, o, e)) goto fail;
    return m;
fail:
    mb_model_free(m);
    return NULL;
}

void mb_model_free(mb_model *m) {
    if (!m) return;
    mb_backend_release(m);
    if (m->sampler) mb_threads_free(m->sampler);
    free(m->sample_scratch);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_files; i++) mb_st_close(&m->files[i]);
    if (m->arena_map) munmap(m->arena_map, m->arena_map_len);
    free(m->layers);
    free(m);
}

const mb_config *mb_model_config(const mb_model *m) {
    return &m->c;
}
mb_dtype mb_model_dtype(const mb_model *m) {
    return m->layers[0].in_proj.dtype;
}

static size_t mat_bytes(const mb_mat *w) {
    return (size_t)w->rows * ((size_t)w->cols * mb_dtype_size(w->dtype) + (w->scale ? 4 : 0));
}

size_t mb_model_weight_bytes(const mb_model *m) {
    size_t b = mat_bytes(&m->head) + (size_t)m->c.d_model * 4;
    for (int i = 0; i < m->c.n_layer; i++) {
        const mb_layer *L = &m->layers[i];
        b += mat_bytes(&L->in_proj) + mat_bytes(&L->x_proj) + mat_bytes(&L->dt_proj) +
             mat_bytes(&L->out_proj);
        b += (size_t)m->c.d_inner * ((size_t)m->c.d_conv + 3 + (size_t)m->c.d_state) * 4;
    }
    return b;
}
