/* srv_session_file.c: the saved-session record: build and parse (srv_session_file.h). */
#include "srv_session_file.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC        "MBSESS01"
#define VERSION      1u
#define SHAPE_FIELDS 7
/* JSON numbers are doubles: a history longer than 2^53 could not be reported exactly. */
#define MAX_HISTORY (1ull << 53)
#define FIXED_BYTES (8 + 4 + 4 * SHAPE_FIELDS + 8 + 4)

static uint64_t fnv1a(const uint8_t *b, size_t n) {
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void shape_fields(const mb_config *c, uint32_t *f) {
    const int v[SHAPE_FIELDS] = {c->n_vocab, c->d_model, c->n_layer, c->d_inner,
                                 c->d_state, c->d_conv,  c->dt_rank};
    for (int i = 0; i < SHAPE_FIELDS; i++) f[i] = (uint32_t)v[i];
}

uint8_t *srv_session_record_build(const srv_session_record *r, const mb_config *shape,
                                  size_t state_bytes, size_t *len) {
    size_t id_len = strlen(r->id);
    size_t n = FIXED_BYTES + id_len + 8 + state_bytes + (r->draft_len ? 8 + r->draft_len : 0) + 8;
    uint8_t *buf = malloc(n), *p = buf;
    if (!buf) return NULL;
    uint32_t version = VERSION, f[SHAPE_FIELDS];
    uint64_t nb = r->n_bytes, sb = state_bytes;
    shape_fields(shape, f);
    memcpy(p, MAGIC, 8), p += 8;
    memcpy(p, &version, 4), p += 4;
    memcpy(p, f, sizeof f), p += sizeof f;
    memcpy(p, &nb, 8), p += 8;
    *p++ = (uint8_t)(r->has_pending != 0);
    *p++ = r->has_pending ? r->pending : 0;
    *p++ = (uint8_t)id_len;
    *p++ = 0;
    memcpy(p, r->id, id_len), p += id_len;
    memcpy(p, &sb, 8), p += 8;
    memcpy(p, r->state, state_bytes), p += state_bytes;
    if (r->draft_len) {
        uint64_t dl = r->draft_len;
        memcpy(p, &dl, 8), p += 8;
        memcpy(p, r->draft, r->draft_len), p += r->draft_len;
    }
    uint64_t sum = fnv1a(buf, (size_t)(p - buf));
    memcpy(p, &sum, 8);
    *len = n;
    return buf;
}

static int bad(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

int srv_session_record_parse(const uint8_t *buf, size_t len, const mb_config *shape,
                             size_t state_bytes, srv_session_record *r, char *err, size_t n) {
    memset(r, 0, sizeof *r);
    if (len < FIXED_BYTES || memcmp(buf, MAGIC, 8)) return bad(err, n, "not a session record");
    size_t id_len = buf[FIXED_BYTES - 2];
    /* Every length is checked before the checksum is read, so nothing is read past len. */
    const size_t plain = FIXED_BYTES + id_len + 8 + state_bytes + 8;
    uint64_t dl = 0;
    if (len > plain) {
        if (len - plain < 8)
            return bad(err, n, "%zu bytes, not the size of a record for this model", len);
        memcpy(&dl, buf + plain - 8, 8);
        if (dl == 0 || dl != len - plain - 8)
            return bad(err, n, "a drafter part of %llu bytes in a record of %zu bytes",
                       (unsigned long long)dl, len);
    } else if (len != plain) {
        return bad(err, n, "%zu bytes, not the size of a record for this model", len);
    }
    uint64_t sum;
    memcpy(&sum, buf + len - 8, 8);
    if (sum != fnv1a(buf, len - 8)) return bad(err, n, "checksum mismatch (corrupt)");
    uint32_t version, f[SHAPE_FIELDS], want[SHAPE_FIELDS];
    uint64_t nb, sb;
    memcpy(&version, buf + 8, 4);
    memcpy(f, buf + 12, sizeof f);
    memcpy(&nb, buf + 12 + sizeof f, 8);
    const uint8_t *p = buf + 12 + sizeof f + 8;
    shape_fields(shape, want);
    if (version != VERSION) return bad(err, n, "format version %u, not %u", version, VERSION);
    if (memcmp(f, want, sizeof f)) return bad(err, n, "written for another model shape");
    if (p[0] > 1 || (!p[0] && p[1]) || p[3]) return bad(err, n, "bad pending byte fields");
    if (nb > MAX_HISTORY || nb < p[0])
        return bad(err, n, "bad history length %llu", (unsigned long long)nb);
    if (id_len == 0 || id_len >= SRV_ID_MAX) return bad(err, n, "bad id length %zu", id_len);
    memcpy(r->id, p + 4, id_len);
    r->id[id_len] = 0;
    if (strlen(r->id) != id_len || !srv_id_valid(r->id)) return bad(err, n, "bad session id");
    p += 4 + id_len;
    memcpy(&sb, p, 8);
    if (sb != state_bytes)
        return bad(err, n, "state of %llu bytes, not %zu", (unsigned long long)sb, state_bytes);
    p += 8;
    /* A NaN or infinity in a state would poison every byte after it. */
    for (size_t i = 0; i + 4 <= state_bytes; i += 4) {
        float v;
        memcpy(&v, p + i, 4);
        if (!isfinite(v)) return bad(err, n, "the state holds a value that is not finite");
    }
    r->n_bytes = nb;
    r->has_pending = buf[FIXED_BYTES - 4];
    r->pending = buf[FIXED_BYTES - 3];
    r->state = p;
    r->draft = dl ? p + state_bytes + 8 : NULL;
    r->draft_len = (size_t)dl;
    return 0;
}
