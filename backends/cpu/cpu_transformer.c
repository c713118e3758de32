/* cpu_transformer.c - the CPU backend's transformer kernels: embedding,
 * LayerNorm, RMSNorm, SwiGLU, rotary embedding and causal grouped-query
 * attention (contracts in include/mhub/backend.h).
 *
 * Written like cpu_kernels.c, whose helpers (VEC_BLOCK, vexpf) come from
 * cpu_internal.h: every kernel checks all of its arguments before it
 * writes anything (src/backend_args.h; only the ids' range, which reads
 * memory, is checked here), and the elementwise loops are restrict-
 * qualified, branch-free and split into whole VEC_BLOCK blocks plus a
 * remainder so that gcc vectorizes them at -O2. The block loops here are
 * always written as an outer step of VEC_BLOCK over an inner loop of
 * constant count: they are inlined into per-row loops, where a single loop
 * over a vec_prefix() length stops looking like whole vectors to gcc 12
 * (see sub_blocks in cpu_kernels.c).
 *
 * Attention runs its matrix products through cblas_sgemm, one head at a
 * time, reading Q, K and V in place inside the qkv rows (row stride = the
 * qkv row width); only the softmax and its backward are loops here. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backends/cpu/cpu_internal.h"
#include "src/backend_args.h"

/* ---- lane reductions (cf. sum_squares in cpu_kernels.c) ----
 * A single running sum is a serial dependency that gcc may not reorder
 * without -ffast-math, so sums are kept in VEC_BLOCK lanes, in double:
 * a row of thousands of floats then loses nothing to the accumulation. */

static double lanes_total(const double *acc)
{
    double s = 0.0;
    for (int j = 0; j < VEC_BLOCK; j++)
        s += acc[j];
    return s;
}

static inline void sum_blocks(double *restrict acc, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] += (double)x[i + j];
}

static double row_sum(const float *x, int64_t n)
{
    double acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    sum_blocks(acc, x, body);
    double s = lanes_total(acc);
    for (int64_t i = body; i < n; i++)
        s += (double)x[i];
    return s;
}

/* sum of (x - c)^2, c in double: the second pass of a two-pass variance. */
static inline void sqdev_blocks(double *restrict acc, const float *restrict x, int64_t n,
                                double c)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            double d = (double)x[i + j] - c;
            acc[j] += d * d;
        }
}

static double row_sqdev(const float *x, int64_t n, double c)
{
    double acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    sqdev_blocks(acc, x, body, c);
    double s = lanes_total(acc);
    for (int64_t i = body; i < n; i++) {
        double d = (double)x[i] - c;
        s += d * d;
    }
    return s;
}

static inline void dot_blocks(double *restrict acc, const float *restrict x,
                              const float *restrict y, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] += (double)x[i + j] * (double)y[i + j];
}

static double row_dot(const float *x, const float *y, int64_t n)
{
    double acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    dot_blocks(acc, x, y, body);
    double s = lanes_total(acc);
    for (int64_t i = body; i < n; i++)
        s += (double)x[i] * (double)y[i];
    return s;
}

/* ---- embedding ---- */

/* The one check that reads memory, so it stays with the kernel; made
 * before anything is written, so a bad batch leaves no output. `op` names
 * the operation. */
static mhub_status check_ids(const char *op, const int32_t *ids, int64_t rows, int64_t vocab)
{
    for (int64_t r = 0; r < rows; r++)
        if (ids[r] < 0 || ids[r] >= vocab)
            return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                                 "ids[%" PRId64 "] = %" PRId32 " is outside [0, vocab = %" PRId64
                                 ")",
                                 r, ids[r], vocab);
    return MHUB_OK;
}

static inline void add_blocks(float *restrict y, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            y[i + j] += x[i + j];
}

/* y[0..n) += x[0..n), separate arrays. */
static void add_row(float *y, const float *x, int64_t n)
{
    int64_t body = vec_prefix(n);
    add_blocks(y, x, body);
    for (int64_t i = body; i < n; i++)
        y[i] += x[i];
}

mhub_status mhub_cpu_embedding_forward(mhub_backend *be, float *out, const float *table,
                                       const int32_t *ids, int64_t rows, int64_t vocab,
                                       int64_t dim, bool accumulate)
{
    MHUB_TRY(mhub_args_embedding_forward(out, table, ids, rows, vocab, dim));
    MHUB_TRY(check_ids("embedding_forward", ids, rows, vocab));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++) {
        const float *src = table + (int64_t)ids[r] * dim;
        if (accumulate)
            add_row(out + r * dim, src, dim);
        else
            memcpy(out + r * dim, src, f32_bytes(dim));
    }
    return MHUB_OK;
}

/* One row at a time, in order, so repeated ids add up in the same order on
 * every run (a parallel scatter would make the float sums depend on the
 * schedule). */
mhub_status mhub_cpu_embedding_backward(mhub_backend *be, float *dtable, const float *dout,
                                        const int32_t *ids, int64_t rows, int64_t vocab,
                                        int64_t dim)
{
    MHUB_TRY(mhub_args_embedding_backward(dtable, dout, ids, rows, vocab, dim));
    MHUB_TRY(check_ids("embedding_backward", ids, rows, vocab));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        add_row(dtable + (int64_t)ids[r] * dim, dout + r * dim, dim);
    return MHUB_OK;
}

/* ---- LayerNorm and RMSNorm ----
 * Statistics: the mean and the variance of a row are computed in double by
 * two passes (the mean, then the mean of squared deviations from it), which
 * is stable however large the mean is next to the spread; the one-pass
 * E[x^2] - E[x]^2 would cancel catastrophically there. rstd is
 * 1/sqrt(var + eps) in double, and both are saved as floats.
 * The elementwise maps run in float on the SAVED mean and rstd, so the
 * backward recomputes exactly the normalized values the forward used.
 * Arrays are [rows, dim], weight and bias [dim], statistics [rows]; with
 * rows or dim 0 there is nothing to normalize, and nothing is required of
 * the pointers or written. */

