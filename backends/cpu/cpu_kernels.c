/* cpu_kernels.c - the CPU backend's compute kernels.
 *
 * GEMM goes to OpenBLAS (cblas_sgemm). Everything else is a plain C loop
 * written so that gcc vectorizes it at -O2: restrict-qualified pointers,
 * no branches in the loop body, and a split of each loop into a prefix of
 * whole vector blocks plus a short remainder (see VEC_BLOCK). Calls to
 * libm's expf do not vectorize without -ffast-math, so GELU and softmax
 * use vexpf instead, an inline exp in plain C (max error 0.99 ulp). Each
 * kernel first checks all of its arguments, through the contract every
 * backend shares (src/backend_args.h), and writes nothing when one is
 * bad; messages name the operation and the argument. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cblas.h>

#include "backends/cpu/cpu_internal.h"
#include "mhub/rng.h"
#include "src/backend_args.h"

/* VEC_BLOCK and vexpf are in cpu_internal.h, shared with
 * cpu_transformer.c. */

/* ---- small vectorizable loops shared by several kernels ---- */

static inline void scale_run(float *restrict x, int64_t n, float alpha)
{
    for (int64_t i = 0; i < n; i++)
        x[i] *= alpha;
}

static inline void scale_into_run(float *restrict dst, const float *restrict src, int64_t n,
                                  float alpha)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = src[i] * alpha;
}

static void scale_in_place(float *x, int64_t n, float alpha)
{
    int64_t body = vec_prefix(n);
    scale_run(x, body, alpha);
    scale_run(x + body, n - body, alpha);
}

/* dst = src * alpha, where dst is src or a separate array. */
static void scale_into(float *dst, const float *src, int64_t n, float alpha)
{
    if (dst == src) {
        scale_in_place(dst, n, alpha);
        return;
    }
    int64_t body = vec_prefix(n);
    scale_into_run(dst, src, body, alpha);
    scale_into_run(dst + body, src + body, n - body, alpha);
}

/* ---- dense algebra ---- */

mhub_status mhub_cpu_gemm(mhub_backend *be, bool trans_a, bool trans_b, int64_t m, int64_t n,
                          int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                          int64_t ldb, float beta, float *c, int64_t ldc)
{
    MHUB_TRY(mhub_args_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc));
    if (m == 0 || n == 0)
        return MHUB_OK;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda,
                b, (int)ldb, beta, c, (int)ldc);
    return MHUB_OK;
}

/* ---- bias ---- */

static inline void add_run(float *restrict y, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* y[0..n) += x[0..n) for separate arrays. */
static void add_to(float *y, const float *x, int64_t n)
{
    int64_t body = vec_prefix(n);
    add_run(y, x, body);
    add_run(y + body, x + body, n - body);
}

mhub_status mhub_cpu_bias_add(mhub_backend *be, float *out, const float *bias, int64_t rows,
                              int64_t cols)
{
    MHUB_TRY(mhub_args_bias_add(out, bias, rows, cols));
    if (rows == 0 || cols == 0)
        return MHUB_OK; /* bias may be NULL: no arithmetic on it */
    for (int64_t r = 0; r < rows; r++)
        add_to(out + r * cols, bias, cols);
    return MHUB_OK;
}

/* Row by row rather than column by column: each row adds into all of
 * dbias at once, a contiguous vectorized add. */
mhub_status mhub_cpu_bias_backward(mhub_backend *be, float *dbias, const float *dout,
                                   int64_t rows, int64_t cols)
{
    MHUB_TRY(mhub_args_bias_backward(dbias, dout, rows, cols));
    if (rows == 0 || cols == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        add_to(dbias, dout + r * cols, cols);
    return MHUB_OK;
}

/* ---- exp ---- */

/* vexpf and its bit casts are in cpu_internal.h: silu in cpu_transformer.c
 * and the softmax in its attention use it too. */

/* The same function, out of line, for the tests. */
float mhub_cpu_expf(float x) { return vexpf(x); }

/* ---- GELU ---- */

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

/* GPT-2's GELU is 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Since 0.5 (1 + tanh(u)) = sigmoid(2u), the kernels use
 * gelu(x) = x * sigmoid(2u): the same function, without the cancellation
 * of 1 + tanh(u) ~ 0 that costs the tanh form all its relative accuracy
 * for x below about -3. For x below about -10, e^(-2u) overflows to Inf
 * and the sigmoid is 0, its correct limit; for x above about 10 it
 * underflows to 0 and the sigmoid is 1. vexpf, not expf, so that the
 * loops below vectorize. */
static inline float gelu_sigmoid(float x)
{
    float u = GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    return 1.0f / (1.0f + vexpf(-2.0f * u));
}

/* d/dx [x s(2u)] = s + x s (1 - s) 2 u'(x), u' = sqrt(2/pi) (1 + 3 c x^2). */
static inline float gelu_grad(float x)
{
    float s = gelu_sigmoid(x);
    float du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * x * x);
    return s + 2.0f * (x * s) * (1.0f - s) * du;
}

/* The in-place kernels get their own loops: restrict (which the
 * vectorizer needs, to rule out overlap without a runtime check) may not
 * be given to two pointers to the same array. */
static inline void gelu_run(float *restrict out, const float *restrict in, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = in[i] * gelu_sigmoid(in[i]);
}

static inline void gelu_in_place_run(float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] * gelu_sigmoid(x[i]);
}

