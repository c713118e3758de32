/* cpu_parallel.c - split a long elementwise pass over the backend's
 * threads.
 *
 * GEMMs use all of the backend's threads through OpenBLAS; elementwise
 * passes ran on one. The memory-bound ones over a whole model (the
 * optimizer updates: AdamW streams 28 bytes per parameter) leave half of
 * a 2-core machine's bandwidth unused that way: AdamW over 124 M
 * parameters takes 250 ms on one thread and 125 ms on two here. Each
 * element is computed exactly as before, so the results are bitwise the
 * same for any thread count.
 *
 * Row kernels (a softmax per row) split by whole rows the same way.
 *
 * Fork-join with plain pthreads, created per call: a call costs tens of
 * microseconds, against milliseconds of work above the threshold, and no
 * pool is left spinning against OpenBLAS's threads. */
#include <pthread.h>
#include <stdbool.h>

#include "backends/cpu/cpu_internal.h"

/* Below this many elements one thread is faster than starting others. */
#define PARALLEL_MIN_ELEMENTS (1 << 18)
/* Chunk starts stay multiples of this, so every chunk's vectorized body
 * stays aligned with the whole pass's. */
#define CHUNK_ALIGN 64
#define MAX_CHUNKS 16

typedef struct chunk_job {
    mhub_cpu_range_fn fn;
    void *arg;
    int64_t lo, hi;
} chunk_job;

static void *run_chunk(void *p)
{
    chunk_job *j = p;
    j->fn(j->arg, j->lo, j->hi);
    return NULL;
}

static int backend_threads(const mhub_backend *be)
{
    int threads = be && be->ctx ? ((const mhub_cpu_ctx *)be->ctx)->blas_threads : 1;
    return threads > MAX_CHUNKS ? MAX_CHUNKS : threads;
}

/* fn over [0, n) in one contiguous chunk per thread, each starting at a
 * multiple of `align`; one thread does it all when `work` (elements
 * touched) is below the threshold or n has too few units to split. */
static void split_run(mhub_backend *be, int64_t n, int64_t align, int64_t work,
                      mhub_cpu_range_fn fn, void *arg)
{
    int threads = backend_threads(be);
    if (threads < 2 || work < PARALLEL_MIN_ELEMENTS || n < 2) {
        fn(arg, 0, n);
        return;
    }
    chunk_job jobs[MAX_CHUNKS];
    pthread_t tid[MAX_CHUNKS];
    bool started[MAX_CHUNKS] = {false};
    int64_t per = (n / threads + align - 1) / align * align;
    for (int t = 0; t < threads; t++) {
        int64_t lo = t * per, hi = t + 1 == threads ? n : (t + 1) * per;
        jobs[t] = (chunk_job){fn, arg, lo < n ? lo : n, hi < n ? hi : n};
    }
    /* chunk 0 on this thread; a chunk whose thread cannot start runs here too */
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], NULL, run_chunk, &jobs[t]) == 0;
    run_chunk(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            run_chunk(&jobs[t]);
    }
}

void mhub_cpu_parallel_ranges(mhub_backend *be, int64_t n, mhub_cpu_range_fn fn, void *arg)
{
    split_run(be, n, CHUNK_ALIGN, n, fn, arg);
}

void mhub_cpu_parallel_rows(mhub_backend *be, int64_t rows, int64_t row_elems,
                            mhub_cpu_range_fn fn, void *arg)
{
    int64_t work = row_elems > 0 && rows > INT64_MAX / row_elems ? INT64_MAX : rows * row_elems;
    split_run(be, rows, 1, work, fn, arg);
}
