/* tests/cuda_emu/nccl.h - NCCL for the CPU emulator, across MPI ranks.
 *
 * The test build compiles backends/cuda/nccl_comm.c against this header
 * instead of NCCL's, so `make check` runs the NCCL communicator's own
 * logic (where buffers live, the request pool, queued sends and receives
 * issued as one group, ordering events, split groups, errors) on
 * machines without a GPU, at one rank and across several: each MPI
 * process is one rank with its own emulated device, and the data moves
 * through MPI (nccl_emu.cpp). MPI must be initialised before a
 * communicator of more than one rank is made, and outlive it; ranks find
 * each other over MPI_COMM_WORLD, on tags in the upper half of
 * MPI_TAG_UB, which the program must not receive with MPI_ANY_TAG there.
 * The emulator also needs NCCL rank 0 to be the process that made the id
 * (as nccl_comm.c does). Like the rest of the emulator's work, an
 * operation is queued on its stream and runs when the stream is made to
 * (cuda_runtime.h), so a communicator that does not order its stream
 * after the one that wrote the buffer sends stale data; buffers must be
 * emulated device memory (cudaMalloc).
 *
 * What it checks: real reductions across ranks with NCCL's rounding in
 * each datatype (ncclAvg premultiplies by 1/nranks, every step rounds to
 * the type), every rank getting the same bits, sends and receives
 * matched between two ranks in the order issued, a send or receive to
 * the same rank without its partner in the group (an error at
 * ncclGroupEnd), ranks missing at ncclCommInitRank or disagreeing on the
 * group (an error on every rank that came), and a peer that never takes
 * part in an operation: after MHUB_EMU_NCCL_TIMEOUT_S seconds (default
 * 60) the communicator reports ncclSystemError as its asynchronous error
 * and runs nothing more.
 *
 * What it cannot check: timing and overlap; NCCL's order of additions
 * (its ring's; here rank order, so sums of non-integers may round
 * otherwise than on GPUs); progress on its own: a collective runs only
 * when its rank waits for it, so rank-dependent code that leaves one
 * queued on one rank while it waits for something the other ranks do
 * later stalls here (and times out) where GPUs would go on. A timed-out
 * operation leaves its stream able to run on, where a GPU's would hang;
 * the failure shows at the next ncclCommGetAsyncError. A dead process
 * (mhub_emu_nccl_fail_peer stands in for one). The values are NCCL's
 * own, so messages read the same. */
#ifndef MHUB_CUDA_EMU_NCCL_H
#define MHUB_CUDA_EMU_NCCL_H

/* The emulator's functions answer to names of their own, so a program can
 * link the emulator next to the real library (a static libmhub built
 * --with-cuda) without one taking the other's calls. */
#define ncclAllGather mhub_emu_ncclAllGather
#define ncclAllReduce mhub_emu_ncclAllReduce
#define ncclBroadcast mhub_emu_ncclBroadcast
#define ncclCommAbort mhub_emu_ncclCommAbort
#define ncclCommDestroy mhub_emu_ncclCommDestroy
#define ncclCommGetAsyncError mhub_emu_ncclCommGetAsyncError
#define ncclCommInitRank mhub_emu_ncclCommInitRank
#define ncclGetErrorString mhub_emu_ncclGetErrorString
#define ncclGetLastError mhub_emu_ncclGetLastError
#define ncclGetUniqueId mhub_emu_ncclGetUniqueId
#define ncclGroupEnd mhub_emu_ncclGroupEnd
#define ncclGroupStart mhub_emu_ncclGroupStart
#define ncclRecv mhub_emu_ncclRecv
#define ncclReduceScatter mhub_emu_ncclReduceScatter
#define ncclSend mhub_emu_ncclSend

#include <stddef.h>

#include "cuda_runtime.h"

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7
} ncclResult_t;

/* the dtypes nccl_comm.c uses */
typedef enum { ncclFloat16 = 6, ncclFloat32 = 7, ncclBfloat16 = 9 } ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef struct mhub_emu_nccl_comm *ncclComm_t;

#ifdef __cplusplus
extern "C" {
#endif

ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
/* Joins the processes that pass the same id (one ncclGetUniqueId made);
 * blocks until all nranks have joined, or fails after the timeout. */
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error);
const char *ncclGetErrorString(ncclResult_t result);
/* The message of the latest failure (comm may be NULL), "" when none. */
const char *ncclGetLastError(ncclComm_t comm);

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream);
/* Outside ncclGroupStart/End each is a group of its own, as in NCCL. */
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);

/* The emulator's own (declared for tests in cuda_emu.h): the next
 * ncclCommGetAsyncError, on any communicator, finds ncclRemoteError there
 * (a peer that died, on a GPU), and that communicator keeps reporting it,
 * so tests reach the code that handles a failure one rank cannot cause. */
void mhub_emu_nccl_fail_peer(void);

#ifdef __cplusplus
}
#endif

#endif