static inline void layernorm_blocks(float *restrict out, const float *restrict x,
                                    const float *restrict w, const float *restrict b, int64_t n,
                                    float mean, float rstd)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            out[i + j] = (x[i + j] - mean) * rstd * w[i + j] + b[i + j];
}

static inline void layernorm_nobias_blocks(float *restrict out, const float *restrict x,
                                           const float *restrict w, int64_t n, float mean,
                                           float rstd)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            out[i + j] = (x[i + j] - mean) * rstd * w[i + j];
}

static void layernorm_row(float *out, float *mean_out, float *rstd_out, const float *x,
                          const float *w, const float *b, int64_t n, float eps)
{
    double mu = row_sum(x, n) / (double)n;
    double var = row_sqdev(x, n, mu) / (double)n;
    float mean = (float)mu;
    float rstd = (float)(1.0 / sqrt(var + (double)eps));
    *mean_out = mean;
    *rstd_out = rstd;
    int64_t body = vec_prefix(n);
    if (b) {
        layernorm_blocks(out, x, w, b, body, mean, rstd);
        for (int64_t i = body; i < n; i++)
            out[i] = (x[i] - mean) * rstd * w[i] + b[i];
    } else {
        layernorm_nobias_blocks(out, x, w, body, mean, rstd);
        for (int64_t i = body; i < n; i++)
            out[i] = (x[i] - mean) * rstd * w[i];
    }
}

mhub_status mhub_cpu_layernorm_forward(mhub_backend *be, float *out, float *mean, float *rstd,
                                       const float *in, const float *weight, const float *bias,
                                       int64_t rows, int64_t dim, float eps)
{
    MHUB_TRY(mhub_args_layernorm_forward(out, mean, rstd, in, weight, bias, rows, dim, eps));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        layernorm_row(out + r * dim, mean + r, rstd + r, in + r * dim, weight, bias, dim, eps);
    return MHUB_OK;
}

/* The two row sums of the LayerNorm backward, g = dout * w and
 * xhat = (x - mean) * rstd: sum(g) and sum(g * xhat), in double lanes. */
static inline void layernorm_sums_blocks(double *restrict sg, double *restrict sgx,
                                         const float *restrict dy, const float *restrict x,
                                         const float *restrict w, int64_t n, float mean,
                                         float rstd)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float g = dy[i + j] * w[i + j];
            float xh = (x[i + j] - mean) * rstd;
            sg[j] += (double)g;
            sgx[j] += (double)(g * xh);
        }
}

/* din = rstd * (g - mean(g) - xhat * mean(g * xhat)); dweight += dy * xhat;
 * dbias += dy. */
static inline void layernorm_grad_blocks(float *restrict dx, float *restrict dw,
                                         float *restrict db, const float *restrict dy,
                                         const float *restrict x, const float *restrict w,
                                         int64_t n, float mean, float rstd, float c1, float c2)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float xh = (x[i + j] - mean) * rstd;
            dx[i + j] = rstd * (dy[i + j] * w[i + j] - c1 - xh * c2);
            dw[i + j] += dy[i + j] * xh;
            db[i + j] += dy[i + j];
        }
}

static inline void layernorm_grad_nobias_blocks(float *restrict dx, float *restrict dw,
                                                const float *restrict dy,
                                                const float *restrict x,
                                                const float *restrict w, int64_t n, float mean,
                                                float rstd, float c1, float c2)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float xh = (x[i + j] - mean) * rstd;
            dx[i + j] = rstd * (dy[i + j] * w[i + j] - c1 - xh * c2);
            dw[i + j] += dy[i + j] * xh;
        }
}

static void layernorm_backward_row(float *dx, float *dw, float *db, const float *dy,
                                   const float *x, const float *w, int64_t n, float mean,
                                   float rstd)
{
    double sg_acc[VEC_BLOCK] = {0}, sgx_acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    layernorm_sums_blocks(sg_acc, sgx_acc, dy, x, w, body, mean, rstd);
    double sg = lanes_total(sg_acc), sgx = lanes_total(sgx_acc);
    for (int64_t i = body; i < n; i++) {
        float g = dy[i] * w[i];
        sg += (double)g;
        sgx += (double)(g * ((x[i] - mean) * rstd));
    }
    float c1 = (float)(sg / (double)n), c2 = (float)(sgx / (double)n);
    if (db)
        layernorm_grad_blocks(dx, dw, db, dy, x, w, body, mean, rstd, c1, c2);
    else
        layernorm_grad_nobias_blocks(dx, dw, dy, x, w, body, mean, rstd, c1, c2);
    for (int64_t i = body; i < n; i++) {
        float xh = (x[i] - mean) * rstd;
        dx[i] = rstd * (dy[i] * w[i] - c1 - xh * c2);
        dw[i] += dy[i] * xh;
        if (db)
            db[i] += dy[i];
    }
}

mhub_status mhub_cpu_layernorm_backward(mhub_backend *be, float *din, float *dweight,
                                        float *dbias, const float *dout, const float *in,
                                        const float *weight, const float *mean,
                                        const float *rstd, int64_t rows, int64_t dim)
{
    MHUB_TRY(mhub_args_layernorm_backward(din, dweight, dbias, dout, in, weight, mean, rstd, rows,
                                          dim));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        layernorm_backward_row(din + r * dim, dweight, dbias, dout + r * dim, in + r * dim,
                               weight, dim, mean[r], rstd[r]);
    return MHUB_OK;
}

