/* cuda_kernels.h - launchers of the CUDA backend's kernels (cuda_*.cu).
 *
 * Each launcher enqueues its kernels on `stream` and returns the launch's
 * cudaError_t (cudaSuccess, or what cudaGetLastError reported); it never
 * synchronizes. Arguments have already passed src/backend_args.h's check
 * for the operation, so sizes are >= 0 and pointers valid device memory;
 * a launcher with no work (a zero size) launches nothing.
 *
 * Values only the device can see (a token id out of range) are reported
 * through `fault`, a device-side record the backend reads when it next
 * synchronizes: the first faulting kernel stores its code and the row and
 * value that were wrong (atomicCAS on code), later ones are ignored.
 *
 * Kernels that need scratch take `work`, a device buffer of
 * MHUB_CUDA_WORK_BYTES owned by the backend and reused by every kernel
 * on the stream (the stream orders its uses); a kernel whose scratch
 * could exceed it works through the problem in chunks. */
#ifndef MHUB_CUDA_KERNELS_H
#define MHUB_CUDA_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "mhub/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MHUB_CUDA_WORK_BYTES ((size_t)64 << 20)

typedef enum mhub_cuda_fault_code {
    MHUB_CUDA_FAULT_NONE = 0,
    MHUB_CUDA_FAULT_TARGET = 1,     /* softmax_xent: target outside [0, classes) */
    MHUB_CUDA_FAULT_EMBED_ID = 2    /* embedding: id outside [0, vocab) */
} mhub_cuda_fault_code;

typedef struct mhub_cuda_fault {
    int code;          /* mhub_cuda_fault_code; 0 = none */
    int pad;
    long long row;     /* the row with the bad value */
    long long value;   /* the bad value */
    long long limit;   /* the bound it broke (classes, vocab) */
} mhub_cuda_fault;

cudaError_t mhub_cuda_bias_add(cudaStream_t s, float *out, const float *bias, int64_t rows,
                               int64_t cols);
cudaError_t mhub_cuda_bias_backward(cudaStream_t s, void *work, float *dbias, const float *dout,
                                    int64_t rows, int64_t cols);
cudaError_t mhub_cuda_gelu_forward(cudaStream_t s, float *out, const float *in, int64_t n);
cudaError_t mhub_cuda_gelu_backward(cudaStream_t s, float *din, const float *in,
                                    const float *dout, int64_t n);
cudaError_t mhub_cuda_softmax_xent_forward(cudaStream_t s, mhub_cuda_fault *fault, float *probs,
                                           float *losses, const float *logits,
                                           const int32_t *targets, int64_t rows,
                                           int64_t classes);
cudaError_t mhub_cuda_softmax_xent_backward(cudaStream_t s, mhub_cuda_fault *fault,
                                            float *dlogits, const float *probs,
                                            const int32_t *targets, int64_t rows,
                                            int64_t classes, float dloss);
cudaError_t mhub_cuda_embedding_forward(cudaStream_t s, mhub_cuda_fault *fault, float *out,
                                        const float *table, const int32_t *ids, int64_t rows,
                                        int64_t vocab, int64_t dim, bool accumulate);
cudaError_t mhub_cuda_embedding_backward(cudaStream_t s, mhub_cuda_fault *fault, void *work,
                                         float *dtable, const float *dout, const int32_t *ids,
                                         int64_t rows, int64_t vocab, int64_t dim);
cudaError_t mhub_cuda_layernorm_forward(cudaStream_t s, float *out, float *mean, float *rstd,
                                        const float *in, const float *weight, const float *bias,
                                        int64_t rows, int64_t dim, float eps);
cudaError_t mhub_cuda_layernorm_backward(cudaStream_t s, void *work, float *din, float *dweight,
                                         float *dbias, const float *dout, const float *in,
                                         const float *weight, const float *mean,
                                         const float *rstd, int64_t rows, int64_t dim);
cudaError_t mhub_cuda_rmsnorm_forward(cudaStream_t s, float *out, float *rstd, const float *in,
                                      const float *weight, int64_t rows, int64_t dim, float eps);
