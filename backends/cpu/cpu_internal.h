/* cpu_internal.h - what the parts of the CPU backend share.
 *
 * cpu_backend.c owns the backend object (creation, threads, memory, the ops
 * table); cpu_kernels.c holds the compute kernels and cpu_transformer.c the
 * transformer kernels, declared here so the ops table can point at them.
 * Every kernel has the signature of its slot in mhub_backend_ops
 * (include/mhub/backend.h) and first checks its arguments against the
 * contract all backends share (src/backend_args.h), so bad arguments are
 * reported as "<op>: <argument> ...". The two kernel files also share the
 * helpers at the end (the vector block, the vectorizable exp). Not
 * installed; not public API. */
#ifndef MHUB_CPU_INTERNAL_H
#define MHUB_CPU_INTERNAL_H

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mhub/backend.h"

/* The backend's own state (mhub_backend.ctx). */
typedef struct mhub_cpu_ctx {
    int blas_threads; /* what openblas_set_num_threads() was given */
} mhub_cpu_ctx;

/* Work on elements [lo, hi) of a pass (cpu_parallel.c). */
typedef void (*mhub_cpu_range_fn)(void *arg, int64_t lo, int64_t hi);
/* fn over [0, n) cut into contiguous ranges, one per backend thread when
 * n is large; every element is computed as a single pass would. */
void mhub_cpu_parallel_ranges(mhub_backend *be, int64_t n, mhub_cpu_range_fn fn, void *arg);
/* The same over rows [0, rows) of row_elems elements each: fn gets whole
 * rows [lo, hi), and the split happens only when rows * row_elems is
 * large. For kernels whose rows are independent (a softmax per row). */
void mhub_cpu_parallel_rows(mhub_backend *be, int64_t rows, int64_t row_elems,
                            mhub_cpu_range_fn fn, void *arg);

/* Hot elementwise workers are compiled twice, for x86-64-v3 (AVX2: 8
 * floats a vector instead of SSE2's 4) and for the baseline, and the
 * loader picks one for the machine (an ifunc). The bits are the same
 * either way: -std=c11 turns off FMA contraction, and the reductions use
 * VEC_BLOCK lanes whatever the vector width. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && \
    defined(__GLIBC__)
#define CPU_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CPU_VECTOR_CLONES
#endif

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

/* ---- transformer kernels (cpu_transformer.c) ---- */
mhub_status mhub_cpu_embedding_forward(mhub_backend *be, float *out, const float *table,
                                       const int32_t *ids, int64_t rows, int64_t vocab,
                                       int64_t dim, bool accumulate);
mhub_status mhub_cpu_embedding_backward(mhub_backend *be, float *dtable, const float *dout,
                                        const int32_t *ids, int64_t rows, int64_t vocab,
                                        int64_t dim);
mhub_status mhub_cpu_layernorm_forward(mhub_backend *be, float *out, float *mean, float *rstd,
                                       const float *in, const float *weight, const float *bias,
                                       int64_t rows, int64_t dim, float eps);
mhub_status mhub_cpu_layernorm_backward(mhub_backend *be, float *din, float *dweight,
                                        float *dbias, const float *dout, const float *in,
                                        const float *weight, const float *mean,
                                        const float *rstd, int64_t rows, int64_t dim);
mhub_status mhub_cpu_rmsnorm_forward(mhub_backend *be, float *out, float *rstd, const float *in,
                                     const float *weight, int64_t rows, int64_t dim, float eps);
mhub_status mhub_cpu_rmsnorm_backward(mhub_backend *be, float *din, float *dweight,
                                      const float *dout, const float *in, const float *weight,
                                      const float *rstd, int64_t rows, int64_t dim);
mhub_status mhub_cpu_swiglu_forward(mhub_backend *be, float *out, const float *in, int64_t rows,
                                    int64_t ffn);
mhub_status mhub_cpu_swiglu_backward(mhub_backend *be, float *din, const float *dout,
                                     const float *in, int64_t rows, int64_t ffn);
mhub_status mhub_cpu_rope_forward(mhub_backend *be, float *qkv, int64_t batch, int64_t seq,
                                  int64_t heads, int64_t groups, int64_t head_dim, float base);
mhub_status mhub_cpu_rope_backward(mhub_backend *be, float *dqkv, int64_t batch, int64_t seq,
                                   int64_t heads, int64_t groups, int64_t head_dim, float base);
mhub_status mhub_cpu_causal_attention_forward(mhub_backend *be, float *out, float *probs,
                                              const float *qkv, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim);
mhub_status mhub_cpu_causal_attention_backward(mhub_backend *be, float *dqkv, float *scratch,
                                               const float *dout, const float *qkv,
                                               const float *probs, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups,
                                               int64_t head_dim);
mhub_status mhub_cpu_flash_attention_forward(mhub_backend *be, float *out, float *lse,
                                             const float *qkv, int64_t batch, int64_t seq,
                                             int64_t heads, int64_t groups, int64_t head_dim);
mhub_status mhub_cpu_flash_attention_backward(mhub_backend *be, float *dqkv, const float *dout,
                                              const float *out, const float *qkv,
                                              const float *lse, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim);

/* ---- helpers shared by the kernel files ---- */

/* gcc 12 at -O2 vectorizes a loop only when the vector code replaces all
 * of the scalar code (its "very cheap" cost model), i.e. when the trip
 * count is a known multiple of the vector length. So elementwise loops are
 * run twice: over a prefix whose length is a multiple of VEC_BLOCK (the
 * vectorized copy) and over the remaining < VEC_BLOCK elements. */