static inline void rmsnorm_blocks(float *restrict out, const float *restrict x,
                                  const float *restrict w, int64_t n, float rstd)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            out[i + j] = x[i + j] * rstd * w[i + j];
}

/* mean(x^2) accumulates in double (the dot of the row with itself), so no
 * second pass is needed: there is no subtraction to cancel. */
static void rmsnorm_row(float *out, float *rstd_out, const float *x, const float *w, int64_t n,
                        float eps)
{
    double ms = row_dot(x, x, n) / (double)n;
    float rstd = (float)(1.0 / sqrt(ms + (double)eps));
    *rstd_out = rstd;
    int64_t body = vec_prefix(n);
    rmsnorm_blocks(out, x, w, body, rstd);
    for (int64_t i = body; i < n; i++)
        out[i] = x[i] * rstd * w[i];
}

mhub_status mhub_cpu_rmsnorm_forward(mhub_backend *be, float *out, float *rstd, const float *in,
                                     const float *weight, int64_t rows, int64_t dim, float eps)
{
    MHUB_TRY(mhub_args_rmsnorm_forward(out, rstd, in, weight, rows, dim, eps));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        rmsnorm_row(out + r * dim, rstd + r, in + r * dim, weight, dim, eps);
    return MHUB_OK;
}

/* sum(g * xhat) with g = dy * w, xhat = x * rstd. */
static inline void rmsnorm_sum_blocks(double *restrict acc, const float *restrict dy,
                                      const float *restrict x, const float *restrict w,
                                      int64_t n, float rstd)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] += (double)(dy[i + j] * w[i + j] * (x[i + j] * rstd));
}

/* out = xhat * w with xhat = x * rstd, rstd = (mean(x^2) + eps)^(-1/2), so
 * din = rstd * (g - xhat * mean(g * xhat)); dweight += dy * xhat. */
static inline void rmsnorm_grad_blocks(float *restrict dx, float *restrict dw,
                                       const float *restrict dy, const float *restrict x,
                                       const float *restrict w, int64_t n, float rstd, float c)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float xh = x[i + j] * rstd;
            dx[i + j] = rstd * (dy[i + j] * w[i + j] - xh * c);
            dw[i + j] += dy[i + j] * xh;
        }
}

static void rmsnorm_backward_row(float *dx, float *dw, const float *dy, const float *x,
                                 const float *w, int64_t n, float rstd)
{
    double acc[VEC_BLOCK] = {0};
    int64_t body = vec_prefix(n);
    rmsnorm_sum_blocks(acc, dy, x, w, body, rstd);
    double s = lanes_total(acc);
    for (int64_t i = body; i < n; i++)
        s += (double)(dy[i] * w[i] * (x[i] * rstd));
    float c = (float)(s / (double)n);
    rmsnorm_grad_blocks(dx, dw, dy, x, w, body, rstd, c);
    for (int64_t i = body; i < n; i++) {
        float xh = x[i] * rstd;
        dx[i] = rstd * (dy[i] * w[i] - xh * c);
        dw[i] += dy[i] * xh;
    }
}

mhub_status mhub_cpu_rmsnorm_backward(mhub_backend *be, float *din, float *dweight,
                                      const float *dout, const float *in, const float *weight,
                                      const float *rstd, int64_t rows, int64_t dim)
{
    MHUB_TRY(mhub_args_rmsnorm_backward(din, dweight, dout, in, weight, rstd, rows, dim));
    if (rows == 0 || dim == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++)
        rmsnorm_backward_row(din + r * dim, dweight, dout + r * dim, in + r * dim, weight, dim,
                             rstd[r]);
    return MHUB_OK;
}

/* ---- SwiGLU ---- */

/* sigmoid(g) = 1 / (1 + e^-g) by vexpf, so that the loops vectorize. For
 * g below about -88, e^-g is +Inf and the sigmoid its limit 0; silu(g) =
 * g * sigmoid(g) is then -0, its correct limit, not a NaN. */
static inline float sigmoidf_v(float g) { return 1.0f / (1.0f + vexpf(-g)); }

static inline void swiglu_blocks(float *restrict out, const float *restrict gate,
                                 const float *restrict up, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            out[i + j] = gate[i + j] * sigmoidf_v(gate[i + j]) * up[i + j];
}

static void swiglu_row(float *out, const float *gate, const float *up, int64_t n)
{
    int64_t body = vec_prefix(n);
    swiglu_blocks(out, gate, up, body);
    for (int64_t i = body; i < n; i++)
        out[i] = gate[i] * sigmoidf_v(gate[i]) * up[i];
}

mhub_status mhub_cpu_swiglu_forward(mhub_backend *be, float *out, const float *in, int64_t rows,
                                    int64_t ffn)
{
    MHUB_TRY(mhub_args_swiglu_forward(out, in, rows, ffn));
    if (rows == 0 || ffn == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++) {
        const float *x = in + r * 2 * ffn;
        swiglu_row(out + r * ffn, x, x + ffn, ffn);
    }
    return MHUB_OK;
}

/* out = silu(g) u: d/du = silu(g) = g s, d/dg = u s (1 + g (1 - s)),
 * s = sigmoid(g). */
static inline void swiglu_grad_blocks(float *restrict dgate, float *restrict dup,
                                      const float *restrict dy, const float *restrict gate,
                                      const float *restrict up, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float g = gate[i + j], s = sigmoidf_v(g);
            dgate[i + j] = dy[i + j] * up[i + j] * s * (1.0f + g * (1.0f - s));
            dup[i + j] = dy[i + j] * g * s;
        }
}