cudaError_t mhub_cuda_rmsnorm_backward(cudaStream_t s, void *work, float *din, float *dweight,
                                       const float *dout, const float *in, const float *weight,
                                       const float *rstd, int64_t rows, int64_t dim);
cudaError_t mhub_cuda_swiglu_forward(cudaStream_t s, float *out, const float *in, int64_t rows,
                                     int64_t ffn);
cudaError_t mhub_cuda_swiglu_backward(cudaStream_t s, float *din, const float *dout,
                                      const float *in, int64_t rows, int64_t ffn);
/* inverse = false: rope_forward; true: rope_backward (the inverse rotation) */
cudaError_t mhub_cuda_rope(cudaStream_t s, float *qkv, int64_t batch, int64_t seq,
                           int64_t heads, int64_t groups, int64_t head_dim, float base,
                           bool inverse);
cudaError_t mhub_cuda_causal_attention_forward(cudaStream_t s, float *out, float *probs,
                                               const float *qkv, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups, int64_t head_dim);
cudaError_t mhub_cuda_causal_attention_backward(cudaStream_t s, float *dqkv, float *scratch,
                                                const float *dout, const float *qkv,
                                                const float *probs, int64_t batch, int64_t seq,
                                                int64_t heads, int64_t groups,
                                                int64_t head_dim);
cudaError_t mhub_cuda_flash_attention_forward(cudaStream_t s, float *out, float *lse,
                                              const float *qkv, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim);
cudaError_t mhub_cuda_flash_attention_backward(cudaStream_t s, void *work, float *dqkv,
                                               const float *dout, const float *out,
                                               const float *qkv, const float *lse,
                                               int64_t batch, int64_t seq, int64_t heads,
                                               int64_t groups, int64_t head_dim);

/* ---- flash attention on the tensor cores (cuda_attention_wmma.cu) ----
 * The flash contract of mhub_cuda_flash_attention_forward/backward, with
 * every product in bf16 (f32 accumulation), for head_dim 64 and 128.
 * mhub_cuda_attention_wmma_refusal says why a shape cannot take this path
 * (a static string), or NULL when it can; the launchers return
 * cudaErrorInvalidValue for such a shape. */
const char *mhub_cuda_attention_wmma_refusal(int64_t seq, int64_t heads, int64_t groups,
                                             int64_t head_dim);
cudaError_t mhub_cuda_wmma_attention_forward(cudaStream_t s, float *out, float *lse,
                                             const float *qkv, int64_t batch, int64_t seq,
                                             int64_t heads, int64_t groups, int64_t head_dim);
cudaError_t mhub_cuda_wmma_attention_backward(cudaStream_t s, void *work, float *dqkv,
                                              const float *dout, const float *out,
                                              const float *qkv, const float *lse,
                                              int64_t batch, int64_t seq, int64_t heads,
                                              int64_t groups, int64_t head_dim);

/* ---- the GEMM attention path's kernels (cuda_attention_rows.cu) ----
 * cuda_attention_gemm.c computes attention with cuBLAS's batched GEMMs
 * over chunks of (batch, head) pairs, each pair's [seq, seq] scores in
 * scratch; these kernels do the rest. A chunk covers (batch, group) units
 * [unit0, unit0 + n_units) and, of each group, query heads [head0, head0 +
 * n_heads); its entry i is head head0 + i / n_units of unit unit0 + i %
 * n_units, so the entries of one head of the group are consecutive. */
typedef struct mhub_cuda_attn_chunk {
    int64_t batch, seq, heads, groups, head_dim;
    int64_t unit0, n_units, head0, n_heads;
    int64_t s_stride;  /* floats from one entry's [seq, seq] matrix to the next */
} mhub_cuda_attn_chunk;

/* The chunk's operand addresses, one array of n_entries pointers per role,
 * role r at table[r * stride]: cuBLAS's batched GEMM reads them there. */
