/* cuda_backend.c - the CUDA backend object: device, stream, memory pool,
 * cuBLAS GEMM, and the ops table that checks arguments and launches the
 * kernels of cuda_*.cu.
 *
 * Everything a backend call does is enqueued on one compute stream, in
 * call order, and the call returns before the GPU has done it; only
 * synchronize, a copy to or from the host and sum_squares (whose result
 * the host reads) wait. So a training step is one long queue of kernels
 * and the host runs ahead, as in any CUDA framework.
 *
 * Memory: one cudaMalloc of the whole pool at create (cuda_pool.c does
 * the bookkeeping), from which every alloc, the kernels' scratch, the
 * fault record and cuBLAS's workspace are carved, and, at the first flash
 * attention call, the GEMM attention path's scratch. A step therefore
 * never calls cudaMalloc, which would synchronize the device.
 *
 * Flash attention has three paths: fused kernels on the tensor cores in
 * bf16 (cuda_attention_wmma.cu, the default in bf16 matmul precision for
 * head_dim 64 and 128), cuBLAS batched GEMMs on the tensor cores
 * (cuda_attention_gemm.c, the default otherwise) and the tiled f32 kernels
 * of cuda_attention.cu (sequences whose scores do not fit the scratch
 * budget); MHUB_CUDA_ATTENTION=gemm|tiled|wmma forces one.
 *
 * Errors that only the device can see (a token id out of range) are
 * recorded by the kernel in the fault record and reported by the next
 * call that waits for the stream, naming the operation that found them. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "backends/cuda/cuda_attention_gemm.h"
#include "backends/cuda/cuda_internal.h"
#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_pool.h"
#include "src/backend_args.h"

/* Every block starts on a 256-byte boundary: cudaMalloc's own alignment,
 * enough for any vector load and for cuBLAS. */
#define POOL_ALIGN 256
/* Memory left outside the pool for the CUDA context's own needs, cuBLAS's
 * handles and NCCL's buffers (NCCL takes some hundreds of MiB per
 * communicator on a large node). */
#define POOL_RESERVE ((size_t)1536 << 20)
#define POOL_ENV "MHUB_CUDA_POOL_MB"
/* mhub_cuda_options.alloc_each, from the environment ("each" or "pool") */
#define ALLOC_ENV "MHUB_CUDA_ALLOC"
#define EACH_POOL_BYTES ((size_t)512 << 20)
/* cuBLAS's workspace: NVIDIA recommends 32 MiB on Hopper. */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
/* The GEMM attention path's scratch (cuda_attention_gemm.h): at most 1 GiB
 * and at most an eighth of the pool. At seq 1024 a (batch, head) pair
 * takes 8 MiB (its S and dP), so 1 GiB runs 128 pairs per chunk (GPT-2
 * 124M at batch 16, 192 pairs, in two chunks); a pair alone over the
 * budget (seq above 8192 at 1 GiB) goes to the tiled kernels.
 * MHUB_CUDA_ATTENTION_SCRATCH_KB sets another budget (tests use a small
 * one to make many chunks). */
#define ATTN_SCRATCH_MAX ((size_t)1 << 30)
#define ATTN_SCRATCH_POOL_SHARE 8
#define ATTN_SCRATCH_ENV "MHUB_CUDA_ATTENTION_SCRATCH_KB"
/* Which flash attention: "wmma" (fused bf16 tensor-core kernels), "gemm"
 * (cuBLAS, tensor cores), "tiled" (the f32 CUDA-core kernels); unset for
 * wmma in bf16 precision where it serves the shape, else for the GEMM
 * path when a pair fits the budget. */
#define ATTN_PATH_ENV "MHUB_CUDA_ATTENTION"

typedef struct cuda_state {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    mhub_matmul_precision matmul;
    void *pool_base;
    size_t pool_bytes;
    mhub_pool *pool;
    /* carved from the pool at create, not counted as the user's memory */
    void *work;                 /* MHUB_CUDA_WORK_BYTES of kernel scratch */
    void *blas_work;            /* cuBLAS's workspace */
    mhub_cuda_fault *fault;     /* device-side fault record */
    double *scalar;             /* sum_squares' result on the device */
    size_t internal_bytes;      /* the pool bytes those took */
    /* the GEMM attention path's scratch: carved at the first attention
     * call that takes that path, and carved again, larger, only when a
     * larger shape needs more (so a step's calls find it in place) */
    void *attn_scratch;
    size_t attn_scratch_bytes;
    /* the user's peak bytes before internal_bytes last changed */
    size_t user_peak_kept;
    /* MHUB_CUDA_ALLOC=each: the user's blocks, each its own cudaMalloc */
    bool alloc_each;
    struct own_block {
        void *ptr;
        size_t bytes;
    } *own;
    size_t own_count, own_cap, own_current, own_peak;
} cuda_state;

static cuda_state *state_of(const mhub_backend *be);

/* ---- errors ---- */

mhub_status mhub_cuda_error(cudaError_t err, const char *call, int device)
{
    mhub_status code = err == cudaErrorMemoryAllocation ? MHUB_ERR_NO_MEMORY : MHUB_ERR_DEVICE;
    return mhub_error_at(code, call, "CUDA error on device %d: %s (%s)", device,
                         cudaGetErrorString(err), cudaGetErrorName(err));
}

static mhub_status blas_error(cublasStatus_t st, const char *call, int device)
{
    return mhub_error_at(MHUB_ERR_DEVICE, call, "cuBLAS error on device %d: %s (%d)", device,
                         cublasGetStatusString(st), (int)st);
}

/* A launcher's status: the op's name and the device in the message. An
 * unsupported shape (cudaErrorInvalidValue from a launcher that checked
 * its own limits) is the caller's argument, not a device failure. */
