/* test_nccl_comm.c - the NCCL communicator on a CUDA backend.
 *
 * Runs under mpiexec with one GPU per rank (CI runs it at 1 rank). On a
 * machine without a CUDA device it prints "SKIP: no CUDA device: <why>"
 * and exits 77, which automake counts as a skipped test. Built with
 * MHUB_TEST_CUDA_EMU (tests/test_nccl_comm_emu) it runs on the CPU
 * emulator of tests/cuda_emu/ instead, at 1, 2 and 4 ranks in every
 * build: the communicator's own code over an emulated NCCL that moves the
 * data through MPI, the only place its behaviour across ranks is tested.
 *
 * Every result is computed on the host from the same inputs and compared
 * after copying the device buffer back: inputs are small integers that
 * depend on rank and index, so sums and maxima are exact in every dtype;
 * an average may differ from the host's f32 division by one rounding of
 * the dtype, since NCCL may scale before it sums. The host-buffer cases
 * check that the same communicator carries host memory through MPI, as
 * the core's control messages need. A case records its first failure and
 * the ranks agree on the outcome over raw MPI before the next collective,
 * so a wrong result on one rank fails the test on all of them instead of
 * hanging the others. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "testutil.h"
#include "testutil_mpi.h"
#ifdef MHUB_TEST_CUDA_EMU
#include "cuda_emu/cuda_emu.h"
#define create_cuda_backend mhub_cuda_emu_backend_create
#define create_nccl mhub_cuda_emu_comm_create_nccl
#else
#include <cuda_runtime.h>
#define create_cuda_backend mhub_cuda_backend_create
#define create_nccl mhub_comm_create_nccl
#endif

#define SKIP_EXIT 77
#define SMALL 1001
#define LARGE ((1 << 20) + 3)

static mhub_backend *be;
static mhub_comm *world;
static int rank, nranks;

static void setup(void)
{
    MPI_Comm node = MPI_COMM_NULL;
    int local_rank = 0, local_ranks = 1;
    ck_assert_int_eq(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL,
                                         &node),
                     MPI_SUCCESS);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_ranks);
    MPI_Comm_free(&node);
    mhub_cuda_options o = {.device = -1, .local_rank = local_rank, .local_ranks = local_ranks,
                           .pool_bytes = (size_t)256 << 20, .matmul = MHUB_MATMUL_F32};
    CK_OK(create_cuda_backend(&o, &be));
    MPI_Comm w = MPI_COMM_WORLD;
    CK_OK(create_nccl(&w, be, "world", &world));
    rank = world->rank;
    nranks = world->size;
}

static void teardown(void)
{
    mhub_comm_free(world);
    world = NULL;
    mhub_backend_free(be);
    be = NULL;
}

/* ---- data --------------------------------------------------------------- */

/* Rank r's input at index j: an integer in [-15, 15], distinct across the
 * first 31 ranks at every index so a maximum has one winner. */
static float value(int r, int64_t j)
{
    return (float)((int)((j % 251 * 7 + r * 3) % 31) - 15);
}

static float reduced(mhub_reduce_op op, int64_t j, int ranks)
{
    float sum = 0, max = value(0, j);
    for (int r = 0; r < ranks; r++) {
        sum += value(r, j);
        max = value(r, j) > max ? value(r, j) : max;
    }
    return op == MHUB_MAX ? max : op == MHUB_AVG ? sum / (float)ranks : sum;
}

static void put(void *buf, mhub_dtype dt, int64_t i, float v)
{
    switch (dt) {
    case MHUB_F32: ((float *)buf)[i] = v; break;
    case MHUB_BF16: ((uint16_t *)buf)[i] = mhub_f32_to_bf16(v); break;
    case MHUB_F16: ((uint16_t *)buf)[i] = mhub_f32_to_f16(v); break;
    }
}

static float get(const void *buf, mhub_dtype dt, int64_t i)
{
    switch (dt) {
    case MHUB_F32: return ((const float *)buf)[i];
    case MHUB_BF16: return mhub_bf16_to_f32(((const uint16_t *)buf)[i]);
    case MHUB_F16: return mhub_f16_to_f32(((const uint16_t *)buf)[i]);
    }
    return NAN;
}

