/* cuda_internal.h - what the CUDA backend's files share.
 *
 * The backend (cuda_backend.c) owns one device, one compute stream, one
 * cuBLAS handle, one device memory pool (cuda_pool.h) and the kernels'
 * scratch and fault record (cuda_kernels.h). The NCCL communicator
 * (nccl_comm.c) orders its communication stream against the compute
 * stream it gets here. */
#ifndef MHUB_CUDA_INTERNAL_H
#define MHUB_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "mhub/backend.h"
#include "mhub/status.h"

/* The compute stream of a CUDA backend; NULL with *ok = false for any
 * other backend. */
cudaStream_t mhub_cuda_backend_stream(const mhub_backend *be, bool *ok);

/* An error status for a failed CUDA runtime call: names the call, the
 * device and CUDA's own message. */
mhub_status mhub_cuda_error(cudaError_t err, const char *call, int device);

/* Wrap a CUDA runtime call returning cudaError_t; `dev` names the device. */
#define MHUB_CUDA_TRY(call, dev)                                          \
    do {                                                                  \
        cudaError_t mhub_cuda_err_ = (call);                              \
        if (mhub_cuda_err_ != cudaSuccess)                                \
            return mhub_cuda_error(mhub_cuda_err_, #call, (dev));         \
    } while (0)

#endif
