/* pool.c: recurrent states in slots, for every backend. Each slot has two state buffers: a
 * forward reads the current one and writes the other, so the state before a span survives for
 * free and rollback replays the saved span inputs (conv inputs, dt, B) from it through the
 * same conv and scan steps the forward used: bit-identical to having fed only the kept tokens.
 * This file checks arguments and keeps that bookkeeping once; the backend moves the bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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
    p->cur = calloc((size_t)n_slots, 1);
    p->j_start = malloc((size_t)n_slots * sizeof(int));
    p->j_len = calloc((size_t)n_slots, sizeof(int));
    p->j_at = calloc((size_t)n_slots, sizeof(int));
    p->rows = malloc((size_t)max_tokens * sizeof(int));
    p->j_gen = calloc((size_t)n_slots, sizeof(uint32_t));
    p->mark = calloc((size_t)n_slots, sizeof(uint32_t));
    if (!p->cur || !p->j_start || !p->j_len || !p->j_at || !p->rows || !p->j_gen || !p->mark) {
        mb_pool_free(p);
        mb_fail(e, "pool: out of memory for %d slots x %d tokens", n_slots, max_tokens);
        return NULL;
    }
    for (int s = 0; s < n_slots; s++) p->j_start[s] = -1;
    if (m->be->pool_init(p, e)) {
        mb_pool_free(p);
        return NULL;
    }
    return p;
}

void mb_pool_free(mb_pool *p) {
    if (!p) return;
    p->m->be->pool_free(p);
    free(p->cur);
    free(p->j_start);
    free(p->j_len);
    free(p->j_at);
    free(p->rows);
    free(p->j_gen);
    free(p->mark);
    free(p);
}

int mb_pool_slots(const mb_pool *p) {
    return p->n_slots;
}
size_t mb_pool_state_bytes(const mb_pool *p) {
    return p->state_floats * sizeof(float);
}

static int bad_slot(const mb_pool *p, int slot, const char *what, mb_err *e) {
    if (slot >= 0 && slot < p->n_slots) return 0;
    return mb_fail(e, "%s: slot %d out of range [0, %d)", what, slot, p->n_slots);
}

int mb_pool_reset(mb_pool *p, int slot, mb_err *e) {
    if (bad_slot(p, slot, "reset", e)) return -1;
    p->j_start[slot] = -1;
    return p->m->be->reset(p, slot, e);
}

int mb_pool_rollback(mb_pool *p, int slot, int n_keep, mb_err *e) {
    if (bad_slot(p, slot, "rollback", e)) return -1;
    if (p->j_start[slot] < 0 || p->j_gen[slot] != p->gen)
        return mb_fail(e, "rollback: slot %d was not fed by the last forward", slot);
    if (n_keep < 0 || n_keep > p->j_len[slot])
        return mb_fail(e, "rollback: keep %d of a span of %d", n_keep, p->j_len[slot]);
    if (n_keep == p->j_at[slot]) return 0;
    if (p->m->be->rollback(p, slot, p->j_start[slot], n_keep, e)) return -1;
    p->j_at[slot] = n_keep;
    return 0;
}

int mb_pool_copy(mb_pool *p, int dst, int src, mb_err *e) {
    if (bad_slot(p, dst, "copy", e) || bad_slot(p, src, "copy", e)) return -1;
    if (dst == src) return 0;
    p->j_start[dst] = -1;
    return p->m->be->copy(p, dst, src, e);
}

int mb_pool_read(mb_pool *p, int slot, void *dst, mb_err *e) {
    if (bad_slot(p, slot, "read", e)) return -1;
    return p->m->be->read(p, slot, dst, e);
}

int mb_pool_write(mb_pool *p, int slot, const void *src, mb_err *e) {
    if (bad_slot(p, slot, "write", e)) return -1;
    p->j_start[slot] = -1;
    return p->m->be->write(p, slot, src, e);
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

int mb_pool_save(mb_pool *p, int slot, const char *path, mb_err *e) {
    if (slot < 0 || slot >= p->n_slots) return mb_fail(e, "save: slot %d out of range", slot);
    uint8_t hdr[HDR_BYTES];
    state_header(p, hdr);
    size_t n = mb_pool_state_bytes(p);
    float *st = malloc(n);
    if (!st) return mb_fail(e, "out of memory");
    if (mb_pool_read(p, slot, st, e)) {
        free(st);
        return -1;
    }
    uint64_t sum = fnv1a(fnv1a(14695981039346656037ull, hdr, sizeof hdr), st, n);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(st);
        return mb_fail(e, "%s: %s", tmp, strerror(errno));
    }
    int ok = fwrite(hdr, 1, sizeof hdr, f) == sizeof hdr && fwrite(st, 1, n, f) == n &&
             fwrite(&sum, 1, 8, f) == 8;
    ok = (fclose(f) == 0) && ok;
    free(st);
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
    if (!rc) rc = mb_pool_write(p, slot, buf, e);
    free(buf);
    return rc;
}
