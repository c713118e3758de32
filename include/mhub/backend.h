/* backend.h - the compute interface.
 *
 * A backend is a struct of function pointers plus its own context, in the
 * style of ggml's backends: model and engine code call only this table, so
 * one model file serves every backend. Pointers passed to the kernels are
 * backend memory (from ops->alloc). Work is issued in order on the
 * backend's stream; the CPU backend simply runs it at once, an
 * asynchronous backend returns before the work ends and `synchronize`
 * waits for it.
 *
 * Conventions shared by every kernel:
 *   - matrices are row-major; a "rows x cols" activation is rows = tokens;
 *   - compute is f32 (16-bit storage is converted with ops->cast);
 *   - kernels that produce a PARAMETER gradient accumulate (+=) into it, so
 *     micro-batches add up; kernels that produce an ACTIVATION gradient
 *     overwrite their output;
 *   - sizes are int64_t element counts; 0 is allowed and does nothing;
 *   - a NULL pointer with a non-zero size, or a negative size, returns
 *     MHUB_ERR_INVALID_ARG with a message naming the kernel and argument;
 *   - buffers must not overlap, except the exact in-place forms a kernel
 *     documents (gelu out == in, gelu din == dout, softmax probs ==
 *     logits, dlogits == probs); other overlaps are MHUB_ERR_INVALID_ARG. */
#ifndef MHUB_BACKEND_H
#define MHUB_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mhub/dtype.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_backend mhub_backend;

typedef enum mhub_copy_kind {
    MHUB_COPY_HOST_TO_DEVICE,
    MHUB_COPY_DEVICE_TO_HOST,
    MHUB_COPY_DEVICE_TO_DEVICE
} mhub_copy_kind;