static mhub_status launched(const cuda_state *st, cudaError_t err, const char *op)
{
    if (err == cudaSuccess)
        return MHUB_OK;
    if (err == cudaErrorInvalidValue)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "the CUDA kernel does not support these sizes (device %d: %s)",
                             st->device, cudaGetErrorString(err));
    return mhub_cuda_error(err, op, st->device);
}

/* The device's fault record, read after the stream has been waited for:
 * the first bad value a kernel met since the last check, as an error
 * naming the operation, the row and the value. The read and the clearing
 * go on the compute stream, in order with the kernels that write the
 * record: the stream is non-blocking, so the legacy default stream would
 * not order them, and a clearing that landed after a later kernel's fault
 * would lose that fault. */
static mhub_status check_fault(cuda_state *st)
{
    mhub_cuda_fault f;
    MHUB_CUDA_TRY(cudaMemcpyAsync(&f, st->fault, sizeof f, cudaMemcpyDeviceToHost, st->stream),
                  st->device);
    MHUB_CUDA_TRY(cudaStreamSynchronize(st->stream), st->device);
    if (f.code == MHUB_CUDA_FAULT_NONE)
        return MHUB_OK;
    MHUB_CUDA_TRY(cudaMemsetAsync(st->fault, 0, sizeof f, st->stream), st->device);
    /* the CPU backend's words, with where the device found it */
    if (f.code == MHUB_CUDA_FAULT_TARGET)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, "softmax_xent",
                             "targets[%lld] = %lld is outside [0, %lld) (found on device %d by "
                             "a kernel issued before this synchronization)",
                             f.row, f.value, f.limit, st->device);
    return mhub_error_at(MHUB_ERR_INVALID_ARG, "embedding",
                         "ids[%lld] = %lld is outside [0, vocab = %lld) (found on device %d by "
                         "a kernel issued before this synchronization)",
                         f.row, f.value, f.limit, st->device);
}

static mhub_status wait_stream(cuda_state *st)
{
    MHUB_CUDA_TRY(cudaStreamSynchronize(st->stream), st->device);
    return check_fault(st);
}

/* ---- availability and device choice ---- */

bool mhub_cuda_available(char *why, size_t len)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        if (why && len)
            snprintf(why, len, "no usable CUDA device: cudaGetDeviceCount: %s",
                     cudaGetErrorString(err));
        return false;
    }
    if (n == 0) {
        if (why && len)
            snprintf(why, len, "no CUDA device: cudaGetDeviceCount found 0");
        return false;
    }
    if (why && len)
        snprintf(why, len, "%d CUDA device%s", n, n == 1 ? "" : "s");
    return true;
}

/* The ordinal this process uses: the one asked for, or the local rank's,
 * with an error naming the shortage when the node has too few. */
static mhub_status pick_device(const mhub_cuda_options *o, int *out)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "no usable CUDA device (local rank %d): cudaGetDeviceCount: %s",
                          o->local_rank, cudaGetErrorString(err));
    if (count == 0)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, "no CUDA device on this node (local rank %d)",
                          o->local_rank);
    int ranks = o->local_ranks > 0 ? o->local_ranks : 1;
    if (o->device < 0 && ranks > count)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "this node has %d CUDA device%s for %d ranks (local rank %d): one "
                          "GPU per rank is needed; start at most %d ranks per node",
                          count, count == 1 ? "" : "s", ranks, o->local_rank, count);
    int dev = o->device >= 0 ? o->device : o->local_rank;
    if (dev < 0 || dev >= count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "CUDA device %d does not exist (%d on this node)",
                          dev, count);
    *out = dev;
    return MHUB_OK;
}

/* The pool's size: asked for, from the environment, or the free memory
 * less the reserve. */
static mhub_status pool_size(const mhub_cuda_options *o, int device, size_t *out)
{
    size_t free_b = 0, total_b = 0;
    MHUB_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b), device);
    size_t want = o->pool_bytes;
    const char *env = getenv(POOL_ENV);
    if (!want && env && *env) {
        char *end = NULL;
        unsigned long long mb = strtoull(env, &end, 10);
        if (!end || *end || mb == 0)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s = '%s' is not a positive count of MiB",
                              POOL_ENV, env);
        want = (size_t)mb << 20;
    }
    if (!want && o->alloc_each)
        want = EACH_POOL_BYTES;
    if (!want) {
        if (free_b <= POOL_RESERVE + ((size_t)256 << 20))
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY,
                              "device %d has only %zu MiB free of %zu MiB: not enough for a "
                              "memory pool",
                              device, free_b >> 20, total_b >> 20);
        want = free_b - POOL_RESERVE;
    }
    if (want > free_b)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY,
                          "a device pool of %zu MiB does not fit: device %d has %zu MiB free "
                          "of %zu MiB",
                          want >> 20, device, free_b >> 20, total_b >> 20);
    *out = want;
    return MHUB_OK;
}

/* ---- memory ---- */

/* A failed cudaMalloc leaves the device working but stays the runtime's
 * last error, which the next launch check (cudaGetLastError) would blame
 * on its kernel: it is taken off once it has been reported. */
static void forget_failure(void) { (void)cudaGetLastError(); }

static mhub_status carve(cuda_state *st, size_t bytes, void **out)
{
    uintptr_t addr;
    MHUB_TRY(mhub_pool_alloc(st->pool, bytes, &addr));
    st->internal_bytes += bytes;
    *out = (void *)addr;
    return MHUB_OK;
}

static void uncarve(cuda_state *st, void *p, size_t bytes)
{
    mhub_pool_free(st->pool, (uintptr_t)p);
    st->internal_bytes -= bytes;
}

/* memory_usage reports the pool's counts less internal_bytes. Before
 * internal_bytes changes after create (the attention scratch), the user's
 * peak so far is kept aside and the pool's peak restarts; after it, the
 * pool's peak restarts again from the new present. */
