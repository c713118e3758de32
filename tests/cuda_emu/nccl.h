/* tests/cuda_emu/nccl.h - NCCL for the CPU emulator: one rank.
 *
 * The test build compiles backends/cuda/nccl_comm.c against this header
 * instead of NCCL's, so `make check` runs the NCCL communicator's own
 * logic (where buffers live, the request pool, queued sends and receives
 * issued as one group, ordering events, errors) on machines without a GPU.
 * A communicator here has exactly one rank: every collective of one rank
 * is a copy (a sum, average or maximum of one value is that value), and a
 * send can only go to the same rank, where ncclGroupEnd pairs it with the
 * receive. Like the rest of the emulator's work, a transfer is queued on
 * its stream and runs when the stream is made to (cuda_runtime.h), so a
 * communicator that does not order its stream after the one that wrote
 * the buffer sends stale data; buffers must be emulated device memory
 * (cudaMalloc).
 *
 * What it cannot check: anything that needs a second rank (real
 * reductions, the order in which peers match their sends and receives,
 * hangs and NCCL's asynchronous errors), and NCCL's own arithmetic
 * (ncclAvg's scaling and rounding). The values are NCCL's own, so
 * messages read the same. */
#ifndef MHUB_CUDA_EMU_NCCL_H
#define MHUB_CUDA_EMU_NCCL_H

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
/* nranks must be 1 and id one that ncclGetUniqueId made. */
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
/* Only inside ncclGroupStart/End, as with one rank a lone send or receive
 * would wait forever for its partner; ncclGroupEnd pairs them in order. */
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