static void swiglu_backward_row(float *dgate, float *dup, const float *dy, const float *gate,
                                const float *up, int64_t n)
{
    int64_t body = vec_prefix(n);
    swiglu_grad_blocks(dgate, dup, dy, gate, up, body);
    for (int64_t i = body; i < n; i++) {
        float g = gate[i], s = sigmoidf_v(g);
        dgate[i] = dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = dy[i] * g * s;
    }
}

mhub_status mhub_cpu_swiglu_backward(mhub_backend *be, float *din, const float *dout,
                                     const float *in, int64_t rows, int64_t ffn)
{
    MHUB_TRY(mhub_args_swiglu_backward(din, dout, in, rows, ffn));
    if (rows == 0 || ffn == 0)
        return MHUB_OK;
    for (int64_t r = 0; r < rows; r++) {
        float *dx = din + r * 2 * ffn;
        const float *x = in + r * 2 * ffn;
        swiglu_backward_row(dx, dx + ffn, dout + r * ffn, x, x + ffn, ffn);
    }
    return MHUB_OK;
}

/* ---- the grouped qkv layout (shared by RoPE and attention) ---- */

typedef struct qkv_shape {
    int64_t batch, seq, heads, groups, head_dim;
    int64_t per_group;    /* query heads per group: heads / groups */
    int64_t width;        /* a qkv row: (heads + 2 groups) * head_dim */
    int64_t out_width;    /* an attention output row: heads * head_dim */
    int64_t qkv_n;        /* elements of qkv */
} qkv_shape;

/* The layout of sizes that passed their op's argument check (which rules
 * out overflow and a group count that does not divide the heads). */
static qkv_shape qkv_shape_of(int64_t batch, int64_t seq, int64_t heads, int64_t groups,
                              int64_t head_dim)
{
    int64_t width = (heads + 2 * groups) * head_dim;
    return (qkv_shape){.batch = batch, .seq = seq, .heads = heads, .groups = groups,
                       .head_dim = head_dim, .per_group = groups > 0 ? heads / groups : 0,
                       .width = width, .out_width = heads * head_dim,
                       .qkv_n = batch * seq * width};
}

/* Column of query head h, and of group g's key head (its value head
 * follows): group g's heads start at g * (per_group + 2) heads. */
static int64_t q_col(const qkv_shape *s, int64_t h)
{
    int64_t g = h / s->per_group;
    return (g * (s->per_group + 2) + h % s->per_group) * s->head_dim;
}

static int64_t k_col(const qkv_shape *s, int64_t g)
{
    return (g * (s->per_group + 2) + s->per_group) * s->head_dim;
}

/* ---- rotary position embedding ---- */

/* Frequencies handled per pass: the cos/sin tables live on the stack. */
#define ROPE_CHUNK 64

/* (x1, x2) -> (x1 c - x2 s, x2 c + x1 s): rotate_half's form. x1 and x2
 * are the two halves of one head, disjoint ranges of the same row. */
static inline void rotate_blocks(float *restrict x1, float *restrict x2,
                                 const float *restrict c, const float *restrict s, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++) {
            float a = x1[i + j], b = x2[i + j];
            x1[i + j] = a * c[i + j] - b * s[i + j];
            x2[i + j] = b * c[i + j] + a * s[i + j];
        }
}

static void rotate(float *x1, float *x2, const float *c, const float *s, int64_t n)
{
    int64_t body = vec_prefix(n);
    rotate_blocks(x1, x2, c, s, body);
    for (int64_t i = body; i < n; i++) {
        float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
    }
}

/* Rotates frequencies [i0, i0 + n) of every query and key head of the rows
 * at position pos (one row per sequence of the batch). Per group the
 * per_group query heads and the key head are contiguous. */
static void rope_position(float *qkv, const qkv_shape *s, int64_t pos, int64_t i0, int64_t n,
                          const float *c, const float *sn)
{
    int64_t d = s->head_dim, half = d / 2;
    for (int64_t b = 0; b < s->batch; b++) {
        float *row = qkv + (b * s->seq + pos) * s->width;
        for (int64_t g = 0; g < s->groups; g++)
            for (int64_t k = 0; k <= s->per_group; k++) {
                float *x = row + (g * (s->per_group + 2) + k) * d + i0;
                rotate(x, x + half, c, sn, n);
            }
    }
}

/* sign = +1 rotates by +angle (the forward), -1 by -angle: the inverse,
 * which is also the transpose, so it maps output gradients to input ones.
 * Accuracy: frequencies base^(-2i/d) and angles pos * freq are computed in
 * double, and cos/sin of them in double, then rounded once to float. So
 * the tables are correctly rounded at any position; a float angle (as in
 * Hugging Face's f32 code) is off by up to pos * freq * 2^-24, ~1e-4 rad at
 * position 4096, so results can differ from it by that much. */
static void rope_apply(float *qkv, const qkv_shape *s, float base, float sign)
{
    int64_t d = s->head_dim, half = d / 2;
    double freq[ROPE_CHUNK];
    float c[ROPE_CHUNK], sn[ROPE_CHUNK];
    for (int64_t i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
        int64_t n = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
        for (int64_t i = 0; i < n; i++)
            freq[i] = pow((double)base, -2.0 * (double)(i0 + i) / (double)d);
        for (int64_t pos = 0; pos < s->seq; pos++) {
            for (int64_t i = 0; i < n; i++) {
                double angle = (double)pos * freq[i];
                c[i] = (float)cos(angle);
                sn[i] = sign * (float)sin(angle);
            }
            rope_position(qkv, s, pos, i0, n, c, sn);
        }
    }
}

mhub_status mhub_cpu_rope_forward(mhub_backend *be, float *qkv, int64_t batch, int64_t seq,
                                  int64_t heads, int64_t groups, int64_t head_dim, float base)
{
    MHUB_TRY(mhub_args_rope("rope_forward", qkv, batch, seq, heads, groups, head_dim, base));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    if (s.qkv_n > 0)
        rope_apply(qkv, &s, base, 1.0f);
    return MHUB_OK;
}

