/* backend_wrap.h - a backend that runs another backend's ops between two
 * hooks. The guard backend opens and closes its memory around each op
 * (backends/cpu/guard_backend.c); the profiling backend waits for each op
 * and times it (src/profile_backend.c).
 *
 * A wrapping backend's state begins with an mhub_wrap, and its be->ctx
 * points at that state: the wrappers find the inner backend and the hooks
 * there. */
#ifndef MHUB_BACKEND_WRAP_H
#define MHUB_BACKEND_WRAP_H

#include "mhub/backend.h"

typedef struct mhub_wrap mhub_wrap;
struct mhub_wrap {
    mhub_backend *inner; /* whose ops run */
    /* Around every op but the memory ones (alloc, free, memory_usage,
     * reset_peak) and destroy. `op` is the table's field name, a string
     * literal; `flops` the op's floating-point operations where counted
     * (gemm: 2 m n k; attention: its products), else 0. after returns the
     * op's status, or an error of its own in place of an OK. */
    void (*before)(mhub_wrap *w, const char *op);
    mhub_status (*after)(mhub_wrap *w, const char *op, double flops, mhub_status s);
};

/* Fills *ops with wrappers of every op inner offers (an optional op it
 * lacks stays NULL); the memory ops pass straight through to inner, and
 * destroy is left NULL for the wrapping backend to set. */
void mhub_wrap_ops(const mhub_backend *inner, mhub_backend_ops *ops);

#endif
