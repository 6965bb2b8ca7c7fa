/* srv_id.h: random ids and seeds. */
#ifndef SRV_ID_H
#define SRV_ID_H

#include <stddef.h>
#include <stdint.h>

/* 64 unpredictable bits: splitmix64 over a counter, keyed once from getrandom(). */
uint64_t srv_random_u64(void);
/* prefix + 16 hex digits into out (at least strlen(prefix) + 17 bytes). */
void srv_new_id(const char *prefix, char *out, size_t n);

#endif
