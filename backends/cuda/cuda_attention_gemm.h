/* cuda_attention_gemm.h - flash_attention_forward/backward (contract in
 * include/mhub/backend.h) from cuBLAS's batched GEMMs on the tensor cores,
 * in the backend's matmul precision, plus the row kernels of
 * cuda_attention_rows.cu. cuda_backend.c owns the scratch and chooses
 * between this path and the tiled CUDA-core kernels of cuda_attention.cu.
 *
 * The path forms each (batch, head) pair's whole [seq, seq] score matrix
 * (the part above the diagonal too: twice the causal FLOPs), so it works
 * through the pairs in chunks sized to the scratch it is given: each pair
 * takes two seq x seq f32 matrices (S, and the backward's dP) and a few
 * pointers.
 *
 * Its cost is memory traffic, not FLOPs: with head_dim 64 a GEMM writing
 * or reading a [seq, seq] f32 matrix does 32 FLOPs per byte of it, well
 * under what an H100 does per byte of HBM, and a forward plus backward
 * moves such a matrix about 12 times per pair (GEMM outputs and inputs,
 * the row kernels' reads and writes). A fused kernel that keeps S in
 * registers (flash attention on mma tiles) avoids that traffic. */
#ifndef MHUB_CUDA_ATTENTION_GEMM_H
#define MHUB_CUDA_ATTENTION_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "mhub/status.h"

/* What a call works with: the backend's stream, its cuBLAS handle (bound
 * to that stream), the compute type of its matmul precision, and
 * `scratch_bytes` of device scratch that only this call uses until it
 * returns (the stream orders later uses after its kernels). */
typedef struct mhub_cuda_attn_gemm_ctx {
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasComputeType_t compute;
    int device;
    void *scratch;
    size_t scratch_bytes;
} mhub_cuda_attn_gemm_ctx;

/* The scratch a call with this shape wants when at most `budget` bytes
 * may be used: room for all batch*heads pairs when they fit, otherwise
 * for as many as fit; 0 when not even one pair fits `budget` (the caller
 * then uses the tiled kernels) or when the shape has no work. */
size_t mhub_cuda_attention_gemm_scratch(int64_t batch, int64_t seq, int64_t heads,
                                        int64_t groups, int64_t head_dim, size_t budget);

/* The two operations, arguments already checked by src/backend_args.c's
 * mhub_args_flash_attention_forward/backward. ctx->scratch_bytes must be
 * at least what mhub_cuda_attention_gemm_scratch asked for (any budget). */
mhub_status mhub_cuda_attention_gemm_forward(const mhub_cuda_attn_gemm_ctx *ctx, float *out,
                                             float *lse, const float *qkv, int64_t batch,
                                             int64_t seq, int64_t heads, int64_t groups,
                                             int64_t head_dim);
mhub_status mhub_cuda_attention_gemm_backward(const mhub_cuda_attn_gemm_ctx *ctx, float *dqkv,
                                              const float *dout, const float *out,
                                              const float *qkv, const float *lse,
                                              int64_t batch, int64_t seq, int64_t heads,
                                              int64_t groups, int64_t head_dim);

#endif