static float round_to(mhub_dtype dt, float v)
{
    switch (dt) {
    case MHUB_F32: return v;
    case MHUB_BF16: return mhub_bf16_to_f32(mhub_f32_to_bf16(v));
    case MHUB_F16: return mhub_f16_to_f32(mhub_f32_to_f16(v));
    }
    return NAN;
}

/* One rounding of the dtype, relative. */
static double tolerance(mhub_dtype dt)
{
    return dt == MHUB_F32 ? 1e-6 : dt == MHUB_BF16 ? 1.0 / 128 : 1.0 / 1024;
}

/* ---- device buffers ----------------------------------------------------- */

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    CK_OK(be->ops->alloc(be, bytes, &p));
    return p;
}

static void to_device(void *dst, const void *src, size_t bytes)
{
    CK_OK(be->ops->copy(be, dst, src, bytes, MHUB_COPY_HOST_TO_DEVICE));
}

/* The input as a training step hands it over: still being written on
 * the compute stream (a device-to-device copy is not waited for), so the
 * communicator must order its own stream after the compute stream. */
static void to_device_pending(void *dst, const void *src, size_t bytes)
{
    void *staged = dev_alloc(bytes);
    to_device(staged, src, bytes);
    CK_OK(be->ops->copy(be, dst, staged, bytes, MHUB_COPY_DEVICE_TO_DEVICE));
    be->ops->free(be, staged); /* later use of it is ordered after the copy */
}

/* The copy is issued on the compute stream, after the stream's wait for
 * the collective; synchronize makes it visible to the host. */
static void to_host(void *dst, const void *src, size_t bytes)
{
    CK_OK(be->ops->copy(be, dst, src, bytes, MHUB_COPY_DEVICE_TO_HOST));
    CK_OK(be->ops->synchronize(be));
}

