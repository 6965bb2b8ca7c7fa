/* test_srv_pace.c: the measured cap on prompt bytes beside decoding sequences (srv_pace.h),
 * driven by a simulated device whose forward costs t_decode plus a fixed cost per prompt chunk
 * plus a cost per prompt byte: the cap settles where a step's prompt bytes add stall steps. */
#include "check.h"
#include "srv_pace.h"

#include <limits.h>
#include <math.h>

/* A forward of the simulated device: 2 ms for the decoding sequences, 0.5 ms per prompt chunk
 * when there is one, 0.05 ms per prompt byte. */
static double forward_s(int prompt_bytes) {
    return 2e-3 + (prompt_bytes ? 0.5e-3 : 0) + 0.05e-3 * prompt_bytes;
}

/* Steps as the scheduler takes them: a decode-only step, then one with as many prompt bytes as
 * the cap allows (of chunk), recorded; returns the cap after steps rounds. */
static int settle(srv_pace *p, int n_decode, double stall, int chunk, int rounds) {
    int cap = INT_MAX;
    for (int i = 0; i < rounds; i++) {
        srv_pace_record(p, n_decode, 0, forward_s(0));
        cap = srv_pace_cap(p, n_decode, stall);
        int take = cap < chunk ? cap : chunk;
        srv_pace_record(p, n_decode, take, forward_s(take));
    }
    return srv_pace_cap(p, n_decode, stall);
}

static void test_no_cap_until_measured(void) {
    srv_pace p;
    srv_pace_init(&p);
    CHECK(srv_pace_cap(&p, 8, 1.0) == INT_MAX, "a cap before any measurement");
    for (int i = 0; i < SRV_PACE_WARMUP; i++) srv_pace_record(&p, 8, 0, forward_s(0));
    CHECK(srv_pace_cap(&p, 8, 1.0) == INT_MAX, "a cap before a prompt byte was measured");
    for (int i = 0; i < SRV_PACE_WARMUP; i++) srv_pace_record(&p, 8, 128, forward_s(128));
    int cap = srv_pace_cap(&p, 8, 1.0);
    CHECK(cap != INT_MAX && cap >= SRV_PACE_MIN, "no cap once measured: %d", cap);
    CHECK(srv_pace_cap(&p, 8, 0) == INT_MAX, "stall 0 caps");
    CHECK(srv_pace_cap(&p, 0, 1.0) == INT_MAX, "a cap with nothing decoding");
    CHECK(srv_pace_cap(&p, 64, 1.0) == INT_MAX, "another bucket's measurement used");
    CHECK(srv_pace_cap(&p, 15, 1.0) == cap, "8 and 15 decoding are one bucket");
}

static void test_settles_at_stall_steps(void) {
    const double stalls[] = {1.0, 2.0, 4.0};
    for (int i = 0; i < 3; i++) {
        srv_pace p;
        srv_pace_init(&p);
        int cap = settle(&p, 64, stalls[i], 128, 400);
        /* the bytes whose chunk adds stall x 2 ms: (stall x 2 - 0.5) / 0.05 */
        double want = (stalls[i] * 2.0 - 0.5) / 0.05;
        CHECK(fabs(cap - want) <= 0.05 * want + 1, "stall %.1f: cap %d, want about %.0f", stalls[i],
              cap, want);
        double extra = forward_s(cap) - forward_s(0);
        CHECK(extra <= stalls[i] * forward_s(0) * 1.06, "stall %.1f: a capped step adds %.2f ms",
              stalls[i], extra * 1e3);
    }
}

static void test_floor(void) {
    srv_pace p;
    srv_pace_init(&p);
    /* a chunk's fixed cost alone outlasts a decode step: prompts still move, at the floor */
    int cap = settle(&p, 1, 0.1, 128, 200);
    CHECK(cap == SRV_PACE_MIN, "cap %d, want the floor %d", cap, SRV_PACE_MIN);
}

int main(void) {
    RUN(test_no_cap_until_measured);
    RUN(test_settles_at_stall_steps);
    RUN(test_floor);
    return check_failures != 0;
}
