/* tests/cuda_emu/cublas_v2.h - the cuBLAS subset the CUDA backend uses,
 * for the CPU emulator (see cuda_runtime.h).
 *
 * cublasGemmEx is OpenBLAS's sgemm in f32 whatever the compute type (and
 * cublasGemmBatchedEx one sgemm per entry of its pointer arrays): the
 * emulator cannot round operands to tf32 or bf16 as the tensor cores do,
 * so those modes give f32 results here (well inside their looser
 * tolerances). What the emulated GEMM checks is the backend's side: the
 * operand order, transposes and leading dimensions of its row-major to
 * column-major mapping, each checked as cuBLAS checks them, and that every
 * operand (and a batched call's pointer arrays) lies in device memory.
 * The arithmetic is queued on the handle's stream (see cuda_runtime.h);
 * a batched call's entries are read, and checked, when it runs: a bad one
 * faults the device (cudaErrorIllegalAddress). */
#ifndef MHUB_CUDA_EMU_CUBLAS_V2_H
#define MHUB_CUDA_EMU_CUBLAS_V2_H

/* The emulator's functions answer to names of their own, so a program can
 * link the emulator next to the real library (a static libmhub built
 * --with-cuda) without one taking the other's calls. */
#define cublasCreate mhub_emu_cublasCreate
#define cublasDestroy mhub_emu_cublasDestroy
#define cublasGemmBatchedEx mhub_emu_cublasGemmBatchedEx
#define cublasGemmEx mhub_emu_cublasGemmEx
#define cublasGetStatusString mhub_emu_cublasGetStatusString
#define cublasSetStream mhub_emu_cublasSetStream
#define cublasSetWorkspace mhub_emu_cublasSetWorkspace
#define cublasSgeam mhub_emu_cublasSgeam

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The values are cuBLAS's own. */
typedef enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;

typedef enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;

typedef enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType;

typedef enum cublasComputeType_t {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77
} cublasComputeType_t;

typedef enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

typedef struct mhub_emu_cublas *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes);
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *a, cudaDataType a_type, int lda, const void *b,
                            cudaDataType b_type, int ldb, const void *beta, void *c,
                            cudaDataType c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void *alpha, const void *const a_array[],
                                   cudaDataType a_type, int lda, const void *const b_array[],
                                   cudaDataType b_type, int ldb, const void *beta,
                                   void *const c_array[], cudaDataType c_type, int ldc,
                                   int batch_count, cublasComputeType_t compute,
                                   cublasGemmAlgo_t algo);
cublasStatus_t cublasSgeam(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, const float *alpha,
                           const float *a, int lda, const float *beta, const float *b, int ldb,
                           float *c, int ldc);
const char *cublasGetStatusString(cublasStatus_t status);

#ifdef __cplusplus
}
#endif
#endif