mhub_status mhub_cpu_rope_backward(mhub_backend *be, float *dqkv, int64_t batch, int64_t seq,
                                   int64_t heads, int64_t groups, int64_t head_dim, float base)
{
    MHUB_TRY(mhub_args_rope("rope_backward", dqkv, batch, seq, heads, groups, head_dim, base));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    if (s.qkv_n > 0)
        rope_apply(dqkv, &s, base, -1.0f);
    return MHUB_OK;
}

/* ---- causal attention ----
 * Per (batch, head), with T = seq, d = head_dim, scale = 1/sqrt(d):
 *   forward   S = scale Q K^T, P = softmax(S) over columns <= row, O = P V;
 *   backward  dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dP * P)),
 *             dQ = scale dS K, dK += scale dS^T Q.
 * The products are computed over row blocks of ATTN_BLOCK query rows: block
 * [r0, r1) needs only key columns [0, r1), so the GEMMs skip the blocks
 * above the diagonal (about half the work for long sequences) while each
 * stays large enough for BLAS; the entries above the diagonal inside the
 * diagonal block are computed and then masked. */
#define ATTN_BLOCK 128

static int64_t block_end(int64_t r0, int64_t seq)
{
    return seq - r0 < ATTN_BLOCK ? seq : r0 + ATTN_BLOCK;
}

static inline void max_blocks(float *restrict acc, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
}

/* max of x[0..n), n >= 1; the lanes start from x[0] (a valid element). */
static float row_max(const float *x, int64_t n)
{
    float acc[VEC_BLOCK];
    for (int j = 0; j < VEC_BLOCK; j++)
        acc[j] = x[0];
    int64_t body = vec_prefix(n);
    max_blocks(acc, x, body);
    float m = x[0];
    for (int j = 0; j < VEC_BLOCK; j++)
        m = acc[j] > m ? acc[j] : m;
    for (int64_t i = body; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

static inline void exp_shifted_blocks(float *restrict x, int64_t n, float shift)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            x[i + j] = vexpf(x[i + j] - shift);
}

static inline void scale_blocks(float *restrict x, int64_t n, float alpha)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            x[i + j] *= alpha;
}

/* Row t of P: softmax over its first n = t + 1 scores, with the row max
 * subtracted so no exp overflows (the max itself gives e^0 = 1, so the
 * sum is >= 1); then zeros up to the row's end, as the contract keeps the
 * entries above the diagonal 0. (Padding the row to whole vector blocks
 * with -Inf, to vectorize the tail, measured slower: e^-Inf reaches 0
 * through float underflow, which takes microcode assists on x86.) */
static void softmax_causal_row(float *p, int64_t n, int64_t row_len)
{
    float m = row_max(p, n);
    int64_t body = vec_prefix(n);
    exp_shifted_blocks(p, body, m);
    for (int64_t i = body; i < n; i++)
        p[i] = vexpf(p[i] - m);
    float inv = (float)(1.0 / row_sum(p, n));
    scale_blocks(p, body, inv);
    for (int64_t i = body; i < n; i++)
        p[i] *= inv;
    memset(p + n, 0, f32_bytes(row_len - n));
}

/* One (batch, head): q, k, v point at the head's columns of the sequence's
 * first qkv row, o at its columns of the first output row, p at its
 * seq x seq probabilities. */
static void attention_head_forward(const qkv_shape *s, float *o, float *p, const float *q,
                                   const float *k, const float *v, float scale)
{
    int T = (int)s->seq, d = (int)s->head_dim, W = (int)s->width, ow = (int)s->out_width;
    for (int r0 = 0; r0 < T; r0 = (int)block_end(r0, T)) {
        int r1 = (int)block_end(r0, T), nr = r1 - r0;
        /* S[r0:r1, 0:r1] = scale Q[r0:r1] K[0:r1]^T, into P's rows. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, r1, d, scale,
                    q + (int64_t)r0 * W, W, k, W, 0.0f, p + (int64_t)r0 * T, T);
        for (int t = r0; t < r1; t++)
            softmax_causal_row(p + (int64_t)t * T, t + 1, T);
        /* O[r0:r1] = P[r0:r1, 0:r1] V[0:r1] (P is 0 past the diagonal). */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, d, r1, 1.0f,
                    p + (int64_t)r0 * T, T, v, W, 0.0f, o + (int64_t)r0 * ow, ow);
    }
}

mhub_status mhub_cpu_causal_attention_forward(mhub_backend *be, float *out, float *probs,
                                              const float *qkv, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim)
{
    MHUB_TRY(mhub_args_causal_attention_forward(out, probs, qkv, batch, seq, heads, groups,
                                                head_dim));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    /* Any size 0 (head_dim included) leaves qkv empty: nothing to do. */
    if (s.qkv_n == 0)
        return MHUB_OK;
    float scale = (float)(1.0 / sqrt((double)head_dim));
    int64_t T = seq, d = head_dim;
    for (int64_t b = 0; b < batch; b++) {
        const float *rows = qkv + b * T * s.width;
        for (int64_t h = 0; h < heads; h++) {
            const float *k = rows + k_col(&s, h / s.per_group);
            attention_head_forward(&s, out + b * T * s.out_width + h * d,
                                   probs + (b * heads + h) * T * T, rows + q_col(&s, h), k,
                                   k + d, scale);
        }
    }
    return MHUB_OK;
}

static inline void softmax_grad_blocks(float *restrict ds, const float *restrict p, int64_t n,
                                       float dot)
{
    for (int64_t i = 0; i < n; i += VEC_BLOCK)
        for (int j = 0; j < VEC_BLOCK; j++)
            ds[i + j] = p[i + j] * (ds[i + j] - dot);
}

