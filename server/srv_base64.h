/* srv_base64.h: standard base64 (RFC 4648, with padding) for the native API's exact bytes. */
#ifndef SRV_BASE64_H
#define SRV_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* NUL-terminated encoding of n bytes, malloc'd; NULL when out of memory. */
char *srv_base64_encode(const uint8_t *in, size_t n);
/* Decodes a strict encoding (no whitespace, correct padding) into a malloc'd buffer; returns
 * NULL for bad input or no memory. *n_out gets the length; the buffer has one extra NUL. */
uint8_t *srv_base64_decode(const char *in, size_t n, size_t *n_out);

#endif