static void keep_user_peak(cuda_state *st)
{
    mhub_pool_stats ps;
    mhub_pool_get_stats(st->pool, &ps);
    size_t peak = ps.peak - st->internal_bytes;
    if (peak > st->user_peak_kept)
        st->user_peak_kept = peak;
    mhub_pool_reset_peak(st->pool);
}

/* alloc_each: a block of its own, remembered with its size for free and
 * for memory_usage. */
static mhub_status alloc_own(cuda_state *st, size_t bytes, void **out)
{
    if (st->own_count == st->own_cap) {
        size_t cap = st->own_cap ? 2 * st->own_cap : 64;
        struct own_block *grown = realloc(st->own, cap * sizeof *grown);
        if (!grown)
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no host memory to track device blocks");
        st->own = grown;
        st->own_cap = cap;
    }
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1); /* non-NULL even for 0 bytes */
    if (err != cudaSuccess) {
        forget_failure();
        return mhub_error_at(MHUB_ERR_NO_MEMORY, "alloc",
                             "device %d: cudaMalloc of %zu bytes (a block of its own, "
                             "alloc_each): %s",
                             st->device, bytes, cudaGetErrorString(err));
    }
    st->own[st->own_count++] = (struct own_block){p, bytes};
    st->own_current += bytes;
    if (st->own_current > st->own_peak)
        st->own_peak = st->own_current;
    *out = p;
    return MHUB_OK;
}

static void free_own(cuda_state *st, void *p)
{
    for (size_t i = 0; i < st->own_count; i++)
        if (st->own[i].ptr == p) {
            st->own_current -= st->own[i].bytes;
            st->own[i] = st->own[--st->own_count];
            cudaFree(p);
            return;
        }
}

static void cuda_free(mhub_backend *be, void *ptr);

static mhub_status cuda_alloc(mhub_backend *be, size_t bytes, void **out)
{
    cuda_state *st = state_of(be);
    if (!st || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend or out is NULL");
    *out = NULL;
    void *p = NULL;
    if (st->alloc_each) {
        MHUB_TRY(alloc_own(st, bytes, &p));
    } else {
        uintptr_t addr;
        mhub_status s = mhub_pool_alloc(st->pool, bytes, &addr);
        if (s != MHUB_OK)
            return mhub_error_at(s, "alloc", "device %d: %s", st->device, mhub_last_error());
        p = (void *)addr;
    }
    /* zero-filled, as the contract says; ordered before any later use */
    cudaError_t err = bytes ? cudaMemsetAsync(p, 0, bytes, st->stream) : cudaSuccess;
    if (err != cudaSuccess) {
        cuda_free(be, p);
        return mhub_cuda_error(err, "cudaMemsetAsync (alloc)", st->device);
    }
    *out = p;
    return MHUB_OK;
}

static void cuda_free(mhub_backend *be, void *ptr)
{
    cuda_state *st = state_of(be);
    if (!st || !ptr)
        return;
    if (st->alloc_each)
        free_own(st, ptr);
    else
        mhub_pool_free(st->pool, (uintptr_t)ptr);
}

static mhub_status cuda_memset_zero(mhub_backend *be, void *ptr, size_t bytes)
{
    cuda_state *st = state_of(be);
    MHUB_TRY(mhub_args_memset_zero(ptr, bytes));
    if (bytes)
        MHUB_CUDA_TRY(cudaMemsetAsync(ptr, 0, bytes, st->stream), st->device);
    return MHUB_OK;
}

/* Copies that involve the host wait for the stream: the host reads what
 * it asked for, or may reuse its buffer, as soon as copy returns. */
static mhub_status cuda_copy(mhub_backend *be, void *dst, const void *src, size_t bytes,
                             mhub_copy_kind kind)
{
    cuda_state *st = state_of(be);
    MHUB_TRY(mhub_args_copy(dst, src, bytes, kind));
    if (bytes == 0 || dst == src)
        return MHUB_OK;
    enum cudaMemcpyKind k = kind == MHUB_COPY_HOST_TO_DEVICE   ? cudaMemcpyHostToDevice
                            : kind == MHUB_COPY_DEVICE_TO_HOST ? cudaMemcpyDeviceToHost
                                                               : cudaMemcpyDeviceToDevice;
    MHUB_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, k, st->stream), st->device);
    return k == cudaMemcpyDeviceToDevice ? MHUB_OK : wait_stream(st);
}

static mhub_status cuda_synchronize(mhub_backend *be)
{
    cuda_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    return wait_stream(st);
}

/* The user's bytes: the pool's count less what the backend carved for
 * itself at create. */
static mhub_status cuda_memory_usage(mhub_backend *be, size_t *current_bytes,
                                     size_t *peak_bytes)
{
    cuda_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    if (st->alloc_each) {
        if (current_bytes)
            *current_bytes = st->own_current;
        if (peak_bytes)
            *peak_bytes = st->own_peak;
        return MHUB_OK;
    }
    mhub_pool_stats ps;
    mhub_pool_get_stats(st->pool, &ps);
    if (current_bytes)
        *current_bytes = ps.current - st->internal_bytes;
    if (peak_bytes) {
        size_t peak = ps.peak - st->internal_bytes;
        *peak_bytes = peak > st->user_peak_kept ? peak : st->user_peak_kept;
    }
    return MHUB_OK;
}

static mhub_status cuda_reset_peak(mhub_backend *be)
{
    cuda_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    mhub_pool_reset_peak(st->pool);
    st->user_peak_kept = 0;
    st->own_peak = st->own_current;
    return MHUB_OK;
}

/* ---- GEMM ---- */

static cublasComputeType_t compute_type(mhub_matmul_precision p)
{
    switch (p) {
    case MHUB_MATMUL_TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case MHUB_MATMUL_BF16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    case MHUB_MATMUL_F32: break;
    }
    return CUBLAS_COMPUTE_32F;
}

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
 * row-major matrix read as column-major is its transpose: so cuBLAS gets
 * B before A, n before m, and the same transpose flags. The inputs stay
 * f32 in memory; the compute type tells cuBLAS to round them to tf32 or
 * bf16 on the tensor cores (accumulating in f32). */