typedef struct mhub_backend_ops {
    /* ---- memory ---- */
    /* Zero-filled allocation of `bytes` (64-byte aligned). bytes == 0 gives
     * a valid non-NULL pointer that must still be freed. */
    mhub_status (*alloc)(mhub_backend *be, size_t bytes, void **out);
    void (*free)(mhub_backend *be, void *ptr);
    mhub_status (*memset_zero)(mhub_backend *be, void *ptr, size_t bytes);
    mhub_status (*copy)(mhub_backend *be, void *dst, const void *src,
                        size_t bytes, mhub_copy_kind kind);
    /* Wait until all work issued so far has finished. */
    mhub_status (*synchronize)(mhub_backend *be);
    /* Optional (NULL = not offered): allocator accounting. *current_bytes
     * is the sum of the sizes passed to alloc over the blocks not yet
     * freed; *peak_bytes the highest value it reached since the backend
     * was created or reset_peak was last called. Both count requested
     * bytes only (no alignment padding or allocator bookkeeping), so an
     * engine's footprint can be checked exactly against its formula.
     * Either pointer may be NULL. */
    mhub_status (*memory_usage)(mhub_backend *be, size_t *current_bytes, size_t *peak_bytes);
    /* Optional (NULL = not offered): set the peak to the current bytes, to
     * measure the high-water mark of one phase (a training step). */
    mhub_status (*reset_peak)(mhub_backend *be);

    /* ---- dense algebra ---- */
    /* C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C, row-major;
     * op(X) = X^T when transX. lda/ldb/ldc are row strides of the stored
     * matrices (A stored as M x K, or K x M when transA). */
    mhub_status (*gemm)(mhub_backend *be, bool trans_a, bool trans_b,
                        int64_t m, int64_t n, int64_t k, float alpha,
                        const float *a, int64_t lda, const float *b, int64_t ldb,
                        float beta, float *c, int64_t ldc);

    /* ---- layer kernels, each forward next to its backward ---- */
    /* out[r, c] += bias[c] */
    mhub_status (*bias_add)(mhub_backend *be, float *out, const float *bias,
                            int64_t rows, int64_t cols);
    /* dbias[c] += sum_r dout[r, c] */
    mhub_status (*bias_backward)(mhub_backend *be, float *dbias, const float *dout,
                                 int64_t rows, int64_t cols);
    /* GELU, tanh approximation (GPT-2's): out = gelu(in); out may be in. */
    mhub_status (*gelu_forward)(mhub_backend *be, float *out, const float *in, int64_t n);
    /* din = dout * gelu'(in); din may alias dout. */
    mhub_status (*gelu_backward)(mhub_backend *be, float *din, const float *in,
                                 const float *dout, int64_t n);
    /* Row-wise softmax of logits[rows, classes] into probs, and the
     * per-row loss -log(probs[r, target[r]]) into losses[rows].
     * A target outside [0, classes) is MHUB_ERR_INVALID_ARG. */
    mhub_status (*softmax_xent_forward)(mhub_backend *be, float *probs, float *losses,
                                        const float *logits, const int32_t *targets,
                                        int64_t rows, int64_t classes);
    /* dlogits = (probs - onehot(target)) * dloss, where dloss is the
     * gradient of the objective with respect to each row's loss (1/rows
     * for a mean over this batch). */
    mhub_status (*softmax_xent_backward)(mhub_backend *be, float *dlogits,
                                         const float *probs, const int32_t *targets,
                                         int64_t rows, int64_t classes, float dloss);

    /* ---- transformer kernels (f32; activations row-major [rows, dim]) ----
     * Activation gradients are overwritten, parameter gradients
     * accumulate (+=), as everywhere in this table. */
    /* out[r] = table[ids[r]] (accumulate: out[r] += table[ids[r]]).
     * An id outside [0, vocab) is MHUB_ERR_INVALID_ARG naming the row. */
    mhub_status (*embedding_forward)(mhub_backend *be, float *out, const float *table,
                                     const int32_t *ids, int64_t rows, int64_t vocab,
                                     int64_t dim, bool accumulate);
    /* dtable[ids[r]] += dout[r], rows in order (deterministic). */
    mhub_status (*embedding_backward)(mhub_backend *be, float *dtable, const float *dout,
                                      const int32_t *ids, int64_t rows, int64_t vocab,
                                      int64_t dim);
    /* out = (in - mean) * rstd * weight + bias per row (bias may be NULL);
     * mean[rows] and rstd[rows] are saved for the backward. out may not
     * alias in. */
    mhub_status (*layernorm_forward)(mhub_backend *be, float *out, float *mean, float *rstd,
                                     const float *in, const float *weight, const float *bias,
                                     int64_t rows, int64_t dim, float eps);
    /* din = d/din; dweight (and dbias unless NULL) accumulate. */
    mhub_status (*layernorm_backward)(mhub_backend *be, float *din, float *dweight,
                                      float *dbias, const float *dout, const float *in,
                                      const float *weight, const float *mean,
                                      const float *rstd, int64_t rows, int64_t dim);
    /* out = in * rstd * weight, rstd = 1/sqrt(mean(in^2) + eps) saved. */
    mhub_status (*rmsnorm_forward)(mhub_backend *be, float *out, float *rstd, const float *in,
                                   const float *weight, int64_t rows, int64_t dim, float eps);
    mhub_status (*rmsnorm_backward)(mhub_backend *be, float *din, float *dweight,
                                    const float *dout, const float *in, const float *weight,
                                    const float *rstd, int64_t rows, int64_t dim);
    /* SwiGLU: in[rows, 2F] holds, per row, the F gate values then the F
     * up values; out[rows, F] = silu(gate) * up. */
    mhub_status (*swiglu_forward)(mhub_backend *be, float *out, const float *in, int64_t rows,
                                  int64_t ffn);
    mhub_status (*swiglu_backward)(mhub_backend *be, float *din, const float *dout,
                                   const float *in, int64_t rows, int64_t ffn);
    /* Rotary position embedding, in place on the query and key heads of
     * qkv[batch*seq, (heads + 2 groups) * head_dim] (layout as in
     * causal_attention_forward), position = row % seq. Pairs are
     * (x[i], x[i + head_dim/2]) rotated by pos * base^(-2i/head_dim), as
     * Hugging Face's Llama ("rotate_half"). The backward applies the
     * inverse rotation to the gradient in place. */
    mhub_status (*rope_forward)(mhub_backend *be, float *qkv, int64_t batch, int64_t seq,
                                int64_t heads, int64_t groups, int64_t head_dim, float base);
    mhub_status (*rope_backward)(mhub_backend *be, float *dqkv, int64_t batch, int64_t seq,
                                 int64_t heads, int64_t groups, int64_t head_dim, float base);
    /* Causal multi-head self-attention with grouped queries. Each row of
     * qkv[batch*seq, (heads + 2 groups) * head_dim] holds, per query group
     * (Megatron-Core's order), its heads/groups query heads, then its key
     * head, then its value head, head_dim values each. Query head h
     * attends with key/value group h / (heads/groups), over positions
     * <= its own, scaled by 1/sqrt(head_dim).
     * out[batch*seq, heads*head_dim] (head h in columns [h*d, (h+1)*d));
     * probs[batch, heads, seq, seq] keeps the softmax for the backward
     * (entries above the diagonal are 0). */
    mhub_status (*causal_attention_forward)(mhub_backend *be, float *out, float *probs,
                                            const float *qkv, int64_t batch, int64_t seq,
                                            int64_t heads, int64_t groups, int64_t head_dim);
    /* dqkv (overwritten, same layout as qkv) from dout; scratch holds
     * batch*heads*seq*seq floats. */
    mhub_status (*causal_attention_backward)(mhub_backend *be, float *dqkv, float *scratch,
                                             const float *dout, const float *qkv,
                                             const float *probs, int64_t batch, int64_t seq,
                                             int64_t heads, int64_t groups, int64_t head_dim);

    /* Optional (NULL = not offered): the same attention without the
     * [batch, heads, seq, seq] probabilities. The forward keeps, per query
     * row, lse[batch, heads, seq] = log sum_j exp(score_j) (scores scaled
     * by 1/sqrt(head_dim), causal), and works through the keys in tiles,
     * so its memory is O(seq) per head, not O(seq^2); the backward
     * recomputes each probability from q, k and lse. out and dqkv as in
     * causal_attention_forward/backward; out is the forward's output.
     * Results agree with causal_attention to rounding (the sums run in
     * another order). */
    mhub_status (*flash_attention_forward)(mhub_backend *be, float *out, float *lse,
                                           const float *qkv, int64_t batch, int64_t seq,
                                           int64_t heads, int64_t groups, int64_t head_dim);
    mhub_status (*flash_attention_backward)(mhub_backend *be, float *dqkv, const float *dout,
                                            const float *out, const float *qkv,
                                            const float *lse, int64_t batch, int64_t seq,
                                            int64_t heads, int64_t groups, int64_t head_dim);

    /* ---- elementwise utilities ---- */
    /* Convert n elements between dtypes (RNE to 16-bit; NaN/Inf kept). */
    mhub_status (*cast)(mhub_backend *be, void *dst, mhub_dtype dst_dtype,
                        const void *src, mhub_dtype src_dtype, int64_t n);
    /* x *= alpha */
    mhub_status (*scale)(mhub_backend *be, float *x, int64_t n, float alpha);
    /* y += alpha * x */
    mhub_status (*axpy)(mhub_backend *be, float *y, const float *x, int64_t n, float alpha);
    /* *out = sum of x[i]^2 in double precision (NaN/Inf propagate). */
    mhub_status (*sum_squares)(mhub_backend *be, const float *x, int64_t n, double *out);
    /* dst[i] = mean + std * N(0,1) drawn from the counter-based RNG at
     * (seed, stream, offset + i): independent of how the range is split. */
    mhub_status (*fill_normal)(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                               uint64_t stream, uint64_t offset, float mean, float std);
    /* dst[i] = lo + (hi - lo) * U[0,1) at (seed, stream, offset + i). */
    mhub_status (*fill_uniform)(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                uint64_t stream, uint64_t offset, float lo, float hi);

    /* ---- optimizer updates on f32 parameters ---- */
    /* SGD: g' = grad + wd * param; if momentum_buf: buf = momentum*buf + g',
     * g' = buf; param -= lr * g'. momentum_buf may be NULL when momentum==0. */
    mhub_status (*sgd_step)(mhub_backend *be, float *param, const float *grad,
                            float *momentum_buf, int64_t n, float lr,
                            float momentum, float weight_decay);
    /* AdamW (decoupled weight decay), bias-corrected with step t >= 1. */
    mhub_status (*adamw_step)(mhub_backend *be, float *param, const float *grad,
                              float *m, float *v, int64_t n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int64_t t);

    /* Release the backend and its context. */
    void (*destroy)(mhub_backend *be);
} mhub_backend_ops;

