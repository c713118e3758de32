/* testutil_buffers.h - the fixture of the single-process kernel suites:
 * a CPU backend `be` per test, and backend buffers that the teardown
 * releases even when an assertion ends a test early.
 *
 * Define MHUB_TEST_BLAS_THREADS (default 0: the backend's own choice) and
 * MHUB_TEST_MAX_BUFS (default 64) before including it. One suite per
 * program: it defines static state and the setup/teardown pair. */
#ifndef MHUB_TESTUTIL_BUFFERS_H
#define MHUB_TESTUTIL_BUFFERS_H

#include "testutil.h"

#ifndef MHUB_TEST_BLAS_THREADS
#define MHUB_TEST_BLAS_THREADS 0
#endif
#ifndef MHUB_TEST_MAX_BUFS
#define MHUB_TEST_MAX_BUFS 64
#endif

static mhub_backend *be;
static void *test_bufs[MHUB_TEST_MAX_BUFS];
static int test_nbufs;

static void setup(void)
{
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = MHUB_TEST_BLAS_THREADS,
                                                       .flash_attention = true},
                                  &be));
    test_nbufs = 0;
}

static void teardown(void)
{
    for (int i = 0; i < test_nbufs; i++)
        be->ops->free(be, test_bufs[i]);
    test_nbufs = 0;
    mhub_backend_free(be);
    be = NULL;
}

static void *buf_bytes(size_t bytes)
{
    ck_assert_int_lt(test_nbufs, MHUB_TEST_MAX_BUFS);
    void *p = NULL;
    CK_OK(be->ops->alloc(be, bytes, &p));
    test_bufs[test_nbufs++] = p;
    return p;
}

static float *fbuf(int64_t n) { return buf_bytes((size_t)n * sizeof(float)); }

#endif
