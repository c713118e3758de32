/* comm.h - the communication interface: one communicator per process group.
 *
 * Every collective exists in a nonblocking form (mhub_comm_i*) that fills a
 * caller-owned mhub_request, and a blocking form that issues it and waits.
 * The request lives wherever the caller keeps it (a DDP bucket, say), so a
 * collective in the training step allocates nothing.
 *
 * Buffers are memory of the communicator's backend (host memory for MPI,
 * device memory for NCCL). Counts are elements of `dtype`:
 *   allreduce       send[count] -> recv[count] on every rank
 *   reduce_scatter  send[count * size] -> recv[count]: rank r gets block r
 *   allgather       send[count] -> recv[count * size], block r from rank r
 *   broadcast       buf[count] from root to all
 * In-place forms: allreduce with send == recv; reduce_scatter with
 * recv == send + rank * count (bytes of dtype); allgather with
 * send == recv + rank * count. Other overlaps are an error.
 *
 * Reductions: MHUB_SUM, MHUB_AVG (sum, then divide by size; computed in
 * f32 for 16-bit dtypes) and MHUB_MAX, for f32, bf16 and f16.
 *
 * Contracts: send/recv counts must match exactly (a shorter message is
 * MHUB_ERR_COMM); tags are >= 0; an in-place reduce_scatter leaves the
 * other blocks of the buffer undefined; create and split are collective,
 * so every rank must call them with valid arguments. A backend receives
 * op = MHUB_AVG with finish_divisor = size already set; one that averages
 * inside its collective (NCCL's ncclAvg) resets it to 1. ops->destroy
 * frees the mhub_comm struct itself.
 *
 * Waiting: an oversubscribed node (more ranks than cores) makes MPI's
 * blocking busy-wait cost one scheduler tick (~4-11 ms) per collective.
 * Every wait here therefore polls the request and yields the core between
 * polls (sched_yield), ~70 us per collective in the same setting and free
 * when ranks have their own cores. */
#ifndef MHUB_COMM_H
#define MHUB_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/backend.h"
#include "mhub/dtype.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_comm mhub_comm;

typedef enum mhub_reduce_op {
    MHUB_SUM = 0,
    MHUB_AVG = 1,
    MHUB_MAX = 2
} mhub_reduce_op;

const char *mhub_reduce_op_name(mhub_reduce_op op);

/* A pending operation. Zero-initialise it once; after a successful wait
 * (or a test that reports done) it may be reused. */
typedef struct mhub_request {
    mhub_comm *comm;          /* communicator that issued it; NULL = idle */
    bool active;
    /* work to do on completion (MHUB_AVG's division) */
    void *finish_buf;
    int64_t finish_count;
    mhub_dtype finish_dtype;
    float finish_divisor;     /* divide the result by this; 1.0: nothing */
    const char *what;         /* "allreduce", ... for error messages */
    uint64_t handle[4];       /* the implementation's own request storage */
} mhub_request;

typedef struct mhub_comm_ops {
    mhub_status (*iallreduce)(mhub_comm *c, const void *send, void *recv, int64_t count,
                              mhub_dtype dt, mhub_reduce_op op, mhub_request *req);
    mhub_status (*ireduce_scatter)(mhub_comm *c, const void *send, void *recv,
                                   int64_t recv_count, mhub_dtype dt, mhub_reduce_op op,
                                   mhub_request *req);
    mhub_status (*iallgather)(mhub_comm *c, const void *send, void *recv,
                              int64_t send_count, mhub_dtype dt, mhub_request *req);
    mhub_status (*ibroadcast)(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                              int root, mhub_request *req);
    mhub_status (*isend)(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                         int peer, int tag, mhub_request *req);
    mhub_status (*irecv)(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                         int peer, int tag, mhub_request *req);
    /* Complete the request's transfer (without the finish step). */
    mhub_status (*wait)(mhub_comm *c, mhub_request *req);
    mhub_status (*test)(mhub_comm *c, mhub_request *req, bool *done);
    mhub_status (*barrier)(mhub_comm *c);
    /* Ranks with the same color form a new communicator ordered by key;
     * color < 0 gives *out = NULL. Collective over c. */
    mhub_status (*split)(mhub_comm *c, int color, int key, const char *name,
                         mhub_comm **out);
    void (*destroy)(mhub_comm *c);
    /* Optional (NULL = not offered): memory this communicator reduces
     * fastest, e.g. a slot of an intra-node shared-memory window. */
    mhub_status (*alloc)(mhub_comm *c, size_t bytes, void **out);
    void (*free_mem)(mhub_comm *c, void *ptr);
} mhub_comm_ops;