struct mhub_backend {
    const char *name;             /* "cpu", "cuda" */
    const mhub_backend_ops *ops;
    void *ctx;                    /* the backend's own state */
};

/* Free a backend made by any backend's create function. NULL is fine. */
void mhub_backend_free(mhub_backend *be);

/* ---- the CPU backend (backends/cpu) ---- */
typedef struct mhub_cpu_options {
    /* OpenBLAS threads for this process; 0 = automatic: 1 when several
     * ranks share the node (MPI local size > 1), else all cores. The
     * environment variable MHUB_BLAS_THREADS overrides automatic. */
    int blas_threads;
    /* Ranks on this node, to pick the automatic thread count; 0 = 1. */
    int local_ranks;
    /* Offer flash_attention_forward/backward (so a GPT keeps O(seq)
     * attention memory instead of O(seq^2)). Off by default: on the CPU
     * the tiled kernels take ~1.35x the time of the plain ones at
     * seq 1024, and short sequences gain nothing. */
    bool flash_attention;
} mhub_cpu_options;

/* opts may be NULL for defaults. */
mhub_status mhub_cpu_backend_create(const mhub_cpu_options *opts, mhub_backend **out);
/* BLAS threads the CPU backend configured (for the progress line). */
int mhub_cpu_backend_threads(const mhub_backend *be);

