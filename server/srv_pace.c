/* srv_pace.c: the cap on prompt bytes beside decoding sequences (srv_pace.h). */
#include "srv_pace.h"

#include <limits.h>
#include <string.h>

#define ALPHA 0.125 /* weight of the newest forward in the moving averages */

/* The running mean for the first SRV_PACE_WARMUP values, a moving average after. */
static void average(double *avg, int *n, double x) {
    if (*n < SRV_PACE_WARMUP) {
        *avg += (x - *avg) / (double)(*n + 1);
        (*n)++;
    } else {
        *avg += ALPHA * (x - *avg);
    }
}

void srv_pace_init(srv_pace *p) {
    memset(p, 0, sizeof *p);
}

void srv_pace_record(srv_pace *p, int n_decode, int prompt_bytes, double seconds) {
    if (n_decode < 1 || seconds < 0) return;
    int k = spec_cost_bucket(n_decode);
    if (prompt_bytes <= 0) {
        average(&p->b[k].t_decode, &p->b[k].n_decode, seconds);
    } else if (p->b[k].n_decode >= SRV_PACE_WARMUP) {
        double extra = seconds - p->b[k].t_decode;
        average(&p->b[k].t_byte, &p->b[k].n_byte, (extra > 0 ? extra : 0) / prompt_bytes);
    }
}

int srv_pace_cap(const srv_pace *p, int n_decode, double stall) {
    if (stall <= 0 || n_decode < 1) return INT_MAX;
    int k = spec_cost_bucket(n_decode);
    if (p->b[k].n_decode < SRV_PACE_WARMUP || p->b[k].n_byte < SRV_PACE_WARMUP) return INT_MAX;
    if (p->b[k].t_byte <= 0) return INT_MAX;
    double cap = stall * p->b[k].t_decode / p->b[k].t_byte;
    if (cap >= (double)INT_MAX) return INT_MAX;
    return cap < SRV_PACE_MIN ? SRV_PACE_MIN : (int)cap;
}