static void *host_alloc(size_t bytes)
{
    void *p = malloc(bytes > 0 ? bytes : 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- verdicts (testutil_mpi.h holds the machinery) ------------------------ */

/* got[0, count) against want(j) for j from `first`, within the dtype's
 * rounding for averages and exactly otherwise. */
static void expect_values(verdict *v, const void *got, mhub_dtype dt, int64_t count,
                          float (*want)(int64_t j, const void *arg), const void *arg,
                          int64_t first, bool rounded, const char *what)
{
    for (int64_t i = 0; i < count; i++) {
        float w = round_to(dt, want(first + i, arg));
        float g = get(got, dt, i);
        bool ok = rounded ? fabs((double)g - w) <= tolerance(dt) * fmax(1.0, fabs(w)) : g == w;
        if (!ok) {
            flunk(v, "%s %s (rank %d of %d): element %lld of %lld is %.9g, expected %.9g", what,
                  mhub_dtype_name(dt), rank, nranks, (long long)i, (long long)count, (double)g,
                  (double)w);
            return;
        }
    }
}


/* ---- expected values ---------------------------------------------------- */

typedef struct reduction {
    mhub_reduce_op op;
    int ranks;
} reduction;

static float want_reduced(int64_t j, const void *arg)
{
    const reduction *r = arg;
    return reduced(r->op, j, r->ranks);
}

/* Rank `*arg`'s input. */
static float want_input_of(int64_t j, const void *arg)
{
    return value(*(const int *)arg, j);
}

/* The allgather of `count` per rank: block q is rank q's input. */
static float want_gathered(int64_t j, const void *arg)
{
    int64_t count = *(const int64_t *)arg;
    return value((int)(j / count), j % count);
}

/* Rank r's input buffer of `count` elements starting at index `first`. */
static void fill_input(void *buf, mhub_dtype dt, int r, int64_t first, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        put(buf, dt, i, value(r, first + i));
}

/* ---- collectives on device memory --------------------------------------- */

static const mhub_dtype dtypes[] = {MHUB_F32, MHUB_BF16, MHUB_F16};

/* One allreduce of `count`, in place or not, nonblocking and waited. */
static void allreduce_case(verdict *v, mhub_dtype dt, mhub_reduce_op op, int64_t count,
                           bool inplace)
{
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    void *h = host_alloc(bytes);
    void *send = dev_alloc(bytes), *recv = inplace ? send : dev_alloc(bytes);
    fill_input(h, dt, rank, 0, count);
    to_device_pending(send, h, bytes);
    mhub_request req = {0};
    if (expect_ok(v, mhub_comm_iallreduce(world, send, recv, count, dt, op, &req), "iallreduce"))
        expect_ok(v, mhub_request_wait(&req), "wait");
    memset(h, 0, bytes);
    to_host(h, recv, bytes);
    reduction r = {op, nranks};
    char what[64];
    snprintf(what, sizeof what, "allreduce %s %s count %lld", mhub_reduce_op_name(op),
             inplace ? "in place" : "out of place", (long long)count);
    expect_values(v, h, dt, count, want_reduced, &r, 0, op == MHUB_AVG, what);
    if (!inplace)
        be->ops->free(be, recv);
    be->ops->free(be, send);
    free(h);
}

START_TEST(test_allreduce)
{
    mhub_dtype dt = dtypes[_i];
    verdict v = {0};
    const mhub_reduce_op ops[] = {MHUB_SUM, MHUB_AVG, MHUB_MAX};
    for (int o = 0; o < 3; o++)
        for (int inplace = 0; inplace < 2; inplace++) {
            allreduce_case(&v, dt, ops[o], SMALL, inplace);
            allreduce_case(&v, dt, ops[o], LARGE, inplace);
        }
    settle(&v);
}
END_TEST

START_TEST(test_reduce_scatter)
{
    mhub_dtype dt = dtypes[_i];
    verdict v = {0};
    int64_t count = SMALL;
    size_t block = (size_t)count * mhub_dtype_size(dt);
    void *h = host_alloc(block * (size_t)nranks);
    void *send = dev_alloc(block * (size_t)nranks), *recv = dev_alloc(block);
    reduction r = {MHUB_SUM, nranks};
    for (int inplace = 0; inplace < 2; inplace++) {
        fill_input(h, dt, rank, 0, count * nranks);
        to_device(send, h, block * (size_t)nranks);
        void *out = inplace ? (char *)send + (size_t)rank * block : recv;
        expect_ok(&v, mhub_comm_reduce_scatter(world, send, out, count, dt, MHUB_SUM),
                  "reduce_scatter");
        to_host(h, out, block);
        expect_values(&v, h, dt, count, want_reduced, &r, (int64_t)rank * count, false,
                      inplace ? "reduce_scatter in place" : "reduce_scatter");
    }
    be->ops->free(be, recv);
    be->ops->free(be, send);
    free(h);
    settle(&v);
}
END_TEST

START_TEST(test_allgather)
{
    mhub_dtype dt = dtypes[_i];
    verdict v = {0};
    int64_t count = SMALL;
    size_t block = (size_t)count * mhub_dtype_size(dt), all = block * (size_t)nranks;
    void *h = host_alloc(all);
    void *send = dev_alloc(block), *recv = dev_alloc(all);
    for (int inplace = 0; inplace < 2; inplace++) {
        fill_input(h, dt, rank, 0, count);
        void *in = inplace ? (char *)recv + (size_t)rank * block : send;
        to_device(in, h, block);
        expect_ok(&v, mhub_comm_allgather(world, in, recv, count, dt), "allgather");
        to_host(h, recv, all);
        expect_values(&v, h, dt, count * nranks, want_gathered, &count, 0, false,
                      inplace ? "allgather in place" : "allgather");
    }
    be->ops->free(be, recv);
    be->ops->free(be, send);
    free(h);
    settle(&v);
}
END_TEST

START_TEST(test_broadcast)
{
    mhub_dtype dt = dtypes[_i];
    verdict v = {0};
    int64_t count = LARGE;
    int root = nranks - 1;
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    void *h = host_alloc(bytes);
    void *buf = dev_alloc(bytes);
    if (rank == root)
        fill_input(h, dt, root, 0, count);
    else
        memset(h, 0, bytes);
    to_device(buf, h, bytes);
    expect_ok(&v, mhub_comm_broadcast(world, buf, count, dt, root), "broadcast");
    memset(h, 0, bytes);
    to_host(h, buf, bytes);
    expect_values(&v, h, dt, count, want_input_of, &root, 0, false, "broadcast");
    be->ops->free(be, buf);
    free(h);
    settle(&v);
}
END_TEST

/* ---- sends and receives ------------------------------------------------- */

/* Each rank sends to the next and receives from the previous (itself at
 * one rank). The receive is waited first: waiting issues both as one
 * group, which separate calls would deadlock on. */
START_TEST(test_send_recv_ring)
{
    mhub_dtype dt = dtypes[_i];
    verdict v = {0};
    int64_t count = SMALL;
    int next = (rank + 1) % nranks, prev = (rank + nranks - 1) % nranks;
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    void *h = host_alloc(bytes);
    void *out = dev_alloc(bytes), *in = dev_alloc(bytes);
    fill_input(h, dt, rank, 0, count);
    to_device_pending(out, h, bytes);
    mhub_request sreq = {0}, rreq = {0};
    expect_ok(&v, mhub_comm_isend(world, out, count, dt, next, 7, &sreq), "isend");
    expect_ok(&v, mhub_comm_irecv(world, in, count, dt, prev, 7, &rreq), "irecv");
    expect_ok(&v, mhub_request_wait(&rreq), "wait for the receive");
    expect_ok(&v, mhub_request_wait(&sreq), "wait for the send");
    memset(h, 0, bytes);
    to_host(h, in, bytes);
    expect_values(&v, h, dt, count, want_input_of, &prev, 0, false, "ring receive");
    be->ops->free(be, in);
    be->ops->free(be, out);
    free(h);
    settle(&v);
}
END_TEST

/* A collective issued while sends and receives are queued goes after them,
 * and all of them complete. */
START_TEST(test_send_recv_then_collective)
{
    verdict v = {0};
    int64_t count = SMALL;
    int next = (rank + 1) % nranks, prev = (rank + nranks - 1) % nranks;
    size_t bytes = (size_t)count * sizeof(float);
    float *h = host_alloc(bytes);
    float *out = dev_alloc(bytes), *in = dev_alloc(bytes), *sum = dev_alloc(bytes);
    fill_input(h, MHUB_F32, rank, 0, count);
    to_device(out, h, bytes);
    to_device(sum, h, bytes);
    mhub_request sreq = {0}, rreq = {0}, areq = {0};
    expect_ok(&v, mhub_comm_irecv(world, in, count, MHUB_F32, prev, 0, &rreq), "irecv");
    expect_ok(&v, mhub_comm_isend(world, out, count, MHUB_F32, next, 0, &sreq), "isend");
    expect_ok(&v, mhub_comm_iallreduce(world, sum, sum, count, MHUB_F32, MHUB_SUM, &areq),
              "iallreduce");
    expect_ok(&v, mhub_request_wait(&areq), "wait for the allreduce");
    expect_ok(&v, mhub_request_wait(&sreq), "wait for the send");
    expect_ok(&v, mhub_request_wait(&rreq), "wait for the receive");
    to_host(h, in, bytes);
    expect_values(&v, h, MHUB_F32, count, want_input_of, &prev, 0, false, "receive");
    to_host(h, sum, bytes);
    reduction r = {MHUB_SUM, nranks};
    expect_values(&v, h, MHUB_F32, count, want_reduced, &r, 0, false, "allreduce");
    be->ops->free(be, sum);
    be->ops->free(be, in);
    be->ops->free(be, out);
    free(h);
    settle(&v);
}
END_TEST

/* ---- requests ----------------------------------------------------------- */

/* Test until done, as a host loop that overlaps other work would. */
static void poll(verdict *v, mhub_request *req, const char *what)
{
    bool done = false;
    for (long polls = 0; !done && !v->failed; polls++) {
        expect_ok(v, mhub_request_test(req, &done), what);
        if (polls > 100000000L)
            flunk(v, "%s never completed", what);
    }
    if (req->active)
        flunk(v, "%s: a completed request is still active", what);
}

/* Polling waits for the communication stream alone, and these inputs are
 * still being written on the compute stream when the requests are posted:
 * the results are right only if the communicator orders its stream after
 * the compute stream, for a collective and for queued sends alike. */
START_TEST(test_request_test_polling)
{
    verdict v = {0};
    int64_t count = LARGE;
    int next = (rank + 1) % nranks, prev = (rank + nranks - 1) % nranks;
    size_t bytes = (size_t)count * sizeof(float);
    float *h = host_alloc(bytes);
    float *send = dev_alloc(bytes), *recv = dev_alloc(bytes);
    fill_input(h, MHUB_F32, rank, 0, count);
    to_device_pending(send, h, bytes);
    mhub_request req = {0}, rreq = {0};
    expect_ok(&v, mhub_comm_iallreduce(world, send, recv, count, MHUB_F32, MHUB_AVG, &req),
              "iallreduce");
    poll(&v, &req, "test of the allreduce");
    to_host(h, recv, bytes);
    reduction r = {MHUB_AVG, nranks};
    expect_values(&v, h, MHUB_F32, count, want_reduced, &r, 0, true, "polled allreduce avg");
    /* other values than the allreduce's, into a buffer cleared on the
     * compute stream: neither stale buffer passes for the result */
    fill_input(h, MHUB_F32, rank, count, count);
    to_device_pending(send, h, bytes);
    CK_OK(be->ops->memset_zero(be, recv, bytes));
    expect_ok(&v, mhub_comm_irecv(world, recv, count, MHUB_F32, prev, 3, &rreq), "irecv");
    expect_ok(&v, mhub_comm_isend(world, send, count, MHUB_F32, next, 3, &req), "isend");
    poll(&v, &rreq, "test of the receive");
    poll(&v, &req, "test of the send");
    to_host(h, recv, bytes);
    expect_values(&v, h, MHUB_F32, count, want_input_of, &prev, count, false, "polled receive");
    be->ops->free(be, recv);
    be->ops->free(be, send);
    free(h);
    settle(&v);
}
END_TEST

START_TEST(test_barrier)
{
    CK_OK(mhub_comm_barrier(world));
    CK_OK(mhub_comm_barrier(world));
}
END_TEST

/* ---- host memory goes through MPI --------------------------------------- */

START_TEST(test_host_buffers)
{
    verdict v = {0};
    int64_t count = SMALL;
    float *in = host_alloc((size_t)count * sizeof(float));
    float *out = host_alloc((size_t)count * sizeof(float) * (size_t)nranks);
    const mhub_reduce_op ops[] = {MHUB_SUM, MHUB_AVG, MHUB_MAX};
    for (int o = 0; o < 3; o++) {
        fill_input(in, MHUB_F32, rank, 0, count);
        expect_ok(&v, mhub_comm_allreduce(world, in, out, count, MHUB_F32, ops[o]),
                  "host allreduce");
        reduction r = {ops[o], nranks};
        expect_values(&v, out, MHUB_F32, count, want_reduced, &r, 0, ops[o] == MHUB_AVG,
                      "host allreduce");
    }
    /* a one-element flag, as the core agrees on outcomes */
    float flag = (float)rank, lowest = -1;
    expect_ok(&v, mhub_comm_allreduce(world, &flag, &lowest, 1, MHUB_F32, MHUB_MAX),
              "host flag");
    if (lowest != (float)(nranks - 1))
        flunk(&v, "host flag max is %g, expected %d", (double)lowest, nranks - 1);

    fill_input(in, MHUB_F32, rank, 0, count);
    expect_ok(&v, mhub_comm_allgather(world, in, out, count, MHUB_F32), "host allgather");
    expect_values(&v, out, MHUB_F32, count * nranks, want_gathered, &count, 0, false,
                  "host allgather");

    int next = (rank + 1) % nranks, prev = (rank + nranks - 1) % nranks;
    mhub_request sreq = {0}, rreq = {0};
    expect_ok(&v, mhub_comm_irecv(world, out, count, MHUB_F32, prev, 3, &rreq), "host irecv");
    expect_ok(&v, mhub_comm_isend(world, in, count, MHUB_F32, next, 3, &sreq), "host isend");
    expect_ok(&v, mhub_request_wait(&rreq), "host recv wait");
    expect_ok(&v, mhub_request_wait(&sreq), "host send wait");
    expect_values(&v, out, MHUB_F32, count, want_input_of, &prev, 0, false, "host receive");
    free(out);
    free(in);
    settle(&v);
}
END_TEST

/* ---- groups ------------------------------------------------------------- */

START_TEST(test_split)
{
    verdict v = {0};
    mhub_comm *half = NULL;
    CK_OK(mhub_comm_split(world, rank % 2, rank, "parity", &half));
    ck_assert_ptr_nonnull(half);
    int size = (nranks - rank % 2 + 1) / 2;
    if (half->size != size || half->rank != rank / 2 || strcmp(half->name, "parity") != 0)
        flunk(&v, "world rank %d: \"%s\" rank %d of %d, expected \"parity\" %d of %d", rank,
              half->name, half->rank, half->size, rank / 2, size);
    /* the sum of the world ranks of this parity, on device memory */
    float *h = host_alloc(sizeof(float)), *d = dev_alloc(sizeof(float));
    h[0] = (float)rank;
    to_device(d, h, sizeof(float));
    expect_ok(&v, mhub_comm_allreduce(half, d, d, 1, MHUB_F32, MHUB_SUM), "split allreduce");
    to_host(h, d, sizeof(float));
    float want = 0;
    for (int r = rank % 2; r < nranks; r += 2)
        want += (float)r;
    if (h[0] != want)
        flunk(&v, "split allreduce gave %g, expected %g", (double)h[0], (double)want);
    expect_ok(&v, mhub_comm_barrier(half), "split barrier");
    mhub_comm_free(half);

    mhub_comm *none = world;
    CK_OK(mhub_comm_split(world, rank == 0 ? 0 : -1, 0, "first", &none));
    if (rank == 0 && (none == NULL || none->size != 1))
        flunk(&v, "rank 0 did not get a group of one");
    if (rank != 0 && none != NULL)
        flunk(&v, "a negative color gave a communicator");
    mhub_comm_free(none);
    be->ops->free(be, d);
    free(h);
    settle(&v);
}
END_TEST

/* ---- errors ------------------------------------------------------------- */

/* Every error here is made identically on every rank and fails before any
 * communication. */
START_TEST(test_bad_arguments)
{
    int64_t count = 16;
    float host[16] = {0};
    float *dev = dev_alloc(sizeof host);
    mhub_request req = {0};

    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, host, dev, count, MHUB_F32, MHUB_SUM));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "host memory"));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, dev, host, count, MHUB_F32, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_allreduce(world, dev, dev, -1, MHUB_F32, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, dev, dev, count, (mhub_dtype)99, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, dev, dev, count, MHUB_F32, (mhub_reduce_op)7));
    /* overlapping but not the in-place form */
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, dev, dev + 1, count - 1, MHUB_F32, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_broadcast(world, dev, count, MHUB_F32, nranks));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_broadcast(world, dev, count, MHUB_F32, -1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_isend(world, dev, count, MHUB_F32, nranks, 0, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_irecv(world, dev, count, MHUB_F32, 0, -1, &req));
    ck_assert(!req.active);
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_comm_alloc(world, 64, &(void *){NULL}));

    /* creation: bad arguments, and a backend that is not CUDA (collective:
     * every rank fails alike and none is left waiting) */
    MPI_Comm w = MPI_COMM_WORLD;
    mhub_comm *c = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, create_nccl(&w, NULL, "x", &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, create_nccl(NULL, be, "x", &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             create_nccl(&w, be, "a name longer than thirty-one chars", &c));
    mhub_backend *cpu = NULL;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &cpu));
    CK_FAILS(MHUB_ERR_INVALID_ARG, create_nccl(&w, cpu, "cpu", &c));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "not a CUDA backend"));
    ck_assert_ptr_null(c);
    mhub_backend_free(cpu);

    /* a bad timeout fails creation on every rank */
    setenv("MHUB_NCCL_TIMEOUT_S", "soon", 1);
    CK_FAILS(MHUB_ERR_INVALID_ARG, create_nccl(&w, be, "timeout", &c));
    unsetenv("MHUB_NCCL_TIMEOUT_S");
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "MHUB_NCCL_TIMEOUT_S"));
    ck_assert_ptr_null(c);

    /* the communicator still works after all that */
    CK_OK(mhub_comm_allreduce(world, dev, dev, count, MHUB_F32, MHUB_SUM));
    be->ops->free(be, dev);
}
END_TEST