struct mhub_comm {
    const mhub_comm_ops *ops;
    void *ctx;
    int rank;
    int size;
    char name[32];   /* group name for messages: "world", "dp", "tp", ... */
};

/* ---- nonblocking ---- */
mhub_status mhub_comm_iallreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                 mhub_dtype dt, mhub_reduce_op op, mhub_request *req);
mhub_status mhub_comm_ireduce_scatter(mhub_comm *c, const void *send, void *recv,
                                      int64_t recv_count, mhub_dtype dt, mhub_reduce_op op,
                                      mhub_request *req);
mhub_status mhub_comm_iallgather(mhub_comm *c, const void *send, void *recv,
                                 int64_t send_count, mhub_dtype dt, mhub_request *req);
mhub_status mhub_comm_ibroadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                 int root, mhub_request *req);
mhub_status mhub_comm_isend(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                            int peer, int tag, mhub_request *req);
mhub_status mhub_comm_irecv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                            int peer, int tag, mhub_request *req);
/* Wait for completion and run the finish step. An idle request is OK. */
mhub_status mhub_request_wait(mhub_request *req);
/* *done = true when complete (finish step run, request idle again). */
mhub_status mhub_request_test(mhub_request *req, bool *done);

/* ---- blocking ---- */
mhub_status mhub_comm_allreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                mhub_dtype dt, mhub_reduce_op op);
mhub_status mhub_comm_reduce_scatter(mhub_comm *c, const void *send, void *recv,
                                     int64_t recv_count, mhub_dtype dt, mhub_reduce_op op);
mhub_status mhub_comm_allgather(mhub_comm *c, const void *send, void *recv,
                                int64_t send_count, mhub_dtype dt);
mhub_status mhub_comm_broadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                int root);
mhub_status mhub_comm_send(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                           int peer, int tag);
mhub_status mhub_comm_recv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                           int peer, int tag);
mhub_status mhub_comm_barrier(mhub_comm *c);
mhub_status mhub_comm_split(mhub_comm *c, int color, int key, const char *name,
                            mhub_comm **out);
void mhub_comm_free(mhub_comm *c);

/* ---- communicator-owned memory ---- */
/* Collective over c (every rank asks for the same size): zeroed memory
 * that the communicator's fastest path reaches. The MPI communicator on a
 * single node hands out a slot of an MPI-3 shared-memory window; an
 * all-reduce whose send == recv buffer lies in such memory (f32 sum/avg)
 * then runs over shared memory: each rank reduces its 1/n of the buffer
 * from every rank's slot in rank order and copies the others' results,
 * bitwise identical on every rank and run. Returns MHUB_ERR_UNSUPPORTED
 * when the communicator offers no such memory (ranks on several nodes, a
 * backend without it): allocate with the backend then. Free with
 * mhub_comm_free_mem before freeing the communicator. */
mhub_status mhub_comm_alloc(mhub_comm *c, size_t bytes, void **out);
void mhub_comm_free_mem(mhub_comm *c, void *ptr);

/* ---- the MPI communicator (backends/cpu/mpi_comm.c) ---- */
/* Wrap a duplicate of the MPI communicator `mpi_comm` (an MPI_Comm passed
 * by address, so this header needs no mpi.h). MPI must be initialised. */
mhub_status mhub_comm_create_mpi(const void *mpi_comm, const char *name, mhub_comm **out);
/* The world communicator: MPI_COMM_WORLD, named "world". */
mhub_status mhub_comm_create_mpi_world(mhub_comm **out);

/* ---- the guard communicator (backends/cpu/guard_backend.c) ----
 * Wraps `inner` (which it then owns) so that every call may touch the
 * memory of the guard backend `guard`; split groups are wrapped too. */
mhub_status mhub_comm_create_guard(mhub_comm *inner, mhub_backend *guard, mhub_comm **out);

/* ---- the NCCL communicator (backends/cuda/nccl_comm.c) ----
 * Collective over the MPI communicator `mpi_comm` (an MPI_Comm passed by
 * address): its rank 0 makes the NCCL unique id and broadcasts it through
 * MPI, and every rank joins with the device of the CUDA backend `be`.
 * Device buffers go through NCCL on a communication stream of its own,
 * ordered after the work `be` has issued so far with an event, and the
 * backend's stream waits for the result at mhub_request_wait: so a
 * gradient bucket's reduction overlaps the backward still running.
 * Host buffers (agreement flags, loss sums) go through the MPI
 * communicator underneath. Without --with-cuda: MHUB_ERR_UNSUPPORTED. */
mhub_status mhub_comm_create_nccl(const void *mpi_comm, mhub_backend *be, const char *name,
                                  mhub_comm **out);

#ifdef __cplusplus
}
#endif
#endif