static inline void gelu_grad_run(float *restrict din, const float *restrict in,
                                 const float *restrict dout, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        din[i] = dout[i] * gelu_grad(in[i]);
}

/* d = d * gelu'(in): din over dout. */
static inline void gelu_grad_in_place_run(float *restrict d, const float *restrict in, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        d[i] = d[i] * gelu_grad(in[i]);
}

typedef struct gelu_args {
    float *out;        /* forward: gelu(in); backward: din */
    const float *in;
    const float *dout; /* backward only */
} gelu_args;

/* Elements [lo, hi): a vector-block body, then the remainder. */
CPU_VECTOR_CLONES static void gelu_forward_range(void *p, int64_t lo, int64_t hi)
{
    const gelu_args *a = p;
    float *out = a->out + lo;
    const float *in = a->in + lo;
    int64_t n = hi - lo, body = vec_prefix(n);
    if (out == in) {
        gelu_in_place_run(out, body);
        gelu_in_place_run(out + body, n - body);
    } else {
        gelu_run(out, in, body);
        gelu_run(out + body, in + body, n - body);
    }
}

CPU_VECTOR_CLONES static void gelu_backward_range(void *p, int64_t lo, int64_t hi)
{
    const gelu_args *a = p;
    float *din = a->out + lo;
    const float *in = a->in + lo, *dout = a->dout + lo;
    int64_t n = hi - lo, body = vec_prefix(n);
    if (din == dout) {
        gelu_grad_in_place_run(din, in, body);
        gelu_grad_in_place_run(din + body, in + body, n - body);
    } else {
        gelu_grad_run(din, in, dout, body);
        gelu_grad_run(din + body, in + body, dout + body, n - body);
    }
}

/* out may be in. */
mhub_status mhub_cpu_gelu_forward(mhub_backend *be, float *out, const float *in, int64_t n)
{
    MHUB_TRY(mhub_args_gelu_forward(out, in, n));
    gelu_args a = {out, in, NULL};
    mhub_cpu_parallel_ranges(be, n, gelu_forward_range, &a);
    return MHUB_OK;
}

/* din may be dout; in is separate from din. */
mhub_status mhub_cpu_gelu_backward(mhub_backend *be, float *din, const float *in,
                                   const float *dout, int64_t n)
{
    MHUB_TRY(mhub_args_gelu_backward(din, in, dout, n));
    gelu_args a = {din, in, dout};
    mhub_cpu_parallel_ranges(be, n, gelu_backward_range, &a);
    return MHUB_OK;
}

/* ---- softmax + cross-entropy ---- */

/* The one check that reads memory, so it stays with the kernel (the
 * arguments' own checks are in src/backend_args.c); made before anything
 * is written, so a bad batch leaves no output. `op` names the operation. */
static mhub_status check_targets(const char *op, const int32_t *targets, int64_t rows,
                                 int64_t classes)
{
    for (int64_t r = 0; r < rows; r++) {
        if (targets[r] < 0 || targets[r] >= classes)
            return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                                 "targets[%" PRId64 "] = %" PRId32 " is outside [0, %" PRId64 ")",
                                 r, targets[r], classes);
    }
    return MHUB_OK;
}

/* VEC_BLOCK running maxima, one per lane (a single running max is a serial
 * dependency, like a sum). Each lane keeps its first value if that is a
 * NaN, and the lanes are combined into a max that starts from x[0], so as
 * with one running max the result is NaN exactly when x[0] is. */
