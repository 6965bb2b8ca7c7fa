/* pool.c: recurrent states in slots. Each slot has two state buffers: a forward reads the
 * current one and writes the other, so the state before the span survives for free and
 * rollback replays the saved span inputs (conv inputs, dt, B) from it through the same conv and
 * scan steps the forward used: bit-identical to having fed only the kept tokens. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *zalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p) memset(p, 0, n);
    return p;
}

mb_pool *mb_pool_create(mb_model *m, int n_slots, int max_tokens, mb_err *e) {
    const mb_config *c = &m->c;
    if (n_slots < 1 || max_tokens < 1) {
        mb_fail(e, "pool: need at least one slot and one token per forward");
        return NULL;
    }
    mb_pool *p = calloc(1, sizeof *p);
    if (!p) {
        mb_fail(e, "out of memory");
        return NULL;
    }
    p->m = m;
    p->n_slots = n_slots;
    p->max_tokens = max_tokens;
    p->state_floats = (size_t)c->n_layer * mb_layer_state_floats(c);
    const size_t T = (size_t)max_tokens, L = (size_t)c->n_layer, E = (size_t)c->d_inner,
                 D = (size_t)c->d_model, N = (size_t)c->d_state, F = sizeof(float);
    p->state = zalloc((size_t)n_slots * 2 * p->state_floats * F);
    p->cur = calloc((size_t)n_slots, 1);
    p->j_xin = zalloc(L * T * E * F);
    p->j_dt = zalloc(L * T * E * F);
    p->j_B = zalloc(L * T * N * F);
    p->j_start = malloc((size_t)n_slots * sizeof(int));
    p->j_len = calloc((size_t)n_slots, sizeof(int));
    p->j_at = calloc((size_t)n_slots, sizeof(int));
    p->rows = malloc(T * sizeof(int));
    p->h = zalloc(T * D * F);
    p->xn = zalloc(T * D * F);
    p->xz = zalloc(T * 2 * E * F);
    p->u = zalloc(T * E * F);
    p->dbl = zalloc(T * (size_t)(c->dt_rank + 2 * c->d_state) * F);
    p->y = zalloc(T * E * F);
    if (!p->state || !p->cur || !p->j_xin || !p->j_dt || !p->j_B || !p->j_start || !p->j_len ||
        !p->j_at || !p->rows || !p->h || !p->xn || !p->xz || !p->u || !p->dbl || !p->y) {
        mb_pool_free(p);
        mb_fail(e, "pool: out of memory for %d slots x %d tokens", n_slots, max_tokens);
        return NULL;
    }
    for (int s = 0; s < n_slots; s++) p->j_start[s] = -1;
    return p;
}

void mb_pool_free(mb_pool *p) {
    if (!p) return;
    free(p->state);
    free(p->cur);
    free(p->j_xin);
    free(p->j_dt);
    free(p->j_B);
    free(p->j_start);
    free(p->j_len);
    free(p->j_at);
    free(p->rows);
    free(p->h);
    free(p->xn);
    free(p->xz);
    free(p->u);
    free(p->dbl);
    free(p->y);
    free(p);
}

int mb_pool_slots(const mb_pool *p) {
    return p->n_slots;
}
size_t mb_pool_state_bytes(const mb_pool *p) {
    return p->state_floats * sizeof(float);
}

void mb_pool_reset(mb_pool *p, int slot) {
    memset(mb_slot_state(p, slot, p->cur[slot]), 0, mb_pool_state_bytes(p));
    p->j_start[slot] = -1;
}

int mb_pool_rollback(mb_pool *p, int slot, int n_keep, mb_err *e) {
    if (slot < 0 || slot >= p->n_slots) return mb_fail(e, "rollback: slot %d out of range", slot);
    if (p->j_start[slot] < 0)
        return mb_fail(e, "rollback: slot %d was not fed by the last forward", slot);
    if (n_keep < 0 || n_keep > p->j_len[slot])
        return mb_fail(e, "rollback: keep %d of a span of %d", n_keep, p->j_len[slot]);
    if (n_keep == p->j_at[slot]) return 0;
    const mb_config *c = &p->m->c;
    const size_t E = (size_t)c->d_inner, N = (size_t)c->d_state, T = (size_t)p->max_tokens;
    const size_t lsz = mb_layer_state_floats(c), wsz = E * (size_t)(c->d_conv - 1);
    const float *start = mb_slot_state(p, slot, !p->cur[slot]);
    float *st = mb_slot_state(p, slot, p->cur[slot]);
    memcpy(st, start, mb_pool_state_bytes(p));
    float *u = p->u; /* activation scratch is free between forwards */
    for (int l = 0; l < c->n_layer; l++) {
        const mb_layer *L = &p->m->layers[l];
        float *win = st + (size_t)l * lsz, *ssm = win + wsz;
        for (int i = 0; i < n_keep; i++) {
            size_t t = (size_t)(p->j_start[slot] + i);
            mb_conv_step(L, c, win, win, p->j_xin + ((size_t)l * T + t) * E, u, 0, (int)E);
            mb_scan_step(L, c, ssm, ssm, u, p->j_dt + ((size_t)l * T + t) * E,
                         p->j_B + ((size_t)l * T + t) * N, NULL, NULL, 0, (int)E);
        }
    }
    p->j_at[slot] = n_keep;
    return 0;
}