/* ---- profiling any backend (src/profile_backend.c) ---- */
typedef struct mhub_profile_row {
    const char *op;  /* the table's field name, e.g. "gemm" */
    int64_t calls;
    double seconds;  /* wall time, each call waited for */
    double flops;    /* floating-point operations (gemm, attention), else 0 */
} mhub_profile_row;

/* A backend that runs inner's ops one at a time: each op is waited for
 * (inner's synchronize) and its wall time added to the op's row, with the
 * op's flops where they are counted. The waits take away any overlap
 * between ops, so the rows show where a step's time goes; their sum is a
 * little more than an unprofiled step. inner stays the caller's and must
 * outlive the profiling backend; memory ops pass straight through. */
mhub_status mhub_profile_backend_create(mhub_backend *inner, mhub_backend **out);
/* Up to cap rows of the ops called since create or the last reset,
 * slowest first; *count is how many there are. */
mhub_status mhub_profile_backend_rows(const mhub_backend *be, mhub_profile_row *rows, int cap,
                                      int *count);
mhub_status mhub_profile_backend_reset(mhub_backend *be);
/* The rows as a table on out: op, calls, ms, share of the total, and
 * TFLOP/s where flops are counted. */
mhub_status mhub_profile_backend_print(const mhub_backend *be, FILE *out);

/* ---- the guard backend (backends/cpu/guard_backend.c) ----
 * The CPU backend with its memory closed to the host outside backend
 * calls (mprotect): code that reads or writes backend memory directly,
 * instead of through ops->copy, faults at once with the address named,
 * as it would misbehave on a GPU. Same results as the CPU backend; slower
 * (two system calls per op). Installs a SIGSEGV handler that names the
 * address and then hands the fault on. MHUB_GUARD_ARENA_MB sets the
 * address space reserved (default 16 GiB, touched pages only). */
mhub_status mhub_guard_backend_create(const mhub_cpu_options *opts, mhub_backend **out);

/* ---- the CUDA backend (backends/cuda; ./configure --with-cuda) ----
 * Without --with-cuda these functions exist and return
 * MHUB_ERR_UNSUPPORTED saying so, so a program links either way. */

/* How the CUDA backend's GEMMs round their inputs (accumulation is f32 in
 * every mode). The CPU backend always computes in f32. */
typedef enum mhub_matmul_precision {
    MHUB_MATMUL_F32 = 0,   /* f32 inputs, f32 multiply */
    MHUB_MATMUL_TF32 = 1,  /* inputs rounded to tf32 (10-bit mantissa) on tensor cores */
    MHUB_MATMUL_BF16 = 2   /* inputs rounded to bf16 on tensor cores */
} mhub_matmul_precision;

const char *mhub_matmul_precision_name(mhub_matmul_precision p);

typedef struct mhub_cuda_options {
    /* CUDA device ordinal; -1 = the local rank (one GPU per rank). */
    int device;
    /* This process's rank among the ranks on its node, and their count
     * (for device = -1 and for the error when the node has fewer GPUs
     * than ranks); 0/0 = a single process. */
    int local_rank;
    int local_ranks;
    /* Bytes of the one device memory pool every allocation comes from;
     * 0 = all free device memory less a reserve for cuBLAS, NCCL and the
     * CUDA context (MHUB_CUDA_POOL_MB overrides). */
    size_t pool_bytes;
    mhub_matmul_precision matmul;
    /* Give every alloc its own cudaMalloc instead of a piece of the pool,
     * so that a memory checker (compute-sanitizer, or AddressSanitizer on
     * the test emulator) sees each tensor's bounds. For checking only:
     * cudaMalloc and cudaFree synchronize the device. The pool then only
     * holds the backend's own buffers (512 MiB unless pool_bytes is set).
     * The environment's MHUB_CUDA_ALLOC=each sets it too, =pool not. */
    bool alloc_each;
} mhub_cuda_options;

/* true when mhub was built with CUDA and at least one device is usable;
 * otherwise false with the reason in why[len] (may be NULL). */
bool mhub_cuda_available(char *why, size_t len);
/* opts may be NULL for defaults (device -1, whole free memory, f32). */
mhub_status mhub_cuda_backend_create(const mhub_cuda_options *opts, mhub_backend **out);
/* Change the GEMM precision of a CUDA backend (MHUB_ERR_INVALID_ARG for
 * any other backend). */
mhub_status mhub_cuda_backend_set_matmul(mhub_backend *be, mhub_matmul_precision p);
/* The device ordinal a CUDA backend runs on, or -1. */
int mhub_cuda_backend_device(const mhub_backend *be);

#ifdef __cplusplus
}
#endif
#endif
