/* testutil_mpi.h - main() for suites that run under mpiexec. */
#ifndef MHUB_TESTUTIL_MPI_H
#define MHUB_TESTUTIL_MPI_H

#include <mpi.h>

#include "testutil.h"

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
