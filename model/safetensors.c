/* safetensors.c: mmap a safetensors file and validate every byte of its header before any
 * tensor is touched, so that a truncated or hostile file is an error message, never a crash. */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    mb_st_dtype dtype;
    size_t size;
} dtypes[] = {
    {"F32", MB_ST_F32, 4},    {"F16", MB_ST_F16, 2},       {"BF16", MB_ST_BF16, 2},
    {"F64", MB_ST_OTHER, 8},  {"I64", MB_ST_OTHER, 8},     {"U64", MB_ST_OTHER, 8},
    {"I32", MB_ST_OTHER, 4},  {"U32", MB_ST_OTHER, 4},     {"I16", MB_ST_OTHER, 2},
    {"U16", MB_ST_OTHER, 2},  {"I8", MB_ST_OTHER, 1},      {"U8", MB_ST_OTHER, 1},
    {"BOOL", MB_ST_OTHER, 1}, {"F8_E4M3", MB_ST_OTHER, 1}, {"F8_E5M2", MB_ST_OTHER, 1},
};

size_t mb_st_dtype_size(mb_st_dtype d) {
    return d == MB_ST_F32 ? 4 : d == MB_ST_OTHER ? 0 : 2;
}

const char *mb_st_dtype_name(mb_st_dtype d) {
    return d == MB_ST_F32 ? "F32" : d == MB_ST_F16 ? "F16" : d == MB_ST_BF16 ? "BF16" : "other";
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != (double)(uint64_t)v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int by_offset(const void *a, const void *b) {
    const mb_st_tensor *x = a, *y = b;
    return x->data < y->data ? -1 : x->data > y->data;
}

static void free_tensors(mb_st_file *f) {
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    f->t = NULL;
    f->n = 0;
}

/* Reads one header entry into t; the data pointer is checked against the file afterwards. */
static int parse_entry(const cJSON *j, mb_st_tensor *t, const uint8_t *data, size_t data_len,
                       const char *name, mb_err *e) {
    if (!cJSON_IsObject(j))
        return mb_fail(e, "%s: tensor '%s': entry is not an object", name, t->name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off))
        return mb_fail(e, "%s: tensor '%s': needs dtype, shape and data_offsets", name, t->name);
    size_t esize = 0;
    for (size_t k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
        if (!strcmp(dt->valuestring, dtypes[k].name)) {
            t->dtype = dtypes[k].dtype;
            esize = dtypes[k].size;
        }
    if (!esize)
        return mb_fail(e, "%s: tensor '%s': unknown dtype '%.32s'", name, t->name, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > MB_ST_MAX_DIMS)
        return mb_fail(e, "%s: tensor '%s': %d dimensions (at most %d)", name, t->name, nd,
                       MB_ST_MAX_DIMS);
    t->n_dims = nd;
    uint64_t numel = 1;
    for (int d = 0; d < nd; d++) {
        uint64_t v;
        if (json_uint(cJSON_GetArrayItem(sh, d), &v))
            return mb_fail(e, "%s: tensor '%s': shape[%d] is not a non-negative integer", name,
                           t->name, d);
        t->shape[d] = (int64_t)v;
        if (v && numel > UINT64_MAX / v)
            return mb_fail(e, "%s: tensor '%s': shape overflows", name, t->name);
        numel *= v;
    }
    uint64_t b, en;
    if (cJSON_GetArraySize(off) != 2 || json_uint(cJSON_GetArrayItem(off, 0), &b) ||
        json_uint(cJSON_GetArrayItem(off, 1), &en) || b > en)
        return mb_fail(e, "%s: tensor '%s': data_offsets must be [begin, end] with begin <= end",
                       name, t->name);
    if (en > data_len)
        return mb_fail(e,
                       "%s: tensor '%s': data [%llu, %llu) runs past the end of the file (%zu data "
                       "bytes): truncated?",
                       name, t->name, (unsigned long long)b, (unsigned long long)en, data_len);
    if (numel > UINT64_MAX / esize || numel * esize != en - b)
        return mb_fail(e, "%s: tensor '%s': shape x dtype size is %llu bytes but its span is %llu",
                       name, t->name, (unsigned long long)(numel * esize),
                       (unsigned long long)(en - b));
    t->data = data + b;
    t->n_bytes = (size_t)(en - b);
    return 0;
}

int mb_st_parse(mb_st_file *f, const uint8_t *buf, size_t len, const char *name, mb_err *e) {
    memset(f, 0, sizeof *f);
    if (len < 8) return mb_fail(e, "%s: %zu bytes, too short for a safetensors header", name, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > MB_ST_MAX_HEADER)
        return mb_fail(e, "%s: header length %llu is absurd (limit %u)", name,
                       (unsigned long long)hlen, MB_ST_MAX_HEADER);
    if (hlen > len - 8)
        return mb_fail(e, "%s: header length %llu but the file has %zu bytes: truncated?", name,
                       (unsigned long long)hlen, len);
    cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mb_fail(e, "%s: header is not a JSON object", name);
    }
    const uint8_t *data = buf + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;
    int cap = cJSON_GetArraySize(root);
    f->t = calloc((size_t)cap + 1, sizeof *f->t);
    if (!f->t) {
        cJSON_Delete(root);
        return mb_fail(e, "%s: out of memory", name);
    }
    int rc = 0;
    for (const cJSON *j = root->child; j && !rc; j = j->next) {
        if (!strcmp(j->string, "__metadata__")) continue;
        mb_st_tensor *t = &f->t[f->n];
        t->name = strdup(j->string);
        if (!t->name) {
            rc = mb_fail(e, "%s: out of memory", name);
            break;
        }
        f->n++;
        rc = parse_entry(j, t, data, data_len, name, e);
    }
    cJSON_Delete(root);
    if (!rc) {
        qsort(f->t, (size_t)f->n, sizeof *f->t, by_offset);
        for (int i = 1; i < f->n && !rc; i++)
            if (f->t[i - 1].data + f->t[i - 1].n_bytes > f->t[i].data)
                rc = mb_fail(e, "%s: tensors '%s' and '%s' overlap", name, f->t[i - 1].name,
                             f->t[i].name);
        for (int i = 0; i < f->n && !rc; i++)
            for (int k = i + 1; k < f->n; k++)
                if (!strcmp(f->t[i].name, f->t[k].name)) {
                    rc = mb_fail(e, "%s: tensor '%s' appears twice", name, f->t[i].name);
                    break;
                }
    }
    if (rc) free_tensors(f);
    return rc;
}

int mb_st_open(mb_st_file *f, const char *path, mb_err *e) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mb_fail(e, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return mb_fail(e, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    void *map = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (len && map == MAP_FAILED) return mb_fail(e, "%s: mmap: %s", path, strerror(errno));
    if (mb_st_parse(f, map, len, path, e)) {
        if (map) munmap(map, len);
        return -1;
    }
    f->map = map;
    f->map_len = len;
    f->path = strdup(path);
    return 0;
}

void mb_st_close(mb_st_file *f) {
    free_tensors(f);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const mb_st_tensor *mb_st_find(const mb_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}