/* Row t: dP -> dS = P * (dP - sum(dP * P)) over its first n = t + 1
 * entries (the sum in double), then zeros for the rest of the block's
 * columns, which the GEMMs after it read. */
static void softmax_causal_backward_row(float *ds, const float *p, int64_t n, int64_t cols)
{
    float dot = (float)row_dot(ds, p, n);
    int64_t body = vec_prefix(n);
    softmax_grad_blocks(ds, p, body, dot);
    for (int64_t i = body; i < n; i++)
        ds[i] = p[i] * (ds[i] - dot);
    memset(ds + n, 0, f32_bytes(cols - n));
}

/* Pointers of one (batch, head) for the backward, like the forward's. */
typedef struct head_grad {
    const float *q, *k, *v, *p, *dout;
    float *dq, *dk, *dv, *ds;
} head_grad;

/* dq is overwritten; dk and dv accumulate, since the query heads of a
 * group share them (and row blocks add up). ds is seq x seq scratch. */
static void attention_head_backward(const qkv_shape *s, const head_grad *g, float scale)
{
    int T = (int)s->seq, d = (int)s->head_dim, W = (int)s->width, ow = (int)s->out_width;
    for (int r0 = 0; r0 < T; r0 = (int)block_end(r0, T)) {
        int r1 = (int)block_end(r0, T), nr = r1 - r0;
        const float *p = g->p + (int64_t)r0 * T, *dout = g->dout + (int64_t)r0 * ow;
        float *ds = g->ds + (int64_t)r0 * T;
        /* dV[0:r1] += P[r0:r1, 0:r1]^T dO[r0:r1] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, d, nr, 1.0f, p, T, dout, ow,
                    1.0f, g->dv, W);
        /* dP[r0:r1, 0:r1] = dO[r0:r1] V[0:r1]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, r1, d, 1.0f, dout, ow, g->v, W,
                    0.0f, ds, T);
        for (int t = r0; t < r1; t++)
            softmax_causal_backward_row(ds + (int64_t)(t - r0) * T, p + (int64_t)(t - r0) * T,
                                        t + 1, r1);
        /* dQ[r0:r1] = scale dS[r0:r1, 0:r1] K[0:r1] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, d, r1, scale, ds, T, g->k, W,
                    0.0f, g->dq + (int64_t)r0 * W, W);
        /* dK[0:r1] += scale dS[r0:r1, 0:r1]^T Q[r0:r1] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, d, nr, scale, ds, T,
                    g->q + (int64_t)r0 * W, W, 1.0f, g->dk, W);
    }
}

/* dqkv's key and value heads accumulate over the query heads of their
 * group, so they start at zero; the query heads are overwritten. */
static void zero_kv_columns(float *dqkv, const qkv_shape *s, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < s->groups; g++)
            memset(dqkv + r * s->width + k_col(s, g), 0, f32_bytes(2 * s->head_dim));
}

/* scratch holds batch * heads * seq * seq floats as the contract says (what
 * a backend running heads in parallel needs); this one runs the heads in
 * turn and reuses its first seq * seq, which then stay in cache. */
mhub_status mhub_cpu_causal_attention_backward(mhub_backend *be, float *dqkv, float *scratch,
                                               const float *dout, const float *qkv,
                                               const float *probs, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups,
                                               int64_t head_dim)
{
    MHUB_TRY(mhub_args_causal_attention_backward(dqkv, scratch, dout, qkv, probs, batch, seq,
                                                 heads, groups, head_dim));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    if (s.qkv_n == 0)
        return MHUB_OK;
    int64_t T = seq, d = head_dim;
    zero_kv_columns(dqkv, &s, batch * T);
    float scale = (float)(1.0 / sqrt((double)head_dim));
    for (int64_t b = 0; b < batch; b++) {
        int64_t row0 = b * T * s.width;
        for (int64_t h = 0; h < heads; h++) {
            int64_t qc = q_col(&s, h), kc = k_col(&s, h / s.per_group);
            head_grad g = {
                .q = qkv + row0 + qc,
                .k = qkv + row0 + kc,
                .v = qkv + row0 + kc + d,
                .p = probs + (b * heads + h) * T * T,
                .dout = dout + b * T * s.out_width + h * d,
                .dq = dqkv + row0 + qc,
                .dk = dqkv + row0 + kc,
                .dv = dqkv + row0 + kc + d,
                .ds = scratch,
            };
            attention_head_backward(&s, &g, scale);
        }
    }
    return MHUB_OK;
}

/* ---- flash attention ----
 * The same attention without the seq x seq probabilities. Per (batch,
 * head) the query rows go in blocks of FLASH_ROWS, and each block walks
 * the keys at or before its last row in tiles of FLASH_KEYS:
 *   forward   S = scale Q K_tile^T, then per row an online softmax: with
 *             the running max m and sum l of e^(s - m) over the tiles so
 *             far, a tile with max m' > m rescales l and the row's output
 *             accumulator by e^(m - m'), then adds its own e^(s - m') and
 *             e^(s - m') V_tile. At the end out = acc / l and
 *             lse = m + log l.
 *   backward  D_t = sum(dO_t * O_t), and per tile P = e^(S - lse) (the
 *             forward's probabilities, recomputed), dV_tile += P^T dO,
 *             dP = dO V_tile^T, dS = P * (dP - D), dQ += scale dS K_tile,
 *             dK_tile += scale dS^T Q.
 * (D_t equals sum_j dP_tj P_tj, the dot the plain backward takes, since
 * O_t = sum_j P_tj V_j.) Beyond its inputs and outputs a call needs two
 * FLASH_ROWS x FLASH_KEYS tiles and a few numbers per row, whatever seq
 * is. The products run through cblas_sgemm, threaded by OpenBLAS, and the
 * heads one after another, as in the attention above. The backward's
 * extra GEMM (S again) and exps cost it time: at T = 1024, d = 64, 2
 * threads, forward + backward measured 1.3-1.45x the plain kernels' time
 * with 256 x 256 tiles (1.75x with 128 x 128, whose GEMMs are too small
 * for OpenBLAS to run well); at T = 64, 1.35x, a small part of a step. */
#define FLASH_ROWS 256
#define FLASH_KEYS 256

/* A call's scratch: two FLASH_ROWS x FLASH_KEYS tiles (on the heap, 256
 * KiB each) and the per-row numbers of one query block. */
typedef struct flash_work {
    float *s;              /* scores, then probabilities */
    float *ds;             /* backward: dP, then dS */
    float m[FLASH_ROWS];   /* forward: running max */
    double l[FLASH_ROWS];  /* forward: running sum of e^(s - m) */
    float D[FLASH_ROWS];   /* backward: sum(dO * O) */
} flash_work;

static mhub_status flash_work_alloc(flash_work *w)
{
    size_t tile = (size_t)FLASH_ROWS * FLASH_KEYS;
    w->s = malloc(2 * tile * sizeof(float));
    if (!w->s)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "cannot allocate %zu bytes of attention tiles",
                          2 * tile * sizeof(float));
    w->ds = w->s + tile;
    return MHUB_OK;
}

