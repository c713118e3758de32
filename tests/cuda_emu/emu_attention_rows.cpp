/* backends/cuda/cuda_attention_rows.cu, compiled by g++ against the CPU
 * emulator (tests/cuda_emu/cuda_runtime.h). */
#include "backends/cuda/cuda_attention_rows.cu"