static mhub_status cuda_gemm(mhub_backend *be, bool trans_a, bool trans_b, int64_t m,
                             int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                             const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    cuda_state *st = state_of(be);
    MHUB_TRY(mhub_args_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
    if (m == 0 || n == 0)
        return MHUB_OK;
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX ||
        ldb > INT32_MAX || ldc > INT32_MAX)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, "gemm",
                             "a dimension or leading dimension exceeds cuBLAS's 32-bit range");
    if (k == 0) {
        /* C = beta C: nothing to multiply (A and B may be NULL); geam may
         * write C in place when it is also its input */
        if (beta == 1.0f)
            return MHUB_OK;
        const float zero = 0.0f;
        cublasStatus_t gs = cublasSgeam(st->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)m,
                                        &beta, c, (int)ldc, &zero, c, (int)ldc, c, (int)ldc);
        return gs == CUBLAS_STATUS_SUCCESS ? MHUB_OK
                                           : blas_error(gs, "cublasSgeam (gemm, k = 0)",
                                                        st->device);
    }
    cublasStatus_t s = cublasGemmEx(
        st->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
        (int)n, (int)m, (int)k, &alpha, b, CUDA_R_32F, (int)ldb, a, CUDA_R_32F, (int)lda, &beta,
        c, CUDA_R_32F, (int)ldc, compute_type(st->matmul), CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_error(s, "cublasGemmEx (gemm)", st->device);
    return MHUB_OK;
}

/* ---- layer kernels: check, then launch ---- */

#define STREAM(be) (state_of(be)->stream)
#define LAUNCH(be, op, call) launched(state_of(be), (call), op)

static mhub_status cuda_bias_add(mhub_backend *be, float *out, const float *bias, int64_t rows,
                                 int64_t cols)
{
    MHUB_TRY(mhub_args_bias_add(out, bias, rows, cols));
    return LAUNCH(be, "bias_add", mhub_cuda_bias_add(STREAM(be), out, bias, rows, cols));
}

static mhub_status cuda_bias_backward(mhub_backend *be, float *dbias, const float *dout,
                                      int64_t rows, int64_t cols)
{
    MHUB_TRY(mhub_args_bias_backward(dbias, dout, rows, cols));
    return LAUNCH(be, "bias_backward",
                  mhub_cuda_bias_backward(STREAM(be), state_of(be)->work, dbias, dout, rows,
                                          cols));
}

static mhub_status cuda_gelu_forward(mhub_backend *be, float *out, const float *in, int64_t n)
{
    MHUB_TRY(mhub_args_gelu_forward(out, in, n));
    return LAUNCH(be, "gelu_forward", mhub_cuda_gelu_forward(STREAM(be), out, in, n));
}

static mhub_status cuda_gelu_backward(mhub_backend *be, float *din, const float *in,
                                      const float *dout, int64_t n)
{
    MHUB_TRY(mhub_args_gelu_backward(din, in, dout, n));
    return LAUNCH(be, "gelu_backward", mhub_cuda_gelu_backward(STREAM(be), din, in, dout, n));
}

static mhub_status cuda_softmax_xent_forward(mhub_backend *be, float *probs, float *losses,
                                             const float *logits, const int32_t *targets,
                                             int64_t rows, int64_t classes)
{
    MHUB_TRY(mhub_args_softmax_xent_forward(probs, losses, logits, targets, rows, classes));
    return LAUNCH(be, "softmax_xent_forward",
                  mhub_cuda_softmax_xent_forward(STREAM(be), state_of(be)->fault, probs,
                                                 losses, logits, targets, rows, classes));
}

static mhub_status cuda_softmax_xent_backward(mhub_backend *be, float *dlogits,
                                              const float *probs, const int32_t *targets,
                                              int64_t rows, int64_t classes, float dloss)
{
    MHUB_TRY(mhub_args_softmax_xent_backward(dlogits, probs, targets, rows, classes, dloss));
    return LAUNCH(be, "softmax_xent_backward",
                  mhub_cuda_softmax_xent_backward(STREAM(be), state_of(be)->fault, dlogits,
                                                  probs, targets, rows, classes, dloss));
}

static mhub_status cuda_embedding_forward(mhub_backend *be, float *out, const float *table,
                                          const int32_t *ids, int64_t rows, int64_t vocab,
                                          int64_t dim, bool accumulate)
{
    MHUB_TRY(mhub_args_embedding_forward(out, table, ids, rows, vocab, dim));
    return LAUNCH(be, "embedding_forward",
                  mhub_cuda_embedding_forward(STREAM(be), state_of(be)->fault, out, table, ids,
                                              rows, vocab, dim, accumulate));
}

static mhub_status cuda_embedding_backward(mhub_backend *be, float *dtable, const float *dout,
                                           const int32_t *ids, int64_t rows, int64_t vocab,
                                           int64_t dim)
{
    MHUB_TRY(mhub_args_embedding_backward(dtable, dout, ids, rows, vocab, dim));
    return LAUNCH(be, "embedding_backward",
                  mhub_cuda_embedding_backward(STREAM(be), state_of(be)->fault,
                                               state_of(be)->work, dtable, dout, ids, rows,
                                               vocab, dim));
}

static mhub_status cuda_layernorm_forward(mhub_backend *be, float *out, float *mean,
                                          float *rstd, const float *in, const float *weight,
                                          const float *bias, int64_t rows, int64_t dim,
                                          float eps)
{
    MHUB_TRY(mhub_args_layernorm_forward(out, mean, rstd, in, weight, bias, rows, dim, eps));
    return LAUNCH(be, "layernorm_forward",
                  mhub_cuda_layernorm_forward(STREAM(be), out, mean, rstd, in, weight, bias,
                                              rows, dim, eps));
}

