/* test_nccl_emu.c - how the CPU emulator's NCCL (tests/cuda_emu/nccl.h)
 * forms communicators across MPI ranks, and how it fails to, under
 * mpiexec -n 2 and 4.
 *
 * test_nccl_comm checks the communicator built on it when everything goes
 * right; here the rendezvous of ncclCommInitRank is driven directly: a
 * rank that never joins, rank 0 never coming, ranks that disagree on the
 * group, rank 0 not being the maker of the id. Each must end with an error and a message on
 * every rank that called, after MHUB_EMU_NCCL_TIMEOUT_S at worst, and
 * never in a hang; the last case forms groups of different makers at
 * once and checks that a sum stays within each. */
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

#include "testutil_mpi.h"

static int rank, nranks;

/* The id rank `maker` of MPI_COMM_WORLD makes, on every rank. */
static ncclUniqueId id_from(int maker)
{
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (rank == maker)
        ck_assert_int_eq(ncclGetUniqueId(&id), ncclSuccess);
    MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, maker, MPI_COMM_WORLD);
    return id;
}

/* Records a failure unless `rc` is `want` with `text` in the message and
 * no communicator came back. */
static void expect_init_failure(verdict *v, ncclResult_t rc, ncclComm_t c, ncclResult_t want,
                                const char *text)
{
    const char *msg = ncclGetLastError(NULL);
    if (rc != want || c != NULL || strstr(msg, text) == NULL)
        flunk(v, "rank %d of %d: ncclCommInitRank gave %d (%s), expected %d with \"%s\"", rank,
              nranks, (int)rc, msg, (int)want, text);
}

/* The last world rank never joins: rank 0 gives up after the timeout and
 * tells the members that did join, which fail at once. */
START_TEST(test_missing_rank_times_out)
{
    verdict v = {0};
    ncclUniqueId id = id_from(0);
    setenv("MHUB_EMU_NCCL_TIMEOUT_S", "1", 1);
    if (rank != nranks - 1) {
        ncclComm_t c = NULL;
        ncclResult_t rc = ncclCommInitRank(&c, nranks, id, rank);
        expect_init_failure(&v, rc, c, ncclSystemError,
                            rank == 0 ? "did not join" : "gave up on the group");
    }
    unsetenv("MHUB_EMU_NCCL_TIMEOUT_S");
    settle(&v);
}
END_TEST

/* Rank 0 itself never comes: the members give up after twice the
 * timeout (rank 0's own, and the time its answer may take). */
START_TEST(test_missing_rank_zero_times_out)
{
    verdict v = {0};
    ncclUniqueId id = id_from(0);
    setenv("MHUB_EMU_NCCL_TIMEOUT_S", "1", 1);
    if (rank != 0) {
        ncclComm_t c = NULL;
        ncclResult_t rc = ncclCommInitRank(&c, nranks, id, rank);
        expect_init_failure(&v, rc, c, ncclSystemError, "no answer from rank 0");
    }
    unsetenv("MHUB_EMU_NCCL_TIMEOUT_S");
    settle(&v);
}
END_TEST

/* World rank 1 believes the group has one rank more: rank 0 refuses it,
 * and every member learns so. */
START_TEST(test_disagreeing_sizes_are_refused)
{
    verdict v = {0};
    ncclUniqueId id = id_from(0);
    ncclComm_t c = NULL;
    ncclResult_t rc = ncclCommInitRank(&c, rank == 1 ? nranks + 1 : nranks, id, rank);
    expect_init_failure(&v, rc, c, ncclInvalidUsage,
                        rank == 0 ? "joined as rank 1 of" : "gave up on the group");
    settle(&v);
}
END_TEST

/* Two ranks claim the same NCCL rank: refused likewise. */
START_TEST(test_duplicate_rank_is_refused)
{
    verdict v = {0};
    ncclUniqueId id = id_from(0);
    ncclComm_t c = NULL;
    ncclResult_t rc = ncclCommInitRank(&c, nranks, id, rank == 0 ? 0 : 1);
    if (nranks > 2)
        expect_init_failure(&v, rc, c, ncclInvalidUsage,
                            rank == 0 ? "expects each of ranks 1 to" : "gave up on the group");
    else if (rc != ncclSuccess) /* two ranks: no duplicate, the group forms */
        flunk(&v, "rank %d: %s", rank, ncclGetLastError(NULL));
    if (c != NULL)
        ncclCommDestroy(c);
    settle(&v);
}
END_TEST

