/* err.c: the one way the engine reports a failure: a message in the caller's mb_err. */
#include <stdarg.h>
#include <stdio.h>

#include "mambabyte.h"

int mb_fail(mb_err *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}
