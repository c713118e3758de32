/* status.c - status names and the thread-local last-error message. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mhub/status.h"

#define MHUB_ERROR_CAP 1024

static _Thread_local char last_error[MHUB_ERROR_CAP];

const char *mhub_status_name(mhub_status s)
{
    switch (s) {
    case MHUB_OK: return "MHUB_OK";
    case MHUB_ERR_INVALID_ARG: return "MHUB_ERR_INVALID_ARG";
    case MHUB_ERR_NO_MEMORY: return "MHUB_ERR_NO_MEMORY";
    case MHUB_ERR_IO: return "MHUB_ERR_IO";
    case MHUB_ERR_PARSE: return "MHUB_ERR_PARSE";
    case MHUB_ERR_COMM: return "MHUB_ERR_COMM";
    case MHUB_ERR_UNSUPPORTED: return "MHUB_ERR_UNSUPPORTED";
    case MHUB_ERR_NUMERIC: return "MHUB_ERR_NUMERIC";
    case MHUB_ERR_STATE: return "MHUB_ERR_STATE";
    case MHUB_ERR_DEVICE: return "MHUB_ERR_DEVICE";
    }
    return "MHUB_ERR_UNKNOWN";
}

const char *mhub_last_error(void) { return last_error; }

void mhub_clear_error(void) { last_error[0] = '\0'; }

static void record(const char *where, const char *fmt, va_list ap)
{
    size_t used = 0;
    if (where && *where) {
        int n = snprintf(last_error, sizeof last_error, "%s: ", where);
        used = n > 0 ? (size_t)n : 0;
        if (used >= sizeof last_error)
            used = sizeof last_error - 1;
    }
    vsnprintf(last_error + used, sizeof last_error - used, fmt, ap);
}

mhub_status mhub_error(mhub_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(NULL, fmt, ap);
    va_end(ap);
    return code;
}

mhub_status mhub_error_at(mhub_status code, const char *where, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(where, fmt, ap);
    va_end(ap);
    return code;
}
