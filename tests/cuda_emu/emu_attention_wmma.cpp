/* backends/cuda/cuda_attention_wmma.cu, compiled by g++ against the CPU
 * emulator (tests/cuda_emu/cuda_runtime.h, mma.h and cuda_bf16.h). */
#include "backends/cuda/cuda_attention_wmma.cu"