static inline void max_run(float *restrict acc, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
}

static float row_max(const float *x, int64_t n)
{
    float m = x[0];
    int64_t body = vec_prefix(n);
    if (body > 0) {
        float acc[VEC_BLOCK];
        memcpy(acc, x, sizeof acc);
        max_run(acc, x + VEC_BLOCK, body - VEC_BLOCK);
        for (int j = 0; j < VEC_BLOCK; j++)
            m = acc[j] > m ? acc[j] : m;
    }
    for (int64_t i = body; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* The same lane scheme for a double sum of floats (cf. sum_squares). */
static inline void sum_run(double *restrict acc, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] += (double)x[i + j];
}

/* Short rows (an MLP's 10 classes) skip the lanes: combining them would
 * cost more than the row. */
static double row_sum(const float *x, int64_t n)
{
    double sum = 0.0;
    int64_t body = vec_prefix(n);
    if (body > 0) {
        double acc[VEC_BLOCK] = {0};
        sum_run(acc, x, body);
        for (int j = 0; j < VEC_BLOCK; j++)
            sum += acc[j];
    }
    for (int64_t i = body; i < n; i++)
        sum += (double)x[i];
    return sum;
}

/* x[0..n) -= s, n a multiple of VEC_BLOCK, one block per outer step.
 * The usual single loop over a vec_prefix() length does not vectorize
 * here: inlined into the row loop, gcc 12 hoists the prefix length out as
 * a new value that no longer records its zero low bits, so the count no
 * longer looks like whole vectors; the inner loop's count is a constant. */
static inline void sub_blocks(float *restrict x, int64_t n, float s)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            x[i + j] -= s;
}

static inline void sub_into_blocks(float *restrict dst, const float *restrict src, int64_t n,
                                   float s)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            dst[i + j] = src[i + j] - s;
}

/* dst = src - s, where dst is src or a separate array. */
static void sub_into(float *dst, const float *src, int64_t n, float s)
{
    int64_t body = vec_prefix(n);
    if (dst == src) {
        sub_blocks(dst, body, s);
        for (int64_t i = body; i < n; i++)
            dst[i] -= s;
    } else {
        sub_into_blocks(dst, src, body, s);
        for (int64_t i = body; i < n; i++)
            dst[i] = src[i] - s;
    }
}

static inline void exp_run(float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = vexpf(x[i]);
}

/* Rows are handled in groups of about this many elements, small enough
 * to stay in L1/L2 between the passes over them below. */
#define SOFTMAX_GROUP 4096

/* A group of rows: p = softmax(x) row by row, losses = -log p[t]; p may
 * be x. Three passes, so that the exps run as one flat loop over the
 * whole group, which vectorizes however short the rows are (an MLP's 10
 * classes would leave a per-row loop all remainder):
 *   1. d = x - max(x) into p (so no exp overflows), and d[t] into losses
 *      (losses is separate from p and x, so it can hold d[t] meanwhile);
 *   2. p = e^d over the group;
 *   3. per row, the sum, p /= sum, and the loss log(sum) - d[t].
 * The loss comes from the logits rather than as -log(p[t]), which would
 * be Inf once p[t] underflows. d[t] is the float difference that p[t]
 * came from; since d[t] <= 0 <= log(sum), its rounding (half an ulp of
 * d[t]) is at most half an ulp of the loss.
 * Always inlined into its caller's vector clones: as a function of its
 * own (cloned or not), gcc 12 left its exp loop scalar. */
static inline __attribute__((always_inline)) void
softmax_xent_group(float *p, float *losses, const float *x, const int32_t *targets, int64_t rows,
                   int64_t classes)
{
    for (int64_t r = 0; r < rows; r++) {
        float *pr = p + r * classes;
        sub_into(pr, x + r * classes, classes, row_max(x + r * classes, classes));
        losses[r] = pr[targets[r]];
    }
    int64_t n = rows * classes, body = vec_prefix(n);
    exp_run(p, body);
    exp_run(p + body, n - body);
    for (int64_t r = 0; r < rows; r++) {
        float *pr = p + r * classes;
        double sum = row_sum(pr, classes); /* >= 1: the max contributes e^0 */
        scale_in_place(pr, classes, (float)(1.0 / sum));
        losses[r] = (float)(log(sum) - (double)losses[r]);
    }
}