#ifdef MHUB_TEST_CUDA_EMU
/* ---- failures one rank cannot cause (the emulator's NCCL makes them) --- */

/* A device send to this rank itself with no receive to match: the group
 * fails at its issue, the send's wait reports it, and the communicator
 * goes on working. (On a GPU this send would wait for its receive
 * forever.) */
START_TEST(test_unmatched_send_fails_at_wait)
{
    int64_t count = 16;
    float *dev = dev_alloc((size_t)count * sizeof(float));
    mhub_request req = {0};
    CK_OK(mhub_comm_isend(world, dev, count, MHUB_F32, rank, 0, &req));
    CK_FAILS(MHUB_ERR_COMM, mhub_request_wait(&req));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "ncclGroupEnd"));
    ck_assert(!req.active);
    CK_OK(mhub_comm_allreduce(world, dev, dev, count, MHUB_F32, MHUB_SUM));
    be->ops->free(be, dev);
}
END_TEST

/* A device send to another rank that never posts the receive: nothing on
 * the sending rank can tell when the send is issued, and on a GPU it
 * waits forever. The emulator gives up after MHUB_EMU_NCCL_TIMEOUT_S and
 * reports NCCL's asynchronous error, which the next wait on that
 * communicator finds, and aborts it. (Two ranks or more.) */