static mhub_status cuda_layernorm_backward(mhub_backend *be, float *din, float *dweight,
                                           float *dbias, const float *dout, const float *in,
                                           const float *weight, const float *mean,
                                           const float *rstd, int64_t rows, int64_t dim)
{
    MHUB_TRY(mhub_args_layernorm_backward(din, dweight, dbias, dout, in, weight, mean, rstd,
                                          rows, dim));
    return LAUNCH(be, "layernorm_backward",
                  mhub_cuda_layernorm_backward(STREAM(be), state_of(be)->work, din, dweight,
                                               dbias, dout, in, weight, mean, rstd, rows, dim));
}

static mhub_status cuda_rmsnorm_forward(mhub_backend *be, float *out, float *rstd,
                                        const float *in, const float *weight, int64_t rows,
                                        int64_t dim, float eps)
{
    MHUB_TRY(mhub_args_rmsnorm_forward(out, rstd, in, weight, rows, dim, eps));
    return LAUNCH(be, "rmsnorm_forward",
                  mhub_cuda_rmsnorm_forward(STREAM(be), out, rstd, in, weight, rows, dim, eps));
}

static mhub_status cuda_rmsnorm_backward(mhub_backend *be, float *din, float *dweight,
                                         const float *dout, const float *in,
                                         const float *weight, const float *rstd, int64_t rows,
                                         int64_t dim)
{
    MHUB_TRY(mhub_args_rmsnorm_backward(din, dweight, dout, in, weight, rstd, rows, dim));
    return LAUNCH(be, "rmsnorm_backward",
                  mhub_cuda_rmsnorm_backward(STREAM(be), state_of(be)->work, din, dweight, dout,
                                             in, weight, rstd, rows, dim));
}

static mhub_status cuda_swiglu_forward(mhub_backend *be, float *out, const float *in,
                                       int64_t rows, int64_t ffn)
{
    MHUB_TRY(mhub_args_swiglu_forward(out, in, rows, ffn));
    return LAUNCH(be, "swiglu_forward", mhub_cuda_swiglu_forward(STREAM(be), out, in, rows, ffn));
}

static mhub_status cuda_swiglu_backward(mhub_backend *be, float *din, const float *dout,
                                        const float *in, int64_t rows, int64_t ffn)
{
    MHUB_TRY(mhub_args_swiglu_backward(din, dout, in, rows, ffn));
    return LAUNCH(be, "swiglu_backward",
                  mhub_cuda_swiglu_backward(STREAM(be), din, dout, in, rows, ffn));
}

static mhub_status cuda_rope_forward(mhub_backend *be, float *qkv, int64_t batch, int64_t seq,
                                     int64_t heads, int64_t groups, int64_t head_dim,
                                     float base)
{
    MHUB_TRY(mhub_args_rope("rope_forward", qkv, batch, seq, heads, groups, head_dim, base));
    return LAUNCH(be, "rope_forward",
                  mhub_cuda_rope(STREAM(be), qkv, batch, seq, heads, groups, head_dim, base,
                                 false));
}

static mhub_status cuda_rope_backward(mhub_backend *be, float *dqkv, int64_t batch, int64_t seq,
                                      int64_t heads, int64_t groups, int64_t head_dim,
                                      float base)
{
    MHUB_TRY(mhub_args_rope("rope_backward", dqkv, batch, seq, heads, groups, head_dim, base));
    return LAUNCH(be, "rope_backward",
                  mhub_cuda_rope(STREAM(be), dqkv, batch, seq, heads, groups, head_dim, base,
                                 true));
}

static mhub_status cuda_causal_attention_forward(mhub_backend *be, float *out, float *probs,
                                                 const float *qkv, int64_t batch, int64_t seq,
                                                 int64_t heads, int64_t groups,
                                                 int64_t head_dim)
{
    MHUB_TRY(mhub_args_causal_attention_forward(out, probs, qkv, batch, seq, heads, groups,
                                                head_dim));
    return LAUNCH(be, "causal_attention_forward",
                  mhub_cuda_causal_attention_forward(STREAM(be), out, probs, qkv, batch, seq,
                                                     heads, groups, head_dim));
}

static mhub_status cuda_causal_attention_backward(mhub_backend *be, float *dqkv, float *scratch,
                                                  const float *dout, const float *qkv,
                                                  const float *probs, int64_t batch,
                                                  int64_t seq, int64_t heads, int64_t groups,
                                                  int64_t head_dim)
{
    MHUB_TRY(mhub_args_causal_attention_backward(dqkv, scratch, dout, qkv, probs, batch, seq,
                                                 heads, groups, head_dim));
    return LAUNCH(be, "causal_attention_backward",
                  mhub_cuda_causal_attention_backward(STREAM(be), dqkv, scratch, dout, qkv,
                                                      probs, batch, seq, heads, groups,
                                                      head_dim));
}

/* ---- flash attention: the wmma kernels, the GEMM path or the tiled kernels ---- */

typedef enum attention_path { ATTN_AUTO, ATTN_GEMM, ATTN_TILED, ATTN_WMMA } attention_path;

/* The path MHUB_CUDA_ATTENTION asks for, read at every call so a program
 * (or a test) may switch between calls. */
static mhub_status requested_path(const char *op, attention_path *out)
{
    const char *env = getenv(ATTN_PATH_ENV);
    if (!env || !*env)
        *out = ATTN_AUTO;
    else if (strcmp(env, "gemm") == 0)
        *out = ATTN_GEMM;
    else if (strcmp(env, "tiled") == 0)
        *out = ATTN_TILED;
    else if (strcmp(env, "wmma") == 0)
        *out = ATTN_WMMA;
    else
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s = '%s': expected gemm, tiled or wmma", ATTN_PATH_ENV, env);
    return MHUB_OK;
}

