/* cost.h: whether drafting with the drafter model pays, by measured cost.
 *
 * A draft pays when the bytes it adds per step outweigh what the drafter's forwards and the
 * longer verification spans add to the step's time. That depends on the device (on two CPU
 * cores a span of a few bytes costs 1.6-2.7 steps; on a GPU about one) and on the load (with
 * many sequences the spans take the batch's room). So the scheduler measures it: decode steps
 * are grouped by how many sequences decode (1, 2-3, 4-7, ...: log2 buckets), and per bucket it
 * keeps moving averages of bytes and seconds for steps with model drafts and without. It drafts
 * in a bucket while that gives more bytes per second, and now and then runs a few steps the
 * other way to keep both numbers current (both ways alternate until each has been measured).
 * A way that keeps losing by more than half (drafting on a GPU with a drafter as slow as the
 * byte model) is probed ever more rarely, down to once per SPEC_COST_PERIOD_MAX steps; a probe
 * that finds the gap closed returns to SPEC_COST_PERIOD. A load heavier than the nearest measured
 * one where drafting lost starts plain and measures drafting in probes only (of the period that
 * loss would have: SPEC_COST_PERIOD, or SPEC_COST_PERIOD_MAX past half), not by alternating: on
 * a GPU a drafted step of 64 sequences costs 4x a plain one, and a run whose requests end within
 * a few hundred steps lost a third of its throughput to that warm-up.
 * Speculation never changes the bytes, only when they come. */
#ifndef SPEC_COST_H
#define SPEC_COST_H

#define SPEC_COST_BUCKETS    12  /* 1 .. 2048+ decoding sequences */
#define SPEC_COST_WARMUP     8   /* steps measured each way before choosing */
#define SPEC_COST_PERIOD     256 /* steps between probes of the way not chosen */
#define SPEC_COST_PROBE      8   /* steps per probe */
#define SPEC_COST_PERIOD_MAX 8192

typedef struct spec_cost_arm {
    double bytes, seconds; /* moving averages per step */
    int n;                 /* steps measured (up to SPEC_COST_WARMUP) */
} spec_cost_arm;

typedef struct spec_cost {
    struct {
        spec_cost_arm arm[2]; /* [0]: plain steps, [1]: steps with model drafts */
        unsigned long long steps;
        unsigned period; /* steps between probes now (0: SPEC_COST_PERIOD) */
    } b[SPEC_COST_BUCKETS];
} spec_cost;

void spec_cost_init(spec_cost *c);
/* The bucket of n_decode decoding sequences: floor(log2), 0 .. SPEC_COST_BUCKETS - 1. */
int spec_cost_bucket(int n_decode);
/* 1 when a step with n_decode decoding sequences should draft with the drafter model. */
int spec_cost_choose(spec_cost *c, int n_decode);
/* 1 when drafting is the better way for n_decode as measured so far (0 while unmeasured). */
int spec_cost_better(const spec_cost *c, int n_decode);
/* Records a decode step that drafted (1) or not (0): it gave `bytes` in `seconds`. */
void spec_cost_record(spec_cost *c, int n_decode, int drafted, double bytes, double seconds);

#endif
