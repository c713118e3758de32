/* status.h - status codes and the last-error message.
 *
 * Every library function returns an mhub_status. On failure the library
 * records a message that says what failed, where (file, key, rank) and,
 * when it can, what to do; mhub_last_error() returns it. The message is
 * thread-local, so concurrent threads never see each other's errors.
 * The library never calls exit() or abort() on bad input. */
#ifndef MHUB_STATUS_H
#define MHUB_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mhub_status {
    MHUB_OK = 0,
    MHUB_ERR_INVALID_ARG,  /* NULL pointer, bad size, inconsistent arguments */
    MHUB_ERR_NO_MEMORY,    /* an allocation failed */
    MHUB_ERR_IO,           /* a file could not be read or written */
    MHUB_ERR_PARSE,        /* malformed input text (JSON, flags, numbers) */
    MHUB_ERR_COMM,         /* a collective or point-to-point call failed */
    MHUB_ERR_UNSUPPORTED,  /* valid request this build or backend cannot do */
    MHUB_ERR_NUMERIC,      /* NaN/Inf found where finite values are required */
    MHUB_ERR_STATE,        /* call made in the wrong order or state */
    MHUB_ERR_DEVICE        /* a device (GPU) runtime or library call failed */
} mhub_status;

/* Short stable name of a status ("MHUB_ERR_INVALID_ARG"). Never NULL. */
const char *mhub_status_name(mhub_status s);

/* Message of the last error recorded on this thread; "" if none. */
const char *mhub_last_error(void);

/* Forget the last error on this thread. */
void mhub_clear_error(void);

/* Record an error message (printf-style) and return `code`, so callers
 * can write `return mhub_error(MHUB_ERR_INVALID_ARG, "...", ...)`.
 * Prefer the MHUB_ERROR macro, which adds the function name. */
mhub_status mhub_error(mhub_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Like mhub_error, prefixing the message with "func: ". */
#define MHUB_ERROR(code, ...) mhub_error_at((code), __func__, __VA_ARGS__)
mhub_status mhub_error_at(mhub_status code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Evaluate an expression returning mhub_status; return it on failure. */
#define MHUB_TRY(expr)                          \
    do {                                        \
        mhub_status mhub_try_s_ = (expr);       \
        if (mhub_try_s_ != MHUB_OK)             \
            return mhub_try_s_;                 \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