/* The most scratch the GEMM path may take (see ATTN_SCRATCH_MAX). */
static mhub_status attention_budget(const cuda_state *st, const char *op, size_t *out)
{
    const char *env = getenv(ATTN_SCRATCH_ENV);
    if (env && *env) {
        char *end = NULL;
        unsigned long long kb = strtoull(env, &end, 10);
        if (!end || *end || kb == 0 || kb > SIZE_MAX >> 10)
            return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                                 "%s = '%s' is not a positive count of KiB", ATTN_SCRATCH_ENV,
                                 env);
        *out = (size_t)kb << 10;
        return MHUB_OK;
    }
    size_t share = st->pool_bytes / ATTN_SCRATCH_POOL_SHARE;
    *out = share < ATTN_SCRATCH_MAX ? share : ATTN_SCRATCH_MAX;
    return MHUB_OK;
}

/* At least `bytes` of attention scratch, carved from the pool (never
 * cudaMalloc, which would wait for the device). A smaller earlier scratch
 * goes back first: the stream orders its last use before anything that
 * later reuses its bytes. */
static mhub_status reserve_attention_scratch(cuda_state *st, size_t bytes)
{
    if (st->attn_scratch_bytes >= bytes)
        return MHUB_OK;
    keep_user_peak(st);
    if (st->attn_scratch)
        uncarve(st, st->attn_scratch, st->attn_scratch_bytes);
    st->attn_scratch = NULL;
    st->attn_scratch_bytes = 0;
    mhub_status s = carve(st, bytes, &st->attn_scratch);
    if (s == MHUB_OK)
        st->attn_scratch_bytes = bytes;
    else
        st->attn_scratch = NULL;
    mhub_pool_reset_peak(st->pool);
    return s;
}

/* The path this call takes (ATTN_WMMA, ATTN_GEMM with *ctx ready for it,
 * or ATTN_TILED). Without a request: the wmma kernels when the matmul
 * precision is bf16 (their products round to it) and they serve the
 * shape; else the GEMM path when one (batch, head) pair fits the budget
 * and the pool has the scratch; else the tiled kernels, which need none.
 * Asked for by name, a path that cannot run is an error. */
static mhub_status choose_attention_path(cuda_state *st, const char *op, int64_t batch,
                                         int64_t seq, int64_t heads, int64_t groups,
                                         int64_t head_dim, mhub_cuda_attn_gemm_ctx *ctx,
                                         attention_path *chosen)
{
    attention_path path;
    MHUB_TRY(requested_path(op, &path));
    *chosen = ATTN_TILED;
    if (path == ATTN_TILED || batch == 0 || seq == 0 || heads == 0 || head_dim == 0)
        return MHUB_OK;
    const char *refusal = mhub_cuda_attention_wmma_refusal(seq, heads, groups, head_dim);
    if (path == ATTN_WMMA) {
        if (refusal)
            return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s=wmma: %s (head_dim = %lld)",
                                 ATTN_PATH_ENV, refusal, (long long)head_dim);
        *chosen = ATTN_WMMA;
        return MHUB_OK;
    }
    if (path == ATTN_AUTO && st->matmul == MHUB_MATMUL_BF16 && !refusal) {
        *chosen = ATTN_WMMA;
        return MHUB_OK;
    }
    size_t budget = 0;
    MHUB_TRY(attention_budget(st, op, &budget));
    size_t want = mhub_cuda_attention_gemm_scratch(batch, seq, heads, groups, head_dim, budget);
    if (want == 0) {
        if (path == ATTN_AUTO)
            return MHUB_OK;
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s=gemm: one (batch, head) pair's scores at seq = %lld do not "
                             "fit the attention scratch budget of %zu bytes",
                             ATTN_PATH_ENV, (long long)seq, budget);
    }
    mhub_status s = reserve_attention_scratch(st, want);
    if (s != MHUB_OK) {
        if (path == ATTN_AUTO)
            return MHUB_OK;
        return mhub_error_at(s, op, "%s=gemm: no pool memory for %zu bytes of scratch: %s",
                             ATTN_PATH_ENV, want, mhub_last_error());
    }
    *ctx = (mhub_cuda_attn_gemm_ctx){.stream = st->stream,
                                     .blas = st->blas,
                                     .compute = compute_type(st->matmul),
                                     .device = st->device,
                                     .scratch = st->attn_scratch,
                                     .scratch_bytes = want};
    *chosen = ATTN_GEMM;
    return MHUB_OK;
}

static mhub_status cuda_flash_attention_forward(mhub_backend *be, float *out, float *lse,
                                                const float *qkv, int64_t batch, int64_t seq,
                                                int64_t heads, int64_t groups, int64_t head_dim)
{
    static const char op[] = "flash_attention_forward";
    MHUB_TRY(mhub_args_flash_attention_forward(out, lse, qkv, batch, seq, heads, groups,
                                               head_dim));
    mhub_cuda_attn_gemm_ctx ctx;
    attention_path path;
    MHUB_TRY(choose_attention_path(state_of(be), op, batch, seq, heads, groups, head_dim, &ctx,
                                   &path));
    if (path == ATTN_GEMM)
        return mhub_cuda_attention_gemm_forward(&ctx, out, lse, qkv, batch, seq, heads, groups,
                                                head_dim);
    if (path == ATTN_WMMA)
        return LAUNCH(be, op,
                      mhub_cuda_wmma_attention_forward(STREAM(be), out, lse, qkv, batch, seq,
                                                       heads, groups, head_dim));
    return LAUNCH(be, op,
                  mhub_cuda_flash_attention_forward(STREAM(be), out, lse, qkv, batch, seq,
                                                    heads, groups, head_dim));
}