/* Keys of tile [c0, c1) that row t may see: those <= t. */
static int64_t visible_keys(int64_t t, int64_t c0, int64_t c1)
{
    int64_t end = t + 1 < c1 ? t + 1 : c1;
    return end > c0 ? end - c0 : 0;
}

/* One row of the forward's online softmax over a tile: s holds its n
 * visible scores (of cols), *m and *l the running max and sum, o the
 * row's d-float output accumulator. s becomes e^(s - m'), zero past n. */
static void flash_row_update(float *s, int64_t n, int64_t cols, float *m, double *l, float *o,
                             int64_t d)
{
    if (n > 0) {
        float tile_max = row_max(s, n);
        float m_new = tile_max > *m ? tile_max : *m;
        /* e^(-Inf) = 0 on the first tile, where o and l are still 0 */
        float alpha = vexpf(*m - m_new);
        int64_t body = vec_prefix(n);
        exp_shifted_blocks(s, body, m_new);
        for (int64_t i = body; i < n; i++)
            s[i] = vexpf(s[i] - m_new);
        *l = *l * (double)alpha + row_sum(s, n);
        int64_t dbody = vec_prefix(d);
        scale_blocks(o, dbody, alpha);
        for (int64_t i = dbody; i < d; i++)
            o[i] *= alpha;
        *m = m_new;
    }
    memset(s + n, 0, f32_bytes(cols - n));
}

/* Query rows [r0, r1) of one (batch, head); pointers as in
 * attention_head_forward, lse at the head's seq values. */
static void flash_block_forward(const qkv_shape *s, flash_work *w, float *o, float *lse,
                                const float *q, const float *k, const float *v, float scale,
                                int r0, int r1)
{
    int d = (int)s->head_dim, W = (int)s->width, ow = (int)s->out_width, nr = r1 - r0;
    for (int i = 0; i < nr; i++) {
        w->m[i] = -INFINITY;
        w->l[i] = 0.0;
        memset(o + (int64_t)(r0 + i) * ow, 0, f32_bytes(d));
    }
    for (int c0 = 0; c0 < r1; c0 += FLASH_KEYS) {
        int c1 = r1 - c0 < FLASH_KEYS ? r1 : c0 + FLASH_KEYS, nc = c1 - c0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, d, scale,
                    q + (int64_t)r0 * W, W, k + (int64_t)c0 * W, W, 0.0f, w->s, FLASH_KEYS);
        for (int i = 0; i < nr; i++)
            flash_row_update(w->s + (int64_t)i * FLASH_KEYS, visible_keys(r0 + i, c0, c1), nc,
                             &w->m[i], &w->l[i], o + (int64_t)(r0 + i) * ow, d);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, d, nc, 1.0f, w->s, FLASH_KEYS,
                    v + (int64_t)c0 * W, W, 1.0f, o + (int64_t)r0 * ow, ow);
    }
    for (int i = 0; i < nr; i++) {
        double l = w->l[i]; /* >= 1: the row max contributes e^0 */
        float *orow = o + (int64_t)(r0 + i) * ow;
        float inv = (float)(1.0 / l);
        for (int j = 0; j < d; j++)
            orow[j] *= inv;
        lse[r0 + i] = (float)((double)w->m[i] + log(l));
    }
}

mhub_status mhub_cpu_flash_attention_forward(mhub_backend *be, float *out, float *lse,
                                             const float *qkv, int64_t batch, int64_t seq,
                                             int64_t heads, int64_t groups, int64_t head_dim)
{
    MHUB_TRY(mhub_args_flash_attention_forward(out, lse, qkv, batch, seq, heads, groups,
                                               head_dim));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    if (batch == 0 || seq == 0 || heads == 0)
        return MHUB_OK;
    if (head_dim == 0) {
        /* every score is 0: softmax over t + 1 equal scores */
        for (int64_t r = 0; r < batch * heads * seq; r++)
            lse[r] = (float)log((double)(r % seq + 1));
        return MHUB_OK;
    }
    flash_work w = {0};
    MHUB_TRY(flash_work_alloc(&w));
    float scale = (float)(1.0 / sqrt((double)head_dim));
    int64_t T = seq, d = head_dim;
    for (int64_t b = 0; b < batch; b++) {
        const float *rows = qkv + b * T * s.width;
        for (int64_t h = 0; h < heads; h++) {
            const float *q = rows + q_col(&s, h), *k = rows + k_col(&s, h / s.per_group);
            float *o = out + b * T * s.out_width + h * d, *l = lse + (b * heads + h) * T;
            for (int r0 = 0; r0 < T; r0 += FLASH_ROWS) {
                int r1 = T - r0 < FLASH_ROWS ? (int)T : r0 + FLASH_ROWS;
                flash_block_forward(&s, &w, o, l, q, k, k + d, scale, r0, r1);
            }
        }
    }
    free(w.s);
    return MHUB_OK;
}

