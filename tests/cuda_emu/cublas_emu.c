/* cublas_emu.c - the emulator's cuBLAS subset (see cublas_v2.h): column-
 * major as cuBLAS, argument checks as cuBLAS's, the arithmetic OpenBLAS's.
 *
 * A call checks its arguments and queues its arithmetic on the handle's
 * stream (cublasSetStream), with the arguments copied: the scalars alpha
 * and beta are read at the call (host pointers, as cuBLAS's default
 * pointer mode reads them), the matrices when the stream runs it. */
#include <cblas.h>
#include <stdbool.h>
#include <stdio.h>
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

/* What a call returns when its work cannot be queued (a stream that does
 * not exist, a device that faulted), as cuBLAS does when its launch fails. */
static cublasStatus_t queued(cudaStream_t stream, void (*run)(void *args), const void *args,
                             size_t bytes)
{
    return mhub_emu_enqueue(stream, run, args, bytes) == cudaSuccess
               ? CUBLAS_STATUS_SUCCESS
               : CUBLAS_STATUS_EXECUTION_FAILED;
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

/* One product, its scalars by value. */
typedef struct gemm_args {
    cublasOperation_t transa, transb;
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const void *a, *b;
    void *c;
} gemm_args;

static void sgemm(const gemm_args *g)
{
    cblas_sgemm(CblasColMajor, g->transa == CUBLAS_OP_T ? CblasTrans : CblasNoTrans,
                g->transb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, g->m, g->n, g->k, g->alpha,
                g->a, g->lda, g->b, g->ldb, g->beta, g->c, g->ldc);
}

static void run_gemm(void *args) { sgemm(args); }

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
    gemm_args g = {transa, transb, m, n, k, lda, ldb, ldc, *(const float *)alpha,
                   *(const float *)beta, a, b, c};
    return queued(handle->stream, run_gemm, &g, sizeof g);
}

/* A batched call: its pointer arrays, read by the device when it runs. */
typedef struct batched_args {
    gemm_args shape; /* a, b and c unused */
    const void *const *a_array, *const *b_array;
    void *const *c_array;
    int batch_count;
} batched_args;

/* Every entry is checked as one GEMM's operands before any is computed;
 * a bad one is a device fault, as a GPU would fault reading through it. */
static void run_batched(void *args)
{
    const batched_args *ba = args;
    gemm_args g = ba->shape;
    for (int e = 0; e < ba->batch_count; e++)
        if (!operands_ok(g.transa, g.transb, g.m, g.n, g.k, ba->a_array[e], g.lda,
                         ba->b_array[e], g.ldb, ba->c_array[e], g.ldc)) {
            char what[160];
            snprintf(what, sizeof what, "cublasGemmBatchedEx: the operands of entry %d are "
                     "not device memory of their size", e);
            mhub_emu_device_fault(cudaErrorIllegalAddress, what);
            return;
        }
    for (int e = 0; e < ba->batch_count; e++) {
        g.a = ba->a_array[e];
        g.b = ba->b_array[e];
        g.c = ba->c_array[e];
        sgemm(&g);
    }
}

/* The arrays of operand addresses are read by the device, so they must
 * lie in device memory themselves, and their entries (often written by
 * the kernel just before) are only read when the call runs. */
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
    batched_args ba = {{transa, transb, m, n, k, lda, ldb, ldc, *(const float *)alpha,
                        *(const float *)beta, NULL, NULL, NULL},
                       a_array, b_array, c_array, batch_count};
    return queued(handle->stream, run_batched, &ba, sizeof ba);
}

/* op(X)[i, j] of a column-major X. */
static float element(const float *x, cublasOperation_t op, int ld, int i, int j)
{
    return op == CUBLAS_OP_N ? x[i + (size_t)j * ld] : x[j + (size_t)i * ld];
}

typedef struct geam_args {
    cublasOperation_t transa, transb;
    int m, n, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
} geam_args;

static void run_geam(void *args)
{
    const geam_args *g = args;
    bool use_a = g->alpha != 0.0f, use_b = g->beta != 0.0f;
    for (int j = 0; j < g->n; j++)
        for (int i = 0; i < g->m; i++) {
            float v = use_a ? g->alpha * element(g->a, g->transa, g->lda, i, j) : 0.0f;
            if (use_b)
                v += g->beta * element(g->b, g->transb, g->ldb, i, j);
            g->c[i + (size_t)j * g->ldc] = v;
        }
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
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    geam_args g = {transa, transb, m, n, lda, ldb, ldc, *alpha, *beta, a, b, c};
    return queued(handle->stream, run_geam, &g, sizeof g);
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown cuBLAS status";
}