typedef struct xent_args {
    float *out;          /* forward: probs; backward: dlogits */
    float *losses;       /* forward only */
    const float *in;     /* forward: logits; backward: probs */
    const int32_t *targets;
    int64_t classes;
    float dloss;         /* backward only */
} xent_args;

/* Rows [lo, hi), a group of rows at a time. */
CPU_VECTOR_CLONES static void softmax_xent_forward_range(void *p, int64_t lo, int64_t hi)
{
    const xent_args *a = p;
    int64_t c = a->classes;
    int64_t group = c > 0 && c < SOFTMAX_GROUP ? SOFTMAX_GROUP / c : 1;
    for (int64_t r = lo; r < hi; r += group) {
        int64_t k = hi - r < group ? hi - r : group;
        softmax_xent_group(a->out + r * c, a->losses + r, a->in + r * c, a->targets + r, k, c);
    }
}

CPU_VECTOR_CLONES static void softmax_xent_backward_range(void *p, int64_t lo, int64_t hi)
{
    const xent_args *a = p;
    int64_t c = a->classes;
    for (int64_t r = lo; r < hi; r++) {
        float *d = a->out + r * c;
        const float *pr = a->in + r * c;
        int32_t t = a->targets[r];
        float pt = pr[t]; /* before d (possibly pr) is overwritten */
        scale_into(d, pr, c, a->dloss);
        d[t] = (pt - 1.0f) * a->dloss;
    }
}

/* probs may be logits (the softmax then overwrites them). */
mhub_status mhub_cpu_softmax_xent_forward(mhub_backend *be, float *probs, float *losses,
                                          const float *logits, const int32_t *targets,
                                          int64_t rows, int64_t classes)
{
    MHUB_TRY(mhub_args_softmax_xent_forward(probs, losses, logits, targets, rows, classes));
    MHUB_TRY(check_targets("softmax_xent_forward", targets, rows, classes));
    xent_args a = {probs, losses, logits, targets, classes, 0.0f};
    mhub_cpu_parallel_rows(be, rows, classes, softmax_xent_forward_range, &a);
    return MHUB_OK;
}

/* dlogits may be probs (the gradient then overwrites them). */
mhub_status mhub_cpu_softmax_xent_backward(mhub_backend *be, float *dlogits, const float *probs,
                                           const int32_t *targets, int64_t rows,
                                           int64_t classes, float dloss)
{
    MHUB_TRY(mhub_args_softmax_xent_backward(dlogits, probs, targets, rows, classes, dloss));
    MHUB_TRY(check_targets("softmax_xent_backward", targets, rows, classes));
    xent_args a = {dlogits, NULL, probs, targets, classes, dloss};
    mhub_cpu_parallel_rows(be, rows, classes, softmax_xent_backward_range, &a);
    return MHUB_OK;
}

/* ---- cast ---- */

/* dtype.h offers only per-element conversions, compiled in another
 * translation unit; these loops call them and so do not vectorize. */
static void f32_to_bf16_n(void *dst, const void *src, int64_t n)
{
    uint16_t *d = dst;
    const float *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_f32_to_bf16(s[i]);
}

static void f32_to_f16_n(void *dst, const void *src, int64_t n)
{
    uint16_t *d = dst;
    const float *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_f32_to_f16(s[i]);
}

static void bf16_to_f32_n(void *dst, const void *src, int64_t n)
{
    float *d = dst;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_bf16_to_f32(s[i]);
}

static void f16_to_f32_n(void *dst, const void *src, int64_t n)
{
    float *d = dst;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_f16_to_f32(s[i]);
}

/* Between the 16-bit types through f32: widening is exact, so there is
 * only one rounding. */
static void bf16_to_f16_n(void *dst, const void *src, int64_t n)
{
    uint16_t *d = dst;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_f32_to_f16(mhub_bf16_to_f32(s[i]));
}

static void f16_to_bf16_n(void *dst, const void *src, int64_t n)
{
    uint16_t *d = dst;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        d[i] = mhub_f32_to_bf16(mhub_f16_to_f32(s[i]));
}