START_TEST(test_unanswered_send_aborts)
{
    verdict v = {0};
    MPI_Comm w = MPI_COMM_WORLD;
    mhub_comm *c = NULL;
    CK_OK(create_nccl(&w, be, "unanswered", &c));
    int64_t count = 16;
    float *dev = dev_alloc((size_t)count * sizeof(float));
    /* the emulator runs a collective when its rank waits for it: run
     * every one still queued now, on all ranks, not in rank 0's part */
    CK_OK(be->ops->synchronize(be));
    if (rank == 0) {
        setenv("MHUB_EMU_NCCL_TIMEOUT_S", "1", 1);
        mhub_request req = {0};
        expect_ok(&v, mhub_comm_isend(c, dev, count, MHUB_F32, 1, 0, &req), "isend");
        /* the wait orders the compute stream after the send; running the
         * stream runs the send, which times out */
        expect_ok(&v, mhub_request_wait(&req), "wait for the send");
        expect_ok(&v, be->ops->synchronize(be), "synchronize");
        unsetenv("MHUB_EMU_NCCL_TIMEOUT_S");
        mhub_status st = mhub_comm_allreduce(c, dev, dev, count, MHUB_F32, MHUB_SUM);
        if (st != MHUB_ERR_COMM || !strstr(mhub_last_error(), "asynchronous error") ||
            !strstr(mhub_last_error(), "aborted"))
            flunk(&v, "the allreduce after an unanswered send gave %s: %s",
                  mhub_status_name(st), mhub_last_error());
    }
    mhub_comm_free(c);
    be->ops->free(be, dev);
    settle(&v);
}
END_TEST