static mhub_status cuda_flash_attention_backward(mhub_backend *be, float *dqkv,
                                                 const float *dout, const float *out,
                                                 const float *qkv, const float *lse,
                                                 int64_t batch, int64_t seq, int64_t heads,
                                                 int64_t groups, int64_t head_dim)
{
    static const char op[] = "flash_attention_backward";
    MHUB_TRY(mhub_args_flash_attention_backward(dqkv, dout, out, qkv, lse, batch, seq, heads,
                                                groups, head_dim));
    mhub_cuda_attn_gemm_ctx ctx;
    attention_path path;
    MHUB_TRY(choose_attention_path(state_of(be), op, batch, seq, heads, groups, head_dim, &ctx,
                                   &path));
    if (path == ATTN_GEMM)
        return mhub_cuda_attention_gemm_backward(&ctx, dqkv, dout, out, qkv, lse, batch, seq,
                                                 heads, groups, head_dim);
    if (path == ATTN_WMMA)
        return LAUNCH(be, op,
                      mhub_cuda_wmma_attention_backward(STREAM(be), state_of(be)->work, dqkv,
                                                        dout, out, qkv, lse, batch, seq, heads,
                                                        groups, head_dim));
    return LAUNCH(be, op,
                  mhub_cuda_flash_attention_backward(STREAM(be), state_of(be)->work, dqkv, dout,
                                                     out, qkv, lse, batch, seq, heads, groups,
                                                     head_dim));
}

/* ---- elementwise utilities ---- */

static mhub_status cuda_cast(mhub_backend *be, void *dst, mhub_dtype dst_dtype, const void *src,
                             mhub_dtype src_dtype, int64_t n)
{
    MHUB_TRY(mhub_args_cast(dst, dst_dtype, src, src_dtype, n));
    return LAUNCH(be, "cast", mhub_cuda_cast(STREAM(be), dst, dst_dtype, src, src_dtype, n));
}

static mhub_status cuda_scale(mhub_backend *be, float *x, int64_t n, float alpha)
{
    MHUB_TRY(mhub_args_scale(x, n, alpha));
    return LAUNCH(be, "scale", mhub_cuda_scale(STREAM(be), x, n, alpha));
}

static mhub_status cuda_axpy(mhub_backend *be, float *y, const float *x, int64_t n, float alpha)
{
    MHUB_TRY(mhub_args_axpy(y, x, n, alpha));
    return LAUNCH(be, "axpy", mhub_cuda_axpy(STREAM(be), y, x, n, alpha));
}

/* The host wants the number, so this one waits for the stream. */
static mhub_status cuda_sum_squares(mhub_backend *be, const float *x, int64_t n, double *out)
{
    cuda_state *st = state_of(be);
    MHUB_TRY(mhub_args_sum_squares(x, n, out));
    if (n == 0) {
        *out = 0.0;
        return MHUB_OK;
    }
    MHUB_TRY(launched(st, mhub_cuda_sum_squares(st->stream, st->work, x, n, st->scalar),
                      "sum_squares"));
    MHUB_CUDA_TRY(cudaMemcpyAsync(out, st->scalar, sizeof *out, cudaMemcpyDeviceToHost,
                                  st->stream),
                  st->device);
    return wait_stream(st);
}

static mhub_status cuda_fill_normal(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                    uint64_t stream, uint64_t offset, float mean, float std)
{
    MHUB_TRY(mhub_args_fill_normal(dst, n, mean, std));
    return LAUNCH(be, "fill_normal",
                  mhub_cuda_fill_normal(STREAM(be), dst, n, seed, stream, offset, mean, std));
}

static mhub_status cuda_fill_uniform(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                     uint64_t stream, uint64_t offset, float lo, float hi)
{
    MHUB_TRY(mhub_args_fill_uniform(dst, n, lo, hi));
    return LAUNCH(be, "fill_uniform",
                  mhub_cuda_fill_uniform(STREAM(be), dst, n, seed, stream, offset, lo, hi));
}

static mhub_status cuda_sgd_step(mhub_backend *be, float *param, const float *grad,
                                 float *momentum_buf, int64_t n, float lr, float momentum,
                                 float weight_decay)
{
    MHUB_TRY(mhub_args_sgd_step(param, grad, momentum_buf, n, lr, momentum, weight_decay));
    return LAUNCH(be, "sgd_step",
                  mhub_cuda_sgd_step(STREAM(be), param, grad, momentum_buf, n, lr, momentum,
                                     weight_decay));
}

static mhub_status cuda_adamw_step(mhub_backend *be, float *param, const float *grad, float *m,
                                   float *v, int64_t n, float lr, float beta1, float beta2,
                                   float eps, float weight_decay, int64_t t)
{
    MHUB_TRY(mhub_args_adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t));
    return LAUNCH(be, "adamw_step",
                  mhub_cuda_adamw_step(STREAM(be), param, grad, m, v, n, lr, beta1, beta2, eps,
                                       weight_decay, t));
}

/* ---- the object ---- */

static void release(cuda_state *st)
{
    if (!st)
        return;
    if (st->stream)
        cudaStreamSynchronize(st->stream);
    if (st->blas)
        cublasDestroy(st->blas);
    if (st->stream)
        cudaStreamDestroy(st->stream);
    for (size_t i = 0; i < st->own_count; i++)
        cudaFree(st->own[i].ptr);
    free(st->own);
    mhub_pool_destroy(st->pool);
    if (st->pool_base)
        cudaFree(st->pool_base);
    free(st);
}

static void cuda_destroy(mhub_backend *be)
{
    if (!be)
        return;
    release(state_of(be));
    free(be);
}

