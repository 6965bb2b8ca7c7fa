/* logprob.c: the log-probability a softmax over logits gives one token (eval's bits per byte). */
#include <math.h>

#include "mambabyte.h"

/* log softmax(l)[token] = l[token] - (max + log sum exp(l - max)): shifting by the max keeps
 * every exp in range, so large logits do not overflow. Sums in double, in index order. */
double mb_logprob(const float *logits, int n, int token) {
    double mx = logits[0];
    for (int v = 1; v < n; v++) mx = logits[v] > mx ? logits[v] : mx;
    double sum = exp((double)logits[0] - mx); /* the max adds exp(0) = 1: the log is finite */
    for (int v = 1; v < n; v++) sum += exp((double)logits[v] - mx);
    return (double)logits[token] - (log(sum) + mx);
}
