/* srv_pace.h: how many prompt bytes a step may feed while sequences decode, by measured cost.
 *
 * A prompt chunk fed beside decoding sequences delays each of their next bytes by what the chunk
 * adds to the forward. The scheduler caps the prompt bytes of such a step so that they add at
 * most `stall` times a forward of the decoding sequences alone (the config's prefill_stall; one
 * step by default: a chunk never stalls the streams by more than one step's time). It measures
 * both, per bucket of decoding sequences (1, 2-3, 4-7, ...: spec_cost_bucket):
 * moving averages of the forward's seconds in steps without prompt bytes, and of the seconds a
 * prompt byte adds in steps with them (their forward less the first average, over their prompt
 * bytes). The cap is stall x the first over the second, at least SRV_PACE_MIN bytes so prompts
 * always advance; until a bucket has both averages there is no cap. The estimate at the cap's
 * own chunk sizes includes a chunk's fixed cost, so the cap settles where the measured extra
 * time equals stall steps. */
#ifndef SRV_PACE_H
#define SRV_PACE_H

#include "cost.h"

#define SRV_PACE_WARMUP 4  /* forwards measured each way before a cap */
#define SRV_PACE_MIN    16 /* prompt bytes a step may always feed */

typedef struct srv_pace {
    struct {
        double t_decode, t_byte; /* moving averages, seconds */
        int n_decode, n_byte;    /* forwards measured (up to SRV_PACE_WARMUP) */
    } b[SPEC_COST_BUCKETS];      /* by spec_cost_bucket */
} srv_pace;

void srv_pace_init(srv_pace *p);
/* A forward with n_decode decoding sequences and prompt_bytes prompt bytes took seconds. */
void srv_pace_record(srv_pace *p, int n_decode, int prompt_bytes, double seconds);
/* The prompt bytes a step with n_decode decoding sequences may feed (INT_MAX: no cap). */
int srv_pace_cap(const srv_pace *p, int n_decode, double stall);

#endif