/* The emulator needs NCCL rank 0 to be the process that made the id, and
 * says so at once, before any communication. */
START_TEST(test_rank_zero_must_make_the_id)
{
    verdict v = {0};
    ncclUniqueId id = id_from(1);
    if (rank == 0) {
        ncclComm_t c = NULL;
        ncclResult_t rc = ncclCommInitRank(&c, nranks, id, 0);
        expect_init_failure(&v, rc, c, ncclInvalidUsage, "made the id");
    }
    settle(&v);
}
END_TEST

/* Bad arguments fail at once, on the rank that passes them. */
START_TEST(test_bad_arguments)
{
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclComm_t c = NULL;
    ck_assert_int_eq(ncclCommInitRank(&c, 2, id, 0), ncclInvalidArgument);
    ck_assert_ptr_nonnull(strstr(ncclGetLastError(NULL), "did not make"));
    ck_assert_int_eq(ncclGetUniqueId(&id), ncclSuccess);
    ck_assert_int_eq(ncclCommInitRank(&c, 2, id, 2), ncclInvalidArgument);
    ck_assert_int_eq(ncclCommInitRank(&c, 0, id, 0), ncclInvalidArgument);
    ck_assert_ptr_null(c);
}
END_TEST

/* The sum over communicator c of each rank's world rank + 1, in f32 on
 * emulated device memory. */
static float sum_over(ncclComm_t c)
{
    cudaStream_t stream = NULL;
    float *dev = NULL, value = (float)(rank + 1);
    /* blocking: ordered after cudaMemcpy's copy on the legacy stream */
    ck_assert_int_eq(cudaStreamCreateWithFlags(&stream, 0), cudaSuccess);
    ck_assert_int_eq(cudaMalloc((void **)&dev, sizeof value), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(dev, &value, sizeof value, cudaMemcpyHostToDevice), cudaSuccess);
    ck_assert_int_eq(ncclAllReduce(dev, dev, 1, ncclFloat32, ncclSum, c, stream), ncclSuccess);
    ck_assert_int_eq(cudaStreamSynchronize(stream), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(&value, dev, sizeof value, cudaMemcpyDeviceToHost), cudaSuccess);
    ck_assert_int_eq(cudaFree(dev), cudaSuccess);
    ck_assert_int_eq(cudaStreamDestroy(stream), cudaSuccess);
    return value;
}

/* The world splits in two halves, each forming its own communicator at
 * the same moment with a maker of its own (the first rank of the half),
 * and the halves' sums stay apart. */
START_TEST(test_groups_form_side_by_side)
{
    verdict v = {0};
    int half = rank < nranks / 2 ? 0 : 1;
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, half, rank, &sub);
    int sub_rank = 0, sub_size = 0;
    MPI_Comm_rank(sub, &sub_rank);
    MPI_Comm_size(sub, &sub_size);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (sub_rank == 0)
        ck_assert_int_eq(ncclGetUniqueId(&id), ncclSuccess);
    MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, sub);
    ncclComm_t c = NULL;
    if (ncclCommInitRank(&c, sub_size, id, sub_rank) != ncclSuccess) {
        flunk(&v, "rank %d: %s", rank, ncclGetLastError(NULL));
    } else {
        int first = half == 0 ? 0 : nranks / 2;
        float want = 0;
        for (int r = first; r < first + sub_size; r++)
            want += (float)(r + 1);
        float got = sum_over(c);
        if (got != want)
            flunk(&v, "rank %d: the sum over its half is %g, expected %g", rank, (double)got,
                  (double)want);
        ck_assert_int_eq(ncclCommDestroy(c), ncclSuccess);
    }
    MPI_Comm_free(&sub);
    settle(&v);
}
END_TEST

static Suite *make_suite(void)
{
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    Suite *s = suite_create("nccl_emu");
    TCase *tc = tcase_create("rendezvous");
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_groups_form_side_by_side);
    if (nranks >= 2) {
        tcase_add_test(tc, test_missing_rank_times_out);
        tcase_add_test(tc, test_missing_rank_zero_times_out);
        tcase_add_test(tc, test_disagreeing_sizes_are_refused);
        tcase_add_test(tc, test_duplicate_rank_is_refused);
        tcase_add_test(tc, test_rank_zero_must_make_the_id);
    }
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    return mhub_test_mpi_main(argc, argv, make_suite);
}
