/* cublas_emu.c - the emulator's cuBLAS subset (see cublas_v2.h): column-
 * major as cuBLAS, argument checks as cuBLAS's, the arithmetic OpenBLAS's. */
#include <cblas.h>
#include <stdbool.h>
#include <stdlib.h>

#include <cublas_v2.h>

struct mhub_emu_cublas {
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
};

cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    *handle = calloc(1, sizeof **handle);
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bytes && !mhub_emu_is_device_range(workspace, bytes))
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

static bool is_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; }

/* A column-major matrix of `rows` x `cols` with leading dimension ld: ld
 * covers its rows, and (when it has any element) it lies in device memory. */
static bool matrix_ok(const void *p, int rows, int cols, int ld)
{
    if (ld < (rows > 1 ? rows : 1))
        return false;
    if (rows == 0 || cols == 0)
        return true;
    size_t span = ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * sizeof(float);
    return mhub_emu_is_device_range(p, span);
}

/* op(X) is rows x cols: X itself is that, or its transpose. */
static bool operand_ok(const void *p, cublasOperation_t op, int rows, int cols, int ld)
{
    return op == CUBLAS_OP_N ? matrix_ok(p, rows, cols, ld) : matrix_ok(p, cols, rows, ld);
}

/* What cuBLAS checks of a GEMM's types, operations and sizes, and of the
 * operands of one product (for a batched call, of each entry). */
static cublasStatus_t gemm_kind_ok(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void *alpha, cudaDataType a_type, cudaDataType b_type,
                                   const void *beta, cudaDataType c_type,
                                   cublasComputeType_t compute)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (a_type != CUDA_R_32F || b_type != CUDA_R_32F || c_type != CUDA_R_32F ||
        (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32 &&
         compute != CUBLAS_COMPUTE_32F_FAST_16BF && compute != CUBLAS_COMPUTE_32F_FAST_16F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!is_op(transa) || !is_op(transb) || m < 0 || n < 0 || k < 0 || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

static bool operands_ok(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                        const void *a, int lda, const void *b, int ldb, const void *c, int ldc)
{
    return operand_ok(a, transa, m, k, lda) && operand_ok(b, transb, k, n, ldb) &&
           matrix_ok(c, m, n, ldc);
}

static void sgemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                  const void *alpha, const void *a, int lda, const void *b, int ldb,
                  const void *beta, void *c, int ldc)
{
    cblas_sgemm(CblasColMajor, transa == CUBLAS_OP_T ? CblasTrans : CblasNoTrans,
                transb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, m, n, k, *(const float *)alpha,
                a, lda, b, ldb, *(const float *)beta, c, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *a, cudaDataType a_type, int lda, const void *b,
                            cudaDataType b_type, int ldb, const void *beta, void *c,
                            cudaDataType c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    cublasStatus_t st = gemm_kind_ok(handle, transa, transb, m, n, k, alpha, a_type, b_type,
                                     beta, c_type, compute);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (!operands_ok(transa, transb, m, n, k, a, lda, b, ldb, c, ldc))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

/* The arrays of operand addresses are read by the device, so they must
 * lie in device memory themselves; then every entry is checked as one
 * GEMM's operands before any is computed. */
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void *alpha, const void *const a_array[],
                                   cudaDataType a_type, int lda, const void *const b_array[],
                                   cudaDataType b_type, int ldb, const void *beta,
                                   void *const c_array[], cudaDataType c_type, int ldc,
                                   int batch_count, cublasComputeType_t compute,
                                   cublasGemmAlgo_t algo)
{
    (void)algo;
    cublasStatus_t st = gemm_kind_ok(handle, transa, transb, m, n, k, alpha, a_type, b_type,
                                     beta, c_type, compute);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (batch_count < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (batch_count == 0 || m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    size_t array_bytes = (size_t)batch_count * sizeof(void *);
    if (!mhub_emu_is_device_range(a_array, array_bytes) ||
        !mhub_emu_is_device_range(b_array, array_bytes) ||
        !mhub_emu_is_device_range(c_array, array_bytes))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int e = 0; e < batch_count; e++)
        if (!operands_ok(transa, transb, m, n, k, a_array[e], lda, b_array[e], ldb, c_array[e],
                         ldc))
            return CUBLAS_STATUS_INVALID_VALUE;
    for (int e = 0; e < batch_count; e++)
        sgemm(transa, transb, m, n, k, alpha, a_array[e], lda, b_array[e], ldb, beta, c_array[e],
              ldc);
    return CUBLAS_STATUS_SUCCESS;
}

/* op(X)[i, j] of a column-major X. */
static float element(const float *x, cublasOperation_t op, int ld, int i, int j)
{
    return op == CUBLAS_OP_N ? x[i + (size_t)j * ld] : x[j + (size_t)i * ld];
}

/* C = alpha op(A) + beta op(B). As in cuBLAS, C may be A or B only when
 * that operand is not transposed and has C's leading dimension, and an
 * operand whose scale is 0 is not read. */
cublasStatus_t cublasSgeam(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, const float *alpha,
                           const float *a, int lda, const float *beta, const float *b, int ldb,
                           float *c, int ldc)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!is_op(transa) || !is_op(transb) || m < 0 || n < 0 || !alpha || !beta ||
        !matrix_ok(c, m, n, ldc))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool use_a = *alpha != 0.0f, use_b = *beta != 0.0f;
    if ((use_a && !operand_ok(a, transa, m, n, lda)) ||
        (use_b && !operand_ok(b, transb, m, n, ldb)))
        return CUBLAS_STATUS_INVALID_VALUE;
    if ((a == c && (transa != CUBLAS_OP_N || lda != ldc)) ||
        (b == c && (transb != CUBLAS_OP_N || ldb != ldc)))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float v = use_a ? *alpha * element(a, transa, lda, i, j) : 0.0f;
            if (use_b)
                v += *beta * element(b, transb, ldb, i, j);
            c[i + (size_t)j * ldc] = v;
        }
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown cuBLAS status";
}