static void copy4_n(void *dst, const void *src, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static void copy2_n(void *dst, const void *src, int64_t n) { memcpy(dst, src, (size_t)n * 2); }

typedef void (*convert_fn)(void *dst, const void *src, int64_t n);

/* converters[dst dtype][src dtype] */
static const convert_fn converters[MHUB_DTYPE_COUNT][MHUB_DTYPE_COUNT] = {
    [MHUB_F32] = {[MHUB_F32] = copy4_n, [MHUB_BF16] = bf16_to_f32_n, [MHUB_F16] = f16_to_f32_n},
    [MHUB_BF16] = {[MHUB_F32] = f32_to_bf16_n, [MHUB_BF16] = copy2_n, [MHUB_F16] = f16_to_bf16_n},
    [MHUB_F16] = {[MHUB_F32] = f32_to_f16_n, [MHUB_BF16] = bf16_to_f16_n, [MHUB_F16] = copy2_n},
};

mhub_status mhub_cpu_cast(mhub_backend *be, void *dst, mhub_dtype dst_dtype, const void *src,
                          mhub_dtype src_dtype, int64_t n)
{
    MHUB_TRY(mhub_args_cast(dst, dst_dtype, src, src_dtype, n));
    if (n == 0 || (dst == src && dst_dtype == src_dtype))
        return MHUB_OK;
    converters[dst_dtype][src_dtype](dst, src, n);
    return MHUB_OK;
}

/* ---- scale, axpy, sum of squares ---- */

mhub_status mhub_cpu_scale(mhub_backend *be, float *x, int64_t n, float alpha)
{
    MHUB_TRY(mhub_args_scale(x, n, alpha));
    if (n == 0)
        return MHUB_OK; /* x may be NULL, and NULL + 0 is undefined */
    scale_in_place(x, n, alpha);
    return MHUB_OK;
}

static inline void axpy_run(float *restrict y, const float *restrict x, int64_t n, float alpha)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

mhub_status mhub_cpu_axpy(mhub_backend *be, float *y, const float *x, int64_t n, float alpha)
{
    MHUB_TRY(mhub_args_axpy(y, x, n, alpha));
    if (n == 0)
        return MHUB_OK;
    int64_t body = vec_prefix(n);
    axpy_run(y, x, body, alpha);
    axpy_run(y + body, x + body, n - body, alpha);
    return MHUB_OK;
}

/* VEC_BLOCK independent partial sums, one per lane: a single running sum
 * would be a serial dependency that gcc may not reorder (without
 * -ffast-math), so it would not vectorize. */
static inline void sum_squares_run(double *restrict acc, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] += (double)x[i + j] * (double)x[i + j];
}

mhub_status mhub_cpu_sum_squares(mhub_backend *be, const float *x, int64_t n, double *out)
{
    MHUB_TRY(mhub_args_sum_squares(x, n, out));
    double acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    sum_squares_run(acc, x, body);
    double sum = 0.0;
    for (int j = 0; j < VEC_BLOCK; j++)
        sum += acc[j];
    for (int64_t i = body; i < n; i++)
        sum += (double)x[i] * (double)x[i];
    *out = sum;
    return MHUB_OK;
}

/* ---- random fills ---- */

mhub_status mhub_cpu_fill_normal(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                 uint64_t stream, uint64_t offset, float mean, float std)
{
    MHUB_TRY(mhub_args_fill_normal(dst, n, mean, std));
    mhub_rng_fill_normal(dst, n, seed, stream, offset, mean, std);
    return MHUB_OK;
}

mhub_status mhub_cpu_fill_uniform(mhub_backend *be, float *dst, int64_t n, uint64_t seed,
                                  uint64_t stream, uint64_t offset, float lo, float hi)
{
    MHUB_TRY(mhub_args_fill_uniform(dst, n, lo, hi));
    mhub_rng_fill_uniform(dst, n, seed, stream, offset, lo, hi);
    return MHUB_OK;
}

/* ---- optimizers ---- */

static inline void sgd_run(float *restrict param, const float *restrict grad, int64_t n,
                           float lr, float weight_decay)
{
    for (int64_t i = 0; i < n; i++)
        param[i] -= lr * (grad[i] + weight_decay * param[i]);
}

static inline void sgd_momentum_run(float *restrict param, const float *restrict grad,
                                    float *restrict buf, int64_t n, float lr, float momentum,
                                    float weight_decay)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i] + weight_decay * param[i];
        float b = momentum * buf[i] + g;
        buf[i] = b;
        param[i] -= lr * b;
    }
}

typedef struct sgd_args {
    float *param;
    const float *grad;
    float *buf;
    float lr, momentum, weight_decay;
} sgd_args;

