/* srv_session_file.h: a saved session as one record, <session_dir>/<id>.session: the history's
 * length and pending byte, the session's id, the model's shape and its recurrent state, all
 * under one checksum, so nothing of it can change unseen. The layout (native byte order, as the
 * engine's state files):
 *
 *   "MBSESS01"  u32 version (1)
 *   u32 n_vocab, d_model, n_layer, d_inner, d_state, d_conv, dt_rank   the model's shape
 *   u64 n_bytes                 bytes of history, the pending byte included (at most 2^53)
 *   u8 has_pending, u8 pending  pending is 0 when has_pending is 0
 *   u8 id_len, u8 0             then id_len bytes of id (a valid session id)
 *   u64 state_bytes             then the state: mb_pool_read's blob (float32, all finite)
 *   optionally (a server with a drafter): u64 draft_len (> 0), then draft_len bytes of the
 *     drafter's state and text (srv_session.c writes and checks them)
 *   u64 FNV-1a of every byte before it */
#ifndef SRV_SESSION_FILE_H
#define SRV_SESSION_FILE_H

#include "mambabyte.h"
#include "srv_request.h"

#include <stddef.h>
#include <stdint.h>

typedef struct srv_session_record {
    char id[SRV_ID_MAX];
    unsigned long long n_bytes;
    int has_pending;
    uint8_t pending;
    const void *state; /* state_bytes bytes */
    const void *draft; /* draft_len bytes; draft_len 0: none */
    size_t draft_len;
} srv_session_record;

/* The record as a malloc'd buffer of *len bytes; NULL when out of memory. */
uint8_t *srv_session_record_build(const srv_session_record *r, const mb_config *shape,
                                  size_t state_bytes, size_t *len);
/* Checks buf[0..len) is a whole, intact record for this model shape and state size, with valid
 * fields; fills r (r->state points into buf). Returns 0, or -1 with what is wrong in err. */
int srv_session_record_parse(const uint8_t *buf, size_t len, const mb_config *shape,
                             size_t state_bytes, srv_session_record *r, char *err, size_t n);

#endif