int mb_pool_copy(mb_pool *p, int dst, int src) {
    if (dst < 0 || src < 0 || dst >= p->n_slots || src >= p->n_slots) return -1;
    if (dst == src) return 0;
    memcpy(mb_slot_state(p, dst, p->cur[dst]), mb_slot_state(p, src, p->cur[src]),
           mb_pool_state_bytes(p));
    p->j_start[dst] = -1;
    return 0;
}

void mb_pool_read(const mb_pool *p, int slot, void *dst) {
    memcpy(dst, mb_slot_state(p, slot, p->cur[slot]), mb_pool_state_bytes(p));
}

void mb_pool_write(mb_pool *p, int slot, const void *src) {
    memcpy(mb_slot_state(p, slot, p->cur[slot]), src, mb_pool_state_bytes(p));
    p->j_start[slot] = -1;
}

/* ---------------------------------------------------------------- state files
 * "MBSTATE1", then u32 fields: version, d_model, n_layer, d_inner, d_state, d_conv, n_vocab,
 * dt_rank; u64 payload bytes; the float32 state; u64 FNV-1a of everything before it. */

#define STATE_MAGIC   "MBSTATE1"
#define STATE_VERSION 1u
#define STATE_FIELDS  8

static uint64_t fnv1a(uint64_t h, const void *buf, size_t n) {
    const uint8_t *b = buf;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void state_header(const mb_pool *p, uint8_t *hdr) {
    const mb_config *c = &p->m->c;
    uint32_t f[STATE_FIELDS] = {STATE_VERSION,        (uint32_t)c->d_model, (uint32_t)c->n_layer,
                                (uint32_t)c->d_inner, (uint32_t)c->d_state, (uint32_t)c->d_conv,
                                (uint32_t)c->n_vocab, (uint32_t)c->dt_rank};
    uint64_t n = mb_pool_state_bytes(p);
    memcpy(hdr, STATE_MAGIC, 8);
    memcpy(hdr + 8, f, sizeof f);
    memcpy(hdr + 8 + sizeof f, &n, 8);
}

#define HDR_BYTES (8 + 4 * STATE_FIELDS + 8)

int mb_pool_save(const mb_pool *p, int slot, const char *path, mb_err *e) {
    if (slot < 0 || slot >= p->n_slots) return mb_fail(e, "save: slot %d out of range", slot);
    uint8_t hdr[HDR_BYTES];
    state_header(p, hdr);
    const float *st = mb_slot_state(p, slot, p->cur[slot]);
    size_t n = mb_pool_state_bytes(p);
    uint64_t sum = fnv1a(fnv1a(14695981039346656037ull, hdr, sizeof hdr), st, n);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return mb_fail(e, "%s: %s", tmp, strerror(errno));
    int ok = fwrite(hdr, 1, sizeof hdr, f) == sizeof hdr && fwrite(st, 1, n, f) == n &&
             fwrite(&sum, 1, 8, f) == 8;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        return mb_fail(e, "%s: write failed: %s", path, strerror(errno));
    }
    return 0;
}

int mb_pool_load(mb_pool *p, int slot, const char *path, mb_err *e) {
    if (slot < 0 || slot >= p->n_slots) return mb_fail(e, "load: slot %d out of range", slot);
    FILE *f = fopen(path, "rb");
    if (!f) return mb_fail(e, "%s: %s", path, strerror(errno));
    uint8_t hdr[HDR_BYTES], want[HDR_BYTES];
    size_t n = mb_pool_state_bytes(p);
    float *buf = malloc(n);
    uint64_t sum = 0;
    int rc = 0;
    state_header(p, want);
    if (!buf)
        rc = mb_fail(e, "out of memory");
    else if (fread(hdr, 1, sizeof hdr, f) != sizeof hdr || memcmp(hdr, STATE_MAGIC, 8))
        rc = mb_fail(e, "%s: not a mambabyte state file", path);
    else if (memcmp(hdr, want, sizeof hdr))
        rc = mb_fail(e, "%s: written for another model shape or format version", path);
    else if (fread(buf, 1, n, f) != n || fread(&sum, 1, 8, f) != 8 || fgetc(f) != EOF)
        rc = mb_fail(e, "%s: truncated or has trailing bytes", path);
    else if (sum != fnv1a(fnv1a(14695981039346656037ull, hdr, sizeof hdr), buf, n))
        rc = mb_fail(e, "%s: checksum mismatch (corrupt)", path);
    fclose(f);
    if (!rc) mb_pool_write(p, slot, buf);
    free(buf);
    return rc;
}
