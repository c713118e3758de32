/* cpu_internal.h - what the two halves of the CPU backend share.
 *
 * cpu_backend.c owns the backend object (creation, threads, memory, the ops
 * table); cpu_kernels.c holds the compute kernels, declared here so the ops
 * table can point at them. Every kernel has the signature of its slot in
 * mhub_backend_ops (include/mhub/backend.h) and reports bad arguments as
 * "mhub_cpu_<kernel>: <argument> ...". Not installed; not public API. */
#ifndef MHUB_CPU_INTERNAL_H
#define MHUB_CPU_INTERNAL_H

#include "mhub/backend.h"

/* The backend's own state (mhub_backend.ctx). */
typedef struct mhub_cpu_ctx {
    int blas_threads; /* what openblas_set_num_threads() was given */
} mhub_cpu_ctx;

/* ---- dense algebra ---- */
mhub_status mhub_cpu_gemm(mhub_backend *be, bool trans_a, bool trans_b, int64_t m, int64_t n,
                          int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                          int64_t ldb, float beta, float *c, int64_t ldc);

/* ---- layer kernels ---- */
mhub_status mhub_cpu_bias_add(mhub_backend *be, float *out, const float *bias, int64_t rows,
                              int64_t cols);
mhub_status mhub_cpu_bias_backward(mhub_backend *be, float *dbias, const float *dout,
                                   int64_t rows, int64_t cols);
mhub_status mhub_cpu_gelu_forward(mhub_backend *be, float *out, const float *in, int64_t n);
mhub_status mhub_cpu_gelu_backward(mhub_backend *be, float *din, const float *in,
                                   const float *dout, int64_t n);
mhub_status mhub_cpu_softmax_xent_forward(mhub_backend *be, float *probs, float *losses,
                                          const float *logits, const int32_t *targets,
                                          int64_t rows, int64_t classes);
mhub_status mhub_cpu_softmax_xent_backward(mhub_backend *be, float *dlogits, const float *probs,
                                           const int32_t *targets, int64_t rows,
                                           int64_t classes, float dloss);

/* ---- for the tests ---- */
/* e^x by the kernels' inline, vectorizable exp (vexpf in cpu_kernels.c). */
float mhub_cpu_expf(float x);

/* ---- elementwise utilities ---- */
mhub_status mhub_cpu_cast(mhub_backend *be, void *dst, mhub_dtype dst_dtype, const void *src,
                          mhub_dtype src_dtype, int64_t n);
mhub_status mhub_cpu_scale(mhub_backend *be, float *x, int64_t n, float alpha);
mhub_status mhub_cpu_axpy(mhub_backend *be, float *y, const float *x, int64_t n, float alpha);
mhub_status mhub_cpu_sum_squares(mhub_backend *be, const float *x, int64_t n, double *out);
mhub_status mhub_cpu_fill_normal(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                 uint64_t stream, uint64_t offset, float mean, float std);
mhub_status mhub_cpu_fill_uniform(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                  uint64_t stream, uint64_t offset, float lo, float hi);

/* ---- optimizer updates ---- */
mhub_status mhub_cpu_sgd_step(mhub_backend *be, float *param, const float *grad,
                              float *momentum_buf, int64_t n, float lr, float momentum,
                              float weight_decay);
mhub_status mhub_cpu_adamw_step(mhub_backend *be, float *param, const float *grad, float *m,
                                float *v, int64_t n, float lr, float beta1, float beta2,
                                float eps, float weight_decay, int64_t t);

#endif