/* Pointers of one (batch, head) for the flash backward. */
typedef struct flash_head {
    const float *q, *k, *v, *o, *dout, *lse;
    float *dq, *dk, *dv;
} flash_head;

/* Query rows [r0, r1): dq of the rows is overwritten (the first tile's
 * product has beta 0), dk and dv of the keys accumulate. */
static void flash_block_backward(const qkv_shape *s, flash_work *w, const flash_head *g,
                                 float scale, int r0, int r1)
{
    int d = (int)s->head_dim, W = (int)s->width, ow = (int)s->out_width, nr = r1 - r0;
    const float *q = g->q + (int64_t)r0 * W, *dout = g->dout + (int64_t)r0 * ow;
    float *dq = g->dq + (int64_t)r0 * W;
    for (int i = 0; i < nr; i++)
        w->D[i] = (float)row_dot(dout + (int64_t)i * ow, g->o + (int64_t)(r0 + i) * ow, d);
    for (int c0 = 0; c0 < r1; c0 += FLASH_KEYS) {
        int c1 = r1 - c0 < FLASH_KEYS ? r1 : c0 + FLASH_KEYS, nc = c1 - c0;
        /* P = e^(scale Q K^T - lse), zero past each row's last key */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, d, scale, q, W,
                    g->k + (int64_t)c0 * W, W, 0.0f, w->s, FLASH_KEYS);
        for (int i = 0; i < nr; i++) {
            float *p = w->s + (int64_t)i * FLASH_KEYS;
            int64_t n = visible_keys(r0 + i, c0, c1), body = vec_prefix(n);
            float shift = g->lse[r0 + i];
            exp_shifted_blocks(p, body, shift);
            for (int64_t j = body; j < n; j++)
                p[j] = vexpf(p[j] - shift);
            memset(p + n, 0, f32_bytes(nc - n));
        }
        /* dV[c0:c1] += P^T dO */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, d, nr, 1.0f, w->s, FLASH_KEYS,
                    dout, ow, 1.0f, g->dv + (int64_t)c0 * W, W);
        /* dP = dO V[c0:c1]^T, then dS = P * (dP - D) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nc, d, 1.0f, dout, ow,
                    g->v + (int64_t)c0 * W, W, 0.0f, w->ds, FLASH_KEYS);
        for (int i = 0; i < nr; i++) {
            float *ds = w->ds + (int64_t)i * FLASH_KEYS;
            const float *p = w->s + (int64_t)i * FLASH_KEYS;
            int64_t n = visible_keys(r0 + i, c0, c1), body = vec_prefix(n);
            softmax_grad_blocks(ds, p, body, w->D[i]);
            for (int64_t j = body; j < n; j++)
                ds[j] = p[j] * (ds[j] - w->D[i]);
            memset(ds + n, 0, f32_bytes(nc - n));
        }
        /* dQ (+)= scale dS K[c0:c1]; dK[c0:c1] += scale dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, d, nc, scale, w->ds,
                    FLASH_KEYS, g->k + (int64_t)c0 * W, W, c0 == 0 ? 0.0f : 1.0f, dq, W);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, d, nr, scale, w->ds, FLASH_KEYS,
                    q, W, 1.0f, g->dk + (int64_t)c0 * W, W);
    }
}

mhub_status mhub_cpu_flash_attention_backward(mhub_backend *be, float *dqkv, const float *dout,
                                              const float *out, const float *qkv,
                                              const float *lse, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim)
{
    MHUB_TRY(mhub_args_flash_attention_backward(dqkv, dout, out, qkv, lse, batch, seq, heads,
                                                groups, head_dim));
    qkv_shape s = qkv_shape_of(batch, seq, heads, groups, head_dim);
    if (s.qkv_n == 0)
        return MHUB_OK;
    flash_work w = {0};
    MHUB_TRY(flash_work_alloc(&w));
    int64_t T = seq, d = head_dim;
    zero_kv_columns(dqkv, &s, batch * T);
    float scale = (float)(1.0 / sqrt((double)head_dim));
    for (int64_t b = 0; b < batch; b++) {
        int64_t row0 = b * T * s.width;
        for (int64_t h = 0; h < heads; h++) {
            int64_t qc = q_col(&s, h), kc = k_col(&s, h / s.per_group);
            int64_t oc = b * T * s.out_width + h * d;
            flash_head g = {
                .q = qkv + row0 + qc,
                .k = qkv + row0 + kc,
                .v = qkv + row0 + kc + d,
                .o = out + oc,
                .dout = dout + oc,
                .lse = lse + (b * heads + h) * T,
                .dq = dqkv + row0 + qc,
                .dk = dqkv + row0 + kc,
                .dv = dqkv + row0 + kc + d,
            };
            for (int r0 = 0; r0 < T; r0 += FLASH_ROWS) {
                int r1 = T - r0 < FLASH_ROWS ? (int)T : r0 + FLASH_ROWS;
                flash_block_backward(&s, &w, &g, scale, r0, r1);
            }
        }
    }
    free(w.s);
    return MHUB_OK;
}
