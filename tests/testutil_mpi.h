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
