/* testutil_mpi.h - main() for suites that run under mpiexec. */
#ifndef MHUB_TESTUTIL_MPI_H
#define MHUB_TESTUTIL_MPI_H

#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>

#include "testutil.h"

/* ---- verdicts: a case's outcome agreed by every rank ----
 * A case does not abort at its first wrong element: the ranks first agree
 * on the outcome (mhub_test_settle), so a result wrong on one rank fails
 * the test on every rank instead of leaving the others waiting in the
 * next collective. */
typedef struct verdict {
    bool failed;
    char msg[512];
} verdict;

/* Record the case's first failure. */
__attribute__((format(printf, 2, 3)))
static inline void flunk(verdict *v, const char *fmt, ...)
{
    if (v->failed)
        return;
    v->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof v->msg, fmt, ap);
    va_end(ap);
}

/* Record a failed call, naming this rank; returns whether it succeeded. */
static inline bool expect_ok(verdict *v, mhub_status s, const char *what)
{
    if (s != MHUB_OK) {
        int r = 0, n = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &r);
        MPI_Comm_size(MPI_COMM_WORLD, &n);
        flunk(v, "%s (rank %d of %d): %s: %s", what, r, n, mhub_status_name(s),
              mhub_last_error());
    }
    return s == MHUB_OK;
}

/* Agree on the outcome with raw MPI, not the code under test, yielding
 * while waiting (a blocking MPI call costs ~10 ms at 4 ranks on 2 cores). */
static inline void settle(verdict *v)
{
    int mine = v->failed, any = 0;
    MPI_Request r;
    int rc = MPI_Iallreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD, &r);
    for (int done = 0; rc == MPI_SUCCESS && !done; sched_yield())
        rc = MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    ck_assert_msg(rc == MPI_SUCCESS, "settling the verdict failed: MPI error %d", rc);
    if (v->failed)
        ck_abort_msg("%s", v->msg);
    ck_assert_msg(!any, "failed on another rank (see its message)");
}

/* Initialise MPI, run the suite on every rank, agree on the outcome. A
 * rank whose assertion fails leaves the test early; the wrapper's timeout
 * (tests/test_NAME-npN.mpi) turns a resulting hang into a failure. */
static inline int mhub_test_mpi_main(int argc, char **argv, Suite *(*make)(void))
{
    MPI_Init(&argc, &argv);
    int failed = mhub_test_run_suite(make());
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return any == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Max relative difference (floor 1e-2) of two lists of f32 parameters
 * with the same shapes, maximised over every rank of `comm`. Collective. */
static inline double mhub_test_max_param_diff(mhub_comm *comm, mhub_mlp *a, mhub_mlp *b)
{
    mhub_param_list *pa = mhub_mlp_params(a), *pb = mhub_mlp_params(b);
    double worst = 0;
    for (int p = 0; p < pa->count; p++) {
        const float *va = pa->items[p].value.data, *vb = pb->items[p].value.data;
        for (int64_t i = 0; i < pa->items[p].value.numel; i++)
            worst = fmax(worst, mhub_test_relerr(va[i], vb[i], 1e-2));
    }
    float w = (float)worst, all = w;
    CK_OK(mhub_comm_allreduce(comm, &w, &all, 1, MHUB_F32, MHUB_MAX));
    return all;
}

/* The fixture the engine suites share: a CPU backend with one BLAS thread
 * (so results do not depend on how many ranks share the cores) and the
 * world communicator, made fresh for every test. */
#define MHUB_TEST_ENGINE_FIXTURE                                               \
    static mhub_backend *be;                                                   \
    static mhub_comm *world;                                                   \
    static void setup(void)                                                    \
    {                                                                          \
        CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be)); \
        CK_OK(mhub_comm_create_mpi_world(&world));                             \
    }                                                                          \
    static void teardown(void)                                                 \
    {                                                                          \
        mhub_comm_free(world);                                                 \
        mhub_backend_free(be);                                                 \
    }

#endif
