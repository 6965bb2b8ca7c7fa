/* fileio.h: whole-file reads shared by the engine, the CLI and the config loader. */
#ifndef MB_FILEIO_H
#define MB_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#include "mambabyte.h"

/* Reads path ("-": stdin) into a malloc'd buffer with a NUL after its len bytes. NULL with a
 * message naming the path when it cannot be read or holds more than limit bytes. */
uint8_t *mb_read_file(const char *path, size_t limit, size_t *len, mb_err *e);

#endif
