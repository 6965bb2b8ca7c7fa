/* logprob.c: the log-probabilities a softmax over logits gives (eval's bits per byte, the
 * server's logprobs). */
#include <math.h>

#include "mambabyte.h"

/* log sum exp(l) = max + log sum exp(l - max): shifting by the max keeps every exp in range,
 * so large logits do not overflow. Sums in double, in index order. */
static double log_sum_exp(const float *logits, int n) {
    double mx = logits[0];
    for (int v = 1; v < n; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = exp((double)logits[0] - mx); /* the max adds exp(0) = 1: the log is finite */
    for (int v = 1; v < n; v++) sum += exp((double)logits[v] - mx);
    return log(sum) + mx;
}

double mb_logprob(const float *logits, int n, int token) {
    return (double)logits[token] - log_sum_exp(logits, n);
}

double mb_logprob_top(const float *logits, int n, int token, int k, int *top, double *top_lp) {
    double lse = log_sum_exp(logits, n);
    /* each pick is the best candidate after the previous one in the order (falling logit, lower
     * index first): k passes, no sort and no scratch */
    int prev = -1;
    for (int t = 0; t < k && t < n; t++) {
        int best = -1;
        for (int v = 0; v < n; v++) {
            if (prev >= 0 && !(logits[v] < logits[prev] || (logits[v] == logits[prev] && v > prev)))
                continue;
            if (best < 0 || logits[v] > logits[best]) best = v;
        }
        top[t] = prev = best;
        top_lp[t] = (double)logits[best] - lse;
    }
    return (double)logits[token] - lse;
}