typedef enum mhub_cuda_attn_role {
    MHUB_ATTN_Q,      /* query rows in qkv */
    MHUB_ATTN_K,      /* the group's key rows in qkv */
    MHUB_ATTN_V,      /* the group's value rows in qkv */
    MHUB_ATTN_O,      /* head columns of out (forward) or dout (backward) */
    MHUB_ATTN_S,      /* the entry's [seq, seq] scores, then probabilities */
    MHUB_ATTN_DP,     /* backward: dP, then dS */
    MHUB_ATTN_DQ,     /* backward: the query head's columns of dqkv */
    MHUB_ATTN_DK,     /* backward: the group's key columns of dqkv */
    MHUB_ATTN_DV,     /* backward: the group's value columns of dqkv */
    MHUB_ATTN_ROLES
} mhub_cuda_attn_role;

/* What the table points into; dp and dqkv are NULL in the forward (their
 * roles are then left unwritten). s and dp hold n_entries [seq, seq]
 * matrices each, s_stride floats apart. */
typedef struct mhub_cuda_attn_bases {
    const float *qkv;
    const float *o;   /* out or dout: a [batch*seq, heads*head_dim] matrix */
    float *s, *dp, *dqkv;
} mhub_cuda_attn_bases;

/* Fill the pointer table of chunk c (n_units * n_heads entries). */
cudaError_t mhub_cuda_attn_pointers(cudaStream_t s, void **table, int64_t stride,
                                    mhub_cuda_attn_bases bases, mhub_cuda_attn_chunk c);
/* Each entry's scores -> causal softmax in place (zero above the
 * diagonal), and lse[batch, heads, seq] of the entry's rows. */
cudaError_t mhub_cuda_attn_softmax_rows(cudaStream_t s, float *scores, float *lse,
                                        mhub_cuda_attn_chunk c);
/* The backward's row work, from the recomputed scores S and dP = dO V^T:
 * P_tj = exp(S_tj - lse_t) into S's place and dS_tj = P_tj (dP_tj - D_t)
 * into dP's, D_t = dout_t . out_t of the entry's head; both zero above
 * the diagonal. */
cudaError_t mhub_cuda_attn_probs_dscores_rows(cudaStream_t s, float *scores, float *dp,
                                              const float *lse, const float *dout,
                                              const float *out, mhub_cuda_attn_chunk c);

cudaError_t mhub_cuda_cast(cudaStream_t s, void *dst, mhub_dtype dst_dtype, const void *src,
                           mhub_dtype src_dtype, int64_t n);
cudaError_t mhub_cuda_scale(cudaStream_t s, float *x, int64_t n, float alpha);
cudaError_t mhub_cuda_axpy(cudaStream_t s, float *y, const float *x, int64_t n, float alpha);
/* *dev_out (device memory, one double) = sum of x[i]^2 in double */
cudaError_t mhub_cuda_sum_squares(cudaStream_t s, void *work, const float *x, int64_t n,
                                  double *dev_out);
cudaError_t mhub_cuda_fill_normal(cudaStream_t s, float *dst, int64_t n, uint64_t seed,
                                  uint64_t stream, uint64_t offset, float mean, float std);
cudaError_t mhub_cuda_fill_uniform(cudaStream_t s, float *dst, int64_t n, uint64_t seed,
                                   uint64_t stream, uint64_t offset, float lo, float hi);
cudaError_t mhub_cuda_sgd_step(cudaStream_t s, float *param, const float *grad,
                               float *momentum_buf, int64_t n, float lr, float momentum,
                               float weight_decay);
cudaError_t mhub_cuda_adamw_step(cudaStream_t s, float *param, const float *grad, float *m,
                                 float *v, int64_t n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, int64_t t);
/* Average 16-bit or f32 data in place on the device: x[i] /= divisor
 * (computed in f32, rounded back to dt): the finish step of an MHUB_AVG
 * that a communicator could not average itself. */
cudaError_t mhub_cuda_divide(cudaStream_t s, void *x, mhub_dtype dt, int64_t n, float divisor);

#ifdef __cplusplus
}
#endif
#endif
