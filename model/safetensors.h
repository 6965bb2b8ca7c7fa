/* safetensors.h: a validating reader for the safetensors format.
 * File = u64 little-endian header length n, n bytes of JSON header, then the data. The header
 * maps tensor names to {dtype, shape, data_offsets: [begin, end)} relative to the data start. */
#ifndef MB_SAFETENSORS_H
#define MB_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "mambabyte.h"

#define MB_ST_MAX_DIMS   8
#define MB_ST_MAX_HEADER (100u << 20) /* a header larger than this is refused as absurd */

typedef enum { MB_ST_F32, MB_ST_F16, MB_ST_BF16, MB_ST_OTHER } mb_st_dtype;

typedef struct mb_st_tensor {
    char *name;
    mb_st_dtype dtype;
    int n_dims;
    int64_t shape[MB_ST_MAX_DIMS];
    const uint8_t *data; /* inside the mapping */
    size_t n_bytes;
} mb_st_tensor;

typedef struct mb_st_file {
    char *path;
    void *map; /* whole file, read-only; NULL when parsed from a caller's buffer */
    size_t map_len;
    mb_st_tensor *t; /* n tensors, sorted by data offset */
    int n;
} mb_st_file;

/* Parses and validates buf[0..len): header bound, JSON, dtypes, shape x dtype size == span,
 * spans inside the data and not overlapping. `name` is used in error messages. */
int mb_st_parse(mb_st_file *f, const uint8_t *buf, size_t len, const char *name, mb_err *e);
/* mmaps path and parses it. */
int mb_st_open(mb_st_file *f, const char *path, mb_err *e);
void mb_st_close(mb_st_file *f);
const mb_st_tensor *mb_st_find(const mb_st_file *f, const char *name);
size_t mb_st_dtype_size(mb_st_dtype d);
const char *mb_st_dtype_name(mb_st_dtype d);

#endif
