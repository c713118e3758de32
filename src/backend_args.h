/* backend_args.h - the argument contract of every backend operation.
 *
 * Each mhub_backend_ops entry has one check here taking the same arguments
 * (less the backend): counts, NULL pointers with work to do, overlaps that
 * the op does not allow, non-finite scalars, dtype pairs. Every backend
 * calls the check before it computes or launches anything, so a bad
 * argument gives the same MHUB_ERR_INVALID_ARG message ("gelu_forward: n =
 * -1 is negative") on the CPU and on a GPU. The checks look only at the
 * arguments, never at the memory behind the pointers (which may be device
 * memory): checks of values such as an out-of-range token id stay in the
 * backend's kernel. */
#ifndef MHUB_BACKEND_ARGS_H
#define MHUB_BACKEND_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

mhub_status mhub_args_memset_zero(const void *ptr, size_t bytes);
mhub_status mhub_args_copy(const void *dst, const void *src, size_t bytes, mhub_copy_kind kind);
mhub_status mhub_args_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           const float *a, int64_t lda, const float *b, int64_t ldb,
                           const float *c, int64_t ldc);
mhub_status mhub_args_bias_add(const float *out, const float *bias, int64_t rows, int64_t cols);
mhub_status mhub_args_bias_backward(const float *dbias, const float *dout, int64_t rows,
                                    int64_t cols);
mhub_status mhub_args_gelu_forward(const float *out, const float *in, int64_t n);
mhub_status mhub_args_gelu_backward(const float *din, const float *in, const float *dout,
                                    int64_t n);
mhub_status mhub_args_softmax_xent_forward(const float *probs, const float *losses,
                                           const float *logits, const int32_t *targets,
                                           int64_t rows, int64_t classes);
mhub_status mhub_args_softmax_xent_backward(const float *dlogits, const float *probs,
                                            const int32_t *targets, int64_t rows,
                                            int64_t classes, float dloss);
mhub_status mhub_args_embedding_forward(const float *out, const float *table,
                                        const int32_t *ids, int64_t rows, int64_t vocab,
                                        int64_t dim);
mhub_status mhub_args_embedding_backward(const float *dtable, const float *dout,
                                         const int32_t *ids, int64_t rows, int64_t vocab,
                                         int64_t dim);
mhub_status mhub_args_layernorm_forward(const float *out, const float *mean, const float *rstd,
                                        const float *in, const float *weight, const float *bias,
                                        int64_t rows, int64_t dim, float eps);
mhub_status mhub_args_layernorm_backward(const float *din, const float *dweight,
                                         const float *dbias, const float *dout, const float *in,
                                         const float *weight, const float *mean,
                                         const float *rstd, int64_t rows, int64_t dim);
mhub_status mhub_args_rmsnorm_forward(const float *out, const float *rstd, const float *in,
                                      const float *weight, int64_t rows, int64_t dim, float eps);
mhub_status mhub_args_rmsnorm_backward(const float *din, const float *dweight,
                                       const float *dout, const float *in, const float *weight,
                                       const float *rstd, int64_t rows, int64_t dim);
mhub_status mhub_args_swiglu_forward(const float *out, const float *in, int64_t rows,
                                     int64_t ffn);
mhub_status mhub_args_swiglu_backward(const float *din, const float *dout, const float *in,
                                      int64_t rows, int64_t ffn);
/* rope_forward and rope_backward share one contract; `op` names the caller */
mhub_status mhub_args_rope(const char *op, const float *qkv, int64_t batch, int64_t seq,
                           int64_t heads, int64_t groups, int64_t head_dim, float base);
mhub_status mhub_args_causal_attention_forward(const float *out, const float *probs,
                                               const float *qkv, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups,
                                               int64_t head_dim);
mhub_status mhub_args_causal_attention_backward(const float *dqkv, const float *scratch,
                                                const float *dout, const float *qkv,
                                                const float *probs, int64_t batch,
                                                int64_t seq, int64_t heads, int64_t groups,
                                                int64_t head_dim);
mhub_status mhub_args_flash_attention_forward(const float *out, const float *lse,
                                              const float *qkv, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim);
mhub_status mhub_args_flash_attention_backward(const float *dqkv, const float *dout,
                                               const float *out, const float *qkv,
                                               const float *lse, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups,
                                               int64_t head_dim);
mhub_status mhub_args_cast(const void *dst, mhub_dtype dst_dtype, const void *src,
                           mhub_dtype src_dtype, int64_t n);
mhub_status mhub_args_scale(const float *x, int64_t n, float alpha);
mhub_status mhub_args_axpy(const float *y, const float *x, int64_t n, float alpha);
mhub_status mhub_args_sum_squares(const float *x, int64_t n, const double *out);
mhub_status mhub_args_fill_normal(const float *dst, int64_t n, float mean, float std);
mhub_status mhub_args_fill_uniform(const float *dst, int64_t n, float lo, float hi);
mhub_status mhub_args_sgd_step(const float *param, const float *grad, const float *momentum_buf,
                               int64_t n, float lr, float momentum, float weight_decay);
mhub_status mhub_args_adamw_step(const float *param, const float *grad, const float *m,
                                 const float *v, int64_t n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, int64_t t);

#ifdef __cplusplus
}
#endif
#endif