/* Elements [lo, hi): a vector-block body, then the remainder. */
static void sgd_range(void *p, int64_t lo, int64_t hi)
{
    const sgd_args *a = p;
    int64_t body = lo + vec_prefix(hi - lo);
    if (a->buf) {
        sgd_momentum_run(a->param + lo, a->grad + lo, a->buf + lo, body - lo, a->lr,
                         a->momentum, a->weight_decay);
        sgd_momentum_run(a->param + body, a->grad + body, a->buf + body, hi - body, a->lr,
                         a->momentum, a->weight_decay);
    } else {
        sgd_run(a->param + lo, a->grad + lo, body - lo, a->lr, a->weight_decay);
        sgd_run(a->param + body, a->grad + body, hi - body, a->lr, a->weight_decay);
    }
}

mhub_status mhub_cpu_sgd_step(mhub_backend *be, float *param, const float *grad,
                              float *momentum_buf, int64_t n, float lr, float momentum,
                              float weight_decay)
{
    MHUB_TRY(mhub_args_sgd_step(param, grad, momentum_buf, n, lr, momentum, weight_decay));
    if (n == 0)
        return MHUB_OK;
    sgd_args a = {param, grad, momentum_buf, lr, momentum, weight_decay};
    mhub_cpu_parallel_ranges(be, n, sgd_range, &a);
    return MHUB_OK;
}

/* The per-step scalars of AdamW, arranged as PyTorch computes them:
 * param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), which is
 * lr * mhat / (sqrt(vhat) + eps) with mhat = m / bc1, vhat = v / bc2. */
typedef struct adamw_coef {
    float decay;          /* 1 - lr * weight_decay */
    float beta1, beta2;
    float one_minus_beta1, one_minus_beta2;
    float step_size;      /* lr / (1 - beta1^t) */
    float inv_sqrt_bc2;   /* 1 / sqrt(1 - beta2^t) */
    float eps;
} adamw_coef;

/* Vectorized (sqrt and division are correctly rounded in vector form
 * too, so the bits are the scalar loop's): the build's -fno-math-errno
 * lets sqrtf be an instruction, and adamw_range gives it whole vector
 * blocks. Scalar, the two instructions per element made AdamW compute
 * bound: 132 ms over 124 M parameters on 2 threads, against 26 GB/s. */
static inline void adamw_run(float *restrict param, const float *restrict grad,
                             float *restrict m, float *restrict v, int64_t n, adamw_coef k)
{
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float mi = k.beta1 * m[i] + k.one_minus_beta1 * g;
        float vi = k.beta2 * v[i] + k.one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) * k.inv_sqrt_bc2 + k.eps;
        param[i] = param[i] * k.decay - k.step_size * mi / denom;
    }
}

typedef struct adamw_args {
    float *param;
    const float *grad;
    float *m, *v;
    adamw_coef k;
} adamw_args;

/* Elements [lo, hi): a vector-block body, then the remainder. */
CPU_VECTOR_CLONES static void adamw_range(void *p, int64_t lo, int64_t hi)
{
    const adamw_args *a = p;
    int64_t body = lo + vec_prefix(hi - lo);
    adamw_run(a->param + lo, a->grad + lo, a->m + lo, a->v + lo, body - lo, a->k);
    adamw_run(a->param + body, a->grad + body, a->m + body, a->v + body, hi - body, a->k);
}

mhub_status mhub_cpu_adamw_step(mhub_backend *be, float *param, const float *grad, float *m,
                                float *v, int64_t n, float lr, float beta1, float beta2,
                                float eps, float weight_decay, int64_t t)
{
    MHUB_TRY(mhub_args_adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t));
    /* Bias corrections in double: beta2^t is close to 1 for small t, and
     * 1 - beta2^t would lose digits in float. */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    adamw_coef k = {
        .decay = (float)(1.0 - (double)lr * (double)weight_decay),
        .beta1 = beta1,
        .beta2 = beta2,
        .one_minus_beta1 = (float)(1.0 - (double)beta1),
        .one_minus_beta2 = (float)(1.0 - (double)beta2),
        .step_size = (float)((double)lr / bc1),
        .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
        .eps = eps,
    };
    adamw_args a = {param, grad, m, v, k};
    mhub_cpu_parallel_ranges(be, n, adamw_range, &a);
    return MHUB_OK;
}
