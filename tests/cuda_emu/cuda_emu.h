/* cuda_emu.h - what tests call to get the emulated CUDA backend.
 *
 * tests/cuda_emu/ runs the CUDA backend's own source (backends/cuda/
 * cuda_backend.c and its kernels) on the CPU: a test harness that checks
 * the backend's logic and every kernel's arithmetic on machines without a
 * GPU. These are mhub_cuda_backend_create and mhub_cuda_backend_set_matmul
 * of include/mhub/backend.h under the names cuda_emu_names.h gives the
 * emulated build. */
#ifndef MHUB_CUDA_EMU_H
#define MHUB_CUDA_EMU_H

#include "mhub/backend.h"

mhub_status mhub_cuda_emu_backend_create(const mhub_cuda_options *opts, mhub_backend **out);
mhub_status mhub_cuda_emu_backend_set_matmul(mhub_backend *be, mhub_matmul_precision p);

#endif
