/* backends/cuda/cuda_elementwise.cu, compiled by g++ against the CPU emulator
 * (tests/cuda_emu/cuda_runtime.h). */
#include "backends/cuda/cuda_elementwise.cu"