/* A peer that fails: the wait that finds NCCL's asynchronous error aborts
 * the communicator, every later device operation says so at once, host
 * buffers still go through MPI, and freeing it releases everything. */
START_TEST(test_async_error_aborts)
{
    MPI_Comm w = MPI_COMM_WORLD;
    mhub_comm *c = NULL;
    CK_OK(create_nccl(&w, be, "doomed", &c));
    int64_t count = 16;
    float *dev = dev_alloc(2 * (size_t)count * sizeof(float));
    mhub_request first = {0}, second = {0}, third = {0};
    CK_OK(mhub_comm_iallreduce(c, dev, dev, count, MHUB_F32, MHUB_SUM, &first));
    CK_OK(mhub_comm_iallreduce(c, dev + count, dev + count, count, MHUB_F32, MHUB_SUM, &second));
    CK_OK(mhub_comm_iallreduce(c, dev + count, dev + count, count, MHUB_F32, MHUB_SUM, &third));
    mhub_emu_nccl_fail_peer();
    CK_FAILS(MHUB_ERR_COMM, mhub_request_wait(&first));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "asynchronous error"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "aborted"));
    /* the abort cut the operations still pending short: none succeeds */
    CK_FAILS(MHUB_ERR_STATE, mhub_request_wait(&second));
    bool done = false;
    CK_FAILS(MHUB_ERR_STATE, mhub_request_test(&third, &done));
    ck_assert(!third.active);
    CK_FAILS(MHUB_ERR_STATE, mhub_comm_allreduce(c, dev, dev, count, MHUB_F32, MHUB_SUM));
    mhub_request req = {0};
    CK_FAILS(MHUB_ERR_STATE, mhub_comm_isend(c, dev, count, MHUB_F32, 0, 0, &req));
    ck_assert(!req.active);
    CK_FAILS(MHUB_ERR_STATE, mhub_comm_barrier(c));
    float host = 2, sum = 0;
    CK_OK(mhub_comm_allreduce(c, &host, &sum, 1, MHUB_F32, MHUB_SUM));
    ck_assert(sum == 2.0f * (float)nranks);
    mhub_comm_free(c);
    /* the other communicator never saw the failure */
    CK_OK(mhub_comm_allreduce(world, dev, dev, count, MHUB_F32, MHUB_SUM));
    be->ops->free(be, dev);
}
END_TEST
#endif