#define VEC_BLOCK 16

static inline int64_t vec_prefix(int64_t n) { return n & ~(int64_t)(VEC_BLOCK - 1); }

/* Bytes of n floats (n already checked by the argument contract). */
static inline size_t f32_bytes(int64_t n) { return (size_t)n * sizeof(float); }

/* ---- exp ---- */

/* |x| is clamped to VEXP_LIMIT: e^-104 < 2^-150 rounds to +0 in float and
 * e^104 > 2^128 to +Inf, so the clamp changes no result, and it keeps n
 * (below) within [-150, 150]. */
#define VEXP_LIMIT 104.0f
/* 1.5 * 2^23: adding it to |v| < 2^22 rounds v to an integer (in the
 * default round-to-nearest mode) and leaves that integer, plus 2^22, in
 * the low mantissa bits; subtracting it again gives the integer as a
 * float. Unlike rintf, this vectorizes with plain SSE2. */
#define VEXP_SHIFTER 0x1.8p23f
#define VEXP_LOG2_E 0x1.715476p0f
/* ln 2 = LN2_HI + LN2_LO (Cody-Waite). LN2_HI = 355/512 has 9 significant
 * bits, so n * LN2_HI is exact for |n| <= 2^15, and so is x - n * LN2_HI
 * (the two are within a factor of 2, or both small); LN2_LO carries the
 * rest. These are Cephes' values. */
#define VEXP_LN2_HI 0x1.63p-1f
#define VEXP_LN2_LO -2.12194440e-4f

/* e^x in float: inline, branch-free, vectorizable, no libm call.
 *
 * x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, so
 * e^x = 2^n e^r, and e^r ~ 1 + r + r^2 P(r), P of degree 5 with Cephes'
 * expf minimax coefficients. 2^n is built directly in the exponent bits,
 * as two normal powers of two 2^n1 and 2^n2 (n1 + n2 = n) applied by
 * multiplication: so results below FLT_MIN come out as rounded
 * subnormals (gradual underflow, as expf) and results above FLT_MAX as
 * +Inf. (Adding n << 23 to p's bits would save a multiplication but wrap
 * the exponent at both ends.)
 *
 * The clamp and the NaN check work on the bits, with integer ternaries
 * (min and a mask): float ternaries such as x < lo ? lo : x made gcc 12's
 * PRE move the whole computation behind a branch (the clamped value is a
 * constant on one path), and the loop's if-conversion then refuses to
 * execute float operations speculatively (-ftrapping-math), so nothing
 * vectorized. A NaN's magnitude bits exceed every finite limit, so it is
 * clamped like +-104 and then turned back into a NaN by OR-ing a quiet
 * NaN's bits into the result (which makes any float a NaN).
 *
 * Special values: e^+-0 = 1 exactly, e^NaN = NaN, e^-Inf = +0,
 * e^+Inf = +Inf. Over all 2^32 floats, vexpf gives +Inf exactly where
 * expf does (x > 88.7228), +0 exactly where expf does (x < -103.97), and
 * NaN for every NaN. So 1 / (1 + vexpf(-2u)) still reaches exactly 0 and
 * 1 for large |u|.
 *
 * Accuracy against double exp, measured exhaustively over every float
 * (gcc 12, -std=c11 -O2, so no FMA contraction): max error 0.990 ulp
 * (at x = 70.40; inside [-87, 88] and overall), subnormal results within
 * 0.75 units of 2^-149. test_kernels checks <= 2 ulp on a 2^-10 grid and
 * random points. Scalar and vectorized code give the same bits, since
 * every step is a separately rounded IEEE operation. */
static inline float vexpf(float x)
{
    uint32_t bits = mhub_f32_to_bits(x);
    uint32_t sign = bits & 0x80000000u;
    int32_t mag = (int32_t)(bits ^ sign); /* < 2^31: the conversion is exact */
    const int32_t limit = (int32_t)mhub_f32_to_bits(VEXP_LIMIT);
    uint32_t nan_bits = mag > 0x7f800000 ? 0x7fc00000u : 0u;
    mag = mag < limit ? mag : limit;
    x = mhub_f32_from_bits((uint32_t)mag | sign);

    float t = x * VEXP_LOG2_E + VEXP_SHIFTER;
    float nf = t - VEXP_SHIFTER;
    float r = x - nf * VEXP_LN2_HI;
    r = r - nf * VEXP_LN2_LO;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;

    /* m = n + 256 in [106, 406], from t's low bits, in unsigned arithmetic
     * (well defined whatever the bits). n1 = floor(m / 2) - 128 and
     * n2 = n - n1 lie in [-75, 75], so 2^n1 and 2^n2 are normal, with
     * exponent fields n1 + 127 = h - 1 and n2 + 127 = m - h - 1; p * 2^n1
     * is exact and the second product rounds once. */
    uint32_t m = mhub_f32_to_bits(t) - mhub_f32_to_bits(VEXP_SHIFTER) + 256u;
    uint32_t h = m >> 1;
    float s1 = mhub_f32_from_bits((h - 1u) << 23);
    float s2 = mhub_f32_from_bits((m - h - 1u) << 23);
    return mhub_f32_from_bits(mhub_f32_to_bits(p * s1 * s2) | nan_bits);
}

#endif
