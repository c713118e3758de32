/* cuda_launch.h - how the CUDA backend's kernels are launched.
 *
 * Every launch in backends/cuda is written
 *
 *     MHUB_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...);
 *
 * which under nvcc is exactly kernel<<<grid, block, shared_bytes,
 * stream>>>(args...). The test suite's CPU emulator (tests/cuda_emu/)
 * compiles the same .cu files with g++ and MHUB_CUDA_EMU defined; there
 * the macro calls the emulator's launcher, which runs the kernel's threads
 * on the CPU. A kernel whose template arguments hold a comma goes in
 * parentheses, as any macro argument must: MHUB_LAUNCH((kernel<D, B>), ...). */
#ifndef MHUB_CUDA_LAUNCH_H
#define MHUB_CUDA_LAUNCH_H

#ifdef MHUB_CUDA_EMU
#define MHUB_LAUNCH(kernel, grid, block, shared_bytes, stream) \
    mhub_emu::launch(kernel, grid, block, shared_bytes, stream)
#else
#define MHUB_LAUNCH(kernel, grid, block, shared_bytes, stream) \
    kernel<<<grid, block, shared_bytes, stream>>>
#endif

#endif
