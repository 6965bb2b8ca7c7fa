/* cost.c: the measured choice between drafting and plain decoding (cost.h). */
#include "cost.h"

#include <string.h>

#define ALPHA 0.125 /* weight of the newest step in the moving averages */

int spec_cost_bucket(int n_decode) {
    int b = 0;
    while (n_decode > 1 && b < SPEC_COST_BUCKETS - 1) n_decode >>= 1, b++;
    return b;
}

void spec_cost_init(spec_cost *c) {
    memset(c, 0, sizeof *c);
}

static double rate(const spec_cost_arm *a) {
    return a->seconds > 0 ? a->bytes / a->seconds : 0;
}

int spec_cost_better(const spec_cost *c, int n_decode) {
    const spec_cost_arm *a = c->b[spec_cost_bucket(n_decode)].arm;
    return a[0].n >= SPEC_COST_WARMUP && a[1].n >= SPEC_COST_WARMUP && rate(&a[1]) > rate(&a[0]);
}

int spec_cost_choose(spec_cost *c, int n_decode) {
    int k = spec_cost_bucket(n_decode);
    const spec_cost_arm *a = c->b[k].arm;
    unsigned long long t = c->b[k].steps++;
    if (a[0].n < SPEC_COST_WARMUP || a[1].n < SPEC_COST_WARMUP) {
        /* a heavier load than the nearest measured one where drafting lost: start plain and
         * measure drafting in probes only (spans cost more, not less, as the batch grows), rare
         * ones where it lost by more than half */
        for (int j = k - 1; j >= 0; j--) {
            const spec_cost_arm *l = c->b[j].arm;
            if (l[0].n < SPEC_COST_WARMUP || l[1].n < SPEC_COST_WARMUP) continue;
            if (rate(&l[1]) >= rate(&l[0])) break;
            unsigned p = rate(&l[1]) < 0.5 * rate(&l[0]) ? SPEC_COST_PERIOD_MAX : SPEC_COST_PERIOD;
            if (t % p == p - 1) { /* the probe's last step: the periods go on from its end */
                c->b[k].period = p;
                c->b[k].steps = SPEC_COST_PROBE + 1;
            }
            return t % p >= p - SPEC_COST_PROBE;
        }
        return a[1].n < a[0].n;
    }
    int best = rate(&a[1]) > rate(&a[0]);
    unsigned *period = &c->b[k].period;
    if (!*period) *period = SPEC_COST_PERIOD;
    if (t % *period == SPEC_COST_PROBE) { /* a probe just ended: how far behind is the loser? */
        if (rate(&a[!best]) < 0.5 * rate(&a[best]))
            *period = *period * 2 > SPEC_COST_PERIOD_MAX ? SPEC_COST_PERIOD_MAX : *period * 2;
        else
            *period = SPEC_COST_PERIOD;
        c->b[k].steps = t = SPEC_COST_PROBE + 1; /* the new period starts after this probe */
    }
    return t % *period < SPEC_COST_PROBE ? !best : best;
}

void spec_cost_record(spec_cost *c, int n_decode, int drafted, double bytes, double seconds) {
    spec_cost_arm *a = &c->b[spec_cost_bucket(n_decode)].arm[drafted != 0];
    if (a->n == 0) {
        a->bytes = bytes;
        a->seconds = seconds;
    } else {
        a->bytes += ALPHA * (bytes - a->bytes);
        a->seconds += ALPHA * (seconds - a->seconds);
    }
    if (a->n < SPEC_COST_WARMUP) a->n++;
}