static const mhub_backend_ops cuda_ops = {
    .alloc = cuda_alloc,
    .free = cuda_free,
    .memset_zero = cuda_memset_zero,
    .copy = cuda_copy,
    .synchronize = cuda_synchronize,
    .memory_usage = cuda_memory_usage,
    .reset_peak = cuda_reset_peak,
    .gemm = cuda_gemm,
    .bias_add = cuda_bias_add,
    .bias_backward = cuda_bias_backward,
    .gelu_forward = cuda_gelu_forward,
    .gelu_backward = cuda_gelu_backward,
    .softmax_xent_forward = cuda_softmax_xent_forward,
    .softmax_xent_backward = cuda_softmax_xent_backward,
    .embedding_forward = cuda_embedding_forward,
    .embedding_backward = cuda_embedding_backward,
    .layernorm_forward = cuda_layernorm_forward,
    .layernorm_backward = cuda_layernorm_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .rope_forward = cuda_rope_forward,
    .rope_backward = cuda_rope_backward,
    .causal_attention_forward = cuda_causal_attention_forward,
    .causal_attention_backward = cuda_causal_attention_backward,
    .flash_attention_forward = cuda_flash_attention_forward,
    .flash_attention_backward = cuda_flash_attention_backward,
    .cast = cuda_cast,
    .scale = cuda_scale,
    .axpy = cuda_axpy,
    .sum_squares = cuda_sum_squares,
    .fill_normal = cuda_fill_normal,
    .fill_uniform = cuda_fill_uniform,
    .sgd_step = cuda_sgd_step,
    .adamw_step = cuda_adamw_step,
    .destroy = cuda_destroy,
};

static cuda_state *state_of(const mhub_backend *be)
{
    return be && be->ops == &cuda_ops ? (cuda_state *)be->ctx : NULL;
}

/* MHUB_CUDA_ALLOC, when set, decides o->alloc_each. */
static mhub_status alloc_mode(mhub_cuda_options *o)
{
    const char *env = getenv(ALLOC_ENV);
    if (!env || !*env)
        return MHUB_OK;
    if (strcmp(env, "each") != 0 && strcmp(env, "pool") != 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s = '%s': expected each or pool", ALLOC_ENV,
                          env);
    if (strcmp(env, "each") == 0)
        o->alloc_each = true;
    return MHUB_OK;
}

/* Stream, cuBLAS handle, pool and the backend's own pieces of it. */
static mhub_status setup(cuda_state *st, const mhub_cuda_options *o)
{
    int dev = st->device;
    MHUB_CUDA_TRY(cudaSetDevice(dev), dev);
    MHUB_CUDA_TRY(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking), dev);
    size_t bytes = 0;
    MHUB_TRY(pool_size(o, dev, &bytes));
    cudaError_t err = cudaMalloc(&st->pool_base, bytes);
    if (err != cudaSuccess) {
        forget_failure();
        st->pool_base = NULL;
        return mhub_error_at(MHUB_ERR_NO_MEMORY, "cudaMalloc",
                             "cannot allocate the %zu MiB device pool on device %d: %s",
                             bytes >> 20, dev, cudaGetErrorString(err));
    }
    st->pool_bytes = bytes;
    MHUB_TRY(mhub_pool_create((uintptr_t)st->pool_base, bytes, POOL_ALIGN, &st->pool));
    MHUB_TRY(carve(st, MHUB_CUDA_WORK_BYTES, &st->work));
    MHUB_TRY(carve(st, CUBLAS_WORKSPACE_BYTES, &st->blas_work));
    MHUB_TRY(carve(st, sizeof *st->fault, (void **)&st->fault));
    MHUB_TRY(carve(st, sizeof *st->scalar, (void **)&st->scalar));
    MHUB_CUDA_TRY(cudaMemsetAsync(st->fault, 0, sizeof *st->fault, st->stream), dev);

    cublasStatus_t bs = cublasCreate(&st->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        st->blas = NULL;
        return blas_error(bs, "cublasCreate", dev);
    }
    if ((bs = cublasSetStream(st->blas, st->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetWorkspace(st->blas, st->blas_work, CUBLAS_WORKSPACE_BYTES)) !=
            CUBLAS_STATUS_SUCCESS)
        return blas_error(bs, "cublasSetStream/cublasSetWorkspace", dev);
    MHUB_CUDA_TRY(cudaStreamSynchronize(st->stream), dev);
    return MHUB_OK;
}

mhub_status mhub_cuda_backend_create(const mhub_cuda_options *opts, mhub_backend **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    mhub_cuda_options o = opts ? *opts : (mhub_cuda_options){.device = -1};
    if (o.matmul != MHUB_MATMUL_F32 && o.matmul != MHUB_MATMUL_TF32 &&
        o.matmul != MHUB_MATMUL_BF16)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "matmul = %d is not a precision", (int)o.matmul);
    if (o.local_rank < 0 || (o.local_ranks > 0 && o.local_rank >= o.local_ranks))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "local rank %d is outside [0, %d)",
                          o.local_rank, o.local_ranks);
    cuda_state *st = calloc(1, sizeof *st);
    mhub_backend *be = calloc(1, sizeof *be);
    if (!st || !be) {
        free(st);
        free(be);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no host memory for the CUDA backend");
    }
    st->matmul = o.matmul;
    mhub_status s = alloc_mode(&o);
    st->alloc_each = o.alloc_each;
    if (s == MHUB_OK)
        s = pick_device(&o, &st->device);
    if (s == MHUB_OK)
        s = setup(st, &o);
    if (s != MHUB_OK) {
        release(st);
        free(be);
        return s;
    }
    be->name = "cuda";
    be->ops = &cuda_ops;
    be->ctx = st;
    *out = be;
    return MHUB_OK;
}

mhub_status mhub_cuda_backend_set_matmul(mhub_backend *be, mhub_matmul_precision p)
{
    cuda_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "not a CUDA backend");
    if (p != MHUB_MATMUL_F32 && p != MHUB_MATMUL_TF32 && p != MHUB_MATMUL_BF16)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "matmul = %d is not a precision", (int)p);
    st->matmul = p;
    return MHUB_OK;
}

int mhub_cuda_backend_device(const mhub_backend *be)
{
    const cuda_state *st = state_of(be);
    return st ? st->device : -1;
}

cudaStream_t mhub_cuda_backend_stream(const mhub_backend *be, bool *ok)
{
    const cuda_state *st = state_of(be);
    if (ok)
        *ok = st != NULL;
    return st ? st->stream : NULL;
}
