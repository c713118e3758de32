/* backends/cuda/cuda_norm.cu, compiled by g++ against the CPU emulator
 * (tests/cuda_emu/cuda_runtime.h). */
#include "backends/cuda/cuda_norm.cu"
