/* srv_id.c: ids for requests and sessions, and seeds for requests that give none. */
#include "srv_id.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

static uint64_t key;
static atomic_ullong counter;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_key(void) {
    if (getrandom(&key, sizeof key, 0) != sizeof key)
        key = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15u;
}

uint64_t srv_random_u64(void) {
    pthread_once(&once, init_key);
    uint64_t z = key + (uint64_t)atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15u;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

void srv_new_id(const char *prefix, char *out, size_t n) {
    snprintf(out, n, "%s%016llx", prefix, (unsigned long long)srv_random_u64());
}