static Suite *make_suite(void)
{
    Suite *s = suite_create("nccl_comm");
    TCase *coll = tcase_create("collectives");
    tcase_add_unchecked_fixture(coll, setup, teardown);
    tcase_set_timeout(coll, 120);
    tcase_add_loop_test(coll, test_allreduce, 0, 3);
    tcase_add_loop_test(coll, test_reduce_scatter, 0, 3);
    tcase_add_loop_test(coll, test_allgather, 0, 3);
    tcase_add_loop_test(coll, test_broadcast, 0, 3);
    tcase_add_loop_test(coll, test_send_recv_ring, 0, 3);
    tcase_add_test(coll, test_send_recv_then_collective);
    tcase_add_test(coll, test_request_test_polling);
    tcase_add_test(coll, test_barrier);
    suite_add_tcase(s, coll);

    TCase *mixed = tcase_create("host, groups, errors");
    tcase_add_unchecked_fixture(mixed, setup, teardown);
    tcase_set_timeout(mixed, 120);
    tcase_add_test(mixed, test_host_buffers);
    tcase_add_test(mixed, test_split);
    tcase_add_test(mixed, test_bad_arguments);
    suite_add_tcase(s, mixed);
#ifdef MHUB_TEST_CUDA_EMU
    TCase *faults = tcase_create("failures");
    tcase_add_unchecked_fixture(faults, setup, teardown);
    tcase_add_test(faults, test_unmatched_send_fails_at_wait);
    tcase_add_test(faults, test_async_error_aborts);
    int world_size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (world_size > 1)
        tcase_add_test(faults, test_unanswered_send_aborts);
    suite_add_tcase(s, faults);
#endif
    return s;
}

/* The reason this rank cannot run the suite, or NULL when it can (always,
 * on the emulator, whose device is present). */
static const char *no_device_reason(char *why, size_t len)
{
#ifdef MHUB_TEST_CUDA_EMU
    (void)why;
    (void)len;
    return NULL;
#else
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        snprintf(why, len, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
    else if (count == 0)
        snprintf(why, len, "cudaGetDeviceCount found no device");
    else
        return NULL;
    return why;
#endif
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    char why[256];
    const char *reason = no_device_reason(why, sizeof why);
    int mine = reason != NULL, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
        printf("SKIP: no CUDA device: %s\n", reason ? reason : "another rank has none");
        MPI_Finalize();
        return SKIP_EXIT;
    }
    int failed = mhub_test_run_suite(make_suite());
    int anyfail = 0;
    MPI_Allreduce(&failed, &anyfail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return anyfail == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
