/* cuda_emu.h - what tests call to get the emulated CUDA backend.
 *
 * tests/cuda_emu/ runs the CUDA backend's own source (backends/cuda/
 * cuda_backend.c and its kernels) on the CPU: a test harness that checks
 * the backend's logic and every kernel's arithmetic on machines without a
 * GPU. These are mhub_cuda_backend_create and mhub_cuda_backend_set_matmul
 * of include/mhub/backend.h under the names cuda_emu_names.h gives the
 * emulated build, and the NCCL communicator (backends/cuda/nccl_comm.c)
 * likewise. */
#ifndef MHUB_CUDA_EMU_H
#define MHUB_CUDA_EMU_H

#include "mhub/backend.h"
#include "mhub/comm.h"

mhub_status mhub_cuda_emu_backend_create(const mhub_cuda_options *opts, mhub_backend **out);
mhub_status mhub_cuda_emu_backend_set_matmul(mhub_backend *be, mhub_matmul_precision p);
/* mhub_comm_create_nccl over the emulated NCCL (tests/cuda_emu/nccl.h):
 * one rank per MPI process, on an emulated CUDA backend. */
mhub_status mhub_cuda_emu_comm_create_nccl(const void *mpi_comm, mhub_backend *be,
                                           const char *name, mhub_comm **out);
/* The next ncclCommGetAsyncError of the emulated NCCL reports a peer that
 * failed (ncclRemoteError), and that communicator keeps reporting it. */
void mhub_emu_nccl_fail_peer(void);

#endif
