/* profile_backend.c - where a backend's time goes, op by op.
 *
 * Every op runs on the inner backend and is waited for before the clock
 * stops (an asynchronous backend would otherwise return at once), so a
 * row holds the op's own wall time: launches, the kernel or BLAS call,
 * and the wait. The memory ops pass straight through, untimed. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/backend_wrap.h"

/* More than the table has ops, so every op gets a row. */
#define PROFILE_MAX_ROWS 64

typedef struct profile_state {
    mhub_wrap wrap; /* first: the inner backend and the timing hooks */
    mhub_backend_ops ops;
    double started; /* the running op's start */
    mhub_profile_row rows[PROFILE_MAX_ROWS];
    int count;
} profile_state;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void profile_destroy(mhub_backend *be)
{
    free(be ? be->ctx : NULL);
    free(be);
}

/* The state of a profiling backend, NULL for any other backend (whose
 * ops are not its ctx's table: only addresses are compared). */
static profile_state *state_of(const mhub_backend *be)
{
    profile_state *p = be ? be->ctx : NULL;
    return p && be->ops == &p->ops && p->ops.destroy == profile_destroy ? p : NULL;
}

static mhub_profile_row *row_of(profile_state *p, const char *op)
{
    for (int i = 0; i < p->count; i++)
        if (strcmp(p->rows[i].op, op) == 0)
            return &p->rows[i];
    if (p->count == PROFILE_MAX_ROWS)
        return NULL; /* cannot happen: the table has fewer ops */
    p->rows[p->count] = (mhub_profile_row){.op = op};
    return &p->rows[p->count++];
}

static void start_clock(mhub_wrap *w, const char *op)
{
    (void)op;
    ((profile_state *)w)->started = now();
}

/* Waits for the op (an error it left on the device shows here, as the
 * op's own), then books its time. */
static mhub_status stop_clock(mhub_wrap *w, const char *op, double flops, mhub_status s)
{
    profile_state *p = (profile_state *)w;
    if (s == MHUB_OK && strcmp(op, "synchronize") != 0)
        s = w->inner->ops->synchronize(w->inner);
    double elapsed = now() - p->started;
    mhub_profile_row *r = row_of(p, op);
    if (r) {
        r->calls++;
        r->seconds += elapsed;
        r->flops += flops;
    }
    return s;
}

mhub_status mhub_profile_backend_create(mhub_backend *inner, mhub_backend **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!inner || !inner->ops || !inner->ops->synchronize)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "the backend to profile is NULL or has no ops");
    mhub_backend *be = calloc(1, sizeof *be);
    profile_state *p = calloc(1, sizeof *p);
    if (!be || !p) {
        free(be);
        free(p);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for the profiling backend");
    }
    p->wrap = (mhub_wrap){.inner = inner, .before = start_clock, .after = stop_clock};
    mhub_wrap_ops(inner, &p->ops);
    p->ops.destroy = profile_destroy;
    be->name = "profile";
    be->ops = &p->ops;
    be->ctx = p;
    *out = be;
    return MHUB_OK;
}

static int slowest_first(const void *a, const void *b)
{
    double x = ((const mhub_profile_row *)a)->seconds, y = ((const mhub_profile_row *)b)->seconds;
    return (x < y) - (x > y);
}

mhub_status mhub_profile_backend_rows(const mhub_backend *be, mhub_profile_row *rows, int cap,
                                      int *count)
{
    profile_state *p = state_of(be);
    if (!p)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "not a profiling backend");
    if (cap < 0 || (cap > 0 && !rows))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "rows is NULL or cap %d is negative", cap);
    mhub_profile_row sorted[PROFILE_MAX_ROWS];
    memcpy(sorted, p->rows, (size_t)p->count * sizeof *sorted);
    qsort(sorted, (size_t)p->count, sizeof *sorted, slowest_first);
    for (int i = 0; i < p->count && i < cap; i++)
        rows[i] = sorted[i];
    if (count)
        *count = p->count;
    return MHUB_OK;
}

mhub_status mhub_profile_backend_reset(mhub_backend *be)
{
    profile_state *p = state_of(be);
    if (!p)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "not a profiling backend");
    p->count = 0;
    return MHUB_OK;
}

mhub_status mhub_profile_backend_print(const mhub_backend *be, FILE *out)
{
    mhub_profile_row rows[PROFILE_MAX_ROWS];
    int n = 0;
    MHUB_TRY(mhub_profile_backend_rows(be, rows, PROFILE_MAX_ROWS, &n));
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    double total = 0;
    for (int i = 0; i < n; i++)
        total += rows[i].seconds;
    fprintf(out, "%-26s %8s %11s %7s %9s\n", "op", "calls", "ms", "share", "TFLOP/s");
    for (int i = 0; i < n; i++) {
        const mhub_profile_row *r = &rows[i];
        fprintf(out, "%-26s %8lld %11.3f %6.1f%%", r->op, (long long)r->calls, 1e3 * r->seconds,
                total > 0 ? 100 * r->seconds / total : 0.0);
        if (r->flops > 0 && r->seconds > 0)
            fprintf(out, " %9.2f", r->flops / r->seconds / 1e12);
        fputc('\n', out);
    }
    fprintf(out, "%-26s %8s %11.3f\n", "total", "", 1e3 * total);
    return ferror(out) ? MHUB_ERROR(MHUB_ERR_IO, "writing the profile failed") : MHUB_OK;
}
